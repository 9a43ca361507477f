"""Strict HTTP/1.x head parser and chunked decoder (RFC 9112, SPEC §5.5), pure Python.

Twin of the compiled ``_parser_c`` (``_parser_c.pyx`` over ``csrc/http1.c``): same API, same results — the same
fields, or the same ``ProtocolError`` status and message — which ``tests/unit/http/test_parser_differential.py``
checks. This one is written the Python way: lines are located with ``bytes.find`` and checked with regular
expressions compiled once, never byte by byte. A valid head takes a fast path (one regex for the request line, one
for the whole field section, then ``split`` / ``partition``); only an invalid or incomplete one is walked line by
line to name its first violation.

Rules both twins follow, beyond the RFC grammar:

* A violation is reported at the earliest byte that proves it: control characters, a bare CR or a bare LF as soon as
  they are seen; a line's grammar when its CRLF arrives; the head's semantics once it is complete, in this order:
  Host, Content-Length with Transfer-Encoding, Content-Length, Transfer-Encoding. A prefix of a message therefore
  parses to ``None`` or to exactly the outcome of the whole message, and byte-by-byte feeding changes nothing.
* Limits are windows: the request line (leading empty lines included) plus its CRLF must fit in ``max_line + 2``
  bytes, the field section (final CRLF included) in ``max_header_bytes``; a violation inside the window wins over
  the limit error. A response's status line is limited to ``max_header_bytes`` as well.
* Request targets: any visible ASCII except ``#``, ``%`` only as ``%HH``; absolute-form ``http``/``https`` only,
  without userinfo. An HTTP/1.1 request needs exactly one Host line even in absolute-form (``host`` is then the
  authority). Content-Length elements have at most 18 digits. A status line may omit `` reason``.
* Chunked bodies: a size line (extensions and CRLF included) is limited to 4096 bytes, a chunk size to 16 hex digits
  and 2^63-1 (what another parser may read as a negative int64); whitespace is allowed only where RFC 9112 has BWS
  (around ``;`` and ``=`` of an extension); trailer lines follow the header-line rules.
"""

from __future__ import annotations

import re
from typing import Final, NoReturn

from a3s_gateway.errors import ProtocolError
from a3s_gateway.http import hdrs

__all__ = ["ChunkedDecoder", "RequestHead", "ResponseHead", "parse_request", "parse_response"]

# ---- violations, with the codes of csrc/http1.h -----------------------------------------------------------------

_E_LINE_TOO_LONG: Final = -1
_E_REQUEST_LINE: Final = -2
_E_TARGET: Final = -3
_E_CONNECT: Final = -4
_E_VERSION: Final = -5
_E_TOO_LARGE: Final = -6
_E_FIELD: Final = -7
_E_OBS_FOLD: Final = -8
_E_CHAR: Final = -9
_E_HOST: Final = -10
_E_CL_AND_TE: Final = -11
_E_CONTENT_LENGTH: Final = -12
_E_TRANSFER_ENCODING: Final = -13
_E_TE_NOT_IMPLEMENTED: Final = -14
_E_STATUS_LINE: Final = -16

_REQUEST_ERRORS: Final[dict[int, tuple[int, str]]] = {
    _E_LINE_TOO_LONG: (414, "Request line too long"),
    _E_REQUEST_LINE: (400, "Bad request: malformed request line"),
    _E_TARGET: (400, "Bad request: invalid request target"),
    _E_CONNECT: (405, "Method not allowed"),
    _E_VERSION: (505, "HTTP version not supported"),
    _E_TOO_LARGE: (431, "Request header fields too large"),
    _E_FIELD: (400, "Bad request: invalid header field"),
    _E_OBS_FOLD: (400, "Bad request: obsolete line folding"),
    _E_CHAR: (400, "Bad request: invalid characters"),
    _E_HOST: (400, "Bad request: invalid Host header"),
    _E_CL_AND_TE: (400, "Bad request: both Content-Length and Transfer-Encoding"),
    _E_CONTENT_LENGTH: (400, "Bad request: invalid Content-Length"),
    _E_TRANSFER_ENCODING: (400, "Bad request: invalid Transfer-Encoding"),
    _E_TE_NOT_IMPLEMENTED: (501, "Transfer coding not implemented"),
}
_UPSTREAM_ERROR: Final = "Upstream protocol error"
_CHUNK_ERROR: Final = "Bad request: invalid chunked encoding"


class _Fail(Exception):
    """Internal: a violation; the public functions turn it into the ProtocolError of their side."""

    def __init__(self, code: int) -> None:
        self.code = code


# ---- grammar ----------------------------------------------------------------------------------------------------

_TCHAR: Final = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN: Final = re.compile(rb"[" + _TCHAR + rb"]+")
_LINE_CTL: Final = re.compile(rb"[\x00-\x1f\x7f]")  # request line: every control character, HTAB included
_FIELD_CTL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # other lines: HTAB allowed
_LEADING_CRLF: Final = re.compile(rb"(?:\r\n)*")

_FAST_REQUEST_LINE: Final = re.compile(rb"([" + _TCHAR + rb"]+) ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
_REQUEST_LINE: Final = re.compile(rb"([" + _TCHAR + rb"]+) ([^ ]+) (HTTP/[0-9]\.[0-9])")
_FAST_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: (.*))?", re.S)

_TARGET_CHARS: Final = re.compile(rb"(?:[\x21\x22\x24\x26-\x7e]|%[0-9A-Fa-f]{2})+")  # no '#', '%' only as %HH
_TARGET_OK: Final = bytes(c for c in range(0x21, 0x7F) if c not in b"#%")  # the same without '%', for translate()
_ABSOLUTE_FORM: Final = re.compile(rb"(?i:https?)://([^/?]*)(.*)", re.S)
_AUTHORITY: Final = re.compile(  # uri-host [":" port]; IPv4 is a reg-name, IPv6 checked loosely
    rb"(?:\[[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+)(?::[0-9]*)?"
)

# A field section whose every line is valid.
_FIELDS_VALID: Final = re.compile(rb"(?:[" + _TCHAR + rb"]+:[\t\x20-\x7e\x80-\xff]*\r\n)*")
_FIELD_LINE: Final = re.compile(rb"([" + _TCHAR + rb"]+):(.*)", re.S)

_MAX_CHUNK_LINE: Final = 4096
_MAX_CHUNK_SIZE: Final = (1 << 63) - 1
_PLAIN_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[\t ]*;[\t ]*[" + _TCHAR + rb"]+(?:[\t ]*=[\t ]*(?:[" + _TCHAR
    + rb"]+|\"(?:[\t !\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*\"))?)*"
)

_OWS: Final = b" \t"
_ID_HOST: Final = bytes([hdrs.HOST])
_ID_CONTENT_LENGTH: Final = bytes([hdrs.CONTENT_LENGTH])
_ID_TRANSFER_ENCODING: Final = bytes([hdrs.TRANSFER_ENCODING])
_ID_CONNECTION: Final = bytes([hdrs.CONNECTION])
_ID_UPGRADE: Final = bytes([hdrs.UPGRADE])
_ID_EXPECT: Final = bytes([hdrs.EXPECT])
_ID_TE: Final = bytes([hdrs.TE])
_ID_CONTENT_TYPE: Final = bytes([hdrs.CONTENT_TYPE])
_CONNECTION_KNOWN: Final = frozenset((b"close", b"keep-alive", b"upgrade"))
_NAMES: Final = hdrs.NAMES


# ---- heads ------------------------------------------------------------------------------------------------------


class RequestHead:
    """A parsed request head (RFC 9112 §3); the bytes attributes are copies, not views of the buffer."""

    __slots__ = ("authority", "chunked", "connection_tokens", "content_length", "expect_continue", "head_len",
                 "header_ids", "headers", "host", "keep_alive", "method", "path", "query", "target", "te_trailers",
                 "upgrade", "version")

    def __init__(self, method: bytes, target: bytes, path: bytes, query: bytes | None, authority: bytes,
                 version: int, headers: list[tuple[bytes, bytes]], header_ids: bytes, host: bytes,
                 content_length: int, chunked: bool, keep_alive: bool, expect_continue: bool, upgrade: bool,
                 te_trailers: bool, connection_tokens: tuple[bytes, ...], head_len: int) -> None:
        self.method = method
        self.target = target
        #: path to forward: origin-form target before '?', absolute-form path ("/" when empty), or "*"
        self.path = path
        #: raw bytes after the first '?', None without '?'
        self.query = query
        #: authority of an absolute-form target, else b""
        self.authority = authority
        #: minor version: 0 or 1
        self.version = version
        #: (raw-case name, value without leading/trailing OWS), in order
        self.headers = headers
        #: one hdrs id per header
        self.header_ids = header_ids
        #: Host value as sent, the authority for absolute-form, b"" when absent
        self.host = host
        #: -1 when absent
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        #: Connection lists "upgrade" and an Upgrade header is present
        self.upgrade = upgrade
        #: a TE header lists "trailers"
        self.te_trailers = te_trailers
        #: lower-cased Connection tokens other than close / keep-alive / upgrade
        self.connection_tokens = connection_tokens
        #: bytes of the head, leading empty lines and final CRLF included
        self.head_len = head_len

    def request_fields(self) -> tuple[bytes, bytes, bytes | None, bytes, list[tuple[bytes, bytes]], int]:
        """``(method, path, query, host, headers, body_length)`` in one call, for the middleware chain's Request
        (``body_length``: Content-Length, -1 chunked, 0 no body)."""
        body_length = -1 if self.chunked else (self.content_length if self.content_length > 0 else 0)
        return (self.method, self.path, self.query, self.host, self.headers, body_length)

    def __repr__(self) -> str:
        return (f"RequestHead(method={self.method!r}, target={self.target!r}, version={self.version}, "
                f"headers={len(self.headers)}, content_length={self.content_length}, chunked={self.chunked}, "
                f"keep_alive={self.keep_alive}, head_len={self.head_len})")


class ResponseHead:
    """A parsed response head (RFC 9112 §4)."""

    __slots__ = ("chunked", "connection_tokens", "content_length", "event_stream", "head_len", "header_ids",
                 "headers", "keep_alive", "reason", "status", "upgrade", "version")

    def __init__(self, status: int, reason: bytes, version: int, headers: list[tuple[bytes, bytes]],
                 header_ids: bytes, content_length: int, chunked: bool, keep_alive: bool, upgrade: bool,
                 event_stream: bool, connection_tokens: tuple[bytes, ...], head_len: int) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.header_ids = header_ids
        #: -1 when absent or overridden by Transfer-Encoding
        self.content_length = content_length
        #: the final transfer coding is chunked
        self.chunked = chunked
        #: False for close, for 1.0 without keep-alive, CL with TE, or a close-delimited TE body
        self.keep_alive = keep_alive
        #: Connection lists "upgrade"
        self.upgrade = upgrade
        #: the media type of the first Content-Type is text/event-stream
        self.event_stream = event_stream
        self.connection_tokens = connection_tokens
        self.head_len = head_len

    def __repr__(self) -> str:
        return (f"ResponseHead(status={self.status}, reason={self.reason!r}, version={self.version}, "
                f"headers={len(self.headers)}, content_length={self.content_length}, chunked={self.chunked}, "
                f"keep_alive={self.keep_alive}, head_len={self.head_len})")


def parse_request(buf: bytes, max_line: int = 8192, max_header_bytes: int = 65536,
                  max_headers: int = 100) -> RequestHead | None:
    """Parse a request head at the start of ``buf``: a :class:`RequestHead`, ``None`` when incomplete.

    Raises :class:`ProtocolError` with the status and message of SPEC §5.5 on any violation.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    if max_line < 0 or max_header_bytes < 0 or max_headers < 0:
        raise ValueError("limits must be >= 0")
    try:
        return _request(buf, max_line, max_header_bytes, max_headers)
    except _Fail as e:
        raise ProtocolError(*_REQUEST_ERRORS[e.code]) from None


def parse_response(buf: bytes, max_header_bytes: int = 65536, max_headers: int = 100) -> ResponseHead | None:
    """Parse a response head at the start of ``buf``: a :class:`ResponseHead`, ``None`` when incomplete.

    Raises ``ProtocolError(502, "Upstream protocol error")`` on any violation.
    """
    if type(buf) is not bytes:
        buf = bytes(buf)
    if max_header_bytes < 0 or max_headers < 0:
        raise ValueError("limits must be >= 0")
    try:
        return _response(buf, max_header_bytes, max_headers)
    except _Fail:
        raise ProtocolError(502, _UPSTREAM_ERROR) from None


def _request(buf: bytes, max_line: int, max_header_bytes: int, max_headers: int) -> RequestHead | None:
    line = _request_line(buf, max_line)
    if line is None:
        return None
    method, target, version, hs = line
    path, query, authority = _target(method, target)
    section = _field_section(buf, hs, max_header_bytes, max_headers)
    if section is None:
        return None
    headers, ids, head_len = section
    host = _host(headers, ids, version)
    content_length, chunked = _request_framing(headers, ids, version)
    close = keep = upgrade = False
    tokens: tuple[bytes, ...] = ()
    if _ID_CONNECTION in ids:
        close, keep, upgrade, tokens = _connection(headers, ids)
    expect_continue = _ID_EXPECT in ids and any(
        v.lower() == b"100-continue" for v in _values(headers, ids, _ID_EXPECT))
    te_trailers = _ID_TE in ids and any(e.lower() == b"trailers" for e in _elements(_values(headers, ids, _ID_TE)))
    return RequestHead(
        method, target, path, query, authority, version, headers, ids, authority or host, content_length, chunked,
        not close if version else keep and not close, expect_continue, upgrade and _ID_UPGRADE in ids, te_trailers,
        tokens, head_len,
    )


def _request_line(buf: bytes, max_line: int) -> tuple[bytes, bytes, int, int] | None:
    """(method, target, minor version, offset past the line) of the request line; None when incomplete."""
    m = _FAST_REQUEST_LINE.match(buf)
    if m is not None and m.end() <= max_line + 2:
        if m[1] == b"CONNECT":
            raise _Fail(_E_CONNECT)
        return m[1], m[2], m[3][0] - 0x30, m.end()
    limit = max_line + 2
    leading = _LEADING_CRLF.match(buf, 0, limit)  # empty lines before the request line (RFC 9112 §2.2)
    start = leading.end() if leading is not None else 0
    end = _line_end(buf, start, min(len(buf), limit), _LINE_CTL)
    if end < 0:
        if len(buf) >= limit:
            raise _Fail(_E_LINE_TOO_LONG)
        return None
    m = _REQUEST_LINE.fullmatch(buf, start, end - 2)
    if m is None:
        raise _Fail(_E_REQUEST_LINE)
    method, target, version = m.groups()
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise _Fail(_E_VERSION)
    if method == b"CONNECT":
        raise _Fail(_E_CONNECT)
    return method, target, version[7] - 0x30, end


def _host(headers: list[tuple[bytes, bytes]], ids: bytes, version: int) -> bytes:
    """The Host value: one line in HTTP/1.1, at most one in HTTP/1.0, uri-host [":" port] or empty."""
    hosts = ids.count(_ID_HOST)
    if (hosts != 1) if version else (hosts > 1):
        raise _Fail(_E_HOST)
    host = headers[ids.index(_ID_HOST)][1] if hosts else b""
    if host and _AUTHORITY.fullmatch(host) is None:
        raise _Fail(_E_HOST)
    return host


def _request_framing(headers: list[tuple[bytes, bytes]], ids: bytes, version: int) -> tuple[int, bool]:
    """(content_length, chunked) of a request (RFC 9112 §6.1-6.3): never both, only chunked as the coding."""
    has_cl = _ID_CONTENT_LENGTH in ids
    has_te = _ID_TRANSFER_ENCODING in ids
    if has_cl and has_te:
        raise _Fail(_E_CL_AND_TE)
    if has_cl:
        return _content_length(_values(headers, ids, _ID_CONTENT_LENGTH)), False
    if has_te:
        codings = _elements(_values(headers, ids, _ID_TRANSFER_ENCODING))
        if version == 0 or not _valid_codings(codings) or codings[-1].lower() != b"chunked":
            raise _Fail(_E_TRANSFER_ENCODING)
        if len(codings) > 1:
            raise _Fail(_E_TE_NOT_IMPLEMENTED)
    return -1, has_te


def _response(buf: bytes, max_header_bytes: int, max_headers: int) -> ResponseHead | None:
    m = _FAST_STATUS_LINE.match(buf)
    if m is not None and m.end() <= max_header_bytes:
        hs = m.end()
    else:
        hs = _line_end(buf, 0, min(len(buf), max_header_bytes), _FIELD_CTL)
        if hs < 0:
            if len(buf) >= max_header_bytes:
                raise _Fail(_E_TOO_LARGE)
            return None
        m = _STATUS_LINE.fullmatch(buf, 0, hs - 2)
        if m is None:
            raise _Fail(_E_STATUS_LINE)
    version, status, reason = m[1][0] - 0x30, int(m[2]), m[3] or b""
    section = _field_section(buf, hs, max_header_bytes, max_headers)
    if section is None:
        return None
    headers, ids, head_len = section

    has_cl = _ID_CONTENT_LENGTH in ids
    content_length = _content_length(_values(headers, ids, _ID_CONTENT_LENGTH)) if has_cl else -1
    close = keep = upgrade = False
    tokens: tuple[bytes, ...] = ()
    if _ID_CONNECTION in ids:
        close, keep, upgrade, tokens = _connection(headers, ids)
    keep_alive = not close if version else keep and not close
    chunked = False
    if _ID_TRANSFER_ENCODING in ids:
        codings = _elements(_values(headers, ids, _ID_TRANSFER_ENCODING))
        if version == 0 or not _valid_codings(codings):  # TE in HTTP/1.0 is faulty framing
            raise _Fail(_E_TRANSFER_ENCODING)
        chunked = codings[-1].lower() == b"chunked"
        keep_alive = keep_alive and chunked and not has_cl  # else close-delimited, or ambiguous framing
        content_length = -1
    event_stream = False
    if _ID_CONTENT_TYPE in ids:
        media_type = headers[ids.index(_ID_CONTENT_TYPE)][1].split(b";", 1)[0].rstrip(_OWS)
        event_stream = media_type.lower() == b"text/event-stream"
    return ResponseHead(status, reason, version, headers, ids, content_length, chunked, keep_alive, upgrade,
                        event_stream, tokens, head_len)


def _line_end(buf: bytes | bytearray, pos: int, end: int, ctl: re.Pattern[bytes]) -> int:
    """Offset past the CRLF of the line at ``buf[pos:end]``; -1 when it is not complete there.

    Raises at the first control character ``ctl`` forbids; a CR as the last available byte is not yet bare.
    """
    eol = buf.find(b"\r\n", pos, end)
    bad = ctl.search(buf, pos, end if eol < 0 else eol)
    if bad is not None and (eol >= 0 or bad.start() != end - 1 or buf[end - 1] != 0x0D):
        raise _Fail(_E_CHAR)
    return -1 if eol < 0 else eol + 2


def _target(method: bytes, target: bytes) -> tuple[bytes, bytes | None, bytes]:
    """(path, query, authority) of a request-target (RFC 9112 §3.2)."""
    if (_TARGET_CHARS.fullmatch(target) is None) if b"%" in target else target.translate(None, _TARGET_OK):
        raise _Fail(_E_TARGET)
    if target[0] == 0x2F:  # origin-form
        path, sep, query = target.partition(b"?")
        return path, query if sep else None, b""
    if target == b"*":
        if method != b"OPTIONS":
            raise _Fail(_E_TARGET)
        return target, None, b""
    m = _ABSOLUTE_FORM.match(target)
    if m is None or _AUTHORITY.fullmatch(m[1]) is None:
        raise _Fail(_E_TARGET)
    path, sep, query = m[2].partition(b"?")
    return path or b"/", query if sep else None, m[1]


def _field_section(buf: bytes, start: int, max_bytes: int,
                   max_fields: int) -> tuple[list[tuple[bytes, bytes]], bytes, int] | None:
    """(fields, their hdrs ids, offset past the empty line) of the field section at ``start``; None if incomplete."""
    limit = start + max_bytes
    end = buf.find(b"\r\n\r\n", start - 2, limit)
    if end >= 0 and _FIELDS_VALID.fullmatch(buf, start, end + 2) is not None:
        if end < start:
            return [], b"", end + 4
        lines = buf[start:end].split(b"\r\n")
        if len(lines) <= max_fields:
            # every line is valid: split them without a second regex pass
            fields = []
            ids = bytearray()
            for line in lines:
                name, _, value = line.partition(b":")
                fields.append((name, value.strip(_OWS)))
                ids.append(_NAMES.get(name.lower(), 0))
            return fields, bytes(ids), end + 4
    # slow path: walk the lines to find the first violation, or how far the section goes
    fields = []
    stop = min(len(buf), limit)
    pos = start
    while pos < stop:
        if buf[pos] == 0x0D:
            if pos + 1 >= stop:
                break
            if buf[pos + 1] != 0x0A:
                raise _Fail(_E_CHAR)
            return fields, bytes([_NAMES.get(name.lower(), 0) for name, _ in fields]), pos + 2
        if len(fields) == max_fields:
            raise _Fail(_E_TOO_LARGE)
        eol = _line_end(buf, pos, stop, _FIELD_CTL)
        if eol < 0:
            break
        fields.append(_field_line(buf[pos:eol - 2]))
        pos = eol
    if len(buf) >= limit:
        raise _Fail(_E_TOO_LARGE)
    return None


def _field_line(line: bytes) -> tuple[bytes, bytes]:
    """(name, value) of a field line without controls other than HTAB."""
    m = _FIELD_LINE.fullmatch(line)
    if m is None:
        raise _Fail(_E_OBS_FOLD if line[:1] in (b" ", b"\t") else _E_FIELD)
    return m[1], m[2].strip(_OWS)


def _values(headers: list[tuple[bytes, bytes]], ids: bytes, hid: bytes) -> list[bytes]:
    """Values of the header lines whose id is ``hid``, in order."""
    out = []
    i = ids.find(hid)
    while i >= 0:
        out.append(headers[i][1])
        i = ids.find(hid, i + 1)
    return out


def _elements(values: list[bytes]) -> list[bytes]:
    """Non-empty elements of comma-separated list values, OWS trimmed (RFC 9110 §5.6.1)."""
    return [e for v in values for x in v.split(b",") if (e := x.strip(_OWS))]


def _content_length(values: list[bytes]) -> int:
    """Decimal value of Content-Length lines: lists and repeats merged when all values are equal."""
    seen = -1
    for v in values:
        for x in v.split(b","):
            x = x.strip(_OWS)
            if not (0 < len(x) <= 18 and x.isdigit()):  # at most 18 digits, like the C scanner's int64
                raise _Fail(_E_CONTENT_LENGTH)
            n = int(x)
            if seen >= 0 and n != seen:
                raise _Fail(_E_CONTENT_LENGTH)
            seen = n
    return seen


def _valid_codings(codings: list[bytes]) -> bool:
    """Transfer codings are tokens, at least one, chunked at most once."""
    return (bool(codings) and all(_TOKEN.fullmatch(c) is not None for c in codings)
            and [c.lower() for c in codings].count(b"chunked") <= 1)


def _connection(headers: list[tuple[bytes, bytes]], ids: bytes) -> tuple[bool, bool, bool, tuple[bytes, ...]]:
    """(close, keep-alive, upgrade, other tokens) of the Connection lines."""
    tokens = [e.lower() for e in _elements(_values(headers, ids, _ID_CONNECTION))]
    return (b"close" in tokens, b"keep-alive" in tokens, b"upgrade" in tokens,
            tuple(t for t in tokens if t not in _CONNECTION_KNOWN))


# ---- chunked ----------------------------------------------------------------------------------------------------

_SIZE_LINE: Final = 0
_DATA: Final = 1
_DATA_CR: Final = 2
_DATA_LF: Final = 3
_TRAILERS: Final = 4
_DONE: Final = 5
_FAILED: Final = 6


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 §7.1): ``feed`` returns payload pieces and bytes consumed."""

    __slots__ = ("_line", "_max_trailer_bytes", "_remaining", "_state", "_tbuf", "_tpos", "done", "trailers")

    def __init__(self, max_trailer_bytes: int = 65536) -> None:
        if max_trailer_bytes < 0:
            raise ValueError("max_trailer_bytes must be >= 0")
        #: the last chunk and the trailer section have been consumed
        self.done = False
        #: trailer fields (name, value), complete once done
        self.trailers: list[tuple[bytes, bytes]] = []
        self._state = _SIZE_LINE
        self._remaining = 0
        self._max_trailer_bytes = max_trailer_bytes
        self._line = b""  # a size line split across feeds
        self._tbuf = bytearray()  # the trailer section so far, at most max_trailer_bytes
        self._tpos = 0  # start of its first unparsed line

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Decode ``data``: (payload pieces, bytes of ``data`` consumed); fewer than all only once done."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._state == _FAILED:
            self._fail()
        pieces: list[bytes] = []
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                pieces.append(data if take == n else data[pos:pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _DATA_CR
            elif state == _DATA_CR and data.startswith(b"\r\n", pos):
                pos += 2
                self._state = _SIZE_LINE
            elif state == _DATA_CR or state == _DATA_LF:
                if data[pos] != (0x0D if state == _DATA_CR else 0x0A):
                    self._fail()
                pos += 1
                self._state = _DATA_LF if state == _DATA_CR else _SIZE_LINE
            elif state == _SIZE_LINE:
                m = None if self._line else _PLAIN_SIZE_LINE.match(data, pos)
                if m is not None:  # the usual size line: hex digits, CRLF
                    pos = m.end()
                    self._start_chunk(int(m[1], 16))
                else:
                    pos = self._size_line(data, pos)
            elif state == _TRAILERS:
                pos = self._trailer_section(data, pos)
            else:
                break
        return pieces, pos

    def _fail(self) -> NoReturn:
        self._state = _FAILED
        raise ProtocolError(400, _CHUNK_ERROR)

    def _size_line(self, data: bytes, pos: int) -> int:
        old = len(self._line)
        if old:
            buf, start = self._line + data[pos:pos + _MAX_CHUNK_LINE - old], 0
        else:
            buf, start = data, pos
        end = min(len(buf), start + _MAX_CHUNK_LINE)
        try:
            eol = _line_end(buf, start, end, _FIELD_CTL)
        except _Fail:
            self._fail()
        if eol < 0:
            if end - start >= _MAX_CHUNK_LINE:
                self._fail()
            self._line = buf[start:end]
            return pos + end - start - old
        m = _CHUNK_LINE.fullmatch(buf, start, eol - 2)
        if m is None:
            self._fail()
        self._line = b""
        self._start_chunk(int(m[1], 16))
        return pos + eol - start - old

    def _start_chunk(self, size: int) -> None:
        if size > _MAX_CHUNK_SIZE:
            self._fail()
        if size:
            self._state, self._remaining = _DATA, size
        else:
            self._state = _TRAILERS  # the last chunk

    def _trailer_section(self, data: bytes, pos: int) -> int:
        limit = self._max_trailer_bytes
        tbuf = self._tbuf
        if not tbuf and limit >= 2 and data.startswith(b"\r\n", pos):  # no trailers: the usual case, no copy
            return self._finish(pos + 2)
        old = len(tbuf)
        take = min(len(data) - pos, limit - old)
        tbuf += data[pos:pos + take]
        size = len(tbuf)
        tpos = self._tpos
        try:
            while tpos < size:
                if tbuf[tpos] == 0x0D:
                    if tpos + 1 >= size:
                        break
                    if tbuf[tpos + 1] != 0x0A:
                        raise _Fail(_E_CHAR)
                    return self._finish(pos + tpos + 2 - old)
                eol = _line_end(tbuf, tpos, size, _FIELD_CTL)
                if eol < 0:
                    break
                self.trailers.append(_field_line(bytes(tbuf[tpos:eol - 2])))
                tpos = eol
        except _Fail:
            self._fail()
        self._tpos = tpos
        if size >= limit:
            self._fail()
        return pos + take

    def _finish(self, pos: int) -> int:
        self.done = True
        self._state = _DONE
        self._tbuf = bytearray()
        return pos
