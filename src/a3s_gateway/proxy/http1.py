"""The downstream HTTP/1.1 connection: one ``asyncio.Protocol`` per client connection (SPEC §5).

The connection parses requests strictly, reads their bodies, keeps the connection alive and times it; each request's
life (route, middlewares, dispatch, attempts, relay bookkeeping, accounting, local answers) is its
:class:`~a3s_gateway.proxy.exchange.Exchange`, one object per connection reset for each request. When a pooled
upstream connection is available the whole exchange runs in protocol callbacks: no task or coroutine is created per
request. Pipelined requests are answered in order (the next head is parsed only once the previous response is
complete).
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..errors import ProtocolError
from ..http.framing import CHUNKED, LENGTH, new_body_reader
from ..http.parser import new_chunked_decoder, parse_request
from ..netaddr import normalize_ip
from . import responses
from .exchange import (
    DRAIN_LIMIT,
    P_PENDING,
    P_PIPELINE,
    P_UPSTREAM,
    Downstream,
    Exchange,
    lists_websocket,
    upstream_host,
)
from .upstream import HIGH_WATER

if TYPE_CHECKING:
    import asyncio

    from ..runtime import EntrypointRuntime

__all__ = ["HttpConnection", "Listener", "TimerWheel", "lists_websocket", "upstream_host"]


# connection states
_IDLE: Final = 0  # waiting for (or parsing) a request head
_BODY: Final = 1  # reading the request body
_WAIT: Final = 2  # request fully read, response in progress
_CLOSED: Final = 3
_TUNNEL: Final = 4  # after the backend's 101: raw bytes both ways (WebSocket, SPEC §9.3)

# timer kinds
_T_NONE: Final = 0
_T_HEAD: Final = 1  # header_read_timeout, from the first byte of a head
_T_IDLE: Final = 2  # keep-alive idle between requests
_T_BODY: Final = 3  # gap while receiving a request body

#: resolution of the connections' timeouts: a header, body or idle timeout fires at most this late
TICK: Final = 0.1

_ALLOW_405: Final = b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n"
_H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n"


class Rejections(Protocol):
    """Connections closed at ``max_connections`` (proxy/server.py's ``ConnectionRejections``)."""

    def at_limit(self, max_connections: int) -> None:
        """One connection closed at the limit."""


class Timed(Protocol):
    """What the wheel files: a connection told when its tick came (it checks its own deadline)."""

    def tick_due(self, tick: int) -> None: ...


class TimerWheel:
    """The timeouts of a listener's connections on one event-loop timer (issue 20).

    A connection files itself under the tick (``TICK`` seconds) at or after its deadline; one loop timer runs at the
    earliest tick that has connections. A timer handle and a libuv timer per connection cost ~260 bytes and two
    allocations per accepted connection; a set entry costs a few bytes. Deadlines that move later are not re-filed
    (the connection re-checks its deadline when its tick comes), so a request costs no timer work at all.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, set[Timed]] = {}
        self.ticks: list[int] = []  # heap of the ticks in ``buckets``
        self.handle: asyncio.TimerHandle | None = None
        self.handle_tick = 0

    def add(self, conn: Timed, deadline: float) -> int:
        """File ``conn`` under the first tick at or after ``deadline``; returns that tick."""
        tick = int(deadline / TICK) + 1
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = set()
            self.buckets[tick] = bucket
            heapq.heappush(self.ticks, tick)
            handle = self.handle
            if handle is None or tick < self.handle_tick:
                if handle is not None:
                    handle.cancel()
                self.handle_tick = tick
                self.handle = self.loop.call_at(tick * TICK, self.fire)
        bucket.add(conn)
        return tick

    def remove(self, conn: Timed, tick: int) -> None:
        bucket = self.buckets.get(tick)
        if bucket is not None:
            bucket.discard(conn)

    def fire(self) -> None:
        """Run the timers of every tick that has come, then wait for the next tick that has connections."""
        self.handle = None
        now = self.loop.time()
        ticks = self.ticks
        buckets = self.buckets
        while ticks and ticks[0] * TICK <= now + 1e-6:
            tick = heapq.heappop(ticks)
            bucket = buckets.pop(tick, None)
            if bucket is None:
                continue
            for conn in bucket:
                conn.tick_due(tick)  # may file it again (a later tick), which may arm the loop timer
        self._arm_next()

    def _arm_next(self) -> None:
        # (a method of its own: in ``fire`` the type checker would still take ``self.handle`` for the None it set,
        # and mypyc would compile that assumption in, though ``tick_due`` may have armed a timer meanwhile)
        ticks = self.ticks
        buckets = self.buckets
        while ticks and ticks[0] not in buckets:
            heapq.heappop(ticks)
        if ticks and self.handle is None:
            self.handle_tick = ticks[0]
            self.handle = self.loop.call_at(ticks[0] * TICK, self.fire)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.buckets.clear()
        self.ticks.clear()

    def __len__(self) -> int:
        return sum(len(b) for b in self.buckets.values())


class Listener(Protocol):
    """What a connection needs of the server that accepted it (proxy/server.py's ``HttpServer``, or the per-stream
    server of an HTTP/2 connection): typed here so that this module does not import the server."""

    loop: asyncio.AbstractEventLoop
    entry: EntrypointRuntime  # swapped by a reload; read when a request starts
    connections: set[Any]  # the live connections, for drain and max_connections
    port_b: bytes
    ssl: Any  # TLS termination context, None on plain listeners
    wheel: TimerWheel  # the connections' timeouts

    @property
    def rejections(self) -> Rejections | None: ...

    def take_over_h2(self, conn: HttpConnection, initial: bytes) -> None:
        """Hand ``conn``'s transport to HTTP/2 (ALPN h2, or the h2c preface as its first bytes, SPEC §9.1)."""


class HttpConnection(Downstream):
    """One client connection on an HTTP entrypoint (an asyncio protocol; compiled to a native class by mypyc)."""

    # slots keep an idle keep-alive connection small (SPEC target: a few KiB per idle connection)
    __slots__ = ("_deadline", "_paused", "_tick", "_tkind", "buf", "ex", "fresh", "server", "state")

    def __init__(self, server: Listener) -> None:
        super().__init__(server.loop, server.entry)
        self.server = server
        self.state = _IDLE
        self.buf = b""
        self.fresh = True  # no request started yet: the h2c preface is recognised only as the first bytes (§9.1)
        self._paused = 0
        self._tkind = _T_NONE
        self._deadline = 0.0
        self._tick = 0  # the wheel tick this connection is filed under (0: none)
        self.ex = Exchange(self)  # reused by every request of the connection

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        server.connections.add(self)
        limit = self.entry.limits.max_connections
        rejections = server.rejections  # None for the streams of an HTTP/2 connection: they are not connections
        if limit and rejections is not None and len(server.connections) > limit:
            transport.abort()
            rejections.at_limit(limit)
            return
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        ip = normalize_ip(peer[0]) if peer else ""
        self.client_ip = ip
        self.client_ip_b = ip.encode()
        trusted = self.entry.trusted
        self.trusted = trusted is not None and trusted.contains(ip)
        self.port_b = server.port_b
        if server.ssl is not None and self.entry.limits.http2:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                server.take_over_h2(self, b"")  # ALPN chose HTTP/2 (SPEC §9.1)
                return
        self._set_timer(_T_HEAD, self.entry.limits.header_read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state == _TUNNEL:  # the client closed its WebSocket: the normal end
            self.ex.tunnel_ended()
        self.state = _CLOSED
        self._tkind = _T_NONE
        if self._tick:
            self.server.wheel.remove(self, self._tick)
            self._tick = 0
        self.server.connections.discard(self)
        self.ex.client_gone()

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _TUNNEL:
            up = self.ex.upstream
            if up is not None:
                up.tunnel_send(data)
            return
        self.buf = self.buf + data if self.buf else data
        if state == _IDLE:
            self._next_request()
        elif state == _BODY:
            self.read_body()
        elif state == _WAIT and len(self.buf) > DRAIN_LIMIT:
            self.pause_reading_for(P_PIPELINE)

    def eof_received(self) -> bool | None:
        # A FIN from the client ends the connection, whatever the phase: an HTTP/1.1 client that shuts down its
        # side during an exchange has gone away (SPEC §5.4: the upstream request is cancelled at once, as nginx's
        # 499), and a partial head or body will never complete. connection_lost accounts the exchange.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.ex.upstream
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.ex.upstream
        if up is not None:
            up.resume_reading()

    # -- requests -----------------------------------------------------------------------------------------
    def _next_request(self) -> None:
        limits = self.entry.limits
        try:
            head = parse_request(
                self.buf, limits.max_request_line_bytes, limits.max_header_bytes, limits.max_headers
            )
        except ProtocolError as e:
            error = e
            if self.buf.startswith(_H2_PREFACE):
                if self.fresh and self.entry.limits.http2:
                    self.server.take_over_h2(self, self.buf)  # h2c with prior knowledge (SPEC §9.1)
                    return
                if not self.fresh:  # after an HTTP/1.1 request the preface is no protocol switch (SPEC §9.1)
                    error = ProtocolError(400, "Bad request: malformed request line")
            self._reject(error)
            return
        if head is None:
            if self._tkind != _T_HEAD:
                self._set_timer(_T_HEAD, limits.header_read_timeout)
            return
        buf = self.buf
        self.buf = buf[head.head_len :] if head.head_len < len(buf) else b""
        self._start(head)

    def _start(self, head: Any) -> None:
        """A parsed head: its body reader, then the exchange."""
        self.fresh = False
        entry = self.server.entry
        self.entry = entry
        if head.chunked:
            self.body = new_body_reader(CHUNKED, 0, new_chunked_decoder())
            self.body_done = False
        elif head.content_length > 0:
            self.body = new_body_reader(LENGTH, head.content_length, None)
            self.body_done = False
        else:
            self.body = None
            self.body_done = True
        self.state = _WAIT if self.body_done else _BODY
        self._tkind = _T_NONE
        self.expect = head.expect_continue and head.version == 1 and not self.body_done
        self.ex.start(head, entry)

    def start_message(self, head: Any, body: Any) -> None:
        """A request delivered as fields, not text (an HTTP/2 stream, SPEC §9.1): ``head`` as a parsed head,
        ``body`` the reader of its body bytes as ``data_received`` brings them (None: no body)."""
        self.fresh = False
        entry = self.server.entry
        self.entry = entry
        self.body = body
        self.body_done = body is None
        self.state = _WAIT if body is None else _BODY
        self._tkind = _T_NONE
        self.expect = False
        self.ex.start(head, entry)

    def refuse(self, e: ProtocolError, method: bytes) -> None:
        """A request delivered as fields that the parser would reject: answered like :meth:`_reject`."""
        self.buf = b""
        self._refuse(e, method)

    def read_body(self) -> None:
        body = self.body
        buf = self.buf
        ex = self.ex
        try:
            pieces, consumed = body.feed(buf)
        except ProtocolError as e:
            ex.abort(e.status, e.message)
            return
        if ex.peek is not None:
            self._peek_body(pieces, consumed)
            return
        limit = ex.body_limit()
        if limit and body.received > limit:
            ex.body_too_large()
            return
        if self.draining:
            pieces = []
        elif body.mode == CHUNKED:
            # decoded and re-encoded, never relayed byte for byte (SPEC §5.5): no chunk extensions, no size another
            # parser may read differently, no trailer RFC 9110 forbids
            pieces = body.rechunk(pieces)
        self.buf = buf[consumed:] if consumed < len(buf) else b""
        done: bool = body.done
        ex.body_pieces(pieces, done)
        if done:
            self.body_done = True
            if self.draining:
                self.draining = False
                ex.response_done(True)
                return
            if self.state == _BODY:
                self.state = _WAIT
                self._tkind = _T_NONE
        else:
            self._set_timer(_T_BODY, self.entry.limits.idle_timeout)

    def _peek_body(self, pieces: list[bytes], consumed: int) -> None:
        """Body bytes read before routing, to read the request's model (SPEC §16.1): to the exchange as decoded."""
        buf = self.buf
        self.buf = buf[consumed:] if consumed < len(buf) else b""
        done: bool = self.body.done
        if done:
            self.body_done = True
            if self.state == _BODY:
                self.state = _WAIT
                self._tkind = _T_NONE
        else:
            self._set_timer(_T_BODY, self.entry.limits.idle_timeout)
        self.ex.peek_body(pieces, done)

    # -- what the exchange asks of the connection (exchange.Downstream) ---------------------------------------
    def gone(self) -> bool:
        return self.transport is None or self.state == _CLOSED

    def has_buffered(self) -> bool:
        return self.state == _BODY and bool(self.buf)

    def finished(self, reusable: bool) -> None:
        """The exchange ended (completely when ``reusable``; otherwise the connection must close)."""
        if self.transport is None:
            return
        if not reusable or not self.keep_alive or not self.body_done or self.closing:
            self.close()
            return
        self.state = _IDLE
        self.ex.idle()
        self.body = None
        if self._paused & (P_PIPELINE | P_UPSTREAM | P_PENDING):
            self.resume_reading_for(P_PIPELINE | P_UPSTREAM | P_PENDING)
        if self.buf:
            self._next_request()
        else:
            self._set_timer(_T_IDLE, self.entry.limits.idle_timeout)

    def drain(self) -> None:
        self.state = _BODY
        self.draining = True
        if self.buf:
            self.read_body()

    def pause_reading_for(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None:
                self.transport.resume_reading()

    def is_paused_for(self, reason: int) -> bool:
        return bool(self._paused & reason)

    def stop_timer(self) -> None:
        self._tkind = _T_NONE

    def start_tunnel(self) -> None:
        """The backend's 101 went out: from now on bytes pass both ways unchanged (the upstream side times the
        tunnel's idleness)."""
        self.state = _TUNNEL
        self._tkind = _T_NONE
        buf = self.buf
        self.buf = b""
        if self._paused & P_PIPELINE:
            self.resume_reading_for(P_PIPELINE)
        up = self.ex.upstream
        if buf and up is not None:
            up.tunnel_send(buf)

    def detach(self) -> bytes:
        initial = self.buf
        self.buf = b""
        self.state = _CLOSED
        self._tkind = _T_NONE
        self.transport = None
        self.server.connections.discard(self)
        return initial

    def close(self) -> None:
        self.state = _CLOSED
        self._tkind = _T_NONE
        tr = self.transport
        if tr is not None:
            tr.close()

    # -- protocol violations ----------------------------------------------------------------------------------
    def _reject(self, e: ProtocolError) -> None:
        """A protocol violation: answer its status with ``Connection: close`` and close (SPEC §5.5)."""
        line, sep, _ = self.buf.partition(b"\r\n")
        parts = line.split(b" ")
        self._refuse(e, parts[0] if sep and len(parts) == 3 else b"")

    def _refuse(self, e: ProtocolError, method: bytes) -> None:
        extra = _ALLOW_405 if e.status == 405 else b""
        if self.transport is not None:
            if self.ex.sink is not None:  # a stream of an HTTP/2 connection: the answer as fields
                fields, body = responses.error_fields(e.message, extra)
                self.ex.send_fields(e.status, fields, body)
            else:
                self.transport.write(responses.error_response(e.status, e.message, extra=extra, close=True))
        if 0 < len(method) <= 32:
            # the request line was read: the rejection is counted and logged like any other response (SPEC §11.3)
            entry = self.server.entry
            self.entry = entry
            self.body = None
            self.ex.rejected(entry, e.status, e.message, method)
        self.close()

    # -- the server's calls -----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their response."""
        self.closing = True
        if self.state == _IDLE and not self.buf:
            self.close()

    def drain_deadline(self) -> None:
        """Shutdown drain deadline: a queued request is answered 503, anything else is cut."""
        if self.transport is None:
            return
        if not self.ex.drain_deadline():
            self.transport.abort()

    # -- one lazily re-filed timeout on the listener's wheel -------------------------------------------------
    def _set_timer(self, kind: int, delay: float) -> None:
        self._tkind = kind
        deadline = self.loop.time() + delay
        self._deadline = deadline
        tick = self._tick
        if tick:
            if tick * TICK <= deadline + TICK:
                return  # the filed tick comes first (or in the same tick): the deadline is checked then
            self.server.wheel.remove(self, tick)
        self._tick = self.server.wheel.add(self, deadline)

    def tick_due(self, tick: int) -> None:
        """The wheel reached ``tick``: time out if the deadline has passed, else file it again."""
        if tick != self._tick:
            return
        self._tick = 0
        kind = self._tkind
        if kind == _T_NONE or self.transport is None:
            return
        if self.loop.time() < self._deadline:
            self._tick = self.server.wheel.add(self, self._deadline)
            return
        if kind == _T_HEAD:
            if self.buf:
                self.transport.write(responses.error_response(408, "Request timeout", close=True))
            self.close()
        elif kind == _T_IDLE:
            self.close()
        elif kind == _T_BODY:
            self.ex.abort(408, "Request timeout")
