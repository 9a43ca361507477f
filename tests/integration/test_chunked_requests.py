"""Chunked request bodies are decoded and re-encoded, never relayed byte for byte (SPEC §5.5, issue 24 D10): raw
bytes on the client socket → the exact bytes the backend receives."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from support import Client, config, gateway_port, ok
from test_http2_e2e import H2Client

pytestmark = pytest.mark.timeout(60)

HEAD = b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
BAD_CHUNK = {"error": "Bad request: invalid chunked encoding"}


def request_end(data: bytes) -> int | None:
    """Offset past a complete chunked request in ``data`` (None: not complete yet); size lines must be bare hex."""
    pos = data.find(b"\r\n\r\n")
    if pos < 0:
        return None
    pos += 4
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        line = data[pos:eol]
        assert line and all(c in b"0123456789abcdef" for c in line), line  # the gateway's own encoding
        size = int(line, 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            return None if end < 0 else end + 4
        if len(data) < pos + size + 2:
            return None
        assert data[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2


def decode(raw: bytes) -> tuple[bytes, bytes]:
    """(payload, trailer section) of a chunked body the gateway encoded."""
    assert request_end(b"\r\n\r\n" + raw) == len(raw) + 4  # complete, bare hex sizes only
    payload = bytearray()
    pos = 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        if size == 0:
            return bytes(payload), raw[eol + 2 :]
        payload += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


class RawBackend:
    """A loopback backend keeping every byte it receives per connection; it answers 200 once a chunked request is
    complete, or (``early``) sends a streaming response head as soon as the request head arrived."""

    def __init__(self, early: bool = False) -> None:
        self.early = early
        self.conns: list[bytearray] = []
        self.eof: list[bool] = []
        self.changed = asyncio.Event()
        self.port = 0

    async def start(self) -> RawBackend:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = bytearray()
        i = len(self.conns)
        self.conns.append(data)
        self.eof.append(False)
        start = 0  # where the request being received begins
        try:
            while True:
                got = await reader.read(65536)
                if not got:
                    break
                data += got
                self.changed.set()
                if self.early:
                    if start == 0 and b"\r\n\r\n" in data:
                        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nearly\r\n")
                        start = -1
                    continue
                end = request_end(bytes(data[start:]))
                if end is not None:
                    writer.write(ok(b"done"))
                    start += end
        except ConnectionError:
            pass
        finally:
            self.eof[i] = True
            self.changed.set()
            writer.close()

    async def until(self, check: Callable[[], bool], timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                self.changed.clear()
                await self.changed.wait()

    def body(self, i: int = 0) -> bytes:
        """What connection ``i`` received after the request head."""
        return bytes(self.conns[i]).split(b"\r\n\r\n", 1)[1]

    def head(self, i: int = 0) -> bytes:
        return bytes(self.conns[i]).split(b"\r\n\r\n", 1)[0]


async def setup(start_gateway, early: bool = False) -> tuple[RawBackend, Client]:  # type: ignore[no-untyped-def]
    backend = await RawBackend(early).start()
    gw = await start_gateway(config([backend.url]))
    return backend, await Client.connect(gateway_port(gw))


async def test_chunk_extensions_dropped(start_gateway) -> None:
    backend, c = await setup(start_gateway)
    r = await c.request(HEAD + b'3;ext=1\r\nabc\r\n4 ; a = "b;c"\r\ndefg\r\n0;last=1\r\n\r\n')
    assert r.status == 200 and r.body == b"done"
    assert b"\r\nTransfer-Encoding: chunked" in backend.head()
    assert backend.body() == b"7\r\nabcdefg\r\n0\r\n\r\n"


async def test_multi_chunk_body_reencoded_as_it_arrives(start_gateway) -> None:
    backend, c = await setup(start_gateway)
    c.send(HEAD + b"0005\r\nhello\r\n")
    await backend.until(lambda: bool(backend.conns) and backend.conns[0].endswith(b"hello\r\n"))
    c.send(b"6\r\n world\r\n3\r\n!!!\r\n")
    await backend.until(lambda: backend.conns[0].endswith(b"!!!\r\n"))
    c.send(b"A\r\n0123456789\r\n0\r\n\r\n")
    r = await c.response()
    assert r.status == 200
    assert backend.body() == b"5\r\nhello\r\n9\r\n world!!!\r\na\r\n0123456789\r\n0\r\n\r\n"
    # the connection stays usable: a second chunked request on it
    r = await c.request(HEAD + b"2;x\r\nhi\r\n0\r\n\r\n")
    assert r.status == 200 and bytes(backend.conns[0]).endswith(b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n")


async def test_large_chunked_body_payload_intact(start_gateway) -> None:
    backend, c = await setup(start_gateway)
    payload = bytes(range(256)) * 1200  # 300 KiB in chunks of at most 1000 bytes, each with an extension
    pieces = [payload[i : i + 1000] for i in range(0, len(payload), 1000)]
    body = b"".join(b"%x;n=%d\r\n%s\r\n" % (len(p), i, p) for i, p in enumerate(pieces))
    r = await c.request(HEAD + body + b"0\r\n\r\n")
    assert r.status == 200
    assert decode(backend.body()) == (payload, b"\r\n")


async def test_forbidden_trailers_dropped_allowed_one_forwarded(start_gateway) -> None:
    backend, c = await setup(start_gateway)
    r = await c.request(HEAD + b"2\r\nhi\r\n0\r\nContent-Length: 50\r\nX-Checksum: abc\r\nHost: admin.local\r\n"
                        b"Authorization: Basic eA==\r\nTransfer-Encoding: chunked\r\nContent-Type: text/x\r\n"
                        b"Cookie: s=1\r\nExpect: 100-continue\r\nCache-Control: no-cache\r\nrange: bytes=0-1\r\n"
                        b"TE: trailers\r\nServer-Timing: db;dur=5\r\n\r\n")
    assert r.status == 200
    assert backend.body() == b"2\r\nhi\r\n0\r\nX-Checksum: abc\r\nServer-Timing: db;dur=5\r\n\r\n"


@pytest.mark.parametrize("size", [b"FFFFFFFFFFFFFFFF", b"8000000000000000", b"10000000000000000",
                                  b"00000000000000005"])
async def test_oversized_chunk_size_400_and_backend_gets_nothing(start_gateway, size: bytes) -> None:
    backend, c = await setup(start_gateway)
    r = await c.request(HEAD + size + b"\r\nhello\r\n0\r\n\r\n")
    assert r.status == 400 and json.loads(r.body) == BAD_CHUNK and r.header("connection") == "close"
    assert await c.closed()
    await asyncio.sleep(0.1)
    # the body is read with the head, before any upstream connection: the backend gets nothing of it
    assert all(bytes(data).partition(b"\r\n\r\n")[2] == b"" for data in backend.conns)


@pytest.mark.parametrize("bad", [b"FFFFFFFFFFFFFFFF\r\n", b"10000000000000000\r\n", b"0\r\nX-A : 1\r\n\r\n",
                                 b"0\r\nContent-Length: 50\r\n 7\r\n\r\n"])
async def test_violation_after_forwarding_started_aborts_upstream(start_gateway, bad: bytes) -> None:
    backend, c = await setup(start_gateway)
    c.send(HEAD + b"5\r\nhello\r\n")
    await backend.until(lambda: bool(backend.conns) and backend.conns[0].endswith(b"5\r\nhello\r\n"))
    c.send(bad)
    r = await c.response()
    assert r.status == 400 and json.loads(r.body) == BAD_CHUNK and r.header("connection") == "close"
    assert await c.closed()
    await backend.until(lambda: backend.eof[0])  # the upstream request was aborted
    assert backend.body() == b"5\r\nhello\r\n"  # and nothing of the bad part reached it


async def test_violation_after_the_response_started_closes(start_gateway) -> None:
    backend, c = await setup(start_gateway, early=True)
    c.send(HEAD + b"5\r\nhello\r\n")
    head = await asyncio.wait_for(c.reader.readuntil(b"early\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    c.send(b"FFFFFFFFFFFFFFFF\r\n")
    rest = await asyncio.wait_for(c.reader.read(), 5)
    assert rest == b""  # cut: no 400 after a response began, no terminating chunk
    await backend.until(lambda: backend.eof[0])
    assert backend.body() == b"5\r\nhello\r\n"


async def test_http2_request_body_and_trailers_to_http1_backend(start_gateway) -> None:
    backend = await RawBackend().start()
    gw = await start_gateway(config([backend.url]))
    client = await H2Client.connect(gateway_port(gw))
    try:
        conn = client.conn
        sid = conn.get_next_available_stream_id()
        client.streams[sid] = {"headers": {}, "body": b"", "chunks": [], "trailers": {}, "done": asyncio.Event(),
                               "reset": False}
        conn.send_headers(sid, [(":method", "POST"), (":path", "/h2"), (":scheme", "http"), (":authority", "a")])
        conn.send_data(sid, b"hello ")
        conn.send_data(sid, b"world")
        conn.send_headers(sid, [("x-checksum", "abc"), ("content-length", "50"), ("authorization", "x"),
                                ("content-type", "text/x")], end_stream=True)
        client.writer.write(conn.data_to_send())
        r = await client.wait(sid)
        assert r["headers"][b":status"] == b"200" and r["body"] == b"done"
    finally:
        client.close()
    assert decode(backend.body()) == (b"hello world", b"x-checksum: abc\r\n\r\n")
