"""TLS ClientHello peeking for SNI routing without terminating TLS (SPEC §9.5).

Sans-IO and strict: :func:`peek_hello` looks at the bytes a client has sent so far and answers "need more",
"not a TLS ClientHello", or the server name and ALPN protocols it offers. Nothing is consumed; the caller forwards
the same bytes unchanged. Any malformed length, a record of another type, or a hello larger than
:data:`MAX_HELLO` is "not a ClientHello" — never an exception.

Interpreted (not compiled): it runs at most a few times per connection, before any byte is relayed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

RECORD_HEADER: Final = 5  # content type (1), legacy version (2), length (2)
HANDSHAKE_HEADER: Final = 4  # handshake type (1), length (3)
MAX_RECORD: Final = 1 << 14  # TLSPlaintext.length limit (RFC 8446 §5.1)
MAX_HELLO: Final = 1 << 14  # largest ClientHello body accepted (16 KiB, plus its 4-byte handshake header)

_HANDSHAKE: Final = 0x16
_CLIENT_HELLO: Final = 0x01
_EXT_SERVER_NAME: Final = 0
_EXT_ALPN: Final = 16
_HOST_NAME: Final = 0


@dataclass(frozen=True, slots=True)
class Hello:
    """What routing needs from a ClientHello: the server name (None without SNI) and the offered ALPN protocols."""

    sni: str | None
    alpn: tuple[str, ...]


class NeedMore(enum.Enum):
    """Type of the :data:`NEED_MORE` sentinel."""

    NEED_MORE = "need more"


#: ``peek_hello`` answer for an incomplete but so far valid ClientHello: read more bytes and ask again
NEED_MORE: Final = NeedMore.NEED_MORE


def peek_hello(data: bytes) -> Hello | NeedMore | None:
    """The ClientHello at the start of ``data``; :data:`NEED_MORE` while it is incomplete; None when ``data`` does
    not start with a TLS ClientHello. The hello may span several handshake records; bytes after it are ignored."""
    message = bytearray()  # the handshake message, reassembled from the record fragments
    need = -1  # total handshake message length, known once its header is in
    pos = 0
    n = len(data)
    while True:
        if n - pos < RECORD_HEADER:
            return NEED_MORE if _header_prefix_ok(data, pos, n) else None
        if data[pos] != _HANDSHAKE or data[pos + 1] != 3 or data[pos + 2] > 4:
            return None
        length = (data[pos + 3] << 8) | data[pos + 4]
        if length == 0 or length > MAX_RECORD:
            return None
        start = pos + RECORD_HEADER
        end = start + length
        message += data[start:end]  # a short slice when the record is incomplete
        if need < 0 and len(message) >= HANDSHAKE_HEADER:
            if message[0] != _CLIENT_HELLO:
                return None
            body = (message[1] << 16) | (message[2] << 8) | message[3]
            if body > MAX_HELLO:
                return None
            need = HANDSHAKE_HEADER + body
        if need >= 0 and len(message) >= need:
            return _parse_client_hello(bytes(message[HANDSHAKE_HEADER:need]))
        if end > n:
            return NEED_MORE
        pos = end


def _header_prefix_ok(data: bytes, pos: int, n: int) -> bool:
    """True when the ``n - pos`` (< 5) bytes at ``pos`` can begin a handshake record header."""
    if pos < n and data[pos] != _HANDSHAKE:
        return False
    if pos + 1 < n and data[pos + 1] != 3:
        return False
    if pos + 2 < n and data[pos + 2] > 4:
        return False
    return not (pos + 3 < n and data[pos + 3] > MAX_RECORD >> 8)


def _parse_client_hello(body: bytes) -> Hello | None:
    """The SNI and ALPN of a complete ClientHello body (RFC 8446 §4.1.2); None when it is malformed."""
    n = len(body)
    pos = 2 + 32  # legacy_version, random
    if pos >= n:
        return None
    session_id = body[pos]  # legacy_session_id <0..32>
    if session_id > 32:
        return None
    pos += 1 + session_id
    if pos + 2 > n:
        return None
    suites = (body[pos] << 8) | body[pos + 1]
    if suites < 2 or suites & 1:
        return None
    pos += 2 + suites
    if pos >= n:
        return None
    methods = body[pos]
    if methods < 1:
        return None
    pos += 1 + methods
    if pos > n:
        return None
    if pos == n:
        return Hello(None, ())  # no extensions at all (legacy clients)
    if pos + 2 > n:
        return None
    ext_len = (body[pos] << 8) | body[pos + 1]
    pos += 2
    if pos + ext_len != n:
        return None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    seen: set[int] = set()
    while pos < n:
        if pos + 4 > n:
            return None
        kind = (body[pos] << 8) | body[pos + 1]
        size = (body[pos + 2] << 8) | body[pos + 3]
        pos += 4
        if pos + size > n or kind in seen:
            return None
        seen.add(kind)
        ext = body[pos : pos + size]
        pos += size
        if kind == _EXT_SERVER_NAME:
            name = _server_name(ext)
            if name is None:
                return None
            sni = name
        elif kind == _EXT_ALPN:
            protocols = _alpn(ext)
            if protocols is None:
                return None
            alpn = protocols
    return Hello(sni, alpn)


def _server_name(ext: bytes) -> str | None:
    """The host_name of a server_name extension (RFC 6066 §3): printable ASCII, no spaces; None when malformed."""
    n = len(ext)
    if n < 2 or ((ext[0] << 8) | ext[1]) != n - 2:
        return None
    pos = 2
    name: str | None = None
    while pos < n:
        if pos + 3 > n:
            return None
        kind = ext[pos]
        size = (ext[pos + 1] << 8) | ext[pos + 2]
        pos += 3
        if pos + size > n:
            return None
        value = ext[pos : pos + size]
        pos += size
        if kind == _HOST_NAME:
            if name is not None or size == 0:
                return None  # at most one host_name (RFC 6066 §3)
            for c in value:
                if c <= 0x20 or c >= 0x7F:
                    return None
            name = value.decode("ascii")
    return name


def _alpn(ext: bytes) -> tuple[str, ...] | None:
    """The protocol names of an ALPN extension (RFC 7301 §3.1); None when malformed or empty."""
    n = len(ext)
    if n < 3 or ((ext[0] << 8) | ext[1]) != n - 2:
        return None
    out: list[str] = []
    pos = 2
    while pos < n:
        size = ext[pos]
        pos += 1
        if size == 0 or pos + size > n:
            return None
        out.append(ext[pos : pos + size].decode("latin-1"))  # opaque bytes; latin-1 keeps every byte
        pos += size
    return tuple(out)
