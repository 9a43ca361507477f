"""A request head built from an HTTP/2 stream's fields (SPEC §9.1), and the reader of its DATA.

An HTTP/2 request arrives as decoded fields; :func:`request_head` turns them into an object with the attributes and
``request_fields()`` of a parsed :class:`~a3s_gateway.http.parser.RequestHead`, so the exchange routes, forwards and
accounts it exactly like the equivalent HTTP/1.1 request — without writing HTTP/1.1 text and parsing it again.
What the HTTP/1.1 parser would reject is rejected here with the same status and message (SPEC §5.5), checked in
the parser's order: the request line, the target, the field lines and their limits, Host, Content-Length.

The equivalent HTTP/1.1 request is ``METHOD :path HTTP/1.1`` with ``host: :authority`` (else the ``host`` field)
first, the other fields in order, and the ``cookie`` fields joined with ``"; "`` last (RFC 9113 §8.2.3). HTTP/2 has
no connection-specific fields (h2 rejects them), no ``Expect: 100-continue`` handshake and no upgrade. A body
whose length is not announced (no ``content-length`` and no END_STREAM on HEADERS) is ``chunked``: it ends with
END_STREAM, and the exchange frames it chunked for an HTTP/1.1 backend; its DATA is read by a
:class:`StreamDecoder`, never as chunk framing.
"""

from __future__ import annotations

import re
from typing import Final

from ..errors import ProtocolError
from . import hdrs

__all__ = ["MALFORMED_FIELD", "StreamDecoder", "StreamHead", "request_head"]

_TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN: Final = re.compile(rb"[" + _TCHAR + rb"]+")
_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
_TARGET: Final = re.compile(rb"(?:[\x21\x22\x24\x26-\x7e]|%[0-9A-Fa-f]{2})+")  # no '#', '%' only as %HH
_AUTHORITY: Final = re.compile(  # uri-host [":" port], as the HTTP/1 parser checks Host
    rb"(?:\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::[0-9]*)?"
)
_LINE_CTL: Final = re.compile(rb"[\x00-\x1f\x7f]")  # as the HTTP/1 parser's request line: HTAB included
_OWS: Final = b" \t"
_NAMES: Final = hdrs.NAMES
_LINE_EXTRA: Final = len(b"  HTTP/1.1\r\n")  # what the request line adds to method and target

_E_LINE: Final = (414, "Request line too long")
_E_REQUEST_LINE: Final = (400, "Bad request: malformed request line")
_E_TARGET: Final = (400, "Bad request: invalid request target")
_E_TOO_LARGE: Final = (431, "Request header fields too large")
_E_FIELD: Final = (400, "Bad request: invalid header field")
_E_CHAR: Final = (400, "Bad request: invalid characters")
_E_HOST: Final = (400, "Bad request: invalid Host header")
_E_CONTENT_LENGTH: Final = (400, "Bad request: invalid Content-Length")
#: the messages that mean a field an HTTP/2 request may not carry: a malformed stream (RFC 9113 §8.2.1)
MALFORMED_FIELD: Final = frozenset((_E_FIELD[1], _E_CHAR[1]))


class StreamHead:
    """A request head of an HTTP/2 stream: the attributes of ``parser.RequestHead`` (see there)."""

    __slots__ = ("authority", "chunked", "connection_tokens", "content_length", "expect_continue", "head_len",
                 "header_ids", "headers", "host", "keep_alive", "method", "path", "query", "target", "te_trailers",
                 "upgrade", "version")

    def __init__(self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], header_ids: bytes,
                 host: bytes, content_length: int, chunked: bool, te_trailers: bool, head_len: int) -> None:
        self.method = method
        self.target = target
        path, sep, query = target.partition(b"?")
        self.path = path
        self.query: bytes | None = query if sep else None
        self.authority = b""  # the target is origin-form (or "*")
        self.version = 1
        self.headers = headers
        self.header_ids = header_ids
        self.host = host
        self.content_length = content_length
        #: no content-length and the body goes on after HEADERS: it ends with END_STREAM, chunked upstream
        self.chunked = chunked
        self.keep_alive = True
        self.expect_continue = False
        self.upgrade = False
        self.te_trailers = te_trailers
        self.connection_tokens: tuple[bytes, ...] = ()
        #: the length of the equivalent HTTP/1.1 head (request line, fields, final CRLF)
        self.head_len = head_len

    def request_fields(self) -> tuple[bytes, bytes, bytes | None, bytes, list[tuple[bytes, bytes]], int]:
        """As ``parser.RequestHead.request_fields``: ``(method, path, query, host, headers, body_length)``."""
        body_length = -1 if self.chunked else (self.content_length if self.content_length > 0 else 0)
        return (self.method, self.path, self.query, self.host, self.headers, body_length)

    def __repr__(self) -> str:
        return (f"StreamHead(method={self.method!r}, target={self.target!r}, headers={len(self.headers)}, "
                f"content_length={self.content_length}, chunked={self.chunked})")


def request_head(method: bytes, target: bytes, authority: bytes, fields: list[tuple[bytes, bytes]],
                 cookies: list[bytes], body_follows: bool, max_line: int = 8192, max_header_bytes: int = 65536,
                 max_headers: int = 100) -> StreamHead:
    """The head of a request stream: its pseudo-fields, its other ``fields`` (lower-case names, ``host`` and
    ``cookie`` taken out: ``authority`` is ``:authority`` or else ``host``; ``cookies`` the ``cookie`` values);
    ``body_follows``: HEADERS did not end the stream.

    Raises :class:`ProtocolError` with the status and message the HTTP/1.1 parser gives the equivalent head.
    """
    ctl = _LINE_CTL.search(method)
    at = ctl.start() if ctl is not None else -1
    if at < 0:
        ctl = _LINE_CTL.search(target)
        at = len(method) + 1 + ctl.start() if ctl is not None else -1
    if 0 <= at < max_line + 2:  # the parser meets a control character before it knows the line is too long
        raise ProtocolError(*_E_CHAR)
    if len(method) + len(target) + _LINE_EXTRA > max_line + 2:
        raise ProtocolError(*_E_LINE)
    if _TOKEN.fullmatch(method) is None or b" " in target:  # the request line would not split in three
        raise ProtocolError(*_E_REQUEST_LINE)
    if _TARGET.fullmatch(target) is None:
        raise ProtocolError(*_E_TARGET)
    if _VALUE.fullmatch(authority) is None:
        raise ProtocolError(*_E_CHAR)
    headers = [(b"host", authority.strip(_OWS))]
    ids = bytearray((hdrs.HOST,))
    size = len(authority) + 8  # "host: " + CRLF
    for name, value in fields:
        if _TOKEN.fullmatch(name) is None:
            raise ProtocolError(*_E_FIELD)
        if _VALUE.fullmatch(value) is None:
            raise ProtocolError(*_E_CHAR)
        size += len(name) + len(value) + 4
        headers.append((name, value.strip(_OWS)))
        ids.append(_NAMES.get(name, 0))
    if cookies:
        value = b"; ".join(cookies)
        if _VALUE.fullmatch(value) is None:
            raise ProtocolError(*_E_CHAR)
        size += len(value) + 10  # "cookie: " + CRLF
        headers.append((b"cookie", value.strip(_OWS)))
        ids.append(_NAMES.get(b"cookie", 0))
    if size + 2 > max_header_bytes or len(headers) > max_headers:
        raise ProtocolError(*_E_TOO_LARGE)
    host = headers[0][1]
    if host and _AUTHORITY.fullmatch(host) is None:
        raise ProtocolError(*_E_HOST)
    header_ids = bytes(ids)
    content_length = -1
    te_trailers = False
    for i in range(1, len(headers)):
        hid = header_ids[i]
        if hid == hdrs.CONTENT_LENGTH:
            content_length = _content_length(headers[i][1], content_length)
        elif hid == hdrs.TE:
            te_trailers = te_trailers or any(e.strip(_OWS).lower() == b"trailers" for e in headers[i][1].split(b","))
    head_len = len(method) + len(target) + _LINE_EXTRA + size + 2
    chunked = body_follows and content_length < 0
    return StreamHead(method, target, headers, header_ids, host, content_length, chunked, te_trailers, head_len)


def _content_length(value: bytes, seen: int) -> int:
    """A Content-Length value (a list of equal decimals, at most 18 digits each) merged with the one ``seen``."""
    for x in value.split(b","):
        x = x.strip(_OWS)
        if not (0 < len(x) <= 18 and x.isdigit()):
            raise ProtocolError(*_E_CONTENT_LENGTH)
        n = int(x)
        if seen >= 0 and n != seen:
            raise ProtocolError(*_E_CONTENT_LENGTH)
        seen = n
    return seen


class StreamDecoder:
    """The ``decoder`` of a chunked-mode ``framing.BodyReader`` for a stream's DATA: the pieces are payload already
    (no chunk framing to strip); the body is done once :meth:`end` was called (END_STREAM) and a feed followed."""

    __slots__ = ("done", "trailers")

    def __init__(self) -> None:
        self.done = False
        self.trailers: list[tuple[bytes, bytes]] = []

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        return ([data], len(data)) if data else ([], 0)

    def end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """END_STREAM, with the request's trailer fields (pseudo-fields already left out)."""
        self.trailers = trailers
        self.done = True
