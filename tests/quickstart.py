"""The README's quick start as a user runs it, for any way of starting the gateway (the dev install, an installed
wheel, the single-file binary): its file verbatim, ports 8080 (0.0.0.0), 8001/8002 (its servers), admin 9901, and
an A3S Box API at 127.0.0.1:9090 that is not running (scale calls fail and are counted; the static servers serve)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_QUICKSTART = ROOT / "examples" / "readme-quickstart.hcl"
SECRET = "a-test-secret-of-at-least-32-bytes!"  # HS256 keys shorter than the hash are refused by PyJWT's warning
PORTS = (8080, 8001, 8002, 9901)


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


class QuickStart:
    """The two stand-in model servers of the quick start, and gateways started on its file."""

    def __init__(self) -> None:
        for port in PORTS:
            assert not port_taken(port), f"port {port} is in use: the README quick start needs it free"
        standin = str(ROOT / "tests" / "model_standin.py")
        self.backends = [subprocess.Popen([sys.executable, standin, "--port", str(p), "--name", f"b{p}"])
                         for p in (8001, 8002)]
        import jwt

        self.token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")

    def run(self, command: list[str], cwd: Path | None = None,
            env: dict[str, str] | None = None) -> tuple[float, float]:
        """Start ``command`` on the quick-start file, check what the README promises, stop it with SIGTERM.
        Returns the seconds from start to (the first answer on :8080, the first proxied answer). The second also
        waits for the servers' first readiness probe: they are a scale target's endpoints, not ready until probed."""
        config = README_QUICKSTART
        if cwd is not None:  # run from another directory, the file next to it as a user would have it
            config = cwd / "gateway.hcl"
            config.write_text(README_QUICKSTART.read_text())
        started = time.monotonic()
        gw = subprocess.Popen([*command, "-c", str(config)], cwd=cwd,
                              env={**os.environ, **(env or {}), "JWT_SECRET": SECRET},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = "http://127.0.0.1:8080/v1/models"
            deadline = started + 60
            status = 0
            while time.monotonic() < deadline and gw.poll() is None:
                try:
                    status = get(url)[0]
                    break
                except (ConnectionError, urllib.error.URLError):
                    time.sleep(0.005)
            serving = time.monotonic() - started
            assert status == 401, (status, gw.poll())  # auth-jwt answers at once
            status, body, headers = get(url, {"Authorization": f"Bearer {self.token}"})
            proxied = time.monotonic() - started
            assert status == 200 and json.loads(body)["model"] in ("b8001", "b8002"), (status, body, gw.poll())
            assert "RateLimit-Limit" in headers  # rate-limit
            services = json.loads(get("http://127.0.0.1:9901/api/gateway/services")[1])
            assert services[0]["scaling"]["executor"] == "box" and services[0]["scaling"]["ready_replicas"] == 2
            metrics = get("http://127.0.0.1:9901/metrics")[1].decode()
            assert 'gateway_autoscaler_ready_replicas{service="llm-backend"} 2.0' in metrics
        finally:
            if gw.poll() is None:
                gw.send_signal(signal.SIGTERM)
            _, err = gw.communicate(timeout=30)
        assert gw.returncode == 0, err
        return serving, proxied

    def close(self) -> None:
        for b in self.backends:
            b.terminate()
        for b in self.backends:
            b.wait(10)
