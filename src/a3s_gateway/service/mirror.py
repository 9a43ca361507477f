"""Traffic mirroring (SPEC §7.7): sampled copies of a service's requests sent to a shadow service.

The copy never delays or affects the client: it leaves in a task of its own once the request (head and complete
body within ``max_body_bytes``) is known, goes to a backend picked by the shadow service's balancer on a connection
of its own, and its response is read and thrown away. At most ``max_in_flight`` copies run at once per service.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

from .._aio import cancel_and_wait, timeout

if TYPE_CHECKING:
    from ..config.model import MirrorConfig, TransportConfig

log = logging.getLogger("a3s_gateway.mirror")

_READ_LIMIT = 1 << 20  # bytes of a shadow response read before the connection is dropped


class ShadowService(Protocol):
    """What a mirror needs of its shadow service (a ``runtime.ServiceRuntime``; typed here so that service/ does not
    import the runtime that holds it)."""

    @property
    def balancer(self) -> Any: ...

    @property
    def transport(self) -> TransportConfig: ...


class MirrorCounts:
    """``gateway_mirror_requests_total{service,result}``; carried across reloads per service."""

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self.skipped = 0


class Mirror:
    """One service's mirror: deterministic sampling, a bound on copies in flight, the sending task."""

    def __init__(self, service: str, cfg: MirrorConfig, target: ShadowService, counts: MirrorCounts,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.percentage = cfg.percentage
        self.max_body_bytes = cfg.max_body_bytes
        self.max_in_flight = cfg.max_in_flight
        self.target = target
        self.counts = counts
        self.loop = loop
        self.n = 0  # requests of the service seen (sampling position)
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def sample(self) -> bool:
        """Request ``n`` is mirrored iff floor((n+1)·p/100) > floor(n·p/100): 5 % = every 20th, exactly."""
        n = self.n
        self.n = n + 1
        p = self.percentage
        return math.floor((n + 1) * p / 100.0) > math.floor(n * p / 100.0)

    def skip(self) -> None:
        self.counts.skipped += 1

    def send(self, head: bytes, body: list[bytes]) -> None:
        """Send one copy (``head`` is the upstream request head the primary got) without waiting for it."""
        if self.in_flight >= self.max_in_flight:
            self.counts.skipped += 1
            return
        backend = self.target.balancer.pick()
        if backend is None:
            self.counts.failed += 1
            return
        self.in_flight += 1
        task = self.loop.create_task(self._send(backend.host, backend.port, head, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, host: str, port: int, head: bytes, body: list[bytes]) -> None:
        # the copy asks for Connection: close, so its response ends at EOF and nothing is pooled
        request = head[:-2] + b"Connection: close\r\n\r\n"
        transport_cfg = self.target.transport
        writer: asyncio.StreamWriter | None = None
        try:
            async with timeout(transport_cfg.connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
            writer.writelines([request, *body])
            async with timeout(max(transport_cfg.response_header_timeout, 1.0)):
                await writer.drain()
                received = 0
                while received < _READ_LIMIT:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    received += len(chunk)
            self.counts.sent += 1
        except (OSError, TimeoutError) as e:
            self.counts.failed += 1
            log.debug("mirror copy of service %s to %s:%d failed: %s", self.service, host, port, e)
        finally:
            self.in_flight -= 1
            if writer is not None:
                writer.close()

    async def close(self) -> None:
        """Cancel copies still in flight (shutdown)."""
        await cancel_and_wait(list(self.tasks))
