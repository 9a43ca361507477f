"""``cors`` (SPEC §6.7): answers preflights itself and sets the CORS headers of every other response.

The response phase runs on every response of a request with an ``Origin`` — upstream responses, gateway errors and
the replies of later middlewares (401, 429) alike — so browsers see the CORS headers on errors too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .chain import Middleware, Reply, Request, Response, json_reply

_OPTIONS: Final = b"OPTIONS"
_ORIGIN_LOW: Final = b"origin"
_REQ_METHOD: Final = b"Access-Control-Request-Method"
_REQ_HEADERS: Final = b"Access-Control-Request-Headers"
_ALLOW_ORIGIN: Final = b"Access-Control-Allow-Origin"
_ALLOW_METHODS: Final = b"Access-Control-Allow-Methods"
_ALLOW_HEADERS: Final = b"Access-Control-Allow-Headers"
_ALLOW_CREDENTIALS: Final = b"Access-Control-Allow-Credentials"
_EXPOSE_HEADERS: Final = b"Access-Control-Expose-Headers"
_MAX_AGE: Final = b"Access-Control-Max-Age"
_VARY: Final = b"Vary"
_PREFLIGHT_VARY: Final = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_AC_PREFIX: Final = b"access-control-"
# Notes of a non-preflight request with an Origin: the origin (allowed) or this marker (not allowed).
_DENIED: Final = b""


class OriginSet:
    """Allowed origins, prepared once: exact (lower-case), ``*``, and ``scheme://*.domain[:port]`` patterns."""

    def __init__(self, patterns: tuple[str, ...] | list[str]) -> None:
        self.any = False
        self.exact: set[bytes] = set()
        self.wildcards: list[tuple[bytes, bytes]] = []  # (b"scheme://", b".domain[:port]")
        for pattern in patterns:
            p = pattern.lower()
            if p == "*":
                self.any = True
                continue
            scheme, sep, rest = p.partition("://")
            if sep and rest.startswith("*."):
                self.wildcards.append(((scheme + "://").encode(), rest[1:].encode()))
            else:
                self.exact.add(p.encode())

    def allows(self, origin: bytes) -> bool:
        if self.any:
            return True
        o = origin.lower()
        if o in self.exact:
            return True
        for scheme, suffix in self.wildcards:
            if o.startswith(scheme) and o.endswith(suffix):
                sub = o[len(scheme) : len(o) - len(suffix)]
                # any depth of subdomains, but a host only: no port, path or userinfo before the domain
                if sub and b":" not in sub and b"/" not in sub and b"@" not in sub:
                    return True
        return False


def _tokens(values: list[bytes]) -> list[bytes]:
    """The comma-separated items of one or more header values, trimmed, empty items dropped."""
    out: list[bytes] = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if item:
                out.append(item)
    return out


class Cors(Middleware):
    """``cors``: preflight → 204 or 403, not forwarded; other requests with an ``Origin`` get CORS headers."""

    kind = "cors"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.origins = OriginSet(tuple(params["allowed_origins"]))
        methods = tuple(str(m) for m in params["allowed_methods"])
        self.methods = frozenset(m.encode() for m in methods)  # case-sensitive, as the Fetch standard compares
        headers = tuple(str(h) for h in params["allowed_headers"])
        self.any_header = "*" in headers
        self.headers = frozenset(h.lower().encode() for h in headers if h != "*")
        self.allow_methods = ", ".join(methods).encode()
        self.allow_headers = ", ".join(h for h in headers if h != "*").encode()
        expose = tuple(str(h) for h in params["expose_headers"])
        self.expose = ", ".join(expose).encode() if expose else b""
        self.credentials = bool(params["allow_credentials"])
        self.max_age = str(int(params["max_age"])).encode()

    def request(self, req: Request, now: float) -> Reply | None:
        origin = req.get_lower(_ORIGIN_LOW)
        if origin is None:
            return None
        allowed = self.origins.allows(origin)
        if req.method == _OPTIONS:
            method = req.get(_REQ_METHOD)
            if method is not None:
                return self.preflight(req, origin, method.strip(b" \t"), allowed)
        req.notes[self.slot] = origin if allowed else _DENIED
        return None

    def preflight(self, req: Request, origin: bytes, method: bytes, allowed: bool) -> Reply:
        """The answer to a preflight request."""
        if not allowed:
            return json_reply(403, {"error": "CORS origin not allowed"})
        if method not in self.methods:
            return json_reply(403, {"error": "CORS method not allowed"})
        requested = _tokens(req.get_all(_REQ_HEADERS))
        if not self.any_header:
            for h in requested:
                if h.lower() not in self.headers:
                    return json_reply(403, {"error": "CORS header not allowed"})
        headers: list[tuple[bytes, bytes]] = [(_ALLOW_ORIGIN, origin), (_ALLOW_METHODS, self.allow_methods)]
        allow_headers = b", ".join(requested) if self.any_header else self.allow_headers
        if allow_headers:
            headers.append((_ALLOW_HEADERS, allow_headers))
        headers.append((_MAX_AGE, self.max_age))
        if self.credentials:
            headers.append((_ALLOW_CREDENTIALS, b"true"))
        headers.append((_VARY, _PREFLIGHT_VARY))
        return Reply(204, headers, b"")

    def response(self, req: Request, resp: Response, now: float) -> None:
        origin = req.notes[self.slot]
        if origin is None:
            return  # no Origin: not a CORS request
        resp.remove_prefix(_AC_PREFIX)
        if origin == _DENIED:
            return
        resp.add(_ALLOW_ORIGIN, origin)
        add_vary_origin(resp)
        if self.expose:
            resp.add(_EXPOSE_HEADERS, self.expose)
        if self.credentials:
            resp.add(_ALLOW_CREDENTIALS, b"true")


def add_vary_origin(resp: Response) -> None:
    """Append ``Origin`` to the response's ``Vary`` (a new header when there is none; nothing if already listed)."""
    headers = resp.headers
    last = -1
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            for item in value.split(b","):
                token = item.strip(b" \t").lower()
                if token == b"origin" or token == b"*":
                    return
            last = i
    if last < 0:
        resp.add(_VARY, b"Origin")
    else:
        name, value = headers[last]
        value = value.rstrip(b" \t")
        headers[last] = (name, value + b", Origin" if value else b"Origin")
