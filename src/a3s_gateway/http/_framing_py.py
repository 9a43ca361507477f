# cython: annotation_typing=False
"""Body framing for the relay: read a message body in any framing, re-frame it for the other side.

Cython pure mode: runs interpreted as ``a3s_gateway.http._framing_py`` and compiled as ``a3s_gateway.http._framing_c``
(``_framing_c.py`` links here; ``_framing_c.pxd`` gives the C types). Nothing is buffered: every call returns the
payload pieces found in the bytes it was given, as slices of them. A chunked request body is re-encoded from those
pieces, never forwarded as received (SPEC §5.5).
"""

from __future__ import annotations

from typing import Any

NONE = 0  # no body
LENGTH = 1  # Content-Length
CHUNKED = 2  # chunked transfer coding
UNTIL_CLOSE = 3  # close-delimited (responses only)

# private copies typed as C ints in the compiled module (the public names above stay Python-visible)
_NONE = 0
_LENGTH = 1
_CHUNKED = 2
_UNTIL_CLOSE = 3

_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CRLF_LAST_CHUNK = b"\r\n0\r\n\r\n"
_SMALL_PIECE = 512  # pieces of a re-encoded batch averaging fewer bytes are joined (see BodyReader.rechunk)

# Fields RFC 9110 §6.5.1 forbids in trailers, lower-case: message framing (and the hop-by-hop fields that govern
# it), routing, authentication, request modifiers (controls, conditionals, range); every ``content-*`` too.
_FORBIDDEN_TRAILERS = frozenset((
    b"content-length", b"transfer-encoding", b"trailer", b"te", b"connection", b"keep-alive", b"proxy-connection",
    b"upgrade",
    b"host",
    b"authorization", b"proxy-authorization", b"www-authenticate", b"proxy-authenticate", b"cookie", b"set-cookie",
    b"cache-control", b"expect", b"max-forwards", b"pragma", b"range", b"if-match", b"if-none-match",
    b"if-modified-since", b"if-unmodified-since", b"if-range",
))


class BodyReader:
    """Tracks where a body ends. ``feed`` returns ``(pieces, consumed)``; ``done`` once the body is complete.

    For ``CHUNKED`` the ``decoder`` (a parser ``ChunkedDecoder``) validates and strips the framing.
    """

    def __init__(self, mode: int, length: int, decoder: Any) -> None:
        self.mode = mode
        self.remaining = length
        self.decoder = decoder
        self.done = mode == _NONE or (mode == _LENGTH and length == 0)
        self.received = 0

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        n = len(data)
        mode = self.mode
        if mode == _LENGTH:
            rem = self.remaining
            if n < rem:
                self.remaining = rem - n
                self.received += n
                return [data], n
            self.remaining = 0
            self.done = True
            self.received += rem
            if n == rem:
                return [data], n
            return [data[:rem]], rem
        if mode == _CHUNKED:
            pieces, consumed = self.decoder.feed(data)
            for p in pieces:
                self.received += len(p)
            if self.decoder.done:
                self.done = True
            return pieces, consumed
        if mode == _UNTIL_CLOSE:
            self.received += n
            return [data], n
        return [], 0

    def rechunk(self, pieces: list[bytes]) -> list[bytes]:
        """Re-encode payload ``pieces`` just decoded from a chunked body: one chunk ``[size CRLF, *pieces, CRLF]``,
        then, once the body is done, the last chunk with the trailers :func:`allowed_trailers` keeps. Chunk
        extensions are gone with the decoding (SPEC §5.5). The payload is not copied, unless its pieces are small.
        """
        size = 0
        for p in pieces:
            size += len(p)
        out: list[bytes] = []
        if size:
            if size < len(pieces) * _SMALL_PIECE:
                # many small chunks (at worst 1-byte ones): one buffer, not thousands of objects held in the
                # upstream write buffer, replay and mirror copies
                out.append(b"%x\r\n" % size + b"".join(pieces))
            else:
                out.append(b"%x\r\n" % size)
                out.extend(pieces)
        if self.done:
            trailers = allowed_trailers(self.trailers())
            if trailers:
                if size:
                    out.append(_CRLF)
                out.append(last_chunk(trailers))
            else:
                out.append(_CRLF_LAST_CHUNK if size else _LAST_CHUNK)
        elif size:
            out.append(_CRLF)
        return out

    def trailers(self) -> list[tuple[bytes, bytes]]:
        """Trailer fields of a finished chunked body (empty for other framings)."""
        if self.mode == _CHUNKED and self.decoder is not None:
            result: list[tuple[bytes, bytes]] = self.decoder.trailers
            return result
        return []


def chunk_frames(pieces: list[bytes]) -> list[bytes]:
    """Frame payload pieces as chunks: ``[size CRLF, piece, CRLF, ...]`` (empty pieces are skipped)."""
    out: list[bytes] = []
    for p in pieces:
        if p:
            out.append(b"%x\r\n" % len(p))
            out.append(p)
            out.append(_CRLF)
    return out


def last_chunk(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """The terminating chunk, with ``trailers`` when given."""
    if not trailers:
        return _LAST_CHUNK
    parts: list[bytes] = [b"0\r\n"]
    for name, value in trailers:
        parts.append(name + b": " + value + _CRLF)
    parts.append(_CRLF)
    return b"".join(parts)


def allowed_trailers(trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The trailer fields that may be forwarded: those RFC 9110 §6.5.1 forbids in trailers are dropped."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in trailers:
        low = name.lower()
        if low not in _FORBIDDEN_TRAILERS and not low.startswith(b"content-"):
            out.append((name, value))
    return out
