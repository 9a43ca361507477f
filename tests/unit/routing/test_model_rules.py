"""``Model``/``ModelRegexp`` (SPEC §4.2, §16.1): parsing, matching, and when the router needs the model."""

from __future__ import annotations

import pytest

from a3s_gateway.routing import matchers as m
from a3s_gateway.routing.router import NEEDS_MODEL, Route, Router
from a3s_gateway.routing.rules import RuleError, check_rule, compile_rule, effective_priority, parse_rule


def route(name: str, rule: str, priority: int = 0) -> Route:
    return Route(name, rule, effective_priority(rule, priority), compile_rule(parse_rule(rule)), None)


def match(router: Router, path: bytes, model: str | None = None, pending: bool = False) -> str | None:
    found = router.match(b"POST", b"a.com", path, None, [], "10.0.0.1", model, pending)
    if found is NEEDS_MODEL:
        return "NEEDS_MODEL"
    return None if found is None else found.name


def test_model_and_model_regexp_match_the_model() -> None:
    exact = compile_rule(parse_rule("Model(`llama-3-8b`, `gpt-4o`)"))
    regexp = compile_rule(parse_rule("ModelRegexp(`^qwen-`, `-instruct$`)"))
    for model, want_exact, want_regexp in [
        ("llama-3-8b", True, False), ("gpt-4o", True, False), ("LLAMA-3-8B", False, False),
        ("qwen-7b", False, True), ("mistral-instruct", False, True), (None, False, False), ("", False, False),
    ]:
        req = m.MatchRequest("POST", "a.com", "/", None, [], "", model)
        assert exact.match(req) is want_exact and regexp.match(req) is want_regexp, model


def test_model_rules_are_http_only_and_validated() -> None:
    with pytest.raises(RuleError, match="Model takes at least 1 argument"):
        parse_rule("Model()")
    with pytest.raises(RuleError, match="invalid regular expression in ModelRegexp"):
        parse_rule("ModelRegexp(`(`)")
    with pytest.raises(RuleError, match="Model is an HTTP matcher"):
        check_rule("Model(`x`)", "tcp")
    assert check_rule("Model(`x`) && PathPrefix(`/v1`)", "http")


def test_model_matchers_go_last_so_other_conditions_decide_first() -> None:
    matcher = compile_rule(parse_rule("Model(`a`) && PathPrefix(`/v1`) && Method(`POST`)"))
    assert isinstance(matcher, m.AndMatcher)
    assert [c.needs_model() for c in matcher.children] == [False, False, True]
    assert matcher.needs_model() and compile_rule(parse_rule("!Model(`a`)")).needs_model()
    assert not compile_rule(parse_rule("Path(`/a`) || Host(`b`)")).needs_model()


def test_router_needs_the_model_only_when_a_rule_reading_it_is_reached() -> None:
    router = Router([
        route("chat", "Model(`a`) && PathPrefix(`/v1`)", 40),
        route("upload", "PathPrefix(`/upload`)", 30),
        route("other", "PathPrefix(`/v1`) || Model(`b`)", 20),
        route("not-b", "PathPrefix(`/x`) && !Model(`b`)", 10),
    ])
    assert router.uses_model
    assert match(router, b"/upload", pending=True) == "upload"  # chat's path fails: decided without the model
    assert match(router, b"/v1/chat", pending=True) == "NEEDS_MODEL"
    assert match(router, b"/v1/chat", "a") == "chat"
    assert match(router, b"/v1/chat", "c") == "other"
    assert match(router, b"/x", pending=True) == "NEEDS_MODEL"  # `other` reads the model (Or, path false)
    assert match(router, b"/x", "c") == "not-b"
    assert match(router, b"/x", "b") == "other"
    assert match(router, b"/x", None) == "not-b"
    assert match(router, b"/nothing", pending=True) == "NEEDS_MODEL"
    assert match(router, b"/nothing", None) is None


def test_router_without_model_rules_never_asks_for_it() -> None:
    router = Router([route("r", "PathPrefix(`/`)")])
    assert not router.uses_model
    assert match(router, b"/v1", pending=True) == "r"
