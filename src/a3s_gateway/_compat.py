"""The one place that decides between compiled and pure-Python implementations.

``A3S_GATEWAY_NO_EXTENSIONS=1`` selects the pure-Python twin of every Cython module at run time (and makes
``setup.py`` build a pure wheel). mypyc modules are fixed at install time: a compiled install runs them compiled.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Final

NO_EXTENSIONS: Final = os.environ.get("A3S_GATEWAY_NO_EXTENSIONS", "") not in ("", "0")

#: role -> (compiled module, pure module); Cython modules have two names, mypyc modules one.
CYTHON_MODULES: Final[dict[str, tuple[str, str]]] = {
    "http parser": ("a3s_gateway.http._parser", "a3s_gateway.http._parser_py"),
    "header filter": ("a3s_gateway.http._headers_c", "a3s_gateway.http._headers"),
    "body relay": ("a3s_gateway.proxy._relay_c", "a3s_gateway.proxy._relay"),
}
MYPYC_MODULES: Final[dict[str, str]] = {
    "rule matchers": "a3s_gateway.routing.matchers",
    "router": "a3s_gateway.routing.router",
    "balancer": "a3s_gateway.service.balancer",
    "request counters": "a3s_gateway.observability.stats",
    "token buckets": "a3s_gateway.middleware.ratelimit",
    "upstream relay": "a3s_gateway.proxy.upstream",
    "client connection": "a3s_gateway.proxy.http1",
}


def load(role: str) -> ModuleType:
    """Import the implementation of a Cython-accelerated ``role``: compiled unless disabled or missing."""
    compiled, pure = CYTHON_MODULES[role]
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(compiled)
        except ImportError:
            pass
    return importlib.import_module(pure)


def is_compiled(module: ModuleType) -> bool:
    """True when ``module`` was loaded from a native extension."""
    return (getattr(module, "__file__", None) or "").endswith((".so", ".pyd"))


def implementations() -> list[tuple[str, str, bool]]:
    """(role, module name, compiled?) for every accelerated module, as actually loaded."""
    rows: list[tuple[str, str, bool]] = []
    for role in CYTHON_MODULES:
        mod = load(role)
        rows.append((role, mod.__name__, is_compiled(mod)))
    for role, name in MYPYC_MODULES.items():
        mod = importlib.import_module(name)
        rows.append((role, name, is_compiled(mod)))
    return rows
