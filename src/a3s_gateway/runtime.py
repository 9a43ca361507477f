"""The Runtime snapshot (immutable per generation) and the State carried across reloads (ARCHITECTURE §1).

A Runtime holds what the data plane reads per request: per entrypoint the compiled router and connection limits,
per service its balancer and upstream pools. It is a plain data structure built by ``config/compile.py`` from the
configuration and references to live objects of the State; nothing in it is reassigned after the build.

The State owns every live object that outlives a generation: upstream pools, backend health and the health
checkers, middleware instances, scale targets, rollouts, per-route counters and mirror counters. A reload is
compile (pure, may fail, touches nothing running) → ``State.carry(old, new)`` → swap: ``carry`` applies what the new
generation changes in carried-over objects, makes the new generation's objects the State's and hands back what the
old generation used and the new one does not (``Retired``, closed by the caller).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .observability.log_limit import RateLimitedLog
from .service.health import HealthState
from .service.revision import RevisionSplit

log = logging.getLogger("a3s_gateway")

if TYPE_CHECKING:
    from .config.model import EntrypointConfig, MiddlewareConfig, ServiceConfig, TransportConfig
    from .middleware.chain import Chain, Middleware
    from .netaddr import IPSet
    from .observability.access_log import AccessLog
    from .observability.stats import RouteStats
    from .observability.tracing import Tracer
    from .routing.router import Router
    from .service.balancer import Backend, Balancer
    from .service.health import ActiveChecker, PassiveHealth
    from .service.mirror import Mirror, MirrorCounts
    from .service.sticky import Sticky


class UpstreamPool(Protocol):
    """What the State needs of an upstream pool (proxy.upstream.Pool): its backend, and closing it."""

    @property
    def backend(self) -> Backend: ...

    def close(self) -> None: ...


class Scaled(Protocol):
    """What the State needs of a scale target (scaling.target.ScaleTarget); the runtime never imports scaling/."""

    service: str
    backends: list[Backend]
    pools: Any
    checker: ActiveChecker | None
    passive: PassiveHealth | None
    balancer: Any

    @property
    def buffered(self) -> bool: ...  # requests of the service that find no backend wait for it

    def is_ready(self, backend: Backend) -> bool: ...

    def start(self) -> None: ...

    def close(self) -> Coroutine[Any, Any, None]: ...

    def as_dict(self) -> dict[str, Any]: ...  # the admin API's view


class Rollout(Protocol):
    """What the State needs of a rollout (scaling.rollout.Rollout)."""

    state: str
    window: Any

    @property
    def cfg(self) -> Any: ...

    def adopt(self, revisions: list[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class ServiceRuntime:
    """One service of a generation: its balancer, its backends' pools and transport settings."""

    name: str
    balancer: Balancer | RevisionSplit
    #: pools by backend URL; a scaled service's dict is its scale targets' (replicas join and leave it at run time)
    pools: Mapping[str, Any]
    transport: TransportConfig  # the service's transport block, read as is on the request path
    pass_host_header: bool = True
    checker: ActiveChecker | None = None  # active health checks (§7.3), started when the generation is swapped in
    passive: PassiveHealth | None = None  # passive outlier ejection (§7.4)
    sticky: Sticky | None = None  # cookie affinity (§7.5)
    failover: ServiceRuntime | None = None  # used when no backend is eligible (§7.6)
    mirror: Mirror | None = None  # shadow copies (§7.7)
    targets: tuple[Scaled, ...] = ()  # scale targets (§8.1): the service or its revisions
    #: where a request that finds no backend waits (§8.4): the ScaleTarget (``hold_target()``), or the
    #: RevisionSplit that names the revision's target; None when no target of the service buffers
    scaling: Any = None
    rollout: Any = None  # the Rollout of its revisions (§8.7), None without a rollout block
    scraper: Any = None  # model-server metrics of its ``inference`` pools (§16.5; service/inference.Scraper)
    affinity_bytes: int = 0  # prompt-prefix bytes hashed for affinity (§16.5), 0: none

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
    queued_keepalive: float = 0.0  # ``ai.queued_keepalive`` of the router (§16.3), 0: off
    #: ``ai { stream_usage = true }`` (§16.2); the route's ``inspect`` (routing/router.py) is set with it, with a
    #: token-limit middleware and for an ``inference`` service
    stream_usage: bool = False


@dataclass(frozen=True, slots=True)
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
    #: ACME HTTP-01 answers (``State.acme_tokens``) on a plain HTTP entrypoint while an ACME entrypoint uses
    #: http-01 (SPEC §10.4); None: ``/.well-known/acme-challenge/`` is routed like any path
    challenges: dict[bytes, bytes] | None = None
    #: per-request warnings (upstream failures, SPEC §11.5): one line per service and kind every 10 s
    errors: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(logging.getLogger("a3s_gateway.proxy")))


@dataclass(frozen=True, slots=True)
class Runtime:
    """One generation: everything a request needs, built and validated before it is swapped in.

    The tables after ``l4`` name the State's live objects this generation uses (``State.carry`` adopts them).
    """

    entrypoints: Mapping[str, EntrypointRuntime] = field(default_factory=dict)
    services: Mapping[str, ServiceRuntime] = field(default_factory=dict)
    generation: int = 1
    #: TCP and UDP entrypoints (proxy.listeners.TcpEntryRuntime / UdpEntryRuntime) by name
    l4: Mapping[str, Any] = field(default_factory=dict)
    #: counters per (router, service), including routers that are gone (Prometheus counters stay monotonic)
    route_stats: Mapping[tuple[str, str], RouteStats] = field(default_factory=dict)
    #: mirror counters by service, including services that are gone
    mirror_counts: Mapping[str, MirrorCounts] = field(default_factory=dict)
    #: middleware instances by (router, middleware name) with the configuration they were built from
    middlewares: Mapping[tuple[str, str], tuple[MiddlewareConfig, Middleware]] = field(default_factory=dict)
    #: scale targets by name with the key they were built from
    scale_targets: Mapping[str, tuple[object, Scaled]] = field(default_factory=dict)
    #: each service's configuration (what its health checker and passive health were built for)
    service_configs: Mapping[str, ServiceConfig] = field(default_factory=dict)
    #: new weights for backends carried over from the previous generation, applied by ``State.carry``
    weights: tuple[tuple[Backend, int], ...] = ()


@dataclass(slots=True)
class Retired:
    """What the old generation used and the new one does not; the caller runs ``close()`` in the background."""

    middlewares: list[Middleware] = field(default_factory=list)
    targets: list[Scaled] = field(default_factory=list)  # their replicas stop (a new target of the name starts its own)
    checkers: list[ActiveChecker] = field(default_factory=list)
    passives: list[PassiveHealth] = field(default_factory=list)
    mirrors: list[Mirror] = field(default_factory=list)
    scrapers: list[Any] = field(default_factory=list)  # model-server metrics scrapers (§16.5)

    async def close(self) -> None:
        """Stop the mirrors and health checks, close the middleware instances, stop the scale targets."""
        closing: list[Awaitable[None]] = [m.close() for m in self.mirrors]
        closing += [s.close() for s in self.scrapers]
        closing += [c.close() for c in self.checkers]
        closing += [p.close() for p in self.passives]
        closing += [mw.close() for mw in self.middlewares]
        closing += [t.close() for t in self.targets]
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, Exception):
                log.warning("closing an object of a retired generation failed: %r", result)


class State:
    """The live objects carried from one generation to the next, keyed by stable identity (SPEC §13.6 #5).

    ``config/compile.py`` reads these tables to reuse the objects of unchanged items; only ``carry`` changes them.
    """

    def __init__(self) -> None:
        #: backend health by (service, URL)
        self.health = HealthState()
        #: each service's pools by URL with the transport block they were opened with
        self.pools: dict[str, tuple[TransportConfig, Mapping[str, UpstreamPool]]] = {}
        #: each service's configuration with its active checker and passive health (kept while it is unchanged)
        self.checks: dict[str, tuple[ServiceConfig, ActiveChecker | None, PassiveHealth | None]] = {}
        #: middleware instances by (router, middleware name) with their configuration
        self.middlewares: dict[tuple[str, str], tuple[MiddlewareConfig, Middleware]] = {}
        #: scale targets by name with the key they were built from
        self.scale_targets: dict[str, tuple[object, Scaled]] = {}
        #: rollouts by service (kept while the rollout block is unchanged)
        self.rollouts: dict[str, Rollout] = {}
        #: the admin listener's middleware instances by ("@admin", name) with their configuration
        self.admin_middlewares: dict[tuple[str, str], tuple[MiddlewareConfig, Middleware]] = {}
        #: counters by (router, service) and mirror counters by service: never dropped (monotonic metrics)
        self.route_stats: dict[tuple[str, str], RouteStats] = {}
        self.mirror_counts: dict[str, MirrorCounts] = {}
        #: ACME HTTP-01 answers (token → key authorization) every plain HTTP entrypoint serves (SPEC §10.4); one
        #: table for the process's lifetime, filled by the ACME manager (or, in a worker, by its supervisor)
        self.acme_tokens: dict[bytes, bytes] = {}
        #: ACME TLS-ALPN-01 challenge certificates (domain → cert PEM, key PEM) the ACME TLS entrypoints answer
        #: validation handshakes with (ALPN acme-tls/1); filled like acme_tokens
        self.acme_alpn: dict[str, tuple[bytes, bytes]] = {}

    def carry(self, old: Runtime | None, new: Runtime) -> Retired:
        """Hand the live objects over from ``old`` (None at start) to ``new``, which is about to be swapped in.

        Applies what ``new`` changes in carried-over objects (weights, passive health, rollouts, scale targets),
        makes ``new``'s objects the State's, closes the pools ``new`` no longer uses and returns the rest of what it
        no longer uses. Never called for a build that failed: that build changed nothing here.
        """
        for backend, weight in new.weights:
            backend.weight = weight
        for svc in new.services.values():
            for backend in svc.backends:
                backend.passive = svc.passive  # the data plane reports each attempt's outcome to it
            rollout = svc.rollout
            if rollout is not None and isinstance(svc.balancer, RevisionSplit):
                rollout.adopt(svc.balancer.revisions)
                watch_rollout(rollout, svc.balancer)
            for target in svc.targets:
                # a carried-over target serves the new generation: its pools, checkers and balancer are the new ones
                target.pools = svc.pools
                target.checker = svc.checker
                target.passive = svc.passive
                target.balancer = _balancer_of(svc, target)
                if svc.checker is not None:
                    for backend in target.backends:
                        if target.is_ready(backend):
                            svc.checker.add(backend)
        retired = Retired()
        if old is not None:
            kept = {id(p) for s in new.services.values() for p in s.pools.values()}
            for svc in old.services.values():
                for pool in svc.pools.values():
                    if id(pool) not in kept:
                        pool.close()
            used = {id(mw) for _, mw in new.middlewares.values()}
            retired.middlewares = [mw for _, mw in old.middlewares.values() if id(mw) not in used]
            targets = {id(t) for _, t in new.scale_targets.values()}
            retired.targets = [t for _, t in old.scale_targets.values() if id(t) not in targets]
            checkers = {id(s.checker) for s in new.services.values()}
            passives = {id(s.passive) for s in new.services.values()}
            for svc in old.services.values():
                if svc.checker is not None and id(svc.checker) not in checkers:
                    retired.checkers.append(svc.checker)
                if svc.passive is not None and id(svc.passive) not in passives:
                    retired.passives.append(svc.passive)
                if svc.mirror is not None:
                    retired.mirrors.append(svc.mirror)  # a mirror belongs to one generation
                if svc.scraper is not None:
                    retired.scrapers.append(svc.scraper)  # so does a scraper (the readings stay on the backends)
        self.pools = {name: (svc.transport, svc.pools) for name, svc in new.services.items()}
        self.checks = {name: (new.service_configs[name], svc.checker, svc.passive)
                       for name, svc in new.services.items() if name in new.service_configs}
        self.middlewares = dict(new.middlewares)
        self.scale_targets = dict(new.scale_targets)
        self.rollouts = {name: svc.rollout for name, svc in new.services.items() if svc.rollout is not None}
        self.route_stats.update(new.route_stats)
        self.mirror_counts.update(new.mirror_counts)
        self.health.forget_except({(name, b.url) for name, svc in new.services.items() for b in svc.backends})
        return retired


    def carry_admin(self, new: dict[tuple[str, str], tuple[MiddlewareConfig, Middleware]]) -> list[Middleware]:
        """Make ``new`` the admin listener's middleware instances; return the old ones it does not use."""
        used = {id(mw) for _, mw in new.values()}
        retired = [mw for _, mw in self.admin_middlewares.values() if id(mw) not in used]
        self.admin_middlewares = new
        return retired

    @staticmethod
    def start(runtime: Runtime, control: bool = True) -> None:
        """Start the scale targets, active checkers and passive re-admission of a generation that was swapped in
        (objects carried over run already: starting them again does nothing). Without ``control`` (a worker
        process, SPEC §13.4) nothing starts: the supervisor probes, ejects, re-admits, scales and evaluates."""
        for svc in runtime.services.values():
            if control:
                for target in svc.targets:
                    target.start()
                if svc.checker is not None:
                    svc.checker.start()
            if svc.passive is not None and control:
                svc.passive.start()
            if svc.scraper is not None and control:
                svc.scraper.start()

    def close(self, runtime: Runtime | None) -> Retired:
        """At shutdown: close every pool now; return the rest of the running generation's objects to close."""
        for _, pools in self.pools.values():
            for pool in pools.values():
                pool.close()
        retired = Retired(middlewares=[mw for _, mw in [*self.middlewares.values(), *self.admin_middlewares.values()]],
                          targets=[t for _, t in self.scale_targets.values()])
        for _, checker, passive in self.checks.values():
            if checker is not None:
                retired.checkers.append(checker)
            if passive is not None:
                retired.passives.append(passive)
        if runtime is not None:
            retired.mirrors = [svc.mirror for svc in runtime.services.values() if svc.mirror is not None]
            retired.scrapers = [svc.scraper for svc in runtime.services.values() if svc.scraper is not None]
        return retired


def watch_rollout(rollout: Rollout, split: RevisionSplit) -> None:
    """Point the data plane of the rollout's ``to`` revision at its window while it progresses (§8.7)."""
    window = rollout.window if rollout.state == "progressing" else None
    for revision in split.revisions:
        for backend in revision.backends:
            backend.window = window if revision.name == rollout.cfg.to else None


def _balancer_of(svc: ServiceRuntime, target: Scaled) -> object:
    split = svc.balancer
    if isinstance(split, RevisionSplit):
        for revision in split.revisions:
            if revision.balancer.backends is target.backends:
                revision.target = target
                return revision.balancer
    return split
