"""Suite-wide test set-up.

``A3S_TEST_PURE_MYPYC=1`` makes the mypyc-compiled modules load from their ``.py`` sources, so the same tests run
against the interpreted twins in one install (tests/unit/test_mypyc_twins.py does that in a subprocess).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

MYPYC_MODULES = (
    "a3s_gateway.routing.matchers",
    "a3s_gateway.routing.router",
    "a3s_gateway.service.balancer",
    "a3s_gateway.proxy.upstream",
    "a3s_gateway.proxy.http1",
)


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Find the mypyc modules as their .py sources, never as the compiled extension."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MYPYC_MODULES or not path:
            return None
        leaf = fullname.rsplit(".", 1)[1]
        for entry in path:
            source = Path(entry) / f"{leaf}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


if os.environ.get("A3S_TEST_PURE_MYPYC") == "1":
    sys.meta_path.insert(0, _SourceFirst())
