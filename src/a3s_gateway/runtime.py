"""The Runtime snapshot (immutable per generation) and the State carried across reloads.

A Runtime holds what the data plane reads per request: per entrypoint the compiled router and connection limits,
per service its balancer and upstream pools. Pools are State: keyed by (service, backend URL) and handed from
one generation to the next when unchanged (ARCHITECTURE §1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .observability.log_limit import RateLimitedLog

if TYPE_CHECKING:
    from .config.model import EntrypointConfig, MiddlewareConfig, TransportConfig
    from .middleware.chain import Chain, Middleware
    from .netaddr import IPSet
    from .observability.access_log import AccessLog
    from .observability.stats import RouteStats
    from .observability.tracing import Tracer
    from .proxy.upstream import Pool
    from .routing.router import Router
    from .scaling.target import ScaleTarget
    from .service.balancer import Backend, Balancer
    from .service.health import ActiveChecker, PassiveHealth
    from .service.mirror import Mirror, MirrorCounts
    from .service.revision import RevisionSplit
    from .service.sticky import Sticky


@dataclass(slots=True)
class ServiceRuntime:
    """One service: its balancer, its backends' pools and transport settings."""

    name: str
    balancer: Balancer | RevisionSplit
    pools: dict[str, Pool]
    transport: TransportConfig  # the service's transport block, read as is on the request path
    pass_host_header: bool = True
    checker: ActiveChecker | None = None  # active health checks (§7.3), started when the generation is swapped in
    passive: PassiveHealth | None = None  # passive outlier ejection (§7.4)
    sticky: Sticky | None = None  # cookie affinity (§7.5)
    failover: ServiceRuntime | None = None  # used when no backend is eligible (§7.6)
    mirror: Mirror | None = None  # shadow copies (§7.7)
    targets: list[ScaleTarget] = field(default_factory=list)  # scale targets (§8.1): the service or its revisions
    #: where a request that finds no backend waits (§8.4): the ScaleTarget (``hold_target()``), or the
    #: RevisionSplit that names the revision's target; None when no target of the service buffers
    scaling: Any = None
    rollout: Any = None  # the Rollout of its revisions (§8.7), None without a rollout block

    @property
    def backends(self) -> list[Backend]:
        return self.balancer.backends


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """What a matched HTTP route leads to (the ``target`` of a compiled ``Route``)."""

    router: str
    service: ServiceRuntime
    stats: RouteStats  # counters of (router, service), carried across reloads
    chain: Chain | None = None  # the router's middlewares (None: none, the proxy's fast path)


@dataclass(slots=True)
class EntrypointRuntime:
    """One HTTP entrypoint of a generation."""

    name: str
    router: Router
    limits: EntrypointConfig  # parsing limits and timeouts (SPEC §3.1), read as is on the request path
    proto: bytes = b"http"
    trusted: IPSet | None = None  # trusted_ips (SPEC §5.2)
    unmatched: RouteStats | None = None  # counters of requests no route matched (router="", service="")
    access_log: AccessLog | None = None
    tracer: Tracer | None = None
    #: the request path needs the wall-clock start time (access log or span export)
    need_wall: bool = False
    #: ``redirect`` (SPEC §3.1): (307 or 308, b":<port>" of the target entrypoint or b"" for 443); None: routed
    redirect: tuple[int, bytes] | None = None
    #: per-request warnings (upstream failures, SPEC §11.5): one line per service and kind every 10 s
    errors: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(logging.getLogger("a3s_gateway.proxy")))


@dataclass(slots=True)
class Runtime:
    """One generation: everything a request needs, built and validated before it is swapped in."""

    entrypoints: dict[str, EntrypointRuntime] = field(default_factory=dict)
    services: dict[str, ServiceRuntime] = field(default_factory=dict)
    generation: int = 1
    #: counters per (router, service), including routers that are gone (Prometheus counters stay monotonic)
    route_stats: dict[tuple[str, str], RouteStats] = field(default_factory=dict)
    #: mirror counters by service, carried across reloads
    mirror_counts: dict[str, MirrorCounts] = field(default_factory=dict)
    #: middleware instances by (router, middleware name), carried across reloads while their configuration is equal
    middlewares: dict[tuple[str, str], tuple[MiddlewareConfig, Middleware]] = field(default_factory=dict)
    #: new weights for backends carried over from the previous generation, applied at the swap (compile.activate)
    weights: tuple[tuple[Backend, int], ...] = ()
    #: TCP and UDP entrypoints (proxy.listeners.TcpEntryRuntime / UdpEntryRuntime) by name
    l4: dict[str, Any] = field(default_factory=dict)
    #: scale targets by name with the key they were built from; carried over while the key is equal
    scale_targets: dict[str, tuple[object, ScaleTarget]] = field(default_factory=dict)
