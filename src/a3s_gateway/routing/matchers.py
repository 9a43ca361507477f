"""Compiled rule matchers and the per-request match inputs (SPEC §4.2).

Compiled by mypyc (the same source runs interpreted): native classes only, one ``match`` method per class, no
closures, no async generators, ``Final`` constants. Everything a matcher needs is prepared when the configuration
loads (lower-cased hosts, compiled regexes, lower-cased header names as bytes, parsed networks); a request only
compares.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl

from ..netaddr import IPSet, parse_ip

_HEX: Final = b"0123456789abcdefABCDEF"
_OWS: Final = b" \t"
# IPv4-mapped IPv6 addresses are ::ffff:a.b.c.d, i.e. the integer range below.


def normalize_host(raw: bytes) -> str:
    """Host header / authority -> match host: port removed (``[v6]:port`` -> ``v6``), trailing dot dropped, lower."""
    host = raw.decode("utf-8", "surrogateescape")
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            host = host[1:end]
    else:
        colon = host.find(":")
        # Exactly one colon is host:port; more than one is a bare IPv6 literal (not valid in Host, but keep it whole).
        if colon >= 0 and host.find(":", colon + 1) < 0:
            host = host[:colon]
    if host.endswith("."):
        host = host[:-1]
    return host.lower()


def _hex_value(c: int) -> int:
    if c <= 57:  # '0'..'9'
        return c - 48
    if c >= 97:  # 'a'..'f'
        return c - 87
    return c - 55  # 'A'..'F'


def _percent_decode_path(raw: bytes) -> bytes:
    """Decode %XX escapes except %2F and %25, which stay encoded with upper-case hex; invalid escapes stay as is."""
    out = bytearray()
    n = len(raw)
    i = 0
    while i < n:
        c = raw[i]
        if c == 37 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
            value = _hex_value(raw[i + 1]) * 16 + _hex_value(raw[i + 2])
            if value == 0x2F or value == 0x25:
                out += b"%2F" if value == 0x2F else b"%25"
            else:
                out.append(value)
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 remove_dot_segments; duplicate slashes are kept."""
    out: list[str] = []  # pieces "/seg" (or a leading "seg"); dropping the last piece drops "its preceding /"
    n = len(path)
    i = 0
    while i < n:
        if path.startswith("../", i):
            i += 3
        elif path.startswith("./", i):
            i += 2
        elif path.startswith("/./", i):
            i += 2
        elif path.startswith("/.", i) and i + 2 == n:
            out.append("/")
            i = n
        elif path.startswith("/../", i):
            i += 3
            if out:
                out.pop()
        elif path.startswith("/..", i) and i + 3 == n:
            if out:
                out.pop()
            out.append("/")
            i = n
        elif (i + 1 == n and path[i] == ".") or (i + 2 == n and path.startswith("..", i)):
            i = n
        else:
            j = path.find("/", i + 1) if path[i] == "/" else path.find("/", i)
            if j < 0:
                j = n
            out.append(path[i:j])
            i = j
    return "".join(out)


def match_path(raw_path: bytes) -> str:
    """Raw request path (no query) -> match path: decode escapes except %2F/%25, then remove dot segments."""
    # Fast path: nothing to decode and no dot segment possible.
    if b"%" not in raw_path and b"/." not in raw_path and not raw_path.startswith(b"."):
        return raw_path.decode("utf-8", "surrogateescape")
    decoded = _percent_decode_path(raw_path) if b"%" in raw_path else raw_path
    return remove_dot_segments(decoded.decode("utf-8", "surrogateescape"))


class MatchRequest:
    """The match inputs of one request, computed once; query and client IP parsed lazily, at most once.

    ``model`` is the request's model (SPEC §16.1; None: it has none). While ``model_pending`` the body was not read
    yet: a ``Model``/``ModelRegexp`` matcher that is reached sets ``need_model`` (the answer depends on the model).
    """

    def __init__(
        self,
        method: str,
        host: str,
        path: str,
        query: bytes | None,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
        model: str | None = None,
        model_pending: bool = False,
    ) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.headers = headers
        self.client_ip = client_ip
        self.model = model
        self.model_pending = model_pending
        self.need_model = False
        self._query_map: dict[str, list[str]] | None = None
        self._ip_version = -1
        self._ip_value = 0

    def query_map(self) -> dict[str, list[str]]:
        """The query as ``application/x-www-form-urlencoded`` (``+`` = space), parsed on first use."""
        parsed = self._query_map
        if parsed is None:
            parsed = {}
            if self.query:
                pairs = parse_qsl(self.query.decode("utf-8", "surrogateescape"), keep_blank_values=True)
                for key, value in pairs:
                    values = parsed.get(key)
                    if values is None:
                        parsed[key] = [value]
                    else:
                        values.append(value)
            self._query_map = parsed
        return parsed

    def ip(self) -> tuple[int, int]:
        """``(version, integer)`` of the client IP (IPv4-mapped normalised); version 0 when unparsable."""
        if self._ip_version < 0:
            version, value = parse_ip(self.client_ip)
            self._ip_version = version
            self._ip_value = value
        return (self._ip_version, self._ip_value)


class Matcher:
    """A compiled rule node: ``match`` answers one request."""

    def match(self, req: MatchRequest) -> bool:
        """True when the request satisfies this node."""
        raise NotImplementedError

    def needs_path(self) -> bool:
        """True when this node reads ``req.path`` (the router computes the match path only then)."""
        return False

    def needs_model(self) -> bool:
        """True when this node reads the request's model (SPEC §16.1: the body is inspected only then)."""
        return False


class TrueMatcher(Matcher):
    """Matches every request."""

    def match(self, req: MatchRequest) -> bool:
        return True


class AndMatcher(Matcher):
    """All children match; stops at the first that does not."""

    def __init__(self, children: list[Matcher]) -> None:
        self.children = children

    def match(self, req: MatchRequest) -> bool:
        for child in self.children:
            if not child.match(req):
                return False
        return True

    def needs_path(self) -> bool:
        for child in self.children:
            if child.needs_path():
                return True
        return False

    def needs_model(self) -> bool:
        for child in self.children:
            if child.needs_model():
                return True
        return False


class OrMatcher(Matcher):
    """Some child matches; stops at the first that does."""

    def __init__(self, children: list[Matcher]) -> None:
        self.children = children

    def match(self, req: MatchRequest) -> bool:
        for child in self.children:
            if child.match(req):
                return True
        return False

    def needs_path(self) -> bool:
        for child in self.children:
            if child.needs_path():
                return True
        return False

    def needs_model(self) -> bool:
        for child in self.children:
            if child.needs_model():
                return True
        return False


class NotMatcher(Matcher):
    """Negation of its child."""

    def __init__(self, child: Matcher) -> None:
        self.child = child

    def match(self, req: MatchRequest) -> bool:
        return not self.child.match(req)

    def needs_path(self) -> bool:
        return self.child.needs_path()

    def needs_model(self) -> bool:
        return self.child.needs_model()


def prepare_host(host: str) -> str:
    """A configured ``Host`` argument as the matcher compares it: brackets, one trailing dot removed, lower-case."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.endswith("."):
        host = host[:-1]
    return host.lower()


class HostMatcher(Matcher):
    """``Host(h, ...)``: the normalised host is one of ``hosts``."""

    def __init__(self, hosts: list[str]) -> None:
        self.hosts: set[str] = {prepare_host(h) for h in hosts}

    def match(self, req: MatchRequest) -> bool:
        return req.host in self.hosts


class HostRegexpMatcher(Matcher):
    """``HostRegexp(re, ...)``: some pattern is found in the (lower-case) host."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        self.patterns = patterns

    def match(self, req: MatchRequest) -> bool:
        host = req.host
        for pattern in self.patterns:
            if pattern.search(host) is not None:
                return True
        return False


class PathMatcher(Matcher):
    """``Path(p, ...)``: the match path equals some ``p``."""

    def __init__(self, paths: list[str]) -> None:
        self.paths: set[str] = set(paths)

    def match(self, req: MatchRequest) -> bool:
        return req.path in self.paths

    def needs_path(self) -> bool:
        return True


class PathPrefixMatcher(Matcher):
    """``PathPrefix(p, ...)``: the match path starts with some ``p`` (plain string prefix)."""

    def __init__(self, prefixes: list[str]) -> None:
        self.prefixes = prefixes

    def match(self, req: MatchRequest) -> bool:
        path = req.path
        for prefix in self.prefixes:
            if path.startswith(prefix):
                return True
        return False

    def needs_path(self) -> bool:
        return True


class PathRegexpMatcher(Matcher):
    """``PathRegexp(re, ...)``: some pattern is found in the match path."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        self.patterns = patterns

    def match(self, req: MatchRequest) -> bool:
        path = req.path
        for pattern in self.patterns:
            if pattern.search(path) is not None:
                return True
        return False

    def needs_path(self) -> bool:
        return True


class MethodMatcher(Matcher):
    """``Method(m, ...)``: the method equals some ``m``, case-insensitively."""

    def __init__(self, methods: list[str]) -> None:
        self.methods: set[str] = {m.upper() for m in methods}

    def match(self, req: MatchRequest) -> bool:
        method = req.method
        if method in self.methods:
            return True
        return method.upper() in self.methods


def _header_name(name: str) -> bytes:
    return name.strip().lower().encode("latin-1")


class HeaderMatcher(Matcher):
    """``Header(name, value)``: some field line of ``name`` has exactly ``value`` (surrounding whitespace trimmed)."""

    def __init__(self, name: str, value: str) -> None:
        self.name = _header_name(name)
        self.value = value.strip(" \t").encode("utf-8")

    def match(self, req: MatchRequest) -> bool:
        name = self.name
        size = len(name)
        for key, value in req.headers:
            if len(key) == size and key.lower() == name and value.strip(_OWS) == self.value:
                return True
        return False


class HeaderRegexpMatcher(Matcher):
    """``HeaderRegexp(name, re)``: the pattern is found in some field line of ``name``."""

    def __init__(self, name: str, pattern: re.Pattern[str]) -> None:
        self.name = _header_name(name)
        self.pattern = pattern

    def match(self, req: MatchRequest) -> bool:
        name = self.name
        size = len(name)
        for key, value in req.headers:
            if len(key) == size and key.lower() == name:
                text = value.strip(_OWS).decode("utf-8", "surrogateescape")
                if self.pattern.search(text) is not None:
                    return True
        return False


class QueryMatcher(Matcher):
    """``Query(key)`` (key present) or ``Query(key, value)`` (some value of key equals ``value``)."""

    def __init__(self, key: str, value: str | None) -> None:
        self.key = key
        self.value = value

    def match(self, req: MatchRequest) -> bool:
        if req.query is None:
            return False
        values = req.query_map().get(self.key)
        if values is None:
            return False
        want = self.value
        if want is None:
            return True
        return want in values


class QueryRegexpMatcher(Matcher):
    """``QueryRegexp(key, re)``: the pattern is found in some value of ``key``."""

    def __init__(self, key: str, pattern: re.Pattern[str]) -> None:
        self.key = key
        self.pattern = pattern

    def match(self, req: MatchRequest) -> bool:
        if req.query is None:
            return False
        values = req.query_map().get(self.key)
        if values is None:
            return False
        for value in values:
            if self.pattern.search(value) is not None:
                return True
        return False


class ClientIPMatcher(Matcher):
    """``ClientIP(ip_or_cidr, ...)``: the client IP equals an IP or lies in a network."""

    def __init__(self, networks: list[str]) -> None:
        self.ips = IPSet(networks)

    def match(self, req: MatchRequest) -> bool:
        version, value = req.ip()
        return self.ips.contains_value(version, value)
        for net_version, net_value, mask in self.networks:
            if net_version == version and value & mask == net_value:
                return True
        return False


class ModelMatcher(Matcher):
    """``Model(name, ...)``: the request's model (SPEC §16.1) equals some ``name`` (case-sensitive)."""

    def __init__(self, names: list[str]) -> None:
        self.names: set[str] = set(names)

    def match(self, req: MatchRequest) -> bool:
        if req.model_pending:
            req.need_model = True
            return False
        model = req.model
        return model is not None and model in self.names

    def needs_model(self) -> bool:
        return True


class ModelRegexpMatcher(Matcher):
    """``ModelRegexp(re, ...)``: some pattern is found in the request's model."""

    def __init__(self, patterns: list[re.Pattern[str]]) -> None:
        self.patterns = patterns

    def match(self, req: MatchRequest) -> bool:
        if req.model_pending:
            req.need_model = True
            return False
        model = req.model
        if model is None:
            return False
        for pattern in self.patterns:
            if pattern.search(model) is not None:
                return True
        return False

    def needs_model(self) -> bool:
        return True
