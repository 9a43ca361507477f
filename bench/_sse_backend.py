"""SSE backend of the benchmarks: a small asyncio HTTP/1.1 server (uvloop when installed), run as a subprocess.

    GET /sse?n=N                          N events at once, each its own chunk, in one write (load scenario)
    GET /sse-timed?n=N&interval_us=I      N events I µs apart; each carries time.monotonic_ns() taken just before
                                          its write, so a client on the same machine can measure delivery latency

Responses are `text/event-stream` with chunked framing; connections are kept alive; requests with a body and
anything else get 400 / 404. Usage: python _sse_backend.py --port PORT [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from urllib.parse import parse_qs

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nnot found\n"
BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
MAX_EVENTS = 1_000_000
MAX_HEAD = 65536


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def load_event(i: int) -> bytes:
    return b'data: {"i":%d,"tok":"lorem ipsum"}\n\n' % i


def timed_event(i: int, ts_ns: int) -> bytes:
    return b'data: {"i":%d,"ts":%d}\n\n' % (i, ts_ns)


_load_cache: dict[int, bytes] = {}


def load_response(n: int) -> bytes:
    """The whole `/sse?n=N` response, built once per N."""
    cached = _load_cache.get(n)
    if cached is None:
        cached = HEAD + b"".join(chunk(load_event(i)) for i in range(n)) + LAST_CHUNK
        if len(_load_cache) < 64:
            _load_cache[n] = cached
    return cached


def _int_param(params: dict[str, list[str]], name: str, default: int, high: int) -> int:
    try:
        value = int(params.get(name, [str(default)])[0])
    except ValueError:
        return default
    return max(0, min(value, high))


class SseProtocol(asyncio.Protocol):
    """One connection; requests are handled in order, a timed stream holds the connection until it ends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming = False
        self.close_after = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._serve()

    def _serve(self) -> None:
        while not self.streaming and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._fail()
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ")
            fields = dict(line.partition(b":")[::2] for line in lines[1:])
            has_body = fields.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in fields
            if len(parts) != 3 or has_body:
                self._fail()
                return
            self.close_after = fields.get(b"connection", b"").strip() == b"close"
            path, _, query = parts[1].decode("latin-1").partition("?")
            params = parse_qs(query)
            if path == "/sse":
                self.transport.write(load_response(_int_param(params, "n", 16, MAX_EVENTS)))
            elif path == "/sse-timed":
                n = _int_param(params, "n", 100, MAX_EVENTS)
                interval = _int_param(params, "interval_us", 10_000, 60_000_000) / 1e6
                self.streaming = True
                self.transport.write(HEAD)
                self._tick(asyncio.get_running_loop(), 0, n, time.monotonic(), interval)
            else:
                self.transport.write(NOT_FOUND)
            if self.close_after and not self.streaming and self.transport is not None:
                self.transport.close()
                return

    def _tick(self, loop: asyncio.AbstractEventLoop, i: int, n: int, start: float, interval: float) -> None:
        self.timer = None
        if self.transport is None:
            return
        if i >= n:
            self.transport.write(LAST_CHUNK)
            self.streaming = False
            if self.close_after:
                self.transport.close()
            else:
                self._serve()
            return
        self.transport.write(chunk(timed_event(i, time.monotonic_ns())))
        # Scheduled from the stream's start, so the rate does not drift with callback delays (time.monotonic():
        # uvloop's loop.time() is cached per loop iteration in whole milliseconds).
        delay = max(0.0, start + (i + 1) * interval - time.monotonic())
        self.timer = loop.call_later(delay, self._tick, loop, i + 1, n, start, interval)

    def _fail(self) -> None:
        if self.transport is not None:
            self.transport.write(BAD)
            self.transport.close()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(SseProtocol, host, port, backlog=4096, reuse_port=True,
                                      family=socket.AF_INET)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description="SSE backend for the a3s-gateway benchmarks")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
