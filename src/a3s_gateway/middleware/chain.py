"""The middleware chain (SPEC §6.0): request phase in list order, response phase in reverse.

A chain is compiled per router at configuration time: one ``Middleware`` instance per (router, middleware) pair,
carried across reloads while its configuration is unchanged (its state — buckets, breaker — survives). Routes
without middlewares never build any of these objects: the proxy's fast path is untouched.

The proxy drives a chain through three calls:

- ``request(req, now)`` (or ``await request_async(req, now)`` for middlewares with ``is_async``) may return a
  ``Reply``: the middleware answers the request itself; the response phase then runs for the middlewares *before*
  it only.
- ``response(req, resp, now)`` may change the status line's headers (``resp.headers``) of any response: upstream
  responses, gateway errors, other middlewares' replies. ``resp.body_filter`` (compress) transforms the body.
- ``abandon(req, now)``: the client left before a response head (a breaker's probe slot is given back).

Per-request scratch data of a middleware lives in ``req.notes[self.slot]`` (``slot`` = its index in the chain).

Compiled by mypyc together with the middlewares that run on every request (cors, headers, strip-prefix,
body-limit, ip-allow, circuit-breaker, rate-limit); the others (auth, compress, Redis) are interpreted subclasses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, Protocol

import orjson
from mypy_extensions import mypyc_attr

from ..http.hdrs import NAMES

JSON = b"application/json"


# Header names that middlewares pass in (configuration constants: the same bytes objects every request, so their
# hash is cached) -> lower-case form and ``hdrs`` id. Bounded: past the bound a name is computed, not stored.
_CACHE_MAX: Final = 4096
_LOWER: Final[dict[bytes, bytes]] = {}
_IDS: Final[dict[bytes, bytes]] = {}


def lower_name(name: bytes) -> bytes:
    """``name.lower()``, remembered for names seen before (a dict hit is cheaper than lower-casing)."""
    low = _LOWER.get(name)
    if low is None:
        low = name.lower()
        if len(_LOWER) < _CACHE_MAX:
            _LOWER[name] = low
    return low


def name_id(name: bytes) -> bytes:
    """The ``hdrs`` id of header ``name`` (any case; 0 for names without one) as one byte, remembered like
    ``lower_name``."""
    hid = _IDS.get(name)
    if hid is None:
        hid = bytes((NAMES.get(name.lower(), 0),))
        if len(_IDS) < _CACHE_MAX:
            _IDS[name] = hid
    return hid


def id_bits(ids: bytes) -> int:
    """Bit ``1 << id`` for each of the ``hdrs`` ids (``Request.edited``)."""
    bits = 0
    for hid in ids:
        bits |= 1 << hid
    return bits


def length_mask(lows: Iterable[bytes]) -> int:
    """For ``has_any``: bit n set when one of ``lows`` is n bytes long (-1, every bit, when one is 62 or longer)."""
    mask = 0
    for low in lows:
        n = len(low)
        if n >= 62:
            return -1
        mask |= 1 << n
    return mask


class _Joined:
    """One remembered concatenation ``a + b``: the header ids of the requests (or responses) of a route repeat
    request after request, and two short comparisons cost less than allocating the bytes again."""

    __slots__ = ("a", "ab", "b")

    def __init__(self) -> None:
        self.a = b""
        self.b = b""
        self.ab = b""

    def join(self, a: bytes, b: bytes) -> bytes:
        if a == self.a and b == self.b:
            return self.ab
        ab = a + b
        self.a = a
        self.b = b
        self.ab = ab
        return ab


# one for the requests' ids, one for the responses', one for appended ids (a response's second batch)
_REQUEST_IDS: Final = _Joined()
_RESPONSE_IDS: Final = _Joined()
_ADDED_IDS: Final = _Joined()
# ``[None] * n`` for the notes of a chain of n middlewares, copied (a plain copy is cheaper than a repetition)
_NOTES_MAX: Final = 16
_NOTES: Final[list[list[Any]]] = [[None] * n for n in range(_NOTES_MAX + 1)]


class HeaderEdits:
    """Headers set together, prepared once: their lower-case names, ids and length mask. The names must be
    distinct (ignoring case): ``set_many`` appends them all."""

    __slots__ = ("bits", "ids", "items", "listed", "lows", "mask")

    def __init__(self, items: tuple[tuple[bytes, bytes], ...]) -> None:
        self.items = items
        self.listed = list(items)  # for ``shared + listed``: a shared list's copy and the appended headers at once
        self.lows = tuple(lower_name(name) for name, _ in items)
        if len(set(self.lows)) != len(self.lows):
            raise ValueError("HeaderEdits: header names must be distinct")
        self.ids = b"".join([name_id(name) for name, _ in items])
        self.mask = length_mask(self.lows)
        self.bits = id_bits(self.ids)


class _Fields:
    """Header list with case-insensitive access; lower-case names are computed once, when a removal needs them."""

    __slots__ = ("_added", "_base", "_lens", "_lens_ok", "_lows", "_shared", "headers")

    def __init__(self, headers: list[tuple[bytes, bytes]], shared: bool = False) -> None:
        self.headers = headers
        # the list belongs to someone else (the parsed request head): copied before the first append
        self._shared = shared
        self._lows: list[bytes] | None = None
        # headers[:_base] are the original ones, in order; -1 once one of them was removed
        self._base = len(headers)
        # the ``hdrs`` ids of the headers appended by ``add`` while ``_base`` >= 0
        self._added = b""
        # bit min(len(name), 61) of every header name (``_lens_ok``: computed by the first lookup, kept up to date by
        # appends, recomputed after a removal): a wanted name whose length no header has is absent without a comparison
        self._lens = 0
        self._lens_ok = False

    def header_ids(self, base_ids: bytes) -> bytes:
        """The ``hdrs`` id of every header now in the list, given the ids of the original headers (only the
        appended headers are classified when none of the original ones was removed)."""
        base = self._base
        if base >= 0:
            headers = self.headers
            if base == len(headers):
                return base_ids
            added = self._added
            if base + len(added) == len(headers):
                return (_REQUEST_IDS if isinstance(self, Request) else _RESPONSE_IDS).join(base_ids, added)
            return base_ids + b"".join([name_id(n) for n, _ in headers[base:]])
        names = NAMES
        return bytes([names.get(low, 0) for low in self._names()])

    def _names(self) -> list[bytes]:
        lows = self._lows
        if lows is None:
            lows = self._lows = [n.lower() for n, _ in self.headers]
        return lows

    def _find(self, low: bytes) -> int:
        """Index of the first header named ``low`` (lower-case), or -1. Only names of the same length are
        lower-cased: most lookups touch no name at all."""
        lows = self._lows
        if lows is not None:
            return lows.index(low) if low in lows else -1
        n = len(low)
        if n == 0 or not (self._len_bits() >> (n if n < 61 else 61)) & 1:
            return -1
        first = low[0]
        headers = self.headers
        for i in range(len(headers)):
            name = headers[i][0]
            if len(name) == n:
                c = name[0]  # lower-cased only when the first byte matches in either case
                if (c == first or c | 0x20 == first) and (name == low or name.lower() == low):
                    return i
        return -1

    def _len_bits(self) -> int:
        """Bit min(len(name), 61) of every header name, computed once and kept up to date by appends."""
        if self._lens_ok:
            return self._lens
        lens = 0
        headers = self.headers
        for i in range(len(headers)):
            n = len(headers[i][0])
            lens |= 1 << (n if n < 61 else 61)
        self._lens = lens
        self._lens_ok = True
        return lens

    def get(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (any case), or None."""
        i = self._find(lower_name(name))
        return self.headers[i][1] if i >= 0 else None

    def get_lower(self, low: bytes) -> bytes | None:
        """``get`` of a name already in lower case."""
        i = self._find(low)
        return self.headers[i][1] if i >= 0 else None

    def get_all(self, name: bytes) -> list[bytes]:
        low = lower_name(name)
        return [v for n, (_, v) in zip(self._names(), self.headers, strict=True) if n == low]

    def _drop(self, low: bytes) -> bool:
        if self._find(low) < 0:
            return False
        lows = self._names()
        kept = [(n, h) for n, h in zip(lows, self.headers, strict=True) if n != low]
        self._lows = [n for n, _ in kept]
        self.headers = [h for _, h in kept]
        self._shared = False
        self._base = -1
        self._lens_ok = False
        return True

    def add(self, name: bytes, value: bytes) -> None:
        """Append ``name: value`` (other same-named headers stay)."""
        if self._shared:
            self.headers = self.headers.copy()
            self._shared = False
        self.headers.append((name, value))
        if self._base >= 0:
            added = self._added
            # the first: the cached id itself
            self._added = _ADDED_IDS.join(added, name_id(name)) if len(added) else name_id(name)
        if self._lens_ok:
            n = len(name)
            self._lens |= 1 << (n if n < 61 else 61)
        if self._lows is not None:
            self._lows.append(lower_name(name))

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every ``name`` header (any case) with one ``name: value``, appended at the end."""
        self._drop(lower_name(name))
        self.add(name, value)

    def remove(self, name: bytes) -> bool:
        """Remove every ``name`` header (any case); whether there was one."""
        return self._drop(lower_name(name))

    def set_many(self, edits: HeaderEdits) -> None:
        """``set`` of each of ``edits``' headers, in one pass over the list when none of them is there yet."""
        if self.has_any(edits.lows, edits.mask):
            for name, value in edits.items:
                self.set(name, value)
        elif self._shared:
            self.headers = self.headers + edits.listed  # one allocation (a copy, then an extend, takes two)
            self._shared = False
            self._appended(edits.lows, edits.ids, edits.mask)
        else:
            self.append_new(edits.items, edits.lows, edits.ids, edits.mask)

    def has_any(self, lows: tuple[bytes, ...], mask: int = -1) -> bool:
        """Whether a header named one of ``lows`` (lower-case) is in the list. ``mask``: ``length_mask(lows)``,
        so that only names of a length in it are compared."""
        known = self._lows
        if known is not None:
            for low in lows:
                if low in known:
                    return True
            return False
        if not self._len_bits() & mask:
            return False
        headers = self.headers
        for i in range(len(headers)):
            name = headers[i][0]
            n = len(name)
            if n == 0 or (n < 62 and not (mask >> n) & 1):
                continue
            c = name[0]
            for low in lows:
                if len(low) == n:
                    first = low[0]
                    if (c == first or c | 0x20 == first) and name.lower() == low:
                        return True
        return False

    def append_new(self, items: tuple[tuple[bytes, bytes], ...], lows: tuple[bytes, ...], ids: bytes,
                   mask: int = -1) -> None:
        """Append ``items``, headers with distinct names ``lows`` (lower-case) that ``has_any`` found in none of the
        list's headers; ``ids``: their ``hdrs`` ids (``name_id``); ``mask``: ``length_mask(lows)``."""
        if self._shared:
            self.headers = self.headers.copy()
            self._shared = False
        self.headers.extend(items)
        self._appended(lows, ids, mask)

    def _appended(self, lows: tuple[bytes, ...], ids: bytes, mask: int) -> None:
        """The bookkeeping of ``append_new`` once the headers are in the list."""
        if self._base >= 0:
            added = self._added
            # the first batch: the prepared ids themselves
            self._added = _ADDED_IDS.join(added, ids) if len(added) else ids
        self._lens |= mask
        known = self._lows
        if known is not None:
            known.extend(lows)


class Request(_Fields):
    """The request as middlewares see and change it (built only for routes that have middlewares).

    ``headers`` keeps the client's raw-case names; ``set``/``remove`` are case-insensitive. ``path`` is the raw
    path without the query (strip-prefix changes it). ``changed`` tells the proxy to rebuild the upstream head
    from ``path`` and ``headers``. The client's X-Forwarded-* headers are in ``headers`` as received: ``trusted``
    says whether they count (the peer is in the entrypoint's ``trusted_ips``, SPEC §5.2), ``peer`` is the TCP peer's
    address (``client_ip`` when empty), which the gateway appends to X-Forwarded-For.
    """

    __slots__ = ("ai", "api_key", "body_length", "changed", "claims", "client_ip", "edited", "host", "method", "notes",
                 "path", "peer", "proto", "query", "router", "trusted")

    def __init__(self, method: bytes, path: bytes, query: bytes | None, host: bytes,
                 headers: list[tuple[bytes, bytes]], client_ip: str, router: str, proto: bytes,
                 body_length: int, slots: int, trusted: bool = False, peer: str = "") -> None:
        # ``_Fields.__init__(headers, shared=True)``, inlined (one call less per request)
        self.headers = headers
        self._shared = True
        self._lows = None
        self._base = len(headers)
        self._added = b""
        self._lens = 0
        self._lens_ok = False
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.client_ip = client_ip
        self.trusted = trusted
        self.peer = peer
        self.router = router
        self.proto = proto
        self.body_length = body_length  # Content-Length, -1 chunked, 0 no body
        self.changed = False
        # bit ``1 << id`` of every ``hdrs`` id set or removed through ``set``/``remove``/``set_many``: forwarding
        # headers a middleware set or deleted are sent as it left them (SPEC §5.2, §6.8)
        self.edited = 0
        self.notes: list[Any] = _NOTES[slots].copy() if slots <= _NOTES_MAX else [None] * slots
        # what earlier middlewares established, for token-limit keys (SPEC §16.4): the claims of a verified JWT, the
        # key an api-key middleware accepted
        self.claims: dict[str, Any] | None = None
        self.api_key: bytes | None = None
        self.ai: Any = None  # an inspected request's ``inspect.RequestInfo`` (SPEC §16.1), else None

    def set(self, name: bytes, value: bytes) -> None:
        super().set(name, value)
        self.changed = True
        self.edited |= 1 << name_id(name)[0]

    def remove(self, name: bytes) -> bool:
        self.edited |= 1 << name_id(name)[0]  # also when absent: the gateway must not add it either
        if super().remove(name):
            self.changed = True
            return True
        return False

    def set_many(self, edits: HeaderEdits) -> None:
        super().set_many(edits)
        self.changed = True
        self.edited |= edits.bits

    def target(self) -> bytes:
        """Raw path plus query, as sent upstream."""
        return self.path if self.query is None else self.path + b"?" + self.query


class BodyFilter(Protocol):
    """Transforms a response body piece by piece (compress); ``finish`` returns the tail."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class Response(_Fields):
    """A response head in the response phase: upstream, gateway-generated (``local``) or a middleware's reply."""

    __slots__ = ("body_filter", "local", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], local: bool) -> None:
        super().__init__(headers)
        self.status = status
        self.local = local
        self.body_filter: BodyFilter | None = None

    def remove_prefix(self, prefix: bytes) -> None:
        """Remove every header whose lower-case name starts with ``prefix`` (lower-case)."""
        lows = self._names()
        if not any(n.startswith(prefix) for n in lows):
            return
        kept = [(n, h) for n, h in zip(lows, self.headers, strict=True) if not n.startswith(prefix)]
        self._lows = [n for n, _ in kept]
        self.headers = [h for _, h in kept]
        self._shared = False
        self._base = -1
        self._lens_ok = False


class Reply:
    """A middleware's own answer to a request. ``headers`` exclude Content-Length/Date (the proxy adds them)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def json_reply(status: int, body: dict[str, Any], headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
    """A JSON reply: ``Content-Type: application/json`` plus ``headers``."""
    return Reply(status, [(b"Content-Type", JSON), *headers], orjson.dumps(body))


@mypyc_attr(allow_interpreted_subclasses=True)
class Middleware:
    """One (router, middleware) instance. Subclasses override what they use and set the flags."""

    kind = ""
    has_request = False
    is_async = False  # the request phase awaits (auth services, Redis): ``request_async``
    has_response = False

    def __init__(self, name: str, router: str) -> None:
        self.name = name
        self.router = router
        self.slot = 0  # index in the router's chain (req.notes)
        # Compiled, the flags are instance fields: a class attribute of an interpreted subclass (``kind = "jwt"``,
        # ``is_async = True``) is copied into them so the proxy's compiled code reads the subclass's values.
        cls = type(self)
        kind = getattr(cls, "kind", None)
        if isinstance(kind, str):
            self.kind = kind
        flag = getattr(cls, "has_request", None)
        if isinstance(flag, bool):
            self.has_request = flag
        flag = getattr(cls, "is_async", None)
        if isinstance(flag, bool):
            self.is_async = flag
        flag = getattr(cls, "has_response", None)
        if isinstance(flag, bool):
            self.has_response = flag

    def request(self, req: Request, now: float) -> Reply | None:
        return None

    async def request_async(self, req: Request, now: float) -> Reply | None:
        return self.request(req, now)

    def response(self, req: Request, resp: Response, now: float) -> None:
        return None

    def abandon(self, req: Request, now: float) -> None:
        return None

    def settle(self, req: Request, usage: Any, now: float) -> None:
        """The exchange is over (response ended or failed, client gone, local answer): ``usage`` is the request's
        ``UsageMeter`` after ``finish`` (None: not inspected). Called for the chain's ``accounting`` middlewares."""
        return None

    async def close(self) -> None:
        """Release resources (connections to Redis, JWKS fetchers) when the instance is retired by a reload."""
        return None


class Chain:
    """The compiled middlewares of one router, in list order."""

    __slots__ = ("accounting", "body_limit", "has_async", "has_response", "middlewares", "retry")

    def __init__(self, middlewares: list[Middleware]) -> None:
        for i, mw in enumerate(middlewares):
            mw.slot = i
        self.middlewares = tuple(middlewares)
        self.has_async = any(m.is_async for m in middlewares)
        self.has_response = any(m.has_response for m in middlewares)
        limits = [int(getattr(m, "max_body_bytes", 0)) for m in middlewares if m.kind == "body-limit"]
        self.body_limit = min(limits) if limits else 0
        self.retry: Any = next((m for m in middlewares if m.kind == "retry"), None)
        # settled at the end of every exchange with its token usage (token-limit, SPEC §16.4)
        self.accounting = tuple(m for m in middlewares if m.kind == "token-limit")

    def __len__(self) -> int:
        return len(self.middlewares)

    def run_response(self, req: Request, resp: Response, upto: int, now: float, start: int = 0) -> None:
        """Response phase of the middlewares ``start`` ≤ i < ``upto``, in reverse order."""
        mws = self.middlewares
        i = upto - 1
        while i >= start:
            mw = mws[i]
            if mw.has_response:
                mw.response(req, resp, now)
            i -= 1
