"""What cibuildwheel builds from cibuildwheel.toml (its identifiers are computed without Docker), and what the
sdist must carry for those builds: checked here because no Docker engine runs on this machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _identifiers(platform: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform,
                          "--config-file", str(ROOT / "cibuildwheel.toml"), str(ROOT)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_linux_wheels_manylinux_and_musllinux_x86_64_and_aarch64() -> None:
    pytest.importorskip("cibuildwheel")
    want = {f"cp3{minor}-{libc}_{arch}" for minor in (10, 11, 12, 13) for libc in ("manylinux", "musllinux")
            for arch in ("x86_64", "aarch64")}
    assert _identifiers("linux") == want


def test_macos_wheels_both_architectures() -> None:
    pytest.importorskip("cibuildwheel")
    assert _identifiers("macos") == {f"cp3{m}-macosx_{a}" for m in (10, 11, 12, 13) for a in ("x86_64", "arm64")}


def test_wheel_python_versions_match_requires_python() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    config = tomllib.loads((ROOT / "cibuildwheel.toml").read_text())["tool"]["cibuildwheel"]
    assert config["build"].split() == ["cp310-*", "cp311-*", "cp312-*", "cp313-*"]


def test_wheel_test_command_runs_a_file_the_sdist_carries() -> None:
    config = tomllib.loads((ROOT / "cibuildwheel.toml").read_text())["tool"]["cibuildwheel"]
    path = config["test-command"].split("{project}/", 1)[1].split()[0]
    assert (ROOT / path).is_file()
    manifest = (ROOT / "MANIFEST.in").read_text().split()
    assert "tests" in manifest and "csrc" in manifest  # graft tests, graft csrc
