"""Micro benchmark: relay 1 MiB in 16 KiB reads (Content-Length and chunked re-framing), compiled vs pure."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from a3s_gateway import _compat

BLOCK = b"x" * 16384
READS = [BLOCK] * 64  # 1 MiB


@pytest.fixture(params=["compiled", "pure"])
def relay(request: pytest.FixtureRequest) -> Any:
    compiled, pure = _compat.CYTHON_MODULES["body relay"]
    return importlib.import_module(compiled if request.param == "compiled" else pure)


def test_relay_1mib_content_length(benchmark: Any, relay: Any) -> None:
    def run() -> int:
        reader = relay.BodyReader(relay.LENGTH, len(READS) * len(BLOCK), None)
        n = 0
        for data in READS:
            pieces, _ = reader.feed(data)
            n += len(pieces)
        assert reader.done
        return n

    benchmark(run)


def test_relay_1mib_chunked_reframe(benchmark: Any, relay: Any) -> None:
    def run() -> int:
        n = 0
        for data in READS:
            n += len(relay.chunk_frames([data]))
        return n

    benchmark(run)
