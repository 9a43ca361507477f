"""Middleware types (SPEC §6) → their implementations, and the chain compiler used by config/compile.py."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .chain import Chain, Middleware

if TYPE_CHECKING:
    from ..config.model import MiddlewareConfig

#: type → (module, class); types absent here are refused at start ("not supported yet")
IMPLEMENTATIONS: Mapping[str, tuple[str, str]] = {
    "api-key": ("a3s_gateway.middleware.auth", "ApiKey"),
    "basic-auth": ("a3s_gateway.middleware.auth", "BasicAuth"),
    "jwt": ("a3s_gateway.middleware.jwt", "Jwt"),
    "forward-auth": ("a3s_gateway.middleware.forward_auth", "ForwardAuth"),
    "rate-limit": ("a3s_gateway.middleware.ratelimit", "RateLimit"),
    "rate-limit-redis": ("a3s_gateway.middleware.ratelimit_redis", "RateLimitRedis"),
    "token-limit": ("a3s_gateway.middleware.tokenlimit", "TokenLimit"),
    "cors": ("a3s_gateway.middleware.cors", "Cors"),
    "headers": ("a3s_gateway.middleware.headers", "Headers"),
    "strip-prefix": ("a3s_gateway.middleware.rewrite", "StripPrefix"),
    "body-limit": ("a3s_gateway.middleware.bodylimit", "BodyLimit"),
    "retry": ("a3s_gateway.middleware.retry", "Retry"),
    "circuit-breaker": ("a3s_gateway.middleware.breaker", "CircuitBreaker"),
    "ip-allow": ("a3s_gateway.middleware.ipallow", "IpAllow"),
    "compress": ("a3s_gateway.middleware.compress", "Compress"),
    "ws-mux": ("a3s_gateway.wsmux.middleware", "WsMux"),
}


def is_implemented(kind: str) -> bool:
    """Whether this build runs middleware type ``kind`` (its module imports)."""
    entry = IMPLEMENTATIONS.get(kind)
    if entry is None:
        return False
    module, cls = entry
    try:
        getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return False
    return True


def implemented() -> frozenset[str]:
    """The middleware types this build runs (their modules import)."""
    return frozenset(kind for kind in IMPLEMENTATIONS if is_implemented(kind))


def build(config: MiddlewareConfig, router: str) -> Middleware:
    """A new instance of ``config`` for ``router``."""
    module, cls = IMPLEMENTATIONS[config.type]
    factory: Any = getattr(importlib.import_module(module), cls)
    instance: Middleware = factory(config.name, router, config.params)
    return instance


def compile_chain(
    router: str,
    names: tuple[str, ...],
    configs: Mapping[str, MiddlewareConfig],
    previous: Mapping[tuple[str, str], tuple[MiddlewareConfig, Middleware]],
    out: dict[tuple[str, str], tuple[MiddlewareConfig, Middleware]],
) -> Chain | None:
    """The chain of ``router`` (None without middlewares). Instances whose (router, name, configuration) are
    unchanged are taken from ``previous`` (their state survives the reload); every instance used is put in ``out``.
    """
    if not names:
        return None
    mws: list[Middleware] = []
    for i, name in enumerate(names):
        cfg = configs[name]
        old = previous.get((router, name))
        if old is not None and old[0] == cfg and old[1].slot == i:
            mw = old[1]
        else:
            mw = build(cfg, router)
        out[(router, name)] = (cfg, mw)
        mws.append(mw)
    return Chain(mws)
