"""``forward-auth`` middleware (SPEC §6.4): ask an authorization service about each request.

The auth request carries the selected client headers plus ``X-Forwarded-Method/Proto/Host/Uri/For``; a 2xx answer
lets the request continue with the listed auth-response headers copied onto it, any other answer goes to the client
as is. The auth response body is read whole (bounded to 1 MiB) rather than streamed: it is a small login redirect or
error page, and the proxy sends a middleware's reply in one piece.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..http import hdrs
from ..http.client import MAX_BODY, ConnectError, FetchError, Target, fetch
from ..observability.log_limit import RateLimitedLog
from .chain import Middleware, Reply, Request, json_reply

log = logging.getLogger("a3s_gateway.middleware.forward_auth")

_HOP_BY_HOP: Final = frozenset(
    (b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
     b"trailer", b"transfer-encoding", b"upgrade")
)
# never sent to the auth service: hop-by-hop, framing, and the headers this middleware sets itself
_NOT_SENT: Final = _HOP_BY_HOP | frozenset(
    (b"content-length", b"host", b"x-forwarded-method", b"x-forwarded-proto", b"x-forwarded-host",
     b"x-forwarded-uri", b"x-forwarded-for")
)
# never relayed from a denying auth response: the proxy frames the reply and adds Date itself
_NOT_RELAYED: Final = _HOP_BY_HOP | frozenset((b"content-length", b"date"))
_XFP_BIT: Final = 1 << hdrs.X_FORWARDED_PROTO  # in Request.edited
_XFH_BIT: Final = 1 << hdrs.X_FORWARDED_HOST
_XFF_BIT: Final = 1 << hdrs.X_FORWARDED_FOR
_UNAVAILABLE: Final = {"error": "Auth service unavailable"}
_TIMEOUT: Final = {"error": "Auth service timeout"}


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-case header names listed in ``Connection`` (hop-by-hop by declaration)."""
    names: set[bytes] = set()
    for n, v in headers:
        if n.lower() == b"connection":
            names.update(t.strip().lower() for t in v.split(b","))
    return frozenset(names)


def forwarded_values(req: Request) -> tuple[tuple[bytes, bytes], ...]:
    """X-Forwarded-Proto, -Host, -Uri and -For as the backend would get them at this point (SPEC §5.2): a value an
    earlier middleware set, a trusted peer's, else the gateway's own — the scheme, the host routing used and the peer
    appended to X-Forwarded-For. A client cannot choose what the auth service judges by."""
    edited = req.edited
    trusted = req.trusted
    proto = req.get(b"X-Forwarded-Proto") if trusted or edited & _XFP_BIT else None
    host = req.get(b"X-Forwarded-Host") if trusted or edited & _XFH_BIT else None
    xff = req.get_all(b"X-Forwarded-For")
    if not (edited & _XFF_BIT and xff):
        xff.append((req.peer or req.client_ip).encode("ascii"))
    return (
        (b"X-Forwarded-Proto", proto or req.proto),
        (b"X-Forwarded-Host", host or req.host),
        (b"X-Forwarded-Uri", req.target()),
        (b"X-Forwarded-For", b", ".join(xff)),
    )


class ForwardAuth(Middleware):
    """``forward-auth``: the request continues only when the authorization service answers 2xx."""

    kind = "forward-auth"
    has_request = True
    is_async = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any], *,
                 ssl_context: ssl.SSLContext | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name, router)
        self._target = Target(params["forward_auth_url"], ssl_context)  # its ``url`` is redacted (SPEC §11.1)
        # one failing auth service fails every request: one warning per kind every 10 s (SPEC §11.5)
        self._log = RateLimitedLog(log, clock=clock)
        self._method: bytes = params["forward_auth_method"].encode("ascii")
        self._timeout = float(params["forward_auth_timeout"])
        selected = params["forward_auth_request_headers"]
        self._selected = frozenset(h.lower().encode("latin-1") for h in selected) if selected else None
        copied = params["forward_auth_response_headers"]
        self._copied = tuple((h.encode("latin-1"), h.lower().encode("latin-1")) for h in copied)
        # POST without a body still says so: some servers wait for a body when neither framing header is present.
        self._extra = ((b"Content-Length", b"0"),) if self._method == b"POST" else ()

    def _auth_headers(self, req: Request) -> list[tuple[bytes, bytes]]:
        dropped = _connection_tokens(req.headers)
        selected = self._selected
        out = [
            (n, v)
            for n, v in req.headers
            if (low := n.lower()) not in _NOT_SENT and low not in dropped and (selected is None or low in selected)
        ]
        out += (
            (b"X-Forwarded-Method", req.method),
            *forwarded_values(req),
            *self._extra,
        )
        return out

    def request(self, req: Request, now: float) -> Reply | None:
        """Not usable synchronously: failing closed beats letting the request through unchecked."""
        raise RuntimeError("forward-auth is asynchronous: call request_async")

    async def request_async(self, req: Request, now: float) -> Reply | None:
        try:
            res = await asyncio.wait_for(
                fetch(self._target, self._method, self._auth_headers(req), MAX_BODY), self._timeout
            )
        except asyncio.TimeoutError:
            self._warn(req, "timeout", "auth service timeout", "timeout")
            return json_reply(504, _TIMEOUT)
        except ConnectError as exc:
            self._warn(req, "unavailable", "auth service unavailable", str(exc))
            return json_reply(502, _UNAVAILABLE)
        except FetchError as exc:  # connection broken or malformed response after connecting
            self._warn(req, "failed", "auth service failed", str(exc))
            return json_reply(502, _UNAVAILABLE)
        if 200 <= res.status < 300:
            for name, low in self._copied:
                values = [v for n, v in res.headers if n.lower() == low]
                req.remove(name)  # also drops a client-sent copy: clients cannot spoof these
                for v in values:
                    req.add(name, v)
                    req.changed = True
            return None
        dropped = _connection_tokens(res.headers)
        headers = [(n, v) for n, v in res.headers if (low := n.lower()) not in _NOT_RELAYED and low not in dropped]
        return Reply(res.status, headers, res.body)

    def _warn(self, req: Request, kind: str, message: str, error: str) -> None:
        rid = req.get(b"X-Request-Id")
        self._log.warning(kind, message, fields={
            "router": self.router, "middleware": self.name, "url": self._target.url, "error": error,
            "request_id": rid.decode("latin-1") if rid is not None else None,
        })
