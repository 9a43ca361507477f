"""TCP routers (SPEC §9.5): rules over the TLS server name, the ALPN protocols and the client IP.

A rule is checked with :func:`rules.check_rule` (protocol "tcp") and compiled once into a small tree of matcher
objects with prepared leaves (lower-cased names, compiled regexes, parsed networks); a connection only compares.
Routes are tried by priority, highest first, then by name ascending, so the order is total and stable across
reloads (the priority given is the effective one: ``rules.effective_priority`` is the caller's job).

Interpreted (not compiled): a TCP router runs once per connection, not once per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..netaddr import parse_ip, parse_network
from . import rules


class TcpInput:
    """The match inputs of one connection: normalised SNI, offered (or negotiated) ALPN protocols, parsed IP."""

    __slots__ = ("alpn", "ip_value", "ip_version", "sni")

    def __init__(self, sni: str | None, alpn: tuple[str, ...], client_ip: str) -> None:
        self.sni = _normalize_name(sni) if sni is not None else None
        self.alpn = alpn
        self.ip_version, self.ip_value = parse_ip(client_ip)


def _normalize_name(name: str) -> str:
    """Case-insensitive comparison form of a server name: one trailing dot removed, lower-case."""
    if name.endswith("."):
        name = name[:-1]
    return name.lower()


class TcpMatcher:
    """A compiled TCP rule node."""

    def match(self, conn: TcpInput) -> bool:
        """True when the connection satisfies this node."""
        raise NotImplementedError

    def needs_peek(self) -> bool:
        """True when the answer depends on the ClientHello (SNI or ALPN), so a passthrough entrypoint peeks."""
        return False


class SNIMatcher(TcpMatcher):
    """``HostSNI(name, ...)``: the SNI is one of the names; ``*`` matches every connection, TLS or not."""

    def __init__(self, names: list[str]) -> None:
        self.catch_all = "*" in names
        self.names = frozenset(_normalize_name(n) for n in names if n != "*")

    def match(self, conn: TcpInput) -> bool:
        if self.catch_all:
            return True
        sni = conn.sni
        return sni is not None and sni in self.names

    def needs_peek(self) -> bool:
        return not self.catch_all


class SNIRegexpMatcher(TcpMatcher):
    """``HostSNIRegexp(re, ...)``: some pattern is found in the (lower-case) SNI; never matches without SNI."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        self.patterns = patterns

    def match(self, conn: TcpInput) -> bool:
        sni = conn.sni
        if sni is None:
            return False
        for pattern in self.patterns:
            if pattern.search(sni) is not None:
                return True
        return False

    def needs_peek(self) -> bool:
        return True


class ALPNMatcher(TcpMatcher):
    """``ALPN(proto, ...)``: the client offered (passthrough) or negotiated (TLS termination) one of the protocols."""

    def __init__(self, protocols: list[str]) -> None:
        self.protocols = frozenset(protocols)

    def match(self, conn: TcpInput) -> bool:
        for proto in conn.alpn:
            if proto in self.protocols:
                return True
        return False

    def needs_peek(self) -> bool:
        return True


class ClientIPMatcher(TcpMatcher):
    """``ClientIP(ip_or_cidr, ...)``: the peer address lies in one of the networks (IPv4-mapped IPv6 as IPv4)."""

    def __init__(self, networks: list[str]) -> None:
        self.networks = [parse_network(n) for n in networks]

    def match(self, conn: TcpInput) -> bool:
        version = conn.ip_version
        value = conn.ip_value
        for net_version, net_value, mask in self.networks:
            if net_version == version and value & mask == net_value:
                return True
        return False


class AndMatcher(TcpMatcher):
    """All children match (left to right, stops at the first that does not)."""

    def __init__(self, children: list[TcpMatcher]) -> None:
        self.children = children

    def match(self, conn: TcpInput) -> bool:
        for child in self.children:
            if not child.match(conn):
                return False
        return True

    def needs_peek(self) -> bool:
        return any(child.needs_peek() for child in self.children)


class OrMatcher(TcpMatcher):
    """Some child matches (left to right, stops at the first that does)."""

    def __init__(self, children: list[TcpMatcher]) -> None:
        self.children = children

    def match(self, conn: TcpInput) -> bool:
        for child in self.children:
            if child.match(conn):
                return True
        return False

    def needs_peek(self) -> bool:
        return any(child.needs_peek() for child in self.children)


class NotMatcher(TcpMatcher):
    """Negation of its child."""

    def __init__(self, child: TcpMatcher) -> None:
        self.child = child

    def match(self, conn: TcpInput) -> bool:
        return not self.child.match(conn)

    def needs_peek(self) -> bool:
        return self.child.needs_peek()


def compile_tcp_rule(node: rules.Node) -> TcpMatcher:
    """Compile a parsed TCP rule (from ``rules.check_rule(text, "tcp")``) into its matcher tree."""
    if isinstance(node, rules.Call):
        args = list(node.args)
        if node.name == "HostSNI":
            return SNIMatcher(args)
        if node.name == "HostSNIRegexp":
            return SNIRegexpMatcher([re.compile(a) for a in args])
        if node.name == "ALPN":
            return ALPNMatcher(args)
        if node.name == "ClientIP":
            return ClientIPMatcher(args)
        raise rules.RuleError(f"{node.name} is not a TCP matcher", node.offset)
    if isinstance(node, rules.Not):
        return NotMatcher(compile_tcp_rule(node.item))
    children = [compile_tcp_rule(item) for item in node.items]
    return AndMatcher(children) if isinstance(node, rules.And) else OrMatcher(children)


@dataclass
class TcpRoute:
    """A TCP router: ``rule`` is compiled on construction (raises :class:`rules.RuleError`); ``priority`` is the
    effective priority; ``target`` is what a match leads to (the proxy's ``TcpTarget``)."""

    name: str
    rule: str
    priority: int
    target: Any
    matcher: TcpMatcher = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.matcher = compile_tcp_rule(rules.check_rule(self.rule, rules.TCP))


class TcpRouter:
    """The TCP routes of one entrypoint, tried by priority descending, then name ascending."""

    def __init__(self, routes: list[TcpRoute]) -> None:
        self.routes: tuple[TcpRoute, ...] = tuple(sorted(routes, key=lambda r: (-r.priority, r.name)))
        self._matchers = tuple((route.matcher, route) for route in self.routes)
        #: some rule reads the SNI or ALPN: a passthrough entrypoint must peek at the ClientHello
        self.needs_peek = any(route.matcher.needs_peek() for route in self.routes)

    def match(self, sni: str | None, alpn: tuple[str, ...], client_ip: str) -> TcpRoute | None:
        """The first route whose rule matches; ``sni`` None and ``alpn`` () for a connection that is not TLS."""
        conn = TcpInput(sni, alpn, client_ip)
        for matcher, route in self._matchers:
            if matcher.match(conn):
                return route
        return None
