"""Router micro benchmark (Traefik ``mux_bench_test.go`` style): one match among 10 / 1,000 / 10,000 routes.

Each case runs against the installed router (compiled by mypyc in a normal build) and against the interpreted
``.py`` sources loaded side by side, so the ratio comes from one run. Smoke-run only; never part of the pass/fail
test run::

    PYTHONPATH=src .venv/bin/python -m pytest bench/test_bench_router.py --benchmark-only
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType
from typing import Any

import pytest

from a3s_gateway import _compat
from a3s_gateway.routing import matchers, router, rules

HEADERS = [(b"user-agent", b"bench/1.0"), (b"accept", b"*/*"), (b"content-type", b"application/json")]


def _exec_source(name: str, source_of: ModuleType) -> ModuleType:
    path = (source_of.__file__ or "").rsplit(".", 1)[0].split(".cpython")[0] + ".py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _pure_twins() -> tuple[ModuleType, ModuleType]:
    """(rules, router) running on the interpreted matchers/router sources, whatever is installed."""
    pure_matchers = _exec_source("a3s_gateway.routing._bench_pure_matchers", matchers)
    saved = sys.modules["a3s_gateway.routing.matchers"]
    sys.modules["a3s_gateway.routing.matchers"] = pure_matchers  # the pure router imports the pure matchers
    try:
        pure_router = _exec_source("a3s_gateway.routing._bench_pure_router", router)
        pure_rules = _exec_source("a3s_gateway.routing._bench_pure_rules", rules)
    finally:
        sys.modules["a3s_gateway.routing.matchers"] = saved
    setattr(pure_rules, "m", pure_matchers)  # noqa: B010 - compile_rule then builds pure matcher trees
    return pure_rules, pure_router


PURE_RULES, PURE_ROUTER = _pure_twins()
IMPLEMENTATIONS = {
    ("compiled" if _compat.is_compiled(router) else "installed-pure"): (rules, router),
    "pure": (PURE_RULES, PURE_ROUTER),
}


def traefik_mix(rules_mod: Any, router_mod: Any, count: int) -> list[Any]:
    """Mostly ``Host && PathPrefix`` routes (4 per host), a few host-less ``PathPrefix`` and ``HostRegexp`` ones."""
    routes = []
    for i in range(count):
        kind = i % 10
        if kind == 8:
            rule = f"PathPrefix(`/shared/{i}`)"
        elif kind == 9:
            rule = f"HostRegexp(`^re{i}\\.example\\.net$`)"
        else:
            rule = f"Host(`svc{i // 4}.example.com`) && PathPrefix(`/api/v{i % 4}`)"
        matcher = rules_mod.compile_rule(rules_mod.parse_rule(rule))
        routes.append(router_mod.Route(f"route-{i:05d}", rule, rules_mod.effective_priority(rule, 0), matcher, i))
    return routes


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("count", [10, 1000, 10000])
@pytest.mark.parametrize("case", ["host-hit", "host-miss"])
def test_router_match(benchmark: Any, impl: str, count: int, case: str) -> None:
    rules_mod, router_mod = IMPLEMENTATIONS[impl]
    table = router_mod.Router(traefik_mix(rules_mod, router_mod, count))
    target = count // 2 - (count // 2) % 10 + 3  # a Host && PathPrefix route in the middle of the table
    if case == "host-hit":
        host = f"svc{target // 4}.example.com:443".encode()
        path = f"/api/v{target % 4}/chat/completions".encode()
        expected: str | None = f"route-{target:05d}"
    else:  # unknown host: scans every host-less route and matches none
        host, path, expected = b"unknown.example.org", b"/nothing/here", None
    found = benchmark(table.match, b"GET", host, path, None, HEADERS, "10.0.0.1")
    assert (found.name if found is not None else None) == expected
