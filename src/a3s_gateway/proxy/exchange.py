"""One request's life on a client connection (SPEC §5–§8): route, middleware chain, dispatch, attempts, relay
bookkeeping, accounting and the gateway's own answers.

An :class:`Exchange` is created once per client connection and reset for each request (keep-alive requests reuse
it: no allocation per request). The connection (proxy/http1.py) parses, reads the body, keeps the connection alive
and times it; it hands each parsed head to :meth:`Exchange.start` and sees the exchange only through the
:class:`Downstream` methods it overrides. The upstream connection serving an attempt reports its events (head,
body, end, failure, tunnel) through the :class:`~a3s_gateway.proxy.upstream.Client` methods this class overrides.
A request that finds no replica waits in its scale target's cold-start queue as a
:class:`~a3s_gateway.scaling.buffer.Waiter`.

Compiled to native classes by mypyc (the same file runs interpreted in a pure build). Over 800 lines on purpose:
the request's state is one native object whose ~40 fields and calls mypyc makes direct; split across classes or
modules, that state would have to be declared twice or reached through generic attribute lookups on the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from ..http import hdrs
from ..http.framing import CHUNKED, LENGTH
from ..http.headers import request_head
from ..http.inspect import RequestInfo, is_json, prompt_key, read_request, with_include_usage
from ..http.usage import UsageMeter
from ..middleware.chain import JSON, Chain, Request, Response
from ..middleware.retry import parse_retry_after
from ..netaddr import normalize_ip, parse_ip
from ..routing.router import NEEDS_MODEL
from . import responses
from .upstream import HIGH_WATER, Client, FieldSink, Pool, UpstreamConnection

if TYPE_CHECKING:
    from ..observability.stats import RouteStats
    from ..observability.tracing import TraceContext
    from ..routing.router import Route
    from ..runtime import EntrypointRuntime, RouteTarget, ServiceRuntime
    from ..scaling.buffer import HoldQueue
    from ..service.balancer import Backend
    from ..service.mirror import Mirror

log: Final = logging.getLogger("a3s_gateway.proxy")


# how an attempt failed (middleware/retry.py)
_CONNECT: Final = 0
_STATUS: Final = 2

# reasons the connection pauses reading (bit mask, see Downstream.pause_reading_for)
P_PIPELINE: Final = 1  # pipelined bytes waiting while a response is in progress
P_UPSTREAM: Final = 2  # upstream write buffer full (request body)
P_PENDING: Final = 4  # body bytes held while the upstream connection is being opened

DRAIN_LIMIT: Final = 65536  # a request body this small is read and dropped after a local answer
_COLD: Final = b"X-A3S-Cold-Start: 1\r\n"  # on every response to a request that waited in a cold-start queue
_HOST_BIT: Final = 1 << hdrs.HOST  # in Request.edited
_CONTENT_LENGTH_ZERO: Final = b"Content-Length: 0\r\n"
_TE_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
# empty lists shared until a request needs one of its own (never mutated: every append first replaces them), so
# an idle connection's exchange holds no list (issue 20)
_NO_PIECES: Final[list[bytes]] = []
_NO_URLS: Final[list[str]] = []
_ACME_PREFIX: Final = b"/.well-known/acme-challenge/"  # HTTP-01 answers (SPEC §10.4)


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


class Downstream:
    """The client connection as its exchange sees it: what it knows of the connection, what it may ask of it.

    proxy/http1.py's ``HttpConnection`` extends this and overrides the methods (a base class rather than a Protocol:
    mypyc calls it natively, and this module needs no import of the connection)."""

    __slots__ = (
        "body", "body_done", "client_ip", "client_ip_b", "closing", "draining", "entry", "expect", "grpc",
        "keep_alive", "loop", "port_b", "transport", "trusted", "write_paused",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, entry: EntrypointRuntime) -> None:
        self.loop = loop
        self.entry = entry  # the entrypoint's runtime as of the current request (reloads swap it between requests)
        self.transport: Any = None  # None once the client is gone
        self.body: Any = None  # the request body reader (None: no body)
        self.body_done = True  # the whole request body was read
        self.draining = False  # reading (and dropping) the body of a request already answered
        self.keep_alive = True
        self.closing = False  # graceful stop: close after the response
        self.write_paused = False  # the client transport's buffer is above the high-water mark
        # the client waits for a 100 Continue before it sends the body (HTTP/1.1 only, RFC 9110 §10.1.1); cleared
        # once the 100 is sent
        self.expect = False
        self.grpc = False  # a gRPC stream of an HTTP/2 connection (§9.2): HTTP/2 upstream, trailers-only errors
        self.client_ip = ""
        self.client_ip_b = b""
        self.trusted = False  # the peer is in the entrypoint's trusted_ips (X-Forwarded-For is read)
        self.port_b = b""

    def gone(self) -> bool:
        """Whether the client connection is closed (or handed over): nothing more is written to it."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def read_body(self) -> None:
        """Read the body bytes already received (the exchange has somewhere to put them now)."""
        raise NotImplementedError

    def has_buffered(self) -> bool:
        """Whether bytes after the head wait in the connection's buffer."""
        raise NotImplementedError

    def finished(self, reusable: bool) -> None:
        """The exchange is over: serve the next request (``reusable``) or close."""
        raise NotImplementedError

    def drain(self) -> None:
        """A local answer went out before the (small) body was read: read and drop it, then go on."""
        raise NotImplementedError

    def pause_reading_for(self, reason: int) -> None:
        raise NotImplementedError

    def resume_reading_for(self, reason: int) -> None:
        raise NotImplementedError

    def is_paused_for(self, reason: int) -> bool:
        raise NotImplementedError

    def stop_timer(self) -> None:
        """No connection timer while the request waits (the exchange times itself)."""
        raise NotImplementedError

    def start_tunnel(self) -> None:
        """Raw bytes both ways from now on (§9.3)."""
        raise NotImplementedError

    def detach(self) -> bytes:
        """Give the transport away (ws-mux): the connection forgets it; returns the bytes read past the head."""
        raise NotImplementedError


class Exchange(Client):
    """One request on a client connection, from its parsed head to its accounting (a native class under mypyc)."""

    __slots__ = (
        "affinity", "attempt", "backend", "backend_url", "bytes_out", "chain", "cold", "conn", "connect_task",
        "framing", "held", "info", "ka_interval", "ka_timer", "mirror", "mirror_body", "mirror_bytes",
        "mirror_decided", "model", "mreq", "peek", "peek_bytes", "peek_route", "pending", "pending_bytes", "pool",
        "replay", "replay_bytes", "resp_started", "retried", "revision", "rid", "skip_queue", "stats", "status",
        "streaming", "t0", "target", "trace", "tried", "ttfb", "up_head", "upstream", "wall0", "window",
    )

    def __init__(self, conn: Downstream) -> None:
        super().__init__()
        self.conn = conn
        self.upstream: UpstreamConnection | None = None
        self.backend: Backend | None = None
        self.pool: Pool | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.pending: list[bytes] = _NO_PIECES  # body bytes read while the upstream connection is being opened
        self.pending_bytes = 0
        self.up_head = b""
        self.retried = False  # retried once on a fresh connection after a stale keep-alive one (§7.8)
        self.resp_started = False
        # for metrics / access log / tracing (``stats`` is None between exchanges)
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
        self.attempt = 1  # retry: attempt number of the exchange
        self.tried: list[str] = _NO_URLS  # retry: backends already tried
        self.replay: list[bytes] | None = None  # retry: request body kept for another attempt (None: not kept)
        self.replay_bytes = 0
        # mirroring (SPEC §7.7): decided once per client request; the body is kept while it streams
        self.mirror: Mirror | None = None
        self.mirror_body: list[bytes] = _NO_PIECES
        self.mirror_bytes = 0
        self.mirror_decided = False
        self.revision = ""  # revision of the backend of the last attempt (§8.6)
        # cold start (SPEC §8.4): the queue the request waits in, whether it waited, whether the queue is bypassed
        # (full or timed out: the failover service answers)
        self.held: HoldQueue | None = None
        self.cold = False
        self.skip_queue = False
        self.window: Any = None  # the rollout window of the attempt's backend (§8.7), None outside a rollout
        # request inspection (SPEC §16.1): the body pieces held to read the model (None: not holding), the model
        self.peek: list[bytes] | None = None
        self.peek_bytes = 0
        self.model: str | None = None
        self.info: RequestInfo | None = None  # what the inspected body says (None: not inspected)
        self.peek_route: Route | None = None  # the route already matched when a body is inspected for it
        self.affinity = -1  # the prompt-prefix hash for an inference service (§16.5), -1: none
        self.streaming = False  # the inspected body asks for a stream (``"stream": true``)
        # queued_keepalive (§16.3): the interval of ``: queued`` comments while the request waits (0: none), its timer
        self.ka_interval = 0.0
        self.ka_timer: asyncio.TimerHandle | None = None

    # -- start ------------------------------------------------------------------------------------------------
    def start(self, head: Any, entry: EntrypointRuntime) -> None:
        """A parsed request head (its body, if any, is being read by the connection): route and dispatch it."""
        conn = self.conn
        self.head = head
        self.resp_started = False
        self.retried = False
        self.response_extra = b""
        self.t0 = conn.loop.time()
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
        self.pending = _NO_PIECES
        self.pending_bytes = 0
        self.affinity = -1
        self.streaming = False
        self.head_sent = False
        self.info = None
        self.peek_route = None
        tracer = entry.tracer
        trace = tracer.begin(head.headers, head.header_ids) if tracer is not None else None
        self.trace = trace
        if head.chunked:
            framing = _TE_CHUNKED
        elif head.content_length > 0:
            framing = b"Content-Length: %d\r\n" % head.content_length
        else:
            framing = _CONTENT_LENGTH_ZERO if head.content_length == 0 else b""
        upgrade = False
        if head.upgrade and head.method == b"GET":
            ids = head.header_ids
            for i in range(len(ids)):
                if ids[i] == hdrs.UPGRADE and lists_websocket(head.headers[i][1]):
                    upgrade = True
        self.upgrade = upgrade
        if upgrade:  # hop-by-hop filtering drops them: restored for the backend (§9.3)
            framing += b"Connection: upgrade\r\nUpgrade: websocket\r\n"

        challenges = entry.challenges
        if challenges is not None and head.path.startswith(_ACME_PREFIX):
            self._acme_challenge(head, challenges)
            return
        redirect = entry.redirect
        if redirect is not None:
            self._redirect(head, redirect)
            return
        client_ip = conn.client_ip if not conn.trusted else self._forwarded_client(head)
        router = entry.router
        # a router with Model rules first matches with the model pending: only a request whose answer depends on
        # it is inspected (SPEC §16.1)
        route = router.match(head.method, head.host, head.path, head.query, head.headers, client_ip, None,
                             router.uses_model)
        if route is NEEDS_MODEL:
            if self._inspectable(head):
                self._begin_peek(entry, framing)
                return
            route = router.match(head.method, head.host, head.path, head.query, head.headers, client_ip)
        self._routed(route, entry, framing, client_ip)

    def _routed(self, route: Route | None, entry: EntrypointRuntime, framing: bytes, client_ip: str) -> None:
        """The matched route (None: no route): the middlewares, or straight to dispatch."""
        trace = self.trace
        if route is None:
            self.stats = entry.unmatched
            self.local(404, "No route matched")
            return
        target = cast("RouteTarget", route.target)
        if route.inspect and self.info is None and self._inspectable(self.head):
            # a token-limit, stream_usage or inference route: its body is read first (SPEC §16.1, §16.5), then it
            # goes on from here
            self.peek_route = route
            self._begin_peek(entry, framing)
            return
        self.stats = target.stats
        if trace is not None:
            framing += trace.inject
        chain = target.chain
        if chain is not None:
            self._start_chain(self.head, target, chain, framing, client_ip)
            return
        self.target = target
        self.framing = framing
        self._fast_forward(client_ip)

    # -- request inspection (SPEC §16.1) ------------------------------------------------------------------------
    def _inspectable(self, head: Any) -> bool:
        """A request whose model is read: a ``POST`` of an ``application/json`` body."""
        if head.method != b"POST" or self.conn.body is None:
            return False
        ids = head.header_ids
        for i in range(len(ids)):
            if ids[i] == hdrs.CONTENT_TYPE:
                return is_json(head.headers[i][1])
        return False

    def _begin_peek(self, entry: EntrypointRuntime, framing: bytes) -> None:
        """Hold the body's first ``ai_inspect_limit`` bytes (the connection hands them to :meth:`peek_body`), then
        route with the model they name."""
        conn = self.conn
        self.peek = []
        self.peek_bytes = 0
        # counted as unrouted if the body never comes (408, client gone); under its route when it is known (set
        # before reading: the whole exchange may end within read_body)
        route = self.peek_route
        self.stats = entry.unmatched if route is None else cast("RouteTarget", route.target).stats
        self.framing = framing
        if conn.expect:  # the client waits for a 100 Continue before it sends the body the route depends on
            conn.expect = False
            conn.transport.write(responses.CONTINUE)
        conn.read_body()  # what came with the head, and the body-gap timer (idle_timeout → 408)

    def peek_body(self, pieces: list[bytes], done: bool) -> None:
        """Body bytes (decoded, without chunk framing) while the model is read: held until the limit or the end,
        then routed; the held bytes go upstream first, unchanged (re-chunked as any chunked body)."""
        peek = self.peek
        if peek is None:
            return
        for p in pieces:
            peek.append(p)
            self.peek_bytes += len(p)
        conn = self.conn
        entry = conn.entry
        limit = entry.limits.ai_inspect_limit
        if not done and self.peek_bytes < limit:
            return
        self.peek = None
        data = b"".join(peek)
        complete = done and len(data) <= limit
        info = read_request(data[:limit], complete)
        self.model = info.model
        self.streaming = info.stream
        self.info = info
        body = conn.body
        head = self.head
        info.body_bytes = self.peek_bytes if done or head.content_length < 0 else int(head.content_length)
        route = self.peek_route
        self.peek_route = None
        client_ip = conn.client_ip if not conn.trusted else self._forwarded_client(head)
        if route is None:
            route = entry.router.match(head.method, head.host, head.path, head.query, head.headers, client_ip,
                                       info.model)
        if (route is not None and info.stream and not info.include_usage and complete
                and cast("RouteTarget", route.target).stream_usage):
            # stream_usage (§16.2): the body goes with stream_options.include_usage added, its framing adjusted
            changed = with_include_usage(data)
            if changed is not None:
                peek = [changed]
                if body is None or body.mode != CHUNKED:
                    self.framing = b"Content-Length: %d\r\n" % len(changed)
        else:
            changed = None
        held = body.rechunk(peek) if body is not None and body.mode == CHUNKED else peek
        if held:
            self.pending = held
            for p in held:
                self.pending_bytes += len(p)
            if self.pending_bytes > HIGH_WATER:
                conn.pause_reading_for(P_PENDING)
        if route is not None:  # its response's usage is accounted (§16.2) under the model's metrics (§16.6)
            routed = cast("RouteTarget", route.target)
            meter = UsageMeter(routed.stats.model_stats(info.model or ""))
            meter.strip_usage = changed is not None
            self.meter = meter
            affinity_bytes = routed.service.affinity_bytes
            if affinity_bytes > 0:
                self.affinity = prompt_key(info, affinity_bytes)
        self._routed(route, entry, self.framing, client_ip)

    def _fast_forward(self, client_ip: str) -> None:
        """Dispatch a request of a route without middlewares: pick, build the upstream head, forward."""
        head = self.head
        conn = self.conn
        target = cast("RouteTarget", self.target)
        svc = target.service
        if svc.sticky is None and svc.failover is None and not self.cold:
            backend = svc.balancer.pick() if self.affinity < 0 else svc.balancer.pick_keyed(self.affinity)
        else:
            svc, backend = self._pick(svc, head.headers, 0)
        if backend is None:
            self._no_backend(target.service)
            return
        entry = conn.entry
        tracer = entry.tracer
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
            conn.client_ip_b,
            conn.client_ip_b if not conn.trusted else client_ip.encode(),
            entry.proto,
            conn.port_b,
            conn.trusted,
            self.framing,
            drop,
        )
        self._forward(backend, pool, svc)

    def _forwarded_client(self, head: Any) -> str:
        """Client IP behind a trusted peer: the rightmost X-Forwarded-For entry not in ``trusted_ips`` (SPEC §5.2)."""
        conn = self.conn
        entries: list[str] = []
        ids = head.header_ids
        for i, (_name, value) in enumerate(head.headers):
            if ids[i] == hdrs.X_FORWARDED_FOR:
                entries.extend(e.strip() for e in value.decode("latin-1").split(","))
        trusted = conn.entry.trusted
        if not entries or trusted is None:
            return conn.client_ip
        for entry in reversed(entries):
            if parse_ip(entry)[0] == 0:
                return conn.client_ip  # unparsable header: the peer
            if not trusted.contains(entry):
                return normalize_ip(entry)
        return normalize_ip(entries[0])

    # -- dispatch (SPEC §7.1, §8.4) ------------------------------------------------------------------------------
    def _pick(
        self, svc: ServiceRuntime, headers: list[tuple[bytes, bytes]], depth: int
    ) -> tuple[ServiceRuntime, Backend | None]:
        """Dispatch beyond the plain balancer (SPEC §7.1): a sticky cookie naming an eligible backend, the
        balancer, then the failover service's own dispatch when nothing is eligible (chains; validation rejects
        cycles, ``depth`` bounds them anyway). Returns the service that serves and its backend (None: none)."""
        sticky = svc.sticky
        backend = sticky.pinned(headers) if sticky is not None else None
        if backend is None:
            backend = svc.balancer.pick() if self.affinity < 0 else svc.balancer.pick_keyed(self.affinity)
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
            queue = scaling.hold_target()
            if queue is not None:
                # reading goes on while the request waits, so a client that leaves is seen at once; body bytes
                # that arrive are held like those of a connect in progress (paused beyond HIGH_WATER)
                if queue.hold(self, self.cold):
                    self.held = queue
                    self.cold = True
                    self.conn.stop_timer()
                    interval = cast("RouteTarget", self.target).queued_keepalive
                    if interval > 0.0 and self.ka_timer is None and not self.head_sent:
                        self.ka_interval = interval
                        self.ka_timer = self.conn.loop.call_later(interval, self._keepalive)
                    return
                self._queue_failed(primary, 503, "Request buffer full", b"Retry-After: 5\r\n")
                return
        message = "No healthy backends (primary + failover)" if primary.failover is not None else "No healthy backends"
        self.local(503, message, (_COLD if self.cold else b"") + b"Retry-After: 1\r\n")

    # -- queued_keepalive (SPEC §16.3) -------------------------------------------------------------------------
    def _wants_stream(self) -> bool:
        """A streaming request: ``Accept: text/event-stream``, or ``"stream": true`` in its body — inspected, or
        else the start of it read while the request waits (a ``Content-Length`` body)."""
        if self.streaming:
            return True
        for name, value in self.head.headers:
            if name.lower() == b"accept" and b"text/event-stream" in value.lower():
                return True
        conn = self.conn
        body = conn.body
        if self.meter is not None or body is None or body.mode == CHUNKED:
            return False
        if not conn.expect and conn.has_buffered():
            conn.read_body()  # what came with the head joins the held bytes
        if conn.gone() or not self.pending:
            return False
        limit = conn.entry.limits.ai_inspect_limit
        held = b"".join(self.pending)
        return read_request(held[:limit], conn.body_done and len(held) <= limit).stream

    def _keepalive(self) -> None:
        """Every ``queued_keepalive`` while the request waits: the first time (still queued) the 200 SSE head, then
        a ``: queued <s>s`` comment, until the backend's head arrives or the exchange ends."""
        self.ka_timer = None
        conn = self.conn
        if self.ka_interval <= 0.0 or self.stats is None or conn.gone():
            return
        chunked = self.head.version == 1
        sink = self.sink
        out = b""
        if not self.head_sent:
            if self.held is None or not self._wants_stream():
                return  # dispatched before the interval passed (the backend's head answers), or no stream
            if self.stats is None or conn.gone():
                return
            self.head_sent = True
            self.resp_started = True
            self.status = 200
            if sink is not None:
                sink.start(200, [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                                 (b"x-a3s-cold-start", b"1"), (b"date", responses.date_value())], False)
            else:
                out = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" + _COLD
                       + responses.date_line()
                       + (b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Connection: close\r\n\r\n"))
        comment = b": queued %ds\n\n" % int(conn.loop.time() - self.t0)
        self.bytes_out += len(comment)
        if sink is not None:
            sink.data([comment])
        else:
            out += b"%x\r\n%s\r\n" % (len(comment), comment) if chunked else comment
            conn.transport.write(out)
        self.ka_timer = conn.loop.call_later(self.ka_interval, self._keepalive)

    def _stop_keepalive(self) -> None:
        self.ka_interval = 0.0
        timer = self.ka_timer
        if timer is not None:
            self.ka_timer = None
            timer.cancel()

    def _stream_error(self, message: str) -> None:
        """The queued stream ends without the backend's body: one SSE ``error`` event with the §5.7 JSON."""
        self._stop_keepalive()
        conn = self.conn
        event = b"event: error\ndata: " + orjson.dumps({"error": message}) + b"\n\n"
        chunked = self.head.version == 1
        stats = self.stats
        if stats is not None:
            stats.sse_errors += 1
        self.bytes_out += len(event)
        sink = self.sink
        if sink is not None:
            sink.data([event])
            sink.end([])
        else:
            conn.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event) if chunked else event)
        self._record(True)
        self._after_local(not chunked or self._close_after_local())

    def _queue_failed(self, primary: ServiceRuntime, status: int, message: str, extra: bytes) -> None:
        """The queue cannot take or keep the request: the failover service if any, else ``status``."""
        if primary.failover is not None:
            self.skip_queue = True
            self._dispatch()
            return
        self.local(status, message, (_COLD if self.cold else b"") + extra)

    def _dispatch(self) -> None:
        if self.chain is not None:
            self._chain_forward()
        else:
            conn = self.conn
            self._fast_forward(conn.client_ip if not conn.trusted else self._forwarded_client(self.head))

    # -- the cold-start queue's calls (scaling/buffer.Waiter) -------------------------------------------------
    def resume_held(self) -> None:
        """A replica can take the queued request: dispatch it now."""
        self.held = None
        if self.conn.gone():
            return
        self._dispatch()

    def hold_expired(self) -> None:
        """Waited ``buffer_timeout_secs``: the failover service, else 504."""
        held = self.held
        self.held = None
        if held is None or self.conn.gone():
            return
        target = cast("RouteTarget", self.target)
        if target.service.failover is None:
            self._log_failure(504, "Backend scale-up timed out", None, "")
        self._queue_failed(target.service, 504, "Backend scale-up timed out", b"")

    def hold_shutdown(self) -> None:
        """The shutdown drain deadline came while the request waited: 503."""
        self.held = None
        if self.conn.gone():
            return
        self.conn.closing = True
        self.local(503, "Gateway shutting down", _COLD)

    def drain_deadline(self) -> bool:
        """Shutdown drain deadline: a queued request is answered 503 (True); else the caller cuts the connection."""
        held = self.held
        if held is None:
            return False
        held.unhold(self, "shutdown")
        self.hold_shutdown()
        return True

    # -- forwarding -------------------------------------------------------------------------------------------
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
        backend.acquire()
        conn = self.conn
        if conn.body is not None and not conn.expect and conn.has_buffered():
            conn.read_body()
            if conn.gone():
                return
        up = pool.take() if not conn.grpc else None
        if up is not None:
            self._attach(up)
        else:
            self.connect_task = conn.loop.create_task(self._connect(pool))

    def _start_mirror(self, mirror: Mirror) -> None:
        """Once per client request: sampled → a copy now (no body) or once the body is complete."""
        self.mirror_decided = True
        if not mirror.sample():
            return
        if self.conn.body is None:
            mirror.send(self.up_head, [])
            return
        if self.pending and self.conn.body_done:  # the whole body was held (inspection): the copy goes now
            if self.pending_bytes > mirror.max_body_bytes:
                mirror.skip()
            else:
                mirror.send(self.up_head, list(self.pending))
            return
        self.mirror = mirror
        self.mirror_body = list(self.pending) if self.pending else []  # held body bytes are its start
        self.mirror_bytes = self.pending_bytes

    async def _connect(self, pool: Pool) -> None:
        conn = self.conn
        try:
            up = await pool.connect(conn.grpc, self.retried)  # a retry after a stale connection: a new one
        except asyncio.CancelledError:
            raise
        except (OSError, TimeoutError) as e:
            self.connect_task = None
            target = pool.backend.target
            queued_stream = self.head_sent and self.ka_interval > 0.0  # still waiting behind its keep-alive (§16.3)
            if target is not None and conn.transport is not None and (not self.resp_started or queued_stream):
                # a replica that refuses is not ready (§8.3); with a buffer the request waits again, first in line
                target.mark_not_ready(pool.backend)
                if target.buffered and not conn.gone():
                    self._release_backend()
                    self.cold = True
                    if target.hold(self, True):
                        self.held = target
                        return
            self.upstream_failed(502, "Upstream connection failed", _CONNECT, str(e) or "timed out")
            return
        self.connect_task = None
        if conn.gone():
            pool.release(up, True)
            return
        self._attach(up)

    def _attach(self, up: UpstreamConnection) -> None:
        conn = self.conn
        self.upstream = up
        data = [self.up_head]
        if self.pending:
            data.extend(self.pending)
            self.pending = _NO_PIECES
            self.pending_bytes = 0
        up.begin(self, data)
        if conn.write_paused:
            up.pause_reading()
        if conn.expect:
            conn.expect = False
            if not conn.body_done:
                conn.transport.write(responses.CONTINUE)
        if conn.is_paused_for(P_PENDING):
            conn.resume_reading_for(P_PENDING)
        if not conn.body_done and conn.has_buffered():
            conn.read_body()

    def body_pieces(self, pieces: list[bytes], done: bool) -> None:
        """Request body bytes the connection read: to the mirror copy, the replay copy, the upstream connection
        (or held while it is being opened)."""
        mirror = self.mirror
        if mirror is not None:
            for p in pieces:
                self.mirror_bytes += len(p)
            if self.mirror_bytes > mirror.max_body_bytes:
                mirror.skip()  # too large to copy: this request is not mirrored
                self.mirror = None
            else:
                self.mirror_body.extend(pieces)
                if done:
                    mirror.send(self.up_head, self.mirror_body)
                    self.mirror = None
                    self.mirror_body = _NO_PIECES
        if not pieces:
            return
        replay = self.replay
        if replay is not None:
            # kept for a retry while within max_replay_bytes; beyond that the request is no longer replayable
            for p in pieces:
                self.replay_bytes += len(p)
            policy = cast("Chain", self.chain).retry
            if self.replay_bytes > cast("Any", policy).max_replay_bytes:
                self.replay = None
            else:
                replay.extend(pieces)
        up = self.upstream
        if up is not None:
            if len(pieces) == 1:
                up.transport.write(pieces[0])
            else:
                up.transport.writelines(pieces)
        else:
            if self.pending is _NO_PIECES:
                self.pending = []
            self.pending.extend(pieces)
            for p in pieces:
                self.pending_bytes += len(p)
            if self.pending_bytes > HIGH_WATER:
                self.conn.pause_reading_for(P_PENDING)

    def body_limit(self) -> int:
        """The body-limit for bodies counted while streaming (0: none)."""
        chain = self.chain
        return chain.body_limit if chain is not None else 0

    # -- routes with middlewares (SPEC §6) ------------------------------------------------------------------------
    def _start_chain(self, head: Any, target: RouteTarget, chain: Chain, framing: bytes, client_ip: str) -> None:
        """Run the request phase; the first middleware that awaits continues it in a task."""
        conn = self.conn
        # one call instead of six attribute reads of the (untyped here) parsed head
        fields = cast("tuple[bytes, bytes, bytes | None, bytes, list[tuple[bytes, bytes]], int]",
                      head.request_fields())
        method, path, query, host, headers, body_length = fields
        # the parsed header list is shared with the Request, which copies it before its first change
        req = Request(method, path, query, host, headers, client_ip, target.router, conn.entry.proto, body_length,
                      len(chain.middlewares), conn.trusted, conn.client_ip)
        req.ai = self.info
        self.chain = chain
        self.mreq = req
        self.target = target
        self.framing = framing
        self.attempt = 1
        if self.tried:
            self.tried = _NO_URLS
        if chain.retry is not None:  # body bytes held by inspection are the start of the replay copy
            self.replay = list(self.pending) if self.pending else []
            self.replay_bytes = self.pending_bytes
        else:
            self.replay = None
            self.replay_bytes = 0
        self._run_chain(0)

    def _run_chain(self, i: int) -> None:
        """The request phase from middleware ``i`` on, then dispatch."""
        chain = cast("Chain", self.chain)
        req = cast("Request", self.mreq)
        loop = self.conn.loop
        now = self.t0 if i == 0 else loop.time()  # the request's arrival: the same loop iteration
        mws = chain.middlewares
        n = len(mws)
        while i < n:
            mw = mws[i]
            if mw.is_async:
                self.connect_task = loop.create_task(self._chain_async(i))
                return
            if mw.has_request:
                reply = mw.request(req, now)
                if reply is not None:
                    self.reply(reply.status, reply.headers, reply.body, i)
                    return
            i += 1
        self._chain_forward()

    async def _chain_async(self, i: int) -> None:
        chain = cast("Chain", self.chain)
        req = cast("Request", self.mreq)
        conn = self.conn
        mws = chain.middlewares
        try:
            while i < len(mws):
                mw = mws[i]
                if mw.has_request or mw.is_async:
                    now = conn.loop.time()
                    reply = await mw.request_async(req, now) if mw.is_async else mw.request(req, now)
                    if reply is not None:
                        self.connect_task = None
                        if not conn.gone():
                            self.reply(reply.status, reply.headers, reply.body, i)
                        return
                i += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            self.connect_task = None
            log.exception("middleware %s of router %s failed", mws[i].name, req.router)
            if not conn.gone():
                self.local(500, "Internal server error")
            return
        self.connect_task = None
        if not conn.gone():
            self._chain_forward()

    def _chain_forward(self) -> None:
        """The request phase passed: build the upstream head from the request as middlewares left it."""
        head = self.head
        conn = self.conn
        req = cast("Request", self.mreq)
        body_limit = cast("Chain", self.chain).body_limit
        if body_limit and conn.body is not None and conn.body.received > body_limit:
            self.body_too_large()  # read before routing (inspection, SPEC §16.1) and already over the limit
            return
        if self.upgrade:
            mws = cast("Chain", self.chain).middlewares
            if mws and mws[-1].kind == "ws-mux":
                self._mux_accept(mws[-1], len(mws) - 1)
                return
        primary = cast("RouteTarget", self.target).service
        if primary.sticky is None and primary.failover is None and not self.cold:
            svc = primary  # the plain balancer, as on the fast path (``_pick`` does the rest)
            backend = svc.balancer.pick() if self.affinity < 0 else svc.balancer.pick_keyed(self.affinity)
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
        tracer = conn.entry.tracer
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
            conn.client_ip_b,
            conn.client_ip_b if not conn.trusted else client_ip.encode(),
            conn.entry.proto,
            conn.port_b,
            conn.trusted,
            self.framing,
            tracer.mask if tracer is not None and self.trace is not None else 0,
            edited,  # forwarding headers a middleware set or deleted are sent as it left them (SPEC §5.2, §6.8)
        )
        self._forward(backend, pool, svc)

    def _mux_accept(self, mw: Any, upto: int) -> None:
        """ws-mux (SPEC §9.4): the gateway answers the upgrade itself and hands the connection to the router's hub."""
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
            self.reply(400, [(b"Content-Type", JSON), (b"Sec-WebSocket-Version", b"13")],
                       orjson.dumps({"error": "Invalid WebSocket handshake"}), upto)
            return
        chain = cast("Chain", self.chain)
        conn = self.conn
        extra = b""
        if chain.has_response:
            phase = Response(101, [], True)
            chain.run_response(req, phase, upto, conn.loop.time())
            extra = b"".join(n + b": " + v + b"\r\n" for n, v in phase.headers)
        hub = mw.hub_for(conn.loop, cast("RouteTarget", self.target).service)
        transport = conn.transport
        transport.write(handshake_response(key, extra))
        self.resp_started = True
        self.status = 101
        self._record(True)
        initial = conn.detach()
        mux = MuxConnection(hub, initial)
        transport.set_protocol(mux)
        mux.connection_made(transport)

    # -- retry (SPEC §6.11) -----------------------------------------------------------------------------------
    def _try_again(self, failure: int, status: int, retry_after: float | None) -> bool:
        chain = cast("Chain", self.chain)
        policy = chain.retry
        req = self.mreq
        conn = self.conn
        if policy is None or req is None or self.resp_started or conn.transport is None or conn.draining:
            return False
        replayable = conn.body_done and self.replay is not None
        delay = policy.decide(self.attempt, self.head.method, failure, status, replayable, retry_after)
        if delay is None:
            return False
        now = conn.loop.time()
        if failure != _CONNECT:
            # the middlewares after retry saw this attempt fail (a circuit breaker counts it)
            chain.run_response(req, Response(status, [], True), len(chain.middlewares), now, policy.slot + 1)
        policy.retries += 1
        stats = self.stats
        if stats is not None:
            stats.retries += 1
        self.attempt += 1
        if self.backend_url is not None:
            if self.tried is _NO_URLS:
                self.tried = []
            self.tried.append(self.backend_url)
        b = self.backend
        if b is not None and failure == _STATUS:
            self._account(b, status, False)
        self._release_backend()
        self.upstream = None
        self.connect_task = conn.loop.create_task(self._retry_after(delay, policy.slot + 1))
        return True

    async def _retry_after(self, delay: float, start: int) -> None:
        await asyncio.sleep(delay)
        self.connect_task = None
        if self.conn.gone():
            return
        self.pending = list(self.replay) if self.replay is not None else _NO_PIECES
        self.pending_bytes = 0
        self._run_chain(start)

    # -- what the upstream connection reports (upstream.Client) -----------------------------------------------
    def write(self, data: bytes) -> None:
        self.conn.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        self.conn.transport.writelines(data)

    def keeps_alive(self) -> bool:
        return bool(self.head.keep_alive) and not self.conn.closing

    def body_complete(self) -> bool:
        return self.conn.body_done

    def retry_status(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        chain = self.chain
        if chain is None:
            return False
        policy = chain.retry
        if policy is None or status not in policy.on_status:
            return False
        retry_after: float | None = None
        for name, value in headers:
            if name.lower() == b"retry-after":
                retry_after = parse_retry_after(value)
                break
        return self._try_again(_STATUS, status, retry_after)

    def response_phase(self, status: int, headers: list[tuple[bytes, bytes]]) -> Response | None:
        chain = self.chain
        req = self.mreq
        if chain is None or not chain.has_response or req is None:
            return None
        # the response phase of the router's middlewares, in reverse order (SPEC §6.0)
        phase = Response(status, headers, False)  # the parsed head is not used after this: no copy
        chain.run_response(req, phase, len(chain.middlewares), self.conn.loop.time())
        return phase

    def start_response(self, status: int, keep_alive: bool) -> None:
        if self.ka_interval > 0.0:
            self._stop_keepalive()  # the backend answers: no more comments
        self.resp_started = True
        self.conn.keep_alive = keep_alive
        self.status = status
        b = self.backend
        if b is not None:
            self._account(b, status, False)

    def first_byte(self, ttfb: float) -> None:
        self.ttfb = ttfb

    def body_gap(self, gap: float) -> None:
        stats = self.stats
        if stats is not None:
            stats.observe_gap(self.revision, gap)

    def response_end(self, reusable: bool, bytes_out: int) -> None:
        self.bytes_out = bytes_out
        self.response_done(reusable)

    def stream_failed(self, sse: bool, bytes_out: int) -> None:
        self.bytes_out = bytes_out
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

    def upstream_failed(self, status: int, message: str, failure: int = 1, detail: str = "") -> None:
        self.upstream = None
        if self.conn.transport is None:
            self._release_backend()
            return
        if self.head_sent and self.status == 200 and self.ka_interval > 0.0:
            # the client has its queued keep-alive stream: the failure is its last event (§16.3)
            b = self.backend
            self._log_failure(status, message, b.url if b is not None else self.backend_url, detail)
            if b is not None:
                self._account(b, status, failure != _STATUS)
            self._release_backend()
            self._stream_error(message)
            return
        if self.resp_started:
            self.stream_failed(False, self.bytes_out)
            self.response_done(False)
            return
        b = self.backend
        self._log_failure(status, message, b.url if b is not None else self.backend_url, detail)
        if b is not None:  # a transport failure (connect, reset, response-head timeout)
            self._account(b, status, True)
        self._release_backend()
        if self.chain is not None and self.chain.retry is not None and self._try_again(failure, status, None):
            return
        self.local(status, message)

    def retry_on_fresh_connection(self) -> bool:
        head = self.head
        if self.retried or self.conn.transport is None or head is None or head.chunked:
            return False
        if head.content_length > 0 or self.pool is None:
            return False
        self.retried = True
        self.upstream = None
        self.connect_task = self.conn.loop.create_task(self._connect(self.pool))
        return True

    def start_tunnel(self) -> None:
        self.conn.start_tunnel()

    def tunnel_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.conn.transport.write(data)

    def tunnel_closed(self) -> None:
        self.upstream = None
        self._release_backend()
        if self.stats is not None:
            self._record(True)
        self.conn.close()

    def backpressure(self, paused: bool) -> None:
        if paused:
            self.conn.pause_reading_for(P_UPSTREAM)
        else:
            self.conn.resume_reading_for(P_UPSTREAM)

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
            passive.record(b, failed, self.conn.loop.time())

    def idle(self) -> None:
        """Between requests: let go of what the last one held (an idle keep-alive connection may stay for long;
        issue 20: ~1 KiB per idle connection was the last request's heads, ids and trace context)."""
        self.head = None
        self.up_head = b""
        self.framing = b""
        self.rid = b""
        self.trace = None
        self.response_extra = b""
        self.model = None
        self.meter = None
        self.info = None

    def response_done(self, reusable: bool) -> None:
        """The response ended (completely when ``reusable``; otherwise the connection must close)."""
        self.upstream = None
        self._release_backend()
        if self.stats is not None:
            self._record(True)
        self.conn.finished(reusable)

    # -- the client connection's calls ---------------------------------------------------------------------------
    def client_gone(self) -> None:
        """The client connection was lost: out of any queue, the exchange accounted, the upstream cancelled."""
        self.peek = None
        self.peek_route = None
        held = self.held
        if held is not None:  # the client left while its request waited for a replica: out of the queue
            self.held = None
            held.unhold(self)
        stats = self.stats
        if stats is not None:  # the client left during an exchange
            chain = self.chain
            if chain is not None and not self.resp_started and self.mreq is not None:
                now = self.conn.loop.time()
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
        self.cancel_upstream()  # the client is gone: cancel the upstream request at once

    def tunnel_ended(self) -> None:
        """The client closed its WebSocket tunnel: the normal end of the exchange."""
        if self.stats is not None:
            self._record(True)

    def rejected(self, entry: EntrypointRuntime, status: int, message: str, method: bytes) -> None:
        """A request line was read but the request is rejected (§5.5): counted and logged like any response."""
        self.head = None
        self.stats = entry.unmatched
        self.status = status
        self.t0 = self.conn.loop.time()
        self.wall0 = time.time()
        self.ttfb = -1.0
        self.bytes_out = responses.error_body_length(message)
        self.backend_url = None
        self.rid = b""
        self.trace = None
        self._record(True, method)

    def abort(self, status: int, message: str) -> None:
        """The request cannot go on (a bad body, a body timeout): ``status`` if no response started, then close."""
        self.peek = None
        self.peek_route = None
        self.cancel_upstream()
        conn = self.conn
        if not self.resp_started and conn.transport is not None:
            self.status = status
            if self.sink is not None:
                fields, body = responses.error_fields(message)
                self.send_fields(status, fields, body)
            else:
                conn.transport.write(responses.error_response(status, message, close=True))
        self._record(self.status != 0)
        conn.close()

    def body_too_large(self) -> None:
        """A streamed request body passed the body-limit (SPEC §6.10): 413 and close, the upstream aborted."""
        self.cancel_upstream()
        conn = self.conn
        if not self.resp_started and conn.transport is not None:
            limit = self.body_limit()
            conn.body_done = True  # nothing more is read: the connection closes
            self.reply(413, [(b"Content-Type", JSON), (b"Connection", b"close")],
                       b'{"error":"Request body too large","max_bytes":%d}' % limit,
                       len(cast("Chain", self.chain).middlewares))
        conn.close()

    def cancel_upstream(self) -> None:
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
            b.release()
            self.backend = None
            target = b.target
            if target is not None:
                target.released()  # a queued request may take the freed slot (§8.4)

    # -- local answers ------------------------------------------------------------------------------------------
    def local(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answer a gateway error response for the current request, then continue or close."""
        conn = self.conn
        if self.head_sent and self.ka_interval > 0.0:  # queued keep-alive stream (§16.3): its error event
            self._release_backend()
            self._stream_error(message)
            return
        if conn.grpc and self.chain is None:
            self._grpc_error(status, message, extra)
            return
        if self.chain is not None:
            headers = [(b"Content-Type", JSON)]
            for line in extra.split(b"\r\n"):
                if line:
                    name, _, value = line.partition(b": ")
                    headers.append((name, value))
            self.reply(status, headers, orjson.dumps({"error": message}), len(self.chain.middlewares))
            return
        head = self.head
        close = self._close_after_local()
        self.resp_started = True
        self.status = status
        head_only = head.method == b"HEAD"
        if self.sink is not None:
            fields, body = responses.error_fields(message, extra)
            self.send_fields(status, fields, b"" if head_only else body)
        else:
            conn.transport.write(
                responses.error_response(status, message, extra=extra, close=close, head_only=head_only))
        if not head_only:
            self.bytes_out = responses.error_body_length(message)
        self._record(True)
        self._after_local(close)

    def _close_after_local(self) -> bool:
        """Whether a gateway-generated response closes the connection: shutdown, the client's choice, a request body
        too large to drain, or a client still waiting for a 100 Continue — it may never send the announced body, so
        draining it would eat the next request (SPEC §5.3: such a response carries ``Connection: close``)."""
        conn = self.conn
        if conn.closing or not self.head.keep_alive or conn.expect:
            return True
        body = conn.body
        return not (conn.body_done or (body is not None and body.mode == LENGTH and body.remaining <= DRAIN_LIMIT))

    def _grpc_error(self, status: int, message: str, extra: bytes) -> None:
        """A gateway error for a gRPC request: trailers-only, HTTP 200 with grpc-status (SPEC §9.2)."""
        self.resp_started = True
        self.status = status
        if self.sink is not None:
            self.send_fields(200, responses.grpc_error_fields(status, message, extra), b"")
        else:
            self.conn.transport.write(responses.grpc_error_response(status, message, extra))
        self._record(True)
        self._after_local(True)

    def _after_local(self, close: bool) -> None:
        """After a gateway-generated response: close, drain the unread (small) body, or serve the next request."""
        conn = self.conn
        if close:
            conn.close()
            return
        conn.keep_alive = True
        if not conn.body_done:
            self.upstream = None
            conn.drain()
            return
        self.response_done(True)

    def _acme_challenge(self, head: Any, challenges: dict[bytes, bytes]) -> None:
        """ACME HTTP-01 (SPEC §5.1 step 2, §10.4): the key authorization of a pending token (200, text/plain),
        before routing and redirects; an unknown token → 404."""
        self.stats = self.conn.entry.unmatched
        answer = challenges.get(head.path[len(_ACME_PREFIX):])
        if answer is None or head.method not in (b"GET", b"HEAD"):
            self.local(404, "Not found")
            return
        self.reply(200, [(b"Content-Type", b"text/plain")], answer, 0)

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
        self.stats = self.conn.entry.unmatched
        close = self._close_after_local()
        self.resp_started = True
        self.status = redirect[0]
        if self.sink is not None:
            self.send_fields(redirect[0], responses.redirect_fields(location), b"")
        else:
            self.conn.transport.write(responses.redirect_response(redirect[0], location, close=close))
        self._record(True)
        self._after_local(close)

    def reply(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, upto: int) -> None:
        """Answer the request from the gateway (a middleware's reply, or a gateway error on a route with
        middlewares) after the response phase of the middlewares before index ``upto``."""
        head = self.head
        conn = self.conn
        chain = self.chain
        if chain is not None and chain.has_response and self.mreq is not None:
            resp = Response(status, headers, True)
            chain.run_response(self.mreq, resp, upto, conn.loop.time())
            headers = resp.headers
        if conn.grpc:
            message = responses.error_message(body) if status >= 400 else ""
            if status >= 400:
                extra = b"".join(n + b": " + v + b"\r\n" for n, v in headers
                                 if n.lower() not in (b"content-type", b"content-length", b"connection"))
                self._grpc_error(status, message, extra)
                return
        close = self._close_after_local()
        sink = self.sink
        fields: list[tuple[bytes, bytes]] = []
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, responses.reason(status))]
        for name, value in headers:
            low = name.lower()
            if low == b"connection":
                close = close or value.lower() == b"close"
                continue
            if low == b"content-length" or low == b"transfer-encoding":
                continue
            if sink is not None:
                fields.append((name, value))
            else:
                parts.append(name + b": " + value + b"\r\n")
        head_only = head.method == b"HEAD"
        if status == 204 or status == 304:
            body = b""  # no content, and no Content-Length (RFC 9110 §8.6)
        elif sink is not None:
            fields.append((b"content-length", b"%d" % len(body)))
        else:
            parts.append(b"Content-Length: %d\r\n" % len(body))
        if not head_only:
            self.bytes_out = len(body)
        self.resp_started = True
        self.status = status
        if sink is not None:
            fields.append((b"date", responses.date_value()))
            self.send_fields(status, fields, b"" if head_only else body)
        else:
            parts.append(responses.date_line())
            if close:
                parts.append(b"Connection: close\r\n")
            parts.append(b"\r\n")
            if not head_only:
                parts.append(body)
            conn.transport.write(b"".join(parts))
        self._record(True)
        self._after_local(close)

    def send_fields(self, status: int, fields: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response of the gateway's own to a client that takes fields (``sink``, an HTTP/2 stream)."""
        sink = cast("FieldSink", self.sink)
        sink.start(status, fields, not body)
        if body:
            sink.data([body])
            sink.end([])

    # -- end of an exchange: counters, access log, span, process log --------------------------------------------
    def _log_failure(self, status: int, message: str, backend: str | None, detail: str) -> None:
        """An upstream failure of the current request in the process log (SPEC §5.7, §11.5): what the client's
        answer leaves out (backend address, cause) with the request id, one line per service and kind every 10 s."""
        stats = self.stats
        router = stats.router if stats is not None else ""
        service = stats.service if stats is not None else ""
        self.conn.entry.errors.warning((service, message), message, fields={
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

    def _record(self, count: bool, method: bytes = b"") -> None:
        """Account the exchange once (``count``: it got a response and counts in gateway_requests_total)."""
        stats = self.stats
        if stats is None:
            return
        self.stats = None
        if self.ka_timer is not None:
            self._stop_keepalive()
        duration = self.conn.loop.time() - self.t0
        head = self.head
        if head is not None:
            method = head.method
        if count:
            stats.record(method, self.status, duration)
        meter = self.meter
        if meter is not None:  # an inspected request: its usage and per-model counters (§16.2, §16.6)
            self.meter = None
            body = self.conn.body
            meter.finish(body.received if body is not None else 0)
            model_stats = meter.model_stats
            if count and model_stats is not None:
                model_stats.codes.add(self.status)
        chain = self.chain
        if chain is not None and chain.accounting:  # token budgets: reservations replaced by the usage (§16.4)
            req = self.mreq
            if req is not None:
                if meter is not None and self.backend_url is not None:
                    meter.sent = True
                now = self.conn.loop.time()
                for mw in chain.accounting:
                    mw.settle(req, meter, now)
        if self.ttfb >= 0.0:
            stats.ttfb.observe(self.ttfb)
            if self.revision:
                stats.observe_revision_ttfb(self.revision, self.ttfb)
            window = self.window
            if window is not None:
                window.ttfb(self.ttfb)
        if self.conn.entry.need_wall:
            self._log_exchange(stats, method, duration, meter)

    def _log_exchange(self, stats: RouteStats, method: bytes, duration: float, meter: UsageMeter | None) -> None:
        """The access-log entry and the exported span of the exchange (only when either is configured)."""
        conn = self.conn
        entry = conn.entry
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
                self.wall0, conn.client_ip, method, path, query, host, status if status else None,
                conn.body.received if conn.body is not None else 0, self.bytes_out, duration,
                self.ttfb if self.ttfb >= 0.0 else None, router, service, self.backend_url, entry.name, agent,
                rid or os.urandom(16).hex(), trace.trace_id if trace is not None else None, retries, self.cold, None,
                self.model, meter.input_tokens if meter is not None else None,
                meter.output_tokens if meter is not None else None, meter.source if meter is not None else None,
            ))
        tracer = entry.tracer
        if trace is not None and trace.sampled and tracer is not None and tracer.exporting:
            tracer.finish(
                trace, start_wall=self.wall0, end_wall=self.wall0 + duration, method=method,
                path=head.path if head is not None else None, host=head.host if head is not None else None,
                status=status, client_ip=conn.client_ip, router=stats.router, service=stats.service,
                backend=self.backend_url, retries=retries, cold_start=self.cold,
            )
