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

import orjson

from .. import _compat
from ..errors import ProtocolError
from ..http import hdrs
from ..middleware.chain import JSON, Chain, Request, Response
from ..netaddr import normalize_ip, parse_ip
from . import responses
from .upstream import CHUNKED, HIGH_WATER, LENGTH, BodyReader, ChunkedDecoder, Pool, UpstreamConnection

if TYPE_CHECKING:
    from ..observability.stats import RouteStats
    from ..observability.tracing import TraceContext
    from ..runtime import EntrypointRuntime, RouteTarget, ServiceRuntime
    from ..service.balancer import Backend
    from ..service.mirror import Mirror
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
_TUNNEL = 4  # after the backend's 101: raw bytes both ways (WebSocket, SPEC §9.3)

# how an attempt failed (middleware/retry.py)
_CONNECT = 0
_STATUS = 2

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
_H2_PREFACE = b"PRI * HTTP/2.0\r\n"
_COLD = b"X-A3S-Cold-Start: 1\r\n"  # on every response to a request that waited in a cold-start queue
_DRAIN_LIMIT = 65536
_HOST_BIT = 1 << hdrs.HOST  # in Request.edited


def upstream_host(head: Any, pass_host_header: bool, backend_host: bytes) -> bytes | None:
    """The Host value sent upstream (SPEC §5.3): the request's host as routing saw it, the backend's when
    ``pass_host_header`` is off or the request has none (HTTP/1.0). None: the client's Host line is that host and
    passes as it is (origin-form); an absolute-form target's authority replaces it."""
    host = head.host
    if not pass_host_header or not host:
        return backend_host
    return host if head.authority else None


def lists_websocket(upgrade: bytes) -> bool:
    """Whether an ``Upgrade`` value lists exactly the token ``websocket`` (any case): ``foo-websocket-bar`` is no
    WebSocket upgrade, the request is then a plain one with ``Upgrade`` removed (SPEC §5.5, §9.3)."""
    for token in upgrade.split(b","):
        if token.strip(b" \t").lower() == b"websocket":
            return True
    return False


class HttpConnection:
    """One client connection on an HTTP entrypoint (an asyncio protocol; compiled to a native class by mypyc)."""

    # slots keep an idle keep-alive connection small (SPEC target: a few KiB per idle connection)
    __slots__ = (
        "_deadline", "_paused", "_timer", "_timer_at", "_tkind", "attempt", "backend", "backend_url", "body",
        "body_done", "body_limit", "buf", "bytes_out", "chain", "client_ip", "client_ip_b", "closing", "cold",
        "connect_task", "deadline_at", "draining", "entry", "expect", "framing", "fresh", "grpc", "head", "held",
        "keep_alive", "loop", "mirror", "mirror_body", "mirror_bytes", "mirror_decided", "mreq", "pending",
        "pending_bytes", "pool", "port_b", "replay", "replay_bytes", "resp_started", "response_extra", "retried",
        "revision", "rid", "server", "skip_queue", "state", "stats", "status", "t0", "target", "trace", "transport",
        "tried", "trusted", "ttfb", "up_head", "upgrade", "upstream", "wall0", "window", "write_paused",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: Any = None
        self.state = _IDLE
        self.buf = b""
        self.fresh = True  # no request started yet: the h2c preface is recognised only as the first bytes (§9.1)
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
        # routes with middlewares (SPEC §6): the chain, the request as middlewares changed it, the matched target
        self.chain: Chain | None = None
        self.mreq: Request | None = None
        self.target: RouteTarget | None = None
        self.framing = b""
        self.body_limit = 0  # body-limit for bodies counted while streaming (0: none)
        self.attempt = 1  # retry: attempt number of the exchange
        self.tried: list[str] = []  # retry: backends already tried
        self.replay: list[bytes] | None = None  # retry: request body kept for another attempt (None: not kept)
        self.replay_bytes = 0
        # mirroring (SPEC §7.7): decided once per client request; the body is kept while it streams
        self.mirror: Mirror | None = None
        self.mirror_body: list[bytes] = []
        self.mirror_bytes = 0
        self.mirror_decided = False
        self.revision = ""  # revision of the backend of the last attempt (§8.6)
        # cold start (SPEC §8.4): the scale target the request waits on, whether it waited, whether the queue is
        # bypassed (full or timed out: the failover service answers)
        self.held: Any = None
        self.cold = False
        self.skip_queue = False
        self.window: Any = None  # the rollout window of the attempt's backend (§8.7), None outside a rollout
        self.upgrade = False  # the request is a WebSocket upgrade (§9.3)
        # the client waits for a 100 Continue before it sends the body (HTTP/1.1 only, RFC 9110 §10.1.1); cleared
        # once the 100 is sent
        self.expect = False
        self.grpc = False  # a gRPC stream of an HTTP/2 connection (§9.2): HTTP/2 upstream, trailers-only errors
        self.deadline_at = 0.0  # its grpc-timeout as a loop time (0: none)

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
                from . import http2

                http2.take_over(self, b"")  # ALPN chose HTTP/2 (SPEC §9.1)
                return
        self._set_timer(_T_HEAD, self.entry.limits.header_read_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        held = self.held
        if held is not None:  # the client left while its request waited for a replica: out of the queue
            self.held = None
            held.unhold(self)
        stats = self.stats
        if stats is not None and self.state == _TUNNEL:  # the client closed its WebSocket: the normal end
            self._record(True)
            stats = None
        if stats is not None:  # the client left during an exchange
            chain = self.chain
            if chain is not None and not self.resp_started and self.mreq is not None:
                now = self.loop.time()
                for mw in chain.middlewares:
                    mw.abandon(self.mreq, now)
            up = self.upstream
            if up is not None and up.reader is not None:
                self.bytes_out = up.reader.received
            if self.resp_started:
                stats.gone_streaming += 1
                self._record(True)
            elif held is not None:
                stats.gone_queued += 1
                self.status = 0
                self._record(False)
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
        if state == _TUNNEL:
            up = self.upstream
            if up is not None:
                up.tunnel_send(data)
            return
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
            error = e
            if self.buf.startswith(_H2_PREFACE):
                if self.fresh and self.entry.limits.http2:
                    from . import http2

                    http2.take_over(self, self.buf)  # h2c with prior knowledge (SPEC §9.1)
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
        self.head = head
        self.fresh = False
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
        self.revision = ""
        self.cold = False
        self.skip_queue = False
        self.window = None
        self.chain = None
        self.mirror = None
        self.mirror_decided = False
        self.pending = []
        self.pending_bytes = 0
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
        self.expect = head.expect_continue and head.version == 1 and not self.body_done
        upgrade = False
        if head.upgrade and head.method == b"GET":
            ids = head.header_ids
            for i in range(len(ids)):
                if ids[i] == hdrs.UPGRADE and lists_websocket(head.headers[i][1]):
                    upgrade = True
        self.upgrade = upgrade
        if upgrade:  # hop-by-hop filtering drops them: restored for the backend (§9.3)
            framing += b"Connection: upgrade\r\nUpgrade: websocket\r\n"

        redirect = entry.redirect
        if redirect is not None:
            self._redirect(head, redirect)
            return
        client_ip = self.client_ip if not self.trusted else self._forwarded_client(head)
        route = entry.router.match(head.method, head.host, head.path, head.query, head.headers, client_ip)
        if route is None:
            self.stats = entry.unmatched
            self._local(404, "No route matched")
            return
        target = cast("RouteTarget", route.target)
        self.stats = target.stats
        if trace is not None:
            framing += trace.inject
        chain = target.chain
        if chain is not None:
            self._start_chain(head, target, chain, framing, client_ip)
            return
        self.target = target
        self.framing = framing
        self._fast_forward(client_ip)

    def _fast_forward(self, client_ip: str) -> None:
        """Dispatch a request of a route without middlewares: pick, build the upstream head, forward."""
        head = self.head
        target = cast("RouteTarget", self.target)
        svc = target.service
        if svc.sticky is None and svc.failover is None and not self.cold:
            backend = svc.balancer.pick()
        else:
            svc, backend = self._pick(svc, head.headers, 0)
        if backend is None:
            self._no_backend(target.service)
            return
        entry = self.entry
        tracer = entry.tracer
        framing = self.framing
        pool = svc.pools[backend.url]
        if pool.base_path or head.authority:
            path = pool.base_path + head.path
            upath = path if head.query is None else path + b"?" + head.query
        else:
            upath = head.target
        drop = cast("Any", tracer).mask if self.trace is not None else 0
        self.up_head, self.rid = request_head(
            head.method,
            upath,
            head.headers,
            head.header_ids,
            head.connection_tokens,
            upstream_host(head, svc.pass_host_header, pool.host_header),
            head.host,
            self.client_ip_b,
            self.client_ip_b if not self.trusted else client_ip.encode(),
            entry.proto,
            self.port_b,
            self.trusted,
            framing,
            drop,
        )
        self._forward(backend, pool, svc)

    def _start_mirror(self, mirror: Mirror) -> None:
        """Once per client request: sampled → a copy now (no body) or once the body is complete."""
        self.mirror_decided = True
        if not mirror.sample():
            return
        if self.body is None:
            mirror.send(self.up_head, [])
            return
        self.mirror = mirror
        self.mirror_body = []
        self.mirror_bytes = 0

    def _pick(
        self, svc: ServiceRuntime, headers: list[tuple[bytes, bytes]], depth: int
    ) -> tuple[ServiceRuntime, Backend | None]:
        """Dispatch beyond the plain balancer (SPEC §7.1): a sticky cookie naming an eligible backend, the
        balancer, then the failover service's own dispatch when nothing is eligible (chains; validation rejects
        cycles, ``depth`` bounds them anyway). Returns the service that serves and its backend (None: none)."""
        sticky = svc.sticky
        backend = sticky.pinned(headers) if sticky is not None else None
        if backend is None:
            backend = svc.balancer.pick()
        if backend is not None:
            extra = _COLD if self.cold else b""
            if sticky is not None:
                extra += sticky.lines[backend.url]  # re-issued on every response (ttl = inactivity)
            self.response_extra = extra
            return svc, backend
        failover = svc.failover
        # a service with a cold-start buffer queues first; its failover answers when the queue cannot (§8.4)
        if failover is not None and depth < 8 and (svc.scaling is None or self.skip_queue):
            return self._pick(failover, headers, depth + 1)
        return svc, None

    def _no_backend(self, primary: ServiceRuntime) -> None:
        scaling = primary.scaling
        if scaling is not None and not self.skip_queue:
            target = scaling.hold_target()
            if target is not None:
                # reading goes on while the request waits, so a client that leaves is seen at once; body bytes
                # that arrive are held like those of a connect in progress (paused beyond HIGH_WATER)
                if target.hold(self, self.cold):
                    self.held = target
                    self.cold = True
                    self._tkind = _T_NONE
                    return
                self._queue_failed(primary, 503, "Request buffer full", b"Retry-After: 5\r\n")
                return
        message = "No healthy backends (primary + failover)" if primary.failover is not None else "No healthy backends"
        self._local(503, message, (_COLD if self.cold else b"") + b"Retry-After: 1\r\n")

    def _redirect(self, head: Any, redirect: tuple[int, bytes]) -> None:
        """Entrypoint ``redirect``: 308/307 to https on the target entrypoint, empty body (SPEC §3.1)."""
        host = head.host
        if host.startswith(b"["):
            host = host[: host.find(b"]") + 1]
        elif b":" in host:
            host = host[: host.find(b":")]
        target = head.target
        if head.authority:  # absolute-form: the path and query only
            target = head.path if head.query is None else head.path + b"?" + head.query
        location = b"https://" + host + redirect[1] + target
        self.stats = self.entry.unmatched
        close = self._close_after_local()
        self.resp_started = True
        self.status = redirect[0]
        self.transport.write(responses.redirect_response(redirect[0], location, close=close))
        self._record(True)
        self._after_local(close)

    def _queue_failed(self, primary: ServiceRuntime, status: int, message: str, extra: bytes) -> None:
        """The queue cannot take or keep the request: the failover service if any, else ``status``."""
        if primary.failover is not None:
            self.skip_queue = True
            self._dispatch()
            return
        self._local(status, message, (_COLD if self.cold else b"") + extra)

    def _dispatch(self) -> None:
        if self.chain is not None:
            self._chain_forward()
        else:
            self._fast_forward(self.client_ip if not self.trusted else self._forwarded_client(self.head))

    # -- called by the scale target (control plane) -------------------------------------------------------------
    def resume_held(self) -> None:
        """A replica can take the queued request: dispatch it now."""
        self.held = None
        if self.transport is None or self.state == _CLOSED:
            return
        self._dispatch()

    def held_timeout(self) -> None:
        """Waited ``buffer_timeout_secs``: the failover service, else 504."""
        held = self.held
        self.held = None
        if held is None or self.transport is None or self.state == _CLOSED:
            return
        target = cast("RouteTarget", self.target)
        if target.service.failover is None:
            self._log_failure(504, "Backend scale-up timed out", None, "")
        self._queue_failed(target.service, 504, "Backend scale-up timed out", b"")

    def held_shutdown(self) -> None:
        """The shutdown drain deadline came while the request waited: 503."""
        self.held = None
        if self.transport is None or self.state == _CLOSED:
            return
        self.closing = True
        self._local(503, "Gateway shutting down", _COLD)

    def drain_deadline(self) -> None:
        """Shutdown drain deadline: a queued request is answered 503, anything else is cut."""
        held = self.held
        if held is not None and self.transport is not None:
            held.unhold(self, "shutdown")
            self.held_shutdown()
            return
        if self.transport is not None:
            self.transport.abort()

    def _forward(self, backend: Backend, pool: Pool, svc: ServiceRuntime) -> None:
        """Send the built upstream head (``up_head``) to ``backend``: a pooled connection, or a new one."""
        mirror = svc.mirror
        if mirror is not None and not self.mirror_decided:
            self._start_mirror(mirror)
        self.backend = backend
        self.backend_url = backend.url
        self.revision = backend.revision
        self.window = backend.window
        self.pool = pool
        backend.in_flight += 1
        if self.body is not None and self.buf and not self.expect:
            self._read_body()
            if self.state == _CLOSED:
                return
        conn = pool.take() if not self.grpc else None
        if conn is not None:
            self._attach(conn)
        else:
            self.connect_task = self.loop.create_task(self._connect(pool))

    # -- routes with middlewares (SPEC §6) ------------------------------------------------------------------------
    def _start_chain(self, head: Any, target: RouteTarget, chain: Chain, framing: bytes, client_ip: str) -> None:
        """Run the request phase; the first middleware that awaits continues it in a task."""
        # one call instead of six attribute reads of the (untyped here) parsed head
        fields = cast("tuple[bytes, bytes, bytes | None, bytes, list[tuple[bytes, bytes]], int]",
                      head.request_fields())
        method, path, query, host, headers, body_length = fields
        # the parsed header list is shared with the Request, which copies it before its first change
        req = Request(method, path, query, host, headers, client_ip, target.router, self.entry.proto, body_length,
                      len(chain.middlewares), self.trusted, self.client_ip)
        self.chain = chain
        self.mreq = req
        self.target = target
        self.framing = framing
        self.body_limit = chain.body_limit
        self.attempt = 1
        if self.tried:
            self.tried = []
        self.replay = [] if chain.retry is not None else None
        self.replay_bytes = 0
        self._run_chain(0)

    def _run_chain(self, i: int) -> None:
        """The request phase from middleware ``i`` on, then dispatch."""
        chain = cast("Chain", self.chain)
        req = cast("Request", self.mreq)
        now = self.t0 if i == 0 else self.loop.time()  # the request's arrival: the same loop iteration
        mws = chain.middlewares
        n = len(mws)
        while i < n:
            mw = mws[i]
            if mw.is_async:
                self.connect_task = self.loop.create_task(self._chain_async(i))
                return
            if mw.has_request:
                reply = mw.request(req, now)
                if reply is not None:
                    self._reply(reply.status, reply.headers, reply.body, i)
                    return
            i += 1
        self._chain_forward()

    async def _chain_async(self, i: int) -> None:
        chain = cast("Chain", self.chain)
        req = cast("Request", self.mreq)
        mws = chain.middlewares
        try:
            while i < len(mws):
                mw = mws[i]
                if mw.has_request or mw.is_async:
                    now = self.loop.time()
                    reply = await mw.request_async(req, now) if mw.is_async else mw.request(req, now)
                    if reply is not None:
                        self.connect_task = None
                        if self.transport is not None and self.state != _CLOSED:
                            self._reply(reply.status, reply.headers, reply.body, i)
                        return
                i += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self.connect_task = None
            log.exception("middleware %s of router %s failed", mws[i].name, req.router)
            if self.transport is not None and self.state != _CLOSED:
                self._local(500, "Internal server error")
            return
        self.connect_task = None
        if self.transport is not None and self.state != _CLOSED:
            self._chain_forward()

    def _chain_forward(self) -> None:
        """The request phase passed: build the upstream head from the request as middlewares left it."""
        head = self.head
        req = cast("Request", self.mreq)
        if self.upgrade:
            mws = cast("Chain", self.chain).middlewares
            if mws and mws[-1].kind == "ws-mux":
                self._mux_accept(mws[-1], len(mws) - 1)
                return
        primary = cast("RouteTarget", self.target).service
        if primary.sticky is None and primary.failover is None and not self.cold:
            svc = primary  # the plain balancer, as on the fast path (``_pick`` does the rest)
            backend = svc.balancer.pick()
        else:
            svc, backend = self._pick(primary, req.headers, 0)
        if backend is None:
            self._no_backend(primary)
            return
        tried = self.tried
        if tried:
            # a retry prefers a backend not tried yet, when another eligible one exists (SPEC §6.11)
            for _ in range(len(svc.backends)):
                if backend.url not in tried:
                    break
                other = svc.balancer.pick()
                if other is None:
                    break
                backend = other
        pool = svc.pools[backend.url]
        if req.changed:
            headers = req.headers
            ids = req.header_ids(head.header_ids)
        else:
            headers = head.headers
            ids = head.header_ids
        if pool.base_path or head.authority or req.changed:
            upath = pool.base_path + req.target()
        else:
            upath = head.target
        tracer = self.entry.tracer
        client_ip = req.client_ip
        host_value = upstream_host(head, svc.pass_host_header, pool.host_header)
        edited = req.edited
        if host_value is None and edited & _HOST_BIT:
            host_value = head.host  # a middleware deleted the Host line: the request's host goes instead
        self.up_head, self.rid = request_head(
            head.method,
            upath,
            headers,
            ids,
            head.connection_tokens,
            host_value,
            head.host,
            self.client_ip_b,
            self.client_ip_b if not self.trusted else client_ip.encode(),
            self.entry.proto,
            self.port_b,
            self.trusted,
            self.framing,
            tracer.mask if tracer is not None and self.trace is not None else 0,
            edited,  # forwarding headers a middleware set or deleted are sent as it left them (SPEC §5.2, §6.8)
        )
        self._forward(backend, pool, svc)

    def _reply(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, upto: int) -> None:
        """Answer the request from the gateway (a middleware's reply, or a gateway error on a route with
        middlewares) after the response phase of the middlewares before index ``upto``."""
        head = self.head
        chain = self.chain
        if chain is not None and chain.has_response and self.mreq is not None:
            resp = Response(status, headers, True)
            chain.run_response(self.mreq, resp, upto, self.loop.time())
            headers = resp.headers
        if self.grpc:
            message = responses.error_message(body) if status >= 400 else ""
            if status >= 400:
                extra = b"".join(n + b": " + v + b"\r\n" for n, v in headers
                                 if n.lower() not in (b"content-type", b"content-length", b"connection"))
                self._grpc_error(status, message, extra)
                return
        close = self._close_after_local()
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, responses.reason(status))]
        for name, value in headers:
            low = name.lower()
            if low == b"connection":
                close = close or value.lower() == b"close"
                continue
            if low == b"content-length" or low == b"transfer-encoding":
                continue
            parts.append(name + b": " + value + b"\r\n")
        head_only = head.method == b"HEAD"
        if status == 204 or status == 304:
            body = b""  # no content, and no Content-Length (RFC 9110 §8.6)
        else:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(responses.date_line())
        if close:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(body)
            self.bytes_out = len(body)
        self.resp_started = True
        self.status = status
        self.transport.write(b"".join(parts))
        self._record(True)
        self._after_local(close)

    def _body_too_large(self) -> None:
        """A streamed request body passed the body-limit (SPEC §6.10): 413 and close, the upstream aborted."""
        self._cancel_upstream()
        if not self.resp_started and self.transport is not None:
            limit = self.body_limit
            self.body_done = True  # nothing more is read: the connection closes
            self._reply(413, [(b"Content-Type", JSON), (b"Connection", b"close")],
                        b'{"error":"Request body too large","max_bytes":%d}' % limit,
                        len(cast("Chain", self.chain).middlewares))
        self._close()

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
            conn = await pool.connect(self.grpc, self.retried)  # a retry after a stale connection: a new one
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as e:
            self.connect_task = None
            target = pool.backend.target
            if target is not None and self.transport is not None and not self.resp_started:
                # a replica that refuses is not ready (§8.3); with a buffer the request waits again, first in line
                target.mark_not_ready(pool.backend)
                if target.buffered and self.state != _CLOSED:
                    self._release_backend()
                    self.cold = True
                    if target.hold(self, True):
                        self.held = target
                        return
            self.upstream_failed(502, "Upstream connection failed", _CONNECT, str(e) or "timed out")
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
        if self.expect:
            self.expect = False
            if not self.body_done:
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
        if self.body_limit and body.received > self.body_limit:
            self._body_too_large()
            return
        if self.draining:
            pieces = []
        elif body.mode == CHUNKED:
            # decoded and re-encoded, never relayed byte for byte (SPEC §5.5): no chunk extensions, no size another
            # parser may read differently, no trailer RFC 9110 forbids
            pieces = body.rechunk(pieces)
        self.buf = buf[consumed:] if consumed < len(buf) else b""
        mirror = self.mirror
        if mirror is not None:
            for p in pieces:
                self.mirror_bytes += len(p)
            if self.mirror_bytes > mirror.max_body_bytes:
                mirror.skip()  # too large to copy: this request is not mirrored
                self.mirror = None
            else:
                self.mirror_body.extend(pieces)
                if body.done:
                    mirror.send(self.up_head, self.mirror_body)
                    self.mirror = None
                    self.mirror_body = []
        if pieces and self.replay is not None:
            # kept for a retry while within max_replay_bytes; beyond that the request is no longer replayable
            for p in pieces:
                self.replay_bytes += len(p)
            policy = cast("Chain", self.chain).retry
            if self.replay_bytes > policy.max_replay_bytes:
                self.replay = None
            else:
                self.replay.extend(pieces)
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
            self._account(b, status, False)

    def _account(self, b: Backend, status: int, transport_failure: bool) -> None:
        """One attempt's outcome on ``b``: its status count, and passive health (SPEC §7.4: transport failures
        and 500/502/503/504 are failures)."""
        b.codes.add(status)
        window = b.window
        if window is not None:
            window.attempt(status, transport_failure)
        passive = b.passive
        if passive is not None:
            failed = transport_failure or status == 500 or (502 <= status <= 504)
            passive.record(b, failed, self.loop.time())

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

    def upstream_failed(self, status: int, message: str, failure: int = 1, detail: str = "") -> None:
        """The exchange failed before a response head reached the client (or after: truncate). ``failure``:
        0 the request never reached the backend (connect), 1 the connection failed after it was sent; ``detail``:
        the cause, for the process log."""
        self.upstream = None
        if self.transport is None:
            self._release_backend()
            return
        if self.resp_started:
            self.stream_failed(False)
            self.response_done(False)
            return
        b = self.backend
        self._log_failure(status, message, b.url if b is not None else self.backend_url, detail)
        if b is not None:  # a transport failure (connect, reset, response-head timeout)
            self._account(b, status, True)
        self._release_backend()
        if self.chain is not None and self.chain.retry is not None and self._try_again(failure, status, None):
            return
        self._local(status, message)

    # -- ws-mux (SPEC §9.4) -------------------------------------------------------------------------------------
    def _mux_accept(self, mw: Any, upto: int) -> None:
        """The gateway answers the upgrade itself and hands the connection to the router's hub."""
        from ..wsmux.hub import MuxConnection, handshake_response

        req = cast("Request", self.mreq)
        key = b""
        version = b""
        for name, value in req.headers:
            low = name.lower()
            if low == b"sec-websocket-key":
                key = value.strip()
            elif low == b"sec-websocket-version":
                version = value.strip()
        if len(key) != 24 or version != b"13":
            self._reply(400, [(b"Content-Type", JSON), (b"Sec-WebSocket-Version", b"13")],
                        orjson.dumps({"error": "Invalid WebSocket handshake"}), upto)
            return
        chain = cast("Chain", self.chain)
        extra = b""
        if chain.has_response:
            phase = Response(101, [], True)
            chain.run_response(req, phase, upto, self.loop.time())
            extra = b"".join(n + b": " + v + b"\r\n" for n, v in phase.headers)
        hub = mw.hub_for(self.loop, cast("RouteTarget", self.target).service)
        transport = self.transport
        transport.write(handshake_response(key, extra))
        self.resp_started = True
        self.status = 101
        self._record(True)
        initial = self.buf
        self.buf = b""
        self.state = _CLOSED
        self._tkind = _T_NONE
        self.transport = None
        self.server.connections.discard(self)
        conn = MuxConnection(hub, initial)
        transport.set_protocol(conn)
        conn.connection_made(transport)

    # -- WebSocket tunnel (SPEC §9.3) ---------------------------------------------------------------------------
    def start_tunnel(self) -> None:
        """The backend's 101 went out: from now on bytes pass both ways unchanged (the upstream side times the
        tunnel's idleness)."""
        self.state = _TUNNEL
        self._tkind = _T_NONE
        buf = self.buf
        self.buf = b""
        if self._paused & _P_PIPELINE:
            self.resume_reading_for(_P_PIPELINE)
        up = self.upstream
        if buf and up is not None:
            up.tunnel_send(buf)

    def tunnel_closed(self) -> None:
        """The backend side of the tunnel closed (or went idle): the client side closes too."""
        self.upstream = None
        self._release_backend()
        if self.stats is not None:
            self._record(True)
        self._close()

    # -- retry (SPEC §6.11) -----------------------------------------------------------------------------------
    def retry_status(self, status: int, retry_after: float | None) -> bool:
        """The backend answered a status in ``retry_on_status``: True when the request is tried again (the
        caller drops that response and its connection)."""
        return self._try_again(_STATUS, status, retry_after)

    def _try_again(self, failure: int, status: int, retry_after: float | None) -> bool:
        chain = cast("Chain", self.chain)
        policy = chain.retry
        req = self.mreq
        if policy is None or req is None or self.resp_started or self.transport is None or self.draining:
            return False
        replayable = self.body_done and self.replay is not None
        delay = policy.decide(self.attempt, self.head.method, failure, status, replayable, retry_after)
        if delay is None:
            return False
        now = self.loop.time()
        if failure != _CONNECT:
            # the middlewares after retry saw this attempt fail (a circuit breaker counts it)
            chain.run_response(req, Response(status, [], True), len(chain.middlewares), now, policy.slot + 1)
        policy.retries += 1
        stats = self.stats
        if stats is not None:
            stats.retries += 1
        self.attempt += 1
        if self.backend_url is not None:
            self.tried.append(self.backend_url)
        b = self.backend
        if b is not None and failure == _STATUS:
            self._account(b, status, False)
        self._release_backend()
        self.upstream = None
        self.connect_task = self.loop.create_task(self._retry_after(delay, policy.slot + 1))
        return True

    async def _retry_after(self, delay: float, start: int) -> None:
        await asyncio.sleep(delay)
        self.connect_task = None
        if self.transport is None or self.state == _CLOSED:
            return
        self.pending = list(self.replay) if self.replay is not None else []
        self.pending_bytes = 0
        self._run_chain(start)

    def stream_failed(self, sse: bool) -> None:
        """The backend failed after the response head went out: the stream is cut (or ends with an SSE error)."""
        stats = self.stats
        if stats is not None:
            if sse:
                stats.sse_errors += 1
            else:
                stats.truncated += 1
        window = self.window
        if window is not None:
            window.stream_failure()
        self._log_failure(self.status, "Upstream stream failed", self.backend_url, "sse error" if sse else "truncated")

    def _log_failure(self, status: int, message: str, backend: str | None, detail: str) -> None:
        """An upstream failure of the current request in the process log (SPEC §5.7, §11.5): what the client's
        answer leaves out (backend address, cause) with the request id, one line per service and kind every 10 s."""
        stats = self.stats
        router = stats.router if stats is not None else ""
        service = stats.service if stats is not None else ""
        self.entry.errors.warning((service, message), message, fields={
            "request_id": self._request_id().decode("latin-1"), "status": status,
            "router": router, "service": service, "backend": backend, "error": detail or None,
        })

    def _request_id(self) -> bytes:
        """The request's id (SPEC §5.2): the one sent upstream; before that, the client's or a new one, kept so
        that the access log shows the same."""
        rid = self.rid
        if not rid:
            head = self.head
            if head is not None:
                ids = head.header_ids
                for i in range(len(ids)):
                    if ids[i] == hdrs.X_REQUEST_ID:
                        value: bytes = head.headers[i][1]
                        if 0 < len(value) <= 200:
                            rid = value
                        break
            if not rid:
                rid = os.urandom(16).hex().encode()
            self.rid = rid
        return rid

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
        if self.grpc and self.chain is None:
            self._grpc_error(status, message, extra)
            return
        if self.chain is not None:
            headers = [(b"Content-Type", JSON)]
            for line in extra.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b": ")
                    headers.append((name, value))
            self._reply(status, headers, orjson.dumps({"error": message}), len(self.chain.middlewares))
            return
        head = self.head
        close = self._close_after_local()
        self.resp_started = True
        self.status = status
        head_only = head.method == b"HEAD"
        self.transport.write(responses.error_response(status, message, extra=extra, close=close, head_only=head_only))
        if not head_only:
            self.bytes_out = responses.error_body_length(message)
        self._record(True)
        self._after_local(close)

    def _close_after_local(self) -> bool:
        """Whether a gateway-generated response closes the connection: shutdown, the client's choice, a request body
        too large to drain, or a client still waiting for a 100 Continue — it may never send the announced body, so
        draining it would eat the next request (SPEC §5.3: such a response carries ``Connection: close``)."""
        if self.closing or not self.head.keep_alive or self.expect:
            return True
        body = self.body
        return not (self.body_done or (body is not None and body.mode == LENGTH and body.remaining <= _DRAIN_LIMIT))

    def _grpc_error(self, status: int, message: str, extra: bytes) -> None:
        """A gateway error for a gRPC request: trailers-only, HTTP 200 with grpc-status (SPEC §9.2)."""
        self.resp_started = True
        self.status = status
        self.transport.write(responses.grpc_error_response(status, message, extra))
        self._record(True)
        self._after_local(True)

    def _after_local(self, close: bool) -> None:
        """After a gateway-generated response: close, drain the unread (small) body, or serve the next request."""
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
            if self.revision:
                stats.observe_revision_ttfb(self.revision, self.ttfb)
            window = self.window
            if window is not None:
                window.ttfb(self.ttfb)
        if self.entry.need_wall:
            self._log_exchange(stats, method, duration)

    def _log_exchange(self, stats: RouteStats, method: bytes, duration: float) -> None:
        """The access-log entry and the exported span of the exchange (only when either is configured)."""
        entry = self.entry
        head = self.head
        trace = self.trace
        router = stats.router or None
        service = stats.service or None
        retries = self.attempt - 1 if self.chain is not None else 0
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
                rid or os.urandom(16).hex(), trace.trace_id if trace is not None else None, retries, self.cold, None,
            ))
        tracer = entry.tracer
        if trace is not None and trace.sampled and tracer is not None and tracer.exporting:
            tracer.finish(
                trace, start_wall=self.wall0, end_wall=self.wall0 + duration, method=method,
                path=head.path if head is not None else None, host=head.host if head is not None else None,
                status=status, client_ip=self.client_ip, router=stats.router, service=stats.service,
                backend=self.backend_url, retries=retries, cold_start=self.cold,
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
            target = b.target
            if target is not None:
                target.released()  # a queued request may take the freed slot (§8.4)

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
