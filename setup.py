"""Build script: the C head scanner + Cython modules (one of them over libnghttp2, when pkg-config finds it) + one
mypyc group.

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


# functions of libnghttp2 the HTTP/2 engine needs: the CVE-2023-44487 / CVE-2024-28182 limits (upstream 1.57 / 1.61;
# Debian's 1.52 has them backported), so the header is checked rather than the version
NGHTTP2_REQUIRED = ("nghttp2_option_set_max_continuations", "nghttp2_option_set_stream_reset_rate_limit")


def nghttp2_extension() -> list[Extension]:
    """The libnghttp2 HTTP/2 engine (proxy/_nghttp2.pyx) when pkg-config finds the library, else none (HTTP/2 then
    runs on the pure ``h2`` implementation)."""
    import shlex
    import subprocess

    def pkg_config(*args: str) -> str | None:
        try:
            done = subprocess.run(["pkg-config", *args, "libnghttp2"], capture_output=True, text=True, check=False)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    hint = "install libnghttp2-dev (apt-get) / libnghttp2-devel (yum) / libnghttp2 (brew) and pkg-config"
    cflags, libs = pkg_config("--cflags"), pkg_config("--libs")
    if cflags is None or libs is None:
        print(f"note: libnghttp2 not found by pkg-config: the native HTTP/2 engine is not built ({hint})",
              file=sys.stderr)
        return []
    include_dirs = [a[2:] for a in shlex.split(cflags) if a.startswith("-I")]
    header = next((os.path.join(d, "nghttp2", "nghttp2.h") for d in [*include_dirs, "/usr/local/include",
                   "/usr/include"] if os.path.isfile(os.path.join(d, "nghttp2", "nghttp2.h"))), None)
    text = open(header).read() if header else ""
    missing = [name for name in NGHTTP2_REQUIRED if name not in text]
    if missing:
        print(f"note: libnghttp2 {pkg_config('--modversion') or '?'} lacks {', '.join(missing)} (1.61 or later "
              "needed): the native HTTP/2 engine is not built", file=sys.stderr)
        return []
    args = shlex.split(libs)
    return [Extension(
        "a3s_gateway.proxy._nghttp2",
        ["src/a3s_gateway/proxy/_nghttp2.pyx"],
        include_dirs=include_dirs,
        library_dirs=[a[2:] for a in args if a.startswith("-L")],
        libraries=[a[2:] for a in args if a.startswith("-l")],
        extra_compile_args=[*(a for a in shlex.split(cflags) if not a.startswith("-I")),
                            *(["-O3"] if sys.platform != "win32" else [])],
    )]


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
        *nghttp2_extension(),
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
