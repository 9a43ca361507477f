"""Message body framing on the relay path, typed: the compiled twin (``_framing_c``, Cython pure mode) or the
interpreted one (``_framing_py``), picked once here. Import these names, never a twin. ``BodyReader`` is a
Protocol for the same reason as the heads of :mod:`.parser`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from .._compat import load
from .parser import ChunkedDecoder

__all__ = ["CHUNKED", "IMPLEMENTATION", "LENGTH", "NONE", "UNTIL_CLOSE", "BodyReader", "allowed_trailers",
           "chunk_frames", "last_chunk", "new_body_reader"]

NONE: Final = 0  # no body
LENGTH: Final = 1  # Content-Length
CHUNKED: Final = 2  # chunked transfer coding
UNTIL_CLOSE: Final = 3  # close-delimited (responses only)


class BodyReader(Protocol):
    """Where a body ends: ``feed`` -> (pieces, consumed); ``done`` once complete; chunked bodies re-encoded."""

    mode: int
    done: bool
    received: int

    def feed(self, data: bytes) -> tuple[list[bytes], int]: ...

    def rechunk(self, pieces: list[bytes]) -> list[bytes]: ...

    def trailers(self) -> list[tuple[bytes, bytes]]: ...


_impl: Any = load("body relay")
IMPLEMENTATION: Final[str] = _impl.__name__
assert (_impl.NONE, _impl.LENGTH, _impl.CHUNKED, _impl.UNTIL_CLOSE) == (NONE, LENGTH, CHUNKED, UNTIL_CLOSE)


if TYPE_CHECKING:
    def new_body_reader(mode: int, length: int, decoder: ChunkedDecoder | None) -> BodyReader:
        """A :class:`BodyReader` for ``mode`` (``length`` bytes for LENGTH; ``decoder`` for CHUNKED)."""

    def chunk_frames(pieces: list[bytes]) -> list[bytes]:
        """``pieces`` as one chunk (size line, pieces, CRLF)."""

    def last_chunk(trailers: list[tuple[bytes, bytes]]) -> bytes:
        """The last chunk carrying ``trailers``."""

    def allowed_trailers(trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """``trailers`` without the fields RFC 9110 §6.5.1 forbids in a trailer section."""
else:  # the twin's own functions: no wrapper call on the hot path
    new_body_reader = _impl.BodyReader
    chunk_frames = _impl.chunk_frames
    last_chunk = _impl.last_chunk
    allowed_trailers = _impl.allowed_trailers
