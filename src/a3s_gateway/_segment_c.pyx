# distutils: sources = csrc/segment.c
# distutils: include_dirs = csrc
# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The shared-memory segment of the worker processes: thin Cython wrapper over ``csrc/segment.c``.

The C code does every access with atomic builtins (no lock between processes); this module maps the segment,
checks every index and table against its size (an index past the mapping raises, never faults) and converts
seconds to the nanoseconds of the C side. Twin: ``_segment_py.py`` (same API and numbers; the tests run both).
Plain Cython (not pure-Python mode) because it holds a raw mapping.
"""

import os

from libc.math cimport floor
from libc.stdint cimport int64_t, uint64_t
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap
from posix.unistd cimport close as close_fd


cdef extern from "segment.h" nogil:
    enum:
        SEG_PROBES
        SEG_ENTRY_WORDS
    uint64_t seg_hash(const void *key, size_t len)
    int64_t seg_add(int64_t *base, size_t index, int64_t delta)
    int64_t seg_get(const int64_t *base, size_t index)
    void seg_set(int64_t *base, size_t index, int64_t value)
    bint seg_cas(int64_t *base, size_t index, int64_t expected, int64_t desired)
    double seg_take(int64_t *base, size_t table, size_t capacity, const void *key, size_t keylen, int64_t now_ns,
                    int64_t interval_ns, double burst)
    size_t seg_used(const int64_t *base, size_t table, size_t capacity)


PROBES = SEG_PROBES
ENTRY_WORDS = SEG_ENTRY_WORDS
# bounds that keep every sum inside seg_take within int64 (segment.h): 2^61 ns is 73 years of uptime
cdef double MAX_NOW_NS = <double>(1 << 61)
cdef double MAX_BUCKET_NS = <double>(1 << 60)
cdef double INTERVAL_ROUNDING = 0.001


def key_hash(bytes key not None):
    """FNV-1a 64 of ``key`` (0 mapped to 1): what a table entry stores, as an unsigned number."""
    return seg_hash(<const char *>key, len(key))


def _new_fd():
    """An anonymous, sparse file: memfd on Linux, an unlinked temporary file elsewhere. Close-on-exec: workers get
    it through ``subprocess`` ``pass_fds``, and no other child (backend executors) inherits it."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("a3s-gateway")
    import tempfile
    with tempfile.TemporaryFile() as f:
        return os.dup(f.fileno())


cdef int check_size(Py_ssize_t size) except -1:
    if size <= 0 or size % 8:
        raise ValueError(f"segment size must be a positive multiple of 8 bytes, not {size}")
    return 0


cdef class Segment:
    """A mapping of ``size`` bytes shared with other processes: ``words`` signed 64-bit words (atomic) and GCRA
    rate-limit tables laid out in them. Made by :meth:`create` (new, zeroed) or :meth:`attach` (an inherited fd)."""

    cdef int64_t *base
    cdef readonly int fd
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t words

    def __cinit__(self):
        self.base = NULL
        self.fd = -1

    @staticmethod
    def create(Py_ssize_t size):
        """A new zeroed segment: memory is taken only by the pages written (the file is sparse)."""
        check_size(size)
        fd = _new_fd()
        try:
            os.ftruncate(fd, size)
            return Segment.mapped(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def attach(int fd, Py_ssize_t size):
        """The segment behind ``fd`` (inherited from the process that created it); the segment owns ``fd`` then."""
        check_size(size)
        actual = os.fstat(fd).st_size
        if actual < size:  # pages past the end of the file would fault (SIGBUS) when touched
            raise ValueError(f"segment fd {fd} holds {actual} bytes, fewer than {size}")
        return Segment.mapped(fd, size)

    @staticmethod
    cdef Segment mapped(int fd, Py_ssize_t size):
        cdef void *base = mmap(NULL, <size_t>size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if base == MAP_FAILED:
            raise OSError(f"cannot map the segment ({size} bytes of fd {fd})")
        cdef Segment seg = Segment.__new__(Segment)
        seg.base = <int64_t *>base
        seg.fd = fd
        seg.size = size
        seg.words = size // 8
        return seg

    cdef inline int check(self, Py_ssize_t index) except -1:
        if self.base == NULL:
            raise ValueError("the segment is closed")
        if index < 0 or index >= self.words:
            raise IndexError(f"segment word {index} out of range (0 to {self.words - 1})")
        return 0

    cdef inline int check_table(self, Py_ssize_t table, Py_ssize_t capacity) except -1:
        if self.base == NULL:
            raise ValueError("the segment is closed")
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"table capacity must be a power of two, not {capacity}")
        if table < 0 or table > self.words or capacity > (self.words - table) // SEG_ENTRY_WORDS:
            raise ValueError(f"table at word {table} with {capacity} entries does not fit in {self.words} words")
        return 0

    def add(self, Py_ssize_t index, int64_t delta):
        """Add ``delta`` to word ``index`` (wrapping at 64 bits); the new value."""
        self.check(index)
        return seg_add(self.base, index, delta)

    def get(self, Py_ssize_t index):
        """The value of word ``index``."""
        self.check(index)
        return seg_get(self.base, index)

    def set(self, Py_ssize_t index, int64_t value):
        """Store ``value`` in word ``index``."""
        self.check(index)
        seg_set(self.base, index, value)

    def cas(self, Py_ssize_t index, int64_t expected, int64_t desired):
        """Store ``desired`` in word ``index`` if it holds ``expected``; True when it did."""
        self.check(index)
        return seg_cas(self.base, index, expected, desired)

    def take(self, Py_ssize_t table, Py_ssize_t capacity, bytes key not None, double now, double interval,
             double burst):
        """Take one token for ``key`` from the table at word ``table``: one token every ``interval`` seconds, at most
        ``burst``; ``now`` in seconds. Returns the tokens left like ``TokenBuckets.take``: ``>= 0`` when allowed,
        ``tokens - 1`` in ``[-1, 0)`` when denied."""
        self.check_table(table, capacity)
        if not interval > 0.0 or not burst > 0.0:
            raise ValueError(f"interval and burst must be positive, not {interval} and {burst}")
        # seconds -> ns on doubles, as the pure twin does (the same operations in the same order): the clock to the
        # nearest ns; the interval down to a whole ns (see INTERVAL_ROUNDING in _segment_py)
        cdef double now_ns = now * 1e9 + 0.5
        cdef double interval_ns = interval * 1e9 + INTERVAL_ROUNDING
        if not (-MAX_NOW_NS <= now_ns <= MAX_NOW_NS and interval_ns <= MAX_BUCKET_NS):
            raise ValueError(f"clock or bucket out of range: now {now} s, interval {interval} s, burst {burst}")
        interval_ns = floor(interval_ns)
        if interval_ns < 1.0:
            interval_ns = 1.0
        if not burst * interval_ns + 0.5 <= MAX_BUCKET_NS:
            raise ValueError(f"clock or bucket out of range: now {now} s, interval {interval} s, burst {burst}")
        return seg_take(self.base, table, capacity, <const char *>key, len(key), <int64_t>floor(now_ns),
                        <int64_t>interval_ns, burst)

    def used(self, Py_ssize_t table, Py_ssize_t capacity):
        """Entries of the table that hold a key."""
        self.check_table(table, capacity)
        return seg_used(self.base, table, capacity)

    def close(self):
        """Unmap the segment and close its fd (other processes keep theirs); idempotent."""
        if self.base != NULL:
            munmap(self.base, <size_t>self.size)
            self.base = NULL
        if self.fd >= 0:
            fd = self.fd
            self.fd = -1
            os.close(fd)

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, <size_t>self.size)
        if self.fd >= 0:
            close_fd(self.fd)
