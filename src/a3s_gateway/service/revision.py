"""Revisions (SPEC §8.6): a service split across revision pools by traffic percentage.

Each revision is a pool with its own servers, strategy and health. ``RevisionSplit`` stands where a service's
balancer stands: ``pick()`` chooses a revision by smooth weighted round-robin over ``traffic_percent`` (a rollout
may change the weights, §8.7), then that revision's balancer picks a backend. A revision without an eligible
backend gives way to the others in proportion to their weights; revisions at 0 % get no traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .balancer import Backend, Balancer


class Revision:
    """One revision pool."""

    def __init__(self, name: str, percent: int, balancer: Balancer) -> None:
        self.name = name
        self.percent = percent  # current traffic share (rollout changes it)
        self.balancer = balancer
        self.current = 0  # smooth weighted round-robin state
        self.target: Any = None  # its ScaleTarget when the service scales (§8.1: one target per revision)

    @property
    def backends(self) -> list[Backend]:
        return self.balancer.backends


class RevisionSplit:
    """The dispatcher of a service with revisions (duck-types ``Balancer``: ``pick`` and ``backends``)."""

    def __init__(self, revisions: list[Revision]) -> None:
        self.revisions = revisions
        self.held: Any = None  # the scale target the last failed pick should queue on (§8.6), else None

    def _choose(self, exclude: list[Revision]) -> Revision | None:
        """Smooth weighted round-robin over the revisions not in ``exclude`` with a share above 0 %."""
        total = 0
        best: Revision | None = None
        for r in self.revisions:
            if r.percent <= 0 or r in exclude:
                continue
            r.current += r.percent
            total += r.percent
            if best is None or r.current > best.current:
                best = r
        if best is not None:
            best.current -= total
        return best

    @property
    def backends(self) -> list[Backend]:
        return [b for r in self.revisions for b in r.backends]

    def pick(self) -> Backend | None:
        return self.pick_keyed(-1)

    def pick_keyed(self, key: int) -> Backend | None:
        """As :meth:`pick`, with a prompt-prefix hash for an ``inference`` pool (SPEC §16.5; -1: none)."""
        self.held = None
        tried: list[Revision] = []
        while len(tried) < len(self.revisions):
            revision = self._choose(tried)
            if revision is None:
                return None
            backend = revision.balancer.pick() if key < 0 else revision.balancer.pick_keyed(key)
            if backend is not None:
                return backend
            target = revision.target
            if target is not None and target.buffered:
                self.held = target  # a scaled revision with a buffer: the request waits for it (§8.6)
                return None
            tried.append(revision)  # no eligible backend: another revision, in proportion to its weight
        return None

    def hold_target(self) -> Any:
        """The scale target the request that just found no backend queues on (None: no buffered revision)."""
        return self.held

    def eligible_count(self) -> int:
        return sum(1 for b in self.backends if b.eligible)
