"""The downstream HTTP/1.1 connection: one ``asyncio.Protocol`` per client connection (SPEC §5).

Requests are parsed strictly, routed, given a backend and an upstream connection, and relayed with
backpressure both ways. When a pooled upstream connection is available the whole exchange runs in protocol
callbacks: no task or coroutine is created per request. Pipelined requests are answered in order (the next head is
parsed only once the previous response is complete).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

from .. import _compat
from ..errors import ProtocolError
from ..http import hdrs
from ..routing.matchers import parse_ip
from . import responses
from .upstream import CHUNKED, HIGH_WATER, LENGTH, BodyReader, ChunkedDecoder, Pool, UpstreamConnection

if TYPE_CHECKING:
    from ..observability.stats import RouteStats
    from ..observability.tracing import TraceContext
    from ..runtime import EntrypointRuntime, RouteTarget
    from ..service.balancer import Backend
    from .server import HttpServer

log = logging.getLogger("a3s_gateway.proxy")

_parser: Any = _compat.load("http parser")
_headers: Any = _compat.load("header filter")
parse_request = _parser.parse_request
request_head = _headers.request_head

# connection states
_IDLE = 0  # waiting for (or parsing) a request head
_BODY = 1  # reading the request body
_WAIT = 2  # request fully read, response in progress
_CLOSED = 3

# timer kinds
_T_NONE = 0
_T_HEAD = 1  # header_read_timeout, from the first byte of a head
_T_IDLE = 2  # keep-alive idle between requests
_T_BODY = 3  # gap while receiving a request body

# reasons to pause reading (bit mask)
_P_PIPELINE = 1  # pipelined bytes waiting while a response is in progress
_P_UPSTREAM = 2  # upstream write buffer full (request body)
_P_PENDING = 4  # body bytes held while the upstream connection is being opened

_ALLOW_405 = b"Allow: GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE\r\n"
_CONTENT_LENGTH_ZERO = b"Content-Length: 0\r\n"
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"
_DRAIN_LIMIT = 65536


def normalize_ip(text: str) -> str:
    """An address as it is reported: IPv4-mapped IPv6 as IPv4."""
    if text.startswith("::ffff:") and "." in text:
        return text[7:]
    return text


class HttpConnection:
    """One client connection on an HTTP entrypoint (an asyncio protocol; compiled to a native class by mypyc)."""

    # slots keep an idle keep-alive connection small (SPEC target: a few KiB per idle connection)
    __slots__ = (
        "_deadline", "_paused", "_timer", "_timer_at", "_tkind", "backend", "backend_url", "body", "body_done", "buf",
        "bytes_out", "client_ip", "client_ip_b", "closing", "connect_task", "draining", "entry", "head",
        "keep_alive", "loop", "pending", "pending_bytes", "pool", "port_b", "resp_started", "response_extra",
        "retried", "rid", "server", "state", "stats", "status", "t0", "trace", "transport", "trusted", "ttfb",
        "up_head", "upstream", "wall0", "write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: Any = None
        self.state = _IDLE
        self.buf = b""
        self.head: Any = None
        self.body: Any = None
        self.body_done = True
        self.upstream: UpstreamConnection | None = None
        self.backend: Backend | None = None
        self.pool: Pool | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.up_head = b""
        self.retried = False
        self.resp_started = False
        self.keep_alive = True
        self.closing = False
        self.draining = False
        self.write_paused = False
        self.response_extra = b""
        self.client_ip = ""
        self.client_ip_b = b""
        self.trusted = False
        self.port_b = b""
        self.connect_task: asyncio.Task[None] | None = None
        self._paused = 0
        self._tkind = _T_NONE
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.entry: EntrypointRuntime = server.entry
        # the exchange in progress, for metrics / access log / tracing (``stats`` is None between exchanges)
        self.stats: RouteStats | None = None
        self.status = 0
        self.t0 = 0.0
        self.wall0 = 0.0
        self.ttfb = -1.0
        self.bytes_out = 0
        self.backend_url: str | None = None
        self.rid = b""
        self.trace: TraceContext | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        server.connections.add(self)
        limit = self.entry.limits.max_connections
        if limit and len(server.connections) > limit:
            transport.abort()
            return
        transport.set_write_buffer_limits(high=HIGH_WATER)
        peer = transport.get_extra_info("peername")
        ip = normalize_ip(peer[0]) if peer else ""
        self.client_ip = ip
        self.client_ip_b = ip.encode()
        trusted = self.entry.trusted
        self.trusted = trusted is not None and trusted.contains(ip)
        self.port_b = server.port_b
        self._set_timer(_T_HEAD, self.entry.limits.header_read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        stats = self.stats
        if stats is not None:  # the client left during an exchange
            up = self.upstream
            if up is not None and up.reader is not None:
                self.bytes_out = up.reader.received
            if self.resp_started:
                stats.gone_streaming += 1
                self._record(True)
            else:
                stats.gone_waiting_head += 1
                self.status = 0
                self._record(False)
        self.state = _CLOSED
        self._tkind = _T_NONE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.connections.discard(self)
        self._cancel_upstream()  # the client is gone: cancel the upstream request at once

    def data_received(self, data: bytes) -> None:
        state = self.state
        self.buf = self.buf + data if self.buf else data
        if state == _IDLE:
            self._next_request()
        elif state == _BODY:
            self._read_body()
        elif state == _WAIT and len(self.buf) > _DRAIN_LIMIT:
            self.pause_reading_for(_P_PIPELINE)

    def eof_received(self) -> bool | None:
        # A FIN from the client ends the connection, whatever the phase: an HTTP/1.1 client that shuts down its
        # side during an exchange has gone away (SPEC §5.4: the upstream request is cancelled at once, as nginx's
        # 499), and a partial head or body will never complete. connection_lost accounts the exchange.
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.upstream
        if up is not None:
            up.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.upstream
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
            self._reject(e)
            return
        if head is None:
            if self._tkind != _T_HEAD:
                self._set_timer(_T_HEAD, limits.header_read_timeout)
            return
        buf = self.buf
        self.buf = buf[head.head_len :] if head.head_len < len(buf) else b""
        self._start(head)

    def _start(self, head: Any) -> None:
        self.head = head
        self.resp_started = False
        self.retried = False
        self.response_extra = b""
        entry = self.server.entry
        self.entry = entry
        self.t0 = self.loop.time()
        if entry.need_wall:
            self.wall0 = time.time()
        self.status = 0
        self.ttfb = -1.0
        self.bytes_out = 0
        self.backend_url = None
        self.rid = b""
        tracer = entry.tracer
        trace = tracer.begin(head.headers, head.header_ids) if tracer is not None else None
        self.trace = trace
        if head.chunked:
            self.body = BodyReader(CHUNKED, 0, ChunkedDecoder())
            framing = _TE_CHUNKED
            self.body_done = False
        elif head.content_length > 0:
            self.body = BodyReader(LENGTH, head.content_length, None)
            framing = b"Content-Length: %d\r\n" % head.content_length
            self.body_done = False
        else:
            self.body = None
            framing = _CONTENT_LENGTH_ZERO if head.content_length == 0 else b""
            self.body_done = True
        self.state = _WAIT if self.body_done else _BODY
        self._tkind = _T_NONE

        client_ip = self.client_ip if not self.trusted else self._forwarded_client(head)
        route = entry.router.match(head.method, head.host, head.path, head.query, head.headers, client_ip)
        if route is None:
            self.stats = entry.unmatched
            self._local(404, "No route matched")
            return
        target = cast("RouteTarget", route.target)
        self.stats = target.stats
        svc = target.service
        backend = svc.balancer.pick()
        if backend is None:
            self._local(503, "No healthy backends", b"Retry-After: 1\r\n")
            return
        pool = svc.pools[backend.url]
        if pool.base_path or head.authority:
            path = pool.base_path + head.path
            upath = path if head.query is None else path + b"?" + head.query
        else:
            upath = head.target
        if trace is not None:
            framing += trace.inject
            drop = cast("Any", tracer).mask
        else:
            drop = 0
        self.up_head, self.rid = request_head(
            head.method,
            upath,
            head.headers,
            head.header_ids,
            head.connection_tokens,
            None if svc.pass_host_header else pool.host_header,
            self.client_ip_b,
            self.client_ip_b if not self.trusted else client_ip.encode(),
            entry.proto,
            self.port_b,
            self.trusted,
            framing,
            drop,
        )
        self.backend = backend
        self.backend_url = backend.url
        self.pool = pool
        backend.in_flight += 1
        self.pending = []
        self.pending_bytes = 0
        if self.body is not None and self.buf and not head.expect_continue:
            self._read_body()
            if self.state == _CLOSED:
                return
        conn = pool.take()
        if conn is not None:
            self._attach(conn)
        else:
            self.connect_task = self.loop.create_task(self._connect(pool))

    def _forwarded_client(self, head: Any) -> str:
        """Client IP behind a trusted peer: the rightmost X-Forwarded-For entry not in ``trusted_ips`` (SPEC §5.2)."""
        entries: list[str] = []
        ids = head.header_ids
        for i, (_name, value) in enumerate(head.headers):
            if ids[i] == hdrs.X_FORWARDED_FOR:
                entries.extend(e.strip() for e in value.decode("latin-1").split(","))
        trusted = self.entry.trusted
        if not entries or trusted is None:
            return self.client_ip
        for entry in reversed(entries):
            if parse_ip(entry)[0] == 0:
                return self.client_ip  # unparsable header: the peer
            if not trusted.contains(entry):
                return normalize_ip(entry)
        return normalize_ip(entries[0])

    async def _connect(self, pool: Pool) -> None:
        try:
            conn = await pool.connect()
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as e:
            self.connect_task = None
            log.warning("upstream connect to %s failed: %s", pool.backend.url, e)
            self.upstream_failed(502, "Upstream connection failed")
            return
        self.connect_task = None
        if self.transport is None or self.state == _CLOSED:
            pool.release(conn, True)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        data = [self.up_head]
        if self.pending:
            data.extend(self.pending)
            self.pending = []
            self.pending_bytes = 0
        conn.begin(self, data)
        if self.write_paused:
            conn.pause_reading()
        if self.head.expect_continue and not self.body_done:
            self.transport.write(responses.CONTINUE)
        if self._paused & _P_PENDING:
            self.resume_reading_for(_P_PENDING)
        if self.state == _BODY and self.buf:
            self._read_body()

    def _read_body(self) -> None:
        body = self.body
        buf = self.buf
        try:
            pieces, consumed = body.feed(buf)
        except ProtocolError as e:
            self._body_error(e)
            return
        if self.draining:
            pieces = []
        elif body.mode == CHUNKED:
            # forwarded verbatim: the decoder validated the framing
            pieces = [buf[:consumed]] if consumed else []
        self.buf = buf[consumed:] if consumed < len(buf) else b""
        if pieces:
            up = self.upstream
            if up is not None:
                if len(pieces) == 1:
                    up.transport.write(pieces[0])
                else:
                    up.transport.writelines(pieces)
            else:
                self.pending.extend(pieces)
                for p in pieces:
                    self.pending_bytes += len(p)
                if self.pending_bytes > HIGH_WATER:
                    self.pause_reading_for(_P_PENDING)
        if body.done:
            self.body_done = True
            if self.draining:
                self.draining = False
                self.response_done(True)
                return
            if self.state == _BODY:
                self.state = _WAIT
                self._tkind = _T_NONE
        else:
            self._set_timer(_T_BODY, self.entry.limits.idle_timeout)

    # -- called by the upstream connection ------------------------------------------------------------------
    def start_response(self, status: int, keep_alive: bool) -> None:
        self.resp_started = True
        self.keep_alive = keep_alive
        self.status = status
        b = self.backend
        if b is not None:
            b.codes.add(status)

    def response_done(self, reusable: bool) -> None:
        """The response ended (completely when ``reusable``; otherwise the connection must close)."""
        self.upstream = None
        self._release_backend()
        if self.stats is not None:
            self._record(True)
        if self.transport is None:
            return
        if not reusable or not self.keep_alive or not self.body_done or self.closing:
            self._close()
            return
        self.state = _IDLE
        self.head = None
        self.body = None
        if self._paused & (_P_PIPELINE | _P_UPSTREAM | _P_PENDING):
            self.resume_reading_for(_P_PIPELINE | _P_UPSTREAM | _P_PENDING)
        if self.buf:
            self._next_request()
        else:
            self._set_timer(_T_IDLE, self.entry.limits.idle_timeout)

    def upstream_failed(self, status: int, message: str) -> None:
        """The exchange failed before a response head reached the client (or after: truncate)."""
        self.upstream = None
        if self.transport is None:
            self._release_backend()
            return
        if self.resp_started:
            self.stream_failed(False)
            self.response_done(False)
            return
        b = self.backend
        if b is not None:
            b.codes.add(status)
        self._release_backend()
        self._local(status, message)

    def stream_failed(self, sse: bool) -> None:
        """The backend failed after the response head went out: the stream is cut (or ends with an SSE error)."""
        stats = self.stats
        if stats is not None:
            if sse:
                stats.sse_errors += 1
            else:
                stats.truncated += 1
        log.warning("upstream stream failed (backend %s)", self.backend_url or "-")

    def retry_on_fresh_connection(self) -> bool:
        """A reused keep-alive connection died before answering: retry once on a new one (SPEC §7.8)."""
        if self.retried or self.transport is None or self.head is None or self.head.chunked:
            return False
        if self.head.content_length > 0 or self.pool is None:
            return False
        self.retried = True
        self.upstream = None
        self.connect_task = self.loop.create_task(self._connect(self.pool))
        return True

    def pause_reading_for(self, reason: int) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
        self._paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if self._paused & reason:
            self._paused &= ~reason
            if not self._paused and self.transport is not None:
                self.transport.resume_reading()

    # -- local answers ------------------------------------------------------------------------------------------
    def _local(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer a gateway error response for the current request, then continue or close."""
        head = self.head
        reusable = self.body_done or (
            self.body is not None and self.body.mode == LENGTH and self.body.remaining <= _DRAIN_LIMIT
        )
        close = self.closing or not head.keep_alive or not reusable
        self.resp_started = True
        self.status = status
        head_only = head.method == b"HEAD"
        self.transport.write(responses.error_response(status, message, extra=extra, close=close, head_only=head_only))
        if not head_only:
            self.bytes_out = responses.error_body_length(message)
        self._record(True)
        if close:
            self._close()
            return
        if not self.body_done:
            # drain the unread (small) body before the next request
            self.state = _BODY
            self.upstream = None
            self.keep_alive = True
            self.draining = True
            if self.buf:
                self._read_body()
            return
        self.keep_alive = True
        self.response_done(True)

    def _reject(self, e: ProtocolError) -> None:
        """A protocol violation: answer its status with ``Connection: close`` and close (SPEC §5.5)."""
        extra = _ALLOW_405 if e.status == 405 else b""
        if self.transport is not None:
            self.transport.write(responses.error_response(e.status, e.message, extra=extra, close=True))
        line, sep, _ = self.buf.partition(b"\r\n")
        parts = line.split(b" ")
        if sep and len(parts) == 3 and 0 < len(parts[0]) <= 32:
            # the request line was read: the rejection is counted and logged like any other response (SPEC §11.3)
            entry = self.server.entry
            self.entry = entry
            self.head = None
            self.body = None
            self.stats = entry.unmatched
            self.status = e.status
            self.t0 = self.loop.time()
            self.wall0 = time.time()
            self.ttfb = -1.0
            self.bytes_out = responses.error_body_length(e.message)
            self.backend_url = None
            self.rid = b""
            self.trace = None
            self._record(True, parts[0])
        self._close()

    def _body_error(self, e: ProtocolError) -> None:
        self._cancel_upstream()
        if not self.resp_started and self.transport is not None:
            self.status = e.status
            self.transport.write(responses.error_response(e.status, e.message, close=True))
        self._record(self.status != 0)
        self._close()

    # -- end of an exchange: counters, access log, span ---------------------------------------------------------
    def _record(self, count: bool, method: bytes = b"") -> None:
        """Account the exchange once (``count``: it got a response and counts in gateway_requests_total)."""
        stats = self.stats
        if stats is None:
            return
        self.stats = None
        duration = self.loop.time() - self.t0
        head = self.head
        if head is not None:
            method = head.method
        if count:
            stats.record(method, self.status, duration)
        if self.ttfb >= 0.0:
            stats.ttfb.observe(self.ttfb)
        if self.entry.need_wall:
            self._log_exchange(stats, method, duration)

    def _log_exchange(self, stats: RouteStats, method: bytes, duration: float) -> None:
        """The access-log entry and the exported span of the exchange (only when either is configured)."""
        entry = self.entry
        head = self.head
        trace = self.trace
        router = stats.router or None
        service = stats.service or None
        status = self.status
        access_log = entry.access_log
        if access_log is not None:
            path: bytes | None = None
            query: bytes | None = None
            host: bytes | None = None
            agent: bytes | None = None
            rid = self.rid
            if head is not None:
                path = head.path
                query = head.query
                host = head.host or None
                ids = head.header_ids
                for i in range(len(ids)):
                    hid = ids[i]
                    if hid == hdrs.USER_AGENT and agent is None:
                        agent = head.headers[i][1]
                    elif hid == hdrs.X_REQUEST_ID and not rid:
                        rid = head.headers[i][1]
            access_log.record((
                self.wall0, self.client_ip, method, path, query, host, status if status else None,
                self.body.received if self.body is not None else 0, self.bytes_out, duration,
                self.ttfb if self.ttfb >= 0.0 else None, router, service, self.backend_url, entry.name, agent,
                rid or os.urandom(16).hex(), trace.trace_id if trace is not None else None, 0, False, None,
            ))
        tracer = entry.tracer
        if trace is not None and trace.sampled and tracer is not None and tracer.exporting:
            tracer.finish(
                trace, start_wall=self.wall0, end_wall=self.wall0 + duration, method=method,
                path=head.path if head is not None else None, host=head.host if head is not None else None,
                status=status, client_ip=self.client_ip, router=stats.router, service=stats.service,
                backend=self.backend_url, retries=0, cold_start=False,
            )

    def _abort_exchange(self) -> None:
        self._cancel_upstream()
        self._close()

    def _cancel_upstream(self) -> None:
        """Abort the upstream side of the exchange: its connection closes (never pooled), a connect in progress
        stops, the backend's in-flight count is released."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.abort()
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        self._release_backend()

    def _release_backend(self) -> None:
        b = self.backend
        if b is not None:
            b.in_flight -= 1
            self.backend = None

    def _close(self) -> None:
        self.state = _CLOSED
        self._tkind = _T_NONE
        tr = self.transport
        if tr is not None:
            tr.close()

    def shutdown(self) -> None:
        """Graceful stop: idle connections close now, busy ones after their response."""
        self.closing = True
        if self.state == _IDLE and not self.buf:
            self._close()

    # -- one lazily re-armed timer -------------------------------------------------------------------------
    def _set_timer(self, kind: int, delay: float) -> None:
        self._tkind = kind
        deadline = self.loop.time() + delay
        self._deadline = deadline
        timer = self._timer
        if timer is not None:
            if self._timer_at <= deadline:
                return
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        kind = self._tkind
        if kind == _T_NONE or self.transport is None:
            return
        if self.loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._on_timer)
            return
        if kind == _T_HEAD:
            if self.buf:
                self.transport.write(responses.error_response(408, "Request timeout", close=True))
            self._close()
        elif kind == _T_IDLE:
            self._close()
        elif kind == _T_BODY:
            if not self.resp_started:
                self.status = 408
                self.transport.write(responses.error_response(408, "Request timeout", close=True))
            self._cancel_upstream()
            self._record(self.status != 0)
            self._close()
