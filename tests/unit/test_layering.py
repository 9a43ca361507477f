"""The package's import graph follows the layering of ARCHITECTURE.md: no import cycles, and no module imports a
module of a higher layer. Every import counts — at module level, inside functions and under ``TYPE_CHECKING`` —
because each is a dependency a reader must follow and a cycle waiting to happen.

``KNOWN`` lists the violations that remain while the architecture step (issue 17) is under way; the test fails
when a new one appears and when a listed one is gone (so the list only shrinks, and stays true).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

#: lowest first: a module may import its own layer and the layers before it (never after)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("a3s_gateway._version", "a3s_gateway._modules", "a3s_gateway._aio", "a3s_gateway.errors",
              "a3s_gateway.netaddr", "a3s_gateway._compat", "a3s_gateway.cpus", "a3s_gateway.heap",
              "a3s_gateway.segment",
              "a3s_gateway._segment_py")),
    ("wire", ("a3s_gateway.http", "a3s_gateway.observability.stats", "a3s_gateway.observability.log_limit",
              "a3s_gateway.observability.redact", "a3s_gateway.observability.process_log")),
    ("rules", ("a3s_gateway.routing",)),
    ("config", ("a3s_gateway.config",)),
    ("domain", ("a3s_gateway.middleware", "a3s_gateway.service", "a3s_gateway.scaling", "a3s_gateway.wsmux",
                "a3s_gateway.observability.access_log", "a3s_gateway.observability.tracing")),
    ("generation", ("a3s_gateway.runtime",)),
    ("proxy", ("a3s_gateway.proxy",)),
    ("assembly", ("a3s_gateway.config.compile",)),
    ("control", ("a3s_gateway.gateway", "a3s_gateway.providers", "a3s_gateway.observability.admin",
                 "a3s_gateway.observability.metrics", "a3s_gateway.observability", "a3s_gateway.workers",
                 "a3s_gateway.acme")),
    ("entry", ("a3s_gateway.cli", "a3s_gateway.__main__", "a3s_gateway")),
]

#: (importer, imported) edges against the layering still present; remove an entry when its edge is gone
KNOWN: set[tuple[str, str]] = {
    ("a3s_gateway.scaling.target", "a3s_gateway.proxy.upstream"),  # a scale target builds its replicas' pools
}

#: import cycles still present (none now: any cycle fails the test)
KNOWN_CYCLES: list[list[str]] = []


def _modules() -> dict[str, tuple[Path, list[str]]]:
    mods: dict[str, tuple[Path, list[str]]] = {}
    for path in (SRC / "a3s_gateway").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
            package = parts
        mods[".".join(parts)] = (path, package)
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (every import statement, wherever it stands)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, package) in mods.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])]) if node.level else node.module
                if not module or not module.startswith("a3s_gateway"):
                    continue
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    targets.add(full if full in mods else module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("a3s_gateway"))
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer() -> None:
    assert [m for m in import_graph() if layer_of(m) < 0] == []


def test_no_import_reaches_up_a_layer() -> None:
    graph = import_graph()
    upward = {(a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)}
    new = sorted(upward - KNOWN)
    assert not new, "imports against the layering (ARCHITECTURE.md):\n" + "\n".join(
        f"  {a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})" for a, b in new)
    gone = sorted(KNOWN - upward)
    assert not gone, f"fixed, remove from KNOWN: {gone}"


def test_no_import_cycles_outside_the_known_edges() -> None:
    graph = import_graph()
    for a, b in KNOWN:  # an upward edge is reported by the test above, not again here
        graph[a].discard(b)
    assert cycles(graph) == KNOWN_CYCLES


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    graph = {"a3s_gateway.errors": {"a3s_gateway.gateway"}, "a3s_gateway.gateway": {"a3s_gateway.errors"}}
    assert cycles(graph) == [["a3s_gateway.errors", "a3s_gateway.gateway"]]
    assert layer_of("a3s_gateway.gateway") > layer_of("a3s_gateway.errors")


@pytest.mark.parametrize("module", ["a3s_gateway.config.model", "a3s_gateway.http.client", "a3s_gateway.netaddr",
                                    "a3s_gateway.segment", "a3s_gateway._segment_py"])
def test_low_modules_import_nothing_above_them(module: str) -> None:
    graph = import_graph()
    assert all(layer_of(t) <= layer_of(module) for t in graph[module]), graph[module]
