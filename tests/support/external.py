"""External programs some tests drive (curl, openssl): the test skips with the install hint when one is missing, and
fails instead under ``A3S_REQUIRE_SERVICES=1`` (CI), so a missing program cannot hide tests. ``make services``
installs them."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str, package: str) -> str:
    """The path of program ``name``; skip (or fail under A3S_REQUIRE_SERVICES=1) with its install hint."""
    path = shutil.which(name)
    if path is None:
        hint = f"{name} not found; install it with: apt-get install -y {package}"
        if os.environ.get("A3S_REQUIRE_SERVICES") == "1":
            pytest.fail(hint + " (A3S_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(hint)
    return path
