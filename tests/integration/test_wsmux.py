"""ws-mux (SPEC §6.16, §9.4): the channel protocol over real loopback WebSockets, under asyncio and uvloop.

The gateway side is a tiny upgrade server that does what the HTTP/1.1 path does: read the upgrade head, write
``handshake_response``, hand the transport (and the bytes after the head) to a ``MuxConnection``. Clients and the
backend are the ``websockets`` library; replies are asserted byte-exact against the table of §9.4.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from a3s_gateway.wsmux.hub import Hub, MuxConfig, MuxConnection, accept_key, handshake_response

pytestmark = pytest.mark.timeout(15)  # every async test runs under both loops (tests/integration/conftest.py)

STEP = 3.0  # bound on any single wait for the other side


class _Upgrade(asyncio.Protocol):
    """The gateway's part of the upgrade: 101, then the transport goes to a MuxConnection with the leftover bytes."""

    def __init__(self, hub: Hub, sndbuf: int | None, on_close: Callable[[], None] | None) -> None:
        self.hub = hub
        self.sndbuf = sndbuf
        self.on_close = on_close
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        if self.sndbuf is not None:
            self.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, rest = self.buf[:end], self.buf[end + 4 :]
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")[1:]
            if line.lower().startswith(b"sec-websocket-key:")
        )
        self.transport.write(handshake_response(key))
        conn = MuxConnection(self.hub, rest, self.on_close)
        self.transport.set_protocol(conn)
        conn.connection_made(self.transport)


@asynccontextmanager
async def mux(
    cfg: MuxConfig | None = None,
    *,
    sndbuf: int | None = None,
    on_close: Callable[[], None] | None = None,
    **hub_kw: Any,
) -> AsyncIterator[tuple[Hub, str]]:
    """A hub behind a loopback upgrade server; yields (hub, ws:// URL)."""
    loop = asyncio.get_running_loop()
    hub = Hub("r1", cfg or MuxConfig(), loop, **hub_kw)
    server = await loop.create_server(lambda: _Upgrade(hub, sndbuf, on_close), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield hub, f"ws://127.0.0.1:{port}/mux"
    finally:
        await asyncio.wait_for(hub.close(), 10)
        server.close()
        await server.wait_closed()


async def recv(ws: ClientConnection) -> str:
    msg = await asyncio.wait_for(ws.recv(), STEP)
    assert isinstance(msg, str)
    return msg


async def ask(ws: ClientConnection, text: str) -> str:
    await ws.send(text)
    return await recv(ws)


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the connection closes; the code and reason of the Close frame the gateway sent."""

    async def drain() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(drain(), STEP * 2)
    rcvd = info.value.rcvd
    assert rcvd is not None, "the gateway sent no Close frame"
    return rcvd.code, rcvd.reason


# --- handshake and config --------------------------------------------------------------------------------------


def test_accept_key_rfc6455_vector() -> None:
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_response_bytes() -> None:
    assert handshake_response(b"dGhlIHNhbXBsZSBub25jZQ==", b"X-A: 1\r\n") == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-A: 1\r\n\r\n"
    )


def test_config_from_params() -> None:
    assert MuxConfig.from_params({}) == MuxConfig(64, "", 256, 1048576)
    cfg = MuxConfig.from_params({"max_channels": 1024, "upstream_path": "/up", "send_queue": 1, "max_message_bytes": 9})
    assert cfg == MuxConfig(1024, "/up", 1, 9)
    for bad in (
        {"max_channels": 0},
        {"max_channels": 1025},
        {"send_queue": 0},
        {"max_message_bytes": "1"},
        {"max_channels": True},
        {"upstream_path": "up"},
    ):
        with pytest.raises(ValueError, match="ws-mux"):
            MuxConfig.from_params(bad)


# --- the text protocol -----------------------------------------------------------------------------------------


async def test_sub_unsub_ping_list_replies() -> None:
    async with mux() as (hub, url), connect(url) as ws:
        assert await ask(ws, "_ping") == "_pong"
        assert await ask(ws, "_list") == "_channels:[]"
        assert await ask(ws, "_sub:news") == "_ok:subscribed to news"
        assert await ask(ws, "_sub:news") == "_ok:already subscribed to news"
        assert await ask(ws, "_sub:a.b/c-1") == "_ok:subscribed to a.b/c-1"
        assert await ask(ws, "_list") == '_channels:["a.b/c-1","news"]'
        assert json.loads((await ask(ws, "_list"))[len("_channels:") :]) == ["a.b/c-1", "news"]
        assert set(hub.channels) == {"news", "a.b/c-1"}
        assert await ask(ws, "_unsub:news") == "_ok:unsubscribed from news"
        assert await ask(ws, "_unsub:news") == "_ok:not subscribed to news"
        assert await ask(ws, "_list") == '_channels:["a.b/c-1"]'
        assert set(hub.channels) == {"a.b/c-1"}
    assert not hub.clients and not hub.channels


async def test_on_close_runs_once_when_the_client_leaves() -> None:
    closes: list[int] = []
    done = asyncio.Event()
    async with mux(on_close=lambda: (closes.append(1), done.set())) as (hub, url):
        async with connect(url) as ws:
            assert await ask(ws, "_sub:ch") == "_ok:subscribed to ch"
            assert closes == []
        await asyncio.wait_for(done.wait(), STEP)
        assert closes == [1]
        assert not hub.clients and not hub.channels


async def test_publish_reaches_other_subscribers_in_order_not_the_sender() -> None:
    async with mux() as (_, url), connect(url) as a, connect(url) as b, connect(url) as c:
        for ws in (a, b):
            assert await ask(ws, "_sub:ch") == "_ok:subscribed to ch"
        assert await ask(c, "_sub:other") == "_ok:subscribed to other"
        for i in range(50):
            await a.send(f"ch:msg {i}: with: colons")
        assert [await recv(b) for _ in range(50)] == [f"ch:msg {i}: with: colons" for i in range(50)]
        # the sender's next message is the pong: its own publishes did not come back; c saw nothing either
        assert await ask(a, "_ping") == "_pong"
        assert await ask(c, "_ping") == "_pong"
        assert await ask(b, "_ping") == "_pong"


async def test_publish_without_subscription() -> None:
    async with mux() as (_, url), connect(url) as a, connect(url) as b:
        assert await ask(b, "_sub:ch") == "_ok:subscribed to ch"
        assert await ask(a, "ch:hi") == "_error:not subscribed to ch"
        assert await ask(b, "_ping") == "_pong"  # nothing was delivered to the subscriber


@pytest.mark.parametrize("name", ["", "_private", "a" * 129, "a b", "caf\u00e9", "x:y", "ch\n", "a*", "\u0661"])
async def test_invalid_channel_names(name: str) -> None:
    async with mux() as (hub, url), connect(url) as ws:
        assert await ask(ws, f"_sub:{name}") == "_error:invalid channel name"
        assert not hub.channels


async def test_longest_channel_name_and_publish_to_invalid_name() -> None:
    async with mux() as (_, url), connect(url) as ws:
        assert await ask(ws, "_sub:" + "a" * 128) == "_ok:subscribed to " + "a" * 128
        assert await ask(ws, "a b:x") == "_error:invalid channel name"
        assert await ask(ws, ":x") == "_error:invalid channel name"


@pytest.mark.parametrize("text", ["hello", "_sub", "_pingx", "_list:", "_foo:bar", "", "_"])
async def test_invalid_message_format(text: str) -> None:
    async with mux() as (_, url), connect(url) as ws:
        assert await ask(ws, text) == "_error:invalid message format"


async def test_max_channels_reached() -> None:
    async with mux(MuxConfig(max_channels=2)) as (_, url), connect(url) as ws:
        assert await ask(ws, "_sub:a") == "_ok:subscribed to a"
        assert await ask(ws, "_sub:b") == "_ok:subscribed to b"
        assert await ask(ws, "_sub:c") == "_error:max channels (2) reached"
        assert await ask(ws, "_sub:a") == "_ok:already subscribed to a"
        assert await ask(ws, "_unsub:a") == "_ok:unsubscribed from a"
        assert await ask(ws, "_sub:c") == "_ok:subscribed to c"


async def test_binary_frame_is_refused() -> None:
    async with mux() as (_, url), connect(url) as ws:
        assert await ask(ws, b"ch:bytes") == "_error:binary frames not supported"  # type: ignore[arg-type]
        assert await ask(ws, "_ping") == "_pong"


async def test_websocket_ping_frame_is_answered() -> None:
    async with mux() as (_, url), connect(url, ping_interval=None) as ws:
        pong = await ws.ping(b"abc")
        await asyncio.wait_for(pong, STEP)


async def test_oversize_message_closes_1009() -> None:
    async with mux(MuxConfig(max_message_bytes=100)) as (hub, url), connect(url) as ws:
        assert await ask(ws, "_sub:c") == "_ok:subscribed to c"
        assert await ask(ws, "x" * 100) == "_error:invalid message format"  # exactly the limit is accepted
        await ws.send("\u00e9" * 51)  # 51 characters, 102 bytes
        assert (await closed_with(ws))[0] == 1009
        assert not hub.channels


async def test_oversize_fragmented_message_closes_1009() -> None:
    async with mux(MuxConfig(max_message_bytes=100)) as (_, url), connect(url) as ws:
        await ws.send(iter(["x" * 60, "x" * 60]))
        assert (await closed_with(ws))[0] == 1009


async def test_initial_bytes_after_the_head_are_fed_first() -> None:
    async with mux() as (_, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mask = b"\x01\x02\x03\x04"
        masked_ping = bytes([0x81, 0x80 | 5]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(b"_ping"))
        writer.write(
            b"GET /mux HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n" + masked_ping
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
        assert head.startswith(b"HTTP/1.1 101 ") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        assert await asyncio.wait_for(reader.readexactly(7), STEP) == b"\x81\x05_pong"
        writer.close()


async def test_slow_consumer_is_closed_1008() -> None:
    async with mux(MuxConfig(send_queue=4), sndbuf=4096) as (hub, url):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])))
        async with connect(url, sock=sock, max_queue=1, ping_interval=None) as slow, connect(url) as pub:
            assert await ask(slow, "_sub:ch") == "_ok:subscribed to ch"
            assert await ask(pub, "_sub:ch") == "_ok:subscribed to ch"
            chunk = "y" * 8192
            for i in range(400):  # ~3.2 MB: far beyond the socket buffers + HIGH_WATER + 4 queued frames
                await pub.send(f"ch:{i}:{chunk}")
            assert await ask(pub, "_ping") == "_pong"
            assert len(hub.channels["ch"]) == 1, "the slow subscriber was not dropped"
            assert len(hub.clients) == 1
            assert await closed_with(slow) == (1008, "slow consumer")


async def test_hub_close_sends_going_away() -> None:
    async with mux() as (hub, url), connect(url) as ws:
        assert await ask(ws, "_sub:ch") == "_ok:subscribed to ch"
        closing = asyncio.ensure_future(hub.close())
        assert (await closed_with(ws))[0] == 1001
        await asyncio.wait_for(closing, STEP)
        assert not hub.clients and not hub.channels


# --- backend link ----------------------------------------------------------------------------------------------


class FakeBackend:
    """A websockets server standing in for the router's backend: records what the gateway sends."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[str] = asyncio.Queue()
        self.conns: list[ServerConnection] = []
        self.paths: list[str] = []
        self.gone: asyncio.Queue[int] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        self.conns.append(ws)
        self.paths.append(ws.request.path if ws.request is not None else "")
        n = len(self.conns)
        try:
            async for msg in ws:
                assert isinstance(msg, str)
                await self.received.put(msg)
        except ConnectionClosed:
            pass
        await self.gone.put(n)

    async def next(self) -> str:
        return await asyncio.wait_for(self.received.get(), STEP)


@asynccontextmanager
async def backend() -> AsyncIterator[tuple[FakeBackend, int]]:
    fake = FakeBackend()
    async with serve(fake.handler, "127.0.0.1", 0, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield fake, port


async def test_backend_link_subscribe_publish_deliver_unsubscribe() -> None:
    async with backend() as (be, port):
        cfg = MuxConfig(upstream_path="/up")
        url_of = lambda: f"ws://127.0.0.1:{port}/up"  # noqa: E731
        async with mux(cfg, backend_url=url_of, linger=30.0) as (_, url), connect(url) as a, connect(url) as b:
            assert await ask(a, "_sub:ch") == "_ok:subscribed to ch"
            assert await be.next() == "_sub:ch"
            assert await ask(b, "_sub:ch") == "_ok:subscribed to ch"  # not the first subscriber: no _sub
            await a.send("ch:payload")
            assert await recv(b) == "ch:payload"
            assert await be.next() == "ch:payload"
            await be.conns[0].send("ch:hello")
            assert await recv(a) == "ch:hello"
            assert await recv(b) == "ch:hello"
            await be.conns[0].send("_ok:subscribed to ch")  # a reply, not a delivery
            await be.conns[0].send("nobody:here")
            assert await ask(a, "_ping") == "_pong"
            assert await ask(a, "_unsub:ch") == "_ok:unsubscribed from ch"
            assert await ask(b, "_unsub:ch") == "_ok:unsubscribed from ch"
            assert await be.next() == "_unsub:ch"
        assert be.paths == ["/up"]


async def test_backend_link_reconnects_and_resubscribes() -> None:
    async with backend() as (be, port):
        cfg = MuxConfig(upstream_path="/up")
        url_of = lambda: f"ws://127.0.0.1:{port}/up"  # noqa: E731
        async with mux(cfg, backend_url=url_of, backoff=(0.05, 0.2)) as (_, url), connect(url) as a:
            assert await ask(a, "_sub:ch") == "_ok:subscribed to ch"
            assert await be.next() == "_sub:ch"
            await be.conns[0].close()
            assert await be.next() == "_sub:ch"  # the new link subscribes what the hub has
            assert len(be.conns) == 2
            await be.conns[1].send("ch:again")
            assert await recv(a) == "ch:again"


async def test_backend_link_retries_until_a_backend_is_eligible() -> None:
    async with backend() as (be, port):
        answers = iter([None, f"ws://127.0.0.1:{port + 1 if port < 65535 else 1}/up"])

        def url_of() -> str | None:
            return next(answers, f"ws://127.0.0.1:{port}/up")

        cfg = MuxConfig(upstream_path="/up")
        async with mux(cfg, backend_url=url_of, backoff=(0.02, 0.05)) as (_, url), connect(url) as a:
            assert await ask(a, "_sub:ch") == "_ok:subscribed to ch"
            assert await be.next() == "_sub:ch"


async def test_backend_link_closes_after_linger() -> None:
    async with backend() as (be, port):
        cfg = MuxConfig(upstream_path="/up")
        url_of = lambda: f"ws://127.0.0.1:{port}/up"  # noqa: E731
        async with mux(cfg, backend_url=url_of, linger=0.2) as (hub, url):
            async with connect(url) as a:
                assert await ask(a, "_sub:ch") == "_ok:subscribed to ch"
                assert await be.next() == "_sub:ch"
            assert await be.next() == "_unsub:ch"
            assert be.gone.empty()  # still lingering
            assert await asyncio.wait_for(be.gone.get(), STEP) == 1
            async with connect(url) as a:  # a new client opens a new link
                assert await ask(a, "_sub:ch") == "_ok:subscribed to ch"
                assert await be.next() == "_sub:ch"
            assert len(be.conns) == 2
            assert not hub.clients
