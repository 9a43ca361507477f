"""The HTTP/1 head parser and chunked decoder, typed: the compiled scanner (``_parser_c``: Cython over
``csrc/http1.c``) or its pure twin (``_parser_py``), picked once here (``A3S_GATEWAY_NO_EXTENSIONS``, SPEC-less
build detail: see ``_compat``). Import these names, never a twin.

The heads are described by Protocols: mypy checks every use, and mypyc (which compiles the connection classes)
erases a Protocol to ``object``, so objects of either twin flow through compiled code without a class check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from .._compat import load

__all__ = ["IMPLEMENTATION", "ChunkedDecoder", "RequestHead", "ResponseHead", "new_chunked_decoder",
           "parse_request", "parse_response"]


class RequestHead(Protocol):
    """A parsed request head (RFC 9112 §3); see ``_parser_py.RequestHead`` for each attribute."""

    method: bytes
    target: bytes
    path: bytes
    query: bytes | None
    authority: bytes
    version: int
    headers: list[tuple[bytes, bytes]]
    header_ids: bytes
    host: bytes
    content_length: int
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    upgrade: bool
    te_trailers: bool
    connection_tokens: tuple[bytes, ...]
    head_len: int

    def request_fields(self) -> tuple[bytes, bytes, bytes | None, bytes, list[tuple[bytes, bytes]], int]: ...


class ResponseHead(Protocol):
    """A parsed response head (RFC 9112 §4); see ``_parser_py.ResponseHead``."""

    status: int
    reason: bytes
    version: int
    headers: list[tuple[bytes, bytes]]
    header_ids: bytes
    content_length: int
    chunked: bool
    keep_alive: bool
    upgrade: bool
    event_stream: bool
    connection_tokens: tuple[bytes, ...]
    head_len: int


class ChunkedDecoder(Protocol):
    """Incremental chunked-body decoder: ``feed`` -> (payload pieces, bytes consumed); ``done``, ``trailers``."""

    done: bool
    trailers: list[tuple[bytes, bytes]]

    def feed(self, data: bytes) -> tuple[list[bytes], int]: ...


_impl: Any = load("http parser")
#: the module in use (``version -v`` and the tests report it)
IMPLEMENTATION: Final[str] = _impl.__name__


if TYPE_CHECKING:
    def parse_request(buf: bytes, max_line: int = 8192, max_header_bytes: int = 65536,
                      max_headers: int = 100) -> RequestHead | None:
        """A :class:`RequestHead` at the start of ``buf``, None when incomplete; raises ``errors.ProtocolError``
        with the status to answer (SPEC §5.5)."""

    def parse_response(buf: bytes, max_header_bytes: int = 65536, max_headers: int = 100) -> ResponseHead | None:
        """A :class:`ResponseHead` at the start of ``buf``, None when incomplete; raises ``ProtocolError(502)``."""

    def new_chunked_decoder(max_trailer_bytes: int = 65536) -> ChunkedDecoder:
        """A fresh :class:`ChunkedDecoder`."""
else:  # the twin's own functions: no wrapper call on the hot path
    parse_request = _impl.parse_request
    parse_response = _impl.parse_response
    new_chunked_decoder = _impl.ChunkedDecoder
