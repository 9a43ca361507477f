"""The cold-start queue's two sides as narrow interfaces (SPEC §8.4): what a queued request is (``Waiter``) and what
the data plane may ask of the queue it waits in (``HoldQueue``).

The scale target (scaling/target.py) owns a :class:`ColdStartQueue`; the proxy's exchange (proxy/exchange.py) is the
waiter. Neither imports the other: both are typed against these protocols, so scaling/ knows nothing of client
connections.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

from ..observability.stats import Histogram


class Waiter(Protocol):
    """A request waiting in a cold-start queue for a replica."""

    def resume_held(self) -> None:
        """A replica can take the request now: dispatch it."""

    def hold_expired(self) -> None:
        """The request waited ``buffer_timeout_secs``: the failover service answers, else 504."""

    def hold_shutdown(self) -> None:
        """The shutdown drain deadline came while the request waited: 503."""


class HoldQueue(Protocol):
    """The cold-start queue of a scale target, as a request sees it."""

    def hold(self, waiter: Waiter, front: bool = False) -> bool:
        """Queue ``waiter`` (first in line with ``front``); False when the queue is full (the caller answers)."""
        ...

    def unhold(self, waiter: Waiter, reason: str = "client_gone") -> None:
        """Take ``waiter`` out of the queue: its client left, or shutdown."""


#: why a request left the queue without being dispatched (gateway_buffer_rejections_total{reason})
REJECT_REASONS: Final = ("full", "timeout", "client_gone", "shutdown")


class ColdStartQueue:
    """The FIFO of requests waiting for a replica (SPEC §8.4): bounded by ``buffer_size``, each waiter expired after
    ``buffer_timeout_secs`` by one timer for the oldest entry, waits and rejections counted for the metrics. The
    scale target decides *when* to release (capacity, readiness); this class only keeps the line."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float], size: int,
                 timeout: float) -> None:
        self.loop = loop
        self.clock = clock
        self.size = size
        self.timeout = timeout
        self.entries: deque[tuple[Waiter, float]] = deque()  # (waiting request, enqueue time)
        self.wait = Histogram()  # gateway_buffer_wait_seconds
        self.rejections: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.released = 0  # requests that waited and were dispatched (cold starts)
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def push(self, waiter: Waiter, front: bool = False) -> bool:
        """Queue ``waiter`` (first in line with ``front``); False, counted as ``full``, when there is no room."""
        if len(self.entries) >= self.size:
            self.rejections["full"] += 1
            return False
        now = self.clock()
        if front:
            self.entries.appendleft((waiter, now))
        else:
            self.entries.append((waiter, now))
        self._arm()
        return True

    def remove(self, waiter: Waiter, reason: str) -> None:
        """Take ``waiter`` out without dispatching it (its client left: ``client_gone``)."""
        for i, (w, t) in enumerate(self.entries):
            if w is waiter:
                del self.entries[i]
                self.rejections[reason] += 1
                self.wait.observe(self.clock() - t)
                self._arm()
                return

    def release(self, n: int) -> None:
        """Dispatch up to ``n`` waiters, oldest first."""
        entries = self.entries
        while entries and n > 0:
            waiter, t = entries.popleft()
            n -= 1
            self.wait.observe(self.clock() - t)
            self.released += 1
            waiter.resume_held()
        self._arm()

    def flush(self) -> None:
        """Shutdown drain deadline: every waiter gets its 503 (``hold_shutdown``)."""
        while self.entries:
            waiter, t = self.entries.popleft()
            self.rejections["shutdown"] += 1
            self.wait.observe(self.clock() - t)
            waiter.hold_shutdown()
        self._arm()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        self.close()
        if self.entries:
            deadline = self.entries[0][1] + self.timeout
            self._timer = self.loop.call_later(max(0.0, deadline - self.clock()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock()
        while self.entries and now - self.entries[0][1] >= self.timeout - 1e-3:
            waiter, t = self.entries.popleft()
            self.rejections["timeout"] += 1
            self.wait.observe(now - t)
            waiter.hold_expired()
        self._arm()
