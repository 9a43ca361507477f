"""Load the modules named in ``BENCH_INTERPRET`` (comma-separated) from their ``.py`` sources.

Put this directory on PYTHONPATH to run an installed, compiled gateway with some mypyc modules interpreted —
the "before" side of an A/B comparison of a compilation change (bench/ab_gateway.py), and the interpreted run of
the mypyc modules in the tests (tests/unit/test_mypyc_twins.py).
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

_NAMES = {n.strip() for n in os.environ.get("BENCH_INTERPRET", "").split(",") if n.strip()}


class _SourceFirst(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _NAMES or not path:
            return None
        leaf = fullname.rsplit(".", 1)[1]
        for entry in path:
            source = Path(entry) / f"{leaf}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


if _NAMES:
    sys.meta_path.insert(0, _SourceFirst())
