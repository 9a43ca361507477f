"""The gateway process survives running out of file descriptors (issue: security defects, D1): while every fd is
taken, new connections fail and requests needing an upstream connection get 502, the process log stays bounded
(no line per failure), and once the descriptors are free again it serves as before. A subprocess with a low
RLIMIT_NOFILE, as a user runs it (uvloop)."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

NOFILE = 64


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, sock: socket.socket | None = None) -> bytes:
    """The status line of one GET (on ``sock`` kept open, or a new connection), its body read by Content-Length so
    a kept connection is ready for the next one; b"" when refused or reset."""
    own = sock is None
    try:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        return head.split(b"\r\n", 1)[0]
    except OSError:
        return b""
    finally:
        if own and sock is not None:
            sock.close()


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_fd_exhaustion_is_survived_and_logged_boundedly(tmp_path: Path) -> None:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = _free_port()
    cfg = tmp_path / "gw.hcl"
    cfg.write_text(f'''
entrypoints "web" {{ address = "127.0.0.1:{port}" }}
routers "all" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{
    servers = [{{ url = "http://127.0.0.1:{backend.server_address[1]}" }}]
    passive {{ ejection = "1s" }}
  }}
  transport {{ max_idle_connections_per_backend = 0 }}
}}
''')
    log = tmp_path / "gw.log"
    with open(log, "wb") as out:
        gw = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--admin", "off"],
                              stdout=out, stderr=subprocess.STDOUT, preexec_fn=_limit)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 30
        while _get(port) != b"HTTP/1.1 200 OK":
            assert gw.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        keep = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _get(port, keep) == b"HTTP/1.1 200 OK"
        # take every descriptor the gateway has left (and more: the surplus is refused or reset)
        for _ in range(NOFILE + 40):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        time.sleep(1.0)
        # an open connection still gets an answer: 502 (no fd for the upstream connection), then 503 once passive
        # health has ejected the backend that "failed", 50 times
        statuses = [_get(port, keep) for _ in range(50)]
        assert gw.poll() is None, "the gateway died"
        assert all(s in (b"HTTP/1.1 502 Bad Gateway", b"HTTP/1.1 503 Service Unavailable") for s in statuses), statuses
        for s in held:
            s.close()
        held.clear()
        # descriptors free again: new connections are served (once the ejection has expired)
        deadline = time.monotonic() + 30
        while _get(port) != b"HTTP/1.1 200 OK":
            assert gw.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert [_get(port) for _ in range(5)] == [b"HTTP/1.1 200 OK"] * 5
        keep.close()
    finally:
        for s in held:
            s.close()
        gw.terminate()
        gw.wait(10)
        backend.shutdown()
    lines = log.read_text(errors="replace").splitlines()
    warnings = [line for line in lines if " WARNING " in line or " ERROR " in line]
    # 50 failed upstream connects and any number of failed accepts: a handful of lines, not one per failure
    assert len(warnings) <= 10, "\n".join(warnings[:20])
