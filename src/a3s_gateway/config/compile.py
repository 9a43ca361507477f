"""Configuration model -> Runtime (ARCHITECTURE §1): routers compiled per entrypoint, balancers, pools.

The only module of ``config/`` that imports data-plane modules. State (upstream pools) is taken over from the
previous Runtime for unchanged (service, backend URL) pairs.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from ..errors import StartupError
from ..middleware import catalog
from ..netaddr import IPSet
from ..observability.stats import RouteStats
from ..proxy.listeners import TcpEntryRuntime, UdpEntryRuntime
from ..proxy.tcp import TcpTarget
from ..proxy.upstream import Pool
from ..routing import rules
from ..routing.router import Route, Router
from ..routing.tcp import TcpRoute, TcpRouter
from ..runtime import EntrypointRuntime, RouteTarget, Runtime, ServiceRuntime, State
from ..scaling.rollout import Rollout
from ..scaling.target import ScaleTarget
from ..service.balancer import Backend, Balancer, CappedBalancer, InferenceBalancer, make_balancer
from ..service.health import ActiveChecker, HealthState, PassiveHealth
from ..service.inference import Scraper
from ..service.mirror import Mirror, MirrorCounts
from ..service.revision import Revision, RevisionSplit
from ..service.sticky import Sticky

if TYPE_CHECKING:
    from ..middleware.chain import Middleware
    from ..observability.access_log import AccessLog
    from ..observability.tracing import Tracer
    from .model import GatewayConfig, MiddlewareConfig, RedirectConfig, ScalingConfig, ServiceConfig

#: features of SPEC that this build runs; anything else the configuration explicitly uses is refused at start
#: with "not supported yet" (SPEC §13.3) until its issue lands.
SUPPORTED_FEATURES: frozenset[str] = frozenset(
    {"max_connections", "trusted_ips", "providers.file.watch", "providers.file.directory", "providers.dns",
     "providers.discovery", "providers.kubernetes", "admin", "access_log",
     "tracing", "admin.middlewares", "health_check", "passive health", "sticky", "failover", "mirror", "revisions",
     "scaling", "executor process", "executor static", "executor box", "executor kubernetes", "rollout",
     "tls", "redirect", "tcp entrypoint", "udp entrypoint", "tcp_allowed_ips", "middleware tcp-filter", "http2",
     "h2c backend", "https backend", "transport tls", "workers", "acme"}
)


def supported_features() -> frozenset[str]:
    """SUPPORTED_FEATURES plus ``middleware <type>`` for every middleware type this build implements."""
    return SUPPORTED_FEATURES | {f"middleware {kind}" for kind in catalog.implemented()}


def unsupported_features(config: GatewayConfig) -> list[str]:
    """The explicitly used features this build cannot run, in a stable order. Only the middleware types the
    configuration uses are imported (start-up time: some pull in large libraries)."""
    missing = []
    for feature in config.explicit:
        if feature in SUPPORTED_FEATURES:
            continue
        if feature.startswith("middleware ") and catalog.is_implemented(feature[len("middleware "):]):
            continue
        missing.append(feature)
    return sorted(missing)


def check_supported(config: GatewayConfig) -> None:
    """Raise StartupError naming every explicitly used feature this build does not run."""
    missing = unsupported_features(config)
    if missing:
        raise StartupError("not supported yet: " + ", ".join(missing))


def build_runtime(
    config: GatewayConfig,
    loop: asyncio.AbstractEventLoop,
    state: State,
    generation: int = 1,
    *,
    access_log: AccessLog | None = None,
    tracer: Tracer | None = None,
) -> Runtime:
    """Compile ``config`` into a complete Runtime, reusing the State's live objects of unchanged items.

    Nothing of ``state`` is changed here: a build that is never swapped in leaves the running generation exactly as
    it was (SPEC §13.6 guarantee 1). ``State.carry`` hands the objects over at the swap (new weights of carried-over
    backends wait in ``Runtime.weights`` until then).
    """
    stats = dict(state.route_stats)
    middlewares: dict[tuple[str, str], tuple[MiddlewareConfig, Middleware]] = {}
    chains = {
        name: catalog.compile_chain(name, router.middlewares, config.middlewares, state.middlewares, middlewares)
        for name, router in config.routers.items()
        if router.protocol == "http"
    }

    def stats_of(router: str, service: str) -> RouteStats:
        found = stats.get((router, service))
        if found is None:
            found = stats[(router, service)] = RouteStats(router, service)
        return found

    unmatched = stats_of("", "")
    need_wall = access_log is not None or (tracer is not None and tracer.exporting)
    parts: dict[str, dict[str, Any]] = {}  # the fields of each service's ServiceRuntime but failover and mirror
    weights: list[tuple[Backend, int]] = []
    targets: dict[str, tuple[object, ScaleTarget]] = {}
    for name, svc in config.services.items():
        parts[name] = _service_parts(name, svc, loop, state, weights, targets)

    mirror_counts = dict(state.mirror_counts)
    services: dict[str, ServiceRuntime] = {}

    def service(name: str) -> ServiceRuntime:
        """The ServiceRuntime of ``name``, its failover's first (validation rejected failover cycles)."""
        found = services.get(name)
        if found is not None:
            return found
        svc = config.services[name]
        mirror = None
        if svc.mirror is not None:
            counts = mirror_counts.get(name)
            if counts is None:
                counts = mirror_counts[name] = MirrorCounts()
            # the shadow service is looked up when a copy leaves: mirrors may point at each other
            mirror = Mirror(name, svc.mirror, services, counts, loop)
        failover = service(svc.failover.service) if svc.failover is not None else None
        found = services[name] = ServiceRuntime(name=name, failover=failover, mirror=mirror, **parts[name])
        return found

    for name in config.services:
        service(name)

    entrypoints: dict[str, EntrypointRuntime] = {}
    l4: dict[str, TcpEntryRuntime | UdpEntryRuntime] = {}
    # ACME http-01 (SPEC §10.4): every plain HTTP entrypoint answers the challenges from the State's token table
    http01 = any(ep.tls is not None and ep.tls.acme and ep.tls.challenge == "http-01"
                 for ep in config.entrypoints.values())
    for ep_name, ep in config.entrypoints.items():
        if ep.protocol != "http":
            l4[ep_name] = _l4_entry(config, ep_name, services)
            continue
        routes: list[Route] = []
        for r_name, router in config.routers.items():
            if router.protocol != "http" or (router.entrypoints and ep_name not in router.entrypoints):
                continue
            rule = router.rule or ""  # validation guarantees a rule on HTTP routers
            node = rules.check_rule(rule, "http")
            chain = chains[r_name]
            stream_usage = router.ai is not None and router.ai.stream_usage
            # the route reads the request body first (§16.1): for stream_usage, a token-limit, an inference service
            inspect = (stream_usage or (chain is not None and chain.accounting != ())
                       or services[router.service].scraper is not None)
            routes.append(
                Route(r_name, rule, router.effective_priority, rules.compile_rule(node),
                      RouteTarget(r_name, services[router.service], stats_of(r_name, router.service), chain,
                                  router.ai.queued_keepalive if router.ai is not None else 0.0, stream_usage),
                      inspect)
            )
        entrypoints[ep_name] = EntrypointRuntime(
            name=ep_name,
            router=Router(routes),
            limits=ep,
            proto=b"https" if ep.tls is not None else b"http",
            trusted=IPSet(list(ep.trusted_ips)) if ep.trusted_ips else None,
            unmatched=unmatched,
            access_log=access_log,
            tracer=tracer,
            need_wall=need_wall,
            redirect=_redirect(config, ep.redirect) if ep.redirect is not None else None,
            challenges=state.acme_tokens if http01 and ep.tls is None else None,
        )
    return Runtime(entrypoints=entrypoints, services=services, generation=generation, l4=l4, route_stats=stats,
                   mirror_counts=mirror_counts, middlewares=middlewares, scale_targets=targets,
                   service_configs=dict(config.services), weights=tuple(weights))


def _service_parts(
    name: str, svc: ServiceConfig, loop: asyncio.AbstractEventLoop, state: State,
    weights: list[tuple[Backend, int]], targets: dict[str, tuple[object, ScaleTarget]],
) -> dict[str, Any]:
    """The fields of service ``name``'s ServiceRuntime but failover and mirror; its scale targets go to
    ``targets``, new weights of its carried-over backends to ``weights``."""
    transport = svc.transport
    carried_pools = state.pools.get(name)
    old_pools = carried_pools[1] if carried_pools is not None and carried_pools[0] == transport else {}
    backends: list[Backend] = []
    pools: dict[str, Any] = {}
    lb = svc.load_balancer
    inf = lb.inference
    # plain services have one group of servers; with revisions (§8.6) each revision is a group of its own
    groups = [(r.name, r.servers, r.strategy) for r in svc.revisions] or [("", lb.servers, lb.strategy)]
    health = state.health
    revisions: list[Revision] = []
    checked: list[Backend] = []  # backends the active checker starts with (replicas join it when ready)
    group_balancers: list[Balancer] = []
    mine: list[ScaleTarget] = []
    for revision_name, servers, strategy in groups:
        group: list[Backend] = []
        if svc.scaling is not None:
            tname = f"{name}-{revision_name}" if revision_name else name
            key = _target_key(svc, svc.scaling, servers)
            carried = state.scale_targets.get(tname)
            if carried is not None and carried[0] == key:
                target = cast("ScaleTarget", carried[1])
                for backend in target.backends:
                    pools[backend.url] = target.pools[backend.url]
                group = target.backends
            else:
                urls = [s.url for s in servers] if svc.scaling.executor in ("box", "static") else []
                # a box target's endpoints come from its executor: the servers only once Box reports replicas
                # (or cannot be reached), so a target at zero replicas has none to serve from (§8.5)
                for url in urls if svc.scaling.executor == "static" else ():
                    backend = Backend(url)
                    backend.revision = revision_name
                    group.append(backend)
                    pools[url] = Pool(backend, loop, transport)
                target = _new_target(tname, name, revision_name, svc, svc.scaling, group, pools, urls, loop, health)
            targets[tname] = (key, target)
            mine.append(target)
            balancer: Balancer = make_balancer(strategy, group, None, inf.stale_after, inf.max_queue)
            if svc.scaling.container_concurrency > 0:
                balancer = CappedBalancer(balancer, svc.scaling.container_concurrency)
            group_balancers.append(balancer)
            backends.extend(group)
            if revision_name:
                percent = next(r.traffic_percent for r in svc.revisions if r.name == revision_name)
                revisions.append(Revision(revision_name, percent, balancer))
            continue
        for server in servers:
            old_pool = old_pools.get(server.url)
            if old_pool is not None:
                backend = old_pool.backend
                if backend.weight != server.weight:
                    weights.append((backend, server.weight))
                pool = old_pool
            else:
                backend = Backend(server.url, server.weight)
                pool = Pool(backend, loop, transport)
                backend.revision = revision_name
            group.append(backend)
            pools[server.url] = pool
        backends.extend(group)
        checked.extend(group)
        if revision_name:
            percent = next(r.traffic_percent for r in svc.revisions if r.name == revision_name)
            revisions.append(Revision(revision_name, percent,
                                      make_balancer(strategy, group, None, inf.stale_after, inf.max_queue)))
    health.attach(name, backends)  # backends carried over keep their health; new ones start healthy (§7.3)
    if revisions:
        dispatch: Balancer | RevisionSplit = RevisionSplit(revisions)
    elif group_balancers:
        dispatch = group_balancers[0]
    else:
        dispatch = make_balancer(lb.strategy, backends, None, inf.stale_after, inf.max_queue)
    checks = state.checks.get(name)
    if checks is not None and checks[0] == svc:  # an unchanged service keeps its checker and passive health
        checker, passive = checks[1], checks[2]
    else:
        checker = ActiveChecker(name, checked, lb.health_check, health, transport=transport) \
            if lb.health_check is not None else None
        passive = PassiveHealth(name, lb.passive, health) if lb.passive.enabled else None
    rollout = None
    if svc.rollout is not None and isinstance(dispatch, RevisionSplit):
        old_rollout = state.rollouts.get(name)
        if old_rollout is not None and old_rollout.cfg == svc.rollout:
            rollout = old_rollout  # unchanged block: the rollout goes on (adopted by State.carry)
        else:
            rollout = Rollout(name, svc.rollout, dispatch.revisions, loop.time())
    # the inference pools' balancers (under a container_concurrency cap or in revisions): their backends are scraped
    pools_of = [r.balancer for r in revisions] if revisions else [dispatch]
    inference = [b.inner if isinstance(b, CappedBalancer) else b for b in pools_of]
    scraped = [b for b in inference if isinstance(b, InferenceBalancer)]
    buffered = next((t for t in mine if t.buffered), None)
    scaling: object = None
    if buffered is not None:
        scaling = dispatch if isinstance(dispatch, RevisionSplit) else buffered
    return {
        "balancer": dispatch,
        "pools": pools,
        "transport": transport,
        "pass_host_header": lb.pass_host_header,
        "checker": checker,
        "passive": passive,
        "sticky": Sticky(name, lb.sticky, backends) if lb.sticky is not None else None,
        "targets": tuple(mine),
        "scaling": scaling,
        "rollout": rollout,
        "scraper": Scraper(name, scraped, inf, transport) if scraped else None,
        "affinity_bytes": inf.prefix_affinity_bytes if scraped else 0,
    }


def _l4_entry(
    config: GatewayConfig, ep_name: str, services: dict[str, ServiceRuntime]
) -> TcpEntryRuntime | UdpEntryRuntime:
    """The routes of a TCP entrypoint (with each router's tcp-filter), or the one service of a UDP entrypoint."""
    ep = config.entrypoints[ep_name]
    mine = [r for r in config.routers.values()
            if r.protocol == ep.protocol and (not r.entrypoints or ep_name in r.entrypoints)]
    if ep.protocol == "udp":
        service = services[mine[0].service] if mine else None  # validation: exactly one router
        return UdpEntryRuntime(ep_name, service, ep.udp_session_timeout_secs, ep.udp_max_sessions,
                               [r.name for r in mine])
    routes: list[TcpRoute] = []
    for router in mine:
        allowed: list[str] = []
        limit = 0
        for mw_name in router.middlewares:
            mw = config.middlewares[mw_name]
            if mw.type == "tcp-filter":
                allowed.extend(mw.params.get("allowed_ips") or ())
                limit = int(mw.params.get("max_connections") or 0) or limit
        target = TcpTarget(router.name, services[router.service], allowed, limit)
        routes.append(TcpRoute(router.name, router.rule or "HostSNI(`*`)", router.effective_priority, target))
    return TcpEntryRuntime(ep_name, TcpRouter(routes), ep.tcp_allowed_ips, ep.max_connections)


def _redirect(config: GatewayConfig, redirect: RedirectConfig) -> tuple[int, bytes]:
    port = config.entrypoints[redirect.entrypoint].port  # validation: an http entrypoint with tls
    return (308 if redirect.permanent else 307, b"" if port == 443 else b":%d" % port)


def _target_key(svc: ServiceConfig, scaling: ScalingConfig, servers: object) -> object:
    """What a scale target is built from: equal keys across a reload keep the target (and its replicas)."""
    hc = svc.load_balancer.health_check
    return (scaling, svc.transport, servers, hc.path if hc is not None else None)


def _new_target(
    tname: str, service: str, revision: str, svc: ServiceConfig, scaling: ScalingConfig, group: list[Backend],
    pools: dict[str, Pool], urls: list[str], loop: asyncio.AbstractEventLoop, health: HealthState,
) -> ScaleTarget:
    hc = svc.load_balancer.health_check
    probe_path = hc.path if hc is not None else None
    if scaling.process is not None and scaling.process.health_path:
        probe_path = scaling.process.health_path
    target = ScaleTarget(tname, service, scaling, group, pools, svc.transport, loop, health,
                         probe_path=probe_path, probe_interval=hc.interval if hc is not None else 10.0,
                         revision=revision)
    kind = scaling.executor
    if kind == "process":
        from ..scaling.executors.process import ProcessExecutor

        assert scaling.process is not None
        target.executor = ProcessExecutor(tname, scaling.process, target)
    elif kind == "box":
        from ..scaling.executors.box import BoxExecutor

        assert scaling.box is not None
        target.executor = BoxExecutor(tname, scaling.box, target, urls)
    elif kind == "kubernetes":
        from ..scaling.executors.kubernetes import KubernetesExecutor

        assert scaling.kubernetes is not None
        target.executor = KubernetesExecutor(tname, scaling.kubernetes, target)
    else:
        from ..scaling.executors.static import StaticExecutor

        target.executor = StaticExecutor(urls)
    return target
