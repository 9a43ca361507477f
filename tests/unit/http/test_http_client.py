"""The control-plane HTTP client reads responses with the proxy's own parser (compiled and pure twins): framing by
Content-Length, chunked and end of connection, interim 1xx responses, bounds, and strict rejection of malformed
heads — against a loopback server that writes exactly the bytes given, split into small writes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from impls import load, twins  # type: ignore[import-not-found]

from a3s_gateway.http import client

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=twins("http parser"))
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    module = load(request.param)
    monkeypatch.setattr(client.parser, "parse_response", module.parse_response)
    monkeypatch.setattr(client.parser, "new_chunked_decoder", module.ChunkedDecoder)
    yield module


async def _serve(response: bytes, split: int) -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for at in range(0, len(response), split):
            writer.write(response[at : at + split])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _fetch(response: bytes, split: int = 7, max_body: int = client.MAX_BODY) -> client.Result:
    server, port = await _serve(response, split)
    try:
        return await client.fetch(client.Target(f"http://127.0.0.1:{port}/x"), b"GET", [], max_body)
    finally:
        server.close()


CASES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", 200, b"hello"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n", 200,
     b"abcde"),
    (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", 200, b"until the end"),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
     b"HTTP/1.1 204 No Content\r\n\r\n", 204, b""),
]


@pytest.mark.parametrize(("raw", "status", "body"), CASES)
@pytest.mark.parametrize("split", [1, 7, 4096])
async def test_framings(parser: object, raw: bytes, status: int, body: bytes, split: int) -> None:
    result = await _fetch(raw, split)
    assert (result.status, result.body) == (status, body)


async def test_headers_keep_their_case_and_order(parser: object) -> None:
    result = await _fetch(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-B: 2\r\nx-a: 1\r\n\r\n")
    assert result.headers == [(b"Content-Length", b"0"), (b"X-B", b"2"), (b"x-a", b"1")]
    assert result.get(b"x-b") == b"2"


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-",
])
async def test_malformed_responses_are_protocol_errors(parser: object, raw: bytes) -> None:
    with pytest.raises(client.ProtocolError):
        await _fetch(raw)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + b"x" * 100 + b"\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\n" + b"x" * 100,
])
async def test_bodies_over_the_limit_are_refused(parser: object, raw: bytes) -> None:
    with pytest.raises(client.ProtocolError, match="too large"):
        await _fetch(raw, 4096, max_body=50)


def test_parse_head(parser: object) -> None:
    assert client.parse_head(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\n") == (200, [(b"A", b"b")])
    with pytest.raises(client.ProtocolError):
        client.parse_head(b"HTTP/1.1 200 OK\r\nA b\r\n\r\n")
