"""UDP entrypoints (SPEC §9.6): per-client sessions relayed to a backend picked by the service's balancer.

The entrypoint socket receives every client datagram. A session, keyed by the client address, owns one connected
upstream socket (``create_datagram_endpoint(remote_addr=...)``), so the backend's answers arrive on the session
and go back to the client from the entrypoint socket. A session ends after ``session_timeout`` seconds without a
datagram either way (one timer handle per session, re-armed lazily from the last activity time). Datagrams are
relayed unchanged; memory is bounded: a few datagrams wait while a session's socket opens, and datagrams are
dropped (and counted) while a socket's write buffer is above :data:`MAX_BUFFERED`.

Interpreted (not compiled): one dict lookup and one ``sendto`` per datagram; not profiled yet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, Final, Protocol, cast

from ..service.balancer import Backend

log: Final = logging.getLogger("a3s_gateway.proxy.udp")

MAX_PENDING: Final = 64  # datagrams held per session while its upstream socket opens
MAX_BUFFERED: Final = 1 << 20  # bytes a socket may hold unsent before further datagrams are dropped

Address = Any  # (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6


class DatagramSocket(Protocol):
    """What is used of a datagram transport; ``get_write_buffer_size`` exists on the stdlib and uvloop transports
    though typeshed declares it only for write transports."""

    def sendto(self, data: bytes, addr: Address = None, /) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def get_extra_info(self, name: str, default: Any = None, /) -> Any: ...
    def close(self) -> None: ...


class UdpSession(asyncio.DatagramProtocol):
    """One client's session: its backend, its connected upstream socket, its idle timer."""

    def __init__(self, server: UdpServer, client: Address, backend: Backend, now: float) -> None:
        self.server = server
        self.client = client
        self.backend = backend
        self.transport: DatagramSocket | None = None
        self.pending: list[bytes] = []
        self.last = now  # loop time of the last datagram either way
        self.answered = False  # the backend has answered at least once (a passive-health success)
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def send(self, data: bytes, now: float) -> None:
        """A client datagram: to the backend, or held while the upstream socket opens."""
        self.last = now
        transport = self.transport
        if transport is None:
            if len(self.pending) < MAX_PENDING:
                self.pending.append(data)
            else:
                self.server.dropped += 1
        elif transport.get_write_buffer_size() > MAX_BUFFERED:
            self.server.dropped += 1
        else:
            transport.sendto(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(DatagramSocket, transport)
        if self.closed:
            t.close()
            return
        self.transport = t
        pending, self.pending = self.pending, []
        for data in pending:
            t.sendto(data)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if self.closed:
            return
        server = self.server
        self.last = server.loop.time()
        if not self.answered:
            self.answered = True
            self.record(False)
        listener = server.transport
        if listener is None:
            return
        if listener.get_write_buffer_size() > MAX_BUFFERED:
            server.dropped += 1
        else:
            listener.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):  # ICMP port unreachable: nothing listens on the backend
            self.record(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def record(self, failed: bool) -> None:
        """One outcome for passive health (§7.4) of the session's backend."""
        passive = self.backend.passive
        if passive is not None:
            passive.record(self.backend, failed, self.server.loop.time())

    def expire_check(self) -> None:
        """Timer callback: end the session when it has been idle long enough, else re-arm."""
        self.timer = None
        if self.closed:
            return
        server = self.server
        deadline = self.last + server.session_timeout
        if server.loop.time() >= deadline:
            self.close()
        else:
            self.timer = server.loop.call_at(deadline, self.expire_check)

    def close(self) -> None:
        """End the session: close its socket, forget it, release its backend. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.pending = []
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.transport is not None:
            self.transport.close()
        server = self.server
        if server.sessions.get(self.client) is self:
            del server.sessions[self.client]
        self.backend.release()


class _Listener(asyncio.DatagramProtocol):
    """The entrypoint socket's protocol."""

    def __init__(self, server: UdpServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.server.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp entrypoint %s: %s", self.server.name, exc)


class UdpServer:
    """One UDP entrypoint: its socket and its sessions.

    ``service`` (``.balancer.pick()``) is replaced on reload; a session keeps the backend it was created with.
    ``max_sessions`` 0 means unlimited. ``dropped`` counts client datagrams that found no room (session limit,
    no eligible backend, full buffers).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, name: str, service: Any, *, session_timeout: float, max_sessions: int
    ) -> None:
        self.loop = loop
        self.name = name
        self.service = service
        self.session_timeout = session_timeout
        self.max_sessions = max_sessions
        self.sessions: dict[Address, UdpSession] = {}
        self.dropped = 0
        self.transport: DatagramSocket | None = None

    async def start(self, host: str, port: int) -> None:
        """Bind the entrypoint socket (raises OSError)."""
        # SO_REUSEPORT as the TCP listeners: worker processes bind the same port and the kernel hashes each client's
        # address to one of them, so a client's datagrams keep reaching the worker that holds its session
        transport, _ = await self.loop.create_datagram_endpoint(
            cast(Any, lambda: _Listener(self)), local_addr=(host or "0.0.0.0", port),
            reuse_port=hasattr(socket, "SO_REUSEPORT"),
        )
        self.transport = cast(DatagramSocket, transport)

    def bound_address(self) -> tuple[str, int]:
        """The actual (host, port) of the entrypoint socket."""
        assert self.transport is not None
        addr = self.transport.get_extra_info("sockname")
        return (str(addr[0]), int(addr[1]))

    def close(self) -> None:
        """Close the entrypoint socket and end every session."""
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        for session in list(self.sessions.values()):
            session.close()

    def purge_expired(self, now: float) -> int:
        """End the sessions idle for ``session_timeout`` at time ``now``; returns how many ended."""
        timeout = self.session_timeout
        expired = [s for s in self.sessions.values() if now - s.last >= timeout]
        for session in expired:
            session.close()
        return len(expired)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        """A client datagram: to its session, or to a new session when there is room."""
        now = self.loop.time()
        session = self.sessions.get(addr)
        if session is not None:
            session.send(data, now)
            return
        limit = self.max_sessions
        if limit > 0 and len(self.sessions) >= limit:
            self.purge_expired(now)  # timers may lag behind a burst of new clients
            if len(self.sessions) >= limit:
                self.dropped += 1
                return
        service = self.service
        backend: Backend | None = service.balancer.pick()
        if backend is None:
            log.warning("udp entrypoint %s: service %s has no eligible backend", self.name,
                        getattr(service, "name", "?"))
            self.dropped += 1
            return
        backend.acquire()  # a session counts as one connection for least-connections
        session = UdpSession(self, addr, backend, now)
        session.pending.append(data)
        self.sessions[addr] = session
        session.task = self.loop.create_task(self._open(session))
        if self.session_timeout > 0:
            session.timer = self.loop.call_at(now + self.session_timeout, session.expire_check)

    async def _open(self, session: UdpSession) -> None:
        backend = session.backend
        try:
            await self.loop.create_datagram_endpoint(
                cast(Any, lambda: session), remote_addr=(backend.host, backend.port)
            )
        except OSError as exc:
            session.task = None
            log.warning("udp entrypoint %s: cannot open a socket to %s: %s", self.name, backend.url, exc)
            session.record(True)
            self.dropped += len(session.pending)
            session.close()
            return
        session.task = None
