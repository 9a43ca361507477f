"""TCP routers (SPEC §9.5): matchers, priority order, peek decision; the compiled tree against a reference."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from a3s_gateway.routing import rules
from a3s_gateway.routing.tcp import TcpRoute, TcpRouter


def router(*specs: tuple[str, str, int]) -> TcpRouter:
    return TcpRouter([TcpRoute(name, rule, priority, name) for name, rule, priority in specs])


def name_of(r: TcpRouter, sni: str | None, alpn: tuple[str, ...] = (), ip: str = "192.0.2.1") -> str | None:
    route = r.match(sni, alpn, ip)
    return None if route is None else route.name


def test_higher_priority_first_then_name() -> None:
    r = router(
        ("catch-all", "HostSNI(`*`)", 1),
        ("api", "HostSNI(`api.example.com`)", 10),
        ("b-any", "HostSNIRegexp(`example`)", 5),
        ("a-any", "HostSNIRegexp(`example`)", 5),
    )
    assert [route.name for route in r.routes] == ["api", "a-any", "b-any", "catch-all"]
    assert name_of(r, "api.example.com") == "api"
    assert name_of(r, "www.example.com") == "a-any"
    assert name_of(r, "other.test") == "catch-all"
    assert name_of(r, None) == "catch-all"


def test_host_sni_star_matches_connections_without_tls() -> None:
    r = router(("any", "HostSNI(`*`)", 1))
    assert name_of(r, None) == "any"
    assert name_of(r, "x.test", ("h2",)) == "any"


def test_host_sni_is_case_insensitive_and_needs_a_name() -> None:
    r = router(("a", "HostSNI(`A.Example.com`, `b.example.com`)", 1))
    assert name_of(r, "a.example.COM") == "a"
    assert name_of(r, "B.EXAMPLE.COM.") == "a"
    assert name_of(r, "c.example.com") is None
    assert name_of(r, None) is None


def test_host_sni_regexp() -> None:
    r = router(("re", r"HostSNIRegexp(`^[a-z]+\.example\.com$`, `^db-[0-9]+\.internal$`)", 1))
    assert name_of(r, "API.example.com") == "re"  # matched lower-case
    assert name_of(r, "db-12.internal") == "re"
    assert name_of(r, "a.b.example.com") is None
    assert name_of(r, None) is None


def test_alpn_matches_any_offered_protocol() -> None:
    r = router(("h2", "ALPN(`h2`)", 2), ("rest", "HostSNI(`*`)", 1))
    assert name_of(r, "x.test", ("http/1.1", "h2")) == "h2"
    assert name_of(r, "x.test", ("http/1.1",)) == "rest"
    assert name_of(r, None, ()) == "rest"


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", "v4"),
        ("::ffff:10.1.2.3", "v4"),  # IPv4-mapped IPv6 is the IPv4 address
        ("11.0.0.1", None),
        ("2001:db8::42", "v6"),
        ("2001:db9::1", None),
        ("fe80::1%eth0", None),  # not parseable as an address: no ClientIP rule matches it
        ("", None),
    ],
)
def test_client_ip_v4_and_v6(ip: str, expected: str | None) -> None:
    r = router(("v4", "ClientIP(`10.0.0.0/8`)", 2), ("v6", "ClientIP(`2001:db8::/32`, `192.0.2.7`)", 1))
    assert name_of(r, None, (), ip) == expected


def test_negation_and_grouping() -> None:
    r = router(("outside", "HostSNI(`*`) && !(ClientIP(`10.0.0.0/8`) || ALPN(`h2`))", 1))
    assert name_of(r, None, (), "192.0.2.1") == "outside"
    assert name_of(r, None, (), "10.0.0.1") is None
    assert name_of(r, "a.test", ("h2",), "192.0.2.1") is None


@pytest.mark.parametrize(
    ("rules_", "needs_peek"),
    [
        (["HostSNI(`*`)"], False),
        (["HostSNI(`*`)", "ClientIP(`10.0.0.0/8`)", "!ClientIP(`::1`) && HostSNI(`*`)"], False),
        (["HostSNI(`*`, `a.test`)"], False),  # the wildcard makes the list match everything
        (["PathPrefix(`/`)"], False),  # legacy spelling of HostSNI(`*`)
        (["HostSNI(`*`)", "HostSNI(`a.test`)"], True),
        (["HostSNIRegexp(`.`)"], True),
        (["ALPN(`h2`)"], True),
        (["!HostSNI(`a.test`)"], True),
        (["ClientIP(`10.0.0.0/8`) || HostSNI(`a.test`)"], True),
    ],
)
def test_needs_peek(rules_: list[str], needs_peek: bool) -> None:
    r = TcpRouter([TcpRoute(f"r{i}", rule, 1, None) for i, rule in enumerate(rules_)])
    assert r.needs_peek is needs_peek


def test_no_routes_matches_nothing_and_needs_no_peek() -> None:
    r = TcpRouter([])
    assert not r.needs_peek
    assert r.match("a.test", (), "127.0.0.1") is None


def test_http_matchers_are_refused() -> None:
    with pytest.raises(rules.RuleError, match="HTTP matcher"):
        TcpRoute("bad", "Host(`a.test`)", 1, None)


def test_target_is_returned() -> None:
    target = object()
    r = TcpRouter([TcpRoute("t", "HostSNI(`*`)", 1, target)])
    route = r.match(None, (), "127.0.0.1")
    assert route is not None and route.target is target


# --- differential: compiled tree against a direct evaluation of the parsed rule ----------------------------------

SNIS = ["a.test", "B.test", "c.example.com", "db-1.internal"]
PROTOCOLS = ["h2", "http/1.1", "acme-tls/1"]
NETWORKS = ["10.0.0.0/8", "10.1.2.3", "2001:db8::/32", "::1", "192.0.2.0/24"]
IPS = ["10.1.2.3", "10.9.9.9", "192.0.2.55", "::1", "2001:db8::5", "::ffff:10.1.2.3", "203.0.113.1"]
REGEXPS = [r"^[a-z]\.test$", "example", r"^db-[0-9]+\."]


def quoted(values: list[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


leaves = st.one_of(
    st.lists(st.sampled_from([*SNIS, "*"]), min_size=1, max_size=3).map(lambda v: f"HostSNI({quoted(v)})"),
    st.lists(st.sampled_from(REGEXPS), min_size=1, max_size=2).map(lambda v: f"HostSNIRegexp({quoted(v)})"),
    st.lists(st.sampled_from(PROTOCOLS), min_size=1, max_size=2).map(lambda v: f"ALPN({quoted(v)})"),
    st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=2).map(lambda v: f"ClientIP({quoted(v)})"),
)
rule_texts = st.recursive(
    leaves,
    lambda inner: st.one_of(
        inner.map(lambda r: f"!({r})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) && ({p[1]})"),
        st.tuples(inner, inner).map(lambda p: f"({p[0]}) || ({p[1]})"),
    ),
    max_leaves=6,
)


def reference(node: rules.Node, sni: str | None, alpn: tuple[str, ...], ip: str) -> bool:
    if isinstance(node, rules.Not):
        return not reference(node.item, sni, alpn, ip)
    if isinstance(node, rules.And):
        return all(reference(item, sni, alpn, ip) for item in node.items)
    if isinstance(node, rules.Or):
        return any(reference(item, sni, alpn, ip) for item in node.items)
    if node.name == "HostSNI":
        return "*" in node.args or (sni is not None and sni.lower() in {a.lower() for a in node.args})
    if node.name == "HostSNIRegexp":
        return sni is not None and any(re.search(a, sni.lower()) for a in node.args)
    if node.name == "ALPN":
        return any(p in node.args for p in alpn)
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(a, strict=False) for a in node.args)


@given(
    rule_texts,
    st.one_of(st.none(), st.sampled_from(SNIS)),
    st.lists(st.sampled_from(PROTOCOLS), max_size=2).map(tuple),
    st.sampled_from(IPS),
)
def test_compiled_rule_agrees_with_the_rule_tree(text: str, sni: str | None, alpn: tuple[str, ...], ip: str) -> None:
    r = TcpRouter([TcpRoute("r", text, 1, None)])
    expected = reference(rules.check_rule(text, "tcp"), sni, alpn, ip)
    assert (r.match(sni, alpn, ip) is not None) is expected
    if not r.needs_peek:  # a rule that needs no peek gives the same answer whatever the hello says
        assert (r.match(None, (), ip) is not None) is expected
