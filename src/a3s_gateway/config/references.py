"""Checks across blocks, on the whole configuration (SPEC §2.6, §3.2, §6.0, §7.6, §8.6, §8.7): router → service,
middleware and entrypoint references, rules and protocols, redirect targets, addresses in use, mirror and failover
targets and cycles, unused entrypoints.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import Final

from a3s_gateway.config.model import (
    AdminConfig,
    EntrypointConfig,
    MiddlewareConfig,
    ProvidersConfig,
    RouterConfig,
    ServerConfig,
    ServiceConfig,
)
from a3s_gateway.config.schema.engine import Ctx, loc, quote, suggest

__all__ = ["check_references", "format_rule_error", "rule_matchers"]

_TCP_MATCHERS: Final = frozenset({"HostSNI", "HostSNIRegexp", "ALPN"})
_LEGACY_RULE: Final = re.compile(r"\s*(?:PathPrefix\(\s*`/`\s*\)|Method\(\s*`(?:TCP|UDP)`\s*\))\s*\Z")
_CATCH_ALL: Final = re.compile(r"\s*HostSNI\(\s*`\*`\s*\)\s*\Z")


def check_references(
    ctx: Ctx,
    entrypoints: dict[str, EntrypointConfig],
    routers: dict[str, RouterConfig],
    services: dict[str, ServiceConfig],
    middlewares: dict[str, MiddlewareConfig],
    known_middlewares: set[str],
    admin: AdminConfig,
    providers: ProvidersConfig,
    *,
    may_be_empty: Collection[str] = (),
) -> tuple[dict[str, RouterConfig], dict[str, ServiceConfig]]:
    """Check every reference between blocks; returns the routers and services with their protocols filled in.

    ``may_be_empty`` names services whose servers a provider supplies and that may have none at the moment (a
    Kubernetes Service without ready endpoints, SPEC §12.5): they are not "without backends"."""
    _check_entrypoints(ctx, entrypoints, admin)
    routers = _check_routers(ctx, routers, entrypoints, services, middlewares, known_middlewares)
    services = _check_services(ctx, services, routers, providers, may_be_empty)
    _check_admin(ctx, admin, middlewares, known_middlewares)
    _warn_unused_entrypoints(ctx, entrypoints, routers)
    return routers, services


def rule_matchers(rule: str) -> set[str]:
    """Names of the matchers a rule uses (string arguments skipped); enough to infer a router's protocol."""
    names: set[str] = set()
    i = 0
    n = len(rule)
    while i < n:
        ch = rule[i]
        if ch == "`":
            end = rule.find("`", i + 1)
            i = n if end < 0 else end + 1
        elif ch == '"':
            i += 1
            while i < n and rule[i] != '"':
                i += 2 if rule[i] == "\\" else 1
            i += 1
        elif ch.isalpha():
            j = i
            while j < n and rule[j].isalnum():
                j += 1
            k = j
            while k < n and rule[k] in " \t\n":
                k += 1
            if k < n and rule[k] == "(":
                names.add(rule[i:j])
            i = j
        else:
            i += 1
    return names


def format_rule_error(rule: str, message: str, offset: int, hint: str | None) -> tuple[str, str | None]:
    """SPEC §2.6 rule diagnostic: message with the offset, then the rule and a caret (indented lines)."""
    text = f"invalid rule: {message} at offset {offset} of the rule"
    extra: str | None = None
    if hint and hint.startswith("did you mean"):
        text += f" ({hint})"
    else:
        extra = hint
    shown = rule.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    caret = " " * max(0, min(offset, len(shown))) + "^"
    return f"{text}\n    {shown}\n    {caret}", extra


def _check_rule(ctx: Ctx, router: RouterConfig, written: str) -> None:
    """Rule grammar and matcher/protocol checks, by the routing module (imported lazily: it is optional here)."""
    try:
        from a3s_gateway.routing import rules
    except ImportError:
        return  # the rule engine is not part of this build yet; nothing else depends on it
    check = getattr(rules, "check_rule", None)
    error_type = getattr(rules, "RuleError", None)
    if check is None or error_type is None:
        return
    where = f"routers.{router.name}.rule"
    assert router.rule is not None
    try:
        check(router.rule, router.protocol)
    except error_type as exc:  # the exception class is found at run time
        message, hint = format_rule_error(
            router.rule,
            str(getattr(exc, "message", exc)),
            int(getattr(exc, "offset", 0) or 0),
            getattr(exc, "hint", None),
        )
        ctx.error(ctx.at(where), where, message, hint)


_DEFINE: Final = {
    "entrypoint": 'define entrypoints "{}" {{ ... }}',
    "service": 'define services "{}" {{ ... }}',
    "middleware": 'define middlewares "{}" {{ type = "..." }}',
}


def _unknown(ctx: Ctx, where: str, kind: str, name: str, candidates: Iterable[str], alternative: str = "") -> None:
    """``unknown <kind> "<name>"`` at ``where``; the hint names the closest candidate, else how to define it."""
    close = suggest(name, candidates)
    hint = f'did you mean "{close}"?' if close else _DEFINE[kind].format(name) + alternative
    ctx.error(ctx.at(where), where, f'unknown {kind} "{name}"', hint)


def _transport(protocol: str) -> str:
    return "udp" if protocol == "udp" else "tcp"


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    if a[1] != b[1] or a[1] == 0:
        return False
    wildcard = ("", "0.0.0.0", "::", "*")
    return a[0].lower() == b[0].lower() or a[0] in wildcard or b[0] in wildcard


def _check_entrypoints(ctx: Ctx, entrypoints: dict[str, EntrypointConfig], admin: AdminConfig) -> None:
    seen: list[EntrypointConfig] = []
    for ep in entrypoints.values():
        p = f"entrypoints.{ep.name}"
        if not ctx.ok(f"{p}.address"):
            continue
        for other in seen:
            if _transport(other.protocol) == _transport(ep.protocol) and _same_socket(
                (ep.host, ep.port), (other.host, other.port)
            ):
                ctx.error(
                    ctx.at(f"{p}.address"),
                    f"{p}.address",
                    f'address {quote(ep.address)} is already used by entrypoint "{other.name}" '
                    f"(defined at {loc(ctx.at('entrypoints.' + other.name))})",
                )
                break
        seen.append(ep)
        if (
            admin.enabled
            and ctx.ok("admin.address")
            and ep.protocol != "udp"
            and _same_socket((ep.host, ep.port), (admin.host, admin.port))
        ):
            ctx.error(
                ctx.at(f"{p}.address"),
                f"{p}.address",
                f"address {quote(ep.address)} is also the admin address {quote(admin.address)}",
                'move the admin listener with admin { address = "..." }',
            )
        if ep.redirect is not None and ctx.ok(f"{p}.redirect.entrypoint"):
            target_name = ep.redirect.entrypoint
            where = f"{p}.redirect.entrypoint"
            target = entrypoints.get(target_name)
            if target is None:
                _unknown(ctx, where, "entrypoint", target_name, entrypoints)
            elif target.protocol != "http" or target.tls is None or target_name == ep.name:
                ctx.error(
                    ctx.at(where), where, f'redirect target "{target_name}" must be another http entrypoint with tls'
                )


def _router_protocol(ctx: Ctx, router: RouterConfig, entrypoints: dict[str, EntrypointConfig]) -> str:
    p = f"routers.{router.name}"
    protocols: dict[str, str] = {}
    for i, name in enumerate(router.entrypoints):
        ep = entrypoints.get(name)
        if ep is None:
            where = f"{p}.entrypoints[{i}]"
            _unknown(ctx, where, "entrypoint", name, entrypoints)
            ctx.bad.add(f"{p}.entrypoints")
        else:
            protocols.setdefault(ep.protocol, name)
    if len(protocols) > 1:
        kinds = sorted(protocols)
        ctx.error(
            ctx.at(f"{p}.entrypoints"),
            f"{p}.entrypoints",
            f'router "{router.name}" mixes entrypoints of protocols {", ".join(kinds[:-1])} and {kinds[-1]}',
        )
        ctx.bad.add(f"{p}.entrypoints")
    if protocols:
        return next(iter(protocols))
    if router.rule is not None and rule_matchers(router.rule) & _TCP_MATCHERS:
        return "tcp"
    return "http"


def _check_routers(
    ctx: Ctx,
    routers: dict[str, RouterConfig],
    entrypoints: dict[str, EntrypointConfig],
    services: dict[str, ServiceConfig],
    middlewares: dict[str, MiddlewareConfig],
    known_middlewares: set[str],
) -> dict[str, RouterConfig]:
    out: dict[str, RouterConfig] = {}
    udp_owner: dict[str, str] = {}
    for router in routers.values():
        p = f"routers.{router.name}"
        protocol = _router_protocol(ctx, router, entrypoints)
        rule = router.rule
        written = rule
        if rule is not None and protocol in ("tcp", "udp") and _LEGACY_RULE.match(rule):
            ctx.warn(
                ctx.at(f"{p}.rule"),
                f"{p}.rule",
                f"rule {quote(rule.strip())} is deprecated for {protocol} routers; use HostSNI(`*`)",
            )
            rule = "HostSNI(`*`)"
        if rule is None and protocol != "udp" and ctx.ok(f"{p}.rule"):
            ctx.error(ctx.at(p), p, 'missing required key "rule"')
        priority = router.priority or (len(written) if written is not None else 0)
        router = replace(router, rule=rule, protocol=protocol, effective_priority=priority)
        if protocol == "udp":
            if rule is not None and not _CATCH_ALL.match(rule):
                ctx.error(ctx.at(f"{p}.rule"), f"{p}.rule", "udp routers take no rule, or HostSNI(`*`)")
            for name in router.entrypoints:
                if name in udp_owner and udp_owner[name] != router.name and name in entrypoints:
                    ctx.error(
                        ctx.at(f"{p}.entrypoints"),
                        f"{p}.entrypoints",
                        f'udp entrypoint "{name}" accepts exactly one router; '
                        f'router "{udp_owner[name]}" already uses it',
                    )
                udp_owner.setdefault(name, router.name)
        elif rule is not None and ctx.ok(f"{p}.rule", f"{p}.entrypoints"):
            _check_rule(ctx, router, written or rule)
        if router.ai is not None and protocol != "http":
            ctx.error(ctx.at(f"{p}.ai"), f"{p}.ai", f"the ai block applies to HTTP routers only, not {protocol}")
        if ctx.ok(f"{p}.service") and router.service not in services:
            _unknown(ctx, f"{p}.service", "service", router.service, services)
        _check_chain(ctx, router, middlewares, known_middlewares)
        out[router.name] = router
    return out


def _check_chain(ctx: Ctx, router: RouterConfig, middlewares: dict[str, MiddlewareConfig], known: set[str]) -> None:
    p = f"routers.{router.name}.middlewares"
    if not ctx.ok(p):
        return
    if router.protocol == "udp" and router.middlewares:
        ctx.error(ctx.at(p), p, "udp routers take no middlewares")
        return
    last = len(router.middlewares) - 1
    for i, name in enumerate(router.middlewares):
        where = f"{p}[{i}]"
        if name not in known:
            _unknown(ctx, where, "middleware", name, known)
            continue
        mw = middlewares.get(name)
        if mw is None:
            continue  # invalid middleware, already reported
        if router.protocol == "tcp" and mw.type != "tcp-filter":
            ctx.error(ctx.at(where), where, f"{mw.type} cannot be used by TCP routers; only tcp-filter can")
        elif router.protocol == "http" and mw.type == "tcp-filter":
            ctx.error(ctx.at(where), where, "tcp-filter can only be used by TCP routers")
        elif mw.type == "ws-mux" and i != last:
            ctx.error(ctx.at(where), where, "ws-mux must be the last middleware of the router")
        elif mw.type == "token-limit":
            _check_token_key(ctx, where, name, mw, [middlewares.get(n) for n in router.middlewares[:i]])


def _check_token_key(ctx: Ctx, where: str, name: str, mw: MiddlewareConfig,
                     before: list[MiddlewareConfig | None]) -> None:
    """A token-limit keyed by a JWT claim or an api key needs that middleware before it (SPEC §16.4)."""
    key = str(mw.params.get("key", ""))
    need = "jwt" if key.startswith("jwt:") else "api-key" if key == "api_key" else None
    if need is not None and not any(m is not None and m.type == need for m in before):
        ctx.warn(ctx.at(where), where,
                 f'token-limit "{name}" is keyed by {key} but no {need} middleware comes before it on this router: '
                 "every request is keyed by its client IP")


def _check_admin(ctx: Ctx, admin: AdminConfig, middlewares: dict[str, MiddlewareConfig], known: set[str]) -> None:
    for i, name in enumerate(admin.middlewares):
        where = f"admin.middlewares[{i}]"
        if name not in known:
            _unknown(ctx, where, "middleware", name, known)
        elif name in middlewares and middlewares[name].type in ("tcp-filter", "ws-mux"):
            ctx.error(ctx.at(where), where, f"{middlewares[name].type} cannot be used by the admin API")


def _service_protocols(
    ctx: Ctx, services: dict[str, ServiceConfig], routers: dict[str, RouterConfig]
) -> dict[str, str]:
    users: dict[str, dict[str, str]] = {}
    for router in routers.values():
        users.setdefault(router.service, {}).setdefault(router.protocol, router.name)
    protocols: dict[str, str] = {}
    for name, service in services.items():
        by = users.get(name, {})
        if len(by) > 1:
            kinds = sorted(by)
            ctx.error(
                ctx.at(f"services.{name}"),
                f"services.{name}",
                f'service "{name}" is used by routers of protocols {" and ".join(kinds)} '
                f"({', '.join(by[k] for k in kinds)})",
            )
        if by:
            protocols[name] = next(iter(by))
            continue
        schemes = {s.scheme for s in _all_servers(service)}
        protocols[name] = "udp" if schemes == {"udp"} else "tcp" if schemes == {"tcp"} else "http"
    return protocols


def _all_servers(service: ServiceConfig) -> tuple[ServerConfig, ...]:
    return service.load_balancer.servers + tuple(s for r in service.revisions for s in r.servers)


def _check_services(
    ctx: Ctx, services: dict[str, ServiceConfig], routers: dict[str, RouterConfig], providers: ProvidersConfig,
    may_be_empty: Collection[str] = (),
) -> dict[str, ServiceConfig]:
    protocols = _service_protocols(ctx, services, routers)
    fed_by_dns: dict[str, int] = {}
    for i, dns in enumerate(providers.dns):
        where = f"providers.dns[{i}].service"
        if dns.service not in services:
            _unknown(ctx, where, "service", dns.service, services)
        elif services[dns.service].load_balancer.servers or services[dns.service].revisions:
            ctx.error(ctx.at(where), where, f'service "{dns.service}" is fed by DNS and must not list servers')
        fed_by_dns.setdefault(dns.service, i)
    out: dict[str, ServiceConfig] = {}
    for name, service in services.items():
        p = f"services.{name}"
        protocol = protocols[name]
        service = replace(service, protocol=protocol)
        out[name] = service
        _check_schemes(ctx, service)
        lb = service.load_balancer
        if protocol != "http":
            for key, present in (
                ("load_balancer.sticky", lb.sticky is not None),
                ("scaling", service.scaling is not None),
                ("revisions", bool(service.revisions)),
                ("mirror", service.mirror is not None),
                ("failover", service.failover is not None),
            ):
                if present:
                    where = f"{p}.{key}"
                    ctx.error(ctx.at(where), where, f"{key.split('.')[-1]} is not available for {protocol} services")
        hc = lb.health_check
        if hc is not None and ctx.ok(f"{p}.load_balancer.health_check.path"):
            if protocol == "http" and hc.path is None:
                where = f"{p}.load_balancer.health_check"
                ctx.error(
                    ctx.at(where), where, 'missing required key "path"', "http services are probed with GET <path>"
                )
            elif protocol != "http" and hc.path is not None:
                where = f"{p}.load_balancer.health_check.path"
                ctx.error(ctx.at(where), where, f"{protocol} services are probed by a connect; remove path")
        has_backends = bool(lb.servers) or bool(service.revisions) or name in fed_by_dns or name in may_be_empty
        has_backends = has_backends or (service.scaling is not None and service.scaling.executor != "static")
        if not has_backends and ctx.ok(f"{p}.load_balancer.servers", f"{p}.revisions", f"{p}.load_balancer"):
            ctx.error(
                ctx.at(p),
                p,
                f'service "{name}" has no backends: set load_balancer.servers, revisions, '
                'or a scaling executor other than "static"',
            )
        for server in _all_servers(service):
            if protocol == "http" and server.scheme == "https":
                ctx.explicit.add("https backend")
            if protocol == "http" and server.scheme == "h2c":
                ctx.explicit.add("h2c backend")
        _check_service_refs(ctx, service, services, protocols)
    _check_failover_cycles(ctx, out)
    return out


def _check_schemes(ctx: Ctx, service: ServiceConfig) -> None:
    allowed = {"http": ("http", "https", "h2c"), "tcp": ("tcp", "http", "https", "h2c"), "udp": ("udp",)}[
        service.protocol
    ]
    p = f"services.{service.name}"
    groups = [(f"{p}.load_balancer.servers", service.load_balancer.servers)]
    groups += [(f"{p}.revisions[{i}].servers", r.servers) for i, r in enumerate(service.revisions)]
    for base, servers in groups:
        for i, server in enumerate(servers):
            where = f"{base}[{i}].url"
            if ctx.ok(where) and server.scheme not in allowed:
                ctx.error(
                    ctx.at(where),
                    where,
                    f"scheme {quote(server.scheme)} is not allowed for a {service.protocol} service; use "
                    + ", ".join(allowed[:-1])
                    + (" or " if len(allowed) > 1 else "")
                    + allowed[-1],
                )


def _check_service_refs(
    ctx: Ctx, service: ServiceConfig, services: dict[str, ServiceConfig], protocols: dict[str, str]
) -> None:
    p = f"services.{service.name}"
    for kind, ref in (("mirror", service.mirror), ("failover", service.failover)):
        if ref is None:
            continue
        where = f"{p}.{kind}.service"
        if not ctx.ok(where):
            continue
        target = ref.service
        if target not in services:
            _unknown(ctx, where, "service", target, services, f" or remove the {kind} block")
        elif target == service.name:
            ctx.error(ctx.at(where), where, f"a service cannot be its own {kind} target")
        elif kind == "mirror" and protocols.get(target) != "http":
            ctx.error(ctx.at(where), where, f'mirror target "{target}" must be an http service')


def _check_failover_cycles(ctx: Ctx, services: dict[str, ServiceConfig]) -> None:
    reported: set[str] = set()
    for start in services:
        chain: list[str] = []
        current: str | None = start
        while current is not None and current in services and current not in chain:
            chain.append(current)
            nxt = services[current].failover
            current = nxt.service if nxt is not None else None
        if current is None or current not in chain:
            continue
        cycle = chain[chain.index(current) :]
        if set(cycle) & reported or len(cycle) < 2:
            continue  # self-failover is reported as such
        reported.update(cycle)
        first = min(cycle)
        k = cycle.index(first)
        ordered = cycle[k:] + cycle[:k]
        where = f"services.{first}.failover.service"
        ctx.error(ctx.at(where), where, "failover cycle: " + " → ".join([*ordered, first]))


def _warn_unused_entrypoints(
    ctx: Ctx, entrypoints: dict[str, EntrypointConfig], routers: dict[str, RouterConfig]
) -> None:
    used: set[str] = set()
    for router in routers.values():
        if router.entrypoints:
            used.update(router.entrypoints)
        else:
            used.update(n for n, ep in entrypoints.items() if ep.protocol == router.protocol)
    acme_http01 = any(
        ep.tls is not None and ep.tls.acme and ep.tls.challenge == "http-01" for ep in entrypoints.values()
    )
    secure = [n for n, ep in entrypoints.items() if ep.protocol == "http" and ep.tls is not None]
    port80 = any(ep.protocol == "http" and ep.tls is None and ep.port == 80 for ep in entrypoints.values())
    for name, ep in entrypoints.items():
        if ep.tls is not None and ep.tls.acme and ep.tls.challenge == "http-01" and not port80:
            where = f"entrypoints.{name}.tls"
            ctx.warn(
                ctx.at(where),
                where,
                "acme http-01 challenges are answered on port 80, but no plain http entrypoint listens there",
                'add entrypoints "web" { address = ":80" }, or use challenge = "tls-alpn-01"',
            )
    for name, ep in entrypoints.items():
        if ep.protocol != "http" or name in used or ep.redirect is not None:
            continue
        if acme_http01 and ep.tls is None:
            continue
        hint = "attach a router"
        if ep.tls is None and secure:
            hint += f', or add redirect {{ entrypoint = "{secure[0]}" }}'
        ctx.warn(
            ctx.at(f"entrypoints.{name}"),
            f"entrypoints.{name}",
            "no router uses this entrypoint; every request on it gets 404",
            hint,
        )
