"""HTTP/2 downstream (SPEC §9.1) with h2: over TLS (ALPN ``h2``) and h2c prior knowledge on plain entrypoints.

Each stream is served by its own :class:`~a3s_gateway.proxy.http1.HttpConnection` on a :class:`StreamTransport`:
the stream's request is handed to it as an HTTP/1.1 message (``:authority`` as ``Host``, a body without
``content-length`` as chunks, request trailers in the last chunk), so routing, middlewares, dispatch (sticky,
revisions, the cold-start queue, failover, retry), upstream pools, metrics and the access log are exactly those of
HTTP/1.1. What that connection writes back — the response head, then the body in whatever framing — is parsed once
and sent as HEADERS / DATA / trailers on the stream.

Flow control both ways: DATA received is acknowledged as the stream's connection consumes it (its pause_reading
stops the acknowledgements, so the client's window closes); DATA sent waits for the peer's window, and while it
waits the stream's connection is paused like an HTTP/1.1 client whose socket is full (which pauses the upstream).
A stream reset by the client closes its connection: the upstream request is cancelled at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .. import _compat
from ..errors import ProtocolError
from .http1 import HttpConnection
from .server import HttpServer
from .stream_transport import MessageTransport

if TYPE_CHECKING:
    from ..runtime import EntrypointRuntime

log: Final = logging.getLogger("a3s_gateway.http2")

_parser: Any = _compat.load("http parser")
_relay: Any = _compat.load("body relay")

_UNSAFE: Final = re.compile(rb"[\r\n\x00]")
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HIGH_WATER: Final = 256 * 1024  # bytes waiting for the peer's window before the stream's connection is paused
WINDOW: Final = 1 << 20  # initial stream window we grant (§9.1)
CONNECTION_WINDOW: Final = 16 << 20
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_CLOSE: Final = 3
# connection-specific fields never sent on HTTP/2 (RFC 9113 §8.2.2)
_HOP: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                         b"te", b"content-length-ignored"))


class StreamServer(HttpServer):
    """What a stream's HttpConnection sees as its server: the real entrypoint's live ``entry``, its own set."""

    def __init__(self, real: HttpServer) -> None:
        self.real = real
        self.loop = real.loop
        self.host = real.host
        self.port = real.port
        self.port_b = real.port_b
        self.connections = set()
        self.ssl = None
        self.certs = None
        self.cert_watch = None
        self._server = None

    @property
    def entry(self) -> EntrypointRuntime:
        return self.real.entry

    @entry.setter
    def entry(self, value: EntrypointRuntime) -> None:
        self.real.entry = value


class StreamTransport(MessageTransport):
    """The transport of one stream's HttpConnection: request bytes in, HTTP/1.1 response bytes out → h2 frames."""

    def __init__(self, conn: H2Protocol, stream_id: int, head_request: bool) -> None:
        super().__init__()
        self.conn = conn
        self.stream_id = stream_id
        self.head_request = head_request
        self.protocol: HttpConnection | None = None
        self.buf = b""
        self.reader: Any = None  # response body framing, once the head is parsed
        self.pending: list[bytes] = []  # DATA waiting for window
        self.pending_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = False  # END_STREAM sent (or the stream was reset)
        self.closed = False
        self.write_paused = False
        self.unacked = 0  # received DATA bytes not acknowledged yet (held while reading is paused)
        self.chunked = False  # the request body is handed over as chunks (no content-length)
        self.deadline_at = 0.0  # a gRPC request's deadline (loop time), 0: none

    # -- what HttpConnection asks of its transport --------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.pending_bytes

    def is_closing(self) -> bool:
        return self.closed

    def _done(self) -> bool:
        return self.ended

    def _head_seen(self) -> bool:
        return self.reader is not None

    def _resumed(self) -> None:
        self.conn.acknowledge(self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.ended:
            if self.reader is not None and self.reader.mode == _UNTIL_CLOSE:
                self._finish()  # a close-delimited body ends with the connection
            elif self.reader is not None and self.deadline_at > 0.0:
                # a gRPC response cut short: its trailers say why (deadline expired, else the backend failed)
                self.pending.clear()
                expired = self.conn.loop.time() >= self.deadline_at - 0.01
                code, text = (b"4", b"Deadline exceeded") if expired else (b"14", b"Upstream stream failed")
                self.ended = True
                self.conn.send_headers(self.stream_id, [(b"grpc-status", code), (b"grpc-message", text)], True)
            else:
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)  # truncated: the client sees it
        self._lost()

    def _lost(self) -> None:
        protocol = self.protocol
        if protocol is not None:
            self.protocol = None
            self.conn.loop.call_soon(protocol.connection_lost, None)
        self.conn.forget(self.stream_id)

    # -- HTTP/1.1 response -> HTTP/2 frames ---------------------------------------------------------------------
    def _head(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            try:
                resp = _parser.parse_response(buf)
            except ProtocolError:
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                self.ended = True
                return
            if resp is None:
                self.buf = buf
                return
            buf = buf[resp.head_len :]
            if resp.status >= 200 or resp.status == 101:
                break
            if resp.status != 100:  # 103 Early Hints and other interim responses are relayed
                self.conn.send_headers(self.stream_id, self._fields(resp), False)
        self.buf = b""
        status = resp.status
        no_body = self.head_request or status in (204, 304)
        if no_body:
            self.reader = _relay.BodyReader(0, 0, None)
        elif resp.chunked:
            self.reader = _relay.BodyReader(_CHUNKED, 0, _parser.ChunkedDecoder())
        elif resp.content_length >= 0:
            self.reader = _relay.BodyReader(_LENGTH, resp.content_length, None)
        else:
            self.reader = _relay.BodyReader(_UNTIL_CLOSE, 0, None)
        fields = self._fields(resp)
        if no_body or (resp.content_length == 0 and not resp.chunked):
            self.conn.send_headers(self.stream_id, fields, True)
            self.ended = True
            return
        self.conn.send_headers(self.stream_id, fields, False)
        if buf:
            self._body(buf)

    @staticmethod
    def _fields(resp: Any) -> list[tuple[bytes, bytes]]:
        fields = [(b":status", b"%d" % resp.status)]
        for name, value in resp.headers:
            lname = name.lower()
            if lname not in _HOP:
                fields.append((lname, value))
        return fields

    def _body(self, data: bytes) -> None:
        reader = self.reader
        try:
            pieces, _ = reader.feed(data)
        except ProtocolError:
            self.conn.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.ended = True
            return
        for piece in pieces:
            if piece:
                self.pending.append(piece)
                self.pending_bytes += len(piece)
        if reader.done:
            self.trailers = [(n.lower(), v) for n, v in reader.trailers() if n.lower() not in _HOP]
        self.flush()

    def flush(self) -> None:
        """Send what the peer's windows allow; end the stream when the body is complete and sent."""
        conn = self.conn
        while self.pending and not self.ended:
            window = conn.window(self.stream_id)
            if window <= 0:
                break
            piece = self.pending[0]
            size = min(window, len(piece), conn.max_frame)
            if size < len(piece):
                self.pending[0] = piece[size:]
                piece = piece[:size]
            else:
                self.pending.pop(0)
            self.pending_bytes -= len(piece)
            conn.send_data(self.stream_id, piece)
        if not self.ended and not self.pending and self.reader is not None and self.reader.done:
            self._finish()
        protocol = self.protocol
        if protocol is not None:
            if self.pending_bytes > HIGH_WATER and not self.write_paused:
                self.write_paused = True
                protocol.pause_writing()
            elif self.write_paused and self.pending_bytes <= HIGH_WATER // 4:
                self.write_paused = False
                protocol.resume_writing()
        conn.flush()

    def _finish(self) -> None:
        if self.pending:
            return
        self.ended = True
        if self.trailers:
            self.conn.send_headers(self.stream_id, self.trailers, True)
        else:
            self.conn.end_stream(self.stream_id)
        self.conn.loop.call_soon(self.close)  # one exchange per stream: its connection ends after the response


class H2Protocol(asyncio.Protocol):
    """One downstream HTTP/2 connection."""

    def __init__(self, server: HttpServer, transport: Any, initial: bytes = b"") -> None:
        self.server = server
        self.loop = server.loop
        self.transport = transport
        limits = server.entry.limits
        # inbound fields are validated (RFC 9113 §8.2); what we send is built from a parsed HTTP/1.1 head already
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)  # §9.1: 16 MiB for the connection
        self.streams: dict[int, StreamTransport] = {}
        self.write_paused = False
        self.closing = False
        self._idle: asyncio.TimerHandle | None = None
        self.stream_server = StreamServer(server)
        server.connections.add(self)  # type: ignore[arg-type]
        self.flush()
        if initial:
            self.data_received(initial)
        self._arm_idle()

    # -- the HttpServer's view (drain, shutdown) ---------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful stop: GOAWAY now; streams in progress finish."""
        self.closing = True
        self.h2.close_connection()
        self.flush()
        if not self.streams:
            self.transport.close()

    def drain_deadline(self) -> None:
        for stream in list(self.streams.values()):
            protocol = stream.protocol
            if protocol is not None:
                protocol.drain_deadline()
        self.transport.abort()

    # -- asyncio.Protocol ---------------------------------------------------------------------------------------
    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        for stream in list(self.streams.values()):
            stream.ended = True
            stream.close()
        self.streams.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.info("HTTP/2 protocol error from %s: %s", self.transport.get_extra_info("peername"), e)
            self.flush()
            self.transport.close()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._data(event)
            elif isinstance(event, h2.events.TrailersReceived):
                self._end(event.stream_id, event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self._end(event.stream_id, None)
            elif isinstance(event, h2.events.StreamReset):
                self._reset(event.stream_id)
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                for stream in list(self.streams.values()):
                    stream.flush()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.closing = True
        self.flush()
        self._arm_idle()

    # -- streams ------------------------------------------------------------------------------------------------
    def _request(self, event: Any) -> None:
        sid = event.stream_id
        if self.closing:
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        method = path = authority = b""
        lines: list[bytes] = []
        cookies: list[bytes] = []
        has_length = False
        for name, value in event.headers:
            if _UNSAFE.search(name) or _UNSAFE.search(value):
                # CR, LF or NUL would split the HTTP/1.1 head this stream is turned into: a malformed request
                self.reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            if name.startswith(b":"):
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name == b"host":
                if not authority:
                    authority = value
                continue
            if name == b"cookie":
                cookies.append(value)  # RFC 9113 §8.2.3: one header again
                continue
            if name == b"content-length":
                has_length = True
            lines.append(name + b": " + value + b"\r\n")
        if b" " in path or b" " in method:
            self.reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        if method == b"CONNECT":
            self.send_headers(sid, [(b":status", b"405")], True)
            return
        if cookies:
            lines.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
        ended = event.stream_ended is not None
        if not ended and not has_length:
            lines.append(b"transfer-encoding: chunked\r\n")
        grpc = any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in event.headers)
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, path or b"/", authority, b"".join(lines))
        stream = StreamTransport(self, sid, method == b"HEAD")
        stream.chunked = not ended and not has_length
        self.streams[sid] = stream
        protocol = HttpConnection(self.stream_server)
        protocol.grpc = grpc  # §9.2: HTTP/2 to the backend, trailers-only gateway errors
        if grpc:
            for name, value in event.headers:
                if name == b"grpc-timeout":
                    seconds = grpc_timeout(value)
                    if seconds is not None:
                        protocol.deadline_at = self.loop.time() + seconds
                        stream.deadline_at = protocol.deadline_at
        stream.protocol = protocol
        protocol.connection_made(stream)
        protocol.data_received(head)

    def _data(self, event: Any) -> None:
        sid = event.stream_id
        stream = self.streams.get(sid)
        if stream is None or stream.protocol is None:
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
            return
        stream.unacked += event.flow_controlled_length
        data = event.data
        if data:
            stream.protocol.data_received(b"%x\r\n%s\r\n" % (len(data), data) if stream.chunked else data)
        self.acknowledge(stream)

    def _end(self, sid: int, trailers: list[tuple[bytes, bytes]] | None) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.protocol is None or not stream.chunked:
            return
        stream.chunked = False
        tail = b"".join(n + b": " + v + b"\r\n" for n, v in trailers or () if not n.startswith(b":"))
        stream.protocol.data_received(b"0\r\n" + tail + b"\r\n")

    def _reset(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.ended = True  # nothing more is sent on it
            stream.close()  # its HttpConnection is lost: the upstream request is cancelled at once

    def acknowledge(self, stream: StreamTransport) -> None:
        if stream.unacked and not stream.reading_paused:
            try:
                self.h2.acknowledge_received_data(stream.unacked, stream.stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            stream.unacked = 0
            self.flush()

    def forget(self, sid: int) -> None:
        self.streams.pop(sid, None)
        if self.closing and not self.streams:
            self.flush()
            self.transport.close()

    # -- frames out ---------------------------------------------------------------------------------------------
    @property
    def max_frame(self) -> int:
        return int(self.h2.max_outbound_frame_size)

    def window(self, sid: int) -> int:
        if self.write_paused:
            return 0
        try:
            return int(self.h2.local_flow_control_window(sid))
        except (h2.exceptions.StreamClosedError, KeyError):
            return 0

    def send_headers(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_headers(sid, fields, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            log.debug("HTTP/2 stream %d: headers not sent: %s", sid, e)
        self.flush()

    def send_data(self, sid: int, data: bytes) -> None:
        try:
            self.h2.send_data(sid, data)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError) as e:
            log.debug("HTTP/2 stream %d: data not sent: %s", sid, e)

    def end_stream(self, sid: int) -> None:
        try:
            self.h2.end_stream(sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush()

    def reset(self, sid: int, code: Any) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush()

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    # -- idle timeout: idle_timeout without any open stream closes the connection ---------------------------------
    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(self.server.entry.limits.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        if self.streams:
            self._arm_idle()
            return
        self.h2.close_connection()
        self.flush()
        self.transport.close()


_GRPC_UNITS: Final = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (1–8 digits and a unit H M S m u n) in seconds; None when malformed."""
    unit = _GRPC_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        return None
    return int(digits) * unit


def take_over(conn: HttpConnection, initial: bytes) -> None:
    """Hand an accepted connection to HTTP/2 (ALPN h2, or the h2c preface seen on a plain connection)."""
    transport = conn.transport
    server = conn.server
    server.connections.discard(conn)
    conn.state = 3  # closed, as far as the HTTP/1.1 protocol object is concerned
    conn.transport = None
    protocol = H2Protocol(server, transport, initial)
    transport.set_protocol(protocol)
