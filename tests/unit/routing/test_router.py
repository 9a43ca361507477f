"""HTTP router (SPEC §4.3): ordering, ties, host index equivalent to the linear scan, large route tables."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_gateway.routing import matchers as m
from a3s_gateway.routing.router import Route, Router, required_hosts
from a3s_gateway.routing.rules import (
    And,
    Call,
    Node,
    Not,
    Or,
    compile_rule,
    effective_priority,
    format_rule,
    parse_rule,
)


def route(name: str, rule: str, priority: int = 0, target: object = None) -> Route:
    return Route(name, rule, effective_priority(rule, priority), compile_rule(parse_rule(rule)), target)


def match(
    router: Router,
    host: bytes = b"a.com",
    path: bytes = b"/",
    method: bytes = b"GET",
    query: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    client_ip: str = "10.0.0.1",
) -> str | None:
    found = router.match(method, host, path, query, headers or [], client_ip)
    return None if found is None else found.name


# --- ordering ----------------------------------------------------------------------------------------------------


def test_orders_by_priority_then_name() -> None:
    routes = [
        route("b", "PathPrefix(`/`)", 10),
        route("a", "PathPrefix(`/`)", 10),
        route("c", "PathPrefix(`/`)", 20),
        route("d", "PathPrefix(`/`)", -1),
        route("long", "PathPrefix(`/api/v1`)"),  # 21
        route("short", "PathPrefix(`/`)"),  # 15
    ]
    router = Router(routes)
    assert [r.name for r in router.routes] == ["long", "c", "short", "a", "b", "d"]
    assert [r.priority for r in router.routes] == [21, 20, 15, 10, 10, -1]
    assert match(router, path=b"/api/v1/x") == "long"
    assert match(router, path=b"/x") == "c"


def test_ties_are_byte_wise() -> None:
    names = ["b", "B", "a", "ä", "a-2", "a2", "Z", "é"]
    router = Router([route(n, "PathPrefix(`/`)", 1) for n in names])
    expected = sorted(names, key=lambda n: n.encode("utf-8"))
    assert [r.name for r in router.routes] == expected == ["B", "Z", "a", "a-2", "a2", "b", "ä", "é"]
    assert match(router) == "B"


def test_default_priority_is_rule_length() -> None:
    # the longer (more specific) rule wins without explicit priorities
    router = Router([route("api", "PathPrefix(`/api`)"), route("api-users", "PathPrefix(`/api/users`)")])
    assert match(router, path=b"/api/users/1") == "api-users"
    assert match(router, path=b"/api/other") == "api"


def test_route_keeps_its_fields() -> None:
    target = object()
    matcher = m.TrueMatcher()
    r = Route("n", "rule", 7, matcher, target)
    assert (r.name, r.rule, r.priority, r.matcher, r.target) == ("n", "rule", 7, matcher, target)
    assert Router([r]).match(b"GET", b"x", b"/", None, [], "") is r


# --- matching ----------------------------------------------------------------------------------------------------


def test_no_routes_and_no_match() -> None:
    assert match(Router([])) is None
    assert match(Router([route("x", "Host(`b.com`)")])) is None
    assert match(Router([route("x", "Path(`/x`)")]), path=b"/y") is None


def test_inputs_are_normalised() -> None:
    router = Router([route("api", "Host(`api.example.com`) && Path(`/v1/models`)")])
    assert match(router, host=b"API.Example.com.:8443", path=b"/v1/./x/../%6dodels") == "api"
    assert match(router, host=b"api.example.com", path=b"/v1/models/") is None


def test_every_input_reaches_the_matchers() -> None:
    router = Router(
        [
            route("method", "Host(`a.com`) && Method(`POST`)", 50),
            route("query", "Query(`v`, `2`)", 40),
            route("header", "Header(`X-Canary`, `1`)", 30),
            route("ip", "ClientIP(`192.168.0.0/16`)", 20),
            route("fallback", "PathPrefix(`/`)", 1),
        ]
    )
    assert match(router, method=b"POST") == "method"
    assert match(router, query=b"v=1&v=2") == "query"
    assert match(router, headers=[(b"x-canary", b"1")]) == "header"
    assert match(router, client_ip="::ffff:192.168.3.4") == "ip"
    assert match(router) == "fallback"


def test_host_index_merges_host_less_routes_by_priority() -> None:
    router = Router(
        [
            route("catch-all-high", "PathPrefix(`/admin`)", 100),
            route("a", "Host(`a.com`) && PathPrefix(`/`)", 50),
            route("a-or-b", "Host(`a.com`) || Host(`b.com`)", 40),
            route("not-a", "!Host(`a.com`)", 30),
            route("regexp", "HostRegexp(`^c`)", 20),
            route("catch-all-low", "PathPrefix(`/`)", 1),
        ]
    )
    assert [r.name for r in router.candidates("a.com")] == [
        "catch-all-high",
        "a",
        "a-or-b",
        "not-a",
        "regexp",
        "catch-all-low",
    ]
    assert [r.name for r in router.candidates("b.com")] == [
        "catch-all-high",
        "a-or-b",
        "not-a",
        "regexp",
        "catch-all-low",
    ]
    assert [r.name for r in router.candidates("z.com")] == ["catch-all-high", "not-a", "regexp", "catch-all-low"]
    assert match(router, host=b"a.com", path=b"/admin/x") == "catch-all-high"
    assert match(router, host=b"a.com") == "a"
    assert match(router, host=b"b.com") == "a-or-b"
    assert match(router, host=b"c.com") == "not-a"
    assert match(router, host=b"a.com:80", path=b"/x") == "a"


@pytest.mark.parametrize(
    ("rule", "hosts"),
    [
        ("Host(`a`, `B`)", {"a", "b"}),
        ("Host(`a`) && Path(`/`)", {"a"}),
        ("Path(`/`) && Host(`a`, `b`) && Host(`b`, `c`)", {"b"}),
        ("Host(`a`) && Host(`b`)", set()),
        ("Host(`a`) || Host(`b`) && Path(`/`)", {"a", "b"}),
        ("(Host(`a`) || Host(`b`)) && Method(`GET`)", {"a", "b"}),
        ("Host(`a`) || Path(`/`)", None),
        ("!Host(`a`)", None),
        ("HostRegexp(`a`)", None),
        ("PathPrefix(`/`)", None),
    ],
)
def test_required_hosts(rule: str, hosts: set[str] | None) -> None:
    assert required_hosts(compile_rule(parse_rule(rule))) == hosts


def test_path_is_not_normalised_when_no_candidate_needs_it() -> None:
    router = Router([route("a", "Host(`a.com`)"), route("b", "Host(`b.com`) && Path(`/x`)")])
    # a path that only the path-reading bucket would look at
    assert match(router, host=b"a.com", path=b"/anything/%2e%2e") == "a"
    assert match(router, host=b"b.com", path=b"/y/../x") == "b"


# --- host index == linear scan (Hypothesis) -------------------------------------------------------------------------

HOSTS = ["a.com", "b.com", "c.com"]
_LEAVES = st.sampled_from(
    [
        Call("Host", ("a.com",)),
        Call("Host", ("b.com",)),
        Call("Host", ("A.com", "c.com")),
        Call("HostRegexp", ("^[ab]",)),
        Call("PathPrefix", ("/x",)),
        Call("Path", ("/x/y",)),
        Call("Method", ("POST",)),
        Call("Header", ("X-A", "1")),
        Call("Query", ("q",)),
        Call("ClientIP", ("10.0.0.0/8",)),
    ]
)


def _tree(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Not, children),
        st.builds(lambda items: And(tuple(items)), st.lists(children, min_size=2, max_size=3)),
        st.builds(lambda items: Or(tuple(items)), st.lists(children, min_size=2, max_size=3)),
    )


RULES = st.recursive(_LEAVES, _tree, max_leaves=5)
ROUTES = st.lists(
    st.tuples(st.sampled_from(["r", "s", "t", "R", "é"]), RULES, st.sampled_from([0, 0, 1, 5, 30, -2])),
    max_size=12,
)
RequestTuple = tuple[bytes, bytes, bytes, bytes | None, list[tuple[bytes, bytes]], str]
REQUESTS = st.tuples(
    st.sampled_from([b"GET", b"POST"]),
    st.sampled_from([b"a.com", b"B.com:8080", b"c.com.", b"d.com", b""]),
    st.sampled_from([b"/", b"/x", b"/x/y", b"/x/z/../y", b"/%78/y"]),
    st.sampled_from([None, b"q=1", b""]),
    st.sampled_from([[], [(b"x-a", b"1")]]),
    st.sampled_from(["10.1.1.1", "192.168.0.1", "::ffff:10.0.0.1"]),
)


def _linear_scan(
    routes: list[Route],
    method: bytes,
    host: bytes,
    path: bytes,
    query: bytes | None,
    headers: list[tuple[bytes, bytes]],
    client_ip: str,
) -> Route | None:
    request = m.MatchRequest(method.decode(), m.normalize_host(host), m.match_path(path), query, headers, client_ip)
    ordered = sorted(routes, key=lambda r: (-r.priority, r.name.encode()))
    for r in ordered:
        if r.matcher.match(request):
            return r
    return None


@settings(max_examples=400, deadline=None)
@given(ROUTES, st.lists(REQUESTS, min_size=1, max_size=8))
def test_host_index_equals_linear_scan(specs: list[tuple[str, Node, int]], requests: list[RequestTuple]) -> None:
    routes = []
    for index, (name, node, priority) in enumerate(specs):
        text = format_rule(node)
        routes.append(Route(f"{name}{index % 3}", text, effective_priority(text, priority), compile_rule(node), index))
    router = Router(routes)
    for method, host, path, query, headers, client_ip in requests:
        expected = _linear_scan(routes, method, host, path, query, headers, client_ip)
        assert router.match(method, host, path, query, headers, client_ip) is expected


@settings(max_examples=200, deadline=None)
@given(ROUTES)
def test_routes_are_in_priority_then_name_order(specs: list[tuple[str, Node, int]]) -> None:
    routes = [Route(name, format_rule(node), prio, compile_rule(node), None) for name, node, prio in specs]
    ordered = Router(routes).routes
    keys = [(-r.priority, r.name.encode()) for r in ordered]
    assert keys == sorted(keys)
    assert sorted(map(id, ordered)) == sorted(map(id, routes))


# --- sizes -----------------------------------------------------------------------------------------------------


def traefik_mix(count: int) -> list[Route]:
    """Mostly ``Host && PathPrefix`` rules over count/4 hosts, plus some host-less and regexp routes."""
    routes = []
    for i in range(count):
        kind = i % 10
        if kind == 8:
            rule = f"PathPrefix(`/shared/{i}`)"
        elif kind == 9:
            rule = f"HostRegexp(`^re{i}\\.example\\.net$`)"
        else:
            rule = f"Host(`svc{i // 4}.example.com`) && PathPrefix(`/api/v{i % 4}`)"
        routes.append(route(f"route-{i:05d}", rule))
    return routes


@pytest.mark.parametrize("count", [10, 1000, 10000])
def test_route_table_sizes(count: int) -> None:
    routes = traefik_mix(count)
    started = time.perf_counter()
    router = Router(routes)
    built = time.perf_counter() - started
    assert len(router.routes) == count
    assert built < 30
    last = count - 3  # kind 7: a Host && PathPrefix route
    assert match(router, host=f"svc{last // 4}.example.com".encode(), path=f"/api/v{last % 4}/chat".encode()) == (
        f"route-{last:05d}"
    )
    assert match(router, host=b"svc0.example.com", path=b"/api/v0") == "route-00000"
    assert match(router, host=b"unknown.example.com", path=b"/shared/8/x") == "route-00008"
    assert match(router, host=b"re9.example.net", path=b"/") == "route-00009"
    assert match(router, host=b"unknown.example.com", path=b"/api/v0") is None
    for i in range(0, count, max(1, count // 50)):
        if i % 10 < 8:
            got = match(router, host=f"svc{i // 4}.example.com".encode(), path=f"/api/v{i % 4}/x".encode())
            assert got == f"route-{i:05d}"
