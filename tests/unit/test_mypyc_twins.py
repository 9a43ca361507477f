"""The mypyc-compiled modules and their interpreted sources pass the same tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from a3s_gateway import _compat

ROOT = Path(__file__).resolve().parents[2]
SUITES = [
    "tests/unit/routing/test_rules.py", "tests/unit/routing/test_matchers.py", "tests/unit/routing/test_router.py",
    "tests/unit/observability/test_stats.py", "tests/unit/middleware/test_mw_ratelimit.py",
    "tests/unit/middleware/test_mw_local.py", "tests/unit/middleware/test_mw_cors.py",
    "tests/unit/middleware/test_mw_breaker.py", "tests/integration/test_middlewares.py",
    "tests/unit/service/test_balancer.py", "tests/integration/test_proxy_http1.py",
    "tests/unit/proxy/test_timer_wheel.py", "tests/unit/http/test_usage.py",
]


def test_interpreted_twins_pass_the_same_tests() -> None:
    env = {**os.environ, "A3S_TEST_PURE_MYPYC": "1"}
    check = subprocess.run(
        [sys.executable, "-c",
         "import conftest, a3s_gateway._compat as c, importlib;"
         "print([c.is_compiled(importlib.import_module(m)) for m in c.MYPYC_MODULES.values()])"],
        cwd=ROOT / "tests", env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == str([False] * len(_compat.MYPYC_MODULES))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
