"""Both implementations of every Cython-accelerated module, for tests parametrised over them."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from a3s_gateway import _compat


def twins(role: str) -> list[object]:
    """pytest params: the compiled module (must be built unless A3S_GATEWAY_NO_EXTENSIONS=1) and the pure one."""
    compiled, pure = _compat.CYTHON_MODULES[role]
    params: list[object] = [pytest.param(pure, id="pure")]
    if not _compat.NO_EXTENSIONS:
        params.insert(0, pytest.param(compiled, id="compiled"))
    return params


def load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:  # a missing build must fail, never skip
        pytest.fail(f"{name} is not built ({e}); run `make build`")
