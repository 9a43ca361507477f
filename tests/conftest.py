"""Suite-wide test set-up.

``A3S_TEST_PURE_MYPYC=1`` makes the mypyc-compiled modules load from their ``.py`` sources, so the same tests run
against the interpreted twins in one install (tests/unit/test_mypyc_twins.py does that in a subprocess). The finder
is tests/support/interpret/sitecustomize.py, which bench/ab_gateway.py puts on PYTHONPATH for the same purpose.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "support"))  # the shared helpers (loops, impls, certs, stand-ins, ...), by bare name

if os.environ.get("A3S_TEST_PURE_MYPYC") == "1":
    # importing _compat loads no accelerated module (the package __init__ imports only errors)
    from a3s_gateway._compat import MYPYC_MODULES

    os.environ["BENCH_INTERPRET"] = ",".join(MYPYC_MODULES.values())
    runpy.run_path(str(TESTS / "support" / "interpret" / "sitecustomize.py"))

# ``run``: a fixture running a coroutine under both event loops (tests/support/loops.py), for any test module
from loops import run  # noqa: E402,F401
