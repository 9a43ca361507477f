"""The shared-memory segment of the supervisor and its workers, typed: the compiled twin (``_segment_c``: Cython over
``csrc/segment.c``, atomic instructions) or the pure one (``_segment_py``: ``mmap`` + ``fcntl.lockf``), picked once
here (see ``_compat``). Import these names, never a twin.

A segment is an array of signed 64-bit words that every process maps: counters updated atomically (``add``,
``cas``) and GCRA rate-limit tables (``take``; ``ENTRY_WORDS`` words per entry, a key looked up in ``PROBES``
entries). The creator passes ``fd`` to the workers (``subprocess`` ``pass_fds``: the fd is close-on-exec otherwise);
each calls :func:`attach` with it and the same size. Every process must load the same twin.

``take`` gives the numbers of the in-process ``TokenBuckets.take`` (the clock is converted to the nearest ns, the
interval rounded down to a whole ns: a bucket refills at most 1 ns per token early, never late).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from ._compat import load

__all__ = ["ENTRY_WORDS", "IMPLEMENTATION", "PROBES", "Segment", "attach", "create", "key_hash"]


class Segment(Protocol):
    """A mapped segment; see ``_segment_py.Segment`` for each method. Indexes are word numbers (``IndexError`` past
    the end); a table is ``capacity`` entries (a power of two) from word ``table`` (``ValueError`` when it does not
    fit)."""

    @property
    def fd(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def words(self) -> int: ...

    def add(self, index: int, delta: int) -> int: ...
    def get(self, index: int) -> int: ...
    def set(self, index: int, value: int) -> None: ...
    def cas(self, index: int, expected: int, desired: int) -> bool: ...
    def take(self, table: int, capacity: int, key: bytes, now: float, interval: float, burst: float) -> float: ...
    def used(self, table: int, capacity: int) -> int: ...
    def close(self) -> None: ...


_impl: Any = load("shared segment")
#: the module in use (``version -v`` and the tests report it)
IMPLEMENTATION: Final[str] = _impl.__name__
#: entries looked at per key; words per table entry (so a table of ``capacity`` entries spans ``2 * capacity`` words)
PROBES: Final[int] = _impl.PROBES
ENTRY_WORDS: Final[int] = _impl.ENTRY_WORDS


if TYPE_CHECKING:
    def create(size: int) -> Segment:
        """A new zeroed segment of ``size`` bytes (a positive multiple of 8; sparse until written)."""

    def attach(fd: int, size: int) -> Segment:
        """The segment behind an inherited ``fd``, which it owns from then on (``close`` closes it)."""

    def key_hash(key: bytes) -> int:
        """FNV-1a 64 of ``key``, 0 mapped to 1: the hash a table entry stores (as an unsigned number)."""
else:  # the twin's own functions: no wrapper call
    create = _impl.Segment.create
    attach = _impl.Segment.attach
    key_hash = _impl.key_hash
