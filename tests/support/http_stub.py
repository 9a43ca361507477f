"""A tiny asyncio HTTP/1.1 server for the auth-middleware tests: records each request head, answers raw bytes."""

from __future__ import annotations

import asyncio
import inspect
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


class Seen:
    """One request head as the stub received it."""

    def __init__(self, head: bytes) -> None:
        lines = head[:-4].split(b"\r\n")
        self.method, self.target, self.version = lines[0].split(b" ")
        self.headers = [(n, v.strip()) for n, _, v in (line.partition(b":") for line in lines[1:])]
        self.raw = head

    def get(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


Responder = Callable[[Seen], bytes | Awaitable[bytes]]


def response(status: int, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"", length: bool = True
             ) -> bytes:
    """A raw response; ``length=False`` leaves the framing to ``headers`` (chunked) or the connection close."""
    head = [f"HTTP/1.1 {status} X".encode()]
    head += [n + b": " + v for n, v in headers]
    if length:
        head.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Stub:
    """``async with Stub(respond) as s``: serves on 127.0.0.1:``s.port``; ``s.seen`` lists the request heads."""

    def __init__(self, respond: Responder, tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.tls = tls
        self.seen: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def __aenter__(self) -> Stub:
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
            seen = Seen(await reader.readuntil(b"\r\n\r\n"))
            self.seen.append(seen)
            out = self.respond(seen)
            data = await out if inspect.isawaitable(out) else out
            writer.write(data)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
