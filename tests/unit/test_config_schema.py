"""The schema engine (config/schema/engine.py): key defaults come from the model, written once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pytest

from a3s_gateway.config import GatewayConfig
from a3s_gateway.config.hcl import parse
from a3s_gateway.config.model import TransportConfig
from a3s_gateway.config.schema.engine import STR, Ctx, K, decode, integer, map_of, schema


@dataclass(frozen=True)
class _Model:
    required: str
    count: int = 7
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({"a": "b"}))
    name: str = "model"


def test_keys_take_the_model_defaults_unless_written() -> None:
    table = schema(
        "thing",
        [K("required", STR, required=True), K("count", integer(0)), K("labels", map_of()), K("name", STR, "schema")],
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
        schema("thing", [K("cuont", integer(0))], model=_Model)


def test_without_a_model_an_unwritten_default_is_none() -> None:
    assert schema("thing", [K("x", STR)]).keys["x"].default is None


def test_transport_pool_default_is_the_model_one() -> None:
    config = GatewayConfig.from_hcl(
        'services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }\n', env={}
    )
    assert config.services["s"].transport.max_idle_connections_per_backend == 256
    assert TransportConfig().max_idle_connections_per_backend == 256
