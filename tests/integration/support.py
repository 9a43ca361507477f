"""Test peers on real loopback sockets: a scriptable backend and a raw HTTP/1.1 client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class Request:
    """A request as the backend received it."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_names(self) -> list[str]:
        return [k for k, _ in self.headers]


async def read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k, v.strip()))
    return lines[0], headers


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
    body = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            trailers = []
            while True:
                line = await reader.readuntil(b"\r\n")
                if line == b"\r\n":
                    return body, trailers
                k, _, v = line.decode().partition(":")
                trailers.append((k, v.strip()))
        body += await reader.readexactly(size)
        await reader.readexactly(2)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    raw = await read_head(reader)
    if raw is None:
        return None
    first, headers = parse_head(raw)
    method, target, version = first.split(" ")
    req = Request(method, target, version, headers, b"", raw)
    te = req.header("transfer-encoding")
    if te and "chunked" in te.lower():
        req.body, _ = await read_chunked(reader)
    elif req.header("content-length"):
        req.body = await reader.readexactly(int(req.header("content-length") or 0))
    return req


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


def ok(body: bytes = b"ok", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@dataclass
class Backend:
    """A loopback HTTP/1.1 backend; ``handler`` answers each request and returns False to close the connection."""

    handler: Handler | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    server: asyncio.AbstractServer | None = None

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            while True:
                req = await read_request(reader)
                if req is None:
                    break
                self.requests.append(req)
                if self.handler is None:
                    writer.write(ok(b"hello from backend"))
                    await writer.drain()
                    keep = True
                else:
                    keep = await self.handler(req, reader, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_connections -= 1
            self.closed.set()
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def start_backend(handler: Handler | None = None) -> Backend:
    return await Backend(handler).start()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> Response:
    raw = await reader.readuntil(b"\r\n\r\n")
    first, headers = parse_head(raw)
    status = int(first.split(" ")[1])
    resp = Response(status, headers, b"")
    if head_request or status in (204, 304) or 100 <= status < 200:
        return resp
    te = resp.header("transfer-encoding")
    if te and "chunked" in te.lower():
        resp.body, resp.trailers = await read_chunked(reader)
    elif resp.header("content-length") is not None:
        resp.body = await reader.readexactly(int(resp.header("content-length") or 0))
    else:
        resp.body = await reader.read()
    return resp


class Client:
    """A raw HTTP/1.1 client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(self, data: bytes, head_request: bool = False) -> Response:
        self.writer.write(data)
        return await asyncio.wait_for(read_response(self.reader, head_request), 5)

    async def response(self, head_request: bool = False) -> Response:
        return await asyncio.wait_for(read_response(self.reader, head_request), 5)

    async def closed(self, timeout: float = 5) -> bool:
        """True when the server closed the connection (EOF) within ``timeout``."""
        try:
            data = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionError, TimeoutError, asyncio.TimeoutError):
            return False
        return data == b"" or self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


def gateway_port(gw: object, name: str = "web") -> int:
    return gw.bound_addresses()[name][1]  # type: ignore[attr-defined]


def config(backend_urls: list[str], extra_service: str = "", rule: str = "PathPrefix(`/`)", entry: str = "") -> str:
    servers = ", ".join(f'{{ url = "{u}" }}' for u in backend_urls)
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {entry}
}}
routers "r" {{
  rule    = "{rule}"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{servers}] }}
  {extra_service}
}}
'''
