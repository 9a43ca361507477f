"""HTTP listeners: bind (``SO_REUSEPORT``), track connections, drain on stop (SPEC §13.5)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any, cast

from .http1 import HttpConnection

if TYPE_CHECKING:
    from ssl import SSLContext

    from ..runtime import EntrypointRuntime


class HttpServer:
    """One HTTP entrypoint's listening sockets and live connections.

    ``entry`` is swapped by a reload; a connection reads it when a request starts, so every request routed after
    the swap uses the new generation while requests in progress finish on the old one.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, entry: EntrypointRuntime, host: str, port: int,
        ssl: SSLContext | None = None,
    ) -> None:
        self.loop = loop
        self.ssl = ssl  # TLS termination (SPEC §10): the CertStore's context, certificate chosen by SNI
        self.entry = entry
        self.host = host
        self.port = port
        self.port_b = str(port).encode()
        self.connections: set[HttpConnection] = set()
        self.certs: Any = None  # the CertStore behind ``ssl``
        self.cert_watch: asyncio.Future[None] | None = None  # its file watcher (§10.3), stopped with the listener
        self._server: asyncio.base_events.Server | None = None
        # HTTP/2 connections closed for abuse (SPEC §9.1): (entrypoint, kind) -> count; the rate-limited warning
        self.abuse: dict[tuple[str, str], int] = {}
        self.abuse_logged_at = -1e9
        self.abuse_log_pending = 0

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
