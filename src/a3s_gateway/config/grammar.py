"""The HCL grammar's LALR tables, built once and loaded in ~0.2 s (SPEC §13.3: first request within 1 s).

python-hcl2 builds its lark grammar in 3-15 s and caches it next to its own sources, keyed by that path: a
read-only site-packages, a fresh install or a PyInstaller binary (random extraction path) pay the full build on
start. Here the built parser is serialised with ``Lark.save`` (no path in its key) and looked up in this order:

1. a file shipped inside the package, generated at build time (``setup.py`` build, ``make build``);
2. the per-user cache ``$XDG_CACHE_HOME/a3s-gateway/`` (written atomically on the first build);
3. otherwise it is built in memory, then written to 2.

The file name carries the python-hcl2, lark and Python versions, so a stale file is never loaded.
Run as ``python -m a3s_gateway.config.grammar [DIR]`` to write the file into DIR (default: next to this module).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lark import Lark


def grammar_file_name() -> str:
    import hcl2.version
    import lark

    py = f"{sys.version_info[0]}{sys.version_info[1]}"
    return f"_hcl_grammar-{hcl2.version.version}-lark-{lark.__version__}-py{py}.bin"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "a3s-gateway"


def package_dir() -> Path:
    """Where the build puts the pre-built tables: next to this module."""
    return Path(__file__).resolve().parent


def _postlex() -> Any:
    from hcl2.postlexer import PostLexer

    return PostLexer()


def build_parser() -> Lark:
    """Build python-hcl2's LALR parser from its grammar (slow: seconds)."""
    import hcl2.parser
    from lark import Lark

    return Lark.open("hcl2.lark", parser="lalr", rel_to=hcl2.parser.__file__, propagate_positions=True,
                     postlex=_postlex())


def save(parser: Lark, directory: Path) -> Path:
    """Write ``parser`` into ``directory`` atomically (readers never see half a file)."""
    from lark.lark import _LOAD_ALLOWED_OPTIONS

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / grammar_file_name()
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".grammar-")
    try:
        with os.fdopen(fd, "wb") as f:
            parser.save(f, _LOAD_ALLOWED_OPTIONS)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _load(path: Path) -> Lark | None:
    from lark import Lark

    try:
        with path.open("rb") as f:
            # the same private entry point lark's own cache uses: options that cannot be pickled are passed again
            parser: Lark = Lark.__new__(Lark)._load(f, postlex=_postlex(), propagate_positions=True)
            return parser
    except FileNotFoundError:
        return None
    except Exception:  # a corrupt or incompatible file: rebuild rather than fail
        return None


def load_parser() -> Lark:
    """The HCL parser: packaged tables, else the user cache, else built (and cached for the next start)."""
    name = grammar_file_name()
    for directory in (package_dir(), user_cache_dir()):
        parser = _load(directory / name)
        if parser is not None:
            return parser
    parser = build_parser()
    try:
        save(parser, user_cache_dir())
    except OSError:
        pass  # unwritable cache: the next start builds again (slow, but correct)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else package_dir()
    print(save(build_parser(), directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
