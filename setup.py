"""Build script: the C head scanner + Cython modules + one mypyc group.

``A3S_GATEWAY_NO_EXTENSIONS=1`` builds a pure-Python wheel (every module then runs interpreted).
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

NO_EXTENSIONS = os.environ.get("A3S_GATEWAY_NO_EXTENSIONS", "") not in ("", "0")
# Making an sdist (or only its metadata) compiles nothing: Cython and mypyc are not run for it.
_COMMANDS = [a for a in sys.argv[1:] if not a.startswith("-")]
SOURCES_ONLY = bool(_COMMANDS) and all(c in ("sdist", "egg_info", "dist_info") for c in _COMMANDS)

# The modules compiled by mypyc: the one list in src/a3s_gateway/_modules.py (also read by _compat and the tests),
# executed here because the package is not importable before it is built.
_MODULES: dict[str, object] = {}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "a3s_gateway", "_modules.py")) as _f:
    exec(compile(_f.read(), "_modules.py", "exec"), _MODULES)
MYPYC_MODULES = _MODULES["mypyc_paths"]()  # type: ignore[operator]


def extensions() -> list[Extension]:
    if NO_EXTENSIONS or SOURCES_ONLY:
        return []
    from Cython.Build import cythonize
    from mypyc.build import mypycify

    cflags = ["-O3"] if sys.platform != "win32" else []
    cython_exts = [
        Extension(
            "a3s_gateway.http._parser_c",
            ["src/a3s_gateway/http/_parser_c.pyx", "csrc/http1.c"],
            include_dirs=["csrc"],
            extra_compile_args=cflags,
        ),
        # the segment's GCRA converts seconds to ns in the wrapper and in C: no fused multiply-add (as the pure twin)
        Extension(
            "a3s_gateway._segment_c",
            ["src/a3s_gateway/_segment_c.pyx", "csrc/segment.c"],
            include_dirs=["csrc"],
            extra_compile_args=[*cflags, "-ffp-contract=off"] if sys.platform != "win32" else [],
        ),
        # Cython pure mode: `_headers_c.py` / `_framing_c.py` are links to the interpreted twins; the `.pxd`
        # beside them gives the compiled types.
        Extension("a3s_gateway.http._headers_c", ["src/a3s_gateway/http/_headers_c.py"], extra_compile_args=cflags),
        Extension("a3s_gateway.http._framing_c", ["src/a3s_gateway/http/_framing_c.py"], extra_compile_args=cflags),
    ]
    compiled = cythonize(
        cython_exts,
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )
    # mypy follows the package's imports; runtime dependencies need not be installed in the build environment
    # --follow-imports=silent: only the compiled modules are type-checked here (the interpreted ones they import are
    # checked by `make lint`; in a fresh build environment their third-party imports are missing and read as Any)
    compiled += mypycify(["--ignore-missing-imports", "--follow-imports=silent", *MYPYC_MODULES], opt_level="3",
                         group_name="a3s_gateway_hot")
    return compiled


class BuildPyWithGrammar(build_py):
    """Also ship the HCL grammar's LALR tables, so the first start after install stays under 1 s (SPEC §13.3)."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # `make build` writes them into src/ for editable installs
        import importlib.util
        from pathlib import Path

        spec = importlib.util.spec_from_file_location("_a3s_grammar", "src/a3s_gateway/config/grammar.py")
        assert spec is not None and spec.loader is not None
        grammar = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(grammar)
            grammar.save(grammar.build_parser(), Path(self.build_lib) / "a3s_gateway" / "config")
        except ImportError as e:  # python-hcl2 missing from the build environment: the first start builds them
            print(f"warning: HCL grammar tables not pre-built ({e})", file=sys.stderr)


class BuildExtPortable(build_ext):
    """No run-time library path into the build machine: a Python built with ``-Wl,-rpath,<its lib dir>`` in its
    LDSHARED (pyenv's) would put that path into every extension, and auditwheel repair leaves it there."""

    def build_extensions(self) -> None:
        linker = getattr(self.compiler, "linker_so", None)
        if isinstance(linker, list):
            self.compiler.linker_so = [a for a in linker if not a.startswith(("-Wl,-rpath", "-Wl,-R"))]
        for ext in self.extensions:
            ext.runtime_library_dirs = []
        super().build_extensions()


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPyWithGrammar, "build_ext": BuildExtPortable})
