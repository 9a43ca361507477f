"""The ``rate-limit-redis`` middleware (SPEC §6.6): a token bucket shared by every gateway through Redis.

One Lua script reads, refills, takes and writes the bucket atomically on the Redis server, with the server's clock
(``TIME``), so gateways with skewed clocks still agree. The script is called by SHA (``EVALSHA``); after a Redis
restart or ``SCRIPT FLUSH`` the ``NOSCRIPT`` answer makes us send it once with ``EVAL``, which caches it again.

The ``redis`` package is an optional dependency (``a3s-gateway[redis]``): it is imported when an instance is
built, so configurations without this middleware never load it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from a3s_gateway.errors import StartupError
from a3s_gateway.middleware.chain import Middleware, Reply, Request, Response, json_reply

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["BUCKET_SCRIPT", "LOG_INTERVAL", "RateLimitRedis", "RedisFailureLog"]

log = logging.getLogger("a3s_gateway.middleware")

LOG_INTERVAL: Final = 10.0  # seconds between two error logs of one instance
# float tolerance, as in the in-process rate-limit (ratelimit.py): 1.9999999999999998 tokens show 2 remaining and
# a Reset of 3.0000000000000004 s is 3 s, so both middlewares turn the same bucket into the same headers
_EPS: Final = 1e-9

# KEYS[1] bucket hash; ARGV: burst, refill (tokens/s), ttl (s). Returns {allowed 0|1, tokens after (string)}.
# The time of the last update is kept as integer seconds + microseconds so no precision is lost in Lua doubles;
# tokens go back as a string because Lua numbers returned to Redis are truncated to integers.
BUCKET_SCRIPT: Final = """\
if redis.replicate_commands then redis.replicate_commands() end
local burst = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local t = redis.call('TIME')
local s, us = tonumber(t[1]), tonumber(t[2])
local st = redis.call('HMGET', KEYS[1], 'tokens', 's', 'us')
local tokens = tonumber(st[1])
local s0, us0 = tonumber(st[2]), tonumber(st[3])
if tokens == nil or s0 == nil or us0 == nil then
  tokens = burst
else
  local elapsed = (s - s0) + (us - us0) / 1000000
  if elapsed > 0 then tokens = tokens + elapsed * refill end
  if tokens > burst then tokens = burst end
end
local allowed = 0
if tokens + 1e-9 >= 1 then
  tokens = math.max(0, tokens - 1)
  allowed = 1
end
local out = string.format('%.17g', tokens)
redis.call('HMSET', KEYS[1], 'tokens', out, 's', t[1], 'us', t[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {allowed, out}
"""
BUCKET_SHA: Final = hashlib.sha1(BUCKET_SCRIPT.encode()).hexdigest()

EXCEEDED: Final = {"error": "Rate limit exceeded"}
UNAVAILABLE: Final = {"error": "Rate limiter unavailable"}


def _ceil_secs(value: float) -> int:
    """``ceil`` ignoring float noise below ``_EPS``; never negative."""
    n = math.ceil(value - _EPS)
    return n if n > 0 else 0


class RedisFailureLog:
    """A Redis-backed middleware's failed calls: counted (``errors``) and logged at most once per LOG_INTERVAL per
    instance, with the number of failures since the last message; ``who`` names the instance in the log."""

    def __init__(self, who: str, failure_mode: str) -> None:
        self.who = who
        self.outcome = "rejected with 503" if failure_mode == "closed" else "admitted"
        self.failure_mode = failure_mode
        self.errors = 0
        self._next_log = -math.inf
        self._unlogged = 0

    def failed(self, exc: BaseException, now: float) -> None:
        self.errors += 1
        if now < self._next_log:
            self._unlogged += 1
            return
        self._next_log = now + LOG_INTERVAL
        suppressed, self._unlogged = self._unlogged, 0
        log.warning("%s: Redis failed (%s: %s); failure_mode=%s: requests are %s%s", self.who, type(exc).__name__,
                    exc, self.failure_mode, self.outcome,
                    f" ({suppressed} more failures since the last message)" if suppressed else "")


class RateLimitRedis(Middleware):
    """Token bucket per key in Redis, shared by all gateways with the same router and middleware names (§6.6).

    ``errors`` counts Redis failures (``gateway_ratelimit_redis_errors_total``), ``rejections`` the 429 answers.
    """

    kind = "rate-limit-redis"
    has_request = True
    is_async = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        try:
            import redis.asyncio
            import redis.exceptions
        except ImportError as exc:
            raise StartupError(
                f'middleware "{name}" (router "{router}"): rate-limit-redis needs the redis package; '
                "install it with: pip install 'a3s-gateway[redis]'"
            ) from exc
        self._noscript: type[Exception] = redis.exceptions.NoScriptError
        # what a failed call may raise: Redis errors (connection, timeout, bad reply) and bare socket errors
        self._failures: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError,
            OSError,
            asyncio.TimeoutError,  # not an OSError before Python 3.11
            ValueError,  # a reply the script cannot have sent (see _take)
        )

        rate = float(params["rate"])
        period = float(params["period"])
        self.burst = int(params["burst"])  # the validator fills it in when not written: ceil(rate), at least 1
        self.refill = rate / period  # tokens per second
        self.ttl = math.ceil(self.burst / self.refill) + 10
        self.redis_url = str(params["redis_url"])
        self.failure_mode = str(params["failure_mode"])
        self.redis_timeout = float(params["redis_timeout"])
        self.key_prefix = str(params["key_prefix"])
        key = str(params["key"])
        self.key = key
        self._global = key == "global"
        self._header = key[7:].encode("latin-1").lower() if key.startswith("header:") else None
        self._prefix = f"{self.key_prefix}{router}:{name}:".encode()
        self._argv = (str(self.burst), repr(self.refill), str(self.ttl))
        self._limit = b"%d" % self.burst
        self._closed = self.failure_mode == "closed"

        self.failures = RedisFailureLog(f"rate-limit-redis {name!r} (router {router!r})", self.failure_mode)
        self.rejections = 0
        self._client: Redis | None = None

    def bucket_key(self, req: Request) -> bytes:
        """The Redis key of the request's bucket."""
        if self._global:
            return self._prefix + b"global"
        if self._header is not None:
            value = req.get(self._header)
            if value is not None:
                return self._prefix + b"h:" + value  # never collides with a client IP's bucket
        return self._prefix + req.client_ip.encode("latin-1")

    def _connect(self) -> Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # no client-side retries: one failed command is one failure, answered per failure_mode within the timeout
        client: Redis = Redis.from_url(
            self.redis_url,
            socket_timeout=self.redis_timeout,
            socket_connect_timeout=self.redis_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._client = client
        return client

    async def _take(self, key: bytes) -> tuple[bool, float]:
        client = self._client or self._connect()
        try:
            result = await client.evalsha(BUCKET_SHA, 1, key, *self._argv)
        except self._noscript:
            result = await client.eval(BUCKET_SCRIPT, 1, key, *self._argv)
        try:
            allowed, tokens = result
            return int(allowed) == 1, float(tokens)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unexpected reply from the bucket script: {result!r}") from exc

    async def request_async(self, req: Request, now: float) -> Reply | None:
        req.notes[self.slot] = None
        try:
            allowed, tokens = await self._take(self.bucket_key(req))
        except self._failures as exc:
            self._failed(exc, now)
            if self._closed:
                return json_reply(503, UNAVAILABLE, ((b"Retry-After", b"1"),))
            return None
        refill = self.refill
        reset = b"%d" % _ceil_secs((self.burst - tokens) / refill)
        if allowed:
            req.notes[self.slot] = (self._limit, b"%d" % math.floor(tokens + _EPS), reset)
            return None
        self.rejections += 1
        retry_after = max(1, _ceil_secs((1.0 - tokens) / refill))
        return json_reply(
            429,
            EXCEEDED,
            (
                (b"Retry-After", b"%d" % retry_after),
                (b"RateLimit-Limit", self._limit),
                (b"RateLimit-Remaining", b"0"),
                (b"RateLimit-Reset", reset),
            ),
        )

    def response(self, req: Request, resp: Response, now: float) -> None:
        note = req.notes[self.slot]
        if note is None:
            return  # Redis failed and failure_mode is open: the request was admitted without a decision
        limit, remaining, reset = note
        resp.set(b"RateLimit-Limit", limit)
        resp.set(b"RateLimit-Remaining", remaining)
        resp.set(b"RateLimit-Reset", reset)

    def _failed(self, exc: BaseException, now: float) -> None:
        self.failures.failed(exc, now)

    @property
    def errors(self) -> int:
        """Redis failures so far (``gateway_ratelimit_redis_errors_total``)."""
        return self.failures.errors

    async def close(self) -> None:
        """Close the Redis client and its connection pool."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
