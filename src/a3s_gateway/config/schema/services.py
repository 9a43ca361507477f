"""Schemas of ``services "<name>"`` (SPEC §3.3, §7, §8): servers, health checks, passive ejection, sticky,
load balancer, transport, mirror, failover, scaling and its executors, revisions and rollout.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Any, Final
from urllib.parse import urlsplit

from a3s_gateway.config.model import (
    DEFAULT_PORTS,
    BoxExecutorConfig,
    FailoverConfig,
    HealthCheckConfig,
    InferenceConfig,
    KubernetesExecutorConfig,
    LoadBalancerConfig,
    MirrorConfig,
    PassiveConfig,
    ProcessExecutorConfig,
    RevisionConfig,
    RolloutConfig,
    ScalingConfig,
    ServerConfig,
    ServiceConfig,
    StickyConfig,
    TransportConfig,
    format_duration,
)
from a3s_gateway.config.schema.checks import NAME_RE, NAME_SHOWN, TOKEN_RE, check_http_url, check_nonempty, file_check
from a3s_gateway.config.schema.engine import (
    BOOL,
    SKIP,
    STR,
    Ctx,
    Decoded,
    K,
    Legacy,
    T,
    fmt_num,
    quote,
    schema,
    suggest,
)


def parse_server_url(url: str) -> tuple[str, str, int, str] | str:
    """``url`` -> (scheme, host, port, base path), or the diagnostic."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"invalid URL {quote(url)}: bad port"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "h2c", "tcp", "udp") or not parts.hostname or "://" not in url:
        return (
            f'invalid URL {quote(url)}; expected "<scheme>://host[:port][/path]" '
            "with scheme http, https, h2c, tcp or udp"
        )
    if parts.query or parts.fragment or parts.username is not None:
        return f"invalid URL {quote(url)}: a backend URL has no user, query or fragment"
    if port is None:
        if scheme not in DEFAULT_PORTS:
            return f"invalid URL {quote(url)}: {scheme}:// needs a port"
        port = DEFAULT_PORTS[scheme]
    path = parts.path.rstrip("/")
    if scheme in ("tcp", "udp") and path:
        return f"invalid URL {quote(url)}: {scheme}:// takes no path"
    return scheme, parts.hostname, port, path


def _build_server(d: Decoded, ctx: Ctx) -> Any:
    url = d.values["url"]
    if url is None:
        return SKIP
    parsed = parse_server_url(url)
    if isinstance(parsed, str):
        where = f"{d.path}.url"
        ctx.error(ctx.at(where, d.pos), where, parsed)
        ctx.bad.add(where)
        return ServerConfig(url=url, weight=d.values["weight"])
    scheme, host, port, path = parsed
    return ServerConfig(url=url, weight=d.values["weight"], scheme=scheme, host=host, port=port, path=path)


SERVER: Final = schema(
    "server", [K("url", STR, required=True), K("weight", T.integer(0, 1000000))], _build_server, model=ServerConfig
)

STRATEGY: Final = T.enum("round-robin", "weighted", "least-connections", "random", "p2c", "inference")


def _build_health(d: Decoded, ctx: Ctx) -> HealthCheckConfig:
    v = d.values
    if v["path"] is not None and ctx.ok(f"{d.path}.path") and not v["path"].startswith("/"):
        ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", f'must start with "/", got {quote(v["path"])}')
    if ctx.ok(f"{d.path}.timeout", f"{d.path}.interval") and v["timeout"] > v["interval"]:
        where = f"{d.path}.timeout"
        ctx.error(
            ctx.at(where, d.pos),
            where,
            f"timeout ({format_duration(v['timeout'])}) must not exceed interval ({format_duration(v['interval'])})",
            None if d.has("timeout") else "the default timeout is 5s; set timeout to at most the interval",
        )
    ctx.explicit.add("health_check")
    return HealthCheckConfig(**v)


HEALTH: Final = schema(
    "health_check",
    [
        K("path", STR),
        K("interval", T.duration(0, lo_open=True)),
        K("timeout", T.duration(0, lo_open=True)),
        K("unhealthy_threshold", T.integer(1)),
        K("healthy_threshold", T.integer(1)),
        K("expected_status", T.list_of(T.integer(100, 599))),
    ],
    _build_health,
    model=HealthCheckConfig,
)


def _build_passive(d: Decoded, ctx: Ctx) -> PassiveConfig:
    if d.values["enabled"]:
        ctx.explicit.add("passive health")
    return PassiveConfig(**d.values)


PASSIVE: Final = schema(
    "passive",
    [
        K("enabled", BOOL),
        K("max_failures", T.integer(1)),
        K("window", T.duration(0, lo_open=True)),
        K("ejection", T.duration(0, lo_open=True)),
    ],
    _build_passive,
    model=PassiveConfig,
)


def _build_sticky(d: Decoded, ctx: Ctx) -> StickyConfig:
    v = d.values
    if v["same_site"] == "none" and not v["secure"] and ctx.ok(f"{d.path}.secure"):
        where = f"{d.path}.secure"
        ctx.error(ctx.at(where, d.pos), where, 'must be true when same_site = "none"')
    ctx.explicit.add("sticky")
    return StickyConfig(**{**v, "cookie": v["cookie"] or ""})


def _check_cookie(value: Any) -> str | None:
    return None if TOKEN_RE.match(value) else f"invalid cookie name {quote(value)}; use an RFC 6265 token"


STICKY: Final = schema(
    "sticky",
    [
        K("cookie", T.string(_check_cookie), required=True),
        K("ttl", T.duration(0, lo_open=True)),
        K("max_sessions", T.integer(1)),
        K("secure", BOOL),
        K("http_only", BOOL),
        K("same_site", T.enum("lax", "strict", "none")),
    ],
    _build_sticky,
    model=StickyConfig,
)


def _check_metrics_path(value: Any) -> str | None:
    if not value.startswith("/") or any(c in value for c in " \t\r\n#"):
        return f"invalid metrics_path {quote(value)}; expected an absolute path such as \"/metrics\""
    return None


INFERENCE: Final = schema(
    "inference",
    [
        K("metrics_path", T.string(_check_metrics_path)),
        K("scrape_interval", T.duration(0.05, 10.0)),
        K("stale_after", T.duration(0, lo_open=True)),
        K("prefix_affinity_bytes", T.integer(0, 1048576)),
        K("max_queue", T.integer(0)),
    ],
    lambda d, ctx: InferenceConfig(**d.values),
    model=InferenceConfig,
)


def _build_lb(d: Decoded, ctx: Ctx) -> LoadBalancerConfig:
    v = d.values
    servers = v["servers"]
    if servers and all(s.weight == 0 for s in servers) and ctx.ok(f"{d.path}.servers"):
        where = f"{d.path}.servers"
        ctx.error(ctx.at(where), where, "the weights of servers must not all be 0")
    return LoadBalancerConfig(**v)


LB: Final = schema(
    "load_balancer",
    [
        K("strategy", STRATEGY),
        K("servers", T.blocks(SERVER)),
        K("pass_host_header", BOOL),
        K("health_check", T.block(HEALTH)),
        K("passive", T.block(PASSIVE)),
        K("sticky", T.block(STICKY)),
        K("inference", T.block(INFERENCE)),
    ],
    _build_lb,
    model=LoadBalancerConfig,
)


def _build_transport(d: Decoded, ctx: Ctx) -> TransportConfig:
    v = d.values
    if (
        (d.has("tls_insecure_skip_verify") and v["tls_insecure_skip_verify"])
        or v["tls_ca_file"]
        or v["tls_server_name"]
    ):
        ctx.explicit.add("transport tls")
    if v["tls_ca_file"]:
        file_check(ctx, d, "tls_ca_file")
    return TransportConfig(**v)


TRANSPORT: Final = schema(
    "transport",
    [
        K("connect_timeout", T.duration(0, lo_open=True)),
        K("response_header_timeout", T.duration(0, lo_open=True)),
        K("stream_idle_timeout", T.duration(0, lo_open=True)),
        K("request_timeout", T.duration(0)),
        K("tunnel_idle_timeout", T.duration(0, lo_open=True)),
        K("max_idle_connections_per_backend", T.integer(0)),
        K("idle_connection_timeout", T.duration(0, lo_open=True)),
        K("tls_insecure_skip_verify", BOOL),
        K("tls_ca_file", STR, path=True),
        K("tls_server_name", STR),
    ],
    _build_transport,
    model=TransportConfig,
)


def _build_mirror(d: Decoded, ctx: Ctx) -> MirrorConfig:
    ctx.explicit.add("mirror")
    return MirrorConfig(**{**d.values, "service": d.values["service"] or ""})


MIRROR: Final = schema(
    "mirror",
    [
        K("service", STR, required=True),
        K("percentage", T.number(0, 100)),
        K("max_body_bytes", T.integer(0)),
        K("max_in_flight", T.integer(1)),
    ],
    _build_mirror,
    model=MirrorConfig,
)


def _build_failover(d: Decoded, ctx: Ctx) -> FailoverConfig:
    ctx.explicit.add("failover")
    return FailoverConfig(d.values["service"] or "")


FAILOVER: Final = schema("failover", [K("service", STR, required=True)], _build_failover, model=FailoverConfig)


def _build_box(d: Decoded, ctx: Ctx) -> BoxExecutorConfig:
    return BoxExecutorConfig(**d.values)


BOX: Final = schema(
    "box",
    [
        K("url", T.string(check_http_url), url=True),
        K("token", STR, secret=True),
        K("timeout", T.duration(0, lo_open=True)),
    ],
    _build_box,
    model=BoxExecutorConfig,
)


def _check_port_range(value: Any) -> str | None:
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value)
    if m is None or not (1 <= int(m.group(1)) <= int(m.group(2)) <= 65535):
        return f'invalid port range {quote(value)}; expected "A-B" with 1 <= A <= B <= 65535'
    return None


def _build_process(d: Decoded, ctx: Ctx) -> ProcessExecutorConfig:
    v = dict(d.values)
    if not v["working_dir"]:
        v["working_dir"] = os.getcwd() if d.pos.file.startswith("<") else os.path.dirname(os.path.abspath(d.pos.file))
    if v["health_path"] and ctx.ok(f"{d.path}.health_path") and not v["health_path"].startswith("/"):
        where = f"{d.path}.health_path"
        ctx.error(ctx.at(where), where, f'must start with "/", got {quote(v["health_path"])}')
    return ProcessExecutorConfig(**{**v, "command": v["command"] or ()})


PROCESS: Final = schema(
    "process",
    [
        K("command", T.list_of(T.string(check_nonempty), 1), required=True),
        K("env", T.map_of()),
        K("working_dir", STR, path=True),
        K("health_path", STR),
        K("port_range", T.string(_check_port_range)),
        K("host", STR),
        K("scheme", T.enum("http", "h2c")),
        K("startup_timeout", T.duration(0, lo_open=True)),
        K("drain_timeout", T.duration(0)),
        K("stop_timeout", T.duration(0)),
    ],
    _build_process,
    model=ProcessExecutorConfig,
)


def _build_k8s_executor(d: Decoded, ctx: Ctx) -> KubernetesExecutorConfig:
    return KubernetesExecutorConfig(**d.values)


K8S_EXECUTOR: Final = schema(
    "kubernetes",
    [
        K("namespace", STR),
        K("deployment", STR),
        K("service_name", STR),
        K("port", T("int_or_str")),
        K("scheme", T.enum("http", "https", "h2c")),
        K("api_url", T.string(lambda v: check_http_url(v, empty_ok=True)), url=True),
        K("token_file", STR, path=True),
        K("ca_file", STR, path=True),
    ],
    _build_k8s_executor,
    model=KubernetesExecutorConfig,
)

_EXECUTOR_BLOCKS: Final = ("box", "process", "kubernetes")


def _build_scaling(d: Decoded, ctx: Ctx) -> ScalingConfig:
    v = dict(d.values)
    p = d.path
    ex = v["executor"]
    for name in _EXECUTOR_BLOCKS:
        if d.has(name) and name != ex and ctx.ok(f"{p}.executor"):
            where = f"{p}.{name}"
            ctx.error(ctx.at(where), where, f'a {name} block requires executor = "{name}", but executor is "{ex}"')
    if ex == "box" and v["box"] is None:
        v["box"] = BoxExecutorConfig()
    if ex == "kubernetes" and v["kubernetes"] is None:
        v["kubernetes"] = KubernetesExecutorConfig()
    if ex == "process" and v["process"] is None and not d.has("process"):
        ctx.error(d.pos, p, 'executor "process" requires a process block with "command"')
    if ctx.ok(f"{p}.min_replicas", f"{p}.max_replicas") and v["min_replicas"] > v["max_replicas"]:
        where = f"{p}.min_replicas"
        ctx.error(
            ctx.at(where, d.pos),
            where,
            f"min_replicas ({v['min_replicas']}) is greater than max_replicas ({v['max_replicas']})",
        )
    if ctx.ok(f"{p}.panic_window", f"{p}.stable_window") and v["panic_window"] > v["stable_window"]:
        where = f"{p}.panic_window"
        ctx.error(
            ctx.at(where, d.pos),
            where,
            f"panic_window ({format_duration(v['panic_window'])}) must not exceed stable_window "
            f"({format_duration(v['stable_window'])})",
        )
    ctx.explicit.add("scaling")
    ctx.explicit.add(f"executor {ex}")
    return ScalingConfig(**v)


def _check_utilization(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"target_utilization must be in (0, 1], got {fmt_num(value)}"


SCALING: Final = schema(
    "scaling",
    [
        K("min_replicas", T.integer(0)),
        K("max_replicas", T.integer(1)),
        K("container_concurrency", T.integer(0)),
        K("target_utilization", T("num", check=_check_utilization)),
        K("buffer_enabled", BOOL),
        K("buffer_size", T.integer(1)),
        K("buffer_timeout_secs", T.seconds(0, lo_open=True)),
        K("scale_down_delay_secs", T.seconds(0)),
        K("executor", T.enum("box", "process", "kubernetes", "static", aliases=(("k8s", "kubernetes"),))),
        K("stable_window", T.duration(6, 3600)),
        K("panic_window", T.duration(1)),
        K("panic_threshold", T.number(1.0)),
        K("max_scale_up_rate", T.number(1.0, lo_open=True)),
        K("max_scale_down_rate", T.number(1.0, lo_open=True)),
        K("box", T.block(BOX)),
        K("process", T.block(PROCESS)),
        K("kubernetes", T.block(K8S_EXECUTOR)),
    ],
    _build_scaling,
    legacy={
        "scale_to_zero_grace": Legacy(
            "scale_down_delay_secs",
            T.duration(0),
            lambda v: f'"scale_to_zero_grace" is deprecated; use scale_down_delay_secs = {fmt_num(v)}',
        )
    },
    model=ScalingConfig,
)


def _build_revision(d: Decoded, ctx: Ctx) -> Any:
    v = d.values
    name = v["name"]
    if name is None:
        return SKIP
    if not NAME_RE.match(name) and ctx.ok(f"{d.path}.name"):
        where = f"{d.path}.name"
        ctx.error(ctx.at(where, d.pos), where, f"invalid name {quote(name)}; names match {NAME_SHOWN}")
    return RevisionConfig(
        name=name,
        traffic_percent=v["traffic_percent"],
        servers=v["servers"],
        strategy=v["strategy"] or "",  # "" = the load balancer's, filled by the service
    )


REVISION: Final = schema(
    "revision",
    [
        K("name", STR, required=True),
        K("traffic_percent", T.integer(0, 100)),
        K("servers", T.blocks(SERVER)),
        K("strategy", STRATEGY, None),  # None: the service fills in its load balancer's
    ],
    _build_revision,
    model=RevisionConfig,
)


def _build_rollout(d: Decoded, ctx: Ctx) -> RolloutConfig:
    v = d.values
    ctx.explicit.add("rollout")
    return RolloutConfig(**{**v, "from_": v["from_"] or "", "to": v["to"] or ""})


ROLLOUT: Final = schema(
    "rollout",
    [
        K("from", STR, required=True, field="from_"),
        K("to", STR, required=True),
        K("step_percent", T.integer(1, 100)),
        K("step_interval_secs", T.seconds(1)),
        K("error_rate_threshold", T.number(0, 1)),
        K("latency_threshold_ms", T.millis(1)),
        K("min_requests", T.integer(1)),
    ],
    _build_rollout,
    model=RolloutConfig,
)


def _build_service(d: Decoded, ctx: Ctx) -> ServiceConfig:
    v = dict(d.values)
    p = d.path
    name = p.split(".", 1)[1]
    lb: LoadBalancerConfig = v["load_balancer"]
    revisions = tuple(replace(r, strategy=r.strategy or lb.strategy) for r in v["revisions"])
    v["revisions"] = revisions
    if d.has("load_balancer") and lb.inference != InferenceConfig() and ctx.ok(f"{p}.load_balancer.inference"):
        if "inference" not in {lb.strategy, *(r.strategy for r in revisions)}:
            where = f"{p}.load_balancer.inference"
            ctx.error(ctx.at(where), where, 'the inference block needs strategy = "inference"',
                      'set load_balancer.strategy = "inference" or remove the block')
    if revisions:
        ctx.explicit.add("revisions")
        if lb.servers:
            where = f"{p}.load_balancer.servers"
            ctx.error(ctx.at(where), where, "load_balancer.servers must be empty when revisions are set")
        seen: dict[str, int] = {}
        for i, r in enumerate(revisions):
            if r.name in seen:
                where = f"{p}.revisions[{i}].name"
                ctx.error(ctx.at(where), where, f'duplicate revision "{r.name}" (also revisions[{seen[r.name]}])')
            seen.setdefault(r.name, i)
        if ctx.ok(f"{p}.revisions"):
            total = sum(r.traffic_percent for r in revisions)
            if total != 100:
                where = f"{p}.revisions"
                ctx.error(ctx.at(where), where, f"traffic_percent of revisions must sum to 100, got {total}")
        scaling: ScalingConfig | None = v["scaling"]
        supplies = scaling is not None and scaling.executor != "static"
        for i, r in enumerate(revisions):
            if not r.servers and not supplies:
                where = f"{p}.revisions[{i}]"
                ctx.error(
                    ctx.at(where),
                    where,
                    f'revision "{r.name}" has no servers',
                    "list servers, or add a scaling block whose executor supplies endpoints",
                )
        if scaling is not None and scaling.executor == "process":
            where = f"{p}.scaling.executor"
            ctx.error(ctx.at(where), where, 'executor "process" cannot be combined with revisions')
    rollout: RolloutConfig | None = v["rollout"]
    if rollout is not None:
        where = f"{p}.rollout"
        if not revisions and ctx.ok(f"{p}.revisions"):
            a = rollout.from_ or "v1"
            b = rollout.to or "v2"
            if a == b:
                b = "v2" if a != "v2" else "v1"
            ctx.error(
                ctx.at(where),
                where,
                f'rollout requires revisions, but service "{name}" defines none',
                "move load_balancer.servers into revisions = "
                f'[{{ name = "{a}", traffic_percent = 100, servers = [...] }}, '
                f'{{ name = "{b}", traffic_percent = 0, servers = [...] }}]',
            )
        elif revisions:
            names = [r.name for r in revisions]
            for key, value in (("from", rollout.from_), ("to", rollout.to)):
                if ctx.ok(f"{where}.{key}") and value not in names:
                    close = suggest(value, names)
                    ctx.error(
                        ctx.at(f"{where}.{key}"),
                        f"{where}.{key}",
                        f'rollout.{key} "{value}" is not a revision of service "{name}"',
                        f'did you mean "{close}"?' if close else f"revisions: {', '.join(names)}",
                    )
            if rollout.from_ == rollout.to and ctx.ok(f"{where}.to"):
                ctx.error(ctx.at(f"{where}.to"), f"{where}.to", "rollout.to must differ from rollout.from")
    return ServiceConfig(name=name, **v)


SERVICE: Final = schema(
    "service",
    [
        K("load_balancer", T.block(LB)),
        K("transport", T.block(TRANSPORT)),
        K("scaling", T.block(SCALING)),
        K("revisions", T.blocks(REVISION)),
        K("rollout", T.block(ROLLOUT)),
        K("mirror", T.block(MIRROR)),
        K("failover", T.block(FAILOVER)),
    ],
    _build_service,
    model=ServiceConfig,
)
