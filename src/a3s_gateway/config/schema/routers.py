"""Schema of ``routers "<name>"`` (SPEC §3.2); references and rules: :mod:`a3s_gateway.config.references`."""

from __future__ import annotations

from typing import Final

from a3s_gateway.config.model import AiConfig, RouterConfig
from a3s_gateway.config.schema.engine import BOOL, STR, Ctx, Decoded, K, T, schema


def _build_router(d: Decoded, ctx: Ctx) -> RouterConfig:
    v = d.values
    return RouterConfig(
        name=d.path.split(".", 1)[1],
        rule=v["rule"],
        service=v["service"] or "",
        entrypoints=v["entrypoints"],
        middlewares=v["middlewares"],
        priority=v["priority"],
        ai=v["ai"],
    )


AI: Final = schema(
    "ai",
    [K("stream_usage", BOOL), K("queued_keepalive", T.duration(0))],
    lambda d, ctx: AiConfig(**d.values),
    model=AiConfig,
)


ROUTER: Final = schema(
    "router",
    [
        K("rule", STR),
        K("service", STR, required=True),
        K("entrypoints", T.list_of(STR)),
        K("middlewares", T.list_of(STR)),
        K("priority", T.integer()),
        K("ai", T.block(AI)),
    ],
    _build_router,
    model=RouterConfig,
)
