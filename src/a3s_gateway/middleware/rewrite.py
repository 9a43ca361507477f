"""``strip-prefix`` (SPEC §6.9): remove the first matching path prefix before forwarding."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .chain import Middleware, Reply, Request

_X_FORWARDED_PREFIX: Final = b"X-Forwarded-Prefix"


def strip_prefix(path: bytes, prefixes: tuple[bytes, ...]) -> tuple[bytes, bytes] | None:
    """``(new path, removed prefix)`` for the first prefix (list order) ``path`` starts with, else None.

    A raw string prefix, as Traefik: ``/api`` on ``/apiv2/x`` gives ``/v2/x``; an empty rest becomes ``/``.
    """
    for prefix in prefixes:
        if path.startswith(prefix):
            rest = path[len(prefix) :]
            if not rest.startswith(b"/"):
                rest = b"/" + rest
            return rest, prefix
    return None


class StripPrefix(Middleware):
    """``strip-prefix``: rewrites ``req.path`` (the query is kept) and sets ``X-Forwarded-Prefix``."""

    kind = "strip-prefix"
    has_request = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.prefixes = tuple(str(p).encode("utf-8") for p in params["prefixes"])

    def request(self, req: Request, now: float) -> Reply | None:
        stripped = strip_prefix(req.path, self.prefixes)
        if stripped is not None:
            req.path, prefix = stripped
            req.set(_X_FORWARDED_PREFIX, prefix)
            req.changed = True
        return None
