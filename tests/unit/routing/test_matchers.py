"""Match inputs and leaf matchers (SPEC §4.2): host, match path, query, headers, client IP."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_gateway.netaddr import IPSet, parse_network
from a3s_gateway.routing import matchers as m


def req(
    method: str = "GET",
    host: str = "a.com",
    path: str = "/",
    query: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    client_ip: str = "10.1.2.3",
) -> m.MatchRequest:
    return m.MatchRequest(method, host, path, query, headers if headers is not None else [], client_ip)


# --- host ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"example.com", "example.com"),
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"example.com.", "example.com"),
        (b"example.com.:443", "example.com"),
        (b"example.com..", "example.com."),  # one trailing dot only
        (b"[::1]:8080", "::1"),
        (b"[::1]", "::1"),
        (b"[2001:DB8::1]:443", "2001:db8::1"),
        (b"::1", "::1"),  # bare IPv6 (more than one colon): kept whole
        (b"10.0.0.1:80", "10.0.0.1"),
        (b"", ""),
        (b":80", ""),
        (b"h\xc3\xa9.example", "hé.example"),
    ],
)
def test_normalize_host(raw: bytes, expected: str) -> None:
    assert m.normalize_host(raw) == expected


@pytest.mark.parametrize(
    ("configured", "host", "expected"),
    [
        ("Example.COM", "example.com", True),
        ("example.com.", "example.com", True),
        ("[::1]", "::1", True),
        ("example.com", "www.example.com", False),
    ],
)
def test_host_matcher_prepares_names(configured: str, host: str, expected: bool) -> None:
    assert m.HostMatcher([configured]).match(req(host=host)) is expected


# --- match path ------------------------------------------------------------------------------------------------

PATH_CASES = [
    (b"/", "/"),
    (b"/api/v1/users", "/api/v1/users"),
    (b"/a//b", "/a//b"),  # duplicate slashes kept
    (b"/a%20b", "/a b"),
    (b"/%41%62", "/Ab"),
    (b"/a%2fb", "/a%2Fb"),  # %2F stays encoded, hex upper-cased
    (b"/a%2Fb", "/a%2Fb"),
    (b"/a%25b", "/a%25b"),
    (b"/a%252Fb", "/a%252Fb"),  # no double decoding
    (b"/caf%C3%A9", "/café"),
    (b"/caf%c3%a9", "/café"),
    (b"/%zz/%4/%", "/%zz/%4/%"),  # invalid escapes stay as they are
    (b"/a/./b", "/a/b"),
    (b"/a/../b", "/b"),
    (b"/a/b/..", "/a/"),
    (b"/a/b/.", "/a/b/"),
    (b"/..", "/"),
    (b"/../..", "/"),
    (b"/../a", "/a"),
    (b"/.", "/"),
    (b"/a/.b/..c", "/a/.b/..c"),  # not dot segments
    (b"/a/...", "/a/..."),
    (b"//a/../b", "//b"),
    (b"/a//../b", "/a/b"),
    (b"/x/%2e%2e/admin", "/admin"),  # escapes are decoded before dot segments are removed
    (b"/x/%2E/y", "/x/y"),
    (b"/x/.%2e/y", "/y"),
    (b"/x/..%2fy", "/x/..%2Fy"),  # an encoded slash does not delimit segments
    (b"/a/b/../../../c", "/c"),
    (b"*", "*"),
    (b"./a", "a"),
    (b"../a", "a"),
]


@pytest.mark.parametrize(("raw", "expected"), PATH_CASES)
def test_match_path(raw: bytes, expected: str) -> None:
    assert m.match_path(raw) == expected


def test_match_path_invalid_utf8_does_not_raise() -> None:
    assert m.match_path(b"/%ff") == "/\udcff"
    assert m.match_path(b"/\xff") == "/\udcff"


def _reference_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, step by step as written."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../") or inp == "/..":
            inp = "/" + inp[4:]
            out = out[: max(out.rfind("/"), 0)]
        elif inp in (".", ".."):
            inp = ""
        else:
            end = inp.find("/", 1 if inp.startswith("/") else 0)
            end = len(inp) if end < 0 else end
            out, inp = out + inp[:end], inp[end:]
    return out


def _reference_decode(raw: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        value = int(match.group(1), 16)
        return {0x2F: b"%2F", 0x25: b"%25"}.get(value, bytes([value]))

    return re.sub(rb"%([0-9A-Fa-f]{2})", one, raw)


def _reference_match_path(raw: bytes) -> str:
    return _reference_remove_dot_segments(_reference_decode(raw).decode("utf-8", "surrogateescape"))


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.sampled_from(["/", ".", "..", "a", "%2e", "%2E", "%2f", "%25", "%41", "%", "%4", "b%"]), max_size=12)
)
def test_match_path_equals_rfc_reference(parts: list[str]) -> None:
    raw = "".join(parts).encode()
    assert m.match_path(raw) == _reference_match_path(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="/abc._-~é", max_size=20))
def test_match_path_fast_path_is_plain_decoding(text: str) -> None:
    raw = ("/" + text).encode()
    if b"/." not in raw:
        assert m.match_path(raw) == raw.decode()
    assert m.match_path(raw) == _reference_match_path(raw)


# --- method, path matchers --------------------------------------------------------------------------------------


def test_method_is_case_insensitive() -> None:
    matcher = m.MethodMatcher(["get", "Post"])
    assert matcher.match(req(method="GET"))
    assert matcher.match(req(method="post"))
    assert not matcher.match(req(method="PUT"))


def test_path_prefix_is_a_raw_string_prefix() -> None:
    matcher = m.PathPrefixMatcher(["/api"])
    assert matcher.match(req(path="/apiv2"))
    assert matcher.match(req(path="/api"))
    assert not matcher.match(req(path="/ap"))


# --- query -----------------------------------------------------------------------------------------------------

QUERY = b"a=1&a=2&b=&c&sp=x+y&pct=%41%2B&&=e&u=%C3%A9"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (QUERY, {"a": ["1", "2"], "b": [""], "c": [""], "sp": ["x y"], "pct": ["A+"], "": ["e"], "u": ["é"]}),
        (b"", {}),
        (None, {}),
        (b"q", {"q": [""]}),
        (b"a+b=c+d", {"a b": ["c d"]}),
        (b"a=1;b=2", {"a": ["1;b=2"]}),  # only & separates
        (b"k=%zz", {"k": ["%zz"]}),
    ],
)
def test_query_parsing(query: bytes | None, expected: dict[str, list[str]]) -> None:
    assert req(query=query).query_map() == expected


def test_query_is_parsed_once() -> None:
    r = req(query=b"a=1")
    first = r.query_map()
    assert r.query_map() is first
    assert m.QueryMatcher("a", "1").match(r)
    assert r.query_map() is first


@pytest.mark.parametrize(
    ("key", "value", "query", "expected"),
    [
        ("a", None, b"a=1", True),
        ("a", None, b"a", True),
        ("a", None, b"ab=1", False),
        ("a", None, None, False),
        ("a", "2", b"a=1&a=2", True),
        ("a", "3", b"a=1&a=2", False),
        ("a", "", b"a", True),
        ("sp", "x y", b"sp=x+y", True),
        ("sp", "x+y", b"sp=x%2By", True),
    ],
)
def test_query_matcher(key: str, value: str | None, query: bytes | None, expected: bool) -> None:
    assert m.QueryMatcher(key, value).match(req(query=query)) is expected


def test_query_regexp_matcher() -> None:
    matcher = m.QueryRegexpMatcher("v", re.compile("^[0-9]+$"))
    assert matcher.match(req(query=b"v=x&v=12"))
    assert not matcher.match(req(query=b"v=x"))
    assert not matcher.match(req(query=b"w=1"))
    assert not matcher.match(req(query=None))


# --- headers ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "headers", "expected"),
    [
        ("X-Env", "prod", [(b"x-env", b"prod")], True),
        ("x-env", "prod", [(b"X-ENV", b"prod")], True),
        ("X-Env", "prod", [(b"X-Env", b"  prod\t")], True),
        ("X-Env", " prod ", [(b"X-Env", b"prod")], True),
        ("X-Env", "prod", [(b"X-Env", b"Prod")], False),  # values are case-sensitive
        ("X-Env", "prod", [(b"X-Env", b"dev"), (b"X-Env", b"prod")], True),
        ("X-Env", "prod", [(b"X-Env", b"dev, prod")], False),  # one field line, not a list element
        ("X-Env", "prod", [(b"X-Envs", b"prod"), (b"X-En", b"prod")], False),
        ("X-Env", "", [(b"X-Env", b"")], True),
        ("X-Env", "prod", [], False),
        ("X-Name", "é", [(b"X-Name", "é".encode())], True),
    ],
)
def test_header_matcher(name: str, value: str, headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert m.HeaderMatcher(name, value).match(req(headers=headers)) is expected


def test_header_regexp_matcher() -> None:
    matcher = m.HeaderRegexpMatcher("Accept", re.compile("text/event-stream"))
    assert matcher.match(req(headers=[(b"accept", b"application/json"), (b"ACCEPT", b"text/event-stream")]))
    assert not matcher.match(req(headers=[(b"accept", b"application/json")]))
    assert not matcher.match(req(headers=[(b"x-accept", b"text/event-stream")]))


# --- client IP -------------------------------------------------------------------------------------------------

CLIENT_IP_CASES = [
    (["10.0.0.0/8"], "10.1.2.3", True),
    (["10.0.0.0/8"], "11.1.2.3", False),
    (["10.1.2.3"], "10.1.2.3", True),
    (["10.1.2.3"], "10.1.2.4", False),
    (["10.1.2.3/8"], "10.200.0.1", True),  # host bits in a CIDR are ignored
    (["0.0.0.0/0"], "203.0.113.9", True),
    (["0.0.0.0/0"], "2001:db8::1", False),  # families do not mix
    (["::/0"], "10.0.0.1", False),
    (["2001:db8::/32"], "2001:db8:1::5", True),
    (["2001:db8::/32"], "2001:db9::5", False),
    (["::1"], "::1", True),
    (["2001:DB8::1"], "2001:db8::1", True),
    (["10.0.0.0/8"], "::ffff:10.9.9.9", True),  # IPv4-mapped client normalised to IPv4
    (["::ffff:10.0.0.0/104"], "10.9.9.9", True),  # IPv4-mapped network normalised to IPv4
    (["::ffff:10.0.0.1"], "10.0.0.1", True),
    (["::ffff:10.0.0.1"], "::ffff:10.0.0.1", True),
    (["192.168.0.0/16", "10.0.0.0/8"], "10.0.0.1", True),
    (["10.0.0.0/8"], "", False),
    (["10.0.0.0/8"], "unix:/tmp/sock", False),
    (["fe80::/10"], "fe80::1%eth0", True),
]


@pytest.mark.parametrize(("networks", "client_ip", "expected"), CLIENT_IP_CASES)
def test_client_ip_matcher(networks: list[str], client_ip: str, expected: bool) -> None:
    assert m.ClientIPMatcher(networks).match(req(client_ip=client_ip)) is expected


@pytest.mark.parametrize("bad", ["", "10.0.0.300", "10.0.0.0/33", "example.com", "::ffff::1", "1.2.3.4/x"])
def test_parse_network_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_network(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1", (4, 0x0A000001)), ("::ffff:10.0.0.1", (4, 0x0A000001)), ("::1", (6, 1)), ("nope", (0, 0))],
)
def test_parse_ip(text: str, expected: tuple[int, int]) -> None:
    assert m.parse_ip(text) == expected
    assert req(client_ip=text).ip() == expected


# --- combinators ------------------------------------------------------------------------------------------------


def test_combinators() -> None:
    yes = m.TrueMatcher()
    no = m.NotMatcher(m.TrueMatcher())
    r = req()
    assert yes.match(r) and not no.match(r)
    assert m.AndMatcher([yes, yes]).match(r) and not m.AndMatcher([yes, no]).match(r)
    assert m.OrMatcher([no, yes]).match(r) and not m.OrMatcher([no, no]).match(r)
    assert m.AndMatcher([]).match(r) and not m.OrMatcher([]).match(r)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("10.2.0.1", False), ("2001:db8::5", True), ("x", False)],
)
def test_client_ip_contains(ip: str, expected: bool) -> None:
    assert IPSet(["10.1.0.0/16", "2001:db8::/32"]).contains(ip) is expected
