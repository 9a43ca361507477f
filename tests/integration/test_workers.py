"""``workers = N`` (SPEC §3.9, §13.4, issue 18): a supervisor and N worker processes, run as a user runs them.

Every test starts ``a3s-gateway --workers 2`` as a subprocess on loopback ports, sends traffic over many new
connections (the kernel spreads them over the workers' SO_REUSEPORT sockets) and checks what a client and the
admin API see. Processes are found through /proc (the supervisor's children).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                           reason="SO_REUSEPORT spreading and /proc are Linux")]

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "support" / "model_standin.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- a backend in a thread ------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        server: Backend = self.server  # type: ignore[assignment]
        status = server.status
        if self.path.startswith("/slow"):
            server.slow_started.set()
            server.release.wait(30)
        elif self.path == "/health":
            server.probes += 1
            status = server.health_status
        elif self.path == "/metrics":  # a model server's queue, in vLLM's names (SPEC §16.5)
            server.scrapes += 1
            body = f"vllm:num_requests_waiting {server.waiting}\nvllm:num_requests_running 0\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = json.dumps({"backend": server.name, "path": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """A chat completion whose reported usage equals the token-limit reservation: input ceil(bytes / 4),
        output ``max_tokens`` (so a budget admits the same number of requests whatever their timing)."""
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        doc = json.loads(body)
        usage = {"prompt_tokens": (len(body) + 3) // 4, "completion_tokens": doc.get("max_tokens", 0)}
        out = json.dumps({"object": "chat.completion", "choices": [], "usage": usage}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


class Backend(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self.status = 200
        self.health_status = 200
        self.probes = 0
        self.waiting = 0
        self.scrapes = 0
        self.slow_started = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


@pytest.fixture
def backends() -> Iterator[Callable[[str], Backend]]:
    made: list[Backend] = []

    def make(name: str) -> Backend:
        b = Backend(name)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


# -- the gateway as a subprocess ------------------------------------------------------------------------------


class Gateway:
    def __init__(self, proc: subprocess.Popen[str], ports: dict[str, int], admin: int, log: list[str]) -> None:
        self.proc = proc
        self.ports = ports
        self.admin = admin
        self.log = log

    @property
    def port(self) -> int:
        return self.ports["web"]

    def workers(self) -> list[int]:
        """The supervisor's worker processes (children running a3s_gateway, not replicas)."""
        pids = []
        for pid in _children(self.proc.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"a3s_gateway" in cmdline or cmdline.split(b"\0")[0] == sys.executable.encode():
                if b"model_standin" not in cmdline:
                    pids.append(pid)
        return sorted(pids)

    def admin_get(self, path: str) -> tuple[int, bytes]:
        return get(self.admin, path)

    def health(self) -> dict[str, object]:
        return json.loads(self.admin_get("/api/gateway/health")[1])  # type: ignore[no-any-return]


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def start(hcl: str, workers: str = "2", name: str = "gateway.hcl") -> Gateway:
        cfg = tmp_path / name
        cfg.write_text(hcl)
        proc = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--workers", workers,
                                 "--admin", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        ports: dict[str, int] = {}
        admin = 0
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"entrypoint (\S+) on [^:]+:(\d+) \(", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
            m = re.search(r"admin API on [^:]+:(\d+)$", line.strip())
            if m:
                admin = int(m.group(1))
                break
        if not admin:
            proc.kill()
            raise AssertionError("the gateway did not start:\n" + "".join(lines))
        threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
        gw = Gateway(proc, ports, admin, lines)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
            try:
                gw.proc.wait(30)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                gw.proc.wait()


def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)


def get(port: int, path: str, timeout: float = 10) -> tuple[int, bytes]:
    """One request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def many(port: int, path: str, n: int, parallel: int = 16) -> list[tuple[int, bytes]]:
    """``n`` requests, each on its own new connection, ``parallel`` at a time."""
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: get(port, path), range(n)))


def keepalive(port: int, path: str, connections: int, each: int) -> int:
    """``connections`` keep-alive connections sending ``each`` requests; the number answered 200."""
    def run(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = 0
        for _ in range(each):
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            ok += r.status == 200
        conn.close()
        return ok

    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        return sum(pool.map(run, range(connections)))


def wait_until(check: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def simple(url: str, extra: str = "", middlewares: str = "", strategy: str = "round-robin",
           servers: str | None = None, balancing: str = "") -> str:
    servers = servers if servers is not None else f'{{ url = "{url}" }}'
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule        = "PathPrefix(`/`)"
  service     = "s"
  middlewares = [{middlewares}]
}}
services "s" {{
  load_balancer {{
    strategy = "{strategy}"
    servers  = [{servers}]
    {balancing}
  }}
}}
{extra}
'''


# -- the tests ------------------------------------------------------------------------------------------------


def test_two_workers_both_serve_and_the_counters_equal_what_clients_saw(start_gateway, backends) -> None:
    b = backends("a")
    gw = start_gateway(simple(b.url))
    workers = gw.workers()
    assert len(workers) == 2, gw.log
    before = {pid: cpu_ticks(pid) for pid in workers}
    answered = keepalive(gw.port, "/x", connections=16, each=50)
    singles = many(gw.port, "/y", 200)
    assert answered == 800 and all(status == 200 for status, _ in singles)
    grew = {pid: cpu_ticks(pid) - before[pid] for pid in workers}
    assert all(ticks > 0 for ticks in grew.values()), grew  # both processes served
    # /metrics and the admin API show the instance's totals: exactly what the clients sent
    status, text = gw.admin_get("/metrics")
    assert status == 200
    counted = sum(float(v) for v in re.findall(r'^gateway_requests_total\{[^}]*router="r"[^}]*\} (\S+)$',
                                               text.decode(), re.M))
    assert counted == 1000
    assert re.search(r'^gateway_request_duration_seconds_count\{router="r",service="s"\} 1000\.0$',
                     text.decode(), re.M)
    health = gw.health()
    assert health["total_requests"] == 1000 and health["config_generation"] == 1
    assert health["state"] == "running"


def test_sighup_and_a_watched_save_reach_every_worker(start_gateway, backends, tmp_path) -> None:
    b = backends("a")
    base = simple(b.url).replace("PathPrefix(`/`)", "PathPrefix(`/one`)")
    gw = start_gateway(base)
    cfg = tmp_path / "gateway.hcl"
    assert get(gw.port, "/two")[0] == 404
    # SIGHUP: the supervisor validates and builds, every worker prepares, then all commit
    cfg.write_text(base.replace("PathPrefix(`/one`)", "PathPrefix(`/two`)"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: gw.health()["config_generation"] == 2, what="generation 2")
    assert [s for s, _ in many(gw.port, "/two", 40)] == [200] * 40
    # a reload that fails in the workers (a port taken) keeps generation 2 in every worker
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cfg.write_text(base.replace("PathPrefix(`/one`)", "PathPrefix(`/three`)")
                       + f'entrypoints "more" {{ address = "127.0.0.1:{busy}" }}\n')
        gw.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: (gw.health().get("last_reload") or {}).get("success") is False, what="failed reload")
    assert gw.health()["config_generation"] == 2
    assert [s for s, _ in many(gw.port, "/two", 20)] == [200] * 20
    assert [s for s, _ in many(gw.port, "/three", 20)] == [404] * 20
    # the file provider runs in the supervisor: switched on by a SIGHUP, then a save alone reloads every worker
    watched = 'providers { file { watch = true } }\n'
    cfg.write_text(base.replace("PathPrefix(`/one`)", "PathPrefix(`/four`)") + watched)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: gw.health()["config_generation"] == 3, what="generation 3")
    time.sleep(0.5)  # the watcher is armed
    cfg.write_text(base.replace("PathPrefix(`/one`)", "PathPrefix(`/five`)") + watched)
    wait_until(lambda: gw.health()["config_generation"] == 4, what="generation 4 from the watched save")
    assert [s for s, _ in many(gw.port, "/five", 40)] == [200] * 40
    assert [s for s, _ in many(gw.port, "/four", 10)] == [404] * 10


def test_a_killed_worker_is_replaced_while_the_other_serves(start_gateway, backends) -> None:
    b = backends("a")
    gw = start_gateway(simple(b.url))
    first = gw.workers()
    assert len(first) == 2
    os.kill(first[0], signal.SIGKILL)
    # reaped by the supervisor: the process, its listening socket and the connections it had are gone
    wait_until(lambda: not Path(f"/proc/{first[0]}").exists(), 10, "the killed worker is reaped")
    # new connections all reach the surviving worker
    assert [s for s, _ in many(gw.port, "/x", 100)] == [200] * 100
    wait_until(lambda: len(gw.workers()) == 2, 15, "a replacement worker")
    replacement = next(pid for pid in gw.workers() if pid not in first)
    before = cpu_ticks(replacement)
    assert keepalive(gw.port, "/y", connections=16, each=50) == 800
    assert cpu_ticks(replacement) > before  # the replacement serves too
    assert any("exited with SIGKILL" in line for line in gw.log)


def test_sigterm_ends_every_process_and_a_dead_supervisor_takes_its_workers(start_gateway, backends) -> None:
    b = backends("a")
    gw = start_gateway(simple(b.url))
    workers = gw.workers()
    assert len(workers) == 2
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    for pid in workers:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 10, f"worker {pid}")
    # SIGKILL of the supervisor: the workers get the parent-death signal and release the port
    gw = start_gateway(simple(b.url), name="second.hcl")
    workers = gw.workers()
    gw.proc.kill()
    gw.proc.wait()
    for pid in workers:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 10, f"worker {pid}")
    with pytest.raises(OSError):
        get(gw.port, "/", timeout=2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_local_rate_limit_is_exact_across_workers(start_gateway, backends) -> None:
    b = backends("a")
    extra = '''
middlewares "limit" {
  type  = "rate-limit"
  rate  = 1
  period = "1h"
  burst = 10
  key   = "global"
}
'''
    gw = start_gateway(simple(b.url, extra, middlewares='"limit"'))
    statuses = [s for s, _ in many(gw.port, "/x", 50, parallel=50)]
    assert statuses.count(200) == 10 and statuses.count(429) == 40
    _, text = gw.admin_get("/metrics")
    assert re.search(r'^gateway_ratelimit_rejections_total\{middleware="limit",router="r"\} 40\.0$', text.decode(),
                     re.M)


def test_a_local_token_limit_is_exact_across_workers(start_gateway, backends) -> None:
    b = backends("a")
    extra = '''
middlewares "tokens" {
  type   = "token-limit"
  limit  = 1000
  window = "1h"
}
'''
    gw = start_gateway(simple(b.url, extra, middlewares='"tokens"'))
    body = json.dumps({"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    per_request = 100 + (len(body) + 3) // 4  # reserved, and then reported as used

    def post(_: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(25) as pool:
        statuses = list(pool.map(post, range(50)))
    assert statuses.count(200) == 1000 // per_request and statuses.count(429) == 50 - 1000 // per_request
    _, text = gw.admin_get("/metrics")
    assert re.search(rf'^gateway_token_limit_rejections_total\{{middleware="tokens",router="r"\}} '
                     rf'{50 - 1000 // per_request}\.0$', text.decode(), re.M)


def test_least_connections_sees_the_in_flight_requests_of_both_workers(start_gateway, backends) -> None:
    a, b = backends("a"), backends("b")
    gw = start_gateway(simple(a.url, strategy="least-connections",
                              servers=f'{{ url = "{a.url}" }}, {{ url = "{b.url}" }}'))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, gw.port, "/slow", 30)
        assert a.slow_started.wait(10)  # one request in flight on a, in one of the workers
        wait_until(lambda: '"active_connections":1' in gw.admin_get("/api/gateway/backends")[1].decode(), 20,
                   "the admin API shows it")
        seen = [json.loads(body)["backend"] for _, body in many(gw.port, "/fast", 30, parallel=1)]
        a.release.set()
        assert slow.result(30)[0] == 200
    assert seen == ["b"] * 30  # every worker sees a's in-flight request, also the one that does not hold it


def test_a_cold_start_releases_the_queues_of_both_workers_with_one_scale_up(start_gateway) -> None:
    argv = ", ".join(json.dumps(a) for a in [sys.executable, str(STANDIN), "--port", "{port}",
                                               "--startup-delay", "1.0"])
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  scaling {{
    max_replicas   = 3
    buffer_enabled = true
    executor       = "process"
    process {{
      command      = [{argv}]
      health_path  = "/health"
      port_range   = "21400-21449"
      stop_timeout = "2s"
    }}
  }}
}}
'''
    gw = start_gateway(hcl)

    def replica(_: int) -> tuple[int, str | None]:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=60)
        try:
            conn.request("GET", "/models")
            r = conn.getresponse()
            r.read()
            return r.status, r.getheader("X-Replica")
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(replica, range(20)))
    assert [s for s, _ in results] == [200] * 20
    assert len({pid for _, pid in results}) == 1  # one scale-up served every queued request
    _, text = gw.admin_get("/metrics")
    # both workers queued requests (20 new connections spread over 2 workers), and one replica is running
    assert re.search(r'^gateway_autoscaler_ready_replicas\{service="llm"\} 1\.0$', text.decode(), re.M)
    waits = re.search(r'^gateway_buffer_wait_seconds_count\{service="llm"\} (\S+)$', text.decode(), re.M)
    assert waits is not None and float(waits.group(1)) == 20


def test_access_log_lines_from_every_worker_are_whole_and_sigusr1_reopens(start_gateway, backends, tmp_path) -> None:
    b = backends("a")
    log_path = tmp_path / "access.log"
    extra = f'access_log {{\n  path = "{log_path}"\n  flush_interval = "100ms"\n}}\n'
    gw = start_gateway(simple(b.url, extra))
    assert keepalive(gw.port, "/first", connections=16, each=40) == 640
    wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") == 640, 10, "640 lines")
    rotated = tmp_path / "access.log.1"
    log_path.rename(rotated)
    gw.proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert keepalive(gw.port, "/second", connections=16, each=10) == 160
    wait_until(lambda: log_path.exists() and log_path.read_text().count("\n") == 160, 10, "160 lines in the new file")
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    new = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(old) == 640 and len(new) == 160
    assert {e["path"] for e in old} == {"/first"} and {e["path"] for e in new} == {"/second"}


def test_health_checks_run_once_per_instance_and_reach_every_worker(start_gateway, backends) -> None:
    a, b = backends("a"), backends("b")
    check = 'health_check {\n path = "/health"\n interval = "200ms"\n timeout = "100ms"\n unhealthy_threshold = 1\n }'
    gw = start_gateway(simple(a.url, servers=f'{{ url = "{a.url}" }}, {{ url = "{b.url}" }}', balancing=check))
    time.sleep(0.5)  # probing started before the gateway was ready: count over a window that starts now
    first = a.probes
    time.sleep(2.0)
    probes = a.probes - first
    assert 5 <= probes <= 14, probes  # ~10 in 2 s: one prober (the supervisor), not one per worker (>= 20)
    a.health_status = 503
    wait_until(lambda: '"healthy":false' in gw.admin_get("/api/gateway/backends")[1].decode(), 5, "a unhealthy")
    time.sleep(0.3)  # the supervisor's sync reaches the workers within 50 ms
    seen = [json.loads(body)["backend"] for _, body in many(gw.port, "/x", 40)]
    assert seen == ["b"] * 40


def test_a_passive_ejection_in_one_worker_applies_to_every_worker(start_gateway, backends) -> None:
    a, b = backends("a"), backends("b")
    a.status = 502
    passive = 'passive {\n max_failures = 2\n window = "30s"\n ejection = "60s"\n }'
    gw = start_gateway(simple(a.url, servers=f'{{ url = "{a.url}" }}, {{ url = "{b.url}" }}', balancing=passive))
    sent = 0
    while '"healthy":false' not in gw.admin_get("/api/gateway/backends")[1].decode():
        get(gw.port, "/x")
        sent += 1
        assert sent < 200, "a was never ejected"
    time.sleep(0.3)  # the supervisor's sync reaches the workers within 50 ms
    statuses = [s for s, _ in many(gw.port, "/y", 40)]
    assert statuses == [200] * 40  # no worker sends to a any more, also the one that saw fewer failures


def test_a_rollout_is_judged_on_every_worker_s_traffic_and_its_split_reaches_all(start_gateway, backends) -> None:
    v1, v2 = backends("v1"), backends("v2")
    v2.status = 500
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  load_balancer {{
    passive {{ enabled = false }}
  }}
  revisions = [
    {{ name = "v1", traffic_percent = 50, servers = [{{ url = "{v1.url}" }}] }},
    {{ name = "v2", traffic_percent = 50, servers = [{{ url = "{v2.url}" }}] }},
  ]
  rollout {{
    from                 = "v1"
    to                   = "v2"
    step_percent         = 25
    step_interval_secs   = 1
    min_requests         = 20
    error_rate_threshold = 0.2
  }}
}}
'''
    gw = start_gateway(hcl)

    def state() -> str:
        services = json.loads(gw.admin_get("/api/gateway/services")[1])
        return str(services[0]["rollout"]["state"])

    deadline = time.monotonic() + 30
    while state() == "progressing":
        assert time.monotonic() < deadline, "the rollout was never judged"
        many(gw.port, "/x", 40)  # new connections: both workers send to v2 (and report its errors)
    assert state() == "rolled_back"
    time.sleep(0.3)  # the supervisor's sync reaches the workers within 50 ms
    seen = [json.loads(body)["backend"] for _, body in many(gw.port, "/y", 40)]
    assert seen == ["v1"] * 40  # every worker took the rolled-back split
    _, text = gw.admin_get("/metrics")
    assert re.search(r'^gateway_rollout_traffic_percent\{revision="v2",service="llm"\} 0\.0$', text.decode(), re.M)


def test_tls_tcp_and_udp_entrypoints_in_every_worker_and_sigterm_lets_a_request_finish(start_gateway, backends,
                                                                                      tmp_path) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "support"))
    from certs import make_cert

    cert, key = make_cert(tmp_path, "api", "api.example.com")
    b = backends("a")
    udp_backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_backend.bind(("127.0.0.1", 0))

    def echo() -> None:
        while True:
            try:
                data, addr = udp_backend.recvfrom(2048)
            except OSError:
                return
            udp_backend.sendto(b"echo:" + data, addr)

    threading.Thread(target=echo, daemon=True).start()
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
entrypoints "secure" {{
  address = "127.0.0.1:0"
  tls {{
    cert_file = "{cert}"
    key_file  = "{key}"
  }}
}}
entrypoints "raw" {{
  address  = "127.0.0.1:0"
  protocol = "tcp"
}}
entrypoints "dgram" {{
  address  = "127.0.0.1:0"
  protocol = "udp"
}}
routers "r" {{
  entrypoints = ["web", "secure"]
  rule        = "PathPrefix(`/`)"
  service     = "s"
}}
routers "t" {{
  entrypoints = ["raw"]
  rule        = "HostSNI(`*`)"
  service     = "t"
}}
routers "u" {{
  entrypoints = ["dgram"]
  service     = "u"
}}
services "s" {{ load_balancer {{ servers = [{{ url = "{b.url}" }}] }} }}
services "t" {{ load_balancer {{ servers = [{{ url = "tcp://127.0.0.1:{b.server_address[1]}" }}] }} }}
services "u" {{ load_balancer {{ servers = [{{ url = "udp://127.0.0.1:{udp_backend.getsockname()[1]}" }}] }} }}
shutdown_timeout = "20s"
'''
    gw = start_gateway(hcl)
    assert set(gw.ports) == {"web", "secure", "raw", "dgram"}
    import ssl

    ctx = ssl.create_default_context(cafile=str(cert))

    def tls_get(_: int) -> int:
        with socket.create_connection(("127.0.0.1", gw.ports["secure"]), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="api.example.com") as tls:
            tls.sendall(b"GET /tls HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            return int(data.split(b" ", 2)[1])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(tls_get, range(40))) == [200] * 40
    # TCP: a plain connection through the catch-all SNI router reaches the HTTP backend as a tunnel
    assert [s for s, _ in many(gw.ports["raw"], "/tcp", 20)] == [200] * 20
    # UDP: 20 clients (20 source ports, hashed over the workers), each answered
    for i in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.sendto(b"ping%d" % i, ("127.0.0.1", gw.ports["dgram"]))
            assert c.recvfrom(2048)[0] == b"echo:ping%d" % i
    # SIGTERM while a request is in flight: it finishes, new connections are refused, every process exits 0
    workers = gw.workers()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(get, gw.port, "/slow", 30)
        assert b.slow_started.wait(10)
        gw.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _refused(gw.port), 10, "listeners closed")
        b.release.set()
        assert slow.result(30)[0] == 200
    assert gw.proc.wait(30) == 0
    for pid in workers:
        wait_until(lambda pid=pid: not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), 10, f"worker {pid}")
    udp_backend.close()


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_the_supervisor_scrapes_model_servers_once_and_every_worker_balances_on_the_readings(
        start_gateway, backends) -> None:
    a, b = backends("a"), backends("b")
    a.waiting = 50
    gw = start_gateway(simple(a.url, strategy="inference", servers=f'{{ url = "{a.url}" }}, {{ url = "{b.url}" }}',
                              balancing='inference { scrape_interval = "100ms" }'))

    def readings() -> dict[str, float]:
        rows = json.loads(gw.admin_get("/api/gateway/backends")[1])
        return {r["url"]: r["model_server"]["waiting"] for r in rows if "model_server" in r}

    wait_until(lambda: readings() == {a.url: 50, b.url: 0}, 10, "both scraped")
    time.sleep(0.3)  # the supervisor's sync reaches the workers within 50 ms
    seen = [json.loads(body)["backend"] for _, body in many(gw.port, "/x", 40)]
    assert seen == ["b"] * 40
    start = a.scrapes
    time.sleep(1.0)
    assert 5 <= a.scrapes - start <= 14, a.scrapes - start  # ~10 a second: one scraper (the supervisor)
    a.waiting, b.waiting = 0, 50
    wait_until(lambda: readings() == {a.url: 0, b.url: 50}, 10, "the queues changed places")
    time.sleep(0.3)
    seen = [json.loads(body)["backend"] for _, body in many(gw.port, "/x", 20)]
    assert seen == ["a"] * 20


def test_the_kubernetes_provider_runs_once_in_the_supervisor_and_every_worker_follows_it(
        start_gateway, backends, tmp_path) -> None:
    from kube_fake import FakeCluster  # tests/support: the fake API server (list/watch with resource versions)

    a, b = backends("a"), backends("b")
    loop = asyncio.new_event_loop()  # the fake API server runs on its own loop in a thread
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = FakeCluster()

    def in_cluster(fn: Callable[[], object]) -> None:
        async def call() -> None:
            fn()
        asyncio.run_coroutine_threadsafe(call(), loop).result(5)

    def slice_to(backend: Backend) -> dict[str, object]:
        return {"metadata": {"namespace": "shop", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4", "ports": [{"name": "http", "port": backend.server_address[1]}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}

    asyncio.run_coroutine_threadsafe(cluster.__aenter__(), loop).result(5)
    try:
        in_cluster(lambda: cluster.put("services", {
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
        in_cluster(lambda: cluster.put("endpointslices", slice_to(a)))
        in_cluster(lambda: cluster.put("ingresses", {
            "metadata": {"namespace": "shop", "name": "shop"},
            "spec": {"rules": [{"http": {"paths": [{"path": "/shop", "pathType": "Prefix", "backend": {
                "service": {"name": "web", "port": {"name": "http"}}}}]}}]}}))
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
        gw = start_gateway('entrypoints "web" { address = "127.0.0.1:0" }\n'
                           f'providers {{ kubernetes {{ kubeconfig = "{kubeconfig}" }} }}\n')
        assert len(gw.workers()) == 2

        def served_by(name: str) -> bool:
            replies = many(gw.port, "/shop/cart", 20)  # new connections: both workers answer some
            return all(status == 200 and json.loads(body)["backend"] == name for status, body in replies)

        wait_until(lambda: served_by("a"), 15, "the Ingress served by every worker")
        routes = json.loads(gw.admin_get("/api/gateway/routes")[1])
        assert [(r["name"], r["provider"]) for r in routes] == [("k8s-shop-shop-0-0", "kubernetes")]
        in_cluster(lambda: cluster.put("endpointslices", slice_to(b)))
        wait_until(lambda: served_by("b"), 15, "every worker following the EndpointSlice")
        # one list of each resource: the provider runs in the supervisor only, not once per worker
        assert len(cluster.calls("ingresses", watch=False)) == 1
        assert len(cluster.calls("endpointslices", watch=False)) == 1
    finally:
        asyncio.run_coroutine_threadsafe(cluster.__aexit__(None, None, None), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
