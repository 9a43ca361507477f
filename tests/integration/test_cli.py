"""The ``a3s-gateway`` command as a user runs it: subprocesses on loopback ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from quickstart import BoxApi, QuickStart

ROOT = Path(__file__).resolve().parents[2]
README_QUICKSTART = ROOT / "examples" / "readme-quickstart.hcl"
SECRET = "a-test-secret-of-at-least-32-bytes!"  # HS256 keys shorter than the hash are refused by PyJWT's warning


GATEWAY = [sys.executable, "-m", "a3s_gateway", "--admin", "off"]  # gateways of these tests run without admin API


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a3s_gateway", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version() -> None:
    out = cli("version")
    assert out.returncode == 0 and out.stdout.startswith("a3s-gateway ")
    assert cli("--version").stdout == out.stdout
    verbose = cli("version", "-v").stdout
    assert "http parser" in verbose and "router" in verbose


def test_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    out = cli("-c", str(tmp_path / "nope.hcl"))
    assert out.returncode == 1 and "nope.hcl" in out.stderr
    out = cli("validate", "-c", str(tmp_path / "nope.hcl"))
    assert out.returncode == 1 and "nope.hcl" in out.stdout


def test_no_config_found(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "a3s_gateway"], capture_output=True, text=True, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "A3S_GATEWAY_CONFIG"}, timeout=60)
    assert out.returncode == 1 and "no configuration file found (tried: ./gateway.hcl" in out.stderr


def test_usage_error_exit_2() -> None:
    assert cli("--no-such-flag").returncode == 2
    assert cli("frobnicate").returncode == 2


def test_validate_readme_quickstart() -> None:
    ok = cli("validate", "-c", str(README_QUICKSTART), env={"JWT_SECRET": "s3cret"})
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.strip().endswith(
        "configuration is valid (1 entrypoint, 1 router, 1 service, 2 middlewares)")
    env = {k: v for k, v in os.environ.items() if k != "JWT_SECRET"}
    bad = subprocess.run([sys.executable, "-m", "a3s_gateway", "validate", "-c", str(README_QUICKSTART)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 1
    assert ':33:42: error: middlewares.auth-jwt.value: environment variable "JWT_SECRET" is not set' in bad.stdout


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "two-workers"])
def test_readme_quickstart_runs_verbatim(workers: list[str]) -> None:
    """The README's quick-start file as written (tests/support/quickstart.py: ports 8080, 8001/8002, admin 9901), in
    one process and with a supervisor and two workers (the admin API and metrics then come from the supervisor)."""
    quick = QuickStart()
    try:
        quick.run([sys.executable, "-m", "a3s_gateway", *workers])
    finally:
        quick.close()


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one-process", "two-workers"])
def test_readme_quickstart_cold_starts_through_a_box_api_at_zero_replicas(workers: list[str]) -> None:
    """The same file with a Box API on :9090 that runs no replica: the first request waits while Box is asked for
    one, then goes to a server with X-A3S-Cold-Start: 1 (SPEC §15.1); with two workers the supervisor asks Box."""
    quick = QuickStart()
    box = BoxApi()
    try:
        quick.run([sys.executable, "-m", "a3s_gateway", *workers], box=box)
    finally:
        box.close()
        quick.close()


def test_routes_table(tmp_path: Path) -> None:
    cfg = tmp_path / "g.hcl"
    cfg.write_text('entrypoints "web" { address = "127.0.0.1:0" }\n'
                   'routers "a" { rule = "PathPrefix(`/v1`)"; service = "s" }\n'
                   'routers "b" { rule = "Host(`x.example`) && PathPrefix(`/`)"; service = "s"; priority = 5 }\n'
                   'services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9" }] } }\n')
    out = cli("routes", "-c", str(cfg))
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["PRIORITY", "NAME", "ENTRYPOINTS", "RULE", "SERVICE", "MIDDLEWARES", "SOURCE"]
    assert lines[1].split()[:2] == ["17", "a"] and lines[2].split()[:2] == ["5", "b"]
    assert lines[1].split()[-1] == "file" and out.stderr == ""
    with cfg.open("a") as f:  # a provider adds routers at run time: the file's table says where to see them
        f.write('providers { discovery { seeds = [{ url = "http://127.0.0.1:9" }] } }\n')
    out = cli("routes", "-c", str(cfg))
    assert out.returncode == 0 and "a3s-gateway routes --live <admin address>" in out.stderr


def _get(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_answering(url: str, timeout: float = 20) -> None:
    """Wait until ``url`` answers 200 (the gateway started and its backend is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _get(url)[0] == 200:
                return
        except (ConnectionError, urllib.error.URLError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} did not answer 200 within {timeout}s")


def test_run_serves_quickly_streams_and_stops_on_sigterm(tmp_path: Path) -> None:
    b1, gw_port = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo_backend.py"), "--port", str(b1),
                                "--token-delay", "0.01"])
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(f'entrypoints "web" {{ address = "127.0.0.1:{gw_port}" }}\n'
                   'routers "llm" { rule = "PathPrefix(`/v1`)"; service = "llm" }\n'
                   f'services "llm" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:{b1}" }}] }} }}\n')
    started = time.monotonic()
    gw = subprocess.Popen([*GATEWAY, "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        first = None
        while time.monotonic() - started < 20:
            try:
                status, _ = _get(f"http://127.0.0.1:{gw_port}/v1/models")
                first = time.monotonic() - started
                assert status == 200
                break
            except (ConnectionError, urllib.error.URLError):
                time.sleep(0.02)
        assert first is not None, "gateway never answered"
        # SPEC §13.3 asks for < 1 s; CI machines are shared and noisy, so the bound here is generous.
        assert first < 5, f"first response after {first:.2f}s"
        status, body = _get(f"http://127.0.0.1:{gw_port}/v1/chat/completions", b'{"stream": true}')
        assert status == 200
        events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]" and len(events) > 5
        assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"
        assert _get(f"http://127.0.0.1:{gw_port}/nothing")[0] == 404
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
    finally:
        for p in (gw, backend):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_exit_code_zero(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    cfg = tmp_path / "g.hcl"
    cfg.write_text(f'entrypoints "web" {{ address = "127.0.0.1:{port}" }}\n')
    gw = subprocess.Popen([*GATEWAY, "-c", str(cfg)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.02)
        gw.send_signal(sig)
        assert gw.wait(timeout=15) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()


def test_sighup_reloads_and_a_bad_file_keeps_serving(tmp_path: Path) -> None:
    b, port = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo_backend.py"), "--port", str(b)])
    cfg = tmp_path / "gateway.hcl"
    base = (f'entrypoints "web" {{ address = "127.0.0.1:{port}" }}\n'
            f'services "s" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:{b}" }}] }} }}\n')
    cfg.write_text(base + 'routers "r" { rule = "PathPrefix(`/v1`)"; service = "s" }\n')
    gw = subprocess.Popen([*GATEWAY, "-c", str(cfg)], stderr=subprocess.PIPE, text=True)
    try:
        wait_answering(f"http://127.0.0.1:{port}/v1/models")
        assert _get(f"http://127.0.0.1:{port}/v2/models")[0] == 404
        cfg.write_text(base + 'routers "r" { rule = "PathPrefix(`/v2`)"; service = "s" }\n')
        gw.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _get(f"http://127.0.0.1:{port}/v2/models")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _get(f"http://127.0.0.1:{port}/v2/models")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/v1/models")[0] == 404
        cfg.write_text(base + 'routers "r" { rule = "PathPrefx(`/v3`)"; service = "s" }\n')  # invalid rule
        gw.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert gw.poll() is None and _get(f"http://127.0.0.1:{port}/v2/models")[0] == 200
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
        assert 'unknown matcher "PathPrefx"' in (gw.stderr.read() if gw.stderr else "")
    finally:
        for p in (gw, backend):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_admin_access_log_rotation_and_json_process_log(tmp_path: Path) -> None:
    """SPEC §11: the admin API on --admin, an access log reopened on SIGUSR1, JSON process log lines."""
    b, port, admin = free_port(), free_port(), free_port()
    backend = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo_backend.py"), "--port", str(b)])
    log_path = tmp_path / "access.log"
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(f'entrypoints "web" {{ address = "127.0.0.1:{port}" }}\n'
                   'routers "r" { rule = "PathPrefix(`/v1`)"; service = "s" }\n'
                   f'services "s" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:{b}" }}] }} }}\n'
                   f'access_log {{ path = "{log_path}"; flush_interval = "50ms" }}\n')
    gw = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--admin", f"127.0.0.1:{admin}",
                           "--log-format", "json", "--log-level", "info"], stderr=subprocess.PIPE, text=True)
    try:
        wait_answering(f"http://127.0.0.1:{port}/v1/models")
        status, body = _get(f"http://127.0.0.1:{admin}/api/gateway/health")
        assert status == 200 and json.loads(body)["state"] == "running"
        status, body = _get(f"http://127.0.0.1:{admin}/metrics")
        assert status == 200
        samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples
                   if s.name == "gateway_requests_total"]
        assert [(s.labels, s.value) for s in samples] == [
            ({"router": "r", "service": "s", "method": "GET", "code": "200"}, 1.0)]
        time.sleep(0.3)
        log_path.rename(tmp_path / "access.log.1")
        gw.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        assert _get(f"http://127.0.0.1:{port}/v1/models?after=rotation")[0] == 200
        deadline = time.monotonic() + 5
        while not (log_path.exists() and log_path.read_bytes().endswith(b"\n")) and time.monotonic() < deadline:
            time.sleep(0.05)
        old = [json.loads(line) for line in (tmp_path / "access.log.1").read_text().splitlines()]
        new = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [e["path"] for e in old] == ["/v1/models"] and old[0]["status"] == 200
        assert [e["query"] for e in new] == ["after=rotation"]
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=15) == 0
        records = [json.loads(line) for line in (gw.stderr.read() if gw.stderr else "").splitlines()
                   if line.startswith("{")]
        assert records and all({"timestamp", "level", "logger", "message"} <= set(r) for r in records)
        assert any(r["message"] == "access log reopened" for r in records)
    finally:
        for p in (gw, backend):
            if p.poll() is None:
                p.kill()
                p.wait()
