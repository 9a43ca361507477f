"""examples/: every configuration validates, and the `make run` demo shows what it says — a streamed completion
from a model started from zero, rate limiting, the replica in the admin API — on ports 8080 and 9901."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quickstart import get, port_taken

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("config", sorted(p.name for p in EXAMPLES.glob("*.hcl")))
def test_example_validates(config: str) -> None:
    out = subprocess.run([sys.executable, "-m", "a3s_gateway", "validate", "-c", str(EXAMPLES / config)],
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
