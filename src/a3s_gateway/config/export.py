"""Export: the JSON shape of a configuration (``GatewayConfig.to_dict``, SPEC §11.1), walked from the schemas."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from a3s_gateway.config.model import REDACTED, EntrypointConfig, GatewayConfig, format_duration
from a3s_gateway.config.schema.engine import STR, Schema, T
from a3s_gateway.config.schema.entrypoints import ENTRYPOINT, PROTOCOL_KEYS
from a3s_gateway.config.schema.middlewares import MIDDLEWARE_SCHEMAS
from a3s_gateway.config.schema.providers import PROVIDERS, SEED
from a3s_gateway.config.schema.routers import ROUTER
from a3s_gateway.config.schema.services import SERVICE
from a3s_gateway.config.schema.top import ACCESS_LOG, ADMIN, TRACING
from a3s_gateway.observability.redact import redact_url

__all__ = ["config_to_dict"]


def _export_value(t: T, value: Any, redact: bool, secret: bool, url: bool = False) -> Any:
    if value is None:
        return None
    if url and redact and isinstance(value, str):
        return redact_url(value)
    kind = t.kind
    if kind == "duration":
        return format_duration(value)
    if kind in ("secs", "ms", "num"):
        return int(value) if float(value).is_integer() else value
    if kind in ("block",):
        assert t.schema is not None
        return _export_obj(t.schema, value, redact)
    if kind == "blocks":
        assert t.schema is not None
        if t.schema is SEED:  # stored as plain URLs
            return [_export_obj(SEED, {"url": v}, redact) for v in value]
        return [_export_obj(t.schema, v, redact) for v in value]
    if kind == "map":
        if secret and redact:
            return {k: REDACTED for k in value}
        return dict(value)
    if secret and redact:
        if kind == "list":
            return [REDACTED for _ in value]
        return REDACTED
    if kind in ("list", "str_or_list"):
        assert t.item is not None or kind == "str_or_list"
        return [_export_value(t.item or STR, v, redact, False) for v in value]
    return value


def _export_obj(schema: Schema, obj: Any, redact: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in schema.keys.items():
        value = getattr(obj, spec.field or key) if not isinstance(obj, Mapping) else obj.get(spec.field or key)
        out[key] = _export_value(spec.type, value, redact, spec.secret, spec.url)
    return out


def _export_entrypoint(ep: EntrypointConfig, redact: bool) -> dict[str, Any]:
    out = _export_obj(ENTRYPOINT, ep, redact)
    for key, protocols in PROTOCOL_KEYS.items():
        if ep.protocol not in protocols:
            del out[key]
    return out


def config_to_dict(config: GatewayConfig, *, redact: bool = True) -> dict[str, Any]:
    """The JSON shape of a configuration (SPEC §11.1 ``/api/gateway/config``); loads back with ``from_dict``."""
    middlewares: dict[str, Any] = {}
    for name, mw in config.middlewares.items():
        schema = MIDDLEWARE_SCHEMAS[mw.type]
        body = _export_obj(schema, {**mw.params, "type": mw.type}, redact)
        middlewares[name] = {k: v for k, v in body.items() if v is not None}
    return {
        "entrypoints": {n: _export_entrypoint(e, redact) for n, e in config.entrypoints.items()},
        "routers": {n: _export_obj(ROUTER, r, redact) for n, r in config.routers.items()},
        "services": {n: _export_obj(SERVICE, s, redact) for n, s in config.services.items()},
        "middlewares": middlewares,
        "providers": _export_obj(PROVIDERS, config.providers, redact),
        "admin": _export_obj(ADMIN, config.admin, redact),
        "access_log": _export_obj(ACCESS_LOG, config.access_log, redact) if config.access_log else None,
        "tracing": _export_obj(TRACING, config.tracing, redact),
        "workers": config.workers,
        "shutdown_timeout": format_duration(config.shutdown_timeout),
    }
