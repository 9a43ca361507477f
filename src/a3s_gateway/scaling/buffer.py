"""The cold-start queue's two sides as narrow interfaces (SPEC §8.4): what a queued request is (``Waiter``) and what
the data plane may ask of the queue it waits in (``HoldQueue``).

The scale target (scaling/target.py) owns the queue; the proxy's exchange (proxy/exchange.py) is the waiter. Neither
imports the other: both are typed against these protocols, so scaling/ knows nothing of client connections.
"""

from __future__ import annotations

from typing import Protocol


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
