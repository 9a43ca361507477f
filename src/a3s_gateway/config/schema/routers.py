"""Schema of ``routers "<name>"`` (SPEC §3.2); references and rules are checked in :mod:`..references`."""

from __future__ import annotations

from typing import Final

from a3s_gateway.config.model import RouterConfig
from a3s_gateway.config.schema.engine import _K, STR, _Ctx, _Decoded, _int, _list, _schema


def _build_router(d: _Decoded, ctx: _Ctx) -> RouterConfig:
    v = d.values
    return RouterConfig(
        name=d.path.split(".", 1)[1],
        rule=v["rule"],
        service=v["service"] or "",
        entrypoints=v["entrypoints"],
        middlewares=v["middlewares"],
        priority=v["priority"],
    )


ROUTER: Final = _schema(
    "router",
    [
        _K("rule", STR, None),
        _K("service", STR, None, required=True),
        _K("entrypoints", _list(STR), ()),
        _K("middlewares", _list(STR), ()),
        _K("priority", _int(), 0),
    ],
    _build_router,
)
