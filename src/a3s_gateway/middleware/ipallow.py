"""``ip-allow`` (SPEC §6.13): 403 unless the client address lies in ``allowed_ips``.

Compiled by mypyc (the same source runs interpreted): the address choice is a plain function over ``str``/``bytes``
and the network test is the compiled ``netaddr.IPSet``. ``IpAllow`` subclasses the interpreted
``chain.Middleware``, so it stays a regular Python class under mypyc.

The request's ``X-Forwarded-For`` is the one the client (peer) sent: the proxy appends the peer address only when it
builds the upstream head, after the middlewares (as Traefik). So ``depth = 1`` is the rightmost received entry, and
``trusted_proxies`` walks leftwards starting from the peer, taken as ``req.client_ip`` (the peer itself unless the
entrypoint's ``trusted_ips`` already resolved the client, SPEC §5.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..netaddr import IPSet
from .chain import Middleware, Reply, Request, json_reply

_XFF: Final = b"X-Forwarded-For"
_FORBIDDEN: Final = {"error": "Forbidden"}


def forwarded_entries(req: Request) -> list[str]:
    """All ``X-Forwarded-For`` entries of the request, left to right, trimmed (several header lines joined)."""
    out: list[str] = []
    for value in req.get_all(_XFF):
        for item in value.decode("latin-1").split(","):
            item = item.strip(" \t")
            if item:
                out.append(item)
    return out


def pick_address(req: Request, trusted: IPSet | None, depth: int) -> str:
    """The address to check; ``""`` when there is none (``depth`` beyond the header), which is never allowed."""
    if depth > 0:
        entries = forwarded_entries(req)
        n = len(entries)
        return entries[n - depth] if depth <= n else ""
    peer = req.client_ip
    if trusted is None or not trusted.contains(peer):
        return peer
    entries = forwarded_entries(req)
    i = len(entries) - 1
    while i >= 0:
        entry = entries[i]
        # an unparsable entry is not trusted: it is picked and matches no network (denied, never the peer)
        if not trusted.contains(entry):
            return entry
        i -= 1
    return entries[0] if entries else peer  # every hop trusted: the leftmost, as SPEC §5.2


_SEEN_MAX = 4096


class IpAllow(Middleware):
    """``ip-allow``: 403 ``{"error":"Forbidden"}`` for addresses outside ``allowed_ips`` (IPv4-mapped IPv6 as IPv4)."""

    kind = "ip-allow"
    has_request = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.allowed = IPSet([str(n) for n in params["allowed_ips"]])
        proxies = [str(n) for n in params["trusted_proxies"]]
        self.trusted: IPSet | None = IPSet(proxies) if proxies else None
        self.depth = int(params["depth"])
        self._seen: dict[str, bool] = {}
        # the address decided last and its decision: a keep-alive connection asks about one address again and again
        self._last = ""
        self._last_allowed = False

    def request(self, req: Request, now: float) -> Reply | None:
        address = pick_address(req, self.trusted, self.depth)
        if address == self._last and address:
            if self._last_allowed:
                return None
            return json_reply(403, _FORBIDDEN)
        allowed = self._seen.get(address)
        if allowed is None:
            # parsing an address costs microseconds: decisions are remembered (a bounded table, cleared when full)
            allowed = self.allowed.contains(address)
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen[address] = allowed
        self._last = address
        self._last_allowed = allowed
        if allowed:
            return None
        return json_reply(403, _FORBIDDEN)
