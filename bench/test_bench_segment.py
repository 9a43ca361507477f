"""Micro benchmark of the shared segment (issue 18): ``take`` and ``add``, compiled vs pure, and ``take`` against the
in-process ``TokenBuckets.take`` of the ``rate-limit`` middleware (what a single-process gateway does per request).

``take`` runs one key at a clock advancing 1 ms per call with one token per 10 ms (burst 10): after the burst, one
call in ten is allowed, as under a sustained overload. The pure twin pays two ``fcntl.lockf`` system calls per
operation; the compiled one an atomic instruction.

Run: ``PYTHONPATH=src .venv/bin/python -m pytest bench/test_bench_segment.py --benchmark-only``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from a3s_gateway import _compat
from a3s_gateway.middleware.ratelimit import TokenBuckets

COMPILED, PURE = _compat.CYTHON_MODULES["shared segment"]
CALLS = 1000  # operations per benchmark round
INTERVAL = 0.01
BURST = 10


@pytest.fixture(params=[COMPILED, PURE], ids=["compiled", "pure"])
def seg(request: pytest.FixtureRequest) -> Iterator[Any]:
    try:
        twin = importlib.import_module(request.param)
    except ImportError as e:
        pytest.fail(f"{request.param} is not built ({e}); run `make build`")
    s = twin.Segment.create(1 << 16)
    yield s
    s.close()


def takes(take: Callable[[float], float]) -> Callable[[], int]:
    clock = [1000.0]

    def run() -> int:
        now = clock[0]
        allowed = 0
        for _ in range(CALLS):
            now += 0.001
            if take(now) >= 0.0:
                allowed += 1
        clock[0] = now
        return allowed

    return run


def test_take(benchmark: Any, seg: Any) -> None:
    take = seg.take
    allowed = benchmark(takes(lambda now: take(64, 1024, b"10.0.0.1", now, INTERVAL, BURST)))
    assert 90 <= allowed <= 110  # 1 s of clock per round at 100 tokens/s (plus the first burst)


def test_take_token_buckets(benchmark: Any) -> None:
    buckets = TokenBuckets(1 / INTERVAL, 1.0, BURST, 65536)
    take = buckets.take
    allowed = benchmark(takes(lambda now: take("10.0.0.1", now)))
    assert 90 <= allowed <= 110


def test_add(benchmark: Any, seg: Any) -> None:
    add = seg.add

    def run() -> int:
        value = 0
        for _ in range(CALLS):
            value = add(8, 1)
        return value

    assert benchmark(run) >= CALLS
