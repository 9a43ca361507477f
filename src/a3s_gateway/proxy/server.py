"""HTTP listeners: bind (``SO_REUSEPORT``), track connections, drain on stop (SPEC §13.5)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from ..observability.log_limit import RateLimitedLog
from .http1 import HttpConnection, TimerWheel

if TYPE_CHECKING:
    from ssl import SSLContext

    from ..runtime import EntrypointRuntime


log = logging.getLogger("a3s_gateway.proxy")


class ConnectionRejections:
    """Connections an HTTP entrypoint closed right after accept because it had ``max_connections`` open (SPEC
    §3.1): counted for ``gateway_connections_rejected_total{reason="limit"}`` and logged at most once per 10 s,
    each line with the running count. One per entrypoint name, kept by the gateway across reloads."""

    __slots__ = ("_log", "entrypoint", "limit")

    def __init__(self, entrypoint: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.entrypoint = entrypoint
        self.limit = 0  # rejected at max_connections
        self._log = RateLimitedLog(log, clock=clock)

    def at_limit(self, max_connections: int) -> None:
        """One connection closed at ``max_connections``."""
        self.limit += 1
        self._log.warning("limit", "connection rejected: entrypoint at max_connections", fields={
            "entrypoint": self.entrypoint, "max_connections": max_connections, "rejected_total": self.limit,
        })

    def counts(self) -> dict[str, int]:
        """Rejections by reason, for the metric."""
        return {"limit": self.limit}


class HttpServer:
    """One HTTP entrypoint's listening sockets and live connections.

    ``entry`` is swapped by a reload; a connection reads it when a request starts, so every request routed after
    the swap uses the new generation while requests in progress finish on the old one.
    """

    #: connections closed at max_connections (None on the per-connection server of HTTP/2 streams)
    rejections: ConnectionRejections | None = None

    def __init__(
        self, loop: asyncio.AbstractEventLoop, entry: EntrypointRuntime, host: str, port: int,
        ssl: SSLContext | None = None, rejections: ConnectionRejections | None = None,
    ) -> None:
        self.loop = loop
        self.rejections = rejections if rejections is not None else ConnectionRejections(entry.name)
        self.ssl = ssl  # TLS termination (SPEC §10): the CertStore's context, certificate chosen by SNI
        self.entry = entry
        self.host = host
        self.port = port
        self.port_b = str(port).encode()
        self.connections: set[Any] = set()  # HttpConnection and http2.H2Protocol
        self.wheel = TimerWheel(loop)  # the connections' header, body and idle timeouts
        self.certs: Any = None  # the CertStore behind ``ssl``
        self.cert_watch: asyncio.Future[None] | None = None  # its file watcher (§10.3), stopped with the listener
        self._server: asyncio.base_events.Server | None = None
        # HTTP/2 connections closed for abuse (SPEC §9.1): (entrypoint, kind) -> count
        self.abuse: dict[tuple[str, str], int] = {}

    def take_over_h2(self, conn: HttpConnection, initial: bytes) -> None:
        """Hand an accepted connection to HTTP/2 (ALPN h2, or the h2c preface seen on a plain connection)."""
        from . import http2  # imported on first use: the h2 library costs ~30 ms of startup

        http2.take_over(self, conn, initial)

    async def start(self) -> None:
        """Bind the listener (raises OSError)."""
        reuse_port = hasattr(socket, "SO_REUSEPORT")
        self._server = await self.loop.create_server(
            cast(Any, lambda: HttpConnection(self)),
            self.host or None,
            self.port,
            reuse_port=reuse_port,
            backlog=2048,
            ssl=self.ssl,
        )
        bound = self.bound_address()
        self.port_b = str(bound[1]).encode()

    def bound_address(self) -> tuple[str, int]:
        """The actual (host, port) of the first listening socket."""
        assert self._server is not None
        sock = self._server.sockets[0]
        addr = sock.getsockname()
        return (self.host or str(addr[0]), int(addr[1]))

    def close_listener(self) -> None:
        """Stop accepting; existing connections are untouched."""
        if self._server is not None:
            self._server.close()
        if self.cert_watch is not None:
            self.cert_watch.cancel()
            self.cert_watch = None

    async def drain(self, timeout: float) -> None:
        """Close idle connections now, let busy ones finish within ``timeout``, then close the rest."""
        self.close_listener()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.drain_deadline()  # a request still waiting for a replica gets 503, anything else is cut
        self.connections.clear()
        self.wheel.close()
