"""``token-limit`` (SPEC §16.4): token budgets per key per fixed window, reserved at admission, settled at the end.

A request is admitted when, for its key's budget (and its model's, with ``per_model``), the tokens already charged
in the window plus its own reservation stay within the limit; the reservation is charged at once, so concurrent
requests see each other's reservations and cannot together overrun the budget. When the exchange ends — normally,
mid-stream failure, client gone, local answer — ``settle`` replaces the reservation by the usage the response
reported or the estimate (:mod:`a3s_gateway.http.usage`). A budget is one number per key and window: the tokens
charged (used plus reserved in flight), which is all admission needs.

Where budgets live:

- :class:`LocalBudgets`: a dict per window in this process;
- :class:`SharedBudgets`: a table of the workers' shared segment (SPEC §13.4). One 64-bit word per key holds the
  window number and the charged tokens together, updated by compare-and-swap (``Segment.cas``): the existing
  atomics of both segment twins are all it needs, so no new C code (and no twin to keep in step) was added;
- :class:`RedisBudgets`: a Redis string per key and window, changed by one atomic Lua script on the Redis server's
  clock, shared by every gateway on that Redis; failures follow ``failure_mode`` as ``rate-limit-redis`` (§6.6).

Interpreted (not compiled): it runs only on routes that configure it, a few calls per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .chain import Middleware, Reply, Request, Response, json_reply
from .ratelimit_redis import RedisFailureLog

if TYPE_CHECKING:
    from redis.asyncio import Redis

log: Final = logging.getLogger("a3s_gateway.middleware")

EXCEEDED: Final = {"error": "Token limit exceeded"}
UNAVAILABLE: Final = {"error": "Rate limiter unavailable"}
MAX_LIMIT: Final = 10_000_000_000  # a budget fits the 36 bits a shared-segment word gives it (with overdraft room)
SHARED_KEYS: Final = 65536  # entries of a token-limit table in the shared segment (a power of two)

_KEY_CLIENT_IP: Final = 0
_KEY_HEADER: Final = 1
_KEY_JWT: Final = 2
_KEY_API_KEY: Final = 3

_COUNT_TOTAL: Final = 0
_COUNT_OUTPUT: Final = 1
_COUNT_INPUT: Final = 2
_COUNTS: Final = {"total": _COUNT_TOTAL, "output": _COUNT_OUTPUT, "input": _COUNT_INPUT}

_LOCAL_MAX_KEYS: Final = 65536  # keys per window in one process; past it the oldest key's budget restarts


class Decision:
    """An admission: whether it passed, the window it was charged in, and the header numbers of the applicable limit
    with the fewest remaining tokens (``reset``: seconds to the window's end)."""

    __slots__ = ("admitted", "limit", "remaining", "reset", "window")

    def __init__(self, admitted: bool, window: int, limit: int, remaining: int, reset: int) -> None:
        self.admitted = admitted
        self.window = window
        self.limit = limit
        self.remaining = remaining
        self.reset = reset


def _pick(admitted: bool, window: int, limits: list[tuple[int, int]], reset: int) -> Decision:
    """The decision with the (limit, remaining) pair that has the fewest remaining tokens."""
    limit, remaining = min(limits, key=lambda pair: pair[1])
    return Decision(admitted, window, limit, max(0, remaining), reset)


def _reset_secs(window_end: float, now: float) -> int:
    """Whole seconds to the window's end, at least 1."""
    return max(1, math.ceil(window_end - now - 1e-9))


class LocalBudgets:
    """Budgets of this process: the tokens charged per key in the current window (older windows are dropped)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.current = -1
        self.charged: dict[str, int] = {}

    def _roll(self, now: float) -> int:
        win = int(now // self.window)
        if win != self.current:
            self.current = win
            self.charged = {}
        return win

    def reserve(self, wants: list[tuple[str, int, int]], now: float) -> Decision:
        """Charge ``amount`` to every ``(key, limit, amount)`` if each stays within its limit (``amount`` capped at
        ``limit``), else nothing."""
        win = self._roll(now)
        charged = self.charged
        reset = _reset_secs((win + 1) * self.window, now)
        room: list[tuple[int, int]] = []
        admitted = True
        for key, limit, amount in wants:
            used = charged.get(key, 0)
            if used + min(amount, limit) > limit:
                admitted = False
            room.append((limit, limit - used))
        if not admitted:
            return _pick(False, win, room, reset)
        room = []
        for key, limit, amount in wants:
            used = charged.pop(key, 0) + min(amount, limit)
            if len(charged) >= _LOCAL_MAX_KEYS:
                del charged[next(iter(charged))]
            charged[key] = used  # (re)inserted last: the dict's order is least recently used first
            room.append((limit, limit - used))
        return _pick(True, win, room, reset)

    def settle(self, held: list[tuple[str, int]], window: int, actual: int, now: float) -> None:
        """Replace the reservations ``(key, reserved)`` made in ``window`` by ``actual`` tokens (charged to the current
        window: a reservation of an older window went with it)."""
        win = self._roll(now)
        charged = self.charged
        for key, reserved in held:
            delta = actual - reserved if win == window else actual
            if delta:
                charged[key] = max(0, charged.get(key, 0) + delta)


# -- shared segment (workers) -----------------------------------------------------------------------------------

_WIN_BITS: Final = 27  # window number modulo 2^27 in the word's high bits (the sign bit stays clear)
_CHARGE_BITS: Final = 36
_CHARGE_MAX: Final = (1 << _CHARGE_BITS) - 1
_WIN_MASK: Final = (1 << _WIN_BITS) - 1
_I64: Final = 1 << 63


def _pack(win: int, charged: int) -> int:
    return ((win & _WIN_MASK) << _CHARGE_BITS) | min(max(charged, 0), _CHARGE_MAX)


def _charged_in(word: int, win: int) -> int:
    """The tokens a word charges in window ``win`` (a word of another window charges none)."""
    if (word >> _CHARGE_BITS) != (win & _WIN_MASK):
        return 0
    return word & _CHARGE_MAX


class SharedBudgets(LocalBudgets):
    """The budgets in a table of the workers' shared segment (SPEC §13.4): exact for the whole instance.

    An entry is two words: the key's hash (as ``Segment.take`` tables) and the packed (window, charged) word that
    every change replaces by compare-and-swap. A key finds its entry among ``PROBES`` entries; when all hold other
    keys, one whose window is over is recycled first (nothing is lost), else the one charged least."""

    def __init__(self, window: float, segment: Any, table: int, capacity: int) -> None:
        super().__init__(window)
        from ..segment import ENTRY_WORDS, PROBES, key_hash

        self.segment = segment
        self.table = table
        self.capacity = capacity
        self._hash = key_hash
        self._stride = ENTRY_WORDS
        self._probes = min(PROBES, capacity)

    def _entry(self, key: str, win: int) -> int:
        """Word index of ``key``'s packed word (its entry claimed if new)."""
        seg = self.segment
        h = self._hash(key.encode("utf-8", "surrogateescape"))
        word = h - (1 << 64) if h >= _I64 else h  # as the segment's signed words hold it
        mask = self.capacity - 1
        for _ in range(4):  # a race lost to another process: look again (bounded)
            victim = -1
            victim_charge = -1
            for i in range(self._probes):
                e = self.table + self._stride * ((h + i) & mask)
                k = seg.get(e)
                if k == 0 and seg.cas(e, 0, word):
                    return e + 1
                if k == 0:
                    k = seg.get(e)
                if k == word:
                    return e + 1
                charge = _charged_in(seg.get(e + 1), win)
                if victim < 0 or charge < victim_charge:
                    victim, victim_charge = e, charge
            if seg.cas(victim, seg.get(victim), word):  # its old charge stays with the word: never less strict
                return victim + 1
        return victim + 1

    def _add(self, index: int, win: int, delta: int, limit: int) -> tuple[bool, int]:
        """Add ``delta`` to the charge of window ``win`` at word ``index``, unless it passes ``limit`` (-1: no
        check). Returns (done, the charge after or, when refused, before)."""
        seg = self.segment
        while True:
            old = seg.get(index)
            charged = _charged_in(old, win)
            after = charged + delta
            if limit >= 0 and after > limit:
                return False, charged
            if seg.cas(index, old, _pack(win, after)):
                return True, max(0, after)

    def reserve(self, wants: list[tuple[str, int, int]], now: float) -> Decision:
        win = int(now // self.window)
        reset = _reset_secs((win + 1) * self.window, now)
        done: list[tuple[int, int]] = []
        room: list[tuple[int, int]] = []
        for key, limit, amount in wants:
            index = self._entry(key, win)
            own = min(amount, limit)
            ok, charged = self._add(index, win, own, limit)
            room.append((limit, limit - charged))
            if not ok:
                for taken, own_taken in done:  # give back what the limits checked before took
                    self._add(taken, win, -own_taken, -1)
                return _pick(False, win, room, reset)
            done.append((index, own))
        return _pick(True, win, room, reset)

    def settle(self, held: list[tuple[str, int]], window: int, actual: int, now: float) -> None:
        win = int(now // self.window)
        for key, reserved in held:
            delta = actual - reserved if win == window else actual
            if delta:
                self._add(self._entry(key, win), win, delta, -1)


# -- Redis ----------------------------------------------------------------------------------------------------------

# KEYS: the budgets' base keys (the window number is appended). ARGV[1] window in ms.
# reserve: ARGV[2] "r", then (limit, amount) per key. Returns {admitted 0|1, window, ms to its end, limit, remaining}
#   of the limit with the fewest remaining tokens; charges every key only when all admit.
# settle:  ARGV[2] "s", ARGV[3] the reservation's window, ARGV[4] actual tokens, then the reserved amount per key.
BUDGET_SCRIPT: Final = """\
if redis.replicate_commands then redis.replicate_commands() end
local window = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = math.floor(now / window)
local suffix = ':' .. win
local ttl = window + 10000
if ARGV[2] == 's' then
  local actual = tonumber(ARGV[4])
  for i, key in ipairs(KEYS) do
    local delta = actual
    if tonumber(ARGV[3]) == win then delta = actual - tonumber(ARGV[4 + i]) end
    if delta ~= 0 then
      redis.call('INCRBY', key .. suffix, delta)
      redis.call('PEXPIRE', key .. suffix, ttl)
    end
  end
  return 1
end
local admitted = 1
local best_limit, best_room = 0, nil
local own = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  own[i] = math.min(tonumber(ARGV[2 + 2 * i]), limit)
  local used = tonumber(redis.call('GET', key .. suffix) or '0')
  if used + own[i] > limit then admitted = 0 end
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local used = tonumber(redis.call('GET', key .. suffix) or '0')
  if admitted == 1 and own[i] > 0 then
    used = redis.call('INCRBY', key .. suffix, own[i])
    redis.call('PEXPIRE', key .. suffix, ttl)
  end
  local room = limit - used
  if best_room == nil or room < best_room then best_limit, best_room = limit, room end
end
return {admitted, win, (win + 1) * window - now, best_limit, best_room}
"""
BUDGET_SHA: Final = hashlib.sha1(BUDGET_SCRIPT.encode()).hexdigest()


class RedisBudgets:
    """Budgets in Redis (``<key_prefix><router>:<middleware>:<key>:<window number>``), shared by every gateway."""

    def __init__(self, window: float, url: str, timeout: float, prefix: bytes) -> None:
        import redis.exceptions

        self.window_ms = max(1, round(window * 1000))
        self.url = url
        self.timeout = timeout
        self.prefix = prefix
        self.noscript: type[Exception] = redis.exceptions.NoScriptError
        self.failures: tuple[type[BaseException], ...] = (
            redis.exceptions.RedisError, OSError, asyncio.TimeoutError, ValueError,
        )
        self.client: Redis | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def _connect(self) -> Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        client: Redis = Redis.from_url(self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                                       retry=Retry(NoBackoff(), 0))
        self.client = client
        return client

    async def _run(self, keys: list[bytes], argv: list[Any]) -> Any:
        client = self.client or self._connect()
        try:
            return await client.evalsha(BUDGET_SHA, len(keys), *keys, *argv)
        except self.noscript:
            return await client.eval(BUDGET_SCRIPT, len(keys), *keys, *argv)

    async def reserve(self, wants: list[tuple[str, int, int]], now: float) -> Decision:
        keys = [self.prefix + key.encode("utf-8", "surrogateescape") for key, _, _ in wants]
        argv: list[Any] = [self.window_ms, "r"]
        for _, limit, amount in wants:
            argv += [limit, amount]
        result = await self._run(keys, argv)
        try:
            admitted, win, left_ms, limit, remaining = (int(v) for v in result)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"unexpected reply from the budget script: {result!r}") from exc
        return Decision(admitted == 1, win, limit, max(0, remaining), max(1, math.ceil(left_ms / 1000)))

    async def settle_async(self, held: list[tuple[str, int]], window: int, actual: int) -> None:
        keys = [self.prefix + key.encode("utf-8", "surrogateescape") for key, _ in held]
        await self._run(keys, [self.window_ms, "s", window, actual, *[reserved for _, reserved in held]])

    async def close(self) -> None:
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.timeout)
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()


class Ticket:
    """An admitted request's reservation: what ``settle`` gives back, and its response headers."""

    __slots__ = ("estimate", "held", "items", "window")

    def __init__(self, held: list[tuple[str, int]], window: int, estimate: int,
                 items: tuple[tuple[bytes, bytes], ...]) -> None:
        self.held = held
        self.window = window
        self.estimate = estimate  # ceil(request body bytes / 4): the input estimate
        self.items = items


class TokenLimit(Middleware):
    """``token-limit``: admission against token budgets with reservations; settled to the usage at the end."""

    kind = "token-limit"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.limit = int(params["limit"])
        self.window = float(params["window"])
        self.count = _COUNTS[str(params["count"])]
        self.per_model: dict[str, int] = {str(k): int(v) for k, v in params["per_model"].items()}
        self.reserve_max = str(params["reserve"]) == "max_tokens"
        self.default_reserve = int(params["default_reserve"])
        key = str(params["key"])
        self.key_kind = _KEY_CLIENT_IP
        self.key_header = b""
        self.key_claim = ""
        if key.startswith("header:"):
            self.key_kind = _KEY_HEADER
            self.key_header = key[7:].encode("latin-1")
        elif key.startswith("jwt:"):
            self.key_kind = _KEY_JWT
            self.key_claim = key[4:]
        elif key == "api_key":
            self.key_kind = _KEY_API_KEY
        self.rejections = 0  # gateway_token_limit_rejections_total
        self.redis_url = str(params["redis_url"])
        self.failure_mode = str(params["failure_mode"])
        self.failures = RedisFailureLog(f"token-limit {name!r} (router {router!r})", self.failure_mode)
        self.budgets: LocalBudgets | None = None
        self.redis: RedisBudgets | None = None
        if self.redis_url:
            from ..errors import StartupError

            try:
                import redis.asyncio  # noqa: F401
            except ImportError as exc:
                raise StartupError(
                    f'middleware "{name}" (router "{router}"): token-limit with redis_url needs the redis package; '
                    "install it with: pip install 'a3s-gateway[redis]'"
                ) from exc
            prefix = f"{params['key_prefix']}{router}:{name}:".encode()
            self.redis = RedisBudgets(self.window, self.redis_url, float(params["redis_timeout"]), prefix)
            self.is_async = True
        else:
            self.budgets = LocalBudgets(self.window)

    def share(self, segment: Any, table: int, capacity: int) -> None:
        """Keep the budgets in a table of the workers' shared segment from now on (SPEC §13.4)."""
        b = self.budgets
        if b is None or (isinstance(b, SharedBudgets) and b.segment is segment and b.table == table):
            return
        self.budgets = SharedBudgets(self.window, segment, table, capacity)

    # -- admission -------------------------------------------------------------------------------------------------
    def budget_key(self, req: Request) -> str:
        """The key's value: ``h:``/``j:``/``k:`` + the header, claim or api-key digest, else the client IP."""
        kind = self.key_kind
        if kind == _KEY_HEADER:
            value = req.get(self.key_header)
            if value is not None:
                return "h:" + value.decode("latin-1")
        elif kind == _KEY_JWT:
            claims = req.claims
            if claims is not None:
                claim = claims.get(self.key_claim)
                if isinstance(claim, (str, int, float)) and not isinstance(claim, bool):
                    return "j:" + str(claim)
        elif kind == _KEY_API_KEY:
            api_key = req.api_key
            if api_key is not None:  # a digest: the key itself is never stored (nor sent to Redis)
                return "k:" + hashlib.sha256(api_key).hexdigest()[:32]
        return req.client_ip

    def _wants(self, req: Request) -> tuple[list[tuple[str, int, int]], int]:
        """The budgets the request is charged to, with its reservation; and its input estimate."""
        info = req.ai
        estimate = (info.body_bytes + 3) // 4 if info is not None else 0
        amount = 0
        if info is not None and self.reserve_max:
            output = info.max_tokens if info.max_tokens is not None and info.max_tokens >= 0 else self.default_reserve
            count = self.count
            amount = output + estimate if count == _COUNT_TOTAL else output if count == _COUNT_OUTPUT else estimate
        key = self.budget_key(req)
        wants = [(key, self.limit, amount)]
        model = info.model if info is not None else None
        if model is not None:
            limit = self.per_model.get(model)
            if limit is not None:
                wants.append((key + "\x00m:" + model, limit, amount))
        return wants, estimate

    def _decided(self, req: Request, wants: list[tuple[str, int, int]], estimate: int,
                 decision: Decision) -> Reply | None:
        reset = b"%d" % decision.reset
        items = ((b"RateLimit-Limit", b"%d" % decision.limit), (b"RateLimit-Remaining", b"%d" % decision.remaining),
                 (b"RateLimit-Reset", reset))
        if not decision.admitted:
            self.rejections += 1
            return json_reply(429, EXCEEDED, ((b"Retry-After", reset), *items))
        held = [(key, min(amount, limit)) for key, limit, amount in wants]
        req.notes[self.slot] = Ticket(held, decision.window, estimate, items)
        return None

    def request(self, req: Request, now: float) -> Reply | None:
        budgets = self.budgets
        assert budgets is not None
        wants, estimate = self._wants(req)
        return self._decided(req, wants, estimate, budgets.reserve(wants, now))

    async def request_async(self, req: Request, now: float) -> Reply | None:
        store = self.redis
        if store is None:
            return self.request(req, now)
        req.notes[self.slot] = None
        wants, estimate = self._wants(req)
        try:
            decision = await store.reserve(wants, now)
        except store.failures as exc:
            self._failed(exc, now)
            if self.failure_mode == "closed":
                return json_reply(503, UNAVAILABLE, ((b"Retry-After", b"1"),))
            return None  # open: admitted without a reservation (nothing to settle)
        return self._decided(req, wants, estimate, decision)

    def response(self, req: Request, resp: Response, now: float) -> None:
        ticket = req.notes[self.slot]
        if ticket is None:
            return
        for name, value in ticket.items:
            resp.set(name, value)

    # -- the end of the exchange -----------------------------------------------------------------------------------
    def settle(self, req: Request, usage: Any, now: float) -> None:
        ticket = req.notes[self.slot]
        if ticket is None:
            return
        req.notes[self.slot] = None
        actual = self.charge(usage, ticket.estimate)
        budgets = self.budgets
        if budgets is not None:
            budgets.settle(ticket.held, ticket.window, actual, now)
            return
        store = self.redis
        if store is not None:
            task = asyncio.get_running_loop().create_task(self._settle_redis(store, ticket, actual))
            store.tasks.add(task)
            task.add_done_callback(store.tasks.discard)

    async def _settle_redis(self, store: RedisBudgets, ticket: Ticket, actual: int) -> None:
        try:
            await store.settle_async(ticket.held, ticket.window, actual)
        except store.failures as exc:  # the reservation stays charged until its window ends
            self._failed(exc, asyncio.get_running_loop().time())

    def charge(self, usage: Any, estimate: int) -> int:
        """The tokens an exchange costs (§16.2): the usage reported (or estimated from the stream); without usage,
        the input estimate when the request went to a backend, nothing when it did not (the model never saw it)."""
        if usage is None or not (usage.responded or usage.sent):
            return 0
        inp = usage.input_tokens
        out = usage.output_tokens
        if inp is None:
            inp = estimate
        if out is None:
            out = 0
        count = self.count
        return int(inp + out if count == _COUNT_TOTAL else out if count == _COUNT_OUTPUT else inp)

    def _failed(self, exc: BaseException, now: float) -> None:
        self.failures.failed(exc, now)

    @property
    def errors(self) -> int:
        """Redis failures so far (``gateway_ratelimit_redis_errors_total``)."""
        return self.failures.errors

    async def close(self) -> None:
        store = self.redis
        if store is not None:
            await store.close()
