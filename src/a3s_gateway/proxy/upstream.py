"""Upstream HTTP/1.1 connections: keep-alive pool per backend and the response relay (SPEC §5.4, §7.8).

An ``UpstreamConnection`` serves one client exchange at a time and reports to it through :class:`Client` (the
exchange of proxy/exchange.py overrides it; this module does not know the client side). It parses the response head
with the same parser as requests, builds the client head in one buffer and relays body pieces to the client as they
arrive: nothing is buffered, whatever the content type. Backpressure: the client connection pauses this
transport's reading while its own write buffer is above the high-water mark.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol, cast

from .._aio import timeout
from ..errors import ProtocolError
from ..http import hdrs
from ..http.framing import CHUNKED, LENGTH, UNTIL_CLOSE, chunk_frames, last_chunk, new_body_reader
from ..http.headers import interim_head, response_head
from ..http.parser import new_chunked_decoder, parse_response
from ..http.usage import ThenFilter, UsageEventFilter

if TYPE_CHECKING:
    from ..config.model import TransportConfig
    from ..http.usage import UsageMeter
    from ..middleware.chain import Response
    from ..service.balancer import Backend

HIGH_WATER: Final = 65536
_JOIN_LIMIT: Final = 16384  # bytes of body copied to send a response head and its body in one buffer

# connection states
_IDLE: Final = 0  # in the pool, or freshly connected
_HEAD: Final = 1  # request sent (or being sent), waiting for the response head
_BODY: Final = 2  # relaying the response body
_CLOSED: Final = 3
_TUNNEL: Final = 4  # after a relayed 101 (WebSocket): raw bytes both ways (SPEC §9.3)

# timer kinds
_T_NONE: Final = 0
_T_HEAD: Final = 1  # response_header_timeout
_T_STREAM: Final = 2  # stream_idle_timeout
_T_POOL: Final = 3  # idle_connection_timeout
_T_TUNNEL: Final = 4  # tunnel_idle_timeout: no byte in either direction
_NEVER: Final = float("inf")

SSE_ERROR: Final = b'\n\nevent: error\ndata: {"error":"Upstream stream failed"}\n\n'
_SSE_ERROR_CHUNK: Final = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SSE_ERROR), SSE_ERROR)


def _only_chunked(headers: list[tuple[bytes, bytes]], header_ids: bytes) -> bool:
    """True when every Transfer-Encoding field of a response is exactly ``chunked``."""
    for i in range(len(header_ids)):
        if header_ids[i] == hdrs.TRANSFER_ENCODING and headers[i][1].strip().lower() != b"chunked":
            return False
    return True


def _content_type(headers: list[tuple[bytes, bytes]], header_ids: bytes) -> bytes:
    for i in range(len(header_ids)):
        if header_ids[i] == hdrs.CONTENT_TYPE:
            return headers[i][1]
    return b""


class FieldSink(Protocol):
    """A client that takes the response as fields, not HTTP/1.1 text: a stream of an HTTP/2 connection (proxy/http2.py,
    SPEC §9.1). The relay and the exchange's own answers call these instead of writing to the client transport; what
    they pass is what the HTTP/1.1 head would carry (the backend's parsed fields, the gateway's added lines), the
    sink turns it into HEADERS / DATA / trailers (RFC 9113 §8.2.2: no connection-specific field)."""

    def interim(self, status: int, headers: list[tuple[bytes, bytes]], header_ids: bytes) -> None:
        """A 1xx response other than 100 (103 Early Hints), relayed as received."""

    def head(self, status: int, headers: list[tuple[bytes, bytes]], header_ids: bytes,
             connection_tokens: tuple[bytes, ...], content_length: int, extra: bytes, end: bool) -> None:
        """The response head: the backend's fields as the response phase left them (``header_ids`` classify them,
        ``connection_tokens`` name more hop-by-hop fields), ``content_length`` (-1: none announced), ``extra`` the
        gateway's header lines (``Name: value`` CRLF, sticky cookie, cold start); ``end``: no body follows."""

    def data(self, pieces: list[bytes]) -> None:
        """Body bytes (sent as the peer's windows allow)."""

    def end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """The body is complete; ``trailers`` (maybe empty) end the stream after it."""

    def start(self, status: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        """A head of the gateway's own (error, redirect, middleware reply, queued keep-alive stream); ``end``: no
        body follows."""


class Client:
    """What an upstream connection reports to: the exchange of the client request it serves (proxy/exchange.py).

    The events of one attempt — response head, body bytes, end, failure, tunnel — go through these methods; the
    exchange decides (retry, response phase, accounting) and writes to its client. A base class rather than a
    Protocol so that mypyc calls it natively; the exchange overrides every method."""

    __slots__ = ("deadline_at", "head", "head_sent", "meter", "response_extra", "sink", "upgrade")

    def __init__(self) -> None:
        self.head: Any = None  # the client's parsed request head (method, version, keep_alive, te_trailers)
        self.upgrade = False  # the request is a WebSocket upgrade: a 101 starts a tunnel (§9.3)
        self.deadline_at = 0.0  # a gRPC deadline as a loop time (0: none)
        self.response_extra = b""  # lines the gateway adds to the response head (sticky cookie, cold start)
        self.meter: UsageMeter | None = None  # an inspected request's usage accounting (§16.2); None: plain path
        # the gateway already answered 200 text/event-stream while the request was queued (queued_keepalive,
        # §16.3): the backend's head is dropped and its body relayed as the rest of that stream
        self.head_sent = False
        # the client takes the response as fields (an HTTP/2 stream, SPEC §9.1); None: HTTP/1.1 text written to it
        self.sink: FieldSink | None = None

    def write(self, data: bytes) -> None:
        """Bytes for the client."""
        raise NotImplementedError

    def writelines(self, data: list[bytes]) -> None:
        raise NotImplementedError

    def keeps_alive(self) -> bool:
        """Whether the client connection may stay open after this response (the client's wish, no shutdown)."""
        raise NotImplementedError

    def body_complete(self) -> bool:
        """Whether the whole request body was read (else the upstream connection cannot be reused)."""
        raise NotImplementedError

    def retry_status(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """A response head arrived: True when the exchange tries the request again instead (the caller drops the
        response with its connection)."""
        raise NotImplementedError

    def response_phase(self, status: int, headers: list[tuple[bytes, bytes]]) -> Response | None:
        """The middlewares' response phase on a backend's head: the changed head (None: no phase, unchanged)."""
        raise NotImplementedError

    def start_response(self, status: int, keep_alive: bool) -> None:
        """The response head goes out now (``keep_alive``: the client connection stays open after it)."""
        raise NotImplementedError

    def first_byte(self, ttfb: float) -> None:
        """Time to the first response byte of the attempt."""
        raise NotImplementedError

    def body_gap(self, gap: float) -> None:
        """Seconds between two body pieces of the response (time between tokens for streams)."""
        raise NotImplementedError

    def response_end(self, reusable: bool, bytes_out: int) -> None:
        """The response ended (completely when ``reusable``; otherwise the client connection must close)."""
        raise NotImplementedError

    def stream_failed(self, sse: bool, bytes_out: int) -> None:
        """The backend failed after the response head went out: the stream is cut (or ends with an SSE error)."""
        raise NotImplementedError

    def upstream_failed(self, status: int, message: str, failure: int = 1, detail: str = "") -> None:
        """The attempt failed before its response head went out. ``failure``: 0 the request never reached the
        backend (connect), 1 the connection failed after it was sent."""
        raise NotImplementedError

    def retry_on_fresh_connection(self) -> bool:
        """A reused keep-alive connection died before answering: True when the request goes out again (§7.8)."""
        raise NotImplementedError

    def start_tunnel(self) -> None:
        """The backend's 101 went out: bytes pass both ways unchanged from now on (§9.3)."""
        raise NotImplementedError

    def tunnel_data(self, data: bytes) -> None:
        """Backend bytes of a tunnel."""
        raise NotImplementedError

    def tunnel_closed(self) -> None:
        """The backend side of the tunnel closed (or went idle)."""
        raise NotImplementedError

    def backpressure(self, paused: bool) -> None:
        """The backend's write buffer crossed the high-water mark (request body): pause / resume the client."""
        raise NotImplementedError


class UpstreamConnection:
    """One HTTP/1.1 connection to a backend (an asyncio protocol; compiled to a native class by mypyc)."""

    __slots__ = (
        "_deadline",
        "_end",
        "_timer",
        "_timer_at",
        "_tkind",
        "buf",
        "client",
        "client_chunked",
        "filter",
        "filtered",
        "got_bytes",
        "keep_alive",
        "last_at",
        "loop",
        "meter",
        "multiplexed",
        "pool",
        "read_paused",
        "reader",
        "reused",
        "sent_at",
        "sink",
        "sse",
        "state",
        "te_trailers",
        "transport",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: Any = None
        self.client: Client | None = None
        self.state = _IDLE
        self.buf = b""
        self.reader: Any = None
        self.client_chunked = False
        self.keep_alive = False
        self.reused = False
        self.read_paused = False
        self.got_bytes = False
        self.sse = False
        self.te_trailers = False
        self._tkind = _T_NONE
        self._deadline = 0.0
        self._end = _NEVER  # request_timeout deadline of the current attempt
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.sent_at = 0.0  # loop time the request was sent (time to first byte)
        self.last_at = 0.0  # loop time of the last body piece from the backend (0: none yet)
        self.filter: Any = None  # body filter set by the response phase (compress)
        self.filtered = 0  # body bytes sent to the client after the filter
        self.meter: UsageMeter | None = None  # the client's usage meter while its response body is relayed
        self.multiplexed = False  # one stream of an HTTP/2 connection (never pooled: the next request is a new stream)
        self.sink: FieldSink | None = None  # the client's response sink while its response body is relayed

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = _CLOSED
        self.transport = None
        self._tkind = _T_NONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool.forget(self)
        client = self.client
        if client is None:
            return
        self.client = None
        if state == _TUNNEL:
            client.tunnel_closed()
        elif state == _HEAD:
            if self.reused and not self.got_bytes and client.retry_on_fresh_connection():
                return
            client.upstream_failed(502, "Upstream closed connection")
        elif state == _BODY:
            if self.reader.mode == UNTIL_CLOSE:
                sink = self.sink
                if sink is not None:
                    self.sink = None
                    sink.end([])
                elif self.client_chunked:
                    client.write(last_chunk([]))
                client.response_end(self.client_chunked, self.reader.received)
            else:
                self._truncate(client)

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.backpressure(True)

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.backpressure(False)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            # bytes on an idle pooled connection: the peer is not speaking HTTP/1.1 keep-alive correctly
            self.transport.close()
            return
        self.got_bytes = True
        if self.state == _BODY:
            self._relay(client, data)
            return
        if self.state == _TUNNEL:
            client.tunnel_data(data)
            self._deadline = self.loop.time() + self.pool.transport_cfg.tunnel_idle_timeout
            return
        if self.state != _HEAD:
            return
        buf = self.buf + data if self.buf else data
        head = client.head
        while True:
            try:
                resp = parse_response(buf)
            except ProtocolError:
                self.abort()
                client.upstream_failed(502, "Upstream protocol error")
                return
            if resp is None:
                self.buf = buf
                return
            buf = buf[resp.head_len :]
            status = resp.status
            if status >= 200:
                break
            if status == 101:
                if client.upgrade and resp.upgrade:
                    self._start_tunnel(client, resp, buf)
                    return
                # a switch the request did not ask for: what follows is no HTTP response (read as one, the
                # backend's tunnel bytes would answer this request and the connection would go back to the pool)
                self.abort()
                client.upstream_failed(502, "Upstream protocol error")
                return
            if status != 100 and head.version == 1:
                sink = client.sink
                if sink is not None:
                    sink.interim(status, resp.headers, resp.header_ids)
                else:
                    client.write(
                        interim_head(b"HTTP/1.1 %d %s\r\n" % (status, resp.reason), resp.headers, resp.header_ids)
                    )
        self.buf = b""
        if resp.chunked and not _only_chunked(resp.headers, resp.header_ids):
            # codings before chunked (gzip, chunked): re-framing would hand the client gzip bytes unannounced
            self.abort()
            client.upstream_failed(502, "Upstream protocol error")
            return
        self._start_body(client, head, resp, buf)

    # -- WebSocket (SPEC §9.3) ------------------------------------------------------------------------------
    def _start_tunnel(self, client: Client, resp: Any, rest: bytes) -> None:
        """The backend's own 101: relayed (after the response phase), then raw bytes both ways."""
        self.buf = b""
        headers = resp.headers
        header_ids = resp.header_ids
        phase = client.response_phase(101, headers)
        if phase is not None:
            headers = phase.headers
            header_ids = phase.header_ids(header_ids)  # compress never applies: no body filter
        upgrade = b"websocket"
        for i in range(len(resp.header_ids)):
            if resp.header_ids[i] == hdrs.UPGRADE:
                upgrade = resp.headers[i][1]
                break
        out = response_head(
            b"HTTP/1.1 101 %s\r\n" % resp.reason,
            headers,
            header_ids,
            resp.connection_tokens,
            b"Connection: upgrade\r\nUpgrade: " + upgrade + b"\r\n",
            client.response_extra,
        )
        client.start_response(101, False)
        client.first_byte(self.loop.time() - self.sent_at)
        self.state = _TUNNEL
        client.start_tunnel()
        client.write(out)
        if rest:
            client.tunnel_data(rest)
        self._tkind = _T_TUNNEL
        self._end = _NEVER
        self._deadline = self.loop.time() + self.pool.transport_cfg.tunnel_idle_timeout
        self._arm()

    def tunnel_send(self, data: bytes) -> None:
        """Client bytes of a tunnel, to the backend."""
        transport = self.transport
        if transport is not None:
            transport.write(data)
            self._deadline = self.loop.time() + self.pool.transport_cfg.tunnel_idle_timeout

    def tunnel_eof(self) -> None:
        """The client half-closed the tunnel: so does our side towards the backend."""
        transport = self.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    # -- response ---------------------------------------------------------------------------------------
    def _start_body(self, client: Client, head: Any, resp: Any, rest: bytes) -> None:
        status = resp.status
        keep_alive = resp.keep_alive
        client_keep_alive = client.keeps_alive()
        headers = resp.headers
        header_ids = resp.header_ids
        body_filter: Any = None
        if client.retry_status(status, headers):
            self.abort()  # this answer is dropped with its connection; the request goes out again
            return
        if client.head_sent and not 200 <= status < 300:  # after a queued keep-alive stream: an SSE error (§16.3)
            self.abort()
            client.upstream_failed(status, f"Upstream answered {status}", 2)
            return
        phase = client.response_phase(status, headers)
        if phase is not None:
            headers = phase.headers
            header_ids = phase.header_ids(header_ids)
            body_filter = phase.body_filter
        meter = client.meter
        strip = False  # the usage-only event the gateway asked for is taken out (§16.2 stream_usage)
        if meter is not None and meter.strip_usage and resp.event_stream:
            if body_filter is None:
                body_filter = UsageEventFilter()
                strip = True
            else:  # compressed: the usage event is taken out before compression
                body_filter = ThenFilter(UsageEventFilter(), body_filter)
        self.filter = None
        self.filtered = 0
        if head.method == b"HEAD" or status == 204 or status == 304:
            reader = new_body_reader(0, 0, None)
            framing = b"Content-Length: %d\r\n" % resp.content_length if resp.content_length >= 0 else b""
            chunked_out = False
        elif resp.chunked:
            reader = new_body_reader(CHUNKED, 0, new_chunked_decoder())
            chunked_out = head.version == 1
            framing = b"Transfer-Encoding: chunked\r\n" if chunked_out else b""
            client_keep_alive = client_keep_alive and chunked_out
            if chunked_out and body_filter is not None:
                self.filter = body_filter
        elif body_filter is not None and head.version == 1:
            # a transformed body (compress) has a new length: re-framed as chunks, whatever the backend sent
            if resp.content_length >= 0:
                reader = new_body_reader(LENGTH, resp.content_length, None)
            else:
                reader = new_body_reader(UNTIL_CLOSE, 0, None)
            if resp.content_length < 0:
                keep_alive = False
            chunked_out = True
            framing = b"Transfer-Encoding: chunked\r\n"
            self.filter = body_filter
        elif resp.content_length >= 0:
            reader = new_body_reader(LENGTH, resp.content_length, None)
            framing = b"Content-Length: %d\r\n" % resp.content_length
            chunked_out = False
        else:
            reader = new_body_reader(UNTIL_CLOSE, 0, None)
            keep_alive = False
            chunked_out = head.version == 1
            framing = b"Transfer-Encoding: chunked\r\n" if chunked_out else b""
            client_keep_alive = client_keep_alive and chunked_out
        if client.head_sent:  # the client's head went out while queued (§16.3): chunks on HTTP/1.1, else to close
            chunked_out = head.version == 1
            client_keep_alive = client_keep_alive and chunked_out
            self.filter = None
        if not client_keep_alive:
            framing += b"Connection: close\r\n"
        elif head.version == 0:
            framing += b"Connection: keep-alive\r\n"
        self.reader = reader
        self.keep_alive = keep_alive
        self.client_chunked = chunked_out
        self.sse = chunked_out and resp.event_stream and (self.filter is None or strip)
        self.te_trailers = head.te_trailers
        self.state = _BODY
        self.meter = meter
        if meter is not None:  # an inspected request (§16.2): what its response body is
            meter.begin(_content_type(resp.headers, resp.header_ids), self.sent_at)
        sink = client.sink
        if sink is not None:
            self._start_fields(client, sink, resp, headers, header_ids, rest)
            return
        out = response_head(
            b"HTTP/1.1 %d %s\r\n" % (status, resp.reason),
            headers,
            header_ids,
            resp.connection_tokens,
            framing,
            client.response_extra,
        ) if not client.head_sent else b""
        client.start_response(status, client_keep_alive)
        self._body_begins(client, rest, out)

    def _start_fields(self, client: Client, sink: FieldSink, resp: Any, headers: list[tuple[bytes, bytes]],
                      header_ids: bytes, rest: bytes) -> None:
        """``_start_body`` for a client that takes fields (HTTP/2): the same decisions, the head as fields, the body
        as pieces; ``client_chunked`` then means the stream's end delimits the body (no chunk framing is written)."""
        self.sink = sink
        reader = self.reader
        mode = reader.mode
        # the Content-Length the HTTP/1.1 head would announce: a body without one, or relayed at its own length
        length = resp.content_length if mode == 0 or (mode == LENGTH and not self.client_chunked) else -1
        client.start_response(resp.status, client.keeps_alive())
        if not client.head_sent:
            sink.head(resp.status, headers, header_ids, resp.connection_tokens, length, client.response_extra,
                      reader.done and self.filter is None)
        self._body_begins(client, rest, b"")

    def _body_begins(self, client: Client, rest: bytes, out: bytes) -> None:
        """The response head is decided (``out``: its HTTP/1.1 text, or b"" when it went as fields or before, while
        queued): time to first byte, then the body — finished already, or relayed from ``rest`` on."""
        reader = self.reader
        now = self.loop.time()
        if reader.done or rest:
            client.first_byte(now - self.sent_at)  # the head alone, or the head with the first body bytes
            self.last_at = now
        else:
            self.last_at = 0.0
        if reader.done:
            if out:
                client.write(out)
            if rest:
                self.keep_alive = False
            self._finish(client)
            return
        self._tkind = _T_STREAM
        self._deadline = now + self.pool.transport_cfg.stream_idle_timeout
        self._arm()
        if rest:
            self._relay(client, rest, out, True)  # its first byte is timed above
        elif out:
            client.write(out)

    def _relay(self, client: Client, data: bytes, head: bytes = b"", opening: bool = False) -> None:
        reader = self.reader
        try:
            pieces, consumed = reader.feed(data)
        except ProtocolError:
            if head:
                client.write(head)
            self.abort()
            self.client = None
            self._truncate(client)
            return
        meter = self.meter
        now = 0.0  # one clock read per read serves the usage meter and the body-gap timing below
        if meter is not None and pieces:
            now = self.loop.time()
            meter.feed(pieces, now)
        if self.filter is not None:
            out = self.filter.feed(b"".join(pieces)) if pieces else b""
            self.filtered += len(out)
            pieces = [out] if out else []
        sink = self.sink
        if sink is not None:
            if pieces:
                sink.data(pieces)
        else:
            if self.client_chunked:
                pieces = chunk_frames(pieces)
            if head:
                # the response head and the first body bytes leave in one write: one buffer when small (a plain
                # write() costs less than writev() of two buffers), else head + pieces as one writelines()
                if len(pieces) == 1 and len(pieces[0]) <= _JOIN_LIMIT:
                    pieces[0] = head + pieces[0]
                else:
                    pieces.insert(0, head)
            if len(pieces) == 1:
                client.write(pieces[0])
            elif pieces:
                client.writelines(pieces)
        if not opening:
            # time to first body byte, then the gaps between body pieces (time between tokens for streams)
            if now == 0.0:
                now = self.loop.time()
            last = self.last_at
            if last == 0.0:
                client.first_byte(now - self.sent_at)
            else:
                client.body_gap(now - last)
            self.last_at = now
            if not reader.done:
                self._deadline = now + self.pool.transport_cfg.stream_idle_timeout
                self._arm()
        if reader.done:
            if consumed < len(data):
                self.keep_alive = False
            self._finish(client)

    def _finish(self, client: Client) -> None:
        bytes_out = self.reader.received
        if self.filter is not None:
            tail = self.filter.finish()
            self.filter = None
            self.filtered += len(tail)
            bytes_out = self.filtered
            if tail:
                if self.sink is not None:
                    self.sink.data([tail])
                else:
                    client.writelines(chunk_frames([tail]))
        sink = self.sink
        if sink is not None:
            self.sink = None
            sink.end(self.reader.trailers() if self.te_trailers else [])
        elif self.client_chunked:
            client.write(last_chunk(self.reader.trailers() if self.te_trailers else []))
        self.client = None
        self._tkind = _T_NONE
        self.state = _IDLE
        self.reader = None
        self.meter = None
        reusable = self.keep_alive and client.body_complete()
        self.pool.release(self, reusable)
        client.response_end(True, bytes_out)

    def _truncate(self, client: Client) -> None:
        """The backend failed after the response head went out (SPEC §5.4)."""
        sse = self.sse
        sink = self.sink
        self.sink = None
        client.stream_failed(sse, self.reader.received)
        if sse:
            body_filter = self.filter
            if body_filter is not None:  # the usage-event filter: the event it holds goes out before the error
                self.filter = None
                tail = body_filter.finish()
                if tail:
                    if sink is not None:
                        sink.data([tail])
                    else:
                        client.writelines(chunk_frames([tail]))
            if sink is not None:
                sink.data([SSE_ERROR])
                sink.end([])
            else:
                client.write(_SSE_ERROR_CHUNK)
        client.response_end(sse, self.reader.received)

    # -- used by the exchange ----------------------------------------------------------------------------------
    def begin(self, client: Client, data: list[bytes]) -> None:
        """Start an exchange: send the request head (and any body bytes already read) in one write."""
        self.client = client
        self.state = _HEAD
        self.got_bytes = False
        self.buf = b""
        if len(data) == 1:
            self.transport.write(data[0])
        else:
            self.transport.writelines(data)
        now = self.loop.time()
        self.sent_at = now
        cfg = self.pool.transport_cfg
        self._tkind = _T_HEAD
        self._deadline = now + cfg.response_header_timeout
        self._end = now + cfg.request_timeout if cfg.request_timeout > 0 else _NEVER
        deadline = client.deadline_at
        if deadline > 0.0 and deadline < self._end:  # a gRPC deadline (SPEC §9.2): min(grpc-timeout, request_timeout)
            self._end = deadline
        self._arm()

    def deadline(self) -> float:
        """The gRPC deadline of the request in progress as a loop time (0: none)."""
        client = self.client
        return client.deadline_at if client is not None else 0.0

    def pause_reading(self) -> None:
        """The client cannot take more bytes now (its write buffer is above the high-water mark)."""
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        """Close without pooling (client gone, protocol error, timeout)."""
        self.client = None
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.abort()

    # -- one lazily re-armed timer -------------------------------------------------------------------------
    def _arm(self) -> None:
        deadline = self._deadline if self._deadline < self._end else self._end
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def idle_in_pool(self) -> None:
        self._tkind = _T_POOL
        self._end = _NEVER
        self._deadline = self.loop.time() + self.pool.transport_cfg.idle_connection_timeout
        self._arm()

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._tkind
        if kind == _T_NONE or self.transport is None:
            return
        now = self.loop.time()
        if now < self._deadline and now < self._end:
            self._arm()
            return
        client = self.client
        if kind != _T_POOL and now >= self._end:
            kind = _T_HEAD if self.state == _HEAD else _T_STREAM  # request_timeout: 504 before the head, else truncate
        if kind == _T_POOL:
            self.pool.forget(self)
            self.transport.close()
        elif kind == _T_TUNNEL:
            self.transport.close()  # idle tunnel: both sides close (connection_lost closes the client)
        elif kind == _T_HEAD and client is not None:
            self.abort()
            client.upstream_failed(504, "Upstream response timeout")
        elif kind == _T_STREAM and client is not None:
            self.abort()
            self._truncate(client)


class Pool:
    """Keep-alive connections to one backend (LIFO: the most recently used connection is the warmest).

    A request that finds no idle connection opens one and waits for it in ``waiters``; a connection released
    meanwhile goes to the first waiter, before the idle list and whatever its size, and the new connection, once
    open, is released in turn. So a healthy connection is never closed while a request waits for one; the idle
    limit only closes connections nobody is waiting for.
    """

    def __init__(self, backend: Backend, loop: asyncio.AbstractEventLoop, transport_cfg: TransportConfig) -> None:
        self.backend = backend
        self.loop = loop
        self.transport_cfg = transport_cfg
        self.idle: list[UpstreamConnection] = []
        # requests waiting for a connection that is being opened for them, oldest first
        self.waiters: deque[asyncio.Future[UpstreamConnection]] = deque()
        self.closed = False
        self.host_header = backend.host_header.encode("idna") if backend.host_header else b""
        self.base_path = backend.base_path.encode()
        self.connections = 0
        self.h2: Any = None  # the backend's HTTP/2 connection (h2c:// servers, gRPC), opened on first use
        self.tls: Any = None  # https:// backends: the client TLS context (SPEC §10.5), built on first connect

    def take(self) -> UpstreamConnection | None:
        """An idle live connection, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            tr = conn.transport
            if tr is not None and not tr.is_closing():
                conn.reused = True
                conn._tkind = _T_NONE
                return conn
        return None

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Return ``conn`` after a complete exchange: to a waiting request, else pooled when there is room."""
        tr = conn.transport
        if (
            reusable
            and not conn.multiplexed
            and not self.closed
            and tr is not None
            and tr.get_write_buffer_size() == 0  # the whole request reached the backend
        ):
            # an exchange can end right after the client's backpressure paused this connection
            conn.resume_reading()
            waiters = self.waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done() and not tr.is_closing():
                    conn.reused = True
                    waiter.set_result(conn)
                    return
            if len(self.idle) < self.transport_cfg.max_idle_connections_per_backend:
                self.idle.append(conn)
                conn.idle_in_pool()
                return
        if conn.transport is not None:
            conn.state = _CLOSED
            conn.transport.close()

    def forget(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    async def connect(self, h2: bool = False, fresh: bool = False) -> UpstreamConnection:
        """A connection for a request that found none idle: a new one (raises OSError / TimeoutError), or one
        released while the new one opens (which then joins the pool, see the class docstring). ``fresh``: only a new
        connection (the retry after a stale keep-alive connection, §7.8). With ``h2`` (or an ``h2c://`` backend) a
        new stream on the backend's HTTP/2 connection (SPEC §9.2: gRPC goes HTTP/2 end to end)."""
        b = self.backend
        if h2 or b.scheme == "h2c" or (self.h2 is not None and self.h2.speaks_h2()):
            return await self._h2_stream()
        if fresh:
            return await self._open()
        loop = self.loop
        waiter: asyncio.Future[UpstreamConnection] = loop.create_future()
        dial = loop.create_task(self._dial(waiter))
        waiters = self.waiters
        waiters.append(waiter)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result(), True)  # it reached this request as the request was cancelled
            dial.cancel()
            raise
        finally:
            try:
                waiters.remove(waiter)
            except ValueError:  # release() took it out to hand it a connection
                pass
        tr = conn.transport
        if tr is None or tr.is_closing():
            # handed over, then closed by the backend before this request could use it: wait again (the connection
            # being opened for this request is released to the first waiter when it is open)
            return await self.connect(h2, fresh)
        return conn

    async def _dial(self, waiter: asyncio.Future[UpstreamConnection]) -> None:
        """Open a connection for ``waiter``; if a released one reached it first, release the new one (§7.8)."""
        try:
            conn = await self._open()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # OSError, TimeoutError: the waiting request answers 502
            if not waiter.done():
                waiter.set_exception(exc)
            return
        if waiter.done():
            self.release(conn, True)
        else:
            waiter.set_result(conn)

    async def _open(self) -> UpstreamConnection:
        """Open a new connection (raises OSError / TimeoutError)."""
        b = self.backend
        conn = UpstreamConnection(self)
        async with timeout(self.transport_cfg.connect_timeout):
            if b.scheme == "https":
                # §9.1: an https backend that selects h2 is spoken to in HTTP/2 from then on
                transport, _ = await self.loop.create_connection(
                    cast(Any, lambda: conn), b.host, b.port, ssl=self._tls(["h2", "http/1.1"]),
                    server_hostname=self._tls_name(),
                )
                ssl_object = transport.get_extra_info("ssl_object")
                if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                    self._sessions().adopt(transport)
                    return await self._h2_stream()
            else:
                await self.loop.create_connection(cast(Any, lambda: conn), b.host, b.port)
        self.connections += 1
        return conn

    def _tls(self, alpn: list[str]) -> Any:
        """The client TLS context of an https:// backend: system trust or ``tls_ca_file``; verification off only
        with ``tls_insecure_skip_verify`` (a verification failure is a connect failure, 502)."""
        from ..http.client import client_context

        return client_context(self.transport_cfg, alpn)

    def _tls_name(self) -> str:
        return self.transport_cfg.tls_server_name or self.backend.host

    def _sessions(self) -> Any:
        sessions = self.h2
        if sessions is None:
            from .upstream_h2 import H2Sessions

            b = self.backend
            tls = self._tls(["h2"]) if b.scheme == "https" else None
            sessions = self.h2 = H2Sessions(self.loop, b.host, b.port, tls, self._tls_name())
        return sessions

    async def _h2_stream(self) -> UpstreamConnection:
        pipe = await self._sessions().stream(self.transport_cfg.connect_timeout)
        conn = UpstreamConnection(self)
        conn.multiplexed = True
        pipe.protocol = conn
        conn.connection_made(pipe)
        return conn

    def close(self) -> None:
        """Close idle connections; busy ones close when their exchange ends."""
        self.closed = True
        if self.h2 is not None:
            self.h2.close()
        idle, self.idle = self.idle, []
        for conn in idle:
            if conn.transport is not None:
                conn.transport.close()
