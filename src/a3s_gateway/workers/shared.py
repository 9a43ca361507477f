"""What lives in the shared-memory segment of a supervisor and its workers, and where (SPEC §13.4).

The supervisor allocates; every generation message and sync carries the layout; each process points its live
objects at it (:func:`attach`):

- per (service, backend URL) a group of ``stride`` words: word 0 is the instance's in-flight count (what
  ``least-connections``, ``p2c``, ``container_concurrency``, the autoscaler and the admin API read), word
  ``1 + i`` worker ``i``'s part of it — when a worker dies its part is taken back out (:meth:`Layout.forget_worker`),
  so the count never keeps requests of a process that is gone;
- per ``rate-limit`` instance (router, middleware, configuration) a GCRA table of ``max_keys`` entries rounded up to
  a power of two: its buckets, exact for the whole instance;
- per local ``token-limit`` instance a table of the same shape (``SHARED_KEYS`` entries): its token budgets
  (middleware/tokenlimit.py ``SharedBudgets``).

Slots and tables are never reused: an identity that comes back gets its old place, so requests that began under an
older generation still count where they started. Pages are touched only when used (the segment is sparse).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from ..middleware.tokenlimit import SHARED_KEYS
from ..runtime import Runtime
from ..segment import ENTRY_WORDS, PROBES, Segment

log: Final = logging.getLogger("a3s_gateway.supervisor")

SEGMENT_BYTES: Final = 512 * 1024 * 1024  # address space, not memory: pages are backed when first written
COUNTER_BASE: Final = 8  # words before the first counter group (unused header)
MAX_COUNTER_GROUPS: Final = 65536


def _shares_table(mw: Any) -> bool:
    """A middleware whose state lives in a table of the segment: rate-limit, and token-limit without Redis."""
    return bool(mw.kind == "rate-limit" or (mw.kind == "token-limit" and not mw.redis_url))


def table_key(router: str, name: str, cfg: Any) -> str:
    """The identity a rate-limit table is kept by: the instance's router, name and configuration."""
    return repr((router, name, cfg))


class Layout:
    """The supervisor's allocation of the segment."""

    def __init__(self, workers: int, words: int) -> None:
        self.stride = workers + 2  # total, one word per worker, one for the supervisor's own objects
        self.supervisor = workers  # the supervisor's index among the parts
        self.words = words
        self.slots: dict[tuple[str, str], int] = {}
        self.tables: dict[str, tuple[int, int]] = {}
        self._next_slot = COUNTER_BASE
        self._counters_end = COUNTER_BASE + MAX_COUNTER_GROUPS * self.stride
        self._next_table = self._counters_end
        self._full_warned = False

    def allocate(self, runtime: Runtime) -> bool:
        """Give every backend and rate-limit instance of ``runtime`` its place; True when something was added."""
        added = False
        for name, svc in runtime.services.items():
            for backend in svc.backends:
                key = (name, backend.url)
                if key not in self.slots and self._next_slot + self.stride <= self._counters_end:
                    self.slots[key] = self._next_slot
                    self._next_slot += self.stride
                    added = True
                elif key not in self.slots:
                    self._warn_full(f"backend {backend.url} of service {name}")
        for (router, name), (cfg, mw) in runtime.middlewares.items():
            if not _shares_table(mw):
                continue
            ident = table_key(router, name, cfg)
            if ident in self.tables:
                continue
            max_keys = int(cfg.params.get("max_keys", SHARED_KEYS))
            capacity = max(PROBES, 1 << max(0, (max_keys - 1).bit_length()))
            if self._next_table + capacity * ENTRY_WORDS > self.words:
                self._warn_full(f"{mw.kind} {name} of router {router}")
                continue
            self.tables[ident] = (self._next_table, capacity)
            self._next_table += capacity * ENTRY_WORDS
            added = True
        return added

    def _warn_full(self, what: str) -> None:
        if not self._full_warned:
            self._full_warned = True
            log.warning("shared segment full: %s counts per worker process (not across the instance)", what)

    def message(self) -> dict[str, Any]:
        return {"stride": self.stride, "slots": dict(self.slots), "tables": dict(self.tables)}

    def forget_worker(self, segment: Segment, index: int) -> None:
        """Take a dead worker's in-flight counts out of the totals."""
        for slot in self.slots.values():
            own = slot + 1 + index
            left = segment.get(own)
            if left:
                segment.add(slot, -left)
                segment.set(own, 0)


def attach(runtime: Runtime, segment: Segment, layout: dict[str, Any], index: int) -> None:
    """Point ``runtime``'s backends and rate limits at their places (``index``: this process's part)."""
    slots: dict[tuple[str, str], int] = layout.get("slots", {})
    for name, svc in runtime.services.items():
        for backend in svc.backends:
            slot = slots.get((name, backend.url))
            if slot is not None:
                backend.share(segment, slot, slot + 1 + index)
    tables: dict[str, tuple[int, int]] = layout.get("tables", {})
    for (router, name), (cfg, mw) in runtime.middlewares.items():
        if _shares_table(mw):
            table = tables.get(table_key(router, name, cfg))
            if table is not None:
                mw.share(segment, table[0], table[1])  # type: ignore[attr-defined]
