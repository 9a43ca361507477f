"""The autoscaler of a scale target (SPEC §8.2, after the Knative KPA): samples in, desired replica count out.

Pure: no asyncio, no I/O; time is always the parameter ``now`` (seconds, the event loop's monotonic clock), so
every rule is exact under a fake clock. The caller samples ``in-flight + queued`` every second
(:meth:`Autoscaler.record`), ticks every two seconds (:meth:`Autoscaler.decide`) and actuates the executor when the
desired count changes. The rules after the averages are the module function :func:`desired_replicas`; the state
they need across ticks (the sample window, panic mode, the last time the target was active) lives in
:class:`Autoscaler`. "No samples yet" is ``None``, never an exception.

Written for mypyc (not compiled for now): plain classes with typed attributes, no closures, ``Final`` constants.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final

from ..config.model import ScalingConfig

__all__ = ["Autoscaler", "Decision", "SampleWindow", "desired_replicas", "target_concurrency"]

# Float tolerance: means of integer samples divided by τ give 3.0000000000000004 for 2.1 / 0.7, which must be
# 3 replicas, not 4 (and 2.8 / 0.7 = 3.9999999999999996 must reach a panic threshold of 4).
_EPS: Final = 1e-9
DEFAULT_CONCURRENCY_TARGET: Final = 100.0  # τ basis when container_concurrency = 0 (no per-replica limit)


def _ceil(value: float) -> int:
    """``ceil`` that ignores float noise below ``_EPS``."""
    return math.ceil(value - _EPS)


def _floor(value: float) -> int:
    """``floor`` that ignores float noise below ``_EPS``."""
    return math.floor(value + _EPS)


def target_concurrency(cfg: ScalingConfig) -> float:
    """τ: the in-flight requests one replica should carry (``container_concurrency`` or 100, × utilization)."""
    basis = float(cfg.container_concurrency) if cfg.container_concurrency > 0 else DEFAULT_CONCURRENCY_TARGET
    return basis * cfg.target_utilization


class SampleWindow:
    """Time-stamped samples kept for ``horizon`` seconds; mean over the last ``span`` seconds.

    Samples are timestamped rather than bucketed by index because the sampler may run late or skip a second; two
    parallel deques (times, values) avoid a tuple per sample. At one sample a second the window holds ``horizon``
    entries at most.
    """

    def __init__(self, horizon: float) -> None:
        self.horizon: float = horizon
        self._times: deque[float] = deque()
        self._values: deque[float] = deque()

    def add(self, now: float, value: float) -> None:
        """Append one sample taken at ``now`` and drop those older than ``horizon`` (``t <= now - horizon``)."""
        self._times.append(now)
        self._values.append(value)
        self.prune(now)

    def prune(self, now: float) -> None:
        """Drop the samples that fell out of the window at ``now``."""
        times = self._times
        values = self._values
        cutoff = now - self.horizon
        while times and times[0] <= cutoff:
            times.popleft()
            values.popleft()

    def mean(self, now: float, span: float) -> float | None:
        """Mean of the samples with ``t > now - span`` (all of them when fewer were taken); ``None`` when none."""
        cutoff = now - span
        total = 0.0
        count = 0
        for t, value in zip(reversed(self._times), reversed(self._values), strict=True):
            if t <= cutoff:
                break  # times are ascending: everything before this one is older still
            total += value
            count += 1
        if count == 0:
            return None
        return total / count

    def __len__(self) -> int:
        return len(self._times)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one tick: the desired count, the panic flag, the averages and a short reason for logs."""

    desired: int
    panic: bool
    stable_avg: float  # S
    panic_avg: float  # P
    reason: str  # e.g. "stable 3.2/0.7 -> 5", "panic 14.0/0.7 -> 20; max_replicas -> 10", "…; activation -> 1"


def _decide(
    cfg: ScalingConfig,
    stable_avg: float | None,
    panic_avg: float | None,
    ready: int,
    previous: int,
    panic: bool,
    queued: int,
    idle_for: float,
) -> tuple[int, str]:
    """:func:`desired_replicas` with the reason: the base rule, then each later rule that changed the count."""
    tau = target_concurrency(cfg)
    s = stable_avg if stable_avg is not None else 0.0
    p = panic_avg if panic_avg is not None else 0.0
    if panic:
        n = max(_ceil(p / tau), previous)  # never scale down in panic
        reason = f"panic {p:.1f}/{tau:g} -> {n}"
    else:
        n = _ceil(s / tau)
        reason = f"stable {s:.1f}/{tau:g} -> {n}"
    if n < 0:
        n = 0  # defensive: a negative sample must not ask for negative replicas
    if ready > 0:
        up = _ceil(cfg.max_scale_up_rate * ready)
        down = _floor(ready / cfg.max_scale_down_rate)
        if n > up:
            n = up
            reason += f"; scale-up rate -> {n}"
        elif n < down:
            n = down
            reason += f"; scale-down rate -> {n}"
    if n > cfg.max_replicas:
        n = cfg.max_replicas
        reason += f"; max_replicas -> {n}"
    elif n < cfg.min_replicas:
        n = cfg.min_replicas
        reason += f"; min_replicas -> {n}"
    if n == 0 and queued > 0:
        n = 1
        reason += "; activation -> 1"
    # The delay keeps the last replica; a target already at zero (nothing desired, nothing ready) has none to keep,
    # so it stays at zero rather than starting a replica for no traffic (Knative: an inactive revision stays at 0).
    if n == 0 and idle_for < cfg.scale_down_delay_secs and (previous > 0 or ready > 0):
        n = 1
        reason += "; scale-to-zero delay -> 1"
    return n, reason


def desired_replicas(
    cfg: ScalingConfig,
    stable_avg: float | None,
    panic_avg: float | None,
    ready: int,
    previous: int,
    panic: bool,
    queued: int,
    idle_for: float,
) -> int:
    """The desired replica count of one tick (SPEC §8.2, from "Candidates" to "Scale to zero").

    ``stable_avg`` / ``panic_avg`` are S and P (``None``: no samples, counted as 0); ``ready`` is R; ``previous`` the
    desired count of the last tick; ``panic`` the panic state after this tick's update; ``queued`` the requests
    waiting now; ``idle_for`` the seconds since a sample last saw a request in flight or queued.
    """
    return _decide(cfg, stable_avg, panic_avg, ready, previous, panic, queued, idle_for)[0]


class Autoscaler:
    """The KPA state of one scale target: the sample window, panic mode and the desired count."""

    def __init__(self, cfg: ScalingConfig, now: float) -> None:
        self.cfg: ScalingConfig = cfg
        self.desired: int = cfg.min_replicas
        self.panic: bool = False
        self.panic_since: float = 0.0  # when panic mode was entered (meaningful while ``panic``)
        self.panic_last_true: float = 0.0  # last tick at which the panic condition held (while ``panic``)
        self.last_active: float = now  # before any traffic, idle time counts from creation
        self.window: SampleWindow = SampleWindow(cfg.stable_window)
        self._tau: float = target_concurrency(cfg)

    @property
    def tau(self) -> float:
        """τ, the target in-flight requests per replica."""
        return self._tau

    def record(self, now: float, in_flight: int, queued: int) -> None:
        """One sample ``c = in_flight + queued`` (every second); a non-zero sample marks the target active."""
        c = in_flight + queued
        self.window.add(now, float(c))
        if c > 0:
            self.last_active = now

    def decide(self, now: float, ready: int, queued: int) -> Decision:
        """One tick (every two seconds): update panic mode and ``desired`` from the samples and ``ready`` (R)."""
        cfg = self.cfg
        tau = self._tau
        self.window.prune(now)
        stable_avg = self.window.mean(now, cfg.stable_window)
        panic_avg = self.window.mean(now, cfg.panic_window)
        if queued > 0:
            self.last_active = now  # requests waiting right now: the target is not idle, whatever the last sample
        p = panic_avg if panic_avg is not None else 0.0
        if p / tau + _EPS >= cfg.panic_threshold * max(ready, 1):
            if not self.panic:
                self.panic = True
                self.panic_since = now
            self.panic_last_true = now
        elif self.panic and now - self.panic_last_true >= cfg.stable_window:
            self.panic = False
        desired, reason = _decide(
            cfg, stable_avg, panic_avg, ready, self.desired, self.panic, queued, now - self.last_active
        )
        self.desired = desired
        return Decision(
            desired,
            self.panic,
            stable_avg if stable_avg is not None else 0.0,
            p,
            reason,
        )
