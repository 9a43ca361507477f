"""HTTP/2 frame-level conformance (RFC 9113, RFC 7541; SPEC §9.1, §9.2), on h2c prior knowledge over loopback.

Every case sends raw frames (tests/integration/h2frames.py) and asserts the exact error code or behaviour the RFC
requires: connection errors are GOAWAY(code) then close, stream errors are RST_STREAM(code) with the connection
going on. Cases that test_http2_abuse.py / test_http2_e2e.py already cover (one-write rapid reset, PING and SETTINGS
floods, an oversized CONTINUATION block, `connection`/`te: gzip`/uppercase/CR LF fields, a `:path` not in origin
form, content-length shorter than DATA, REFUSED_STREAM past the limit) are not repeated here.

The suite runs against each HTTP/2 implementation the gateway has (the ``implementation`` fixture: today the pure
``h2``-library one, proxy/http2.py), and each under uvloop and the stdlib loop; all cases of one combination share
one in-process gateway, running in a background thread, so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import hpack
import pytest
import uvloop
from h2frames import (
    ACK,
    CANCEL,
    COMPRESSION_ERROR,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    NO_ERROR,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    H2Conn,
    data,
    raw_frame,
    request_fields,
    rst,
)
from hpack.hpack import encode_integer
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from a3s_gateway import Gateway, GatewayConfig
from support import parse_head, read_chunked, read_head

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")

# the HTTP/2 implementations the gateway can serve a connection with: name -> the module of its protocol class
IMPLEMENTATIONS = {"h2": "a3s_gateway.proxy.http2"}
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"uvloop": uvloop.new_event_loop,
                                                             "asyncio": asyncio.new_event_loop}
SMALL_HEADERS = 1024  # max_header_bytes of the "small" entrypoint
BIG = 100_000  # body size of GET /big

# -- the backend (HTTP/1.1, in the gateway's thread) -------------------------------------------------------------


class Backend:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = 0

    async def start(self) -> None:
        server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.server = server

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (raw := await read_head(reader)) is not None:
                first, headers = parse_head(raw)
                method, target, _ = first.split(" ")
                fields = {k.lower(): v for k, v in headers}
                body, trailers = b"", []
                if "chunked" in fields.get("transfer-encoding", ""):
                    body, trailers = await read_chunked(reader)
                elif "content-length" in fields:
                    body = await reader.readexactly(int(fields["content-length"]))
                self.requests.append({"method": method, "target": target, "headers": fields, "body": body,
                                      "trailers": trailers})
                writer.write(await self.answer(method, target, body))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def answer(method: str, target: str, body: bytes) -> bytes:
        if target == "/slow":
            await asyncio.sleep(0.5)
        elif target == "/auth-stall":
            await asyncio.sleep(3.0)
        if target == "/big":
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG + b"b" * BIG
        if target == "/trailers":
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n"
                    b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n")
        if target == "/early":
            return (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal")
        if target == "/nocontent":
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if target == "/hop":
            return (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
                    b"Proxy-Connection: keep-alive\r\nUpgrade: foo\r\nX-Kept: 1\r\n\r\nok")
        if target == "/by-host":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        text = b"%s %s body=%d" % (method.encode(), target.encode(), len(body))
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(text) + text


CONFIG = '''
entrypoints "web"   { address = "127.0.0.1:0" }
entrypoints "small" {
  address = "127.0.0.1:0"
  max_concurrent_streams = 2
  max_header_bytes = %d
}
entrypoints "idle" {
  address = "127.0.0.1:0"
  idle_timeout = "400ms"
}
middlewares "stall" {
  type             = "forward-auth"
  forward_auth_url = "http://127.0.0.1:%d/auth-stall"
}
routers "stall" {
  rule        = "PathPrefix(`/stall`)"
  middlewares = ["stall"]
  service     = "s"
}
routers "all" {
  rule    = "PathPrefix(`/`)"
  service = "s"
}
services "s" {
  load_balancer { servers = [{ url = "http://127.0.0.1:%d" }] }
}
'''


class Running:
    """A gateway and its backend on an event loop in a background thread."""

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = loop_factory()
        self.thread = threading.Thread(target=self.loop.run_forever, name="h2-conformance", daemon=True)
        self.thread.start()
        self.backend = Backend()
        self.run(self.backend.start())
        self.hcl = CONFIG % (SMALL_HEADERS, self.backend.port, self.backend.port)
        self.gw: Gateway = self.run(self._start(self.hcl))

    async def _start(self, hcl: str) -> Gateway:
        gw = Gateway(GatewayConfig.from_hcl(hcl, filename="conformance.hcl"), admin="off")
        await gw.start()
        return gw

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()
        return self.run(wrapped())

    def port(self, name: str = "web") -> int:
        return int(self.gw.bound_addresses()[name][1])

    def abuse(self, kind: str, entry: str = "web") -> int:
        return self.call(lambda: self.gw.http2_abuse_counts().get((entry, kind), 0))

    def stop(self) -> None:
        try:
            self.run(self.gw.shutdown(0.5))
            self.backend.server.close()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module", params=sorted(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> str:
    """The HTTP/2 implementation under test. A second one plugs in here: its name and protocol module in
    IMPLEMENTATIONS, and this fixture makes the gateway choose it (the first case checks that it did)."""
    return str(request.param)


@pytest.fixture(scope="module", params=sorted(LOOPS))
def gw(implementation: str, request: pytest.FixtureRequest) -> Iterator[Running]:
    running = Running(LOOPS[request.param])
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def conn(gw: Running) -> Iterator[H2Conn]:
    c = H2Conn(gw.port())
    try:
        yield c
    finally:
        c.close()


def connect(gw: Running, entry: str = "web", **kw: Any) -> H2Conn:
    return H2Conn(gw.port(entry), **kw)


# == the implementation under test ===============================================================================


def test_the_connection_is_served_by_the_implementation_under_test(gw: Running, conn: H2Conn,
                                                                   implementation: str) -> None:
    conn.send(conn.get(1, "/impl"))
    assert conn.response(1).body == b"GET /impl body=0"
    server = gw.call(lambda: gw.gw._servers["web"])  # type: ignore[attr-defined]
    kinds = gw.call(lambda: {type(c).__module__ for c in server.connections})
    assert IMPLEMENTATIONS[implementation] in kinds


# == 3.4 connection preface, 6.5 SETTINGS ========================================================================


def test_server_preface_is_settings_with_the_spec_values_then_the_connection_window(gw: Running) -> None:
    with connect(gw, "small") as c:
        first = c.read_frame()
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags and first.stream_id == 0
        assert first.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 2
        assert first.settings[SettingsFrame.MAX_HEADER_LIST_SIZE] == SMALL_HEADERS
        assert first.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20
        assert first.settings.get(SettingsFrame.ENABLE_PUSH, 0) == 0
        assert SettingsFrame.ENABLE_CONNECT_PROTOCOL not in first.settings  # §9.1: not sent
        update = c.until(lambda f: isinstance(f, WindowUpdateFrame))
        assert isinstance(update, WindowUpdateFrame) and update.stream_id == 0
        assert update.window_increment == (16 << 20) - 65535  # connection window 16 MiB


def test_client_settings_are_acknowledged(conn: H2Conn) -> None:
    conn.send(SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 8192}))
    acks = 0
    while acks < 2:  # the preface's SETTINGS and this one: one ACK each
        frame = conn.until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
        assert frame is not None and frame.settings == {}
        acks += 1


def test_bad_preface_is_a_connection_error(gw: Running) -> None:
    # RFC 9113 §3.4: the bytes start like the preface (so the entrypoint turns HTTP/2) but are not one
    with connect(gw, preface=b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n") as c:
        c.expect_connection_error(PROTOCOL_ERROR)


@pytest.mark.parametrize("first", [
    PingFrame(0, opaque_data=b"12345678").serialize(),
    SettingsFrame(0, flags=["ACK"]).serialize(),
    HeadersFrame(1, hpack.Encoder().encode(request_fields("/first-frame")),
                 flags=["END_HEADERS", "END_STREAM"]).serialize(),
], ids=["ping", "settings-ack", "headers"])
def test_preface_not_followed_by_settings_is_a_connection_error(gw: Running, first: bytes) -> None:
    with connect(gw, preface=None) as c:  # RFC 9113 §3.4: the preface's first frame MUST be SETTINGS
        c.send_raw(PREFACE + first)
        c.expect_connection_error(PROTOCOL_ERROR)
    assert not any(r["target"] == "/first-frame" for r in gw.backend.requests)


@pytest.mark.parametrize(("frame", "code"), [
    (raw_frame(SETTINGS, ACK, 0, b"\x00\x04\x00\x00\x00\x01"), FRAME_SIZE_ERROR),  # §6.5: ACK with a payload
    (raw_frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x01"), FRAME_SIZE_ERROR),  # length not a multiple of 6
    (raw_frame(SETTINGS, 0, 1, b""), PROTOCOL_ERROR),  # on a stream
    (SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 2}).serialize(), PROTOCOL_ERROR),  # §6.5.2
    (SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**31}).serialize(), FLOW_CONTROL_ERROR),
    (SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 16383}).serialize(), PROTOCOL_ERROR),
    (SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 2**24}).serialize(), PROTOCOL_ERROR),
], ids=["ack-with-payload", "length-not-6n", "stream-id", "enable-push-2", "initial-window-2^31",
        "max-frame-16383", "max-frame-2^24"])
def test_bad_settings_are_connection_errors(conn: H2Conn, frame: bytes, code: int) -> None:
    conn.send(frame)
    conn.expect_connection_error(code)


def test_settings_maximum_legal_values_are_accepted(conn: H2Conn) -> None:
    conn.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1,
                                         SettingsFrame.MAX_FRAME_SIZE: 2**24 - 1, SettingsFrame.ENABLE_PUSH: 1}))
    conn.send(conn.get(1, "/max"))
    assert conn.response(1).body == b"GET /max body=0"


def test_unknown_setting_is_ignored(conn: H2Conn) -> None:
    conn.send(SettingsFrame(0, settings={0x7A7A: 12345, 0xF00D: 0}))  # RFC 9113 §6.5.2: MUST ignore
    conn.send(conn.get(1, "/unknown-setting"))
    assert conn.response(1).body == b"GET /unknown-setting body=0"
    assert not any(isinstance(f, GoAwayFrame) for f in conn.frames)


def test_frame_larger_than_max_frame_size_is_frame_size_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/upload", "POST", end_stream=False), data(1, b"x" * 16385))  # §4.2: default 16384
    conn.expect_connection_error(FRAME_SIZE_ERROR)


def test_data_frames_respect_the_peer_max_frame_size(gw: Running) -> None:
    with connect(gw, settings={SettingsFrame.MAX_FRAME_SIZE: 20000}) as c:
        c.send(c.get(1, "/big"))
        assert len(c.response(1).body) == BIG
        sizes = [len(f.data) for f in c.frames if isinstance(f, DataFrame)]
        assert max(sizes) <= 20000 and max(sizes) > 16384  # the larger frame size is used, never exceeded


# == 6.7 PING, 6.8 GOAWAY, 5.5 extensions =========================================================================


def test_ping_is_answered_with_the_same_payload(conn: H2Conn) -> None:
    conn.send(PingFrame(0, opaque_data=b"\x00\x01\x02\x03abcd"))
    frame = conn.until(lambda f: isinstance(f, PingFrame))
    assert isinstance(frame, PingFrame) and "ACK" in frame.flags and frame.opaque_data == b"\x00\x01\x02\x03abcd"


@pytest.mark.parametrize(("frame", "code"), [
    (raw_frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),  # §6.7: PING on a stream
    (raw_frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),  # length other than 8
    (raw_frame(GOAWAY, 0, 1, b"\x00\x00\x00\x00\x00\x00\x00\x00"), PROTOCOL_ERROR),  # §6.8: GOAWAY on a stream
    (raw_frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02\x82"), PROTOCOL_ERROR),  # §8.4: from a client
    (raw_frame(RST_STREAM, 0, 0, b"\x00\x00\x00\x08"), PROTOCOL_ERROR),  # §6.4: on stream 0
    (raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), FRAME_SIZE_ERROR),  # §6.9: length other than 4
    (raw_frame(RST_STREAM, 0, 1, b"\x00\x00\x08"), FRAME_SIZE_ERROR),  # §6.4: length other than 4
    (raw_frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),  # §6.1: DATA on stream 0
    (raw_frame(HEADERS, END_HEADERS, 0, b"\x82"), PROTOCOL_ERROR),  # §6.2: HEADERS on stream 0
    (raw_frame(PRIORITY, 0, 0, b"\x00\x00\x00\x01\x10"), PROTOCOL_ERROR),  # §6.3: PRIORITY on stream 0
    (raw_frame(CONTINUATION, END_HEADERS, 1, b"\x82"), PROTOCOL_ERROR),  # §6.10: without HEADERS
], ids=["ping-on-stream", "ping-length-7", "goaway-on-stream", "push-promise-from-client", "rst-stream-0",
        "window-update-length-3", "rst-stream-length-3", "data-stream-0", "headers-stream-0", "priority-stream-0",
        "lone-continuation"])
def test_control_frame_errors(conn: H2Conn, frame: bytes, code: int) -> None:
    conn.send(frame)
    conn.expect_connection_error(code)


def test_unsolicited_ping_ack_is_ignored(conn: H2Conn) -> None:
    conn.send(PingFrame(0, opaque_data=b"unasked!", flags=["ACK"]))
    conn.expect_alive()
    assert not any(isinstance(f, PingFrame) and f.opaque_data == b"unasked!" for f in conn.frames)


def test_unknown_frame_type_and_flags_are_ignored(conn: H2Conn) -> None:
    # RFC 9113 §4.1, §5.5: unknown types are discarded, unknown flags ignored
    conn.send(raw_frame(0x42, 0xFF, 0, b"whatever"), raw_frame(0x42, 0, 1, b"on an idle stream"),
              raw_frame(PING, 0xF0, 0, b"flagged!"))
    frame = conn.until(lambda f: isinstance(f, (PingFrame, GoAwayFrame)))
    assert isinstance(frame, PingFrame) and frame.opaque_data == b"flagged!" and "ACK" in frame.flags
    conn.send(conn.get(1, "/after-unknown"))
    assert conn.response(1).body == b"GET /after-unknown body=0"


def test_unknown_frame_inside_a_header_block_is_a_connection_error(conn: H2Conn) -> None:
    block = conn.block(request_fields("/x"))
    conn.send(conn.headers(1, block[:3], end_headers=False), raw_frame(0x42, 0, 0, b"x"),
              ContinuationFrame(1, block[3:], flags=["END_HEADERS"]))
    conn.expect_connection_error(PROTOCOL_ERROR)  # §4.3: a header block is contiguous


def test_frame_of_another_type_inside_a_header_block_is_a_connection_error(conn: H2Conn) -> None:
    block = conn.block(request_fields("/x"))
    conn.send(conn.headers(1, block[:3], end_headers=False), PingFrame(0, opaque_data=b"12345678"),
              ContinuationFrame(1, block[3:], flags=["END_HEADERS"]))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_continuation_on_another_stream_is_a_connection_error(conn: H2Conn) -> None:
    block = conn.block(request_fields("/x"))
    conn.send(conn.headers(1, block[:3], end_headers=False), ContinuationFrame(3, block[3:], flags=["END_HEADERS"]))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_header_block_split_over_continuations_is_served(conn: H2Conn) -> None:
    block = conn.block(request_fields("/split", extra=[("x-a", "v" * 300)]))
    frames: list[Any] = [conn.headers(1, block[:10], end_headers=False)]
    for at in range(10, len(block), 50):
        last = at + 50 >= len(block)
        frames.append(ContinuationFrame(1, block[at : at + 50], flags=["END_HEADERS"] if last else []))
    conn.send(*frames)
    assert conn.response(1).body == b"GET /split body=0"


def test_client_goaway_with_an_error_closes_the_connection(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), GoAwayFrame(0, last_stream_id=0, error_code=PROTOCOL_ERROR))
    conn.expect_closed()
    assert not any(f.stream_id == 1 for f in conn.frames)


def test_continuation_after_end_headers_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), ContinuationFrame(1, b"\x82", flags=["END_HEADERS"]))
    conn.expect_connection_error(PROTOCOL_ERROR)  # §6.10: only after a HEADERS without END_HEADERS


def test_client_goaway_lets_the_open_stream_finish(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), GoAwayFrame(0, last_stream_id=0, error_code=NO_ERROR))
    resp = conn.response(1)
    assert resp.status == 200 and resp.body == b"GET /slow body=0"


# == 5.1 stream states, 5.1.1 identifiers ======================================================================


def test_data_on_an_idle_stream_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(data(1, b"nobody asked"))  # §5.1 idle: only HEADERS or PRIORITY
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_rst_stream_on_an_idle_stream_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(rst(1))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_window_update_on_an_idle_stream_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(WindowUpdateFrame(1, window_increment=1))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_even_stream_id_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/first"))
    assert conn.response(1).status == 200
    conn.send(conn.get(2, "/even"))  # §5.1.1: client streams are odd
    goaway = conn.expect_connection_error(PROTOCOL_ERROR)
    assert goaway.last_stream_id == 1


def test_decreasing_stream_id_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(conn.get(5, "/five"))
    assert conn.response(5).status == 200
    conn.send(conn.get(3, "/three"))  # §5.1.1: lower than one already opened
    goaway = conn.expect_connection_error(PROTOCOL_ERROR)
    assert goaway.last_stream_id == 5


def test_headers_on_a_closed_stream_is_stream_closed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/done"))
    assert conn.response(1).status == 200
    conn.send(conn.get(1, "/again"))  # §5.1 closed: after END_STREAM both ways
    conn.expect_stream_closed(1)


def test_data_on_a_closed_stream_is_stream_closed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/done"))
    assert conn.response(1).status == 200
    conn.send(data(1, b"late", end_stream=True))
    conn.expect_stream_closed(1)


def test_data_after_end_stream_is_stream_closed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), data(1, b"late"))  # §5.1 half-closed (remote): a stream error
    conn.expect_stream_error(1, STREAM_CLOSED)


def test_frames_after_rst_stream_are_stream_closed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/upload", "POST", end_stream=False), rst(1))
    conn.expect_alive()
    conn.send(data(1, b"after the reset"))  # §5.1 closed: after RST_STREAM, a stream error
    conn.expect_stream_error(1, STREAM_CLOSED)


def test_priority_on_an_idle_stream_is_allowed(conn: H2Conn) -> None:
    conn.send(PriorityFrame(3, depends_on=0, stream_weight=16), conn.get(1, "/p"))  # §5.1 idle: PRIORITY is fine
    assert conn.response(1).body == b"GET /p body=0"
    conn.send(conn.get(3, "/p3"))  # and the stream it named can still be opened
    assert conn.response(3).body == b"GET /p3 body=0"


def test_priority_on_a_closed_stream_is_allowed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/p"))
    assert conn.response(1).status == 200
    conn.send(PriorityFrame(1, depends_on=0, stream_weight=16))
    conn.expect_alive()


def test_priority_self_dependency_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow", end_stream=False), PriorityFrame(1, depends_on=1))
    conn.expect_stream_error(1, PROTOCOL_ERROR)  # RFC 9113 §5.3.1


def test_headers_self_dependency_is_a_stream_error(conn: H2Conn) -> None:
    frame = conn.get(1, "/self")
    frame.flags.add("PRIORITY")
    frame.depends_on, frame.stream_weight = 1, 16
    conn.send(frame)
    conn.expect_stream_error(1, PROTOCOL_ERROR)


def test_priority_of_wrong_length_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00"))  # §6.3: length other than 5
    conn.expect_stream_error(1, FRAME_SIZE_ERROR)


def test_refused_stream_id_is_consumed(gw: Running) -> None:
    with connect(gw, "small") as c:
        c.send(c.get(1, "/slow"), c.get(3, "/slow"), c.get(5, "/refused"))
        assert c.response(5).reset == REFUSED_STREAM
        for sid in (1, 3):
            assert c.response(sid).status == 200
        c.send(c.get(7, "/next-id"))  # the refused id stays used: the next request takes a higher one
        assert c.response(7).body == b"GET /next-id body=0"


def test_a_stream_reset_by_the_client_frees_its_slot(gw: Running) -> None:
    with connect(gw, "small") as c:
        c.send(c.get(1, "/slow"), c.get(3, "/slow"), rst(1), c.get(5, "/after-reset"))
        assert c.response(5).body == b"GET /after-reset body=0"
        assert c.response(3).status == 200


# == 6.1 DATA, 6.2 HEADERS padding ===========================================================================


def test_data_padding_longer_than_the_frame_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/upload", "POST", end_stream=False), raw_frame(DATA, PADDED, 1, b"\x09abc"))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_headers_padding_longer_than_the_frame_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(raw_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, b"\x20" + conn.block(request_fields())))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_padded_headers_are_served(conn: H2Conn) -> None:
    block = conn.block(request_fields("/padded-headers"))
    conn.send(raw_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, b"\x04" + block + b"\0" * 4))
    assert conn.response(1).body == b"GET /padded-headers body=0"


def test_empty_data_frame_with_end_stream_ends_the_request(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/empty-end", "POST", end_stream=False), data(1, b"abc"), data(1, b"", end_stream=True))
    assert conn.response(1).body == b"POST /empty-end body=3"


def test_reserved_bit_of_the_stream_id_is_ignored(conn: H2Conn) -> None:
    block = conn.block(request_fields("/reserved"))  # RFC 9113 §4.1: the R bit MUST be ignored
    conn.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 0x80000001, block))
    assert conn.response(1).body == b"GET /reserved body=0"


def test_highest_stream_id_is_served(conn: H2Conn) -> None:
    conn.send(conn.get(2**31 - 1, "/last-id"))
    assert conn.response(2**31 - 1).body == b"GET /last-id body=0"


def test_padded_request_is_served(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/pad", "POST", end_stream=False),
              DataFrame(1, b"hello", pad_length=10, flags=["PADDED", "END_STREAM"]))
    assert conn.response(1).body == b"POST /pad body=5"


# == 6.9 flow control ===========================================================================================


def test_window_update_zero_on_the_connection_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(raw_frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"))
    conn.expect_connection_error(PROTOCOL_ERROR)


def test_window_update_zero_on_a_stream_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), raw_frame(WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00"))
    conn.expect_stream_error(1, PROTOCOL_ERROR)


def test_connection_window_overflow_is_a_connection_error(conn: H2Conn) -> None:
    conn.send(WindowUpdateFrame(0, window_increment=2**31 - 1))  # 65535 + 2^31-1 > 2^31-1
    conn.expect_connection_error(FLOW_CONTROL_ERROR)


def test_stream_window_overflow_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"), WindowUpdateFrame(1, window_increment=2**31 - 1))
    conn.expect_stream_error(1, FLOW_CONTROL_ERROR)


def test_settings_initial_window_overflowing_an_open_stream_is_flow_control_error(conn: H2Conn) -> None:
    # §6.9.2: a SETTINGS change that takes a stream's window past 2^31-1 is a connection error
    conn.send(conn.get(1, "/slow"), WindowUpdateFrame(1, window_increment=2**31 - 1 - 65535))
    conn.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65536}))
    conn.expect_connection_error(FLOW_CONTROL_ERROR)


def test_data_beyond_the_stream_window_is_flow_control_error(gw: Running) -> None:
    # our stream window is 1 MiB; while forward-auth holds the request, the body is not consumed (past the
    # exchange's high-water mark) so the window is not given back: a client that sends 2 MiB breaks flow control
    with connect(gw) as c:
        c.send(c.get(1, "/stall", "POST", end_stream=False))
        c.send(*[data(1, b"z" * 16384) for _ in range(128)])  # §6.9.1: a stream or a connection error
        frame = c.until(lambda f: isinstance(f, (GoAwayFrame, RstStreamFrame)))
        assert frame is not None and frame.error_code == FLOW_CONTROL_ERROR


def test_response_waits_for_the_client_window(gw: Running) -> None:
    with connect(gw, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000}) as c:
        c.auto_window = False
        c.send(c.get(1, "/big"))
        got = 0
        with pytest.raises(TimeoutError):
            while True:
                frame = c.read_frame(timeout=0.5)
                if isinstance(frame, DataFrame):
                    got += len(frame.data)
        assert got == 1000  # exactly the stream window, then nothing until a WINDOW_UPDATE
        c.send(WindowUpdateFrame(1, window_increment=BIG), WindowUpdateFrame(0, window_increment=BIG))
        c.auto_window = True
        resp = c.response(1)
        assert len(resp.body) == BIG


def test_stream_window_can_go_negative(gw: Running) -> None:
    # §6.9.2: a SETTINGS that shrinks INITIAL_WINDOW_SIZE can make an open stream's window negative; the sender
    # then waits until WINDOW_UPDATEs bring it above zero
    with connect(gw, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000}) as c:
        c.auto_window = False
        c.send(c.get(1, "/big"))
        assert _data_until_quiet(c) == 1000
        c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}))  # window: 0 - 1000 = -1000
        c.send(WindowUpdateFrame(1, window_increment=1500))  # -1000 + 1500 = 500
        assert _data_until_quiet(c) == 500


def test_no_data_after_the_client_resets_the_stream(gw: Running) -> None:
    with connect(gw, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1000}) as c:
        c.auto_window = False
        c.send(c.get(1, "/big"))
        assert _data_until_quiet(c) == 1000
        c.send(rst(1), WindowUpdateFrame(1, window_increment=BIG))  # the window opens after the reset
        assert _data_until_quiet(c) == 0
        c.send(c.get(3, "/after-rst"), WindowUpdateFrame(3, window_increment=BIG))
        c.auto_window = True
        assert c.response(3).body == b"GET /after-rst body=0"


def test_request_body_up_to_the_announced_window_is_accepted(gw: Running) -> None:
    with connect(gw) as c:  # §9.1: 1 MiB stream window; the connection window was raised to 16 MiB
        assert c.until(lambda f: isinstance(f, WindowUpdateFrame) and f.stream_id == 0) is not None
        c.send(c.get(1, "/upload", "POST", end_stream=False))
        c.send(*[data(1, b"u" * 16384, end_stream=i == 63) for i in range(64)])
        assert c.response(1).body == b"POST /upload body=%d" % (1 << 20)


def _data_until_quiet(c: H2Conn, quiet: float = 0.4) -> int:
    """DATA bytes received until nothing arrives for ``quiet`` seconds."""
    got = 0
    try:
        while True:
            frame = c.read_frame(timeout=quiet)
            if isinstance(frame, DataFrame):
                got += len(frame.data)
            elif frame is None:
                return got
    except TimeoutError:
        return got


def test_initial_window_change_applies_to_open_streams(gw: Running) -> None:
    with connect(gw, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0}) as c:
        c.auto_window = False
        c.send(c.get(1, "/big"))
        with pytest.raises(TimeoutError):  # window 0: headers only
            while True:
                frame = c.read_frame(timeout=0.5)
                assert not isinstance(frame, DataFrame)
        c.send(WindowUpdateFrame(0, window_increment=BIG))
        c.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: BIG}))  # §6.9.2: all open streams
        c.auto_window = True
        assert len(c.response(1).body) == BIG


# == 4.3, RFC 7541: HPACK ======================================================================================


def _size_update(size: int) -> bytes:
    enc = encode_integer(size, 5)
    enc[0] |= 0x20
    return bytes(enc)


HPACK_ERRORS = [
    ("index-0", b"\x80"),  # RFC 7541 §6.1: index 0 is an error
    ("index-beyond-table", b"\x82\x84\x86" + bytes([0x80 | 70])),  # static 61 + an empty dynamic table
    ("huffman-eos", b"\x82\x84\x86\x00\x84\xff\xff\xff\xff\x01x"),  # §5.2: EOS in a string
    ("huffman-padding-too-long", b"\x82\x84\x86\x00\x82\x1f\xff\x01x"),  # §5.2: padding over 7 bits
    ("huffman-padding-not-eos", b"\x82\x84\x86\x00\x81\x18\x01x"),  # §5.2: padding not the EOS prefix
    ("table-size-update-too-large", _size_update(4097) + b"\x82\x84\x86"),  # §6.3: above SETTINGS 4096
    ("table-size-update-after-field", b"\x82" + _size_update(0) + b"\x84\x86"),  # §4.2: only at the start
    ("truncated-string", b"\x82\x84\x86\x00\x05ab"),
    ("truncated-integer", b"\x82\x84\x86\xff"),
]


@pytest.mark.parametrize("block", [b for _, b in HPACK_ERRORS], ids=[n for n, _ in HPACK_ERRORS])
def test_hpack_errors_are_compression_errors(conn: H2Conn, block: bytes) -> None:
    conn.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    conn.expect_connection_error(COMPRESSION_ERROR)  # RFC 9113 §4.3


def test_hpack_dynamic_table_is_shared_across_streams(conn: H2Conn) -> None:
    fields = request_fields("/dyn", extra=[("x-repeated", "r" * 100)])
    conn.send(conn.get(1, "/dyn", extra=[("x-repeated", "r" * 100)]))
    assert conn.response(1).status == 200
    second = conn.block(fields)
    assert len(second) < 20  # indexed from the dynamic table this time
    conn.send(conn.headers(3, second))
    assert conn.response(3).body == b"GET /dyn body=0"


def test_server_honours_a_client_header_table_size_of_zero(gw: Running) -> None:
    with connect(gw, settings={SettingsFrame.HEADER_TABLE_SIZE: 0}) as c:
        c.decoder.max_allowed_table_size = 0  # RFC 7541 §4.2: the server's encoder must shrink to 0 first
        c.decoder.header_table_size = 0
        for sid in (1, 3, 5):
            c.send(c.get(sid, "/hop"))
            resp = c.response(sid)
            assert resp.status == 200 and resp.header(b"x-kept") == b"1"


def test_hpack_bomb_is_bounded_by_max_header_bytes(gw: Running) -> None:
    # one large field indexed once, then referenced again and again: a few hundred bytes on the wire, far more
    # decoded; the decoded list is bounded by max_header_bytes (SPEC §9.1)
    before = gw.abuse("header_block", "small")
    with connect(gw, "small") as c:
        literal = b"\x40" + bytes(encode_integer(6, 7)) + b"x-bomb" + bytes(encode_integer(900, 7)) + b"v" * 900
        # ~45 KB decoded: over max_header_bytes, under h2's default list limit (64 KiB) that applies until the
        # client acknowledges our SETTINGS -- which this client has not done yet
        block = b"\x82\x84\x86\x41\x01a" + literal + bytes([0x80 | 62]) * 50
        assert len(block) < SMALL_HEADERS
        c.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
        c.expect_connection_error(ENHANCE_YOUR_CALM)
    assert gw.abuse("header_block", "small") == before + 1
    assert not any(r["target"] == "/" and "x-bomb" in r["headers"] for r in gw.backend.requests)


def test_hpack_bomb_after_settings_ack_is_bounded_too(gw: Running) -> None:
    with connect(gw, "small") as c:
        c.expect_alive()  # the server's SETTINGS were read and acknowledged
        literal = b"\x40" + bytes(encode_integer(6, 7)) + b"x-bomb" + bytes(encode_integer(900, 7)) + b"v" * 900
        c.send(raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x82\x84\x86\x41\x01a" + literal +
                         bytes([0x80 | 62]) * 100))
        c.expect_connection_error(ENHANCE_YOUR_CALM)


# == 8.1, 8.2, 8.3 HTTP semantics: fields, pseudo-headers ========================================================

M, P, S, A = (":method", "GET"), (":path", "/m"), (":scheme", "http"), (":authority", "a")
MALFORMED_HEADS: list[tuple[str, list[tuple[str, str]]]] = [
    ("missing-method", [P, S, A]),
    ("missing-path", [M, S, A]),
    ("missing-scheme", [M, P, A]),
    ("empty-path", [M, (":path", ""), S, A]),
    ("duplicate-method", [M, M, P, S, A]),
    ("duplicate-path", [M, P, P, S, A]),
    ("duplicate-scheme", [M, P, S, S, A]),
    ("duplicate-authority", [M, P, S, A, A]),
    ("pseudo-after-regular", [M, P, S, ("x-a", "1"), A]),
    ("response-pseudo-status", [M, P, S, A, (":status", "200")]),
    ("unknown-pseudo", [M, P, S, A, (":foo", "bar")]),
    ("uppercase-pseudo", [(":Method", "GET"), P, S, A]),
    ("keep-alive", [M, P, S, A, ("keep-alive", "timeout=5")]),
    ("proxy-connection", [M, P, S, A, ("proxy-connection", "keep-alive")]),
    ("transfer-encoding", [M, P, S, A, ("transfer-encoding", "chunked")]),
    ("upgrade", [M, P, S, A, ("upgrade", "websocket")]),
    ("te-trailers-and-gzip", [M, P, S, A, ("te", "trailers, gzip")]),
    ("space-in-name", [M, P, S, A, ("x a", "1")]),
    ("nul-in-value", [M, P, S, A, ("x-a", "a\x00b")]),
    ("leading-space-in-value", [M, P, S, A, ("x-a", " a")]),
    ("content-length-not-a-number", [M, P, S, A, ("content-length", "ten")]),
]


@pytest.mark.parametrize("fields", [f for _, f in MALFORMED_HEADS], ids=[n for n, _ in MALFORMED_HEADS])
def test_malformed_request_head_is_a_stream_error(gw: Running, conn: H2Conn, fields: list[tuple[str, str]]) -> None:
    seen = len(gw.backend.requests)
    conn.send(conn.headers(1, fields))
    conn.expect_stream_error(1, PROTOCOL_ERROR)  # RFC 9113 §8.1.1: malformed -> stream error PROTOCOL_ERROR
    conn.send(conn.get(3, "/next"))
    assert conn.response(3).body == b"GET /next body=0"
    assert [r["target"] for r in gw.backend.requests[seen:]] == ["/next"]


def test_te_trailers_is_allowed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/te", extra=[("te", "trailers")]))
    assert conn.response(1).body == b"GET /te body=0"


def test_host_equal_to_authority_is_allowed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/host", extra=[("host", "a")]))
    assert conn.response(1).body == b"GET /host body=0"


def test_response_carries_no_connection_specific_fields(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/hop"))
    resp = conn.response(1)
    names = {n for n, _ in resp.headers}
    assert resp.status == 200 and resp.body == b"ok" and b"x-kept" in names
    assert not names & {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
    assert all(n == n.lower() for n in names)  # RFC 9113 §8.2.1


def test_head_response_has_no_data(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/head", "HEAD"))
    resp = conn.response(1)
    assert resp.status == 200 and resp.body == b""
    assert not any(isinstance(f, DataFrame) and f.stream_id == 1 for f in conn.frames)


def test_host_without_authority_is_used_as_the_host(gw: Running, conn: H2Conn) -> None:
    conn.send(conn.headers(1, [M, (":path", "/by-host"), S, ("host", "by-host.example")]))  # RFC 9113 §8.3.1
    assert conn.response(1).status == 200
    req = [r for r in gw.backend.requests if r["target"] == "/by-host"][-1]
    assert req["headers"]["host"] == "by-host.example"


def test_informational_response_is_relayed_before_the_final_one(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/early"))
    resp = conn.response(1)
    assert resp.informational == [103] and resp.status == 200 and resp.body == b"final"
    hints = next(f for f in conn.frames if isinstance(f, HeadersFrame) and f.stream_id == 1)
    assert "END_STREAM" not in hints.flags


def test_no_content_response_ends_with_its_headers(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/nocontent"))
    resp = conn.response(1)
    assert resp.status == 204 and resp.body == b""
    assert not any(isinstance(f, DataFrame) and f.stream_id == 1 for f in conn.frames)


def test_connect_is_not_proxied(gw: Running, conn: H2Conn) -> None:
    seen = len(gw.backend.requests)
    conn.send(conn.headers(1, [(":method", "CONNECT"), (":authority", "example.com:443")]))
    assert conn.response(1).status == 405
    assert len(gw.backend.requests) == seen


# == 8.1.1 content-length ========================================================================================


def test_data_shorter_than_content_length_is_a_stream_error(gw: Running, conn: H2Conn) -> None:
    seen = len(gw.backend.requests)
    conn.send(conn.get(1, "/cl", "POST", extra=[("content-length", "10")], end_stream=False),
              data(1, b"short", end_stream=True))
    conn.expect_stream_error(1, PROTOCOL_ERROR)
    assert all(r["target"] != "/cl" or len(r["body"]) != 5 for r in gw.backend.requests[seen:])


def test_data_over_several_frames_beyond_content_length_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/cl", "POST", extra=[("content-length", "6")], end_stream=False),
              data(1, b"abc"), data(1, b"def"), data(1, b"g", end_stream=True))
    conn.expect_stream_error(1, PROTOCOL_ERROR)


def test_content_length_on_headers_only_request_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/cl", "POST", extra=[("content-length", "3")]))  # END_STREAM on HEADERS, no DATA
    conn.expect_stream_error(1, PROTOCOL_ERROR)


def test_data_shorter_than_content_length_then_trailers_is_a_stream_error(gw: Running, conn: H2Conn) -> None:
    seen = len(gw.backend.requests)
    conn.send(conn.get(1, "/cl-trailers", "POST", extra=[("content-length", "10")], end_stream=False),
              data(1, b"short"), conn.headers(1, [("x-checksum", "1")]))  # the stream ends with the trailers
    conn.expect_stream_error(1, PROTOCOL_ERROR)
    assert not any(r["target"] == "/cl-trailers" and len(r["body"]) == 10 for r in gw.backend.requests[seen:])


def test_content_length_in_trailers_does_not_change_the_framing(gw: Running, conn: H2Conn) -> None:
    conn.send(conn.get(1, "/cl-ok", "POST", extra=[("content-length", "5")], end_stream=False),
              data(1, b"exact"), conn.headers(1, [("x-checksum", "1"), ("content-length", "99")]))
    assert conn.response(1).body == b"POST /cl-ok body=5"


def test_content_length_matching_data_is_served(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/cl", "POST", extra=[("content-length", "6")], end_stream=False),
              data(1, b"abc"), data(1, b"def", end_stream=True))
    assert conn.response(1).body == b"POST /cl body=6"


# == 8.1 trailers ================================================================================================


def test_request_trailers_are_relayed(gw: Running, conn: H2Conn) -> None:
    conn.send(conn.get(1, "/with-trailers", "POST", extra=[("te", "trailers")], end_stream=False),
              data(1, b"payload"), conn.headers(1, [("x-checksum", "42")]))
    assert conn.response(1).body == b"POST /with-trailers body=7"
    req = [r for r in gw.backend.requests if r["target"] == "/with-trailers"][-1]
    assert req["body"] == b"payload" and req["trailers"] == [("x-checksum", "42")]


def test_response_trailers_are_relayed(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/trailers", extra=[("te", "trailers")]))
    resp = conn.response(1)
    assert resp.body == b"hello" and resp.trailers == [(b"x-checksum", b"abc")]


def test_trailers_without_end_stream_are_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/t", "POST", end_stream=False), data(1, b"x"),
              conn.headers(1, [("x-checksum", "1")], end_stream=False))
    conn.expect_stream_error(1, PROTOCOL_ERROR)  # §8.1: a second HEADERS without END_STREAM is malformed


def test_pseudo_header_in_trailers_is_a_stream_error(conn: H2Conn) -> None:
    conn.send(conn.get(1, "/t", "POST", end_stream=False), data(1, b"x"),
              conn.headers(1, [(":path", "/other")]))
    conn.expect_stream_error(1, PROTOCOL_ERROR)  # §8.1: trailers carry no pseudo-header


# == GOAWAY: idle timeout, shutdown (SPEC §9.1) ================================================================


def test_idle_connection_gets_goaway_no_error(gw: Running) -> None:
    with connect(gw, "idle") as c:
        c.send(c.get(1, "/before-idle"))
        assert c.response(1).status == 200
        start = time.monotonic()
        goaway = c.expect_connection_error(NO_ERROR)
        assert goaway.last_stream_id == 1 and time.monotonic() - start < 4.0


def test_graceful_shutdown_goaway_names_the_last_stream_and_lets_it_finish(gw: Running) -> None:
    # a gateway of its own (the shared one keeps serving the other cases), same loop
    own: Gateway = gw.run(gw._start(gw.hcl))
    fut = None
    try:
        with H2Conn(int(own.bound_addresses()["web"][1])) as c:
            c.send(c.get(1, "/fast"), c.get(3, "/slow"))
            assert c.response(1).status == 200
            time.sleep(0.1)  # stream 3 is in flight
            fut = asyncio.run_coroutine_threadsafe(own.shutdown(5.0), gw.loop)
            goaway = c.goaway()
            assert goaway.error_code == NO_ERROR and goaway.last_stream_id == 3
            c.send(c.get(5, "/after-goaway"))  # beyond last_stream_id: never processed
            assert c.response(5).reset == REFUSED_STREAM
            resp = c.response(3)
            assert resp.status == 200 and resp.body == b"GET /slow body=0"
            c.expect_closed()
            fut.result(10)
    finally:
        if fut is None:
            gw.run(own.shutdown(0.5))


def test_entrypoint_removed_by_a_reload_sends_goaway_and_lets_the_stream_finish(gw: Running) -> None:
    # SPEC §9.1: a removed entrypoint's connections get GOAWAY(NO_ERROR) naming the last stream, which finishes
    own: Gateway = gw.run(gw._start(gw.hcl))
    try:
        with H2Conn(int(own.bound_addresses()["idle"][1])) as c:
            c.send(c.get(1, "/slow"))
            time.sleep(0.1)
            start, end = gw.hcl.index('entrypoints "idle"'), gw.hcl.index("middlewares")  # the "idle" block
            without = gw.hcl[:start] + gw.hcl[end:]
            gw.run(own.reload(GatewayConfig.from_hcl(without, filename="conformance.hcl")))
            goaway = c.goaway()
            assert goaway.error_code == NO_ERROR and goaway.last_stream_id == 1
            resp = c.response(1)
            assert resp.status == 200 and resp.body == b"GET /slow body=0"
            c.expect_closed()
    finally:
        gw.run(own.shutdown(0.5))


def test_connection_survives_a_reload_without_goaway(gw: Running, conn: H2Conn) -> None:
    conn.send(conn.get(1, "/slow"))
    gw.run(gw.gw.reload(GatewayConfig.from_hcl(gw.hcl, filename="conformance.hcl")))
    assert conn.response(1).status == 200
    conn.send(conn.get(3, "/after-reload"))
    assert conn.response(3).body == b"GET /after-reload body=0"
    assert not any(isinstance(f, GoAwayFrame) for f in conn.frames)


# == abuse limits, the 2023-24 CVEs (SPEC §9.1) ==================================================================


def test_rapid_reset_over_many_writes_gets_enhance_your_calm(gw: Running, conn: H2Conn) -> None:
    # CVE-2023-44487, one HEADERS + RST_STREAM per write (the one-write burst is in test_http2_abuse.py)
    before = gw.abuse("rapid_reset")
    for i in range(260):
        sid = 1 + 2 * i
        try:
            conn.send(conn.get(sid, "/slow"), rst(sid, CANCEL))
        except (BrokenPipeError, ConnectionResetError):
            break
    conn.expect_connection_error(ENHANCE_YOUR_CALM)
    assert gw.abuse("rapid_reset") == before + 1


def test_empty_continuation_flood_is_bounded(gw: Running, conn: H2Conn) -> None:
    # CVE-2024-27316 / CVE-2024-28182: CONTINUATION frames that never end the block, each one empty (the block
    # never grows past max_header_bytes, so its size alone does not stop it)
    before = gw.abuse("header_block")
    block = conn.block(request_fields("/never"))
    frames = [conn.headers(1, block, end_headers=False).serialize()]
    frames += [raw_frame(CONTINUATION, 0, 1, b"")] * 100  # all read by the gateway: its GOAWAY is not lost
    conn.send_raw(b"".join(frames))
    conn.expect_connection_error(ENHANCE_YOUR_CALM)
    assert gw.abuse("header_block") == before + 1


def test_ping_flood_limit_is_not_reached_by_a_thousand_pings(gw: Running, conn: H2Conn) -> None:
    conn.send(*[PingFrame(0, opaque_data=i.to_bytes(8, "big")) for i in range(1000)])  # SPEC §9.1: > 1,000
    acks = 0
    while acks < 1000:
        frame = conn.until(lambda f: isinstance(f, (PingFrame, GoAwayFrame)))
        assert isinstance(frame, PingFrame), frame
        acks += 1
    conn.send(conn.get(1, "/after-pings"))
    assert conn.response(1).status == 200


def test_header_list_over_max_header_bytes_is_refused(gw: Running) -> None:
    # Huffman makes the block smaller than max_header_bytes on the wire; decoded, the list is over it
    with connect(gw, "small") as c:
        block = c.block(request_fields("/big-head", extra=[("x-long", "l" * (SMALL_HEADERS + 100))]))
        assert len(block) < SMALL_HEADERS
        c.send(c.headers(1, block))
        c.expect_connection_error(ENHANCE_YOUR_CALM)
        assert not any(r["target"] == "/big-head" for r in gw.backend.requests)


def test_concurrent_streams_limit_counts_open_streams_only(gw: Running) -> None:
    with connect(gw, "small") as c:
        for i in range(6):  # sequential streams: never more than the limit open
            sid = 1 + 2 * i
            c.send(c.get(sid, f"/seq{i}"))
            assert c.response(sid).body == b"GET /seq%d body=0" % i


def test_many_streams_on_one_connection(conn: H2Conn) -> None:
    conn.send(*[conn.get(1 + 2 * i, f"/m{i}") for i in range(50)])
    for i in range(50):
        assert conn.response(1 + 2 * i).body == b"GET /m%d body=0" % i
