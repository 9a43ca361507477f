"""``rate-limit`` (SPEC §6.5): token-bucket math, RateLimit-* headers, keys and the LRU bound, on a fake clock."""

from __future__ import annotations

import pytest
from mw_support import body, params, request, response

from a3s_gateway.middleware.chain import JSON, Reply
from a3s_gateway.middleware.ratelimit import RateLimit, TokenBuckets, ceil_secs


def limiter(body_hcl: str) -> RateLimit:
    return RateLimit("m", "r", params("rate-limit", body_hcl))


def allowed_headers(mw: RateLimit, now: float, **kw: object) -> list[tuple[bytes, bytes]]:
    """Send one request that must be allowed; the RateLimit-* headers its response gets."""
    req = request(**kw)  # type: ignore[arg-type]
    assert mw.request(req, now) is None
    resp = response()
    mw.response(req, resp, now)
    return resp.headers


def denied(mw: RateLimit, now: float, **kw: object) -> Reply:
    reply = mw.request(request(**kw), now)  # type: ignore[arg-type]
    assert reply is not None
    return reply


def hdrs(limit: int, remaining: int, reset: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"RateLimit-Limit", str(limit).encode()),
        (b"RateLimit-Remaining", str(remaining).encode()),
        (b"RateLimit-Reset", str(reset).encode()),
    ]


def test_burst_defaults_to_ceil_rate_and_a_new_bucket_is_full() -> None:
    mw = limiter("rate = 2.5")
    assert mw.buckets.burst == 3
    # refill 2.5/s; t after each take = 2, 1, 0 -> Reset = ceil((3 - t) / 2.5)
    assert allowed_headers(mw, 0.0) == hdrs(3, 2, 1)
    assert allowed_headers(mw, 0.0) == hdrs(3, 1, 1)
    assert allowed_headers(mw, 0.0) == hdrs(3, 0, 2)
    reply = denied(mw, 0.0)
    assert reply.status == 429


def test_denied_reply_is_exact() -> None:
    mw = limiter('rate = 1\nperiod = "10s"')  # refill 0.1 token/s, burst 1
    assert allowed_headers(mw, 0.0) == hdrs(1, 0, 10)
    reply = denied(mw, 3.0)  # t = 0.3
    assert reply.status == 429
    assert body(reply) == {"error": "Rate limit exceeded"}
    assert reply.headers == [
        (b"Content-Type", JSON),
        (b"Retry-After", b"7"),  # ceil((1 - 0.3) / 0.1)
        (b"RateLimit-Limit", b"1"),
        (b"RateLimit-Remaining", b"0"),
        (b"RateLimit-Reset", b"7"),  # ceil((1 - 0.3) / 0.1)
    ]
    assert mw.rejections == 1


@pytest.mark.parametrize(
    ("hcl", "times", "retry_after", "reset"),
    [
        # rate/period: 60 per minute = 1 token/s, burst 1 taken at t=0; denied at 0.25 with t = 0.25
        ('rate = 60\nperiod = "1m"\nburst = 1', [0.0, 0.25], b"1", b"1"),
        # 1 per 10 s: at t=0.25, t = 0.025 -> ceil(0.975 / 0.1) = 10
        ('rate = 1\nperiod = "10s"', [0.0, 0.25], b"10", b"10"),
        # fast refill: ceil(0.9 / 100) = 1 (never 0)
        ("rate = 100\nburst = 1", [0.0, 0.001], b"1", b"1"),
        # 1 per 3 s (refill 1/3 is inexact in binary): denied at t=0 with t = 0 -> exactly 3, not 4
        ('rate = 1\nperiod = "3s"', [0.0, 0.0], b"3", b"3"),
        # burst 5 at 1 token per 2 s, drained at t=0: Reset = ceil(5 / 0.5) = 10, Retry-After = ceil(1 / 0.5) = 2
        ('rate = 1\nperiod = "2s"\nburst = 5', [0.0] * 6, b"2", b"10"),
    ],
)
def test_retry_after_and_reset_formulas(hcl: str, times: list[float], retry_after: bytes, reset: bytes) -> None:
    mw = limiter(hcl)
    for now in times[:-1]:
        assert mw.request(request(), now) is None
    reply = denied(mw, times[-1])
    assert (b"Retry-After", retry_after) in reply.headers
    assert (b"RateLimit-Reset", reset) in reply.headers
    assert (b"RateLimit-Remaining", b"0") in reply.headers


def test_continuous_refill_up_to_burst() -> None:
    mw = limiter("rate = 2\nburst = 4")  # 2 tokens/s
    for _ in range(4):
        assert mw.request(request(), 0.0) is None
    assert mw.request(request(), 0.25) is not None  # 0.5 token
    assert allowed_headers(mw, 0.5) == hdrs(4, 0, 2)  # 1 token refilled, taken: t = 0, Reset ceil(4 / 2)
    # a long pause refills to burst only: 4 allowed, the 5th denied
    for _ in range(4):
        assert mw.request(request(), 1000.0) is None
    assert mw.request(request(), 1000.0) is not None
    assert mw.rejections == 2


def test_fractional_tokens_remaining_is_floored() -> None:
    mw = limiter("rate = 1\nburst = 3")
    for _ in range(3):
        assert mw.request(request(), 0.0) is None
    # at 1.5 s: 1.5 tokens, one taken -> t = 0.5: Remaining 0, Reset ceil(2.5 / 1) = 3
    assert allowed_headers(mw, 1.5) == hdrs(3, 0, 3)
    # at 3.0 s: 0.5 + 1.5 = 2 tokens, one taken -> t = 1
    assert allowed_headers(mw, 3.0) == hdrs(3, 1, 2)


def test_float_noise_of_the_clock_still_refills_a_whole_token() -> None:
    mw = limiter("rate = 10\nburst = 1")
    assert mw.request(request(), 100.0) is None
    assert mw.request(request(), 100.1) is None  # (100.1 - 100.0) * 10 = 0.99999999999994


def test_clock_going_backwards_adds_nothing() -> None:
    mw = limiter("rate = 1\nburst = 1")
    assert mw.request(request(), 50.0) is None
    assert mw.request(request(), 10.0) is not None
    assert mw.request(request(), 50.5) is not None  # the bucket kept its later update time
    assert mw.request(request(), 51.0) is None


def test_response_phase_replaces_upstream_ratelimit_headers_and_keeps_others() -> None:
    mw = limiter("rate = 5")
    req = request()
    assert mw.request(req, 0.0) is None
    resp = response(200, [(b"ratelimit-limit", b"999"), (b"X-Up", b"1")])
    mw.response(req, resp, 0.0)
    assert resp.headers == [(b"X-Up", b"1"), *hdrs(5, 4, 1)]


def test_response_phase_without_an_admitted_request_adds_nothing() -> None:
    mw = limiter("rate = 5")
    resp = response(502, local=True)
    mw.response(request(), resp, 0.0)
    assert resp.headers == []


def test_client_ip_key_separates_clients() -> None:
    mw = limiter("rate = 1\nburst = 1")
    assert mw.request(request(client_ip="10.0.0.1"), 0.0) is None
    assert mw.request(request(client_ip="10.0.0.2"), 0.0) is None
    assert mw.request(request(client_ip="10.0.0.1"), 0.0) is not None


def test_global_key_shares_one_bucket() -> None:
    mw = limiter('rate = 1\nburst = 2\nkey = "global"')
    assert mw.request(request(client_ip="10.0.0.1"), 0.0) is None
    assert mw.request(request(client_ip="10.0.0.2"), 0.0) is None
    assert mw.request(request(client_ip="10.0.0.3"), 0.0) is not None
    assert len(mw.buckets) == 1


def test_header_key_and_missing_header_falls_back_to_client_ip() -> None:
    mw = limiter('rate = 1\nburst = 1\nkey = "header:X-Api-Key"')
    a = [(b"x-api-key", b"alpha")]
    assert mw.request(request(headers=a, client_ip="10.0.0.1"), 0.0) is None
    # same key from another address: same bucket
    assert mw.request(request(headers=[(b"X-API-KEY", b"alpha")], client_ip="10.0.0.2"), 0.0) is not None
    assert mw.request(request(headers=[(b"X-Api-Key", b"beta")], client_ip="10.0.0.1"), 0.0) is None
    # no header: the client IP's bucket, separate from the header values
    assert mw.request(request(client_ip="10.0.0.1"), 0.0) is None
    assert mw.request(request(client_ip="10.0.0.1"), 0.0) is not None
    # a header value that looks like an IP does not share that IP's bucket
    assert mw.request(request(headers=[(b"X-Api-Key", b"10.0.0.3")]), 0.0) is None
    assert mw.request(request(client_ip="10.0.0.3"), 0.0) is None


def test_lru_eviction_restarts_the_evicted_key_full() -> None:
    mw = limiter("rate = 1\nburst = 1\nmax_keys = 2")
    now = 0.0
    assert mw.request(request(client_ip="A"), now) is None
    assert mw.request(request(client_ip="B"), now) is None
    assert mw.request(request(client_ip="A"), now) is not None  # A used: B is now the oldest
    assert mw.request(request(client_ip="C"), now) is None  # evicts B
    assert len(mw.buckets) == 2
    assert mw.request(request(client_ip="A"), now) is not None  # A kept its empty bucket
    assert mw.request(request(client_ip="B"), now) is None  # B restarts full (evicts C)
    assert mw.request(request(client_ip="C"), now) is None  # C restarts full (evicts A)
    assert mw.request(request(client_ip="A"), now) is None
    assert len(mw.buckets) == 2


def test_token_buckets_take_encoding() -> None:
    tb = TokenBuckets(rate=1.0, period=4.0, burst=2, max_keys=10)
    assert tb.take("k", 0.0) == 1.0
    assert tb.take("k", 0.0) == 0.0
    left = tb.take("k", 1.0)  # 0.25 token: denied, returned as 0.25 - 1
    assert left == pytest.approx(-0.75)
    assert tb.retry_after(left + 1.0) == 3  # ceil(0.75 / 0.25)
    assert tb.reset_after(left + 1.0) == 7  # ceil(1.75 / 0.25)
    assert tb.take("k", 2.0) == pytest.approx(-0.5)  # a denial takes nothing: 0.5 token at t=2
    assert tb.take("k", 4.0) == pytest.approx(0.0)  # 1 token at t=4: allowed
    assert tb.take("other", 4.0) == 1.0
    fast = TokenBuckets(rate=1e10, period=1.0, burst=1, max_keys=1)
    assert fast.retry_after(0.5) == 1  # never 0, however fast the refill


def test_ceil_secs_ignores_float_noise() -> None:
    assert ceil_secs(3.0000000000000004) == 3
    assert ceil_secs(3.01) == 4
    assert ceil_secs(0.0) == 0
    assert ceil_secs(-2.0) == 0


def test_repeated_key_keeps_the_lru_order() -> None:
    """The key used last is taken from without a table lookup; the order and the evictions stay those of an LRU."""
    tb = TokenBuckets(rate=1.0, period=1.0, burst=2, max_keys=2)
    assert tb.take("a", 0.0) == 1.0
    assert tb.take("a", 0.0) == 0.0  # the remembered bucket: the same one
    assert tb.take("b", 0.0) == 1.0
    assert tb.take("a", 0.5) == pytest.approx(-0.5)  # a moved last again; still its own drained bucket
    assert tb.take("a", 0.5) == pytest.approx(-0.5)
    assert tb.take("c", 0.5) == 1.0  # evicts b, the least recently used
    assert list(tb.buckets) == ["a", "c"]
    assert tb.take("b", 0.5) == 1.0  # b starts full again, evicting a
    assert list(tb.buckets) == ["c", "b"]
    assert tb.take("a", 0.5) == 1.0  # a was evicted: full again
    single = TokenBuckets(rate=1.0, period=1.0, burst=1, max_keys=1)
    assert single.take("x", 0.0) == 0.0
    assert single.take("y", 0.0) == 0.0  # evicts x, the remembered key
    assert single.take("x", 0.0) == 0.0  # x is new again, not the stale remembered bucket
    assert len(single) == 1
