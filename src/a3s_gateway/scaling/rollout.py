"""Rollout (SPEC §8.7): a gradual, metric-driven shift of traffic between two revisions, with automatic rollback.

A :class:`Rollout` moves ``traffic_percent`` from the ``from`` revision to the ``to`` revision in steps of
``step_percent`` points, one evaluation every ``step_interval_secs``; other revisions keep their share, so
``T = from% + to%`` is constant. The data plane feeds a :class:`RolloutWindow` (attempts, errors and
time-to-first-byte samples of the ``to`` revision); at the end of each interval :meth:`Rollout.tick` takes the
window's :class:`WindowStats`, lets the pure :func:`evaluate` decide, and writes the new percents into the
:class:`~a3s_gateway.service.revision.Revision` objects that the request path reads.

Collect (:class:`RolloutWindow`) / decide (:func:`evaluate`) / actuate (:meth:`Rollout.tick`) are kept apart, and
``now`` is the event loop's monotonic clock passed in, so every decision is exact under a fake clock. The dashboard
(:meth:`Rollout.as_dict`) shows wall-clock times, converted from the monotonic ones through an injectable ``wall``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ..config.model import RolloutConfig
from ..observability.process_log import rfc3339_ms
from ..service.revision import Revision

log: Final = logging.getLogger("a3s_gateway.rollout")

RESERVOIR_CAPACITY: Final = 10_000  # TTFB samples kept per interval (SPEC §8.7)

# states
PROGRESSING: Final = "progressing"
COMPLETED: Final = "completed"
ROLLED_BACK: Final = "rolled_back"

# decisions
ADVANCE: Final = "advance"
INSUFFICIENT_DATA: Final = "insufficient_data"
ROLLBACK: Final = "rollback"
COMPLETE: Final = "complete"


# --- collect ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowStats:
    """What the ``to`` revision did during one interval: attempts, errors and the p99 time to first byte."""

    requests: int
    errors: int
    p99_ttfb_ms: float | None  # None: no TTFB sample in the interval

    @property
    def error_rate(self) -> float:
        """errors / requests; 0.0 when there was no request."""
        return self.errors / self.requests if self.requests else 0.0


def p99_nearest_rank(samples: list[float]) -> float | None:
    """The nearest-rank 99th percentile (the ⌈0.99·n⌉-th smallest sample); None for no sample."""
    n = len(samples)
    if n == 0:
        return None
    rank = (99 * n + 99) // 100  # ⌈99n/100⌉ in integers: 0.99 * n in floats can land just above an integer
    return sorted(samples)[rank - 1]


class RolloutWindow:
    """Per-interval counters of the ``to`` revision, fed by the data plane.

    Every call is O(1) and allocates nothing: the TTFB reservoir is preallocated with ``capacity`` slots and holds a
    uniform random sample of the interval's TTFBs (Algorithm R, ``rng`` injectable) once more than ``capacity`` arrive.
    """

    __slots__ = ("_capacity", "_errors", "_requests", "_rng", "_samples", "_seen")

    def __init__(self, capacity: int = RESERVOIR_CAPACITY, rng: Callable[[], float] = random.random) -> None:
        if capacity < 1:
            raise ValueError(f"reservoir capacity must be at least 1, got {capacity}")
        self._capacity = capacity
        self._rng = rng
        self._samples: list[float] = [0.0] * capacity
        self._seen = 0  # TTFB samples offered this interval (the first min(seen, capacity) slots are valid)
        self._requests = 0
        self._errors = 0

    def attempt(self, status: int, transport_failure: bool) -> None:
        """One attempt on a ``to`` backend; an error when it failed in transport or answered 5xx (timeouts are 504)."""
        self._requests += 1
        if transport_failure or 500 <= status <= 599:
            self._errors += 1

    def stream_failure(self) -> None:
        """A response that failed mid-stream: one more error, but not one more attempt (its attempt was counted)."""
        self._errors += 1

    def ttfb(self, seconds: float) -> None:
        """One time-to-first-byte sample, in seconds."""
        n = self._seen
        if n < self._capacity:
            self._samples[n] = seconds
        else:
            j = int(self._rng() * (n + 1))  # keep the (n+1)-th sample with probability capacity / (n+1)
            if j < self._capacity:
                self._samples[j] = seconds
        self._seen = n + 1

    @property
    def requests(self) -> int:
        """Attempts counted so far in this interval."""
        return self._requests

    @property
    def sampled(self) -> int:
        """TTFB samples held in the reservoir (at most ``capacity``)."""
        return min(self._seen, self._capacity)

    def drain(self) -> tuple[int, int, list[float]]:
        """A worker's report (SPEC §13.4): (attempts, errors, TTFB samples) since the last one, then reset."""
        out = (self._requests, self._errors, self._samples[: self.sampled])
        self._requests = 0
        self._errors = 0
        self._seen = 0
        return out

    def merge(self, requests: int, errors: int, samples: list[float]) -> None:
        """Add a worker's report to this interval (the supervisor's window of the rollout)."""
        self._requests += requests
        self._errors += errors
        for seconds in samples:
            self.ttfb(seconds)

    def take(self) -> WindowStats:
        """Snapshot this interval and reset the counters for the next one."""
        p99 = p99_nearest_rank(self._samples[: self.sampled])
        stats = WindowStats(self._requests, self._errors, None if p99 is None else round(p99 * 1000.0, 3))
        self._requests = 0
        self._errors = 0
        self._seen = 0
        return stats


# --- decide ----------------------------------------------------------------------------------------------------


def evaluate(cfg: RolloutConfig, from_percent: int, to_percent: int, stats: WindowStats) -> tuple[str, int, int]:
    """Pure: ``(decision, new_from_percent, new_to_percent)``; decision in advance|insufficient_data|rollback|complete.

    The first matching rule of SPEC §8.7 wins: ``to`` at 0 % advances without data; fewer than ``min_requests``
    attempts change nothing; an error rate or p99 TTFB above its threshold rolls back (``to`` = 0, ``from`` = T);
    otherwise ``min(step_percent, from)`` points move to ``to``, and ``complete`` when ``from`` reaches 0.
    """
    if to_percent > 0:
        if stats.requests < cfg.min_requests:
            return INSUFFICIENT_DATA, from_percent, to_percent
        p99 = stats.p99_ttfb_ms
        if stats.error_rate > cfg.error_rate_threshold or (p99 is not None and p99 > cfg.latency_threshold_ms):
            return ROLLBACK, from_percent + to_percent, 0
    # at 0 % the shift is also capped by `from`, so `to` never exceeds T
    shift = min(cfg.step_percent, from_percent)
    new_from, new_to = from_percent - shift, to_percent + shift
    return (COMPLETE if new_from == 0 else ADVANCE), new_from, new_to


# --- actuate ---------------------------------------------------------------------------------------------------


def _find(service: str, revisions: list[Revision], name: str, role: str) -> Revision:
    for revision in revisions:
        if revision.name == name:
            return revision
    known = ", ".join(r.name for r in revisions) or "none"
    raise ValueError(f'service "{service}": rollout.{role} "{name}" is not one of its revisions ({known})')


class Rollout:
    """The rollout state machine of one service: ``progressing`` → ``completed`` | ``rolled_back`` (both terminal).

    Public state: ``state``; ``step`` = the number of evaluations that moved traffic to ``to`` so far (decisions
    ``advance`` and ``complete``); ``window`` (fed by the data plane); ``next_at`` (monotonic time of the next
    evaluation); ``last`` (the last evaluation, its ``timestamp`` in monotonic seconds, or None before the first).

    A rollout whose ``from`` revision is at 0 % when it starts (including T = 0) has nothing to move: it starts
    ``completed``.
    """

    def __init__(
        self,
        service: str,
        cfg: RolloutConfig,
        revisions: list[Revision],
        now: float,
        *,
        wall: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.service = service
        self.cfg = cfg
        self._wall = wall
        self._from = _find(service, revisions, cfg.from_, "from")
        self._to = _find(service, revisions, cfg.to, "to")
        self._from_percent = self._from.percent
        self._to_percent = self._to.percent
        self.step = 0
        self.window = RolloutWindow(rng=rng)
        self.next_at = now + cfg.step_interval_secs
        self.last: dict[str, Any] | None = None
        self.state = PROGRESSING if self._from_percent > 0 else COMPLETED
        log.info(
            "rollout of service %s %s: %s %d%%, %s %d%%, step %d%% every %gs",
            service, "started" if self.state == PROGRESSING else "completed at start (nothing to move)",
            cfg.from_, self._from_percent, cfg.to, self._to_percent, cfg.step_percent, cfg.step_interval_secs,
        )

    @property
    def from_percent(self) -> int:
        """Current share of the ``from`` revision."""
        return self._from_percent

    @property
    def to_percent(self) -> int:
        """Current share of the ``to`` revision."""
        return self._to_percent

    def due(self, now: float) -> bool:
        """Whether an evaluation is due: progressing and the interval has ended."""
        return self.state == PROGRESSING and now >= self.next_at

    def tick(self, now: float) -> str | None:
        """Evaluate the interval that just ended and apply the decision; None when not due or terminal."""
        if not self.due(now):
            return None
        stats = self.window.take()
        decision, new_from, new_to = evaluate(self.cfg, self._from_percent, self._to_percent, stats)
        old_from, old_to = self._from_percent, self._to_percent
        self._set(new_from, new_to)
        if decision == ADVANCE or decision == COMPLETE:
            self.step += 1
        if decision == COMPLETE:
            self.state = COMPLETED
        elif decision == ROLLBACK:
            self.state = ROLLED_BACK
        interval = self.cfg.step_interval_secs
        self.next_at += interval
        if self.next_at <= now:  # a late tick: keep the phase, skip the missed slots
            self.next_at += ((now - self.next_at) // interval + 1) * interval
        self.last = {
            "timestamp": now,
            "requests": stats.requests,
            "error_rate": stats.error_rate,
            "p99_ttfb_ms": stats.p99_ttfb_ms,
            "decision": decision,
        }
        log.info(
            "rollout of service %s: %s %d%% -> %d%%, %s %d%% -> %d%%: %s "
            "(requests %d, errors %d, error rate %.4f, p99 ttfb %s ms; step %d, state %s)",
            self.service, self.cfg.from_, old_from, new_from, self.cfg.to, old_to, new_to, decision,
            stats.requests, stats.errors, stats.error_rate,
            "none" if stats.p99_ttfb_ms is None else f"{stats.p99_ttfb_ms:g}", self.step, self.state,
        )
        return decision

    def _set(self, from_percent: int, to_percent: int) -> None:
        self._from_percent = from_percent
        self._to_percent = to_percent
        self._from.percent = from_percent
        self._to.percent = to_percent

    def adopt(self, revisions: list[Revision]) -> None:
        """A reload kept this rollout: bind the new Revision objects and give them the current split."""
        from_revision = _find(self.service, revisions, self.cfg.from_, "from")
        to_revision = _find(self.service, revisions, self.cfg.to, "to")
        self._from, self._to = from_revision, to_revision
        self._set(self._from_percent, self._to_percent)

    def as_dict(self, now: float) -> dict[str, Any]:
        """The dashboard view (SPEC §11.1 ``services[i].rollout``), times in wall-clock RFC 3339 UTC."""
        offset = self._wall() - now  # wall time of monotonic time m = m + offset
        last = self.last
        return {
            "from": self.cfg.from_,
            "to": self.cfg.to,
            "state": self.state,
            "from_percent": self._from_percent,
            "to_percent": self._to_percent,
            "step": self.step,
            "next_evaluation": rfc3339_ms(self.next_at + offset) if self.state == PROGRESSING else None,
            "last_evaluation": None if last is None else {**last, "timestamp": rfc3339_ms(last["timestamp"] + offset)},
        }

    def __repr__(self) -> str:
        return (
            f"Rollout({self.service!r}, {self.cfg.from_}={self._from_percent}%, {self.cfg.to}={self._to_percent}%, "
            f"state={self.state}, step={self.step})"
        )
