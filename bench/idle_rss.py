"""RSS per idle keep-alive connection: open N connections, one request each, keep them open, read /proc/PID/status.

    python bench/idle_rss.py --connections 1000                       # gateway, nginx and haproxy, started here
    python bench/idle_rss.py --pid 12345 --port 8080 --path /health   # a process that is already running

Per proxy: RSS (VmRSS of the process tree) after a warm-up, then after each quarter of N idle connections.
Reported: (RSS(N) - RSS(0)) / N, and the marginal (RSS(N) - RSS(N/2)) / (N/2). The marginal figure matters for a
Python process: heap freed after start-up (configuration parsing) stays resident and absorbs the first thousands
of connections, so RSS(N) - RSS(0) understates the cost of a connection. Target: gateway <= 4 KiB per idle
keep-alive connection, checked on the larger of the two figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _peers import (
    HOST,
    PROXIES,
    RESULTS_PATH,
    CpuPlan,
    Lab,
    Log,
    PeerError,
    Target,
    descendants,
    ensure_tools,
    loadavg,
    memory_kib,
    plan_cpus,
    raise_nofile_limit,
    stop_on_sigterm,
)

TARGET_KIB_PER_CONN = 4.0
# Enough that the connections outgrow the freed heap a Python process keeps from start-up (config parsing): with
# 1,000 and 2,000 the gateway's RSS barely moved here; with 8,000 the marginal figure was ~3.6 KiB per connection.
DEFAULT_CONNECTIONS = 8000


@dataclass
class IdleResult:
    target: str
    connections: int
    still_open: int = 0
    base_kib: int = 0
    steps_kib: list[int] = field(default_factory=list)  # RSS after each quarter of the connections
    anon_delta_kib: int = 0
    kib_per_conn: float = 0.0  # (RSS(N) - RSS(0)) / N
    marginal_kib_per_conn: float = 0.0  # (RSS(N) - RSS(N/2)) / (N/2)
    problem: str | None = None

    @property
    def full_kib(self) -> int:
        return self.steps_kib[-1] if self.steps_kib else self.base_kib


def _one_request(sock: socket.socket, request: bytes) -> int:
    """Send `request`, read one response with a Content-Length body; returns the status."""
    sock.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the response head")
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise ConnectionError("chunked response: use a path with a Content-Length body (--path)")
    while len(body) < length:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before the end of the body")
        body += data
    return int(head.split(b" ", 2)[1])


def open_idle(port: int, path: str, count: int) -> list[socket.socket]:
    """`count` connections that each completed one keep-alive request and now sit idle."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, port), timeout=10)
            socks.append(s)
            status = _one_request(s, request)
            if status != 200:
                raise ConnectionError(f"GET {path} answered {status}")
    except BaseException:
        close_now(socks)
        raise
    return socks


def count_open(socks: Sequence[socket.socket]) -> int:
    """How many of the connections the server has not closed (a non-blocking peek sees no EOF)."""
    alive = 0
    for s in socks:
        s.setblocking(False)
        try:
            alive += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def measure_idle(name: str, port: int, pids: Callable[[], list[int]], connections: int, settle: float,
                 path: str = "/small") -> IdleResult:
    """RSS before and after opening idle connections to `port` (in four steps), summed over `pids()`."""

    def rss(key: str = "VmRSS") -> int:
        return sum(memory_kib(p).get(key, 0) for p in pids())

    res = IdleResult(name, connections)
    socks: list[socket.socket] = []
    try:
        close_now(open_idle(port, path, 16))  # warm code paths and the upstream pool; not counted
        time.sleep(settle)
        res.base_kib, anon0 = rss(), rss("RssAnon")
        for step in range(1, 5):
            socks += open_idle(port, path, connections * step // 4 - len(socks))
            time.sleep(settle)
            res.steps_kib.append(rss())
        anon1 = rss("RssAnon")
        res.still_open = count_open(socks)
    except (OSError, ValueError) as e:
        res.problem = f"{type(e).__name__}: {e} (after {len(socks)} connections)"
        return res
    finally:
        close_now(socks)
    half = connections // 2
    res.anon_delta_kib = anon1 - anon0
    res.kib_per_conn = (res.full_kib - res.base_kib) / connections
    res.marginal_kib_per_conn = (res.full_kib - res.steps_kib[1]) / max(1, connections - half)
    if res.still_open < connections:
        res.problem = f"only {res.still_open}/{connections} connections still open at the end"
    return res


def close_now(socks: Sequence[socket.socket]) -> None:
    """Close with a reset (SO_LINGER 0): thousands of client sockets must not sit in TIME_WAIT afterwards."""
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()


def verdict(results: Sequence[IdleResult]) -> str:
    """Checked on the larger of the overall and the marginal figure: freed heap left from start-up can absorb the
    first connections, so the marginal one is the honest figure when it is larger."""
    gw = next((r for r in results if r.target in ("gateway", "attached")), None)
    if gw is None or not gw.steps_kib:
        return f"target gateway <= {TARGET_KIB_PER_CONN:g} KiB per idle connection: not measured"
    worst = max(gw.kib_per_conn, gw.marginal_kib_per_conn)
    ok = worst <= TARGET_KIB_PER_CONN and gw.still_open == gw.connections
    return (f"target gateway <= {TARGET_KIB_PER_CONN:g} KiB per idle connection: {worst:.2f} KiB "
            f"{'PASS' if ok else 'MISS'}" + ("" if gw.still_open == gw.connections else " (connections closed)"))


def format_results(results: Sequence[IdleResult]) -> str:
    out = ["\n== RSS per idle keep-alive connection (VmRSS of the proxy process tree)",
           f"{'proxy':<10}{'conns':>7}{'open':>7}{'base MiB':>10}{'Δ KiB':>9}{'KiB/conn':>10}{'marginal':>10}"
           f"{'Δ anon KiB':>12}"]
    for r in results:
        if not r.steps_kib:
            out.append(f"{r.target:<10}  -- {r.problem}")
            continue
        out.append(f"{r.target:<10}{r.connections:>7}{r.still_open:>7}{r.base_kib / 1024:>10.1f}"
                   f"{r.full_kib - r.base_kib:>9}{r.kib_per_conn:>10.2f}{r.marginal_kib_per_conn:>10.2f}"
                   f"{r.anon_delta_kib:>12}" + (f"  ({r.problem})" if r.problem else ""))
    out.append(verdict(results))
    return "\n".join(out)


def fit_connections(connections: int, log: Log) -> int:
    """`connections`, lowered when the open-files limit (ours, and the proxies inherit it) cannot hold them."""
    limit = raise_nofile_limit(connections + 512)
    if connections + 512 > limit:
        log(f"open-files limit {limit}: measuring {limit - 512} connections instead of {connections}")
        return max(2, limit - 512)
    return connections


def measure_lab(lab: Lab, proxies: Sequence[str], connections: int, settle: float, log: Log) -> list[IdleResult]:
    """Each requested proxy of a started lab, one after the other."""
    results: list[IdleResult] = []
    connections = fit_connections(connections, log)
    log(f"-- idle RSS: {connections} connections per proxy; load average {loadavg()}")
    for name in proxies:
        t: Target | None = lab.targets.get(name)
        if t is None or name == "direct":
            continue
        if not t.available:
            results.append(IdleResult(name, connections, problem=f"unavailable: {(t.error or '').splitlines()[0]}"))
        elif "small" in t.broken:
            results.append(IdleResult(name, connections, problem=f"sanity check failed: {t.broken['small']}"))
        else:
            results.append(measure_idle(name, t.port, t.pids, connections, settle))
    return results


def run_fresh(proxies: Sequence[str], connections: int, settle: float, cpus: CpuPlan, log: Log, install: bool = True,
              malloc_env: bool = True, keep_temp: bool = False) -> tuple[list[IdleResult], str]:
    """Start a backend and fresh proxies, measure each; (results, gateway description). Everything started is
    stopped before returning."""
    with Lab(cpus, log, keep_temp, malloc_env) as lab:
        tools = ensure_tools(["nginx", *(["haproxy"] if "haproxy" in proxies else [])], install, log)
        if tools["nginx"] is None:
            raise PeerError("nginx is required (apt-get install -y nginx)")
        lab.start_backends()
        for name in proxies:
            # Only the small GET: a proxy that has relayed 1 MiB bodies keeps freed heap pages resident (more so
            # with a raised malloc trim threshold), which would hide the memory of new connections.
            lab.start_proxy(name, checks=("small",))
        return measure_lab(lab, proxies, connections, settle, log), lab.gateway_info


def record(path: Path | None, results: Sequence[IdleResult], extra: dict[str, object]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"bench": "idle_rss", "kind": "summary", "ts": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg": loadavg(),
            **extra, "rows": [asdict(r) for r in results], "verdict": verdict(results)}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                   help=f"idle connections per proxy (default {DEFAULT_CONNECTIONS})")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each RSS reading (default 1)")
    p.add_argument("--proxies", default=",".join(PROXIES), help="comma list of nginx, haproxy, gateway")
    p.add_argument("--pid", type=int, default=0, help="measure this running process (and its children) instead")
    p.add_argument("--port", type=int, default=0, help="with --pid: its port on 127.0.0.1")
    p.add_argument("--path", default="/small", help="with --pid: a path answered 200 with a Content-Length body")
    p.add_argument("--proxy-cpu", type=int, default=None)
    p.add_argument("--results", type=Path, default=RESULTS_PATH)
    p.add_argument("--no-results", action="store_true")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--keep-temp", action="store_true")
    p.add_argument("--no-malloc-env", action="store_true", help="start the gateway with glibc's malloc defaults")
    args = p.parse_args(argv)
    results_path = None if args.no_results else args.results
    stop_on_sigterm()
    if args.connections < 2:
        p.error("--connections must be at least 2")
    if args.pid:
        if not args.port:
            p.error("--pid needs --port")
        res = measure_idle("attached", args.port, lambda: [args.pid, *descendants(args.pid)],
                           fit_connections(args.connections, log), args.settle, args.path)
        log(format_results([res]))
        record(results_path, [res], {"attached_pid": args.pid})
        return 0
    proxies = [x for x in args.proxies.split(",") if x]
    try:
        results, info = run_fresh(proxies, args.connections, args.settle, plan_cpus(args.proxy_cpu), log,
                                  install=not args.no_install, malloc_env=not args.no_malloc_env,
                                  keep_temp=args.keep_temp)
    except PeerError as e:
        log(f"error: {e}")
        return 2
    log(format_results(results))
    record(results_path, results, {"gateway": info})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the peers were stopped on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(130)
