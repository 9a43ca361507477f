"""HTTP/2 downstream (SPEC §9.1) with h2: over TLS (ALPN ``h2``) and h2c prior knowledge on plain entrypoints.

Each stream is served by its own :class:`~a3s_gateway.proxy.http1.HttpConnection` on a :class:`StreamTransport`:
the stream's request is handed to it as fields, never as text — a head built from the HEADERS frame's fields
(:func:`~a3s_gateway.http.h2_head.request_head`: the head of the equivalent HTTP/1.1 request, ``:authority`` as
``Host``, cookies joined) and DATA as body bytes (a body without ``content-length`` ends with END_STREAM, its
trailers with it) — so routing, middlewares, dispatch (sticky, revisions, the cold-start queue, failover, retry),
upstream pools, metrics and the access log are exactly those of HTTP/1.1. The response comes back as fields as
well: the stream's exchange has the :class:`StreamTransport` as its ``sink``
(:class:`~a3s_gateway.proxy.upstream.FieldSink`), which the upstream relay and the exchange's own answers call with
the status, fields, body pieces and trailers where an HTTP/1.1 client gets text; it sends them as HEADERS / DATA /
trailers through the engine calls of :class:`H2Protocol` (``send_headers``, ``send_data``, ``end_stream``,
``reset``, ``window``, ``acknowledge``, ``flush``).

Flow control both ways: DATA received is acknowledged as the stream's connection consumes it (its pause_reading
stops the acknowledgements, so the client's window closes); DATA sent waits for the peer's window, and while it
waits the stream's connection is paused like an HTTP/1.1 client whose socket is full (which pauses the upstream).
A stream reset by the client closes its connection: the upstream request is cancelled at once.

Abuse (SPEC §9.1): a stream starts only after every frame of the bytes that opened it was processed, so a stream
reset in the same read never reaches routing or a backend; rapid resets, SETTINGS/PING/empty-DATA floods and
oversized header blocks close the connection with GOAWAY(ENHANCE_YOUR_CALM), counted per entrypoint and kind. A
malformed request, a content-length that DATA contradicts, or a stream beyond ``max_concurrent_streams`` resets
that stream only (PROTOCOL_ERROR / REFUSED_STREAM); the connection's other streams go on.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from h2.frame_buffer import FrameBuffer
from hpack.exceptions import OversizedHeaderListError
from hyperframe.frame import GoAwayFrame, HeadersFrame, PriorityFrame, RstStreamFrame, SettingsFrame, WindowUpdateFrame

from .. import _compat
from ..errors import ProtocolError
from ..http import hdrs
from ..http.h2_head import MALFORMED_FIELD, StreamDecoder, StreamHead, request_head
from ..observability.log_limit import RateLimitedLog
from .http1 import HttpConnection, TimerWheel
from .responses import line_fields

if TYPE_CHECKING:
    from ..runtime import EntrypointRuntime

log: Final = logging.getLogger("a3s_gateway.http2")

_relay: Any = _compat.load("body relay")

_UNSAFE: Final = re.compile(rb"[\r\n\x00]")
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HIGH_WATER: Final = 256 * 1024  # bytes waiting for the peer's window before the stream's connection is paused
WINDOW: Final = 1 << 20  # initial stream window we grant (§9.1)
CONNECTION_WINDOW: Final = 16 << 20
_LENGTH: Final = 1
_CHUNKED: Final = 2
# connection-specific fields never sent on HTTP/2 (RFC 9113 §8.2.2)
_HOP: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                         b"te"))
# fields of a backend's head an HTTP/1.1 client does not get either: the body framing (the stream's own) and the
# hop-by-hop fields (as http/headers.response_head)
_FRAMING_IDS: Final = frozenset((hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING, hdrs.CONNECTION, hdrs.KEEP_ALIVE,
                                 hdrs.PROXY_CONNECTION, hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION, hdrs.TE,
                                 hdrs.TRAILER, hdrs.UPGRADE))


# Abuse limits (SPEC §9.1, the 2023–24 HTTP/2 CVEs)
RESET_BURST: Final = 200  # client resets within RESET_WINDOW seconds (rapid reset, CVE-2023-44487)
RESET_WINDOW: Final = 1.0
FLOOD_LIMIT: Final = 1000  # SETTINGS, PING or empty DATA frames within FLOOD_WINDOW seconds
FLOOD_WINDOW: Final = 10.0
MAX_CONTINUATIONS: Final = 32  # CONTINUATION frames in one header block (CVE-2024-28182; h2 would allow 64)
SLICE: Final = 64 * 1024  # received bytes handed to h2 at a time: an abusive burst is cut short between slices


class _LocalSettings(h2.settings.Settings):
    """Our SETTINGS: h2 would answer a stream beyond MAX_CONCURRENT_STREAMS with a connection error; the
    protocol refuses that stream alone (RST_STREAM REFUSED_STREAM, RFC 9113 §5.1.2), so h2's own check is off."""

    @property  # type: ignore[misc]
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


class StreamMalformed(h2.events.Event):
    """A request stream reset with PROTOCOL_ERROR by :class:`_ServerConnection` (RFC 9113 §8.1.1)."""

    def __init__(self, stream_id: int, why: str, flow_controlled_length: int = 0) -> None:
        self.stream_id = stream_id
        self.why = why
        self.flow_controlled_length = flow_controlled_length


class _CompressionError(h2.exceptions.ProtocolError):
    """A header block HPACK cannot decode: a connection error of type COMPRESSION_ERROR (RFC 9113 §4.3)."""

    error_code = h2.errors.ErrorCodes.COMPRESSION_ERROR


class _StreamFault(WindowUpdateFrame):
    """A frame hyperframe refuses to parse whose error RFC 9113 makes a stream error: a stream's WINDOW_UPDATE
    with a 0 increment (PROTOCOL_ERROR, §6.9), a PRIORITY frame not 5 bytes long (FRAME_SIZE_ERROR, §6.3).
    :class:`_BoundedFrameBuffer` hands it to :meth:`_ServerConnection._receive_stream_fault`."""

    def __init__(self, stream_id: int, kind: int, code: int) -> None:
        super().__init__(stream_id)
        self.kind = kind
        self.code = code


_PRIORITY: Final = 0x2
_SETTINGS: Final = 0x4
_WINDOW_UPDATE: Final = 0x8


class _BoundedFrameBuffer(FrameBuffer):
    """h2's frame buffer with a HEADERS + CONTINUATION block bounded by ``max_header_bytes`` (CVE-2024-27316):
    a longer block is a connection error before it is decoded. Frames hyperframe rejects as a whole get the
    error RFC 9113 gives them: a SETTINGS ACK with a payload is FRAME_SIZE_ERROR (§6.5), a stream's WINDOW_UPDATE
    of 0 and a PRIORITY of the wrong length are stream errors (§6.9, §6.3)."""

    def __init__(self, limit: int) -> None:
        super().__init__(server=True)
        self.block_limit = limit

    def __next__(self) -> Any:
        data = self._data
        if len(data) >= 9:
            kind = data[3]
            if kind == _SETTINGS and data[4] & 0x1 and data[:3] != b"\0\0\0":
                raise h2.exceptions.FrameDataMissingError("SETTINGS ACK with a payload")
            if kind in (_WINDOW_UPDATE, _PRIORITY):
                sid = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
                length = int.from_bytes(data[:3], "big")
                fault = None
                if kind == _WINDOW_UPDATE and sid and length == 4 and len(data) >= 13 \
                        and not int.from_bytes(data[9:13], "big") & 0x7FFFFFFF:
                    fault = _StreamFault(sid, kind, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                elif kind == _PRIORITY and sid and length != 5 and length <= self.max_frame_size \
                        and len(data) >= 9 + length:
                    fault = _StreamFault(sid, kind, h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                if fault is not None:
                    del data[: 9 + length]
                    new = self._update_header_buffer(fault)  # inside a header block: a connection error
                    return new if new is not None else self.__next__()
        return super().__next__()

    def _update_header_buffer(self, f: Any) -> Any:
        if len(self._headers_buffer) >= MAX_CONTINUATIONS:  # empty CONTINUATIONs never grow the block
            raise h2.exceptions.DenialOfServiceError("too many CONTINUATION frames")
        f = super()._update_header_buffer(f)
        pending = self._headers_buffer
        size = sum(len(x.data) for x in pending) if pending else len(f.data) if isinstance(f, HeadersFrame) else 0
        if size > self.block_limit:
            raise h2.exceptions.DenialOfServiceError("header block larger than max_header_bytes")
        return f


class _ServerConnection(h2.connection.H2Connection):
    """h2's connection, with the request-level errors of one stream kept to that stream (RFC 9113 §5.4.2, §8.1.1):
    a malformed request head (validation, content-length) or a DATA length that contradicts content-length
    resets that stream with PROTOCOL_ERROR and the others go on. HPACK, framing and state errors stay connection
    errors (the HPACK context is shared, so a bad block cannot be skipped)."""

    def __init__(self, config: h2.config.H2Configuration, header_limit: int) -> None:
        super().__init__(config=config)
        self.incoming_buffer = _BoundedFrameBuffer(header_limit)
        self._frame_dispatch_table[_StreamFault] = self._receive_stream_fault
        self._created = 0  # the stream the HEADERS frame being received opened or found
        self._settings_seen = False  # the client's preface SETTINGS arrived
        # the decoded header list is bounded by what we announce from the first byte, not from the client's ACK
        # of our SETTINGS on (h2 applies it then): an HPACK bomb sent at once is stopped as well
        self.decoder.max_header_list_size = header_limit

    def goaway(self, code: int = 0) -> None:
        """GOAWAY naming the last stream processed, without closing h2's state: the streams in progress finish
        (h2's close_connection would refuse every frame after it)."""
        self._prepare_for_sending([GoAwayFrame(0, last_stream_id=self.highest_inbound_stream_id, error_code=code)])

    def _receive_frame(self, frame: Any) -> Any:
        if not self._settings_seen:  # RFC 9113 §3.4: the client preface ends with a SETTINGS frame
            if not isinstance(frame, SettingsFrame) or "ACK" in frame.flags:
                raise h2.exceptions.ProtocolError("the connection preface is not followed by SETTINGS")
            self._settings_seen = True
        return super()._receive_frame(frame)

    def _receive_goaway_frame(self, frame: Any) -> Any:
        """The client's GOAWAY (RFC 9113 §6.8): it opens no more streams, and those in progress finish (h2 would
        stop sending at once)."""
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def _receive_priority_frame(self, frame: Any) -> Any:
        if isinstance(frame, PriorityFrame) and frame.depends_on == frame.stream_id:
            # RFC 9113 §5.3.1: a stream depending on itself is a stream error
            sid = frame.stream_id
            if sid in self.streams:
                return self._malformed(sid, "stream depends on itself", 0,
                                       h2.exceptions.ProtocolError("stream depends on itself"))
            if sid > self.highest_inbound_stream_id:  # idle: nothing to reset but the frame
                return [RstStreamFrame(sid, error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)], []
            return [], []  # a closed stream
        return super()._receive_priority_frame(frame)

    def _receive_stream_fault(self, frame: _StreamFault) -> Any:
        sid = frame.stream_id
        why = "WINDOW_UPDATE with a 0 increment" if frame.kind == _WINDOW_UPDATE else "PRIORITY of the wrong length"
        error = h2.exceptions.ProtocolError(why)
        if sid in self.streams:
            return self._malformed(sid, why, 0, error, frame.code)
        if sid > self.highest_inbound_stream_id:
            if frame.kind == _WINDOW_UPDATE:
                raise error  # on an idle stream: a connection error (§5.1)
            return [RstStreamFrame(sid, error_code=frame.code)], []  # PRIORITY may name an idle stream
        return [], []  # a closed stream

    def _get_or_create_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        stream = super()._get_or_create_stream(stream_id, allowed_ids)
        self._created = stream_id  # the block decoded and the connection state allowed it
        return stream

    def _receive_headers_frame(self, frame: Any) -> Any:
        self._created = 0
        known = self.streams.get(frame.stream_id)  # not None: these are trailers
        declared = None if known is None else known._expected_content_length
        try:
            frames, events = super()._receive_headers_frame(frame)
        except h2.exceptions.StreamClosedError:
            raise
        except h2.exceptions.ProtocolError as e:
            cause = e.__cause__
            if self._created != frame.stream_id and cause is not None \
                    and not isinstance(cause, OversizedHeaderListError):
                raise _CompressionError(str(e)) from cause  # HPACK could not decode the block (before the stream)
            if self._created != frame.stream_id or isinstance(e, h2.exceptions.DenialOfServiceError):
                raise
            return self._malformed(frame.stream_id, str(e), 0, e)
        if known is not None:
            # h2 takes the length from the trailers (a content-length there, or none); the request's stands
            # (trailers never frame the message, RFC 9110 §6.5.1)
            known._expected_content_length = declared
        if "END_STREAM" in frame.flags:
            # RFC 9113 §8.1.1: a content-length that the DATA frames contradict, the stream ending with these
            # headers (h2 checks it on DATA frames only)
            stream = self.streams.get(frame.stream_id)
            expected = None if stream is None else stream._expected_content_length
            if stream is not None and expected is not None and expected != stream._actual_content_length:
                more, malformed = self._malformed(frame.stream_id, "content-length without as much DATA", 0,
                                                  h2.exceptions.ProtocolError("content-length"))
                return frames + more, events + malformed
        return frames, events

    def _receive_data_frame(self, frame: Any) -> Any:
        try:
            return super()._receive_data_frame(frame)
        except h2.exceptions.InvalidBodyLengthError as e:
            # the frame's bytes count against the connection window: the event tells the protocol to give them back
            return self._malformed(frame.stream_id, str(e), frame.flow_controlled_length, e)

    def _malformed(self, sid: int, why: str, length: int, error: Exception,
                   code: int = h2.errors.ErrorCodes.PROTOCOL_ERROR) -> Any:
        stream = self.streams.get(sid)
        if stream is None:
            raise error
        try:
            frames = stream.reset_stream(code)
        except h2.exceptions.ProtocolError:
            raise error from None
        return frames, [StreamMalformed(sid, why, length)]


class Listener(Protocol):
    """The HTTP server whose connection turned HTTP/2 (proxy/server.py's ``HttpServer``; typed here so that this
    module does not import it)."""

    loop: asyncio.AbstractEventLoop
    entry: EntrypointRuntime
    connections: set[Any]
    port_b: bytes
    abuse: dict[tuple[str, str], int]  # HTTP/2 connections closed for abuse: (entrypoint, kind) -> count
    wheel: TimerWheel  # the timeouts of its connections (and of these streams)


class StreamServer:
    """What a stream's HttpConnection sees as its server: the real entrypoint's live ``entry``, its own set."""

    #: the streams of an HTTP/2 connection are not connections: never rejected at max_connections
    rejections: None = None

    def __init__(self, real: Listener) -> None:
        self.real = real
        self.loop = real.loop
        self.port_b = real.port_b
        self.connections: set[Any] = set()
        self.ssl: Any = None
        self.wheel = real.wheel

    def take_over_h2(self, conn: HttpConnection, initial: bytes) -> None:
        take_over(self.real, conn, initial)

    @property
    def entry(self) -> EntrypointRuntime:
        return self.real.entry

    @entry.setter
    def entry(self, value: EntrypointRuntime) -> None:
        self.real.entry = value


class StreamTransport(asyncio.Transport):
    """One request stream: the transport of its HttpConnection (the request goes in as a head and body bytes,
    H2Protocol._start) and the :class:`~a3s_gateway.proxy.upstream.FieldSink` its exchange hands the response to —
    status and fields → HEADERS, body pieces → DATA as the peer's windows allow, trailers → the closing HEADERS.
    No HTTP/1.1 text is written or parsed; what goes out is sent through H2Protocol's engine calls only."""

    def __init__(self, conn: H2Protocol, stream_id: int) -> None:
        super().__init__()
        self.conn = conn
        self.stream_id = stream_id
        self.protocol: HttpConnection | None = None
        self.reading_paused = False
        self.head_sent = False  # the response's HEADERS went out (interim responses aside)
        self.complete = False  # the whole response body was handed over: END_STREAM once it is sent
        self.pending: list[bytes] = []  # DATA waiting for window
        self.pending_bytes = 0
        self.trailers: list[tuple[bytes, bytes]] = []
        self.ended = False  # END_STREAM sent (or the stream was reset)
        self.closed = False
        self.write_paused = False
        self.unacked = 0  # received DATA bytes not acknowledged yet (held while reading is paused)
        self.request: StreamHead | ProtocolError | None = None  # the request head (or why it is rejected)
        self.decoder: StreamDecoder | None = None  # reads a body of unannounced length (ends with END_STREAM)
        self.deadline_at = 0.0  # a gRPC request's deadline (loop time), 0: none
        self.early: list[bytes] | None = None  # the request's DATA until the stream starts (H2Protocol._start)
        self.early_end: list[tuple[bytes, bytes]] | None = None  # END_STREAM (its trailers) before the start
        self.grpc = False
        self.method = b""  # the request's :method (a rejected head is logged with it)

    # -- what HttpConnection asks of its transport --------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self.pending_bytes

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.reading_paused = True  # received DATA stays unacknowledged: the client's window closes

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self.conn.acknowledge(self)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        """Nothing writes bytes to a stream (its exchange has ``sink``): were it to happen, the stream is reset
        rather than sending bytes no HTTP/2 client could read."""
        if data and not self.ended:
            log.error("HTTP/2 stream %d: response bytes written as text; stream reset", self.stream_id)
            self.ended = True
            self.conn.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.ended:
            if self.head_sent and self.deadline_at > 0.0:
                # a gRPC response cut short: its trailers say why (deadline expired, else the backend failed)
                self.pending.clear()
                expired = self.conn.loop.time() >= self.deadline_at - 0.01
                code, text = (b"4", b"Deadline exceeded") if expired else (b"14", b"Upstream stream failed")
                self.ended = True
                self.conn.send_headers(self.stream_id, [(b"grpc-status", code), (b"grpc-message", text)], True)
            else:
                self.ended = True
                self.conn.reset(self.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)  # truncated: the client sees it
        self._lost()

    def _lost(self) -> None:
        protocol = self.protocol
        if protocol is not None:
            self.protocol = None
            self.conn.loop.call_soon(protocol.connection_lost, None)
        self.conn.forget(self.stream_id)

    # -- the response as fields (upstream.FieldSink) -------------------------------------------------------------
    def interim(self, status: int, headers: list[tuple[bytes, bytes]], header_ids: bytes) -> None:
        if not self.ended and not self.head_sent:
            self.conn.send_headers(self.stream_id, response_fields(status, headers, header_ids, (), -1, b""), False)

    def head(self, status: int, headers: list[tuple[bytes, bytes]], header_ids: bytes,
             connection_tokens: tuple[bytes, ...], content_length: int, extra: bytes, end: bool) -> None:
        self._send_head(response_fields(status, headers, header_ids, connection_tokens, content_length, extra), end)

    def start(self, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        self._send_head([(b":status", b"%d" % status), *own_fields(fields)], end)

    def _send_head(self, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.ended or self.head_sent:
            return
        self.head_sent = True
        if end:
            self.ended = True
            self.complete = True
            self.conn.send_headers(self.stream_id, fields, True)
            self.conn.loop.call_soon(self.close)  # one exchange per stream: its connection ends after the response
            return
        self.conn.send_headers(self.stream_id, fields, False)

    def data(self, pieces: list[bytes]) -> None:
        if self.ended or self.complete:
            return
        for piece in pieces:
            if piece:
                self.pending.append(piece)
                self.pending_bytes += len(piece)
        self.flush()

    def end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        if self.ended or self.complete:
            return
        self.complete = True
        self.trailers = own_fields(trailers)
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
        if not self.ended and not self.pending and self.complete:
            self._finish()
        protocol = self.protocol
        if protocol is not None:
            if self.pending_bytes > HIGH_WATER and not self.write_paused:
                self.write_paused = True
                protocol.pause_writing()
            elif self.write_paused and self.pending_bytes <= HIGH_WATER // 4:
                self.write_paused = False
                protocol.resume_writing()
        conn.flush_soon()

    def _finish(self) -> None:
        self.ended = True
        if self.trailers:
            self.conn.send_headers(self.stream_id, self.trailers, True)
        else:
            self.conn.end_stream(self.stream_id)
        self.conn.loop.call_soon(self.close)  # one exchange per stream: its connection ends after the response


def response_fields(status: int, headers: list[tuple[bytes, bytes]], header_ids: bytes,
                    connection_tokens: tuple[bytes, ...], content_length: int,
                    extra: bytes) -> list[tuple[bytes, bytes]]:
    """A backend's response head as HTTP/2 fields: ``:status``, the fields an HTTP/1.1 client would get (framing and
    hop-by-hop fields out, those ``Connection`` names too) with lower-case names and no connection-specific field
    (RFC 9113 §8.2.2), ``content-length`` when announced (-1: none), then the gateway's ``extra`` lines."""
    fields = [(b":status", b"%d" % status)]
    for i in range(len(headers)):
        if header_ids[i] in _FRAMING_IDS:
            continue
        name, value = headers[i]
        low = name.lower()
        if low in _HOP or (connection_tokens and low in connection_tokens):
            continue
        fields.append((low, value))
    if content_length >= 0:
        fields.append((b"content-length", b"%d" % content_length))
    if extra:
        fields.extend(own_fields(line_fields(extra)))
    return fields


def own_fields(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Fields for HTTP/2: lower-case names, no connection-specific field (RFC 9113 §8.2.2)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        low = name.lower()
        if low not in _HOP:
            out.append((low, value))
    return out


class H2Protocol(asyncio.Protocol):
    """One downstream HTTP/2 connection."""

    def __init__(self, server: Listener, transport: Any, initial: bytes = b"") -> None:
        self.server = server
        self.loop = server.loop
        self.transport = transport
        limits = server.entry.limits
        # inbound fields are validated (RFC 9113 §8.2); what we send is built from parsed or the gateway's own fields
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = _ServerConnection(config, limits.max_header_bytes)
        self.h2.local_settings = _LocalSettings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        del self.h2.local_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL]  # §9.1: not sent
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)  # §9.1: 16 MiB for the connection
        self.max_streams = limits.max_concurrent_streams
        self.streams: dict[int, StreamTransport] = {}
        self.starting: list[StreamTransport] = []  # streams opened by the bytes being processed, not started yet
        self.write_paused = False
        self.flush_pending = False  # a flush_soon() is scheduled
        self.closing = False
        self.calmed = False  # GOAWAY(ENHANCE_YOUR_CALM) sent: nothing more is processed
        # abuse accounting (SPEC §9.1)
        self.opened = 0  # request streams opened by the client
        self.early_resets = 0  # of those, reset by the client before their response ended
        self.reset_window = 0.0
        self.reset_count = 0
        self.flood_window = 0.0
        self.floods = [0, 0, 0]  # SETTINGS, PING, empty DATA in the current FLOOD_WINDOW
        self._idle: asyncio.TimerHandle | None = None
        self.stream_server = StreamServer(server)
        server.connections.add(self)
        self.flush()
        if initial:
            self.data_received(initial)
        self._arm_idle()

    # -- the HttpServer's view (drain, shutdown) ---------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful stop: GOAWAY now; streams in progress finish."""
        self.closing = True
        self.h2.goaway()
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
        self.starting.clear()
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
        if self.calmed:
            return
        if len(data) > SLICE:  # an abusive burst stops being decoded at the slice where it is detected
            view = memoryview(data)
            for at in range(0, len(data), SLICE):
                if not self._receive(bytes(view[at : at + SLICE])):
                    break
        else:
            self._receive(data)
        if self.calmed:
            return
        self.flush()
        self._arm_idle()

    def _receive(self, data: bytes) -> bool:
        """Process received bytes; False when the connection was closed for it."""
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            if isinstance(e, h2.exceptions.DenialOfServiceError):
                self._abuse("header_block")
            elif self.h2.state_machine.state != h2.connection.ConnectionState.CLOSED:
                self.h2.goaway(e.error_code)  # not a preface (RFC 9113 §3.4): h2 raised before its own GOAWAY
            log.info("HTTP/2 protocol error from %s: %s", self.transport.get_extra_info("peername"), e)
            self._stop_streams()
            self.flush()
            self.transport.close()
            return False
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                if not event.data and event.stream_ended is None and self._flood(2):
                    return False
                self._data(event)
            elif isinstance(event, h2.events.TrailersReceived):
                self._end(event.stream_id, event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                self._end(event.stream_id, None)
            elif isinstance(event, h2.events.StreamReset):
                if event.remote_reset and self._client_reset(event.stream_id):
                    return False
                self._reset(event.stream_id)
            elif isinstance(event, StreamMalformed):
                log.debug("HTTP/2 stream %d malformed: %s", event.stream_id, event.why)
                if event.flow_controlled_length:
                    self._ack(event.stream_id, event.flow_controlled_length)
                self._reset(event.stream_id)
            elif isinstance(event, h2.events.PingReceived):
                if self._flood(1):
                    return False
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                if self._flood(0):
                    return False
                for stream in list(self.streams.values()):
                    stream.flush()
            elif isinstance(event, h2.events.WindowUpdated):
                for stream in list(self.streams.values()):
                    stream.flush()
            elif isinstance(event, h2.events.ConnectionTerminated):
                # the client's GOAWAY: no new streams; those in progress finish, unless it reports an error
                self.closing = True
                if event.error_code != h2.errors.ErrorCodes.NO_ERROR or not (self.streams or self.starting):
                    self._stop_streams()
                    self.flush()
                    self.transport.close()
                    return False
        # streams start once every frame of these bytes is processed: one reset in the same bytes never
        # reaches routing or a backend (SPEC §9.1)
        if self.starting:
            starting, self.starting = self.starting, []
            for stream in starting:
                if stream.early is not None and self.streams.get(stream.stream_id) is stream:
                    self._start(stream)
        return True

    # -- abuse limits (SPEC §9.1) -------------------------------------------------------------------------------
    def _client_reset(self, sid: int) -> bool:
        """Count a client RST_STREAM; True when the connection was closed for rapid reset."""
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            return False  # a reset after the response ended costs us nothing
        self.early_resets += 1
        now = self.loop.time()
        if now - self.reset_window > RESET_WINDOW:
            self.reset_window = now
            self.reset_count = 0
        self.reset_count += 1
        if self.reset_count > RESET_BURST:
            self._abuse("rapid_reset")
            return True
        # slower resets: more than 2x the concurrent-stream limit over the connection's life, and most streams reset
        if self.early_resets > 2 * self.max_streams and 2 * self.early_resets > self.opened:
            self._abuse("reset_ratio")
            return True
        return False

    def _flood(self, kind: int) -> bool:
        """Count a SETTINGS (0), PING (1) or empty DATA (2) frame; True when the connection was closed for it."""
        now = self.loop.time()
        if now - self.flood_window > FLOOD_WINDOW:
            self.flood_window = now
            self.floods = [0, 0, 0]
        self.floods[kind] += 1
        if self.floods[kind] > FLOOD_LIMIT:
            self._abuse(("settings_flood", "ping_flood", "empty_data_flood")[kind])
            return True
        return False

    def _abuse(self, kind: str) -> None:
        """GOAWAY(ENHANCE_YOUR_CALM), every stream's exchange ended, the connection closed; counted and logged."""
        self.calmed = True
        server = self.server
        key = (server.entry.name, kind)
        counts = server.abuse
        counts[key] = counts.get(key, 0) + 1
        _abuse_log(server, kind, self.transport.get_extra_info("peername"))
        try:
            self.h2.close_connection(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        except h2.exceptions.ProtocolError:
            pass
        self.flush()
        self._stop_streams()
        self.transport.close()

    def _stop_streams(self) -> None:
        self.starting.clear()
        for stream in list(self.streams.values()):
            stream.ended = True
            stream.close()

    # -- streams ------------------------------------------------------------------------------------------------
    def _request(self, event: Any) -> None:
        sid = event.stream_id
        self.opened += 1
        if self.closing:
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.max_streams:
            self.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)  # §9.1: this stream only
            return
        method = path = authority = b""
        fields: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        grpc = False
        timeout_value = b""
        for name, value in event.headers:
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
            if name == b"content-type":
                grpc = value.startswith(b"application/grpc")
            elif name == b"grpc-timeout":
                timeout_value = value
            fields.append((name, value))
        if method == b"CONNECT":
            self.send_headers(sid, [(b":status", b"405")], True)
            return
        # §9.1: :path is origin-form ("*" only for OPTIONS); an absolute URI there would route by one host and
        # forward another
        if not (path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")) or b" " in path or b" " in method:
            self.reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        limits = self.server.entry.limits
        stream = StreamTransport(self, sid)
        stream.method = method
        try:
            head = request_head(method, path, authority, fields, cookies, event.stream_ended is None,
                                limits.max_request_line_bytes, limits.max_header_bytes, limits.max_headers)
        except ProtocolError as e:
            if e.message in MALFORMED_FIELD:
                # a field name or value the HTTP/1.1 head could not carry (CR, LF, NUL, ...): a malformed request,
                # RFC 9113 §8.2.1 — checked once, by request_head
                self.reset(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
                return
            stream.request = e  # answered by the stream's connection, like the HTTP/1.1 parser's rejection
        else:
            stream.request = head
            if head.chunked:
                stream.decoder = StreamDecoder()
        stream.early = []
        stream.grpc = grpc
        if grpc and timeout_value:
            seconds = grpc_timeout(timeout_value)
            if seconds is not None:
                stream.deadline_at = self.loop.time() + seconds
        self.streams[sid] = stream
        self.starting.append(stream)

    def _start(self, stream: StreamTransport) -> None:
        """Hand the stream's request head (and what arrived of its body) to its own HttpConnection."""
        early = cast("list[bytes]", stream.early)
        stream.early = None
        protocol = HttpConnection(self.stream_server)
        protocol.ex.sink = stream  # the response comes back as fields, never as HTTP/1.1 text
        protocol.grpc = stream.grpc  # §9.2: HTTP/2 to the backend, trailers-only gateway errors
        if stream.deadline_at > 0.0:
            protocol.ex.deadline_at = stream.deadline_at
        stream.protocol = protocol
        protocol.connection_made(stream)
        head = stream.request
        if isinstance(head, ProtocolError):
            protocol.refuse(head, stream.method)
            return
        assert head is not None
        body: Any = None
        if stream.decoder is not None:
            body = _relay.BodyReader(_CHUNKED, 0, stream.decoder)
        elif head.content_length > 0:
            body = _relay.BodyReader(_LENGTH, head.content_length, None)
        protocol.start_message(head, body)
        if early:
            self._feed(stream, early[0] if len(early) == 1 else b"".join(early))
        if stream.early_end is not None:
            self._end_body(stream, stream.early_end)
        if stream.unacked:
            self.acknowledge(stream)

    def _feed(self, stream: StreamTransport, data: bytes) -> None:
        early = stream.early
        if early is not None:
            early.append(data)
        elif stream.protocol is not None:
            stream.protocol.data_received(data)

    def _end_body(self, stream: StreamTransport, trailers: list[tuple[bytes, bytes]]) -> None:
        """END_STREAM of a body of unannounced length: its reader ends, with the request's trailers."""
        decoder = stream.decoder
        protocol = stream.protocol
        if decoder is None or decoder.done or protocol is None:
            return
        for name, value in trailers:
            if _UNSAFE.search(name) or _UNSAFE.search(value):  # would split the trailer section sent upstream
                protocol.ex.abort(400, "Bad request: invalid chunked encoding")
                return
        decoder.end(trailers)
        if not protocol.body_done:
            protocol.data_received(b"")

    def _data(self, event: Any) -> None:
        sid = event.stream_id
        stream = self.streams.get(sid)
        if stream is None or (stream.protocol is None and stream.early is None):
            self._ack(sid, event.flow_controlled_length)
            return
        stream.unacked += event.flow_controlled_length
        data = event.data
        if data:
            self._feed(stream, data)
        if stream.early is None:
            self.acknowledge(stream)

    def _end(self, sid: int, trailers: list[tuple[bytes, bytes]] | None) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.decoder is None or (stream.protocol is None and stream.early is None):
            return
        fields = [(n, v) for n, v in trailers or () if not n.startswith(b":")]
        if stream.early is not None:
            if stream.early_end is None:  # trailers, then StreamEnded: the first one counts
                stream.early_end = fields
        else:
            self._end_body(stream, fields)

    def _reset(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            stream.ended = True  # nothing more is sent on it
            if stream.early is not None:  # never started: no exchange, no upstream
                stream.early = None
                self.forget(sid)
                return
            stream.close()  # its HttpConnection is lost: the upstream request is cancelled at once

    def _ack(self, sid: int, length: int) -> None:
        try:
            self.h2.acknowledge_received_data(length, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass

    def acknowledge(self, stream: StreamTransport) -> None:
        if stream.unacked and not stream.reading_paused:
            try:
                self.h2.acknowledge_received_data(stream.unacked, stream.stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                pass
            stream.unacked = 0
            self.flush_soon()

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
        self.flush_soon()

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
        self.flush_soon()

    def reset(self, sid: int, code: Any) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        self.flush_soon()

    def flush(self) -> None:
        """Write the frames queued so far (now: before the transport closes, at the end of received bytes)."""
        out = self.h2.data_to_send()
        if out and not self.transport.is_closing():
            self.transport.write(out)

    def flush_soon(self) -> None:
        """Write the queued frames once this loop iteration's callbacks ran: the HEADERS, DATA and END_STREAM of
        every stream answered in it leave in one write (one system call, not three per response)."""
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self._flush_pending)

    def _flush_pending(self) -> None:
        self.flush_pending = False
        self.flush()

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


# one warning per entrypoint and kind every 10 s; the next one counts the closes in between (suppressed=N)
_ABUSE_LOG: Final = RateLimitedLog(log)


def _abuse_log(server: Listener, kind: str, peer: Any) -> None:
    name = server.entry.name
    _ABUSE_LOG.warning((name, kind), "HTTP/2 connection closed with ENHANCE_YOUR_CALM (%s)", kind,
                       fields={"entrypoint": name, "kind": kind, "peer": str(peer)})


def take_over(server: Listener, conn: HttpConnection, initial: bytes) -> None:
    """Hand an accepted connection of ``server`` to HTTP/2 (ALPN h2, or the h2c preface seen on a plain
    connection)."""
    transport = conn.transport
    server.connections.discard(conn)
    conn.state = 3  # closed, as far as the HTTP/1.1 protocol object is concerned
    conn.transport = None
    protocol = H2Protocol(server, transport, initial)
    transport.set_protocol(protocol)
