"""``circuit-breaker`` (SPEC §6.12): closed → open → half-open → closed and reopen, on a fake clock."""

from __future__ import annotations

import pytest
from mw_support import body, drive, params, request, response

from a3s_gateway.middleware.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from a3s_gateway.middleware.chain import JSON, Chain, Request
from a3s_gateway.middleware.ratelimit import RateLimit

UNAVAILABLE = {"error": "Service unavailable (circuit breaker open)"}


def breaker(hcl: str = "failure_threshold = 3\ncooldown_secs = 10\nsuccess_threshold = 2") -> CircuitBreaker:
    return CircuitBreaker("m", "r", params("circuit-breaker", hcl))


def admit(cb: CircuitBreaker, now: float) -> Request:
    req = request()
    assert cb.request(req, now) is None
    return req


def finish(cb: CircuitBreaker, req: Request, status: int, now: float) -> None:
    cb.response(req, response(status), now)


def call(cb: CircuitBreaker, status: int, now: float) -> None:
    finish(cb, admit(cb, now), status, now)


def refused(cb: CircuitBreaker, now: float) -> bytes:
    """The request is refused: the Retry-After value of the exact 503 reply."""
    reply = cb.request(request(), now)
    assert reply is not None and reply.status == 503
    assert body(reply) == UNAVAILABLE
    assert reply.headers[0] == (b"Content-Type", JSON)
    assert len(reply.headers) == 2 and reply.headers[1][0] == b"Retry-After"
    return reply.headers[1][1]


def open_breaker(cb: CircuitBreaker, now: float) -> None:
    for _ in range(cb.breaker.failure_threshold):
        call(cb, 500, now)
    assert cb.state == OPEN


def test_defaults() -> None:
    cb = CircuitBreaker("m", "r", params("circuit-breaker"))
    b = cb.breaker
    assert (b.failure_threshold, b.cooldown, b.success_threshold) == (5, 30.0, 1)
    assert cb.state == CLOSED == 0 and OPEN == 1 and HALF_OPEN == 2


def test_consecutive_failures_open_and_a_success_resets_the_count() -> None:
    cb = breaker()
    call(cb, 500, 0.0)
    call(cb, 503, 0.0)
    call(cb, 200, 0.0)  # resets
    call(cb, 502, 0.0)
    call(cb, 599, 0.0)
    assert cb.state == CLOSED
    call(cb, 504, 1.0)
    assert cb.state == OPEN


@pytest.mark.parametrize(
    ("status", "failure"),
    [(200, False), (404, False), (429, False), (499, False), (500, True), (502, True), (599, True)],
)
def test_what_counts_as_a_failure(status: int, failure: bool) -> None:
    cb = breaker("failure_threshold = 1")
    call(cb, status, 0.0)
    assert cb.state == (OPEN if failure else CLOSED)


def test_open_answers_503_with_retry_after_of_the_remaining_cooldown() -> None:
    cb = breaker()
    open_breaker(cb, 100.0)
    assert refused(cb, 100.0) == b"10"
    assert refused(cb, 100.5) == b"10"  # ceil(9.5)
    assert refused(cb, 105.0) == b"5"
    assert refused(cb, 109.2) == b"1"
    assert refused(cb, 109.999) == b"1"  # never 0
    assert cb.state == OPEN
    admit(cb, 110.0)  # cooldown over: half-open probe
    assert cb.state == HALF_OPEN


def test_half_open_admits_success_threshold_concurrent_probes_then_closes() -> None:
    cb = breaker()
    open_breaker(cb, 0.0)
    p1 = admit(cb, 10.0)
    p2 = admit(cb, 10.0)
    assert refused(cb, 10.0) == b"1"  # both probe slots taken
    finish(cb, p1, 200, 11.0)
    assert cb.state == HALF_OPEN  # one success of two
    p3 = admit(cb, 11.0)  # the freed slot
    assert refused(cb, 11.0) == b"1"
    finish(cb, p2, 204, 12.0)
    assert cb.state == CLOSED
    # a probe still in flight when the breaker closed does not count in the new state
    finish(cb, p3, 500, 12.0)
    assert cb.breaker.failures == 0
    call(cb, 200, 12.0)
    assert cb.state == CLOSED


def test_a_half_open_failure_reopens_and_restarts_the_cooldown() -> None:
    cb = breaker()
    open_breaker(cb, 0.0)
    p1 = admit(cb, 10.0)
    p2 = admit(cb, 10.0)
    finish(cb, p1, 502, 14.0)
    assert cb.state == OPEN
    assert refused(cb, 14.0) == b"10"  # restarted at the failure
    assert refused(cb, 23.5) == b"1"
    finish(cb, p2, 200, 15.0)  # a probe of the previous half-open run: ignored
    assert cb.state == OPEN
    admit(cb, 24.0)
    assert cb.state == HALF_OPEN


def test_success_threshold_one_closes_after_one_probe() -> None:
    cb = breaker("failure_threshold = 1\ncooldown_secs = 1")
    call(cb, 500, 0.0)
    assert refused(cb, 0.5) == b"1"
    p = admit(cb, 1.0)
    assert refused(cb, 1.0) == b"1"  # one probe at a time
    finish(cb, p, 200, 1.2)
    assert cb.state == CLOSED
    admit(cb, 1.2)
    admit(cb, 1.2)


def test_abandon_frees_the_probe_slot_and_counts_nothing() -> None:
    cb = breaker("failure_threshold = 1\ncooldown_secs = 5\nsuccess_threshold = 1")
    call(cb, 500, 0.0)
    p = admit(cb, 5.0)
    assert refused(cb, 5.0) == b"1"
    cb.abandon(p, 6.0)
    assert cb.state == HALF_OPEN
    cb.abandon(p, 6.0)  # twice: still one slot
    assert cb.breaker.probes == 0
    q = admit(cb, 6.0)
    assert refused(cb, 6.0) == b"1"
    finish(cb, q, 200, 7.0)
    assert cb.state == CLOSED


def test_abandon_while_closed_is_neither_success_nor_failure() -> None:
    cb = breaker()
    call(cb, 500, 0.0)
    call(cb, 500, 0.0)
    cb.abandon(admit(cb, 0.0), 0.0)
    assert cb.breaker.failures == 2
    call(cb, 500, 0.0)
    assert cb.state == OPEN


def test_requests_admitted_while_closed_do_not_count_after_a_transition() -> None:
    cb = breaker("failure_threshold = 1\ncooldown_secs = 5\nsuccess_threshold = 1")
    slow = admit(cb, 0.0)
    call(cb, 500, 0.0)
    assert cb.state == OPEN
    probe = admit(cb, 5.0)
    finish(cb, slow, 500, 5.5)  # admitted before the breaker opened: ignored
    assert cb.state == HALF_OPEN
    finish(cb, probe, 200, 6.0)
    assert cb.state == CLOSED


def test_each_request_is_counted_once() -> None:
    cb = breaker("failure_threshold = 2")
    req = admit(cb, 0.0)
    finish(cb, req, 500, 0.0)
    finish(cb, req, 500, 0.0)
    assert cb.state == CLOSED


def test_not_admitted_requests_are_not_counted() -> None:
    cb = breaker("failure_threshold = 1")
    cb.response(request(), response(500), 0.0)  # an earlier middleware answered: this breaker never saw it
    assert cb.state == CLOSED


def test_poll_applies_the_cooldown_for_the_state_gauge() -> None:
    cb = breaker()
    open_breaker(cb, 0.0)
    assert cb.poll(9.9) == OPEN
    assert cb.poll(10.0) == HALF_OPEN
    assert cb.state == HALF_OPEN


def test_a_later_middleware_reply_counts_as_a_success() -> None:
    cb = breaker("failure_threshold = 2")
    rl = RateLimit("rl", "r", params("rate-limit", "rate = 1\nburst = 1"))
    chain = Chain([cb, rl])
    assert drive(chain, request(slots=2), 0.0, response(500)).status == 500
    assert drive(chain, request(slots=2), 0.0).status == 429  # success: resets the count
    assert drive(chain, request(slots=2), 1.0, response(500)).status == 500
    assert cb.state == CLOSED
    assert drive(chain, request(slots=2), 2.0, response(503, local=True)).status == 503
    assert cb.state == OPEN
    resp = drive(chain, request(slots=2), 2.0)
    assert resp.status == 503
    assert (b"Retry-After", b"30") in resp.headers
