"""The schema engine (config/schema/engine.py): key defaults come from the model, written once."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest

import a3s_gateway.config
from a3s_gateway.config import GatewayConfig
from a3s_gateway.config.hcl import parse
from a3s_gateway.config.model import TransportConfig
from a3s_gateway.config.schema.engine import STR, Ctx, K, T, decode, schema


@dataclass(frozen=True)
class _Model:
    required: str
    count: int = 7
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"a": "b"}))
    name: str = "model"


def test_keys_take_the_model_defaults_unless_written() -> None:
    table = schema(
        "thing",
        [
            K("required", STR, required=True),
            K("count", T.integer(0)),
            K("labels", T.map_of()),
            K("name", STR, "schema"),
        ],
        model=_Model,
    )
    assert {k: v.default for k, v in table.keys.items()} == {
        "required": None,  # the field has no default
        "count": 7,
        "labels": {"a": "b"},
        "name": "schema",  # written in the schema: the schema's own default wins
    }
    body, issues = parse('required = "x"\n', "t.hcl", {})
    assert body is not None and issues == []
    ctx = Ctx({})
    decoded = decode(body, table, ctx, "thing")
    assert ctx.issues == []
    assert decoded.values == {"required": "x", "count": 7, "labels": {"a": "b"}, "name": "schema"}


def test_a_key_the_model_lacks_is_refused() -> None:
    with pytest.raises(KeyError, match="_Model has no field 'cuont'"):
        schema("thing", [K("cuont", T.integer(0))], model=_Model)


def test_without_a_model_an_unwritten_default_is_none() -> None:
    assert schema("thing", [K("x", STR)]).keys["x"].default is None


def test_transport_pool_default_is_the_model_one() -> None:
    config = GatewayConfig.from_hcl(
        'services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }\n', env={}
    )
    assert config.services["s"].transport.max_idle_connections_per_backend == 256
    assert TransportConfig().max_idle_connections_per_backend == 256


# --- import structure of config/ ----------------------------------------------------------------------------------

CONFIG = Path(a3s_gateway.config.__file__).parent


def _config_imports(path: Path) -> set[str]:
    """The ``a3s_gateway.config`` modules ``path`` imports, anywhere in it (functions and TYPE_CHECKING too)."""
    package = "a3s_gateway." + ".".join(path.relative_to(CONFIG.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("a3s_gateway.config.") and _module(n) is not None)
    return {m for m in (_module(n) for n in found) if m is not None}


def _module(name: str) -> Path | None:
    rel = Path(*name.split(".")[2:])
    for candidate in (CONFIG / rel.with_suffix(".py"), CONFIG / rel / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_model_imports_no_other_config_module() -> None:
    assert _config_imports(CONFIG / "model.py") == set()


def test_config_modules_form_no_import_cycle() -> None:
    modules = [p for p in CONFIG.rglob("*.py") if p.name != "__init__.py"]
    graph = {p: _config_imports(p) - {CONFIG / "__init__.py", CONFIG / "schema" / "__init__.py"} for p in modules}
    visiting: list[Path] = []
    done: set[Path] = set()

    def visit(p: Path) -> None:
        assert p not in visiting, "import cycle: " + " -> ".join(str(q.relative_to(CONFIG)) for q in [*visiting, p])
        if p in done:
            return
        visiting.append(p)
        for q in graph.get(p, set()):
            visit(q)
        visiting.pop()
        done.add(p)

    for p in modules:
        visit(p)


@pytest.mark.parametrize(
    "get", ["from a3s_gateway.config.model import GatewayConfig", "from a3s_gateway import GatewayConfig"]
)
def test_gateway_config_loads_whichever_module_it_comes_from(get: str) -> None:
    """A fresh interpreter that reaches GatewayConfig through model.py still has the loader and the exporter."""
    code = (
        f"{get}\n"
        "c = GatewayConfig.from_hcl('entrypoints \"web\" { address = \":8080\" }', env={})\n"
        "print(c.summary(), GatewayConfig.from_dict(c.to_dict(redact=False)).to_dict() == c.to_dict())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1 entrypoint, 0 routers, 0 services, 0 middlewares True"
