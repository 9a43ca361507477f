"""A normal install must run the compiled hot path: a silent fallback would pass every other test."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from a3s_gateway import _compat

BUILD_HINT = (
    "the compiled extensions did not load: build them with `make build` (pip install --no-build-isolation -e .; "
    "the http2 engine also needs libnghttp2 found by pkg-config: apt-get install -y libnghttp2-dev pkg-config)"
)


@pytest.mark.skipif(_compat.NO_EXTENSIONS, reason="A3S_GATEWAY_NO_EXTENSIONS=1 selects the pure twins on purpose")
def test_every_accelerated_module_is_compiled() -> None:
    missing = [f"{role} ({module})" for role, module, compiled in _compat.implementations() if not compiled]
    assert not missing, f"{BUILD_HINT}; pure modules loaded: {', '.join(missing)}"


def test_no_extensions_flag_selects_pure_twins() -> None:
    code = (
        "from a3s_gateway import _compat;"
        "print([(r, m, c) for r, m, c in _compat.implementations() if r in _compat.CYTHON_MODULES])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"A3S_GATEWAY_NO_EXTENSIONS": "1", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = eval(out)
    assert rows and all(not compiled for _, _, compiled in rows)
    assert all(m.endswith("_py") for _, m, _ in rows)


def test_version_verbose_lists_every_module() -> None:
    from a3s_gateway.cli import version_text

    text = version_text(True)
    for role in list(_compat.CYTHON_MODULES) + list(_compat.NATIVE_MODULES) + list(_compat.MYPYC_MODULES):
        assert role in text
    assert ("pure-python" in text) or ("compiled" in text)


@pytest.mark.parametrize("role", list(_compat.CYTHON_MODULES))
def test_both_twins_importable(role: str) -> None:
    compiled, pure = _compat.CYTHON_MODULES[role]
    importlib.import_module(pure)
    if not _compat.NO_EXTENSIONS:
        assert _compat.is_compiled(importlib.import_module(compiled)), BUILD_HINT


def test_native_module_follows_the_no_extensions_flag() -> None:
    code = "from a3s_gateway import _compat; print([r for r in _compat.implementations() if r[0] == 'http2 engine'])"
    env = {"A3S_GATEWAY_NO_EXTENSIONS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert eval(out) == [("http2 engine", "h2", False)]  # the pure h2 implementation serves HTTP/2


def test_selector_modules_export_the_chosen_twin() -> None:
    from a3s_gateway import segment
    from a3s_gateway.http import framing, headers, parser

    for module, role in ((parser, "http parser"), (headers, "header filter"), (framing, "body relay"),
                         (segment, "shared segment")):
        chosen = _compat.load(role)
        assert module.IMPLEMENTATION == chosen.__name__
    assert parser.parse_request is _compat.load("http parser").parse_request  # no wrapper on the hot path
    assert headers.request_head is _compat.load("header filter").request_head
    assert framing.new_body_reader is _compat.load("body relay").BodyReader
    assert segment.create == _compat.load("shared segment").Segment.create
