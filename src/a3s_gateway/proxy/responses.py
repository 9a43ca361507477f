"""Gateway-generated responses (SPEC §1.4, §5.7): JSON error bodies with Date, built once per status/message."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import quote

import orjson

# every registered status (a middleware may answer 401, 403, 409 …); RFC 9110 names 413 "Content Too Large"
_REASONS = {int(st): st.phrase.encode("ascii") for st in HTTPStatus}
_REASONS[413] = b"Content Too Large"

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_date_second = -1
_date_line = b""


def date_line() -> bytes:
    """``Date: ...\\r\\n`` for the current second (formatted at most once a second)."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_line


def date_value() -> bytes:
    """The ``Date`` value for the current second."""
    return date_line()[6:-2]


def reason(status: int) -> bytes:
    """Reason phrase for a status the gateway generates."""
    return _REASONS.get(status, b"Unknown")


_body_lengths: dict[str, int] = {}


def error_body_length(message: str) -> int:
    """Length of the JSON body of ``error_response(..., message)`` (bytes_out of a gateway answer)."""
    n = _body_lengths.get(message)
    if n is None:
        n = len(orjson.dumps({"error": message}))
        if len(_body_lengths) < 256:
            _body_lengths[message] = n
    return n


_GRPC_STATUS = {401: 16, 403: 7, 404: 12, 413: 8, 429: 8, 502: 14, 503: 14, 504: 4}


def grpc_error_response(status: int, message: str, extra: bytes = b"") -> bytes:
    """A trailers-only gRPC answer for a gateway error (SPEC §9.2): HTTP 200, grpc-status, percent-encoded message."""
    code = _GRPC_STATUS.get(status, 2)
    text = quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode("ascii")
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: %d\r\ngrpc-message: %s\r\n"
        % (code, text)
        + extra
        + b"Content-Length: 0\r\n"
        + date_line()
        + b"\r\n"
    )


def grpc_error_fields(status: int, message: str, extra: bytes = b"") -> list[tuple[bytes, bytes]]:
    """:func:`grpc_error_response` as fields, for a client that takes fields (an HTTP/2 stream): the same values."""
    code = _GRPC_STATUS.get(status, 2)
    text = quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode("ascii")
    return [(b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % code), (b"grpc-message", text),
            *line_fields(extra), (b"content-length", b"0"), (b"date", date_value())]


def line_fields(lines: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines the gateway adds (``Name: value`` CRLF each: sticky cookie, cold start, Retry-After) as
    fields."""
    fields: list[tuple[bytes, bytes]] = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            fields.append((name, value.strip(b" \t")))
    return fields


def error_message(body: bytes) -> str:
    """The ``error`` text of a JSON error body (a middleware's reply), else the body as text."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])
    return body.decode("utf-8", "replace")


def redirect_response(status: int, location: bytes, *, close: bool = False, head_only: bool = False) -> bytes:
    """An empty-bodied redirect (entrypoint ``redirect``, SPEC §3.1)."""
    return (
        b"HTTP/1.1 %d %s\r\nLocation: %s\r\nContent-Length: 0\r\n" % (status, reason(status), location)
        + (b"Connection: close\r\n" if close else b"")
        + date_line()
        + b"\r\n"
    )


def redirect_fields(location: bytes) -> list[tuple[bytes, bytes]]:
    """:func:`redirect_response`'s fields (for an HTTP/2 stream)."""
    return [(b"location", location), (b"content-length", b"0"), (b"date", date_value())]


_prefix_cache: dict[tuple[int, str, bytes, bool], tuple[bytes, bytes]] = {}


def error_response(
    status: int, message: str, *, extra: bytes = b"", close: bool = False, head_only: bool = False
) -> bytes:
    """The complete bytes of a gateway error response ``{"error": message}``.

    ``extra`` holds additional header lines (each ending CRLF). ``close`` adds ``Connection: close``.
    """
    key = (status, message, extra, close)
    cached = _prefix_cache.get(key)
    if cached is None:
        body = orjson.dumps({"error": message})
        prefix = (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            % (status, reason(status), len(body))
            + extra
            + (b"Connection: close\r\n" if close else b"")
        )
        cached = (prefix, body)
        if len(_prefix_cache) < 256:
            _prefix_cache[key] = cached
    prefix, body = cached
    return prefix + date_line() + b"\r\n" + (b"" if head_only else body)


def error_fields(message: str, extra: bytes = b"") -> tuple[list[tuple[bytes, bytes]], bytes]:
    """:func:`error_response` as fields and body (for an HTTP/2 stream): the same values."""
    body = orjson.dumps({"error": message})
    return ([(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *line_fields(extra),
             (b"date", date_value())], body)
