"""The C heap of a gateway process: glibc tuning, and giving freed heap back after many connections closed.

`tune()` raises glibc's trim threshold and top pad to 32 MiB so that the heap is not shrunk and regrown around every
large read buffer (TOOLCHAIN.md: ~3x MB/s on large bodies). The price is that memory freed when thousands of
connections close stays resident (issue 25: +23 MB after 5,000 connections). `HeapTrimmer` pays it back: a timer,
off the request path, calls `malloc_trim(0)` once the open connection count has fallen well below its recent peak.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
from collections.abc import Callable
from typing import Final

log: Final = logging.getLogger("a3s_gateway.heap")

PAD_BYTES: Final = 32 * 1024 * 1024
M_TRIM_THRESHOLD: Final = -1
M_TOP_PAD: Final = -2
# A trim is worth its heap walk once this many connections (and at least half of the peak) have gone since the peak.
TRIM_AFTER_DROP: Final = 500
CHECK_INTERVAL: Final = 2.0


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``malloc_trim``), else None (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def tune() -> None:
    """Keep glibc from trimming the heap around every read buffer."""
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_TRIM_THRESHOLD, PAD_BYTES)
        libc.mallopt(M_TOP_PAD, PAD_BYTES)


class HeapTrimmer:
    """Calls ``trim`` when the connection count has dropped by ``drop`` or more, and to at most half, since its peak.

    ``count`` is the process's open downstream connection count. The peak restarts from the count after each trim,
    so a process whose connections come and go in steady numbers never trims; one burst that ends trims once.
    """

    def __init__(self, count: Callable[[], int], trim: Callable[[], object], drop: int = TRIM_AFTER_DROP) -> None:
        self.count = count
        self.trim = trim
        self.drop = drop
        self.peak = 0
        self.trims = 0

    def check(self) -> bool:
        """One timer tick; True when it trimmed."""
        now = self.count()
        if now > self.peak:
            self.peak = now
            return False
        if self.peak - now >= self.drop and now * 2 <= self.peak:
            self.trim()
            self.trims += 1
            self.peak = now
            return True
        return False

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # a failing count must not end the timer, nor anything else
                log.exception("heap trim check failed")


def start_trimmer(count: Callable[[], int]) -> asyncio.Task[None] | None:
    """The trimmer's timer task for this process, or None where the C library is not glibc."""
    libc = glibc()
    if libc is None:
        return None
    trim = libc.malloc_trim

    def trim_all() -> object:
        return trim(0)

    return asyncio.ensure_future(HeapTrimmer(count, trim_all).run())


def stop_trimmer(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
