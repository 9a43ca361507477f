"""examples/: every configuration validates, and the `make run` demo shows what it says — a streamed completion
from a model started from zero, rate limiting, the replica in the admin API — on ports 8080 and 9901."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from quickstart import get, port_taken

from a3s_gateway.proxy.tls import generate_self_signed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("config", sorted(p.name for p in EXAMPLES.glob("*.hcl")))
def test_example_validates(config: str, tmp_path: Path) -> None:
    """Strictly (no warning either), as a user has it: certificates the example names under certs/ made the way
    run_demo.py makes them."""
    path = tmp_path / config
    text = (EXAMPLES / config).read_text()
    path.write_text(text)
    names = re.findall(r'"(certs/[^"]+\.pem)"', text)
    if names:
        (tmp_path / "certs").mkdir()
        cert, key = generate_self_signed()
        for name in names:
            (tmp_path / name).write_bytes(key if "key" in name else cert)
    out = subprocess.run([sys.executable, "-m", "a3s_gateway", "validate", "--strict", "-c", str(path)],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "JWT_SECRET": "x" * 40})
    assert out.returncode == 0, out.stdout + out.stderr


def _stream(port: int) -> tuple[int, dict[str, str], list[str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({"stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    events = [line.decode().strip() for line in resp if line.startswith(b"data: ")]
    conn.close()
    return resp.status, dict(resp.getheaders()), events


@pytest.mark.timeout(120)
def test_make_run_demo_streams_scales_from_zero_and_rate_limits() -> None:
    for port in (8080, 9901):
        assert not port_taken(port), f"port {port} is in use: the demo needs it free"
    demo = subprocess.Popen([sys.executable, str(EXAMPLES / "run_demo.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_taken(8080) and time.monotonic() < deadline:
            time.sleep(0.05)
        services = json.loads(get("http://127.0.0.1:9901/api/gateway/services")[1])
        assert services[0]["scaling"]["ready_replicas"] == 0  # nothing runs before the first request

        status, headers, events = _stream(8080)
        assert status == 200 and headers.get("X-A3S-Cold-Start") == "1", (status, headers)
        assert len(events) > 5 and events[-1] == "data: [DONE]"
        assert "RateLimit-Remaining" in headers
        services = json.loads(get("http://127.0.0.1:9901/api/gateway/services")[1])
        assert services[0]["scaling"]["ready_replicas"] == 1

        codes = [get("http://127.0.0.1:8080/v1/models")[0] for _ in range(15)]
        assert codes.count(200) >= 9 and 429 in codes, codes  # burst of 10, one already spent on the stream
    finally:
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, out
    assert "curl -N" in out  # the demo says what to try


@pytest.mark.timeout(120)
def test_make_run_readme_full_example(tmp_path: Path) -> None:
    """The runnable full example: HTTPS with the certificate run_demo.py makes, JWT, revisions under a rollout."""
    for port in (8080, 8443, 9901, 8001, 8002, 8003):
        assert not port_taken(port), f"port {port} is in use: the example needs it free"
    config = tmp_path / "readme-full.hcl"
    config.write_text((EXAMPLES / "readme-full.hcl").read_text())
    secret = "s" * 40
    demo = subprocess.Popen([sys.executable, str(EXAMPLES / "run_demo.py"), str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "JWT_SECRET": secret})
    try:
        deadline = time.monotonic() + 30
        while not port_taken(8443) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "certs" / "localhost.pem").is_file()
        plain = http.client.HTTPConnection("127.0.0.1", 8080, timeout=10)
        plain.request("GET", "/v1/models", headers={"Host": "localhost:8080"})
        moved = plain.getresponse()
        plain.close()
        assert moved.status in (301, 308) and moved.getheader("Location", "").startswith("https://localhost:8443/")
        import jwt

        token = jwt.encode({"sub": "t", "exp": int(time.time()) + 600}, secret, algorithm="HS256")
        tls = ssl.create_default_context(cafile=str(tmp_path / "certs" / "localhost.pem"))
        for _ in range(100):  # the revisions' servers are a scale target's endpoints: ready once probed
            secure = http.client.HTTPSConnection("localhost", 8443, context=tls, timeout=10)
            secure.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"})
            answer = secure.getresponse()
            body = answer.read()
            secure.close()
            if answer.status == 200:
                break
            time.sleep(0.1)
        assert answer.status == 200 and json.loads(body)["backend"] == "backend-8001", body  # v1 has 100 %
        services = {s["name"]: s for s in json.loads(get("http://127.0.0.1:9901/api/gateway/services")[1])}
        assert services["llm-service"]["rollout"] is not None
    finally:
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=60)
    assert demo.returncode == 0, out
    assert "Authorization: Bearer ey" in out  # the printed try-line carries a token


@pytest.mark.timeout(60)
def test_make_run_llm_gateway_streams_by_model_with_usage_and_scraped_metrics() -> None:
    """examples/llm-gateway.hcl: the demo model servers report vLLM metrics the inference strategy scrapes, and a
    streamed completion routed by its model is accounted from the stream's usage chunk in the access log."""
    for port in (8080, 9901, 8001, 8002):
        assert not port_taken(port), f"port {port} is in use: the example needs it free"
    demo = subprocess.Popen([sys.executable, str(EXAMPLES / "run_demo.py"), str(EXAMPLES / "llm-gateway.hcl")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        scraped: list[dict[str, object]] = []
        while len(scraped) < 2 and time.monotonic() < deadline:  # both llama servers scraped
            time.sleep(0.1)
            if port_taken(9901):
                scraped = [b for b in json.loads(get("http://127.0.0.1:9901/api/gateway/backends")[1])
                           if b["service"] == "llama" and "model_server" in b]
        assert len(scraped) == 2, scraped
        conn = http.client.HTTPConnection("127.0.0.1", 8080, timeout=30)
        conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                     body=json.dumps({"model": "llama-3-8b", "stream": True, "stream_options": {"include_usage": True},
                                      "messages": [{"role": "user", "content": "Hello"}]}))
        resp = conn.getresponse()
        events = [line.decode().strip() for line in resp if line.startswith(b"data: ")]
        conn.close()
        assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
        assert json.loads(events[-2][6:])["usage"]["completion_tokens"] == 13 and events[-1] == "data: [DONE]"
        assert "gateway_llm_requests_total" in get("http://127.0.0.1:9901/metrics")[1].decode()
    finally:
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=30)
    assert demo.returncode == 0, out
    logged = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"model"' in line]
    assert any(e["model"] == "llama-3-8b" and e["output_tokens"] == 13 and e["usage_source"] == "reported"
               for e in logged), out
