"""A raw HTTP/2 client for conformance tests: frames built with hyperframe (or byte by byte, for the frames
hyperframe refuses to build), header blocks HPACK-encoded with hpack or by hand, and the peer's frames read back one
by one over a blocking loopback socket.

The client is deliberately not an HTTP/2 implementation: it sends exactly what a test says, in the order it says,
and acknowledges only the peer's SETTINGS (as any client must) and, when asked, the DATA it reads.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# RFC 9113 §7
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# frame types (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None) -> bytes:
    """A frame byte by byte (``length`` overrides the header's length field, to lie about it)."""
    size = len(payload) if length is None else length
    return struct.pack(">I", size)[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def request_fields(path: str = "/", method: str = "GET", authority: str = "a",
                   extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority), *(extra or [])]


@dataclass
class Response:
    """What one stream received: the final status, its headers, body, trailers (None: none), or the reset code."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] | None = None
    reset: int | None = None
    informational: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Closed(Exception):
    """The peer closed the connection."""


class H2Conn:
    """One client connection: ``send`` frames, ``read_frame`` the peer's, helpers for the usual expectations."""

    def __init__(self, port: int, *, settings: dict[int, int] | None = None, preface: bytes | None = PREFACE,
                 timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buf = b""
        self.frames: list[Frame] = []  # every frame read, in order
        self.seen = 0  # frames[:seen] were consumed by response()/until()
        self.auto_window = True  # give back the window of the DATA that response() reads
        self.peer_settings: dict[int, int] = {}
        if preface is not None:
            self.send_raw(preface + SettingsFrame(0, settings=settings or {}).serialize())

    # -- sending ------------------------------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame | bytes) -> None:
        self.send_raw(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def block(self, fields: list[tuple[str, str]]) -> bytes:
        return self.encoder.encode(fields)

    def headers(self, sid: int, fields: list[tuple[str, str]] | bytes, end_stream: bool = True,
                end_headers: bool = True) -> HeadersFrame:
        data = fields if isinstance(fields, bytes) else self.block(fields)
        flags = (["END_HEADERS"] if end_headers else []) + (["END_STREAM"] if end_stream else [])
        return HeadersFrame(sid, data, flags=flags)

    def get(self, sid: int, path: str = "/", method: str = "GET", extra: list[tuple[str, str]] | None = None,
            end_stream: bool = True, authority: str = "a") -> HeadersFrame:
        return self.headers(sid, request_fields(path, method, authority, extra), end_stream)

    # -- receiving ----------------------------------------------------------------------------------------------
    def read_frame(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None at EOF (or a reset connection)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) >= 9 + length:
                    frame.parse_body(memoryview(self.buf[9 : 9 + length]))
                    self.buf = self.buf[9 + length :]
                    if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                        self.peer_settings.update(frame.settings)
                        try:
                            self.send(SettingsFrame(0, flags=["ACK"]))
                        except OSError:
                            pass  # the peer closed (its GOAWAY is still read)
                    if isinstance(frame, HeadersFrame):
                        frame.fields = self.decoder.decode(frame.data, raw=True)  # type: ignore[attr-defined]
                    self.frames.append(frame)
                    return frame
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no frame within {timeout or self.timeout} s; got {self.frames[-5:]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not data:
                return None
            self.buf += data

    def until(self, match: Callable[[Frame], bool], timeout: float | None = None) -> Frame | None:
        """The first frame not consumed yet that satisfies ``match`` (reading on as needed); None at EOF."""
        while True:
            while self.seen < len(self.frames):
                frame = self.frames[self.seen]
                self.seen += 1
                if match(frame):
                    return frame
            if self.read_frame(timeout) is None:
                return None

    def response(self, sid: int, timeout: float | None = None) -> Response:
        """Stream ``sid``'s response (frames of other streams stay for their own call)."""
        resp = Response()
        i = 0
        while True:
            while i == len(self.frames):
                if self.read_frame(timeout) is None:
                    raise Closed(f"connection closed before stream {sid} ended: {self.frames[-3:]}")
            frame = self.frames[i]
            i += 1
            if frame.stream_id != sid:
                continue
            if isinstance(frame, RstStreamFrame):
                resp.reset = frame.error_code
                return resp
            if isinstance(frame, HeadersFrame):
                fields = frame.fields  # type: ignore[attr-defined]
                status = dict(fields).get(b":status")
                if status is None:
                    resp.trailers = list(fields)
                elif int(status) < 200:
                    resp.informational.append(int(status))
                else:
                    resp.status, resp.headers = int(status), list(fields)
            elif isinstance(frame, DataFrame):
                resp.body += frame.data
                if frame.flow_controlled_length and self.auto_window:
                    n = frame.flow_controlled_length
                    self.send(WindowUpdateFrame(0, window_increment=n), WindowUpdateFrame(sid, window_increment=n))
            if "END_STREAM" in frame.flags:
                return resp

    def goaway(self, timeout: float | None = None) -> GoAwayFrame:
        frame = self.until(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert isinstance(frame, GoAwayFrame), f"connection closed without GOAWAY: {self.frames}"
        return frame

    def expect_connection_error(self, code: int) -> GoAwayFrame:
        """GOAWAY(code), then the connection is closed."""
        frame = self.goaway()
        assert frame.error_code == code, f"GOAWAY {frame.error_code:#x}, expected {code:#x}: {frame.additional_data!r}"
        self.expect_closed()
        return frame

    def expect_closed(self) -> None:
        while (frame := self.read_frame()) is not None:
            assert isinstance(frame, (GoAwayFrame, SettingsFrame, WindowUpdateFrame, PingFrame)), frame

    def expect_stream_error(self, sid: int, code: int) -> None:
        """RST_STREAM(code) on ``sid``, and the connection goes on (a PING is still answered)."""
        resp = self.response(sid)
        assert resp.reset == code, f"stream {sid}: {resp}, expected RST_STREAM {code:#x}"
        self.expect_alive()

    def expect_stream_closed(self, sid: int) -> None:
        """STREAM_CLOSED for a frame on a closed stream: RFC 9113 §5.1 lets the receiver make it a stream error
        (RST_STREAM) or a connection error (GOAWAY, then close); the code is STREAM_CLOSED either way."""
        frame = self.until(lambda f: isinstance(f, GoAwayFrame) or
                           (isinstance(f, RstStreamFrame) and f.stream_id == sid))
        assert frame is not None, f"no STREAM_CLOSED for stream {sid}: {self.frames}"
        assert frame.error_code == STREAM_CLOSED, frame
        if isinstance(frame, GoAwayFrame):
            self.expect_closed()
        else:
            self.expect_alive()

    def expect_alive(self) -> None:
        """The connection is still usable: a PING gets its ACK, and no GOAWAY came first."""
        token = struct.pack(">d", time.monotonic())
        self.send(PingFrame(0, opaque_data=token))
        frame = self.until(lambda f: isinstance(f, (PingFrame, GoAwayFrame)) and (
            isinstance(f, GoAwayFrame) or ("ACK" in f.flags and f.opaque_data == token)))
        assert isinstance(frame, PingFrame), f"connection not alive: {frame}"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def data(sid: int, payload: bytes, end_stream: bool = False) -> DataFrame:
    return DataFrame(sid, payload, flags=["END_STREAM"] if end_stream else [])


def rst(sid: int, code: int = CANCEL) -> RstStreamFrame:
    return RstStreamFrame(sid, error_code=code)
