"""``circuit-breaker`` (SPEC §6.12): closed → open → half-open → closed, decided by a pure core on ``now``.

``Breaker`` holds the state and every transition; it never reads a clock. ``CircuitBreaker`` adapts it to the
chain: the request phase asks for admission and keeps the ticket in ``req.notes``, the response phase reports the
status of admitted requests, ``abandon`` gives a probe slot back when the client left before a response head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from .chain import Middleware, Reply, Request, Response, json_reply

CLOSED: Final = 0
OPEN: Final = 1
HALF_OPEN: Final = 2
STATE_NAMES: Final = ("closed", "open", "half-open")
_UNAVAILABLE: Final = {"error": "Service unavailable (circuit breaker open)"}


class Breaker:
    """The state machine. ``admit`` returns a ticket (``>= 0``) or ``-Retry-After`` (``<= -1``) when refused.

    A ticket is ``epoch * 2 + probe``: every transition starts a new epoch, and outcomes of requests admitted in an
    earlier epoch are ignored (a slow request admitted while closed does not count against a half-open probe run).
    """

    def __init__(self, failure_threshold: int, cooldown: float, success_threshold: int) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.success_threshold = success_threshold
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self.successes = 0  # consecutive, while half-open
        self.probes = 0  # half-open requests in flight
        self.opened_at = 0.0
        self.epoch = 0

    def poll(self, now: float) -> int:
        """The state at ``now`` (open turns half-open once the cooldown has passed)."""
        if self.state == OPEN and now - self.opened_at >= self.cooldown:
            self._to(HALF_OPEN)
        return self.state

    def admit(self, now: float) -> int:
        state = self.poll(now)
        if state == CLOSED:
            return self.epoch * 2
        if state == OPEN:
            remaining = math.ceil(self.opened_at + self.cooldown - now)
            return -remaining if remaining > 1 else -1
        if self.probes >= self.success_threshold:
            return -1
        self.probes += 1
        return self.epoch * 2 + 1

    def record(self, ticket: int, failed: bool, now: float) -> None:
        """The outcome of an admitted request: a status 500–599 is a failure, anything else a success."""
        if ticket >> 1 != self.epoch:
            return
        if self.state == CLOSED:
            if not failed:
                self.failures = 0
                return
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._open(now)
        elif self.state == HALF_OPEN:
            self.probes -= 1
            if failed:
                self._open(now)
                return
            self.successes += 1
            if self.successes >= self.success_threshold:
                self._to(CLOSED)

    def release(self, ticket: int) -> None:
        """An admitted request ended without a response head: neither success nor failure; frees a probe slot."""
        if ticket & 1 and ticket >> 1 == self.epoch and self.state == HALF_OPEN:
            self.probes -= 1

    def _open(self, now: float) -> None:
        self._to(OPEN)
        self.opened_at = now

    def _to(self, state: int) -> None:
        self.state = state
        self.epoch += 1
        self.failures = 0
        self.successes = 0
        self.probes = 0


class CircuitBreaker(Middleware):
    """``circuit-breaker``: 503 while open (or when the half-open probe slots are taken)."""

    kind = "circuit-breaker"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.breaker = Breaker(
            int(params["failure_threshold"]), float(params["cooldown_secs"]), int(params["success_threshold"])
        )

    @property
    def state(self) -> int:
        """0 closed, 1 open, 2 half-open (``gateway_circuit_breaker_state``); open→half-open is applied lazily,
        at the next request or ``poll(now)``."""
        return self.breaker.state

    def poll(self, now: float) -> int:
        """The state at ``now``, for a metrics scrape that wants the cooldown applied."""
        return self.breaker.poll(now)

    def request(self, req: Request, now: float) -> Reply | None:
        ticket = self.breaker.admit(now)
        if ticket < 0:
            return json_reply(503, _UNAVAILABLE, ((b"Retry-After", str(-ticket).encode()),))
        req.notes[self.slot] = ticket
        return None

    def response(self, req: Request, resp: Response, now: float) -> None:
        ticket = req.notes[self.slot]
        if ticket is None:
            return  # not admitted by this breaker (an earlier middleware answered)
        req.notes[self.slot] = None  # count each request once
        status = resp.status
        self.breaker.record(ticket, 500 <= status <= 599, now)

    def abandon(self, req: Request, now: float) -> None:
        ticket = req.notes[self.slot]
        if ticket is not None:
            req.notes[self.slot] = None
            self.breaker.release(ticket)
