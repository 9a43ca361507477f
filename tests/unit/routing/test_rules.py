"""Rule language (SPEC §4.1, §4.3): parsing, precedence, quoting, errors, protocols, compilation, priority."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_gateway.routing import matchers as m
from a3s_gateway.routing.rules import (
    MATCHERS,
    And,
    Call,
    Node,
    Not,
    Or,
    RuleError,
    check_rule,
    compile_rule,
    effective_priority,
    format_rule,
    legacy_l4_rule,
    parse_rule,
    rule_protocols,
)


def C(name: str, *args: str) -> Call:
    return Call(name, args)


H = C("Host", "a.com")
P = C("PathPrefix", "/api")
M = C("Method", "GET")

# --- parsing -----------------------------------------------------------------------------------------------------

PARSE_CASES: list[tuple[str, Node]] = [
    # every matcher
    ("Host(`example.com`)", C("Host", "example.com")),
    ("Host(`a.com`, `b.com`)", C("Host", "a.com", "b.com")),
    ("HostRegexp(`^[a-z]+\\.example\\.com$`)", C("HostRegexp", "^[a-z]+\\.example\\.com$")),
    ("Path(`/health`)", C("Path", "/health")),
    ("PathPrefix(`/v1`)", C("PathPrefix", "/v1")),
    ("PathRegexp(`^/v[0-9]+/`)", C("PathRegexp", "^/v[0-9]+/")),
    ("Method(`GET`, `POST`)", C("Method", "GET", "POST")),
    ("Model(`llama-3-8b`, `gpt-4o`)", C("Model", "llama-3-8b", "gpt-4o")),
    ("ModelRegexp(`^qwen-`)", C("ModelRegexp", "^qwen-")),
    ("Header(`X-A`, `1`)", C("Header", "X-A", "1")),
    ("Headers(`X-A`, `1`)", C("Headers", "X-A", "1")),
    ("HeaderRegexp(`X-A`, `^1`)", C("HeaderRegexp", "X-A", "^1")),
    ("Query(`q`)", C("Query", "q")),
    ("Query(`q`, `1`)", C("Query", "q", "1")),
    ("QueryRegexp(`q`, `^1`)", C("QueryRegexp", "q", "^1")),
    ("ClientIP(`10.0.0.0/8`, `::1`)", C("ClientIP", "10.0.0.0/8", "::1")),
    ("HostSNI(`*`)", C("HostSNI", "*")),
    ("HostSNIRegexp(`^db\\.`)", C("HostSNIRegexp", "^db\\.")),
    ("ALPN(`h2`)", C("ALPN", "h2")),
    # operators and precedence: ! > && > ||
    ("Host(`a.com`) && PathPrefix(`/api`)", And((H, P))),
    ("Host(`a.com`) || PathPrefix(`/api`)", Or((H, P))),
    ("!Host(`a.com`)", Not(H)),
    ("!!Host(`a.com`)", Not(Not(H))),
    ("Host(`a.com`) || PathPrefix(`/api`) && Method(`GET`)", Or((H, And((P, M))))),
    ("Host(`a.com`) && PathPrefix(`/api`) || Method(`GET`)", Or((And((H, P)), M))),
    ("!Host(`a.com`) && PathPrefix(`/api`)", And((Not(H), P))),
    ("!(Host(`a.com`) && PathPrefix(`/api`))", Not(And((H, P)))),
    ("(Host(`a.com`) || PathPrefix(`/api`)) && Method(`GET`)", And((Or((H, P)), M))),
    ("Host(`a.com`) && PathPrefix(`/api`) && Method(`GET`)", And((H, P, M))),
    ("(Host(`a.com`) && PathPrefix(`/api`)) && Method(`GET`)", And((And((H, P)), M))),
    ("((Host(`a.com`)))", H),
    # quoting
    ('Host("a.com")', H),
    ('Path("/a\\"b")', C("Path", '/a"b')),
    ('Path("/a\\\\b")', C("Path", "/a\\b")),
    ('Path("/a`b")', C("Path", "/a`b")),
    ('Path(`/a"b\\c`)', C("Path", '/a"b\\c')),
    ("Path(`/a,b) && c`)", C("Path", "/a,b) && c")),
    ("Path(``)", C("Path", "")),
    ("Path(`/é`)", C("Path", "/é")),
    # whitespace, including newlines and tabs, between tokens
    (" Host ( `a.com` ) ", H),
    ("Host(`a.com`)\n&&\tPathPrefix(`/api`)", And((H, P))),
    ("Host(\n  `a.com`,\r\n  `b.com`\n)", C("Host", "a.com", "b.com")),
    ("Path(` x `)", C("Path", " x ")),
    ("Host(`a.com`)&&!PathPrefix(`/api`)||Method(`GET`)", Or((And((H, Not(P))), M))),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse(text: str, expected: Node) -> None:
    assert parse_rule(text) == expected


def test_offsets_are_recorded() -> None:
    node = parse_rule('Host(`a.com`) && Path("/x", `/y`)')
    assert isinstance(node, And)
    host, path = node.items
    assert isinstance(host, Call) and isinstance(path, Call)
    assert (host.offset, host.arg_offsets) == (0, (5,))
    assert (path.offset, path.arg_offsets) == (17, (22, 28))


def test_every_matcher_is_covered() -> None:
    covered = {n.name for _, n in PARSE_CASES if isinstance(n, Call)}
    assert covered == set(MATCHERS)


# --- errors ------------------------------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, str, int, str | None]] = [
    # text, message fragment, offset (-1 = valid rule), hint fragment (None = not checked)
    ("", "empty rule", 0, "for example"),
    ("   \n\t", "empty rule", 0, "for example"),
    ("Hots(`a.com`)", 'unknown matcher \"Hots\"', 0, 'did you mean \"Host\"?'),
    ("host(`a.com`)", 'unknown matcher \"host\"', 0, 'did you mean \"Host\"?'),
    ("Host(`a`) && PathPrefx(`/`)", 'unknown matcher \"PathPrefx\"', 13, 'did you mean \"PathPrefix\"?'),
    ("Hedaer(`a`, `b`)", 'unknown matcher \"Hedaer\"', 0, 'did you mean \"Header\"?'),
    ("HostSni(`*`)", "unknown matcher", 0, 'did you mean \"HostSNI\"?'),
    ("ClientIp(`1.2.3.4`)", "unknown matcher", 0, 'did you mean \"ClientIP\"?'),
    ("Xyzzyqwv(`a`)", 'unknown matcher \"Xyzzyqwv\"', 0, "known matchers: Host, HostRegexp"),
    ("Host()", "Host takes at least 1 argument, got 0", 0, "usage: Host(`example.com`, ...)"),
    ("Header(`a`)", "Header takes exactly 2 arguments, got 1", 0, "usage: Header(`name`, `value`)"),
    ("Headers(`a`, `b`, `c`)", "Headers takes exactly 2 arguments, got 3", 0, "usage"),
    ("Query(`a`, `b`, `c`)", "Query takes 1 or 2 arguments, got 3", 0, "Query(`key`, `value`)"),
    ("Path(`/`) || QueryRegexp(`a`)", "QueryRegexp takes exactly 2 arguments, got 1", 13, "usage"),
    ("PathRegexp(`ab(`)", "invalid regular expression in PathRegexp", 14, None),
    ("HostRegexp(`a`, `[`)", "invalid regular expression in HostRegexp", 17, None),
    ('HeaderRegexp(`X`, "a\\\\d(")', "invalid regular expression in HeaderRegexp", 23, None),
    ("QueryRegexp(`(`, `ok`)", "", -1, None),  # the key is not a regexp: valid
    ("Header(`X Env`, `1`)", "invalid header name 'X Env' in Header", 7, "token"),
    ('HeaderRegexp("", `x`)', "invalid header name '' in HeaderRegexp", 13, "token"),
    ("Headers(`X-é`, `1`)", "invalid header name", 8, None),
    ("ClientIP(`10.0.0.300`)", "invalid IP address or CIDR '10.0.0.300'", 9, "usage: ClientIP"),
    ("ClientIP(`10.0.0.0/8`, `10.0.0.0/33`)", "invalid IP address or CIDR", 23, "usage"),
    ("ClientIP(`example.com`)", "invalid IP address or CIDR", 9, None),
    ("ClientIP(``)", "invalid IP address or CIDR", 9, None),
    ("Host(`a.com`", "expected ',' or ')' in Host(...), found end of rule", 12, None),
    ("Host(`a.com`,)", "expected a quoted argument, found ')'", 13, "backticks"),
    ("Host(a.com)", "expected a quoted argument, found 'a'", 5, "backticks"),
    ("Host('a.com')", 'unexpected character "\'"', 5, "backticks"),
    ("Host", "expected '(' after Host, found end of rule", 4, "usage: Host"),
    ("Host `a`", "expected '(' after Host, found a quoted argument", 5, None),
    ("Host(`a.com", "unterminated backtick argument", 5, None),
    ('Host("a.com', "unterminated double-quoted argument", 5, None),
    ('Host("a\\d")', "invalid escape in double-quoted argument", 7, "backticks"),
    ("Host(`a`) & Path(`/`)", "unexpected '&'", 10, "'&&'"),
    ("Host(`a`) | Path(`/`)", "unexpected '|'", 10, "'||'"),
    ("Host(`a`) Path(`/`)", "unexpected 'Path' after a complete expression", 10, "&& or ||"),
    ("Host(`a`))", "unexpected ')' after a complete expression", 9, "unmatched"),
    ("(Host(`a`)", "expected ')' to close the '(' at offset 0, found end of rule", 10, None),
    ("Host(`a`) &&", "expected a matcher, '(' or '!', found end of rule", 12, None),
    ("&& Host(`a`)", "expected a matcher, '(' or '!', found '&&'", 0, None),
    ("!", "expected a matcher", 1, None),
    ("()", "expected a matcher, '(' or '!', found ')'", 1, None),
    ("`a`", "an argument must follow a matcher name", 0, None),
    ("Host(`a`) && $", "unexpected character '$'", 13, None),
    ("Host_x(`a`)", "unexpected character '_'", 4, None),
    ("!" * 101 + "Host(`a`)", "nested deeper than 100 levels", 100, None),
    ("(" * 101 + "Host(`a`)" + ")" * 101, "nested deeper than 100 levels", 100, None),
]


@pytest.mark.parametrize(("text", "message", "offset", "hint"), ERROR_CASES)
def test_errors(text: str, message: str, offset: int, hint: str | None) -> None:
    if offset < 0:
        parse_rule(text)
        return
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    err = info.value
    assert message in err.message
    assert err.offset == offset
    if hint is not None:
        assert err.hint is not None and hint in err.hint
    assert f"(at offset {offset})" in str(err)


def test_error_offset_points_at_the_problem() -> None:
    text = "Host(`a.com`) &&\n  PathRegexp(`^/v1/(x`)"
    with pytest.raises(RuleError) as info:
        parse_rule(text)
    # re reports the unclosed group: the offset is the "(" inside the argument
    assert text[info.value.offset :] == "(x`)"


def test_no_hint_when_none_helps() -> None:
    with pytest.raises(RuleError) as info:
        parse_rule("PathRegexp(`ab(`)")
    assert info.value.hint is None


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='HostPathQuery()`"\\,&|! \n', max_size=40))
def test_arbitrary_text_only_raises_rule_error(text: str) -> None:
    try:
        parse_rule(text)
    except RuleError as err:
        assert 0 <= err.offset <= len(text)


# --- round trip --------------------------------------------------------------------------------------------------

_ARG = st.text(alphabet=st.sampled_from(list('ab/.-`"\\ ,()&|!é')), max_size=6)
_LEAF = st.one_of(
    st.builds(lambda a: Call("Path", (a,)), _ARG),
    st.builds(lambda a, b: Call("Host", (a, b)), _ARG, _ARG),
    st.builds(lambda a, b: Call("Header", (a, b)), st.text(alphabet="Xa-1!`|~", min_size=1, max_size=5), _ARG),
    st.builds(lambda a: Call("Query", (a,)), _ARG),
)


def _tree(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
    return st.one_of(
        st.builds(Not, children),
        st.builds(lambda items: And(tuple(items)), st.lists(children, min_size=2, max_size=3)),
        st.builds(lambda items: Or(tuple(items)), st.lists(children, min_size=2, max_size=3)),
    )


NODES = st.recursive(_LEAF, _tree, max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(NODES)
def test_format_then_parse_round_trips(node: Node) -> None:
    text = format_rule(node)
    assert parse_rule(text) == node


# --- protocols ---------------------------------------------------------------------------------------------------

PROTOCOL_CASES = [
    ("Host(`a`) && PathPrefix(`/`)", {"http"}),
    ("HostSNI(`a`) || ALPN(`h2`)", {"tcp"}),
    ("HostSNIRegexp(`^a`)", {"tcp"}),
    ("ClientIP(`10.0.0.0/8`)", {"http", "tcp"}),
    ("!ClientIP(`10.0.0.0/8`) && ClientIP(`::1`)", {"http", "tcp"}),
    ("ClientIP(`10.0.0.0/8`) && Method(`GET`)", {"http"}),
    ("ClientIP(`10.0.0.0/8`) && HostSNI(`*`)", {"tcp"}),
    ("Host(`a`) && HostSNI(`a`)", set()),
]


@pytest.mark.parametrize(("text", "protocols"), PROTOCOL_CASES)
def test_rule_protocols(text: str, protocols: set[str]) -> None:
    assert rule_protocols(parse_rule(text)) == protocols


def test_check_rule_accepts_allowed_matchers() -> None:
    assert check_rule("Host(`a`) && ClientIP(`::1`)", "http") == And((C("Host", "a"), C("ClientIP", "::1")))
    assert check_rule("HostSNI(`a`) && ALPN(`h2`)", "tcp") == And((C("HostSNI", "a"), C("ALPN", "h2")))
    assert check_rule("ClientIP(`10.0.0.1`)", "tcp") == C("ClientIP", "10.0.0.1")
    assert check_rule("HostSNI(`*`)", "udp") == C("HostSNI", "*")


@pytest.mark.parametrize(
    ("text", "protocol", "message", "offset", "hint"),
    [
        ("Host(`a`) && HostSNI(`a`)", "http", "HostSNI is a TCP matcher", 13, "HTTP routers use Host"),
        ("ALPN(`h2`)", "http", "ALPN is a TCP matcher", 0, "HTTP routers use"),
        ("HostSNI(`a`) && Path(`/`)", "tcp", "Path is an HTTP matcher", 16, "TCP routers use HostSNI"),
        ("HostSNI(`a`)", "udp", "a UDP router takes no rule or HostSNI(`*`)", 0, "HostSNI(`*`)"),
        ("Hots(`a`)", "http", "unknown matcher", 0, 'did you mean \"Host\"?'),
    ],
)
def test_check_rule_rejects(text: str, protocol: str, message: str, offset: int, hint: str) -> None:
    with pytest.raises(RuleError) as info:
        check_rule(text, protocol)
    assert message in info.value.message
    assert info.value.offset == offset
    assert info.value.hint is not None and hint in info.value.hint


@pytest.mark.parametrize("text", ["PathPrefix(`/`)", "Method(`TCP`)", "Method(`UDP`)", ' Method( "TCP" ) '])
@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_legacy_l4_rules_mean_catch_all_sni(text: str, protocol: str) -> None:
    assert legacy_l4_rule(parse_rule(text))
    assert check_rule(text, protocol) == C("HostSNI", "*")


def test_legacy_forms_are_exact_and_plain_in_http() -> None:
    assert not legacy_l4_rule(parse_rule("PathPrefix(`/api`)"))
    assert not legacy_l4_rule(parse_rule("Method(`TCP`) && PathPrefix(`/`)"))
    assert check_rule("PathPrefix(`/`)", "http") == C("PathPrefix", "/")
    with pytest.raises(RuleError, match="HTTP matcher"):
        check_rule("PathPrefix(`/api`)", "tcp")


def test_check_rule_unknown_protocol() -> None:
    with pytest.raises(ValueError):
        check_rule("Host(`a`)", "sctp")


# --- compilation -------------------------------------------------------------------------------------------------


def req(
    method: str = "GET",
    host: str = "a.com",
    path: str = "/",
    query: bytes | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    client_ip: str = "10.1.2.3",
) -> m.MatchRequest:
    return m.MatchRequest(method, host, path, query, headers if headers is not None else [], client_ip)


COMPILE_CASES: list[tuple[str, m.MatchRequest, bool]] = [
    ("Host(`A.com`)", req(host="a.com"), True),
    ("Host(`b.com`, `a.com.`)", req(host="a.com"), True),
    ("Host(`b.com`)", req(host="a.com"), False),
    ("HostRegexp(`^a\\.`)", req(host="a.com"), True),
    ("HostRegexp(`com`)", req(host="a.com"), True),  # search semantics
    ("HostRegexp(`^com`)", req(host="a.com"), False),
    ("Path(`/x`)", req(path="/x"), True),
    ("Path(`/x`)", req(path="/X"), False),
    ("PathPrefix(`/api`)", req(path="/apiv2"), True),
    ("PathPrefix(`/api/`, `/v1`)", req(path="/v1/x"), True),
    ("PathPrefix(`/api/`)", req(path="/api"), False),
    ("PathRegexp(`/v[0-9]+/`)", req(path="/x/v2/y"), True),
    ("PathRegexp(`^/v[0-9]+/`)", req(path="/x/v2/y"), False),
    ("Method(`get`)", req(method="GET"), True),
    ("Method(`POST`, `PUT`)", req(method="put"), True),
    ("Method(`POST`)", req(method="GET"), False),
    ("Header(`X-Env`, `prod`)", req(headers=[(b"x-env", b" prod ")]), True),
    ("Headers(`x-env`, `prod`)", req(headers=[(b"X-ENV", b"prod")]), True),
    ("Header(`X-Env`, `prod`)", req(headers=[(b"X-Env", b"dev"), (b"X-Env", b"prod")]), True),
    ("Header(`X-Env`, `prod`)", req(headers=[(b"X-Env", b"production")]), False),
    ("Header(`X-Env`, `prod`)", req(headers=[(b"X-Envy", b"prod")]), False),
    ("HeaderRegexp(`X-Env`, `^pro`)", req(headers=[(b"x-env", b"production")]), True),
    ("HeaderRegexp(`X-Env`, `^dev`)", req(headers=[(b"x-env", b"production")]), False),
    ("Query(`q`)", req(query=b"q="), True),
    ("Query(`q`)", req(query=b"qq=1"), False),
    ("Query(`q`, `a b`)", req(query=b"x=1&q=a+b"), True),
    ("QueryRegexp(`q`, `^[0-9]+$`)", req(query=b"q=x&q=42"), True),
    ("QueryRegexp(`q`, `^[0-9]+$`)", req(query=b"q=x"), False),
    ("ClientIP(`10.0.0.0/8`)", req(client_ip="10.1.2.3"), True),
    ("ClientIP(`10.0.0.0/8`)", req(client_ip="11.1.2.3"), False),
    ("!Host(`a.com`)", req(host="a.com"), False),
    ("!Host(`b.com`)", req(host="a.com"), True),
    ("Host(`a.com`) && Path(`/x`)", req(host="a.com", path="/x"), True),
    ("Host(`a.com`) && Path(`/x`)", req(host="a.com", path="/y"), False),
    ("Host(`b.com`) || Path(`/x`)", req(host="a.com", path="/x"), True),
    ("(Host(`b.com`) || Path(`/x`)) && !Method(`POST`)", req(path="/x", method="POST"), False),
]


@pytest.mark.parametrize(("text", "request_", "expected"), COMPILE_CASES)
def test_compile_and_match(text: str, request_: m.MatchRequest, expected: bool) -> None:
    assert compile_rule(check_rule(text, "http")).match(request_) is expected


def test_compile_flattens_nested_operators_in_order() -> None:
    matcher = compile_rule(parse_rule("(Host(`a`) && (Path(`/`) && Method(`GET`))) && Query(`q`)"))
    assert isinstance(matcher, m.AndMatcher)
    assert [type(c).__name__ for c in matcher.children] == [
        "HostMatcher",
        "PathMatcher",
        "MethodMatcher",
        "QueryMatcher",
    ]
    matcher = compile_rule(parse_rule("Host(`a`) || (Path(`/`) && Method(`GET`)) || (Query(`q`) || Path(`/x`))"))
    assert isinstance(matcher, m.OrMatcher)
    assert [type(c).__name__ for c in matcher.children] == ["HostMatcher", "AndMatcher", "QueryMatcher", "PathMatcher"]


def test_short_circuit() -> None:
    # a header list whose entry cannot be unpacked raises when Header() is evaluated: proves it is not evaluated
    bad = m.MatchRequest("GET", "a.com", "/y", None, [None], "")  # type: ignore[list-item]
    header = compile_rule(parse_rule("Header(`a`, `b`)"))
    with pytest.raises((TypeError, ValueError)):
        header.match(bad)
    assert compile_rule(parse_rule("Path(`/x`) && Header(`a`, `b`)")).match(bad) is False
    assert compile_rule(parse_rule("Path(`/y`) || Header(`a`, `b`)")).match(bad) is True


def test_compile_rejects_tcp_matchers() -> None:
    with pytest.raises(RuleError, match="TCP matcher") as info:
        compile_rule(parse_rule("Host(`a`) && HostSNI(`a`)"))
    assert info.value.offset == 13


def test_needs_path() -> None:
    assert not compile_rule(parse_rule("Host(`a`) && Method(`GET`) || !Query(`x`)")).needs_path()
    assert compile_rule(parse_rule("Host(`a`) && !PathRegexp(`x`)")).needs_path()
    assert compile_rule(parse_rule("Host(`a`) || Path(`/`)")).needs_path()


# A reference evaluator over the AST: And/Or/Not by Python's own operators, leaves by their compiled matcher.
def _evaluate(node: Node, request_: m.MatchRequest) -> bool:
    if isinstance(node, Call):
        return compile_rule(node).match(request_)
    if isinstance(node, Not):
        return not _evaluate(node.item, request_)
    if isinstance(node, And):
        return all(_evaluate(i, request_) for i in node.items)
    return any(_evaluate(i, request_) for i in node.items)


_SEM_LEAF = st.sampled_from(
    [C("Host", "a.com"), C("Host", "b.com"), C("PathPrefix", "/x"), C("Method", "POST"), C("Query", "q")]
)
SEM_NODES = st.recursive(_SEM_LEAF, _tree, max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(
    SEM_NODES,
    st.sampled_from(["a.com", "b.com"]),
    st.sampled_from(["/", "/x"]),
    st.sampled_from(["GET", "POST"]),
    st.sampled_from([None, b"q=1"]),
)
def test_compiled_tree_equals_reference(node: Node, host: str, path: str, method: str, query: bytes | None) -> None:
    request_ = req(method=method, host=host, path=path, query=query)
    assert compile_rule(node).match(request_) is _evaluate(node, request_)


# --- priority ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "priority", "expected"),
    [
        ("PathPrefix(`/v1`)", 0, 17),
        ("Host(`a.com`) && PathPrefix(`/api`)", 0, 35),
        ("Path(`/é`)", 0, 10),  # characters, not bytes
        ("PathPrefix(`/v1`)", 5, 5),
        ("PathPrefix(`/v1`)", -3, -3),
        ("PathPrefix(`/v1`)", 1000000, 1000000),
    ],
)
def test_effective_priority(rule: str, priority: int, expected: int) -> None:
    assert effective_priority(rule, priority) == expected
