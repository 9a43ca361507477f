"""The shared-memory segment of the worker processes, pure Python.

Twin of the compiled ``_segment_c`` (``_segment_c.pyx`` over ``csrc/segment.c``): same API, same numbers, same
errors — ``tests/unit/test_segment.py`` runs both. Where the C code uses atomic instructions, this one takes an
exclusive ``fcntl.lockf`` on the segment's file around each operation (plus a thread lock: POSIX record locks
belong to the process, so they do not exclude its own threads). Both twins must never share one segment: the lock
does not exclude the C side's atomics.

The numbers are computed as in C: integers of 64 bits (wrapping where C wraps), and the same double arithmetic in
the same order for the seconds -> nanoseconds conversion and the tokens returned.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import threading
from typing import Final

__all__ = ["ENTRY_WORDS", "PROBES", "Segment", "key_hash"]

#: entries looked at per key (linear probing); words per entry (the key hash, then the TAT)
PROBES: Final = 8
ENTRY_WORDS: Final = 2

_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_U64: Final = (1 << 64) - 1
_I64_MIN: Final = -(1 << 63)
_I64_MAX: Final = (1 << 63) - 1
# bounds that keep every sum of the C side within int64 (segment.h): 2^61 ns is 73 years of uptime
_MAX_NOW_NS: Final = float(1 << 61)
_MAX_BUCKET_NS: Final = float(1 << 60)
# The interval is rounded down to a whole ns: a bucket then refills up to 1 ns per token early, which the clamp at
# `burst` keeps from adding up, whereas rounding up would make a clock that hits every token's instant exactly
# (rate 7/s, a take every 1/7 s) be denied after a dozen takes. Only an interval within 0.001 ns below a whole ns is
# rounded up: that is the float noise of period / rate (0.3 s -> 299999999.99999994 ns), not a fraction.
_INTERVAL_ROUNDING: Final = 0.001
# one lock for every segment of this process: the file lock does not exclude the process's own threads
_THREADS: Final = threading.Lock()


def key_hash(key: bytes) -> int:
    """FNV-1a 64 of ``key`` (0 mapped to 1): what a table entry stores, as an unsigned number."""
    h = _FNV_OFFSET
    for byte in key:
        h = ((h ^ byte) * _FNV_PRIME) & _U64
    return h or 1


def _signed(value: int) -> int:
    """``value`` wrapped to a signed 64-bit word."""
    value &= _U64
    return value - (1 << 64) if value > _I64_MAX else value


def _int64(value: int) -> int:
    if not _I64_MIN <= value <= _I64_MAX:
        raise OverflowError(f"{value} does not fit in a signed 64-bit word")
    return value


def _new_fd() -> int:
    """An anonymous, sparse file: memfd on Linux, an unlinked temporary file elsewhere. Close-on-exec: workers get
    it through ``subprocess`` ``pass_fds``, and no other child (backend executors) inherits it."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("a3s-gateway")
    import tempfile

    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


def _check_size(size: int) -> None:
    if size <= 0 or size % 8:
        raise ValueError(f"segment size must be a positive multiple of 8 bytes, not {size}")


class Segment:
    """A mapping of ``size`` bytes shared with other processes: ``words`` signed 64-bit words and GCRA rate-limit
    tables laid out in them. Made by :meth:`create` (new, zeroed) or :meth:`attach` (an inherited fd)."""

    __slots__ = ("_map", "_words", "fd", "size", "words")

    def __init__(self, fd: int, size: int) -> None:
        """Map ``size`` bytes of ``fd`` (use :meth:`create` or :meth:`attach`); owns ``fd`` once mapped."""
        self._map: mmap.mmap | None = None
        self._words: memoryview | None = None
        self.fd = -1  # set once mapped: a failed mapping leaves the fd to the caller (and __del__ closes nothing)
        self.size = size
        self.words = size // 8
        self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._words = memoryview(self._map).cast("q")
        self.fd = fd

    @staticmethod
    def create(size: int) -> Segment:
        """A new zeroed segment: memory is taken only by the pages written (the file is sparse)."""
        _check_size(size)
        fd = _new_fd()
        try:
            os.ftruncate(fd, size)
            return Segment(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def attach(fd: int, size: int) -> Segment:
        """The segment behind ``fd`` (inherited from the process that created it); the segment owns ``fd`` then."""
        _check_size(size)
        actual = os.fstat(fd).st_size
        if actual < size:  # pages past the end of the file would fault (SIGBUS) when touched
            raise ValueError(f"segment fd {fd} holds {actual} bytes, fewer than {size}")
        return Segment(fd, size)

    def _view(self, index: int) -> memoryview:
        words = self._words
        if words is None:
            raise ValueError("the segment is closed")
        if index < 0 or index >= self.words:
            raise IndexError(f"segment word {index} out of range (0 to {self.words - 1})")
        return words

    def _table(self, table: int, capacity: int) -> memoryview:
        words = self._words
        if words is None:
            raise ValueError("the segment is closed")
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"table capacity must be a power of two, not {capacity}")
        if table < 0 or table > self.words or capacity > (self.words - table) // ENTRY_WORDS:
            raise ValueError(f"table at word {table} with {capacity} entries does not fit in {self.words} words")
        return words

    def add(self, index: int, delta: int) -> int:
        """Add ``delta`` to word ``index`` (wrapping at 64 bits); the new value."""
        words = self._view(index)
        _int64(delta)
        with _THREADS:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                value = _signed(words[index] + delta)
                words[index] = value
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return value

    def get(self, index: int) -> int:
        """The value of word ``index``."""
        words = self._view(index)
        with _THREADS:  # a 64-bit load is atomic on every platform we run on; the locks order it like C's seq_cst
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                value: int = words[index]
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return value

    def set(self, index: int, value: int) -> None:
        """Store ``value`` in word ``index``."""
        words = self._view(index)
        _int64(value)
        with _THREADS:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                words[index] = value
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def cas(self, index: int, expected: int, desired: int) -> bool:
        """Store ``desired`` in word ``index`` if it holds ``expected``; True when it did."""
        words = self._view(index)
        _int64(expected)
        _int64(desired)
        with _THREADS:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                if words[index] != expected:
                    return False
                words[index] = desired
                return True
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def take(self, table: int, capacity: int, key: bytes, now: float, interval: float, burst: float) -> float:
        """Take one token for ``key`` from the table at word ``table``: one token every ``interval`` seconds, at most
        ``burst``; ``now`` in seconds. Returns the tokens left like ``TokenBuckets.take``: ``>= 0`` when allowed,
        ``tokens - 1`` in ``[-1, 0)`` when denied."""
        words = self._table(table, capacity)
        if not isinstance(key, bytes):
            raise TypeError(f"a key is bytes, not {type(key).__name__}")
        if not interval > 0.0 or not burst > 0.0:
            raise ValueError(f"interval and burst must be positive, not {interval} and {burst}")
        burst = float(burst)
        # seconds -> ns as the C side does it, on doubles: the clock to the nearest ns, the interval down to a whole ns
        now_f = now * 1e9 + 0.5
        interval_f = interval * 1e9 + _INTERVAL_ROUNDING
        if not (-_MAX_NOW_NS <= now_f <= _MAX_NOW_NS and interval_f <= _MAX_BUCKET_NS):
            raise ValueError(f"clock or bucket out of range: now {now} s, interval {interval} s, burst {burst}")
        interval_ns = max(math.floor(interval_f), 1)
        limit_f = burst * float(interval_ns) + 0.5
        if not limit_f <= _MAX_BUCKET_NS:
            raise ValueError(f"clock or bucket out of range: now {now} s, interval {interval} s, burst {burst}")
        now_ns = math.floor(now_f)
        limit = math.floor(limit_f)
        room = limit + math.ceil(burst) - interval_ns  # slack: 1 ns per token absorbs the clock's float noise
        hash_ = key_hash(key)
        word = _signed(hash_)
        mask = capacity - 1
        with _THREADS:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                entry = -1
                full = False
                victim = -1
                victim_tat = 0
                for i in range(min(capacity, PROBES)):
                    e = table + ENTRY_WORDS * ((hash_ + i) & mask)
                    k = words[e]
                    if k == word:
                        entry = e
                        break
                    if k == 0:  # entries fill in probe order and never empty again: the key is not further on
                        words[e] = word
                        entry = e
                        full = True  # a new key starts full
                        break
                    tat = words[e + 1]
                    if victim < 0 or tat < victim_tat:
                        victim = e
                        victim_tat = tat
                if entry < 0:
                    # every probed entry holds another key: recycle the one with the earliest TAT (a full bucket
                    # when it is <= now, so nothing is lost; otherwise the least recently refilled), restarting full
                    words[victim] = word
                    entry = victim
                    full = True
                ahead = 0 if full else max(words[entry + 1] - now_ns, 0)
                before = float(limit - ahead) / float(interval_ns)
                if before > burst:
                    before = burst
                elif before < 0.0:
                    before = 0.0
                if ahead > room:
                    return before - 1.0  # denied: nothing written
                words[entry + 1] = now_ns + ahead + interval_ns
                return before - 1.0 if before >= 1.0 else 0.0  # within the slack below one token: nothing left
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    def used(self, table: int, capacity: int) -> int:
        """Entries of the table that hold a key."""
        words = self._table(table, capacity)
        with _THREADS:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                keys = words[table:table + ENTRY_WORDS * capacity:ENTRY_WORDS].tolist()
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
        return len(keys) - keys.count(0)

    def close(self) -> None:
        """Unmap the segment and close its fd (other processes keep theirs); idempotent."""
        if self._words is not None:
            self._words.release()
            self._words = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd >= 0:
            fd = self.fd
            self.fd = -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()
