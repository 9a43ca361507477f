"""A throw-away ``redis-server`` for tests: free 127.0.0.1 port, no persistence, stopped by its PID afterwards.

Usage (``tests/`` is on ``sys.path``)::

    from redis_server import RedisServer, redis_server

    @pytest.fixture
    def redis() -> Iterator[RedisServer]:
        with redis_server() as server:        # skips (or fails, see below) when redis-server is missing
            yield server                      # server.url == "redis://127.0.0.1:<port>/0"

    async def test_x(redis: RedisServer) -> None:
        ...
        redis.stop()                          # stop it mid-test to exercise failure paths

    # or, inside an async test / fixture:
    async with async_redis_server("--requirepass", "s3cret") as server: ...

Extra arguments are passed to ``redis-server``. When ``redis-server`` is not installed the test is skipped with the
install hint; with ``A3S_REQUIRE_SERVICES=1`` (CI) it fails instead, so a missing service cannot hide tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

INSTALL_HINT = "redis-server not found; install it with: apt-get install -y redis-server"
START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """Path of the ``redis-server`` binary; skip the test (fail under ``A3S_REQUIRE_SERVICES=1``) if missing."""
    path = shutil.which("redis-server")
    if path is None:
        if os.environ.get("A3S_REQUIRE_SERVICES") == "1":
            pytest.fail(INSTALL_HINT + " (A3S_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(INSTALL_HINT)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
            return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")  # up, and maybe password-protected
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; ``start()`` returns once it answers PING, ``stop()`` is idempotent."""

    def __init__(self, *extra_args: str) -> None:
        self.binary = require_redis_server()
        self.extra_args = extra_args
        self.port = 0
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="a3s-redis-")
        self._log = Path(self._dir.name) / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        for _ in range(3):  # the free port may be taken between free_port() and the bind: try another
            self.port = free_port()
            args = [self.binary, "--save", "", "--appendonly", "no", "--port", str(self.port),
                    "--bind", "127.0.0.1", "--dir", self._dir.name, "--daemonize", "no", *self.extra_args]
            with open(self._log, "wb") as out:
                self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.pid = self._proc.pid
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _pings(self.port):
                    return self
                time.sleep(0.02)  # waiting for a process to come up, not for behaviour under test
            self.stop()
        raise RuntimeError(f"redis-server did not start; its log:\n{self._log.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        """Stop the server (SIGTERM by PID, SIGKILL after 5 s) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def redis_server(*extra_args: str) -> Iterator[RedisServer]:
    """A running server for the ``with`` block (usable from sync and async fixtures)."""
    server = RedisServer(*extra_args)
    try:
        yield server.start()
    finally:
        server.close()


@contextlib.asynccontextmanager
async def async_redis_server(*extra_args: str) -> AsyncIterator[RedisServer]:
    """``async with`` form of :func:`redis_server` (start-up blocks the loop for the few ms redis needs)."""
    with redis_server(*extra_args) as server:
        yield server
