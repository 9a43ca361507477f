"""TCP and UDP entrypoints as the gateway manages them: bound once, their ``entry`` swapped by a reload (SPEC §9.5,
§9.6, §13.6), drained on stop — the same shape as :class:`~a3s_gateway.proxy.server.HttpServer`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..routing.tcp import TcpRouter
from .tcp import TcpServer, TcpStats
from .udp import UdpServer

if TYPE_CHECKING:
    import ssl


@dataclass(slots=True)
class TcpEntryRuntime:
    """One TCP entrypoint of a generation: its routes and the entrypoint filter (``tcp_allowed_ips``,
    ``max_connections``)."""

    name: str
    router: TcpRouter
    allowed_ips: tuple[str, ...] = ()
    max_connections: int = 0


@dataclass(slots=True)
class UdpEntryRuntime:
    """One UDP entrypoint of a generation: the service of its one router."""

    name: str
    service: Any
    session_timeout: float = 30.0
    max_sessions: int = 10000
    routers: list[str] = field(default_factory=list)


class TcpListener:
    """A TCP entrypoint's listener; setting ``entry`` applies a reload (open tunnels continue untouched)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, entry: TcpEntryRuntime, host: str, port: int,
                 ssl: ssl.SSLContext | None = None, sni_of: Any = None, certs: Any = None) -> None:
        self.host = host
        self.port = port
        self.certs = certs
        self.cert_watch: asyncio.Future[None] | None = None
        self.stats = TcpStats()
        self.server = TcpServer(loop, entry.name, entry.router, allowed_ips=entry.allowed_ips,
                                max_connections=entry.max_connections, ssl=ssl, sni_of=sni_of, stats=self.stats)
        self._entry = entry

    @property
    def entry(self) -> TcpEntryRuntime:
        return self._entry

    @entry.setter
    def entry(self, entry: TcpEntryRuntime) -> None:
        self._entry = entry
        self.server.router = entry.router
        self.server.set_filter(entry.allowed_ips, entry.max_connections)

    @property
    def connections(self) -> set[Any]:
        return self.server.connections

    async def start(self) -> None:
        await self.server.start(self.host, self.port)

    def bound_address(self) -> tuple[str, int]:
        return self.server.bound_address()

    def close_listener(self) -> None:
        self.server.close_listener()
        if self.cert_watch is not None:
            self.cert_watch.cancel()
            self.cert_watch = None

    async def drain(self, timeout: float) -> None:
        if self.cert_watch is not None:
            self.cert_watch.cancel()
            self.cert_watch = None
        await self.server.drain(timeout)


class UdpListener:
    """A UDP entrypoint's socket; setting ``entry`` points new sessions at the new service."""

    def __init__(self, loop: asyncio.AbstractEventLoop, entry: UdpEntryRuntime, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.certs = None
        self.server = UdpServer(loop, entry.name, entry.service, session_timeout=entry.session_timeout,
                                max_sessions=entry.max_sessions)
        self._entry = entry

    @property
    def entry(self) -> UdpEntryRuntime:
        return self._entry

    @entry.setter
    def entry(self, entry: UdpEntryRuntime) -> None:
        self._entry = entry
        self.server.service = entry.service
        self.server.session_timeout = entry.session_timeout
        self.server.max_sessions = entry.max_sessions

    @property
    def connections(self) -> dict[Any, Any]:
        return self.server.sessions

    async def start(self) -> None:
        await self.server.start(self.host, self.port)

    def bound_address(self) -> tuple[str, int]:
        return self.server.bound_address()

    def close_listener(self) -> None:
        self.server.close()

    async def drain(self, timeout: float) -> None:
        self.server.close()  # datagrams have no in-flight exchange to wait for
