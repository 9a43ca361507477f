"""``headers`` (SPEC §6.8): set or delete request headers before forwarding and response headers on the way back.

The response phase runs on every response of the request, including gateway errors and later middlewares' replies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .chain import HeaderEdits, Middleware, Reply, Request, Response


def header_edits(mapping: Mapping[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
    """``{name: value}`` -> ``((name, value), ...)`` as bytes, in configuration order; an empty value deletes."""
    return tuple((str(name).encode("ascii"), str(value).encode("utf-8")) for name, value in mapping.items())


class Headers(Middleware):
    """``headers``: ``request_headers`` in the request phase, ``response_headers`` in the response phase."""

    kind = "headers"
    has_request = True
    has_response = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.request_edits = header_edits(params["request_headers"])
        self.response_edits = header_edits(params["response_headers"])
        # an instance that only edits one side stays out of the other phase
        self.has_request = bool(self.request_edits)
        self.has_response = bool(self.response_edits)
        # the usual case, prepared once: deletions first, then every set header appended in one pass
        self.request_removes, self.request_sets = _split(self.request_edits)
        self.response_removes, self.response_sets = _split(self.response_edits)

    def request(self, req: Request, now: float) -> Reply | None:
        _apply(req, self.request_edits, self.request_removes, self.request_sets)
        return None

    def response(self, req: Request, resp: Response, now: float) -> None:
        _apply(resp, self.response_edits, self.response_removes, self.response_sets)


def _apply(fields: Request | Response, edits: tuple[tuple[bytes, bytes], ...], removes: tuple[bytes, ...],
           sets: HeaderEdits | None) -> None:
    """Deletions, then the set headers appended in one pass; one by one, in order, without ``sets``."""
    if sets is None:
        for name, value in edits:
            if value:
                fields.set(name, value)
            else:
                fields.remove(name)
        return
    for name in removes:
        fields.remove(name)
    if sets.items:
        fields.set_many(sets)


def _split(edits: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[bytes, ...], HeaderEdits | None]:
    """(names to delete, the headers to set) — None when two names differ only in case: applied one by one."""
    lows = [name.lower() for name, _ in edits]
    if len(set(lows)) != len(lows):
        return (), None
    removes = tuple(name for name, value in edits if not value)
    return removes, HeaderEdits(tuple((name, value) for name, value in edits if value))
