"""HTTP router: routes in priority order, first match wins, with a host index (SPEC §4.3).

Compiled by mypyc (the same source runs interpreted): native classes, no closures on the request path.

The host index never changes the answer of the linear scan: a route is indexed under a host only when its matcher
cannot match any other host, and every bucket is the priority-ordered merge of that host's routes with the routes
that require no particular host.
"""

from __future__ import annotations

from typing import Final

from a3s_gateway.routing.matchers import (
    AndMatcher,
    HostMatcher,
    Matcher,
    MatchRequest,
    OrMatcher,
    TrueMatcher,
    match_path,
    normalize_host,
)


class Route:
    """One router of an entrypoint: ``priority`` is the effective priority; ``target`` is the proxy's payload."""

    def __init__(self, name: str, rule: str, priority: int, matcher: Matcher, target: object,
                 inspect: bool = False) -> None:
        self.name = name
        self.rule = rule
        self.priority = priority
        self.matcher = matcher
        self.target = target
        # its requests' bodies are inspected (SPEC §16.1) whatever the rule: read here, a native field, so that the
        # plain path pays no attribute lookup on the (interpreted) target for it
        self.inspect = inspect

    def __repr__(self) -> str:
        return f"Route({self.name!r}, priority={self.priority})"


#: what :meth:`Router.match` answers while the model is pending and the first route that could match reads it
NEEDS_MODEL: Final = Route("", "", 0, TrueMatcher(), None)


def required_hosts(matcher: Matcher) -> set[str] | None:
    """The only hosts ``matcher`` can match, or None when it may match any host."""
    if isinstance(matcher, HostMatcher):
        return matcher.hosts
    if isinstance(matcher, AndMatcher):
        found: set[str] | None = None
        for child in matcher.children:
            hosts = required_hosts(child)
            if hosts is not None:
                found = set(hosts) if found is None else found & hosts
        return found
    if isinstance(matcher, OrMatcher):
        union: set[str] = set()
        for child in matcher.children:
            hosts = required_hosts(child)
            if hosts is None:
                return None
            union |= hosts
        return union
    return None


def _route_order(route: Route) -> tuple[int, str]:
    # Code-point order of str equals the byte-wise order of its UTF-8 encoding.
    return (-route.priority, route.name)


class _Bucket:
    """Candidate routes for one host, in priority order, and whether any of them reads the match path."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self.needs_path = False
        for route in routes:
            if route.matcher.needs_path():
                self.needs_path = True
                break


def _merge(ordered: list[Route], first: list[int], second: list[int]) -> list[Route]:
    """Routes at the positions of two ascending position lists, in position order."""
    out: list[Route] = []
    i = 0
    j = 0
    n1 = len(first)
    n2 = len(second)
    while i < n1 and j < n2:
        if first[i] < second[j]:
            out.append(ordered[first[i]])
            i += 1
        else:
            out.append(ordered[second[j]])
            j += 1
    while i < n1:
        out.append(ordered[first[i]])
        i += 1
    while j < n2:
        out.append(ordered[second[j]])
        j += 1
    return out


class Router:
    """Routes ordered by priority descending, then name ascending; ``match`` returns the first that matches."""

    def __init__(self, routes: list[Route]) -> None:
        ordered = sorted(routes, key=_route_order)
        self.routes: list[Route] = ordered
        hostless: list[int] = []
        by_host: dict[str, list[int]] = {}
        for pos, route in enumerate(ordered):
            hosts = required_hosts(route.matcher)
            if hosts is None:
                hostless.append(pos)
                continue
            for host in hosts:
                positions = by_host.get(host)
                if positions is None:
                    by_host[host] = [pos]
                else:
                    positions.append(pos)
        self._default = _Bucket([ordered[pos] for pos in hostless])
        self._index: dict[str, _Bucket] = {}
        for host, positions in by_host.items():
            self._index[host] = _Bucket(_merge(ordered, positions, hostless))
        #: some rule reads the request's model (SPEC §16.1): requests are matched with the model pending first
        self.uses_model = False
        for route in ordered:
            if route.matcher.needs_model():
                self.uses_model = True
                break

    def candidates(self, host: str) -> list[Route]:
        """The routes scanned for a normalised ``host``, in order."""
        bucket = self._index.get(host)
        if bucket is None:
            bucket = self._default
        return bucket.routes

    def match(
        self,
        method: bytes,
        host: bytes,
        path: bytes,
        query: bytes | None,
        headers: list[tuple[bytes, bytes]],
        client_ip: str,
        model: str | None = None,
        model_pending: bool = False,
    ) -> Route | None:
        """The first route (in priority order) whose rule matches the request, or None.

        With ``model_pending`` (the body was not inspected yet), :data:`NEEDS_MODEL` when the answer depends on the
        request's model: a route that reads it is reached before any route matched (SPEC §16.1)."""
        host_s = normalize_host(host)
        bucket = self._index.get(host_s) if self._index else None
        if bucket is None:
            bucket = self._default
        routes = bucket.routes
        if not routes:
            return None
        path_s = match_path(path) if bucket.needs_path else ""
        req = MatchRequest(method.decode("latin-1"), host_s, path_s, query, headers, client_ip, model, model_pending)
        if not model_pending:
            for route in routes:
                if route.matcher.match(req):
                    return route
            return None
        for route in routes:
            matched = route.matcher.match(req)
            if req.need_model:
                return NEEDS_MODEL
            if matched:
                return route
        return None
