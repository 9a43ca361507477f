"""TCP entrypoints (SPEC §9.5): accept, filter, route by SNI/ALPN/client IP, tunnel bytes to a backend.

One :class:`TcpConnection` protocol per client connection and one :class:`_Upstream` protocol per backend
connection; no streams, no task per read. A connection goes through these states:

* peek (passthrough entrypoints whose routes read SNI/ALPN): bytes are buffered until :func:`sni.peek_hello`
  decides, or ``peek_timeout`` passes, or the client half-closes; the buffered bytes are forwarded unchanged;
* connect: the route's tcp-filter is applied, the service's balancer picks a backend, a connect task runs under
  ``transport.connect_timeout`` while client bytes are buffered (reading paused above the high-water mark);
* relay: bytes are written through as they arrive. Reading one side pauses while the other side's write buffer is
  above :data:`HIGH_WATER` and resumes below :data:`LOW_WATER`; a FIN is propagated with ``write_eof()``; the
  tunnel closes when both directions have ended, when either side is lost, or after ``tunnel_idle_timeout``
  without a byte either way (one timer handle, re-armed lazily from the last activity time).

With ``ssl`` the entrypoint terminates TLS: asyncio calls ``connection_made`` after the handshake, so SNI (through
``sni_of``) and the negotiated ALPN protocol are known at once. TLS has no half-close here (an SSL transport can
neither ``write_eof()`` nor stay open after the peer's close_notify), so a FIN from either side ends the tunnel.

Interpreted (not compiled): the relay path is one ``write`` per read, inside the transports; not profiled yet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from .._aio import timeout as deadline
from ..netaddr import parse_ip, parse_network
from ..routing.tcp import TcpRouter
from ..service.balancer import Backend
from .sni import NEED_MORE, Hello, peek_hello

log: Final = logging.getLogger("a3s_gateway.proxy.tcp")

HIGH_WATER: Final = 64 * 1024  # pause reading the other side above this many bytes waiting to be written
LOW_WATER: Final = 16 * 1024  # ... and resume below this
REJECT_REASONS: Final = ("ip", "limit", "no_route")

# connection states
_NEW: Final = 0  # accepted, not routed yet
_PEEK: Final = 1  # waiting for the ClientHello
_CONNECT: Final = 2  # routed, connecting to the backend
_RELAY: Final = 3  # tunnel open
_CLOSED: Final = 4  # rejected, failed or closing

# reasons the client's reading is paused (a bit each; reading resumes when none is left)
_P_PENDING: Final = 1  # too many bytes buffered while connecting
_P_UPSTREAM: Final = 2  # the backend's write buffer is above the high-water mark

Network = tuple[int, int, int]


def parse_networks(allowed: Sequence[str]) -> tuple[Network, ...]:
    """IPs/CIDRs as ``(version, network, mask)`` (raises ValueError on a bad entry)."""
    return tuple(parse_network(text) for text in allowed)


def ip_allowed(networks: tuple[Network, ...], version: int, value: int) -> bool:
    """True when the parsed address lies in one of ``networks``, or when ``networks`` is empty (= all)."""
    if not networks:
        return True
    for net_version, net_value, mask in networks:
        if net_version == version and value & mask == net_value:
            return True
    return False


@dataclass
class TcpTarget:
    """What a TCP route leads to: the router name, its service (``.balancer.pick()``, ``.transport``), and the
    tcp-filter (§6.15) of the router: ``allowed`` IPs/CIDRs ([] = all) and ``max_connections`` (0 = unlimited).
    ``active`` counts the connections open through this router."""

    router: str
    service: Any
    allowed: list[str] = field(default_factory=list)
    max_connections: int = 0
    active: int = 0
    networks: tuple[Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.networks = parse_networks(self.allowed)


class TcpStats:
    """Counters of one TCP entrypoint: rejections by reason, connections accepted, connections open, and
    connections closed because no backend was eligible or the backend connect failed (``upstream_errors``)."""

    __slots__ = ("active", "connections", "rejected", "upstream_errors")

    def __init__(self) -> None:
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.connections = 0
        self.active = 0
        self.upstream_errors = 0


class TcpServer:
    """One TCP entrypoint: its listener, filter, router and open connections.

    ``router`` is replaced on hot reload; a connection reads it once, when it is routed, so existing tunnels
    continue untouched. ``allowed_ips`` and ``max_connections`` are the entrypoint's filter, applied at accept.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str,
        router: TcpRouter,
        *,
        allowed_ips: Sequence[str] = (),
        max_connections: int = 0,
        ssl: ssl_module.SSLContext | None = None,
        sni_of: Callable[[Any], str | None] | None = None,
        stats: TcpStats | None = None,
        peek_timeout: float = 5.0,
    ) -> None:
        self.loop = loop
        self.name = name
        self.router = router
        self.networks = parse_networks(allowed_ips)
        self.max_connections = max_connections
        self.ssl = ssl
        self.sni_of = sni_of
        self.stats = stats if stats is not None else TcpStats()
        self.peek_timeout = peek_timeout
        self.connections: set[TcpConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._idle: asyncio.Future[None] | None = None  # set when the last connection ends during a drain

    def set_filter(self, allowed_ips: Sequence[str], max_connections: int) -> None:
        """Replace the entrypoint filter (reload); open connections are not re-checked."""
        self.networks = parse_networks(allowed_ips)
        self.max_connections = max_connections

    async def start(self, host: str, port: int) -> None:
        """Bind the listener (raises OSError)."""
        self._server = await self.loop.create_server(
            cast(Any, lambda: TcpConnection(self)),
            host or None,
            port,
            ssl=self.ssl,
            reuse_port=hasattr(socket, "SO_REUSEPORT"),
            backlog=2048,
        )

    def bound_address(self) -> tuple[str, int]:
        """The actual (host, port) of the first listening socket."""
        assert self._server is not None
        addr = self._server.sockets[0].getsockname()
        return (str(addr[0]), int(addr[1]))

    def close_listener(self) -> None:
        """Stop accepting; open connections are untouched."""
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait up to ``timeout`` seconds for the open connections to end, then abort the rest."""
        self.close_listener()
        if self.connections:
            idle = self._idle = self.loop.create_future()
            await asyncio.wait((idle,), timeout=timeout)
            self._idle = None
        for conn in list(self.connections):
            conn.abort()

    def forget(self, conn: TcpConnection) -> None:
        """A counted connection has ended (called by the connection)."""
        self.connections.discard(conn)
        self.stats.active -= 1
        idle = self._idle
        if idle is not None and not self.connections and not idle.done():
            idle.set_result(None)


class TcpConnection(asyncio.Protocol):
    """One client connection, from accept to the end of its tunnel."""

    def __init__(self, server: TcpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.upstream: asyncio.Transport | None = None
        self.state = _NEW
        self.ip = ""
        self.ip_version = 0
        self.ip_value = 0
        self.admitted = False  # counted in the server's connections / active
        self.target: TcpTarget | None = None  # set while counted in target.active
        self.backend: Backend | None = None  # set while counted in backend.in_flight
        self.peeked = bytearray()
        self.pending: list[bytes] = []  # client bytes read before the tunnel is open
        self.pending_bytes = 0
        self.paused = 0  # _P_* bits: why the client's reading is paused
        self.upstream_paused = False  # the backend's reading is paused (the client's write buffer is high)
        self.client_eof = False
        self.upstream_eof = False
        self.idle_timeout = 0.0
        self.last = 0.0  # loop time of the last byte in either direction
        self.timer: asyncio.TimerHandle | None = None  # peek timeout, then idle timeout
        self.connect_task: asyncio.Task[None] | None = None

    # -- accept, filter, route ---------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        self.transport = t
        server = self.server
        server.stats.connections += 1
        peer = t.get_extra_info("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.ip_version, self.ip_value = parse_ip(self.ip)
        if not ip_allowed(server.networks, self.ip_version, self.ip_value):
            self._reject("ip")
            return
        if server.max_connections > 0 and len(server.connections) >= server.max_connections:
            self._reject("limit")
            return
        self.admitted = True
        server.connections.add(self)
        server.stats.active += 1
        t.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        if server.ssl is not None:
            ssl_object = t.get_extra_info("ssl_object")
            sni = server.sni_of(ssl_object) if server.sni_of is not None and ssl_object is not None else None
            selected = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            self._route(sni, (selected,) if selected else ())
        elif server.router.needs_peek:
            self.state = _PEEK
            self.timer = self.loop.call_later(server.peek_timeout, self._peek_expired)
        else:
            self._route(None, ())  # nothing to peek: server-first protocols work

    def _reject(self, reason: str) -> None:
        """Close without sending anything, counted by ``reason``."""
        self.server.stats.rejected[reason] += 1
        self.state = _CLOSED
        self.pending = []
        if self.transport is not None:
            self.transport.close()

    def _peek_expired(self) -> None:
        self.timer = None
        if self.state == _PEEK:
            self._end_peek(None)

    def _end_peek(self, hello: Hello | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        data = bytes(self.peeked)
        self.peeked = bytearray()
        if data:
            self.pending.append(data)
            self.pending_bytes += len(data)
        self.state = _NEW
        if hello is None:
            self._route(None, ())
        else:
            self._route(hello.sni, hello.alpn)

    def _route(self, sni: str | None, alpn: tuple[str, ...]) -> None:
        route = self.server.router.match(sni, alpn, self.ip)
        if route is None:
            self._reject("no_route")
            return
        target: TcpTarget = route.target
        if not ip_allowed(target.networks, self.ip_version, self.ip_value):
            self._reject("ip")
            return
        if target.max_connections > 0 and target.active >= target.max_connections:
            self._reject("limit")
            return
        target.active += 1
        self.target = target
        service = target.service
        backend: Backend | None = service.balancer.pick()
        if backend is None:
            log.warning("tcp entrypoint %s, router %s: service %s has no eligible backend",
                        self.server.name, target.router, getattr(service, "name", "?"))
            self.server.stats.upstream_errors += 1
            self._close()
            return
        backend.acquire()  # counted from the pick, so least-connections sees connects in progress
        self.backend = backend
        transport_cfg = service.transport
        self.idle_timeout = transport_cfg.tunnel_idle_timeout
        self.state = _CONNECT
        self.connect_task = self.loop.create_task(self._connect(backend, transport_cfg.connect_timeout))

    async def _connect(self, backend: Backend, timeout: float) -> None:
        try:
            async with deadline(timeout if timeout > 0 else None):
                await self.loop.create_connection(cast(Any, lambda: _Upstream(self)), backend.host, backend.port)
        except (OSError, TimeoutError) as exc:
            self.connect_task = None
            if self.upstream is not None or self.state == _CLOSED:
                return  # connected, then cut as the timeout fired, or the client left: connection_lost cleans up
            self._record(backend, True)
            target = self.target
            log.warning("tcp entrypoint %s, router %s: connect to %s failed: %s", self.server.name,
                        target.router if target is not None else "?", backend.url,
                        "timed out" if isinstance(exc, TimeoutError) else exc)
            self.server.stats.upstream_errors += 1
            self._release_backend()
            self._close()
            return
        self.connect_task = None

    def _record(self, backend: Backend, failed: bool) -> None:
        passive = backend.passive
        if passive is not None:
            passive.record(backend, failed, self.loop.time())

    # -- tunnel ------------------------------------------------------------------------------------------------
    def upstream_made(self, transport: asyncio.Transport) -> None:
        """The backend connection is open: flush what the client sent so far and start relaying."""
        backend = self.backend
        if self.state != _CONNECT or backend is None:
            transport.close()  # the client left while connecting
            return
        self.upstream = transport
        self.state = _RELAY
        self._record(backend, False)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        if self.pending:
            transport.writelines(self.pending)
            self.pending = []
            self.pending_bytes = 0
        if self.client_eof and transport.can_write_eof():
            transport.write_eof()
        if self.paused & _P_PENDING:
            self._resume_client(_P_PENDING)
        if self.idle_timeout > 0:
            self.last = self.loop.time()
            self.timer = self.loop.call_at(self.last + self.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _RELAY:
            self.last = self.loop.time()
            cast(asyncio.Transport, self.upstream).write(data)
        elif state == _PEEK:
            self.peeked += data
            hello = peek_hello(bytes(self.peeked))
            if hello is not NEED_MORE:
                self._end_peek(hello)
        elif state == _CONNECT:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes > HIGH_WATER:
                self._pause_client(_P_PENDING)

    def eof_received(self) -> bool:
        self.client_eof = True
        state = self.state
        if state == _PEEK:
            self._end_peek(None)  # the hello is incomplete: route as a connection without TLS
        elif state == _RELAY:
            upstream = cast(asyncio.Transport, self.upstream)
            if upstream.can_write_eof():
                upstream.write_eof()
            if self.upstream_eof:
                self._close()
        # an SSL transport closes after the peer's close_notify whatever we answer (and warns when asked not to)
        return self.server.ssl is None

    def upstream_data(self, data: bytes) -> None:
        transport = self.transport
        if self.state == _RELAY and transport is not None:
            self.last = self.loop.time()
            transport.write(data)

    def upstream_eof_received(self) -> None:
        self.upstream_eof = True
        transport = self.transport
        if transport is None or self.state != _RELAY:
            return
        if self.client_eof or not transport.can_write_eof():
            self._close()  # both directions ended, or a TLS client that cannot be half-closed
        else:
            transport.write_eof()

    def _idle_check(self) -> None:
        self.timer = None
        if self.state != _RELAY:
            return
        deadline = self.last + self.idle_timeout
        if self.loop.time() >= deadline:
            target = self.target
            log.info("tcp entrypoint %s, router %s: tunnel to %s idle for %gs, closed", self.server.name,
                     target.router if target is not None else "?",
                     self.backend.url if self.backend is not None else "?", self.idle_timeout)
            self.abort()  # a peer that stopped reading would keep a graceful close waiting forever
        else:
            self.timer = self.loop.call_at(deadline, self._idle_check)

    # -- flow control ------------------------------------------------------------------------------------------
    def _pause_client(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume_client(self, reason: int) -> None:
        was = self.paused
        self.paused = was & ~reason
        if was and not self.paused and self.transport is not None and self.state != _CLOSED:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            upstream.pause_reading()

    def resume_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and self.upstream_paused:
            self.upstream_paused = False
            upstream.resume_reading()

    def upstream_pause_writing(self) -> None:
        self._pause_client(_P_UPSTREAM)

    def upstream_resume_writing(self) -> None:
        self._resume_client(_P_UPSTREAM)

    # -- end ---------------------------------------------------------------------------------------------------
    def _close(self) -> None:
        """Close both sides after flushing what is buffered."""
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()

    def abort(self) -> None:
        """Cut both sides now (drain deadline, idle timeout)."""
        self.state = _CLOSED
        if self.connect_task is not None:
            self.connect_task.cancel()
        if self.transport is not None:
            self.transport.abort()
        if self.upstream is not None:
            self.upstream.abort()

    def _release_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
            self._release_backend()
        upstream = self.upstream
        if upstream is not None:
            if exc is not None:
                upstream.abort()
            else:
                upstream.close()
        target = self.target
        if target is not None:
            self.target = None
            target.active -= 1
        if self.admitted:
            self.admitted = False
            self.server.forget(self)

    def upstream_lost(self, exc: Exception | None) -> None:
        self._release_backend()
        transport = self.transport
        if transport is not None and self.upstream is not None:
            self.state = _CLOSED
            if exc is not None:
                transport.abort()  # a reset from the backend is passed on as a reset
            else:
                transport.close()


class _Upstream(asyncio.Protocol):
    """The backend side of a tunnel: every event is handed to the client's :class:`TcpConnection`."""

    def __init__(self, conn: TcpConnection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.upstream_made(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        self.conn.upstream_data(data)

    def eof_received(self) -> bool:
        self.conn.upstream_eof_received()
        return True

    def pause_writing(self) -> None:
        self.conn.upstream_pause_writing()

    def resume_writing(self) -> None:
        self.conn.upstream_resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.upstream_lost(exc)
