"""Header filtering and head serialisation, typed: the compiled twin (``_headers_c``, Cython pure mode) or the
interpreted one (``_headers_py``), picked once here. Import these names, never a twin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._compat import load

__all__ = ["IMPLEMENTATION", "interim_head", "request_head", "response_head"]

_impl: Any = load("header filter")
IMPLEMENTATION: Final[str] = _impl.__name__

if TYPE_CHECKING:
    def request_head(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], header_ids: bytes,
                     connection_tokens: tuple[bytes, ...], host_value: bytes | None, orig_host: bytes,
                     peer_ip: bytes, real_ip: bytes, proto: bytes, port: bytes, trusted: bool, framing: bytes,
                     trace_drop: int = 0, edited: int = 0) -> tuple[bytes, bytes]:
        """The upstream request head in one buffer and its request id (SPEC §5.2, §5.3)."""

    def response_head(status_line: bytes, headers: list[tuple[bytes, bytes]], header_ids: bytes,
                      connection_tokens: tuple[bytes, ...], framing: bytes, extra: bytes) -> bytes:
        """The downstream response head in one buffer, hop-by-hop headers removed (SPEC §5.4)."""

    def interim_head(status_line: bytes, headers: list[tuple[bytes, bytes]], header_ids: bytes) -> bytes:
        """A 1xx head relayed as received minus hop-by-hop headers."""
else:  # the twin's own functions: no wrapper call on the hot path
    request_head = _impl.request_head
    response_head = _impl.response_head
    interim_head = _impl.interim_head
