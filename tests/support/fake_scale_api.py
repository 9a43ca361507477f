"""A fake HTTP/1.1 API server for the scale-executor tests (Box, Kubernetes), and a recording endpoint sink.

``async with FakeApi(handler) as api``: serves on 127.0.0.1:``api.port``; every request (head and
``Content-Length`` body) is appended to ``api.requests`` and passed to ``handler(request, writer)``, which writes
the response; the connection is closed when the handler returns.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Request:
    """One request as the fake server received it."""

    def __init__(self, head: bytes, body: bytes) -> None:
        lines = head[:-4].decode("latin-1").split("\r\n")
        self.method, self.target, _ = lines[0].split(" ")
        self.headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        parts = urlsplit(self.target)
        self.path = parts.path
        self.query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.body = body

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]


def response(status: int, body: Any = b"", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A raw response with Content-Length; ``body`` bytes as is, anything else as JSON."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    # one request per connection (the server closes it after the handler): say so, or a pooling client reuses it
    head = [f"HTTP/1.1 {status} X", *(f"{n}: {v}" for n, v in headers), f"Content-Length: {len(data)}",
            "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def answer(status: int, body: Any = b"") -> Handler:
    """A handler that always answers ``response(status, body)``."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response(status, body))

    return handler


class FakeApi:
    """The server; ``requests`` lists what it received, in order."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[Request] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeApi:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(v) for n, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                           if n.strip().lower() == b"content-length"), 0)
            request = Request(head, await reader.readexactly(length))
            self.requests.append(request)
            await self.handler(request, writer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        except asyncio.CancelledError:  # __aexit__ ends a streaming handler (Python 3.11 logs cancelled callbacks)
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


class Sink:
    """Records every ``set_endpoints`` call (``calls``: the URLs, ``replicas``: the count they stand for);
    ``await sink.next()`` waits for the next one."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.replicas: list[int | None] = []
        self._queue: asyncio.Queue[list[str]] = asyncio.Queue()

    def set_endpoints(self, urls: list[str], replicas: int | None = None) -> None:
        self.calls.append(list(urls))
        self.replicas.append(replicas)
        self._queue.put_nowait(list(urls))

    async def next(self, timeout: float = 5.0) -> list[str]:
        return await asyncio.wait_for(self._queue.get(), timeout)

    def pending(self) -> int:
        return self._queue.qsize()
