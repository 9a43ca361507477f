"""Schemas of ``admin``, ``access_log``, ``tracing`` and the top level of a file (SPEC §3.6-§3.10)."""

from __future__ import annotations

import os
from typing import Any, Final

from a3s_gateway.config.model import AccessLogConfig, AdminConfig, GatewayConfig, TracingConfig, format_duration
from a3s_gateway.config.schema.checks import check_address, check_http_url, check_nonempty, parse_address
from a3s_gateway.config.schema.engine import BOOL, STR, Ctx, Decoded, K, Legacy, T, quote, schema
from a3s_gateway.config.schema.entrypoints import ENTRYPOINT
from a3s_gateway.config.schema.providers import PROVIDERS
from a3s_gateway.config.schema.routers import ROUTER
from a3s_gateway.config.schema.services import SERVICE


def _build_admin(d: Decoded, ctx: Ctx) -> AdminConfig:
    v = d.values
    host, port = parse_address(v["address"]) or ("", 0)
    ctx.explicit.add("admin")
    return AdminConfig(enabled=v["enabled"], address=v["address"], host=host, port=port, middlewares=v["middlewares"])


ADMIN: Final = schema(
    "admin",
    [
        K("enabled", BOOL),
        K("address", T.string(check_address)),
        K("middlewares", T.list_of(STR)),
    ],
    _build_admin,
    model=AdminConfig,
)


def _build_access_log(d: Decoded, ctx: Ctx) -> AccessLogConfig:
    v = d.values
    ctx.explicit.add("access_log")
    if v["path"] != "-" and ctx.ok(f"{d.path}.path"):
        if v["path"] == "":
            ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", 'must not be empty; use "-" for stdout')
        else:
            parent = os.path.dirname(os.path.abspath(v["path"]))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", f"directory {quote(parent)} is not writable")
    return AccessLogConfig(**v)


ACCESS_LOG: Final = schema(
    "access_log",
    [
        K("path", STR, path=True),
        K("format", T.enum("json")),
        K("flush_interval", T.duration(0, lo_open=True)),
    ],
    _build_access_log,
    model=AccessLogConfig,
)


def _check_propagation(value: Any) -> str | None:
    dup = [x for i, x in enumerate(value) if x in value[:i]]
    return f'duplicate format "{dup[0]}"' if dup else None


def _build_tracing(d: Decoded, ctx: Ctx) -> TracingConfig:
    ctx.explicit.add("tracing")
    return TracingConfig(**d.values)


TRACING: Final = schema(
    "tracing",
    [
        K(
            "propagation",
            T("list", item=T.enum("w3c", "b3", "b3multi"), min_len=1, check=_check_propagation),
        ),
        K("sample_rate", T.number(0, 1)),
        K("otlp_endpoint", T.string(lambda v: check_http_url(v, empty_ok=True)), url=True),
        K("otlp_headers", T.map_of(), secret=True),
        K("service_name", T.string(check_nonempty)),
    ],
    _build_tracing,
    model=TracingConfig,
)

TOP: Final = schema(
    "gateway",
    [
        K("providers", T.block(PROVIDERS)),
        K("admin", T.block(ADMIN)),
        K("access_log", T.block(ACCESS_LOG)),
        K("tracing", T.block(TRACING)),
        K("workers", T("int_or_auto", lo=1)),
        K("shutdown_timeout", T.duration(0)),
    ],
    legacy={
        "shutdown_timeout_secs": Legacy(
            "shutdown_timeout",
            T.seconds(0),
            lambda v: f'"shutdown_timeout_secs" is deprecated; use shutdown_timeout = "{format_duration(v)}"',
        )
    },
    model=GatewayConfig,
)

LABELLED: Final = {"entrypoints": ENTRYPOINT, "routers": ROUTER, "services": SERVICE, "middlewares": None}
ALIASES: Final = {
    "entrypoint": "entrypoints",
    "router": "routers",
    "service": "services",
    "middleware": "middlewares",
    "provider": "providers",
}
TOP_KEYS: Final = tuple(LABELLED) + tuple(TOP.keys) + tuple(TOP.legacy)
