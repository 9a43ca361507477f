"""Sticky sessions (SPEC §7.5): the cookie itself names the backend — no session table, so every worker and every
gateway instance honours it.

The value is the first 16 hex characters of SHA-256(``<service>|<backend URL>``): stable across restarts, opaque
(it reveals no address). Every response of the service re-issues the cookie, so ``ttl`` is an inactivity timeout.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.model import StickyConfig
    from .balancer import Backend


def cookie_value(service: str, url: str) -> str:
    """The cookie value that pins ``url`` of ``service``."""
    return hashlib.sha256(f"{service}|{url}".encode()).hexdigest()[:16]


class Sticky:
    """One service's cookie affinity: cookie value → backend, and the ``Set-Cookie`` line of each backend."""

    def __init__(self, service: str, cfg: StickyConfig, backends: list[Backend]) -> None:
        self.name = cfg.cookie.encode()
        self.by_value: dict[bytes, Backend] = {}
        self.lines: dict[str, bytes] = {}
        attrs = f"; Path=/; Max-Age={max(1, math.ceil(cfg.ttl))}"
        if cfg.http_only:
            attrs += "; HttpOnly"
        if cfg.secure:
            attrs += "; Secure"
        attrs += "; SameSite=" + {"lax": "Lax", "strict": "Strict", "none": "None"}[cfg.same_site]
        for b in backends:
            value = cookie_value(service, b.url)
            self.by_value[value.encode()] = b
            self.lines[b.url] = f"Set-Cookie: {cfg.cookie}={value}{attrs}\r\n".encode()

    def pinned(self, headers: list[tuple[bytes, bytes]]) -> Backend | None:
        """The eligible backend named by the request's cookie, or None (no cookie, unknown value, not eligible)."""
        name = self.name
        for key, value in headers:
            if len(key) != 6 or key.lower() != b"cookie":
                continue
            for part in value.split(b";"):
                k, sep, v = part.strip().partition(b"=")
                if sep and k == name:
                    backend = self.by_value.get(v.strip().strip(b'"'))
                    if backend is not None and backend.eligible:
                        return backend
        return None
