"""The processes of the load comparison: backend nginx, SSE backend, and the nginx / haproxy / gateway proxies.

Every process is a subprocess with its own configuration in a private temp directory, tracked by PID (and start
time, so a recycled PID is never signalled) and ended by PID only. Proxies are pinned to one core with `taskset`
when it is available; the backend and the load generator share the remaining cores.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import http.client
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_PATH = REPO / ".bench" / "results.jsonl"
HOST = "127.0.0.1"

# What the backend serves; the load scenarios and the sanity checks agree on these.
SMALL_BODY = b"0123456789abcdef" * 8  # 128 bytes
ONE_MIB = 1 << 20
POST_BYTES = 16 * 1024
SSE_LOAD_EVENTS = 16

PROXIES = ("nginx", "haproxy", "gateway")
MALLOC_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
MALLOC_VALUE = "33554432"  # 32 MiB: see /work/shared/TOOLCHAIN.md "Load tools"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOOLS_APT = {"wrk": "wrk", "nginx": "nginx", "haproxy": "haproxy"}
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

Log = Callable[[str], None]


class PeerError(RuntimeError):
    """A peer could not be started or did not answer as expected."""


# --- tools ----------------------------------------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    """Absolute path of `name`, also looking in the sbin directories a non-root PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN:
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(names: Iterable[str], install: bool = True, log: Log = print) -> dict[str, str | None]:
    """Paths of the named tools; missing ones are installed with apt-get when we are root and allowed to."""
    wanted = list(names)
    missing = [n for n in wanted if find_tool(n) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = sorted({TOOLS_APT.get(n, n) for n in missing})
        log(f"installing {' '.join(packages)} with apt-get (missing: {', '.join(missing)})")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False, stdout=subprocess.DEVNULL, timeout=600)
        done = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], env=env,
                              check=False, stdout=subprocess.DEVNULL, timeout=900)
        if done.returncode != 0:
            log(f"apt-get install {' '.join(packages)} failed with exit code {done.returncode}")
    return {n: find_tool(n) for n in wanted}


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output (stdout or stderr), or a short error."""
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"exit {out.returncode}"


def raise_nofile_limit(want: int = 65536) -> int:
    """Raise this process's soft open-files limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return want if soft == resource.RLIM_INFINITY else soft
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so `finally` blocks and atexit hooks stop the peers."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def loadavg() -> str:
    """/proc/loadavg's first three fields ("" where it cannot be read)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


# --- CPU pinning ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    """Which cores the proxy, the backend(s) and the load generator run on (empty: not pinned)."""

    proxy: tuple[int, ...] = ()
    backend: tuple[int, ...] = ()
    client: tuple[int, ...] = ()

    @property
    def pinned(self) -> bool:
        return bool(self.proxy)

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (taskset missing or a single CPU)"

        def fmt(cpus: tuple[int, ...]) -> str:
            return ",".join(map(str, cpus))

        return f"proxy CPU {fmt(self.proxy)}, backend CPU {fmt(self.backend)}, load generator CPU {fmt(self.client)}"


def plan_cpus(proxy_cpu: int | None = None) -> CpuPlan:
    """The proxy gets one core (the last one unless given); the others are split between wrk and the backend.

    On a 2-core machine wrk and the backend share core 0 and the proxy has core 1 to itself.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None or len(cpus) < 2:
        return CpuPlan()
    proxy = cpus[-1] if proxy_cpu is None else proxy_cpu
    if proxy not in cpus:
        raise PeerError(f"proxy CPU {proxy} is not one of this process's CPUs {cpus}")
    rest = [c for c in cpus if c != proxy]
    if len(rest) == 1:
        return CpuPlan((proxy,), (rest[0],), (rest[0],))
    split = (len(rest) + 1) // 2
    return CpuPlan((proxy,), tuple(rest[split:]), tuple(rest[:split]))


def pinned(argv: Sequence[str], cpus: Sequence[int]) -> list[str]:
    """`argv` prefixed with `taskset -c CPUS` (taskset execs the command, so the PID stays the command's)."""
    taskset = shutil.which("taskset")
    if not cpus or taskset is None:
        return list(argv)
    return [taskset, "-c", ",".join(map(str, cpus)), *argv]


# --- /proc ----------------------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields from field 3 (state) on; None when the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), to tell a PID from a recycled one."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def descendants(root: int) -> list[int]:
    """PIDs of all live descendants of `root` (from the parent PIDs in /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cpu_times(pids: Iterable[int]) -> tuple[float, float, int]:
    """User and system CPU seconds of the processes (all their threads) and their minor page faults; vanished
    processes count 0."""
    user = system = faults = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            faults += int(fields[7])
            user += int(fields[11])
            system += int(fields[12])
    return user / CLK_TCK, system / CLK_TCK, faults


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds; vanished processes count 0."""
    user, system, _ = cpu_times(pids)
    return user + system


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and VmHWM of a process in KiB, from /proc/PID/status."""
    out: dict[str, int] = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


# --- processes ------------------------------------------------------------------------------------------------------


class Proc:
    """One subprocess we started: output to a log file, own session, stopped by PID."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "wb")  # closed in stop()
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError:
            self._log.close()
            raise
        self.pid = self.popen.pid
        self._started = start_time(self.pid)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """This process and its live descendants (nginx: master + worker)."""
        return [self.pid, *descendants(self.pid)] if self.alive() else []

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; descendants still running afterwards get SIGKILL by PID."""
        children = [(pid, start_time(pid)) for pid in descendants(self.pid)] if self.alive() else []
        try:
            if self.alive():
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout)
            for pid, started in children:
                if started is not None and start_time(pid) == started:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        finally:
            self._log.close()


def wait_listening(proc: Proc, port: int, timeout: float) -> None:
    """Return once `port` accepts connections; PeerError if the process exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise PeerError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise PeerError(f"{proc.name} did not listen on {HOST}:{port} within {timeout:.0f} s:\n{proc.log_tail()}")
        time.sleep(0.05)


async def reply_server(reply: bytes, port: int = 0, host: str = HOST) -> asyncio.AbstractServer:
    """An in-process keep-alive HTTP/1.1 backend answering every request with `reply` (on this event loop)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(reply), reply))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, host, port)


async def ask_once(port: int, host: str = "a") -> bytes:
    """One `GET /` with `Host: host` on a new connection to 127.0.0.1:`port`; the response body."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return (await reader.read()).rpartition(b"\r\n\r\n")[2]
    finally:
        writer.close()


@dataclass
class ProxiedBackend:
    """A gateway on one catch-all router in front of one Python backend, both started by `gateway_in_front`."""

    gateway: Proc
    gateway_port: int
    backend_port: int
    how: str  # which gateway build runs (gateway_command)
    directory: Path


@contextlib.contextmanager
def gateway_in_front(prefix: str, backend_source: str) -> Iterator[ProxiedBackend]:
    """Start `python -c backend_source <port>` and a gateway routing everything to it; stop both (by PID) on exit."""
    argv, env, how = gateway_command()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        d = Path(tmp)
        backend_port, gw_port = free_port(), free_port()
        procs: list[Proc] = []
        try:
            backend = Proc("backend", [sys.executable, "-c", backend_source, str(backend_port)], d / "backend.log")
            procs.append(backend)
            wait_listening(backend, backend_port, 15)
            conf = d / "gateway.hcl"
            conf.write_text(f'''entrypoints "web" {{ address = "{HOST}:{gw_port}" }}
routers "all" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "http://{HOST}:{backend_port}" }}] }}
}}
''')
            gw = Proc("gateway", [*argv, "-c", str(conf), "--admin", "off", "--log-level", "warning"],
                      d / "gateway.log", env)
            procs.append(gw)
            wait_listening(gw, gw_port, 45)
            yield ProxiedBackend(gw, gw_port, backend_port, how, d)
        finally:
            for proc in reversed(procs):
                proc.stop()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(port: int, path: str, method: str = "GET", body: bytes | None = None, timeout: float = 10.0) -> Response:
    """One request on a fresh connection (sanity checks only)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


# --- targets --------------------------------------------------------------------------------------------------------


@dataclass
class Target:
    """Something wrk can be pointed at: a proxy, or `direct` (the backends themselves)."""

    name: str
    port: int = 0
    sse_port: int = 0  # where /sse* goes; differs from `port` only for `direct`
    proc: Proc | None = None
    error: str | None = None  # why the target is unavailable
    broken: dict[str, str] = field(default_factory=dict)  # scenario -> why its sanity check failed
    version: str = ""

    @property
    def available(self) -> bool:
        return self.error is None

    def port_for(self, path: str) -> int:
        return self.sse_port if path.startswith("/sse") and self.sse_port else self.port

    def pids(self) -> list[int]:
        return self.proc.pids() if self.proc else []


def _sanity_checks(target: Target, only: Sequence[str] | None = None) -> dict[str, str]:
    """Each scenario's request once through `target`; scenario -> problem for those that do not answer right."""
    problems: dict[str, str] = {}

    def check(scenario: str, path: str, ok: Callable[[Response], str | None], method: str = "GET",
              body: bytes | None = None) -> None:
        if only is not None and scenario not in only:
            return
        try:
            resp = fetch(target.port_for(path), path, method, body)
        except (OSError, http.client.HTTPException) as e:
            problems[scenario] = f"{method} {path}: {type(e).__name__}: {e}"
            return
        problem = ok(resp)
        if problem:
            problems[scenario] = f"{method} {path}: {problem}"

    def expect(status: int, length: int | None = None, body: bytes | None = None) -> Callable[[Response], str | None]:
        def ok(r: Response) -> str | None:
            if r.status != status:
                return f"status {r.status} (expected {status}); body {r.body[:200]!r}"
            if length is not None and len(r.body) != length:
                return f"{len(r.body)} body bytes (expected {length})"
            if body is not None and r.body != body:
                return f"body {r.body[:80]!r} (expected {body[:80]!r})"
            return None

        return ok

    def sse_ok(r: Response) -> str | None:
        if r.status != 200:
            return f"status {r.status}; body {r.body[:200]!r}"
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            return f"content-type {r.headers.get('content-type')!r}"
        events = r.body.count(b"\n\n")
        return None if events == 3 else f"{events} events (expected 3)"

    check("small", "/small", expect(200, body=SMALL_BODY))
    check("1mib", "/1mib", expect(200, length=ONE_MIB))
    check("post16k", "/post", expect(200), "POST", b"p" * POST_BYTES)
    check("sse", "/sse?n=3", sse_ok)
    return problems


# --- configurations -------------------------------------------------------------------------------------------------


def _nginx_main(d: Path, tag: str, workers: int, nofile: int) -> str:
    """The main-context directives both nginx instances share; pid and logs live in the temp dir."""
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {d}/{tag}.pid;
error_log {d}/{tag}-error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {max(256, min(16384, nofile - 100))}; }}
"""


def nginx_backend_conf(d: Path, port: int, workers: int, nofile: int) -> str:
    """The fast backend: fixed small body, a 1 MiB file (sendfile), 16 KiB POSTs answered with `return 200`."""
    return _nginx_main(d, "backend", workers, nofile) + f"""
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    client_body_temp_path {d}/backend-body;
    proxy_temp_path {d}/backend-proxy;
    server {{
        listen {HOST}:{port} backlog=4096;
        location = /small {{ default_type text/plain; return 200 "{SMALL_BODY.decode()}"; }}
        location = /1mib {{ root {d}/www; }}
        location = /post {{ client_max_body_size 1m; client_body_buffer_size 64k; return 200 "ok\\n"; }}
        location / {{ return 404; }}
    }}
}}
"""


def nginx_proxy_conf(d: Path, port: int, backend: int, sse: int, nofile: int) -> str:
    """nginx as the reference proxy: 1 worker, HTTP/1.1 upstream keep-alive (64), no buffering for SSE."""
    upstream_ka = "keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s;"
    location_common = 'proxy_http_version 1.1; proxy_set_header Connection "";'
    return _nginx_main(d, "proxy", 1, nofile) + f"""
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    # 16 KiB request bodies stay in memory (the 8 KiB default spills them to a temp file).
    client_body_buffer_size 32k;
    client_body_temp_path {d}/proxy-body;
    proxy_temp_path {d}/proxy-temp;
    # Response buffering stays on (nginx's default) but never spills to disk: when its buffers are full it stops
    # reading the upstream, which is backpressure like the gateway's. 64 KiB buffers instead of the 4 KiB default:
    # nginx's 1 MiB GET cost ~40% less CPU with them here, so the gateway is compared with a tuned nginx.
    proxy_max_temp_file_size 0;
    proxy_buffer_size 64k;
    proxy_buffers 8 64k;
    proxy_busy_buffers_size 128k;
    upstream backend {{ server {HOST}:{backend}; {upstream_ka} }}
    upstream sse {{ server {HOST}:{sse}; {upstream_ka} }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{ proxy_pass http://backend; {location_common} }}
        location /sse {{ proxy_pass http://sse; {location_common} proxy_buffering off; }}
    }}
}}
"""


def haproxy_conf(port: int, backend: int, sse: int, nofile: int) -> str:
    """haproxy as the second reference: one thread, mode http, server connections reused always."""
    # haproxy needs about two descriptors per connection and refuses to start when maxconn does not fit.
    return f"""global
    nbthread 1
    maxconn {max(256, min(20000, (nofile - 200) // 2))}

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always

frontend web
    bind {HOST}:{port}
    acl is_sse path_beg /sse
    use_backend sse if is_sse
    default_backend backend

backend backend
    server s1 {HOST}:{backend}

backend sse
    # Send each event as soon as it arrives (the equivalent of nginx's proxy_buffering off).
    option http-no-delay
    server s1 {HOST}:{sse}
"""


#: middlewares of the benchmark chain (``BENCH_MIDDLEWARES=N`` uses the first N on the "backend" router); each does
#: its full work per request but never rejects the benchmark's traffic
BENCH_CHAIN = (
    ("cors", 'type = "cors"\n  allowed_origins = ["https://app.example"]'),
    ("allow", 'type = "ip-allow"\n  allowed_ips = ["127.0.0.0/8", "::1"]'),
    ("limit", 'type = "rate-limit"\n  rate = 1000000000\n  burst = 1000000000'),
    ("hdrs", 'type = "headers"\n  request_headers = { "X-Env" = "bench" }\n'
             '  response_headers = { "X-Served-By" = "a3s" }'),
    ("size", 'type = "body-limit"\n  max_body_bytes = 1048576'),
)


def bench_chain(spec: str) -> tuple[str, str]:
    """(the router's ``middlewares = [...]`` line, the middleware blocks) for ``spec``: a count (the first N of
    BENCH_CHAIN) or comma-separated names of BENCH_CHAIN entries."""
    spec = spec.strip()
    if not spec or spec.isdigit():
        chosen = BENCH_CHAIN[: int(spec or 0)]
    else:
        known = dict(BENCH_CHAIN)
        chosen = tuple((name, known[name]) for name in (n.strip() for n in spec.split(",")) if name)
    if not chosen:
        return "", ""
    names = ", ".join(f'"{name}"' for name, _ in chosen)
    blocks = "".join(f'middlewares "{name}" {{\n  {body}\n}}\n' for name, body in chosen)
    return f"  middlewares = [{names}]\n", blocks


def gateway_conf(port: int, backend: int, sse: int, middlewares: str = "") -> str:
    """The gateway under test: one entrypoint, /sse* to the SSE backend, the rest to the nginx backend (through
    ``middlewares`` middlewares of BENCH_CHAIN)."""
    chain_line, chain_blocks = bench_chain(middlewares)
    return chain_blocks + f"""entrypoints "web" {{
  address = "{HOST}:{port}"
}}

routers "sse" {{
  rule    = "PathPrefix(`/sse`)"
  service = "sse"
}}

routers "backend" {{
  rule    = "PathPrefix(`/`)"
  service = "backend"
{chain_line}}}

services "backend" {{
  load_balancer {{
    servers = [{{ url = "http://{HOST}:{backend}" }}]
  }}
  transport {{
    max_idle_connections_per_backend = 64
  }}
}}

services "sse" {{
  load_balancer {{
    servers = [{{ url = "http://{HOST}:{sse}" }}]
  }}
  transport {{
    max_idle_connections_per_backend = 64
  }}
}}
"""


# --- the gateway command --------------------------------------------------------------------------------------------


def python_for_gateway() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def gateway_tunes_malloc() -> str | None:
    """The gateway source file that calls mallopt() itself, if any (then the bench leaves the environment alone)."""
    package = REPO / "src" / "a3s_gateway"
    for path in sorted(package.rglob("*.py")) + sorted(package.rglob("*.pyx")):
        with contextlib.suppress(OSError):
            if "mallopt(" in path.read_text(errors="replace"):
                return str(path.relative_to(REPO))
    return None


def gateway_command(malloc_env: bool = True) -> tuple[list[str], dict[str, str], str]:
    """(argv prefix, environment, how it was found) for running the gateway.

    `$A3S_GATEWAY_CMD` (e.g. a PyInstaller binary) wins; then the installed console script; then
    `python -m a3s_gateway`, with `src/` on PYTHONPATH when the package is not installed in the venv.
    MALLOC_TRIM_THRESHOLD_ / MALLOC_TOP_PAD_ are set to 32 MiB (unless already set) when `malloc_env` and the
    gateway's source does not call mallopt() itself.
    """
    env = dict(os.environ)
    if malloc_env and (os.environ.get("A3S_GATEWAY_CMD") or gateway_tunes_malloc() is None):
        for var in MALLOC_VARS:
            env.setdefault(var, MALLOC_VALUE)
    override = os.environ.get("A3S_GATEWAY_CMD")
    if override:
        return shlex.split(override), env, "$A3S_GATEWAY_CMD"
    script = REPO / ".venv" / "bin" / "a3s-gateway"
    if script.exists():
        return [str(script)], env, str(script)
    python = python_for_gateway()
    probe = subprocess.run([python, "-c", "import a3s_gateway"], env=env, capture_output=True, timeout=60, check=False)
    if probe.returncode != 0 and (REPO / "src" / "a3s_gateway").is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
        return [python, "-m", "a3s_gateway"], env, f"{python} -m a3s_gateway (PYTHONPATH=src)"
    return [python, "-m", "a3s_gateway"], env, f"{python} -m a3s_gateway"


def gateway_probe(argv: list[str], env: dict[str, str]) -> tuple[str | None, str]:
    """(problem or None, `version -v` text): whether `--help` works, and what is compiled."""
    try:
        helped = subprocess.run([*argv, "--help"], env=env, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{shlex.join(argv)} --help` failed: {e}", ""
    if helped.returncode != 0:
        lines = (helped.stderr or helped.stdout).strip().splitlines()
        last = lines[-1] if lines else "no output"
        tail = "\n".join(lines[-8:])
        return f"`{shlex.join(argv)} --help` exited {helped.returncode}: {last}\n{tail}", ""
    try:
        ver = subprocess.run([*argv, "version", "-v"], env=env, capture_output=True, text=True, timeout=60,
                             check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"version -v failed: {e}"
    if ver.returncode != 0:
        final = (ver.stderr or ver.stdout).strip().splitlines()[-1:] or [""]
        return None, f"version -v exited {ver.returncode}: {final[0]}"
    return None, ver.stdout.strip()


# --- the lab --------------------------------------------------------------------------------------------------------


class Lab:
    """The backends and the proxies of one benchmark session. Use as a context manager: everything started is
    stopped (by PID) and the temp directory removed on exit, whatever happened."""

    def __init__(self, cpus: CpuPlan, log: Log = print, keep_temp: bool = False, malloc_env: bool = True) -> None:
        self.cpus = cpus
        self.log = log
        self.keep_temp = keep_temp
        self.malloc_env = malloc_env
        self.dir = Path(tempfile.mkdtemp(prefix="a3s-bench-"))
        self.dir.chmod(0o755)  # nginx workers run as an unprivileged user and read www/ from here
        self.procs: list[Proc] = []
        self.targets: dict[str, Target] = {}
        self.backend_port = 0
        self.sse_port = 0
        self.gateway_info = ""
        self.nofile = raise_nofile_limit()
        self.nginx = find_tool("nginx")
        atexit.register(self.close)  # also on KeyboardInterrupt, and on SIGTERM after stop_on_sigterm()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process we started, last first; remove the temp directory. Idempotent."""
        atexit.unregister(self.close)
        while self.procs:
            proc = self.procs.pop()
            try:
                proc.stop()
            except Exception as e:  # keep stopping the others
                self.log(f"stopping {proc.name} (pid {proc.pid}) failed: {e}")
        if not self.dir.exists():
            return
        if self.keep_temp:
            self.log(f"temp directory kept: {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, argv: Sequence[str], cpus: Sequence[int], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, pinned(argv, cpus), self.dir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def _nginx_argv(self, conf: Path) -> list[str]:
        if self.nginx is None:
            raise PeerError("nginx is not installed (apt-get install -y nginx)")
        argv = [self.nginx, "-p", str(self.dir), "-c", str(conf)]
        match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", tool_version([self.nginx, "-v"]))
        if match and tuple(int(g) for g in match.groups()) >= (1, 19, 5):
            argv += ["-e", str(self.dir / "startup-error.log")]  # never touch /var/log/nginx
        return argv

    # -- backends --

    def start_backends(self) -> None:
        """nginx backend (small, 1 MiB, POST) and one Python SSE backend process per backend core."""
        www = self.dir / "www"
        www.mkdir()
        www.chmod(0o755)
        big = www / "1mib"
        big.write_bytes(bytes(range(256)) * (ONE_MIB // 256))
        big.chmod(0o644)
        self.backend_port = free_port()
        conf = self.dir / "backend.conf"
        workers = max(1, len(self.cpus.backend))
        conf.write_text(nginx_backend_conf(self.dir, self.backend_port, workers, self.nofile))
        proc = self._spawn("backend-nginx", self._nginx_argv(conf), self.cpus.backend)
        wait_listening(proc, self.backend_port, 15)

        self.sse_port = free_port()
        sse_script = str(BENCH_DIR / "_sse_backend.py")
        for i in range(max(1, len(self.cpus.backend))):
            argv = [python_for_gateway(), sse_script, "--port", str(self.sse_port)]
            proc = self._spawn(f"backend-sse{i}", argv, self.cpus.backend)
            wait_listening(proc, self.sse_port, 30)
        self.targets["direct"] = Target("direct", self.backend_port, self.sse_port, version="backends")

    # -- proxies --

    def start_proxy(self, name: str, checks: Sequence[str] | None = None) -> Target:
        """Start one proxy pinned to the proxy core and sanity-check the scenarios `checks` (default all) through
        it. Never raises for a proxy that cannot run: the returned Target says why instead."""
        if not self.backend_port:
            raise PeerError("start_backends() first")
        if name == "direct":
            return self.targets["direct"]
        target = Target(name, free_port())
        self.targets[name] = target
        try:
            if name == "nginx":
                self._start_nginx(target)
            elif name == "haproxy":
                self._start_haproxy(target)
            elif name == "gateway":
                self._start_gateway(target)
            else:
                raise PeerError(f"unknown proxy {name!r} (known: {', '.join(PROXIES)})")
        except (PeerError, OSError, subprocess.SubprocessError) as e:
            target.error = str(e)
            if target.proc is not None:  # a proxy that cannot serve must not keep a core busy
                target.proc.stop()
                self.procs.remove(target.proc)
                target.proc = None
            return target
        target.broken = _sanity_checks(target, checks)
        return target

    def _start_nginx(self, target: Target) -> None:
        conf = self.dir / "proxy.conf"
        conf.write_text(nginx_proxy_conf(self.dir, target.port, self.backend_port, self.sse_port, self.nofile))
        target.version = tool_version([self.nginx or "nginx", "-v"])
        target.proc = self._spawn("nginx", self._nginx_argv(conf), self.cpus.proxy)
        wait_listening(target.proc, target.port, 15)

    def _start_haproxy(self, target: Target) -> None:
        haproxy = find_tool("haproxy")
        if haproxy is None:
            raise PeerError("haproxy is not installed (apt-get install -y haproxy)")
        conf = self.dir / "haproxy.cfg"
        conf.write_text(haproxy_conf(target.port, self.backend_port, self.sse_port, self.nofile))
        target.version = tool_version([haproxy, "-v"])
        check = subprocess.run([haproxy, "-c", "-q", "-f", str(conf)], capture_output=True, text=True, timeout=30,
                               check=False)
        if check.returncode != 0:
            raise PeerError(f"haproxy rejected its configuration:\n{check.stdout}{check.stderr}")
        target.proc = self._spawn("haproxy", [haproxy, "-db", "-f", str(conf)], self.cpus.proxy)
        wait_listening(target.proc, target.port, 15)

    def _start_gateway(self, target: Target) -> None:
        argv, env, how = gateway_command(self.malloc_env)
        problem, version = gateway_probe(argv, env)
        if problem:
            raise PeerError(f"gateway not runnable yet ({how}): {problem}")
        target.version = version.splitlines()[0] if version else how
        own = gateway_tunes_malloc()
        malloc = ", ".join(f"{v}={env[v]}" for v in MALLOC_VARS if v in env) or (
            f"mallopt() by the gateway itself ({own})" if own else "glibc malloc defaults")
        self.gateway_info = f"{how}; {malloc}\n{version}"
        conf = self.dir / "gateway.hcl"
        conf.write_text(gateway_conf(target.port, self.backend_port, self.sse_port,
                                     env.get("BENCH_MIDDLEWARES", "")))
        # no admin listener: two variants of an A/B run would both want 127.0.0.1:9901
        cmd = [*argv, "-c", str(conf), "--log-level", "warning", "--admin", "off"]
        target.proc = self._spawn("gateway", cmd, self.cpus.proxy, env)
        # Generous: a cold python-hcl2 grammar cache alone takes 6-15 s (TOOLCHAIN.md).
        wait_listening(target.proc, target.port, 45)


def describe_targets(targets: Iterable[Target]) -> list[str]:
    """One line per target: version and health (for the report header)."""
    lines = []
    for t in targets:
        if t.name == "direct":
            continue
        if not t.available:
            lines.append(f"  {t.name:<8} UNAVAILABLE: {t.error}")
            continue
        state = "ok" if not t.broken else "broken for " + "; ".join(f"{k}: {v}" for k, v in t.broken.items())
        lines.append(f"  {t.name:<8} pid {t.proc.pid if t.proc else '-'}  {t.version}  [{state}]")
    return lines
