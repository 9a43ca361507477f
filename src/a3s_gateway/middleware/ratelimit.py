"""``rate-limit`` (SPEC §6.5): an in-process token bucket per key, with ``RateLimit-*`` headers.

Compiled by mypyc (the same source runs interpreted): ``TokenBuckets`` is a plain native class with typed
attributes and one ``take`` method, no closures; constants are ``Final``. ``RateLimit`` subclasses the interpreted
``chain.Middleware`` and is therefore a regular Python class under mypyc; it only picks the key and formats headers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from .chain import Middleware, Reply, Request, Response, json_reply

# Float tolerance: a fake or real clock gives elapsed times like 0.0999999999999943 for 0.1 s, which must still
# refill a whole token (and must not round a Reset of exactly 3 s up to 4 s).
_EPS: Final = 1e-9
_KEY_CLIENT_IP: Final = 0
_KEY_GLOBAL: Final = 1
_KEY_HEADER: Final = 2
_LIMIT: Final = b"RateLimit-Limit"
_REMAINING: Final = b"RateLimit-Remaining"
_RESET: Final = b"RateLimit-Reset"
_RETRY_AFTER: Final = b"Retry-After"
_EXCEEDED: Final = {"error": "Rate limit exceeded"}


def ceil_secs(value: float) -> int:
    """``ceil`` that ignores float noise below ``_EPS`` (3.0000000000000004 s is 3 s); never negative."""
    n = math.ceil(value - _EPS)
    return n if n > 0 else 0


class TokenBuckets:
    """Token buckets by key: full when new, refilled continuously at ``refill`` tokens/s up to ``burst``.

    The table holds at most ``max_keys`` buckets; the least recently used one is dropped first, so an evicted key
    starts again with a full bucket. A dict keeps insertion order: a used key is moved to the end.
    """

    def __init__(self, rate: float, period: float, burst: int, max_keys: int) -> None:
        self.refill: float = rate / period  # tokens per second
        self.burst: float = float(burst)
        self.max_keys: int = max_keys
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last update)

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key`` at ``now``.

        Returns the tokens left after the decision (``>= 0``) when allowed; when denied, the tokens left minus one,
        a value in ``[-1, 0)`` (add 1 to get them back).
        """
        buckets = self.buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = self.burst
            if len(buckets) >= self.max_keys:
                del buckets[next(iter(buckets))]
        else:
            tokens, last = entry
            elapsed = now - last
            if elapsed > 0.0:
                tokens += elapsed * self.refill
                if tokens > self.burst:
                    tokens = self.burst
            else:
                now = last  # a clock that went backwards: keep the later update time
        if tokens + _EPS >= 1.0:
            tokens -= 1.0
            if tokens < 0.0:
                tokens = 0.0
            buckets[key] = (tokens, now)
            return tokens
        buckets[key] = (tokens, now)
        return tokens - 1.0

    def reset_after(self, tokens: float) -> int:
        """Seconds until the bucket is full again: ``ceil((burst - t) / refill)``."""
        return ceil_secs((self.burst - tokens) / self.refill)

    def retry_after(self, tokens: float) -> int:
        """Seconds until one token is available: ``max(1, ceil((1 - t) / refill))``."""
        n = ceil_secs((1.0 - tokens) / self.refill)
        return n if n > 1 else 1

    def __len__(self) -> int:
        return len(self.buckets)


class RateLimit(Middleware):
    """``rate-limit``: one token per request; 429 when the key's bucket is empty."""

    kind = "rate-limit"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        rate = float(params["rate"])
        burst = params.get("burst")
        if burst is None:  # the validator fills it in; kept for configs built by hand
            burst = max(1, math.ceil(rate))
        self.buckets = TokenBuckets(rate, float(params["period"]), int(burst), int(params["max_keys"]))
        self.limit_value = str(int(burst)).encode()
        key = str(params["key"])
        self.key_kind = _KEY_CLIENT_IP
        self.key_header = b""
        if key == "global":
            self.key_kind = _KEY_GLOBAL
        elif key.startswith("header:"):
            self.key_kind = _KEY_HEADER
            self.key_header = key[7:].encode("ascii")
        self.rejections = 0  # read by the metrics collector

    def bucket_key(self, req: Request) -> str:
        """Client IP, ``""`` for the global bucket, or ``"h:" + value`` (so values never collide with IPs)."""
        if self.key_kind == _KEY_GLOBAL:
            return ""
        if self.key_kind == _KEY_HEADER:
            value = req.get(self.key_header)
            if value is not None:
                return "h:" + value.decode("latin-1")
        return req.client_ip

    def request(self, req: Request, now: float) -> Reply | None:
        buckets = self.buckets
        left = buckets.take(self.bucket_key(req), now)
        if left >= 0.0:
            req.notes[self.slot] = left
            return None
        tokens = left + 1.0
        self.rejections += 1
        return json_reply(
            429,
            _EXCEEDED,
            (
                (_RETRY_AFTER, str(buckets.retry_after(tokens)).encode()),
                (_LIMIT, self.limit_value),
                (_REMAINING, b"0"),
                (_RESET, str(buckets.reset_after(tokens)).encode()),
            ),
        )

    def response(self, req: Request, resp: Response, now: float) -> None:
        tokens = req.notes[self.slot]
        if tokens is None:
            return
        resp.set(_LIMIT, self.limit_value)
        resp.set(_REMAINING, str(math.floor(tokens + _EPS)).encode())
        resp.set(_RESET, str(self.buckets.reset_after(tokens)).encode())
