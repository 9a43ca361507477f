"""``retry`` (SPEC §6.11): the policy; the proxy re-dispatches the request per attempt.

The middleware itself has no request or response phase of its own: the proxy asks it, after an attempt failed
before any response byte reached the client, whether and when to try again (``decide``). Backoff is
``uniform(0.5·d, 1.5·d)`` with ``d = min(retry_interval × 2^(n−1), max_interval)``; an upstream ``Retry-After`` up to
``max_retry_after`` replaces it, a longer one stops retrying.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from .chain import Middleware

#: methods that may always be repeated (RFC 9110 §9.2.2)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# how an attempt failed
CONNECT = 0  # the request never reached the backend (refused, connect timeout)
SENT = 1  # the connection failed after the request was sent, before a response head
STATUS = 2  # the backend answered a status in retry_on_status


class Retry(Middleware):
    kind = "retry"

    def __init__(self, name: str, router: str, params: Mapping[str, Any],
                 rng: Callable[[], float] = random.random) -> None:
        super().__init__(name, router)
        self.max_retries = int(params["max_retries"])
        self.interval = float(params["retry_interval_ms"]) / 1000.0
        self.max_interval = float(params["max_interval_ms"]) / 1000.0  # the validator's default: 10 × the interval
        self.on_status = frozenset(int(s) for s in params["retry_on_status"])
        self.non_idempotent = bool(params["retry_non_idempotent"])
        self.max_replay_bytes = int(params["max_replay_bytes"])
        self.max_retry_after = float(params["max_retry_after"])
        self.rng = rng
        self.retries = 0  # attempts made after a first one (gateway_retries_total)

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based)."""
        d: float = min(self.interval * 2.0 ** (attempt - 1), self.max_interval)
        return d * (0.5 + float(self.rng()))

    def decide(self, attempt: int, method: bytes, failure: int, status: int, replayable: bool,
               retry_after: float | None = None) -> float | None:
        """Delay before the next attempt after attempt number ``attempt`` (1 = the first) failed, or None.

        ``failure`` is CONNECT (the request never reached the backend: every method is retried), SENT (the
        connection failed after the request was sent, before a response head; ``status`` 502 or 504) or STATUS
        (the backend answered ``status``).
        """
        if attempt > self.max_retries:
            return None
        if failure != CONNECT:
            if failure == STATUS and status not in self.on_status:
                return None
            if not replayable:
                return None
            if method not in IDEMPOTENT and status not in (429, 503) and not self.non_idempotent:
                return None
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            return retry_after
        return self.backoff(attempt)


def parse_retry_after(value: bytes | None) -> float | None:
    """Seconds of a ``Retry-After`` header in delta-seconds form (HTTP dates are not honoured: None)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        return None
    return float(int(text))
