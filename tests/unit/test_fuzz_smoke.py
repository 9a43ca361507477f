"""A few seconds of each atheris fuzz target (fuzz/targets.py; issue 25): the seeds from tests/vectors and what
the fuzzer derives from them in that time must give no finding. ``make fuzz`` runs the same targets for longer.
3 s per target; under ``CI=true`` 120 s shared by all the targets (about 17 s each); ``FUZZ_SMOKE_SECONDS=N`` sets
the time per target.

The differential target (compiled HTTP/1 scanner against the pure parser) needs the compiled build; it skips in a
pure install (tests/unit/test_compiled.py is what fails a build whose compiled modules did not load).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from a3s_gateway import _compat

REPO = Path(__file__).resolve().parents[2]
TARGETS = ["http1", "chunked", "config", "rules", "jwt", "h2head", "sse"]
# issue 25: "CI runs a 2-minute smoke of all of them": under CI=true the targets share 120 s of fuzzing (one after
# the other: the runners have 2 cores); elsewhere 3 s each. FUZZ_SMOKE_SECONDS sets the time per target.
CI_BUDGET = 120
SECONDS = int(os.environ.get("FUZZ_SMOKE_SECONDS") or (
    max(3, CI_BUDGET // len(TARGETS)) if os.environ.get("CI", "").lower() == "true" else 3))


def _atheris() -> None:
    if importlib.util.find_spec("atheris") is None:
        hint = "atheris not installed; install the dev extra (pip install atheris)"
        if os.environ.get("A3S_REQUIRE_SERVICES") == "1":
            pytest.fail(hint + " (A3S_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(hint)


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_smoke(target: str, tmp_path: Path) -> None:
    _atheris()
    if target == "http1" and importlib.util.find_spec(_compat.CYTHON_MODULES["http parser"][0]) is None:
        pytest.skip("the compiled HTTP/1 scanner is not built: nothing to compare the pure parser with")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "FUZZ_CORPUS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "fuzz" / "run.py"), target, f"-max_total_time={SECONDS}",
         f"-artifact_prefix={tmp_path}/", "-rss_limit_mb=1024"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=SECONDS + 60,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    runs = [line for line in out.splitlines() if line.startswith("stat::number_of_executed_units:")]
    assert runs and int(runs[0].split(":")[-1]) > 100, out[-2000:]  # it ran inputs, not just started
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*"))
