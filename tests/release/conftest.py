"""Release artefacts built the way a release builds them: ``make dist`` (sdist → wheel → auditwheel repair) and
``make binary`` (PyInstaller one-file). Each is built once per session into a temporary directory, unless
``A3S_DIST_DIR`` (a directory holding ``make dist`` output) or ``A3S_BINARY`` (an executable) names one already
built — the release workflows test what they are about to publish that way."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from external import require_tool

ROOT = Path(__file__).resolve().parents[2]


def _make(target: str, dist: Path) -> None:
    require_tool("make", "make")
    require_tool("gcc", "gcc")
    out = subprocess.run(["make", "-C", str(ROOT), target, f"DIST={dist}"], capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, f"make {target} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


@pytest.fixture(scope="session")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("A3S_DIST_DIR")
    if given:
        return Path(given)
    dist = tmp_path_factory.mktemp("dist")
    _make("dist", dist)
    return dist


@pytest.fixture(scope="session")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    given = os.environ.get("A3S_BINARY")
    if given:
        yield Path(given)
        return
    dist = tmp_path_factory.mktemp("binary")
    _make("binary", dist)
    built = [p for p in dist.iterdir() if p.name.startswith("a3s-gateway-")]
    assert len(built) == 1, f"make binary left {built}"
    yield built[0]
    shutil.rmtree(dist, ignore_errors=True)
