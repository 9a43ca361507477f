"""retry policy (SPEC §6.11): which failures are retried, backoff bounds, Retry-After."""

from __future__ import annotations

from types import MappingProxyType

import pytest
from mw_support import params as validated

from a3s_gateway.middleware.retry import CONNECT, SENT, STATUS, Retry, parse_retry_after


def policy(rng: float = 0.5, **params: object) -> Retry:
    base = {**validated("retry"), **params}  # the defaults: 3 retries, 100 ms, at most 1 s (10 × 100 ms), ...
    return Retry("retry", "r", MappingProxyType(base), rng=lambda: rng)


@pytest.mark.parametrize(
    ("method", "failure", "status", "replayable", "retried"),
    [
        (b"POST", CONNECT, 502, False, True),  # never reached the backend: every method, any body
        (b"GET", SENT, 502, True, True),
        (b"GET", SENT, 502, False, False),  # body not replayable
        (b"POST", SENT, 502, True, False),  # may have been processed
        (b"GET", STATUS, 503, True, True),
        (b"POST", STATUS, 503, True, True),  # 503/429: declined without processing
        (b"POST", STATUS, 502, True, False),
        (b"GET", STATUS, 500, True, False),  # not in retry_on_status
        (b"PUT", STATUS, 504, True, True),
        (b"DELETE", SENT, 504, True, True),
    ],
)
def test_what_is_retried(method: bytes, failure: int, status: int, replayable: bool, retried: bool) -> None:
    assert (policy().decide(1, method, failure, status, replayable) is not None) == retried


def test_non_idempotent_flag_and_attempt_limit() -> None:
    assert policy(retry_non_idempotent=True).decide(1, b"POST", STATUS, 502, True) is not None
    p = policy(max_retries=2)
    assert p.decide(2, b"GET", CONNECT, 502, True) is not None and p.decide(3, b"GET", CONNECT, 502, True) is None


@pytest.mark.parametrize(("rng", "attempt", "expected"), [
    (0.0, 1, 0.05), (1.0, 1, 0.15), (0.5, 2, 0.2), (0.5, 3, 0.4), (0.5, 10, 1.0),  # capped at 10 × interval
])
def test_backoff_is_jittered_exponential_and_capped(rng: float, attempt: int, expected: float) -> None:
    assert policy(rng).backoff(attempt) == pytest.approx(expected)
    assert policy(0.5, max_interval_ms=250.0).backoff(5) == pytest.approx(0.25)


def test_retry_after_replaces_backoff_or_stops() -> None:
    p = policy(max_retry_after=5.0)
    assert p.decide(1, b"GET", STATUS, 503, True, retry_after=2.0) == 2.0
    assert p.decide(1, b"GET", STATUS, 503, True, retry_after=30.0) is None
    assert parse_retry_after(b" 7 ") == 7.0 and parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert parse_retry_after(None) is None
