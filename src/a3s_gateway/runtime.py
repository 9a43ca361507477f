"""The Runtime snapshot (immutable per generation) and the State carried across reloads.

A Runtime holds what the data plane reads per request: per entrypoint the compiled router and connection limits,
per service its balancer and upstream pools. Pools are State: keyed by (service, backend URL) and handed from
one generation to the next when unchanged (ARCHITECTURE §1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .proxy.upstream import Pool
    from .routing.matchers import ClientIPMatcher
    from .routing.router import Router
    from .service.balancer import Backend, Balancer


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-entrypoint parsing limits and timeouts (SPEC §3.1)."""

    max_request_line_bytes: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    header_read_timeout: float = 30.0
    idle_timeout: float = 90.0
    max_connections: int = 0


@dataclass(frozen=True, slots=True)
class Transport:
    """Upstream transport settings of a service (SPEC §3.3 transport)."""

    connect_timeout: float = 5.0
    response_header_timeout: float = 300.0
    stream_idle_timeout: float = 300.0
    request_timeout: float = 0.0
    max_idle_connections_per_backend: int = 32
    idle_connection_timeout: float = 90.0


@dataclass(slots=True)
class ServiceRuntime:
    """One service: its balancer, its backends' pools and transport settings."""

    name: str
    balancer: Balancer
    pools: dict[str, Pool]
    transport: Transport
    pass_host_header: bool = True

    @property
    def backends(self) -> list[Backend]:
        return self.balancer.backends


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """What a matched HTTP route leads to (the ``target`` of a compiled ``Route``)."""

    router: str
    service: ServiceRuntime


@dataclass(slots=True)
class EntrypointRuntime:
    """One HTTP entrypoint of a generation."""

    name: str
    router: Router
    limits: Limits
    proto: bytes = b"http"
    trusted: ClientIPMatcher | None = None  # trusted_ips (SPEC §5.2)


@dataclass(slots=True)
class Runtime:
    """One generation: everything a request needs, built and validated before it is swapped in."""

    entrypoints: dict[str, EntrypointRuntime] = field(default_factory=dict)
    services: dict[str, ServiceRuntime] = field(default_factory=dict)
    generation: int = 1
    #: new weights for backends carried over from the previous generation, applied at the swap (compile.activate)
    weights: tuple[tuple[Backend, int], ...] = ()
