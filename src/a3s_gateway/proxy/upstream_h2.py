"""HTTP/2 to backends (SPEC §9.1 upstream, §9.2 gRPC): ``h2c://`` servers, and gRPC requests to ``http://`` ones.

One multiplexed h2c connection per backend (:class:`H2Session`, opened on demand, replaced after GOAWAY or loss).
Each request is a stream, presented to an ordinary :class:`~a3s_gateway.proxy.upstream.UpstreamConnection` as its
transport (:class:`StreamPipe`): the HTTP/1.1 request it writes is parsed once and sent as HEADERS / DATA /
trailers; the stream's response is handed back to it as an HTTP/1.1 message (chunked, trailers in the last chunk).
So response timeouts, relay, truncation, metrics and retries are those of HTTP/1.1 backends. Flow control: DATA
received is acknowledged only while the UpstreamConnection reads (its pause_reading stops the acknowledgements);
request DATA waits for the backend's window.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from .._aio import timeout
from ..errors import ProtocolError
from ..http.framing import new_body_reader
from ..http.parser import new_chunked_decoder, parse_request
from .stream_transport import MessageTransport

log: Final = logging.getLogger("a3s_gateway.upstream_h2")


_HOP: Final = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                         b"te", b"host", b"content-length"))
_CHUNKED: Final = 2
_LENGTH: Final = 1


class H2Session(asyncio.Protocol):
    """One h2c connection to a backend, carrying many streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False)
        )
        self.transport: Any = None
        self.pipes: dict[int, StreamPipe] = {}
        self.usable = False
        self.write_paused = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window((16 << 20) - 65535)
        self.usable = True
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.transport = None
        for pipe in list(self.pipes.values()):
            pipe.lost()
        self.pipes.clear()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for pipe in list(self.pipes.values()):
            pipe.send_pending()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("HTTP/2 protocol error from a backend: %s", e)
            self.usable = False
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            pipe = self.pipes.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, (h2.events.ResponseReceived, h2.events.InformationalResponseReceived)):
                if pipe is not None:
                    ended = isinstance(event, h2.events.ResponseReceived) and event.stream_ended is not None
                    pipe.on_headers(event.headers, ended)
            elif isinstance(event, h2.events.DataReceived):
                if pipe is not None:
                    pipe.on_data(event.data, event.flow_controlled_length)
                else:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                if pipe is not None:
                    pipe.on_trailers(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                if pipe is not None:
                    pipe.on_end()
            elif isinstance(event, h2.events.StreamReset):
                if pipe is not None:
                    pipe.lost()
            elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                for p in list(self.pipes.values()):
                    p.send_pending()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.usable = False  # GOAWAY: streams in progress finish, new ones go to a new connection
        self.flush()

    def flush(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def open(self) -> StreamPipe:
        sid = self.h2.get_next_available_stream_id()
        pipe = StreamPipe(self, sid)
        self.pipes[sid] = pipe
        return pipe

    def forget(self, sid: int) -> None:
        self.pipes.pop(sid, None)
        if not self.usable and not self.pipes and self.transport is not None:
            self.transport.close()


class StreamProtocol(Protocol):
    """The protocol on a stream pipe (proxy/upstream.py's ``UpstreamConnection``; typed here so that this module does
    not import it): response bytes in HTTP/1.1 framing in, the end of the stream as a lost connection."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def deadline(self) -> float:
        """The request's gRPC deadline as a loop time (0: none)."""
        ...


class StreamPipe(MessageTransport):
    """The transport of an UpstreamConnection whose exchange is one stream of an H2Session."""

    def __init__(self, session: H2Session, sid: int) -> None:
        super().__init__()
        self.session = session
        self.sid = sid
        self.protocol: StreamProtocol | None = None
        self.buf = b""
        self.body: Any = None  # request body framing once the head was sent
        self.pending: list[bytes] = []
        self.pending_end = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.sent_end = False
        self.closed = False
        self.unacked = 0
        self.head_request = False
        self.trailers_in = False  # the response ended with trailers (no separate last chunk needed)

    # -- transport API for the UpstreamConnection -------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.session.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def get_write_buffer_size(self) -> int:
        return sum(len(p) for p in self.pending)

    def is_closing(self) -> bool:
        return self.closed

    def _done(self) -> bool:
        return self.closed

    def _head_seen(self) -> bool:
        return self.body is not None

    def _resumed(self) -> None:
        self._ack()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.sent_end or self.protocol is not None:
            try:  # the exchange did not finish: the backend stops working on it
                self.session.h2.reset_stream(self.sid, h2.errors.ErrorCodes.CANCEL)
                self.session.flush()
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                pass
        self.session.forget(self.sid)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            self.session.loop.call_soon(protocol.connection_lost, None)

    # -- request: HTTP/1.1 bytes -> h2 -----------------------------------------------------------------------------
    def _head(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        try:
            req = parse_request(buf, 65536, 1 << 20, 1000)
        except ProtocolError:
            self.lost()
            return
        if req is None:
            self.buf = buf
            return
        self.buf = b""
        self.head_request = req.method == b"HEAD"
        fields = [(b":method", req.method), (b":scheme", b"http"), (b":authority", req.host),
                  (b":path", req.target)]
        deadline = self.protocol.deadline() if self.protocol is not None else 0.0
        for name, value in req.headers:
            low = name.lower()
            if low == b"grpc-timeout" and deadline > 0.0:  # what is left of it after queueing and retries
                value = b"%dm" % max(1, int((deadline - self.session.loop.time()) * 1000))
            if low not in _HOP:
                fields.append((low, value))
        fields.append((b"te", b"trailers"))
        no_body = not req.chunked and req.content_length <= 0
        if req.chunked:
            self.body = new_body_reader(_CHUNKED, 0, new_chunked_decoder())
        else:
            self.body = new_body_reader(_LENGTH, max(req.content_length, 0), None)
            if req.content_length > 0:
                fields.append((b"content-length", b"%d" % req.content_length))
        try:
            self.session.h2.send_headers(self.sid, fields, end_stream=no_body)
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError) as e:
            log.warning("HTTP/2 request to a backend failed: %s", e)
            self.lost()
            return
        self.sent_end = no_body
        self.session.flush()
        rest = buf[req.head_len :]
        if rest and not no_body:
            self._body(rest)

    def _body(self, data: bytes) -> None:
        try:
            pieces, _ = self.body.feed(data)
        except ProtocolError:
            self.lost()
            return
        self.pending.extend(p for p in pieces if p)
        if self.body.done:
            self.pending_end = True
            if self.body.mode == _CHUNKED:
                self.trailers = [(n.lower(), v) for n, v in self.body.trailers() if n.lower() not in _HOP]
        self.send_pending()

    def send_pending(self) -> None:
        h2c = self.session.h2
        while self.pending and not self.sent_end and not self.session.write_paused:
            try:
                window = min(h2c.local_flow_control_window(self.sid), h2c.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, KeyError):
                return
            if window <= 0:
                break
            piece = self.pending[0]
            if len(piece) > window:
                self.pending[0] = piece[window:]
                piece = piece[:window]
            else:
                self.pending.pop(0)
            h2c.send_data(self.sid, piece)
        if self.pending_end and not self.pending and not self.sent_end:
            self.sent_end = True
            if self.trailers:
                h2c.send_headers(self.sid, self.trailers, end_stream=True)
            else:
                h2c.end_stream(self.sid)
        self.session.flush()

    # -- response: h2 -> HTTP/1.1 bytes for the UpstreamConnection -------------------------------------------------
    def on_headers(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        protocol = self.protocol
        if protocol is None:
            return
        status = b"502"
        lines = []
        for name, value in headers:
            if name == b":status":
                status = value
            elif not name.startswith(b":") and name not in _HOP:
                lines.append(name + b": " + value + b"\r\n")
        interim = status.startswith(b"1")
        if interim:
            framing = b""
        elif ended or self.head_request:
            framing = b"content-length: 0\r\n"
        else:
            framing = b"transfer-encoding: chunked\r\n"
        protocol.data_received(b"HTTP/1.1 " + status + b" H2\r\n" + b"".join(lines) + framing + b"\r\n")

    def on_data(self, data: bytes, flow: int) -> None:
        self.unacked += flow
        protocol = self.protocol
        if protocol is not None and data:
            protocol.data_received(b"%x\r\n%s\r\n" % (len(data), data))
        self._ack()

    def on_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        protocol = self.protocol
        self.trailers_in = True
        if protocol is not None:
            tail = b"".join(n + b": " + v + b"\r\n" for n, v in headers if not n.startswith(b":"))
            protocol.data_received(b"0\r\n" + tail + b"\r\n")

    def on_end(self) -> None:
        protocol = self.protocol
        if protocol is not None and not self.trailers_in and not self.head_request:
            protocol.data_received(b"0\r\n\r\n")
        self.sent_end = True
        self.closed = True
        self.session.forget(self.sid)

    def lost(self) -> None:
        """The stream or the connection is gone: the UpstreamConnection sees a closed connection."""
        self.closed = True
        self.session.forget(self.sid)
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.connection_lost(None)

    def _ack(self) -> None:
        if self.unacked and not self.reading_paused:
            try:
                self.session.h2.acknowledge_received_data(self.unacked, self.sid)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                pass
            self.unacked = 0
            self.session.flush()


class H2Sessions:
    """The h2c connection of one backend's pool, reopened when it is gone or has received GOAWAY."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, tls: Any = None,
                 server_name: str = "") -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.tls = tls  # https:// backends: TLS with ALPN h2 (a backend that does not select h2 is unavailable)
        self.server_name = server_name
        self.session: H2Session | None = None
        self._opening: asyncio.Future[H2Session] | None = None

    def speaks_h2(self) -> bool:
        """An https backend selected h2 once: its next requests go over HTTP/2 too (h2c sessions of http backends,
        opened for gRPC, do not move their other requests to HTTP/2)."""
        return self.tls is not None and self.session is not None

    def adopt(self, transport: Any) -> None:
        """A TLS connection whose ALPN came out h2 becomes the backend's HTTP/2 connection."""
        session = H2Session(self.loop)
        transport.set_protocol(session)
        session.connection_made(transport)
        old, self.session = self.session, session
        if old is not None and old.transport is not None and not old.pipes:
            old.transport.close()

    async def stream(self, connect_timeout: float) -> StreamPipe:
        session = self.session
        if session is None or not session.usable:
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open(connect_timeout))
            opening = self._opening
            try:
                session = await asyncio.shield(opening)
            finally:
                if opening.done():
                    self._opening = None
        return session.open()

    async def _open(self, connect_timeout: float) -> H2Session:
        session = H2Session(self.loop)
        async with timeout(connect_timeout):
            if self.tls is not None:
                transport, _ = await self.loop.create_connection(lambda: session, self.host, self.port, ssl=self.tls,
                                                                 server_hostname=self.server_name or self.host)
                ssl_object = transport.get_extra_info("ssl_object")
                if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                    transport.close()
                    raise ConnectionError("the backend did not select HTTP/2 (ALPN h2)")
            else:
                await self.loop.create_connection(lambda: session, self.host, self.port)
        self.session = session
        return session

    def close(self) -> None:
        session = self.session
        if session is not None and session.transport is not None:
            session.transport.close()
        self.session = None
