"""The README's quick start as a user runs it, for any way of starting the gateway (the dev install, an installed
wheel, the single-file binary): its file verbatim, ports 8080 (0.0.0.0), 8001/8002 (its servers), admin 9901, and
an A3S Box API at 127.0.0.1:9090 that is not running (scale calls fail and are counted; the static servers serve)
or, with :class:`BoxApi`, one that runs no replica until asked (the first request waits for one: a cold start)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
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


class BoxApi:
    """The A3S Box scale API on 127.0.0.1:9090 (SPEC §8.5), in a thread: ``replicas`` starts at 0 and a POST sets it;
    a GET reports it without ``endpoints`` (so the quick start's two servers stand in for the replicas). ``calls``
    lists (method, JSON body or None) in order."""

    def __init__(self) -> None:
        assert not port_taken(9090), "port 9090 is in use: the README quick start's Box API needs it"
        self.replicas = 0
        self.calls: list[tuple[str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.calls.append(("GET", None))
                self._answer({"replicas": api.replicas})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.calls.append(("POST", body))
                api.replicas = body["desired_replicas"]
                self._answer({"accepted": True, "actual_replicas": api.replicas, "message": "ok"})

            def _answer(self, reply: dict[str, Any]) -> None:
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 9090), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class QuickStart:
    """The two stand-in model servers of the quick start, and gateways started on its file."""

    def __init__(self) -> None:
        for port in PORTS:
            assert not port_taken(port), f"port {port} is in use: the README quick start needs it free"
        standin = str(ROOT / "tests" / "support" / "model_standin.py")
        self.backends = [subprocess.Popen([sys.executable, standin, "--port", str(p), "--name", f"b{p}"])
                         for p in (8001, 8002)]
        import jwt

        self.token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")

    def run(self, command: list[str], cwd: Path | None = None,
            env: dict[str, str] | None = None, box: BoxApi | None = None) -> tuple[float, float]:
        """Start ``command`` on the quick-start file, check what the README promises, stop it with SIGTERM.
        Returns the seconds from start to (the first answer on :8080, the first proxied answer). The second also
        waits for the servers' first readiness probe: they are a scale target's endpoints, not ready until probed.
        With ``box`` the first proxied request is a cold start: Box at zero replicas is asked for one first."""
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
            if box is not None:  # Box has answered that it runs no replica: no server may take the request
                while time.monotonic() < deadline and not box.calls:
                    time.sleep(0.005)
                assert box.calls[0] == ("GET", None) and box.replicas == 0
            status, body, headers = get(url, {"Authorization": f"Bearer {self.token}"})
            proxied = time.monotonic() - started
            assert status == 200 and json.loads(body)["model"] in ("b8001", "b8002"), (status, body, gw.poll())
            assert "RateLimit-Limit" in headers  # rate-limit
            if box is not None:
                assert headers.get("X-A3S-Cold-Start") == "1", headers
                posts = [body for method, body in box.calls if method == "POST"]
                assert posts == [{"service": "llm-backend", "direction": "Up", "current_replicas": 0,
                                  "desired_replicas": 1, "reason": "cold start: a request is waiting"}], box.calls
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
