"""Giving freed heap back (issue 25): the trimmer's decision; glibc returning memory under the CLI's tuning."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from a3s_gateway import heap
from a3s_gateway.heap import HeapTrimmer


def test_trims_after_a_burst_of_connections_closed() -> None:
    counts = iter([0, 100, 3000, 5000, 4800, 2600, 2400, 10, 10, 10, 400, 5])
    trims: list[int] = []
    t = HeapTrimmer(lambda: next(counts), lambda: trims.append(1), drop=500)
    decided = [t.check() for _ in range(12)]
    # 5000 -> 2400 is a drop of >= 500 to at most half of the peak: one trim; the peak restarts at 2400, so the
    # fall to 10 trims again; 400 -> 5 is a drop of less than 500: no trim
    assert decided == [False, False, False, False, False, False, True, True, False, False, False, False]
    assert len(trims) == t.trims == 2


def test_steady_traffic_never_trims() -> None:
    counts = iter([300, 450, 200, 420, 180, 400] * 20)
    t = HeapTrimmer(lambda: next(counts), lambda: pytest.fail("trimmed"), drop=500)
    assert not any(t.check() for _ in range(120))


async def test_a_failing_count_does_not_end_the_timer() -> None:
    calls = 0

    def count() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return 0

    task = asyncio.ensure_future(HeapTrimmer(count, lambda: None).run(0.01))
    await asyncio.sleep(0.1)
    assert calls > 2 and not task.done()
    heap.stop_trimmer(task)


@pytest.mark.skipif(heap.glibc() is None, reason="glibc only")
def test_freed_heap_comes_back_after_the_trim_under_the_cli_tuning() -> None:
    """With the CLI's 32 MiB trim threshold, 64 MiB freed in small blocks stays resident until the trimmer runs."""
    script = textwrap.dedent('''
        import ctypes
        from a3s_gateway import heap

        def rss():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

        heap.tune()
        libc = heap.glibc()
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(4000) for _ in range(16000)]  # like per-connection buffers: below the mmap threshold
        for b in blocks:
            ctypes.memset(b, 1, 4000)
        keep = libc.malloc(100)  # holds the top of the heap: freeing the rest leaves a hole, not a shrinkable top
        grown = rss()
        for b in blocks:
            libc.free(b)
        freed = rss()
        counts = iter([16000, 0])
        trimmer = heap.HeapTrimmer(lambda: next(counts), lambda: libc.malloc_trim(0))
        trimmer.check(); trimmer.check()
        print(grown, freed, rss(), trimmer.trims)
    ''')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    grown, freed, trimmed, trims = map(int, out.stdout.split())
    assert trims == 1
    assert grown - freed < 8 * 1024  # free() alone gives (almost) nothing back
    assert freed - trimmed > 40 * 1024  # malloc_trim(0) returns the hole's pages
