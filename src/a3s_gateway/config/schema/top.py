"""Schemas of ``admin``, ``access_log``, ``tracing`` and the top level of a file (SPEC §3.6-§3.10)."""

from __future__ import annotations

import os
from typing import Any, Final

from a3s_gateway.config.model import (
    EMPTY_MAP,
    AccessLogConfig,
    AdminConfig,
    ProvidersConfig,
    TracingConfig,
    format_duration,
)
from a3s_gateway.config.schema.checks import _check_address, _check_http_url, _check_nonempty, parse_address
from a3s_gateway.config.schema.engine import (
    _K,
    _T,
    BOOL,
    STR,
    _block,
    _Ctx,
    _Decoded,
    _dur,
    _enum,
    _Legacy,
    _list,
    _map,
    _num,
    _q,
    _schema,
    _secs,
    _str,
)
from a3s_gateway.config.schema.entrypoints import ENTRYPOINT
from a3s_gateway.config.schema.providers import PROVIDERS
from a3s_gateway.config.schema.routers import ROUTER
from a3s_gateway.config.schema.services import SERVICE


def _build_admin(d: _Decoded, ctx: _Ctx) -> AdminConfig:
    v = d.values
    host, port = parse_address(v["address"]) or ("", 0)
    ctx.explicit.add("admin")
    return AdminConfig(enabled=v["enabled"], address=v["address"], host=host, port=port, middlewares=v["middlewares"])


ADMIN: Final = _schema(
    "admin",
    [
        _K("enabled", BOOL, True),
        _K("address", _str(_check_address), "127.0.0.1:9901"),
        _K("middlewares", _list(STR), ()),
    ],
    _build_admin,
)


def _build_access_log(d: _Decoded, ctx: _Ctx) -> AccessLogConfig:
    v = d.values
    ctx.explicit.add("access_log")
    if v["path"] != "-" and ctx.ok(f"{d.path}.path"):
        if v["path"] == "":
            ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", 'must not be empty; use "-" for stdout')
        else:
            parent = os.path.dirname(os.path.abspath(v["path"]))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", f"directory {_q(parent)} is not writable")
    return AccessLogConfig(**v)


ACCESS_LOG: Final = _schema(
    "access_log",
    [
        _K("path", STR, "-", path=True),
        _K("format", _enum("json"), "json"),
        _K("flush_interval", _dur(0, lo_open=True), 1.0),
    ],
    _build_access_log,
)


def _check_propagation(value: Any) -> str | None:
    dup = [x for i, x in enumerate(value) if x in value[:i]]
    return f'duplicate format "{dup[0]}"' if dup else None


def _build_tracing(d: _Decoded, ctx: _Ctx) -> TracingConfig:
    ctx.explicit.add("tracing")
    return TracingConfig(**d.values)


TRACING: Final = _schema(
    "tracing",
    [
        _K(
            "propagation",
            _T("list", item=_enum("w3c", "b3", "b3multi"), min_len=1, check=_check_propagation),
            ("w3c", "b3"),
        ),
        _K("sample_rate", _num(0, 1), 1.0),
        _K("otlp_endpoint", _str(lambda v: _check_http_url(v, empty_ok=True)), ""),
        _K("otlp_headers", _map(), EMPTY_MAP, secret=True),
        _K("service_name", _str(_check_nonempty), "a3s-gateway"),
    ],
    _build_tracing,
)

TOP: Final = _schema(
    "gateway",
    [
        _K("providers", _block(PROVIDERS), ProvidersConfig()),
        _K("admin", _block(ADMIN), AdminConfig()),
        _K("access_log", _block(ACCESS_LOG), None),
        _K("tracing", _block(TRACING), TracingConfig()),
        _K("workers", _T("int_or_auto", lo=1), 1),
        _K("shutdown_timeout", _dur(0), 30.0),
    ],
    legacy={
        "shutdown_timeout_secs": _Legacy(
            "shutdown_timeout",
            _secs(0),
            lambda v: f'"shutdown_timeout_secs" is deprecated; use shutdown_timeout = "{format_duration(v)}"',
        )
    },
)

LABELLED: Final = {"entrypoints": ENTRYPOINT, "routers": ROUTER, "services": SERVICE, "middlewares": None}
_ALIASES: Final = {
    "entrypoint": "entrypoints",
    "router": "routers",
    "service": "services",
    "middleware": "middlewares",
    "provider": "providers",
}
_TOP_KEYS: Final = tuple(LABELLED) + tuple(TOP.keys) + tuple(TOP.legacy)
