"""The one place that decides between compiled and pure-Python implementations.

``A3S_GATEWAY_NO_EXTENSIONS=1`` selects the pure-Python twin of every Cython module at run time (and makes
``setup.py`` build a pure wheel). mypyc modules are fixed at install time: a compiled install runs them compiled.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Final

from ._modules import CYTHON_MODULES, MYPYC_MODULES, NATIVE_MODULES

NO_EXTENSIONS: Final = os.environ.get("A3S_GATEWAY_NO_EXTENSIONS", "") not in ("", "0")

__all__ = ["CYTHON_MODULES", "MYPYC_MODULES", "NATIVE_MODULES", "NO_EXTENSIONS", "implementations", "is_compiled",
           "load", "native"]


def load(role: str) -> ModuleType:
    """Import the implementation of a Cython-accelerated ``role``: compiled unless disabled or missing."""
    compiled, pure = CYTHON_MODULES[role]
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(compiled)
        except ImportError:
            pass
    return importlib.import_module(pure)


def native(role: str) -> ModuleType | None:
    """The native module of ``role`` (a wrapped C library), or None: disabled, or not built (library missing)."""
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module(NATIVE_MODULES[role][0])
    except ImportError:
        return None


def is_compiled(module: ModuleType) -> bool:
    """True when ``module`` was loaded from a native extension."""
    return (getattr(module, "__file__", None) or "").endswith((".so", ".pyd"))


def implementations() -> list[tuple[str, str, bool]]:
    """(role, module name, compiled?) for every accelerated module, as actually loaded."""
    rows: list[tuple[str, str, bool]] = []
    for role in CYTHON_MODULES:
        mod = load(role)
        rows.append((role, mod.__name__, is_compiled(mod)))
    for role, (name, fallback) in NATIVE_MODULES.items():
        built = native(role) is not None
        rows.append((role, name if built else fallback, built))
    for role, name in MYPYC_MODULES.items():
        mod = importlib.import_module(name)
        rows.append((role, name, is_compiled(mod)))
    return rows
