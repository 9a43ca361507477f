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
    EMPTY_MAP,
    BoxExecutorConfig,
    FailoverConfig,
    HealthCheckConfig,
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
from a3s_gateway.config.schema.checks import (
    _NAME_SHOWN,
    _TOKEN_RE,
    NAME_RE,
    _check_http_url,
    _check_nonempty,
    _file_check,
)
from a3s_gateway.config.schema.engine import (
    _K,
    _T,
    BOOL,
    SKIP,
    STR,
    _block,
    _blocks,
    _Ctx,
    _Decoded,
    _dur,
    _enum,
    _fmt_num,
    _int,
    _Legacy,
    _list,
    _map,
    _ms,
    _num,
    _q,
    _schema,
    _secs,
    _str,
    suggest,
)

_DEFAULT_PORTS: Final = {"http": 80, "h2c": 80, "https": 443}


def parse_server_url(url: str) -> tuple[str, str, int, str] | str:
    """``url`` -> (scheme, host, port, base path), or the diagnostic."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"invalid URL {_q(url)}: bad port"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "h2c", "tcp", "udp") or not parts.hostname or "://" not in url:
        return (
            f'invalid URL {_q(url)}; expected "<scheme>://host[:port][/path]" with scheme http, https, h2c, tcp or udp'
        )
    if parts.query or parts.fragment or parts.username is not None:
        return f"invalid URL {_q(url)}: a backend URL has no user, query or fragment"
    if port is None:
        if scheme not in _DEFAULT_PORTS:
            return f"invalid URL {_q(url)}: {scheme}:// needs a port"
        port = _DEFAULT_PORTS[scheme]
    path = parts.path.rstrip("/")
    if scheme in ("tcp", "udp") and path:
        return f"invalid URL {_q(url)}: {scheme}:// takes no path"
    return scheme, parts.hostname, port, path


def _build_server(d: _Decoded, ctx: _Ctx) -> Any:
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


SERVER: Final = _schema(
    "server", [_K("url", STR, None, required=True), _K("weight", _int(0, 1000000), 1)], _build_server
)

STRATEGY: Final = _enum("round-robin", "weighted", "least-connections", "random", "p2c")


def _build_health(d: _Decoded, ctx: _Ctx) -> HealthCheckConfig:
    v = d.values
    if v["path"] is not None and ctx.ok(f"{d.path}.path") and not v["path"].startswith("/"):
        ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", f'must start with "/", got {_q(v["path"])}')
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


HEALTH: Final = _schema(
    "health_check",
    [
        _K("path", STR, None),
        _K("interval", _dur(0, lo_open=True), 10.0),
        _K("timeout", _dur(0, lo_open=True), 5.0),
        _K("unhealthy_threshold", _int(1), 3),
        _K("healthy_threshold", _int(1), 1),
        _K("expected_status", _list(_int(100, 599)), ()),
    ],
    _build_health,
)


def _build_passive(d: _Decoded, ctx: _Ctx) -> PassiveConfig:
    if d.values["enabled"]:
        ctx.explicit.add("passive health")
    return PassiveConfig(**d.values)


PASSIVE: Final = _schema(
    "passive",
    [
        _K("enabled", BOOL, True),
        _K("max_failures", _int(1), 5),
        _K("window", _dur(0, lo_open=True), 30.0),
        _K("ejection", _dur(0, lo_open=True), 30.0),
    ],
    _build_passive,
)


def _build_sticky(d: _Decoded, ctx: _Ctx) -> StickyConfig:
    v = d.values
    if v["same_site"] == "none" and not v["secure"] and ctx.ok(f"{d.path}.secure"):
        where = f"{d.path}.secure"
        ctx.error(ctx.at(where, d.pos), where, 'must be true when same_site = "none"')
    ctx.explicit.add("sticky")
    return StickyConfig(**{**v, "cookie": v["cookie"] or ""})


def _check_cookie(value: Any) -> str | None:
    return None if _TOKEN_RE.match(value) else f"invalid cookie name {_q(value)}; use an RFC 6265 token"


STICKY: Final = _schema(
    "sticky",
    [
        _K("cookie", _str(_check_cookie), None, required=True),
        _K("ttl", _dur(0, lo_open=True), 3600.0),
        _K("max_sessions", _int(1), 100000),
        _K("secure", BOOL, False),
        _K("http_only", BOOL, True),
        _K("same_site", _enum("lax", "strict", "none"), "lax"),
    ],
    _build_sticky,
)


def _build_lb(d: _Decoded, ctx: _Ctx) -> LoadBalancerConfig:
    v = d.values
    servers = v["servers"]
    if servers and all(s.weight == 0 for s in servers) and ctx.ok(f"{d.path}.servers"):
        where = f"{d.path}.servers"
        ctx.error(ctx.at(where), where, "the weights of servers must not all be 0")
    return LoadBalancerConfig(**v)


LB: Final = _schema(
    "load_balancer",
    [
        _K("strategy", STRATEGY, "round-robin"),
        _K("servers", _blocks(SERVER), ()),
        _K("pass_host_header", BOOL, True),
        _K("health_check", _block(HEALTH), None),
        _K("passive", _block(PASSIVE), PassiveConfig()),
        _K("sticky", _block(STICKY), None),
    ],
    _build_lb,
)


def _build_transport(d: _Decoded, ctx: _Ctx) -> TransportConfig:
    v = d.values
    if (
        (d.has("tls_insecure_skip_verify") and v["tls_insecure_skip_verify"])
        or v["tls_ca_file"]
        or v["tls_server_name"]
    ):
        ctx.explicit.add("transport tls")
    if v["tls_ca_file"]:
        _file_check(ctx, d, "tls_ca_file")
    return TransportConfig(**v)


TRANSPORT: Final = _schema(
    "transport",
    [
        _K("connect_timeout", _dur(0, lo_open=True), 5.0),
        _K("response_header_timeout", _dur(0, lo_open=True), 300.0),
        _K("stream_idle_timeout", _dur(0, lo_open=True), 300.0),
        _K("request_timeout", _dur(0), 0.0),
        _K("tunnel_idle_timeout", _dur(0, lo_open=True), 3600.0),
        _K("max_idle_connections_per_backend", _int(0), 32),
        _K("idle_connection_timeout", _dur(0, lo_open=True), 90.0),
        _K("tls_insecure_skip_verify", BOOL, False),
        _K("tls_ca_file", STR, "", path=True),
        _K("tls_server_name", STR, ""),
    ],
    _build_transport,
)


def _build_mirror(d: _Decoded, ctx: _Ctx) -> MirrorConfig:
    ctx.explicit.add("mirror")
    return MirrorConfig(**{**d.values, "service": d.values["service"] or ""})


MIRROR: Final = _schema(
    "mirror",
    [
        _K("service", STR, None, required=True),
        _K("percentage", _num(0, 100), 100.0),
        _K("max_body_bytes", _int(0), 1048576),
        _K("max_in_flight", _int(1), 128),
    ],
    _build_mirror,
)


def _build_failover(d: _Decoded, ctx: _Ctx) -> FailoverConfig:
    ctx.explicit.add("failover")
    return FailoverConfig(d.values["service"] or "")


FAILOVER: Final = _schema("failover", [_K("service", STR, None, required=True)], _build_failover)


def _build_box(d: _Decoded, ctx: _Ctx) -> BoxExecutorConfig:
    return BoxExecutorConfig(**d.values)


BOX: Final = _schema(
    "box",
    [
        _K("url", _str(_check_http_url), "http://127.0.0.1:9090"),
        _K("token", STR, "", secret=True),
        _K("timeout", _dur(0, lo_open=True), 10.0),
    ],
    _build_box,
)


def _check_port_range(value: Any) -> str | None:
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value)
    if m is None or not (1 <= int(m.group(1)) <= int(m.group(2)) <= 65535):
        return f'invalid port range {_q(value)}; expected "A-B" with 1 <= A <= B <= 65535'
    return None


def _build_process(d: _Decoded, ctx: _Ctx) -> ProcessExecutorConfig:
    v = dict(d.values)
    if not v["working_dir"]:
        v["working_dir"] = os.getcwd() if d.pos.file.startswith("<") else os.path.dirname(os.path.abspath(d.pos.file))
    if v["health_path"] and ctx.ok(f"{d.path}.health_path") and not v["health_path"].startswith("/"):
        where = f"{d.path}.health_path"
        ctx.error(ctx.at(where), where, f'must start with "/", got {_q(v["health_path"])}')
    return ProcessExecutorConfig(**{**v, "command": v["command"] or ()})


PROCESS: Final = _schema(
    "process",
    [
        _K("command", _list(_str(_check_nonempty), 1), None, required=True),
        _K("env", _map(), EMPTY_MAP),
        _K("working_dir", STR, "", path=True),
        _K("health_path", STR, ""),
        _K("port_range", _str(_check_port_range), "20000-20999"),
        _K("host", STR, "127.0.0.1"),
        _K("scheme", _enum("http", "h2c"), "http"),
        _K("startup_timeout", _dur(0, lo_open=True), 300.0),
        _K("drain_timeout", _dur(0), 60.0),
        _K("stop_timeout", _dur(0), 10.0),
    ],
    _build_process,
)


def _build_k8s_executor(d: _Decoded, ctx: _Ctx) -> KubernetesExecutorConfig:
    return KubernetesExecutorConfig(**d.values)


K8S_EXECUTOR: Final = _schema(
    "kubernetes",
    [
        _K("namespace", STR, ""),
        _K("deployment", STR, ""),
        _K("service_name", STR, ""),
        _K("port", _T("int_or_str"), None),
        _K("scheme", _enum("http", "https", "h2c"), "http"),
        _K("api_url", _str(lambda v: _check_http_url(v, empty_ok=True)), ""),
        _K("token_file", STR, "/var/run/secrets/kubernetes.io/serviceaccount/token", path=True),
        _K("ca_file", STR, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", path=True),
    ],
    _build_k8s_executor,
)

_EXECUTOR_BLOCKS: Final = ("box", "process", "kubernetes")


def _build_scaling(d: _Decoded, ctx: _Ctx) -> ScalingConfig:
    v = dict(d.values)
    p = d.path
    ex = v["executor"]
    for block in _EXECUTOR_BLOCKS:
        if d.has(block) and block != ex and ctx.ok(f"{p}.executor"):
            where = f"{p}.{block}"
            ctx.error(ctx.at(where), where, f'a {block} block requires executor = "{block}", but executor is "{ex}"')
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
    return None if 0 < value <= 1 else f"target_utilization must be in (0, 1], got {_fmt_num(value)}"


SCALING: Final = _schema(
    "scaling",
    [
        _K("min_replicas", _int(0), 0),
        _K("max_replicas", _int(1), 10),
        _K("container_concurrency", _int(0), 0),
        _K("target_utilization", _T("num", check=_check_utilization), 0.7),
        _K("buffer_enabled", BOOL, False),
        _K("buffer_size", _int(1), 100),
        _K("buffer_timeout_secs", _secs(0, lo_open=True), 30.0),
        _K("scale_down_delay_secs", _secs(0), 300.0),
        _K("executor", _enum("box", "process", "kubernetes", "static", aliases=(("k8s", "kubernetes"),)), "box"),
        _K("stable_window", _dur(6, 3600), 60.0),
        _K("panic_window", _dur(1), 6.0),
        _K("panic_threshold", _num(1.0), 2.0),
        _K("max_scale_up_rate", _num(1.0, lo_open=True), 1000.0),
        _K("max_scale_down_rate", _num(1.0, lo_open=True), 2.0),
        _K("box", _block(BOX), None),
        _K("process", _block(PROCESS), None),
        _K("kubernetes", _block(K8S_EXECUTOR), None),
    ],
    _build_scaling,
    legacy={
        "scale_to_zero_grace": _Legacy(
            "scale_down_delay_secs",
            _dur(0),
            lambda v: f'"scale_to_zero_grace" is deprecated; use scale_down_delay_secs = {_fmt_num(v)}',
        )
    },
)


def _build_revision(d: _Decoded, ctx: _Ctx) -> Any:
    v = d.values
    name = v["name"]
    if name is None:
        return SKIP
    if not NAME_RE.match(name) and ctx.ok(f"{d.path}.name"):
        where = f"{d.path}.name"
        ctx.error(ctx.at(where, d.pos), where, f"invalid name {_q(name)}; names match {_NAME_SHOWN}")
    return RevisionConfig(
        name=name,
        traffic_percent=v["traffic_percent"],
        servers=v["servers"],
        strategy=v["strategy"] or "",  # "" = the load balancer's, filled by the service
    )


REVISION: Final = _schema(
    "revision",
    [
        _K("name", STR, None, required=True),
        _K("traffic_percent", _int(0, 100), 100),
        _K("servers", _blocks(SERVER), ()),
        _K("strategy", STRATEGY, None),
    ],
    _build_revision,
)


def _build_rollout(d: _Decoded, ctx: _Ctx) -> RolloutConfig:
    v = d.values
    ctx.explicit.add("rollout")
    return RolloutConfig(**{**v, "from_": v["from_"] or "", "to": v["to"] or ""})


ROLLOUT: Final = _schema(
    "rollout",
    [
        _K("from", STR, None, required=True, field="from_"),
        _K("to", STR, None, required=True),
        _K("step_percent", _int(1, 100), 10),
        _K("step_interval_secs", _secs(1), 60.0),
        _K("error_rate_threshold", _num(0, 1), 0.05),
        _K("latency_threshold_ms", _ms(1), 5000.0),
        _K("min_requests", _int(1), 10),
    ],
    _build_rollout,
)


def _build_service(d: _Decoded, ctx: _Ctx) -> ServiceConfig:
    v = dict(d.values)
    p = d.path
    name = p.split(".", 1)[1]
    lb: LoadBalancerConfig = v["load_balancer"]
    revisions = tuple(replace(r, strategy=r.strategy or lb.strategy) for r in v["revisions"])
    v["revisions"] = revisions
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


SERVICE: Final = _schema(
    "service",
    [
        _K("load_balancer", _block(LB), LoadBalancerConfig()),
        _K("transport", _block(TRANSPORT), TransportConfig()),
        _K("scaling", _block(SCALING), None),
        _K("revisions", _blocks(REVISION), ()),
        _K("rollout", _block(ROLLOUT), None),
        _K("mirror", _block(MIRROR), None),
        _K("failover", _block(FAILOVER), None),
    ],
    _build_service,
)
