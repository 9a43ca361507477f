"""``rate-limit`` (SPEC §6.5): an in-process token bucket per key, with ``RateLimit-*`` headers.

Compiled by mypyc (the same source runs interpreted): ``TokenBuckets`` is a plain native class with typed
attributes and one ``take`` method, no closures; constants are ``Final``. ``RateLimit`` subclasses the interpreted
``chain.Middleware`` and is therefore a regular Python class under mypyc; it only picks the key and formats headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .chain import Middleware, Reply, Request, Response, json_reply, length_mask, lower_name, name_id

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
# (typed as variable-length tuples: compiled, a fixed-length tuple constant is stored unboxed and re-boxed per use)
_LOWS: Final[tuple[bytes, ...]] = (lower_name(_LIMIT), lower_name(_REMAINING), lower_name(_RESET))
_IDS: Final = name_id(_LIMIT) + name_id(_REMAINING) + name_id(_RESET)
_MASK: Final = length_mask(_LOWS)
_EXCEEDED: Final = {"error": "Rate limit exceeded"}
# header values for small counts, formatted once: most Remaining and Reset values are below this
_SMALL: Final = 4096
_DIGITS: Final = [str(i).encode() for i in range(_SMALL)]


def int_bytes(value: int) -> bytes:
    """``str(value).encode()``, from a table for 0 <= value < 4096."""
    if 0 <= value < _SMALL:
        return _DIGITS[value]
    return str(value).encode()


def ceil_secs(value: float) -> int:
    """``ceil`` that ignores float noise below ``_EPS`` (3.0000000000000004 s is 3 s); never negative."""
    value -= _EPS
    if value <= 0.0:
        return 0
    n = int(value)  # truncates: the floor of a positive value
    return n + 1 if n < value else n


class Bucket:
    """One key's bucket: tokens after the last update, and its time."""

    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens: float = tokens
        self.last: float = last


class TokenBuckets:
    """Token buckets by key: full when new, refilled continuously at ``refill`` tokens/s up to ``burst``.

    The table holds at most ``max_keys`` buckets; the least recently used one is dropped first, so an evicted key
    starts again with a full bucket. A dict keeps insertion order: a used key is moved to the end.
    """

    def __init__(self, rate: float, period: float, burst: int, max_keys: int) -> None:
        self.refill: float = rate / period  # tokens per second
        self.burst: float = float(burst)
        self.max_keys: int = max_keys
        self.buckets: dict[str, Bucket] = {}
        # the key used last and its bucket: already the table's newest entry, so taking from it again needs no
        # lookup and no move (one client, or one hot key, costs no dict work)
        self.last_key = ""
        self.last_bucket: Bucket | None = None

    def take(self, key: str, now: float) -> float:
        """Take one token for ``key`` at ``now``.

        Returns the tokens left after the decision (``>= 0``) when allowed; when denied, the tokens left minus one,
        a value in ``[-1, 0)`` (add 1 to get them back).
        """
        bucket = self.last_bucket
        if bucket is None or key != self.last_key:
            buckets = self.buckets
            bucket = buckets.pop(key, None)
            if bucket is None:
                if len(buckets) >= self.max_keys:
                    del buckets[next(iter(buckets))]
                bucket = Bucket(self.burst, now)
            buckets[key] = bucket  # (re)inserted last: the table's order is least recently used first
            self.last_key = key
            self.last_bucket = bucket
        tokens = bucket.tokens
        elapsed = now - bucket.last
        if elapsed > 0.0:
            tokens += elapsed * self.refill
            if tokens > self.burst:
                tokens = self.burst
            bucket.last = now
        # else: a clock that went backwards (or a new bucket) keeps the later update time
        if tokens + _EPS >= 1.0:
            tokens -= 1.0
            if tokens < 0.0:
                tokens = 0.0
            bucket.tokens = tokens
            return tokens
        bucket.tokens = tokens
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


class SharedBuckets(TokenBuckets):
    """The same buckets in a GCRA table of the shared segment of a supervisor's workers (SPEC §13.4): a local limit
    is exact for the whole instance. ``segment.take`` gives the numbers of :meth:`TokenBuckets.take`."""

    def __init__(self, rate: float, period: float, burst: int, max_keys: int, segment: Any, table: int,
                 capacity: int) -> None:
        super().__init__(rate, period, burst, max_keys)
        self.segment = segment
        self.table = table
        self.capacity = capacity
        self.interval = 1.0 / self.refill  # seconds per token

    def take(self, key: str, now: float) -> float:
        return float(self.segment.take(self.table, self.capacity, key.encode("utf-8", "surrogateescape"), now,
                                       self.interval, self.burst))

    def __len__(self) -> int:
        return int(self.segment.used(self.table, self.capacity))


class RateLimit(Middleware):
    """``rate-limit``: one token per request; 429 when the key's bucket is empty."""

    kind = "rate-limit"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        rate = float(params["rate"])
        burst = params["burst"]  # the validator fills it in when not written: ceil(rate), at least 1
        self.buckets: TokenBuckets = TokenBuckets(rate, float(params["period"]), int(burst), int(params["max_keys"]))
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
        # response-phase header items: Limit is fixed; Remaining and Reset repeat their last value (a bucket kept
        # full by a light load, or emptied by a heavy one, answers the same numbers request after request)
        # (typed Any: compiled, a tuple[bytes, bytes] attribute is stored unboxed and re-boxed on every read)
        self.limit_item: Any = (_LIMIT, self.limit_value)
        self.remaining_n = -1
        self.remaining_item: Any = (_REMAINING, b"")
        self.reset_n = -1
        self.reset_item: Any = (_RESET, b"")
        # the three items for the token count of the last response (-1.0: none yet): a bucket kept full, or empty,
        # leaves the same count request after request, so the items are reused without any arithmetic
        self.items_tokens = -1.0
        self.items: tuple[tuple[bytes, bytes], ...] = ()

    def share(self, segment: Any, table: int, capacity: int) -> None:
        """Keep the buckets in a table of the workers' shared segment from now on (SPEC §13.4)."""
        b = self.buckets
        if isinstance(b, SharedBuckets) and b.segment is segment and b.table == table:
            return
        self.buckets = SharedBuckets(b.refill, 1.0, int(b.burst), b.max_keys, segment, table, capacity)

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
        note = req.notes[self.slot]
        if note is None:
            return
        tokens: float = note  # unboxed once: the arithmetic below stays native
        if tokens != self.items_tokens:
            self.items = self.header_items(tokens)
            self.items_tokens = tokens
        items = self.items
        if resp.has_any(_LOWS, _MASK):  # the backend sent its own: replaced
            for name, value in items:
                resp.set(name, value)
        else:
            resp.append_new(items, _LOWS, _IDS, _MASK)

    def header_items(self, tokens: float) -> tuple[tuple[bytes, bytes], ...]:
        """Limit, Remaining and Reset for ``tokens`` left after the decision."""
        n = int(tokens + _EPS)
        if n != self.remaining_n:
            self.remaining_n = n
            self.remaining_item = (_REMAINING, int_bytes(n))
        n = self.buckets.reset_after(tokens)
        if n != self.reset_n:
            self.reset_n = n
            self.reset_item = (_RESET, int_bytes(n))
        return (self.limit_item, self.remaining_item, self.reset_item)
