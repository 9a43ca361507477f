"""HTTP/2 abuse limits and stream-level errors (SPEC §9.1), frame by frame on a raw h2c connection.

The peer here is not a conforming client: frames are built with hyperframe and HPACK-encoded by hand, so the tests
can send what a client library refuses to (rapid resets, malformed heads, floods, a stream over the limit) and
assert the exact frame the gateway answers with.
"""

from __future__ import annotations

import asyncio

import hpack
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from support import Request, gateway_port, ok, start_backend

pytestmark = pytest.mark.timeout(60)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x1, 0x7, 0xB


class RawH2:
    """A hand-driven h2c client: write frames, read the gateway's frames back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.frames: list[Frame] = []

    @classmethod
    async def connect(cls, port: int) -> RawH2:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        return client

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(f.serialize() for f in frames))

    def headers(self, sid: int, fields: list[tuple[str, str]], end_stream: bool = True) -> HeadersFrame:
        flags = ["END_HEADERS"] + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(sid, self.encoder.encode(fields), flags=flags)

    def get(self, sid: int, path: str = "/", authority: str = "a", extra: list[tuple[str, str]] | None = None,
            end_stream: bool = True, method: str = "GET") -> HeadersFrame:
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]
        return self.headers(sid, fields + (extra or []), end_stream)

    async def read_frame(self, timeout: float = 10.0) -> Frame | None:
        """The next frame, or None at EOF."""
        while True:
            if len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    frame.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                        self.send(SettingsFrame(0, flags=["ACK"]))
                    if isinstance(frame, HeadersFrame):
                        frame.fields = self.decoder.decode(frame.data, raw=True)  # type: ignore[attr-defined]
                    self.frames.append(frame)
                    return frame
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.buf += data

    async def until(self, match, timeout: float = 10.0) -> Frame | None:  # type: ignore[no-untyped-def]
        """Read until a frame satisfies ``match``; None at EOF."""
        async def loop() -> Frame | None:
            while True:
                frame = await self.read_frame(timeout)
                if frame is None or match(frame):
                    return frame
        return await asyncio.wait_for(loop(), timeout)

    async def response(self, sid: int) -> tuple[int, bytes] | int:
        """(status, body) of stream ``sid``, or the RST_STREAM error code it got (frames of other streams that
        arrive meanwhile are kept for their own ``response`` call)."""
        status, body, seen = 0, b"", 0
        while True:
            while seen == len(self.frames):
                assert await self.read_frame() is not None, f"connection closed before stream {sid} ended"
            frame = self.frames[seen]
            seen += 1
            if frame.stream_id != sid:
                continue
            if isinstance(frame, RstStreamFrame):
                return frame.error_code
            if isinstance(frame, HeadersFrame):
                status = status or int(dict(frame.fields)[b":status"])  # type: ignore[attr-defined]
            elif isinstance(frame, DataFrame):
                body += frame.data
                if frame.data:
                    self.send(WindowUpdateFrame(0, window_increment=len(frame.data)),
                              WindowUpdateFrame(sid, window_increment=len(frame.data)))
            if "END_STREAM" in frame.flags:
                return status, body

    def close(self) -> None:
        self.writer.close()


def config(backend: str, entry: str = "") -> str:
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {entry}
}}
routers "all" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    if req.target == "/slow":
        await asyncio.sleep(1.0)
    w.write(ok(b"%s host=%s" % (req.target.encode(), (req.header("host") or "").encode())))
    return True


def abuse_count(gw, kind: str) -> int:  # type: ignore[no-untyped-def]
    return gw.http2_abuse_counts().get(("web", kind), 0)


async def test_rapid_reset_gets_goaway_enhance_your_calm_and_opens_no_upstream(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        # CVE-2023-44487: HEADERS + RST_STREAM(CANCEL), over and over, as fast as one write carries them
        burst = []
        for i in range(400):
            sid = 1 + 2 * i
            burst += [client.get(sid, "/slow"), RstStreamFrame(sid, error_code=0x8)]
        client.send(*burst)
        goaway = await client.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ENHANCE_YOUR_CALM
        assert await client.until(lambda f: False) is None  # and the connection is closed
        await asyncio.sleep(0.3)
        assert backend.connections == 0  # no reset stream reached a backend
        assert abuse_count(gw, "rapid_reset") == 1
        # the gateway goes on serving other connections
        other = await RawH2.connect(gateway_port(gw))
        other.send(other.get(1, "/ok"))
        assert await other.response(1) == (200, b"/ok host=a")
        other.close()
    finally:
        client.close()


async def test_resets_below_the_burst_limit_are_served_normally(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        frames = []
        for i in range(50):
            sid = 1 + 2 * i
            frames += [client.get(sid, "/slow"), RstStreamFrame(sid, error_code=0x8)]
        frames.append(client.get(101, "/after"))
        client.send(*frames)
        assert await client.response(101) == (200, b"/after host=a")
        assert not any(isinstance(f, GoAwayFrame) for f in client.frames)
        assert abuse_count(gw, "rapid_reset") == 0
    finally:
        client.close()


@pytest.mark.parametrize(("kind", "make"), [
    ("ping_flood", lambda i: PingFrame(0, opaque_data=i.to_bytes(8, "big"))),
    ("settings_flood", lambda i: SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535})),
])
async def test_control_frame_floods_get_goaway_enhance_your_calm(start_gateway, kind, make) -> None:  # type: ignore[no-untyped-def]
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(*[make(i) for i in range(1100)])
        goaway = await client.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ENHANCE_YOUR_CALM
        assert abuse_count(gw, kind) == 1
    finally:
        client.close()


async def test_empty_data_flood_gets_goaway_enhance_your_calm(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(client.get(1, "/upload", method="POST", end_stream=False),
                    *[DataFrame(1, b"") for _ in range(1100)])
        goaway = await client.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ENHANCE_YOUR_CALM
        assert abuse_count(gw, "empty_data_flood") == 1
    finally:
        client.close()


async def test_continuation_block_beyond_max_header_bytes_is_refused(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url, "max_header_bytes = 4096"))
    client = await RawH2.connect(gateway_port(gw))
    try:
        # CVE-2024-27316: a header block that never ends, CONTINUATION after CONTINUATION
        block = client.encoder.encode([(":method", "GET"), (":path", "/"), (":scheme", "http"),
                                       (":authority", "a"), ("x-big", "v" * 6000)])
        first, rest = block[:1000], block[1000:]
        frames: list[Frame] = [HeadersFrame(1, first, flags=["END_STREAM"])]
        for at in range(0, len(rest), 1000):
            frames.append(ContinuationFrame(1, rest[at : at + 1000]))
        client.send(*frames)
        goaway = await client.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ENHANCE_YOUR_CALM
        assert abuse_count(gw, "header_block") == 1
        assert backend.connections == 0
    finally:
        client.close()


MALFORMED = [
    ("connection header", [("connection", "keep-alive")]),
    ("CR LF in a value", [("x-a", "b\r\nx-injected: 1")]),
    ("uppercase name", [("X-Upper", "1")]),
    ("host differs from :authority", [("host", "admin.local")]),
    ("te other than trailers", [("te", "gzip")]),
]


@pytest.mark.parametrize(("why", "extra"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_stream_is_reset_and_the_others_finish(start_gateway, why, extra) -> None:  # type: ignore[no-untyped-def]
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(client.get(1, "/slow"), client.get(3, "/bad", extra=extra), client.get(5, "/slow"))
        assert await client.response(3) == PROTOCOL_ERROR
        assert await client.response(1) == (200, b"/slow host=a")
        assert await client.response(5) == (200, b"/slow host=a")
        assert not any(isinstance(f, GoAwayFrame) for f in client.frames)
        assert all(r.target != "/bad" for r in backend.requests)
    finally:
        client.close()


@pytest.mark.parametrize("path", ["http://public.local/", "public.local/", "*", ""])
async def test_path_not_in_origin_form_is_malformed(start_gateway, path) -> None:  # type: ignore[no-untyped-def]
    # SPEC §5.3, §9.1: an absolute :path would route by one host and forward another (auth bypass)
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(client.get(1, path, authority="admin.local"), client.get(3, "/fine"))
        assert await client.response(1) == PROTOCOL_ERROR
        assert await client.response(3) == (200, b"/fine host=a")
        assert backend.requests and all(r.target == "/fine" for r in backend.requests)
    finally:
        client.close()


async def test_options_asterisk_is_allowed(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(client.get(1, "*", method="OPTIONS"))
        status = await client.response(1)  # routed (PathPrefix(`/`) does not match "*"), not reset
        assert isinstance(status, tuple) and status[0] == 404
    finally:
        client.close()


async def test_content_length_not_matching_data_resets_that_stream_only(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(client.get(1, "/slow"),
                    client.get(3, "/upload", method="POST", extra=[("content-length", "3")], end_stream=False),
                    DataFrame(3, b"too long", flags=["END_STREAM"]),
                    client.get(5, "/after"))
        assert await client.response(3) == PROTOCOL_ERROR
        assert await client.response(5) == (200, b"/after host=a")
        assert await client.response(1) == (200, b"/slow host=a")
        assert not any(isinstance(f, GoAwayFrame) for f in client.frames)
    finally:
        client.close()


async def test_stream_beyond_max_concurrent_streams_is_refused_alone(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url, "max_concurrent_streams = 5"))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(*[client.get(1 + 2 * i, "/slow") for i in range(6)])
        assert await client.response(11) == REFUSED_STREAM
        for i in range(5):
            assert await client.response(1 + 2 * i) == (200, b"/slow host=a")
        assert not any(isinstance(f, GoAwayFrame) for f in client.frames)
        client.send(client.get(13, "/again"))  # the slots are free again
        assert await client.response(13) == (200, b"/again host=a")
    finally:
        client.close()


async def test_abuse_metric_is_exported(start_gateway) -> None:
    from a3s_gateway.observability.metrics import exposition, make_registry

    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(*[PingFrame(0, opaque_data=b"12345678") for _ in range(1100)])
        await client.until(lambda f: isinstance(f, GoAwayFrame))
        text = exposition(make_registry(gw)).decode()
        assert 'gateway_http2_abuse_total{entrypoint="web",kind="ping_flood"} 1.0' in text
    finally:
        client.close()


async def test_most_streams_reset_over_the_connections_life_gets_goaway(start_gateway) -> None:
    # below the per-second burst, but more than 2x max_concurrent_streams early resets and most streams reset
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url, "max_concurrent_streams = 5"))
    client = await RawH2.connect(gateway_port(gw))
    try:
        for i in range(12):
            sid = 1 + 2 * i
            client.send(client.get(sid, "/slow"), RstStreamFrame(sid, error_code=0x8))
        goaway = await client.until(lambda f: isinstance(f, GoAwayFrame))
        assert isinstance(goaway, GoAwayFrame) and goaway.error_code == ENHANCE_YOUR_CALM
        assert abuse_count(gw, "reset_ratio") == 1 and abuse_count(gw, "rapid_reset") == 0
    finally:
        client.close()


async def test_max_connections_counts_connections_not_http2_streams(start_gateway) -> None:
    backend = await start_backend(handler)
    gw = await start_gateway(config(backend.url, "max_connections = 2"))
    client = await RawH2.connect(gateway_port(gw))
    try:
        client.send(*[client.get(1 + 2 * i, f"/s{i}") for i in range(6)])
        for i in range(6):
            assert await client.response(1 + 2 * i) == (200, b"/s%d host=a" % i)
        assert gw.connection_rejections().get("web", {}).get("limit", 0) == 0
    finally:
        client.close()
