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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

JSON = b"application/json"


def _lower(name: bytes) -> bytes:
    return name.lower()


class Request:
    """The request as middlewares see and change it (built only for routes that have middlewares).

    ``headers`` keeps the client's raw-case names; ``set``/``remove`` are case-insensitive. ``path`` is the raw
    path without the query (strip-prefix changes it). ``changed`` tells the proxy to rebuild the upstream head
    from ``path`` and ``headers``.
    """

    __slots__ = ("body_length", "changed", "client_ip", "headers", "host", "method", "notes", "path", "proto",
                 "query", "router")

    def __init__(self, method: bytes, path: bytes, query: bytes | None, host: bytes,
                 headers: list[tuple[bytes, bytes]], client_ip: str, router: str, proto: bytes,
                 body_length: int, slots: int) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.headers = headers
        self.client_ip = client_ip
        self.router = router
        self.proto = proto
        self.body_length = body_length  # Content-Length, -1 chunked, 0 no body
        self.changed = False
        self.notes: list[Any] = [None] * slots

    def get(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (any case), or None."""
        low = _lower(name)
        for n, v in self.headers:
            if n.lower() == low:
                return v
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        low = _lower(name)
        return [v for n, v in self.headers if n.lower() == low]

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every ``name`` header with one ``name: value`` (appended at the end)."""
        self.remove(name)
        self.headers.append((name, value))
        self.changed = True

    def remove(self, name: bytes) -> None:
        low = _lower(name)
        kept = [(n, v) for n, v in self.headers if n.lower() != low]
        if len(kept) != len(self.headers):
            self.headers = kept
            self.changed = True

    def target(self) -> bytes:
        """Raw path plus query, as sent upstream."""
        return self.path if self.query is None else self.path + b"?" + self.query


class BodyFilter(Protocol):
    """Transforms a response body piece by piece (compress); ``finish`` returns the tail."""

    def feed(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class Response:
    """A response head in the response phase: upstream, gateway-generated (``local``) or a middleware's reply."""

    __slots__ = ("body_filter", "headers", "local", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], local: bool) -> None:
        self.status = status
        self.headers = headers
        self.local = local
        self.body_filter: BodyFilter | None = None

    def get(self, name: bytes) -> bytes | None:
        low = _lower(name)
        for n, v in self.headers:
            if n.lower() == low:
                return v
        return None

    def set(self, name: bytes, value: bytes) -> None:
        """Replace every ``name`` header with one ``name: value``."""
        self.remove(name)
        self.headers.append((name, value))

    def add(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def remove(self, name: bytes) -> None:
        low = _lower(name)
        self.headers = [(n, v) for n, v in self.headers if n.lower() != low]

    def remove_prefix(self, prefix: bytes) -> None:
        """Remove every header whose lower-case name starts with ``prefix`` (lower-case)."""
        self.headers = [(n, v) for n, v in self.headers if not n.lower().startswith(prefix)]


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

    def request(self, req: Request, now: float) -> Reply | None:
        return None

    async def request_async(self, req: Request, now: float) -> Reply | None:
        return self.request(req, now)

    def response(self, req: Request, resp: Response, now: float) -> None:
        return None

    def abandon(self, req: Request, now: float) -> None:
        return None

    async def close(self) -> None:
        """Release resources (connections to Redis, JWKS fetchers) when the instance is retired by a reload."""
        return None


class Chain:
    """The compiled middlewares of one router, in list order."""

    __slots__ = ("body_limit", "has_async", "has_response", "middlewares", "retry")

    def __init__(self, middlewares: list[Middleware]) -> None:
        for i, mw in enumerate(middlewares):
            mw.slot = i
        self.middlewares = tuple(middlewares)
        self.has_async = any(m.is_async for m in middlewares)
        self.has_response = any(m.has_response for m in middlewares)
        limits = [int(getattr(m, "max_body_bytes", 0)) for m in middlewares if m.kind == "body-limit"]
        self.body_limit = min(limits) if limits else 0
        self.retry: Any = next((m for m in middlewares if m.kind == "retry"), None)

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
