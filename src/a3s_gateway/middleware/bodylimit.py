"""``body-limit`` (SPEC §6.10): reject a declared ``Content-Length`` above the limit before any upstream work.

Chunked and HTTP/2 bodies (``body_length == -1``) have no declared size: the proxy counts them while streaming
against ``Chain.body_limit`` (the smallest ``max_body_bytes`` of the chain) and answers or aborts itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .chain import Middleware, Reply, Request, json_reply

_CLOSE: Final = ((b"Connection", b"close"),)


def too_large(max_bytes: int) -> Reply:
    """The 413 answer (also what the proxy sends when a streamed body goes over the limit before a response)."""
    return json_reply(413, {"error": "Request body too large", "max_bytes": max_bytes}, _CLOSE)


class BodyLimit(Middleware):
    """``body-limit``: 413 with ``Connection: close`` when ``Content-Length`` exceeds ``max_body_bytes``."""

    kind = "body-limit"
    has_request = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.max_body_bytes = int(params["max_body_bytes"])

    def request(self, req: Request, now: float) -> Reply | None:
        if req.body_length > self.max_body_bytes:
            return too_large(self.max_body_bytes)
        return None
