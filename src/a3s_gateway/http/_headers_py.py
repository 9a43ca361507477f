# cython: annotation_typing=False
"""Header filtering and one-buffer head serialisation (SPEC §5.2, §5.3, §5.4).

Cython pure mode: this file runs interpreted as ``a3s_gateway.http._headers_py`` and is compiled as
``a3s_gateway.http._headers_c`` (``_headers_c.py`` links here; ``_headers_c.pxd`` gives the C types).
Header names are never lower-cased here: the parser classified every line into a ``hdrs`` id.
"""

from __future__ import annotations

import os

try:
    import cython  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # Cython is a build dependency only: interpreted, this file runs without it
    _COMPILED = False
else:
    _COMPILED = cython.compiled

# ids from a3s_gateway.http.hdrs, repeated as literals so the compiled module needs no import at call time.
_OTHER = 0
_HOST = 1
_CONTENT_LENGTH = 2
_TRANSFER_ENCODING = 3
_CONNECTION = 4
_KEEP_ALIVE = 5
_PROXY_CONNECTION = 6
_PROXY_AUTHENTICATE = 7
_PROXY_AUTHORIZATION = 8
_TE = 9
_TRAILER = 10
_UPGRADE = 11
_EXPECT = 12
_X_FORWARDED_FOR = 13
_X_FORWARDED_PROTO = 14
_X_FORWARDED_HOST = 15
_X_FORWARDED_PORT = 16
_X_REAL_IP = 17
_X_REQUEST_ID = 18
_CONTENT_TYPE = 19
_USER_AGENT = 20
_TRACEPARENT = 21
_TRACESTATE = 22
_B3 = 23
# 24-28: the X-B3-* set

# bits of ``trace_drop`` (the formats the tracer injects; their incoming headers are replaced)
_DROP_W3C = 1
_DROP_B3 = 2
_DROP_B3MULTI = 4

_CRLF = b"\r\n"
_COLON = b": "


def _join(parts: list[bytes]) -> bytes:
    """``b"".join(parts)``. Compiled: the sizes summed, one allocation, one memcpy per part (the generic join
    goes through the buffer protocol for every part, which costs more than copying a header's few bytes)."""
    if _COMPILED:
        total = 0
        for part in parts:
            total += len(part)
        out = PyBytes_FromStringAndSize(cython.NULL, total)  # type: ignore[name-defined]  # noqa: F821
        p = PyBytes_AS_STRING(out)  # type: ignore[name-defined]  # noqa: F821
        for part in parts:
            n = len(part)
            memcpy(p, PyBytes_AS_STRING(part), n)  # type: ignore[name-defined]  # noqa: F821
            p += n
        return out  # type: ignore[no-any-return]
    return b"".join(parts)


def _passes(hid: int) -> bool:
    """Whether a response header of ``hdrs`` id ``hid`` is relayed to the client (hop-by-hop headers and the body
    framing are not: the gateway writes its own)."""
    return hid == _OTHER or hid == _CONTENT_TYPE or hid >= _X_FORWARDED_FOR or hid == _HOST or hid == _EXPECT


def _listed(name: bytes, tokens: tuple[bytes, ...]) -> bool:
    """True when ``name`` (any case) is one of the lower-case Connection ``tokens``."""
    return name.lower() in tokens


def request_head(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    header_ids: bytes,
    connection_tokens: tuple[bytes, ...],
    host_value: bytes | None,
    orig_host: bytes,
    peer_ip: bytes,
    real_ip: bytes,
    proto: bytes,
    port: bytes,
    trusted: bool,
    framing: bytes,
    trace_drop: int = 0,
    edited: int = 0,
) -> tuple[bytes, bytes]:
    """Build the upstream request head in one buffer.

    Returns ``(head, request_id)``. ``host_value`` replaces the Host value, or is added when the request has no
    Host line; ``None`` passes the client's Host line through (only when it is the request's host: origin-form,
    ``pass_host_header``). ``orig_host`` is the request's host as routing saw it (an absolute-form target's
    authority, never a Host line it replaced): the X-Forwarded-Host value, none when empty (SPEC §5.3).
    ``framing`` is the body framing line(s) to add (``Content-Length: n\\r\\n``, ``Transfer-Encoding: chunked\\r\\n``
    or empty) plus any gateway-added lines (trace context). ``trace_drop`` (bits 1 W3C, 2 B3, 4 B3 multi) drops the
    incoming headers of the trace formats the gateway injects; ``tracestate`` always passes. Hop-by-hop headers,
    ``Expect`` and names listed in ``Connection`` are dropped; X-Forwarded-* and X-Real-IP are set per SPEC §5.2:
    ``peer_ip`` is appended to X-Forwarded-For, ``real_ip`` (the client IP, which differs for trusted peers) is
    X-Real-IP. ``edited`` has bit ``1 << id`` set for every ``hdrs`` id a middleware set or deleted: Host and the
    forwarding headers among them (X-Forwarded-*, X-Real-IP, X-Request-Id) pass as the middleware left them and the
    gateway adds none of its own, since SPEC §5.2 sets them before middlewares run.
    """
    parts: list[bytes] = [method, b" ", target, b" HTTP/1.1\r\n"]
    xff: bytes = b""
    seen_host = False
    request_id: bytes = b""
    seen_proto = False
    seen_fhost = False
    seen_port = False
    set_xff = True
    set_real_ip = True
    set_request_id = True
    if edited:
        seen_proto = (edited >> _X_FORWARDED_PROTO) & 1 != 0
        seen_fhost = (edited >> _X_FORWARDED_HOST) & 1 != 0
        seen_port = (edited >> _X_FORWARDED_PORT) & 1 != 0
        set_xff = (edited >> _X_FORWARDED_FOR) & 1 == 0
        set_real_ip = (edited >> _X_REAL_IP) & 1 == 0
        set_request_id = (edited >> _X_REQUEST_ID) & 1 == 0
    n = len(headers)
    i = 0
    while i < n:
        hid = header_ids[i]
        name, value = headers[i]
        i += 1
        if hid >= _TRACEPARENT and hid != _TRACESTATE:
            if hid == _TRACEPARENT:
                if trace_drop & _DROP_W3C:
                    continue
            elif hid == _B3:
                if trace_drop & _DROP_B3:
                    continue
            elif trace_drop & _DROP_B3MULTI:
                continue
            hid = _OTHER
        if hid == _OTHER or hid == _CONTENT_TYPE or hid >= _USER_AGENT:
            if connection_tokens and _listed(name, connection_tokens):
                continue
            parts.append(name)
            parts.append(_COLON)
            parts.append(value)
            parts.append(_CRLF)
        elif edited and (edited >> hid) & 1 and (hid == _HOST or _X_FORWARDED_FOR <= hid <= _X_REQUEST_ID):
            # set by a middleware (a deleted one is not in the list): kept as it is
            if hid == _HOST:
                seen_host = True
            elif hid == _X_REQUEST_ID and not request_id:
                request_id = value
            parts.append(name)
            parts.append(_COLON)
            parts.append(value)
            parts.append(_CRLF)
        elif hid == _HOST:
            seen_host = True
            parts.append(name)
            parts.append(_COLON)
            parts.append(value if host_value is None else host_value)
            parts.append(_CRLF)
        elif hid == _X_FORWARDED_FOR:
            xff = value if not xff else xff + b", " + value
        elif hid == _X_REQUEST_ID:
            if request_id or not (0 < len(value) <= 200) or not _visible(value):
                continue
            request_id = value
            parts.append(name)
            parts.append(_COLON)
            parts.append(value)
            parts.append(_CRLF)
        elif hid == _X_FORWARDED_PROTO or hid == _X_FORWARDED_HOST or hid == _X_FORWARDED_PORT:
            if trusted:
                if hid == _X_FORWARDED_PROTO:
                    seen_proto = True
                elif hid == _X_FORWARDED_HOST:
                    seen_fhost = True
                else:
                    seen_port = True
                parts.append(name)
                parts.append(_COLON)
                parts.append(value)
                parts.append(_CRLF)
        # everything else (hop-by-hop, Content-Length, Expect, X-Real-IP) is dropped or re-added below
    if not seen_host and host_value is not None:  # HTTP/1.0 without Host: the backend's host (SPEC §5.3)
        parts.append(b"Host: ")
        parts.append(host_value)
        parts.append(_CRLF)
    if set_xff:
        parts.append(b"X-Forwarded-For: ")
        if xff:
            parts.append(xff)
            parts.append(b", ")
        parts.append(peer_ip)
        parts.append(_CRLF)
    if not seen_proto:
        parts.append(b"X-Forwarded-Proto: ")
        parts.append(proto)
        parts.append(_CRLF)
    if not seen_fhost and orig_host:
        parts.append(b"X-Forwarded-Host: ")
        parts.append(orig_host)
        parts.append(_CRLF)
    if not seen_port:
        parts.append(b"X-Forwarded-Port: ")
        parts.append(port)
        parts.append(_CRLF)
    if set_real_ip:
        parts.append(b"X-Real-IP: ")
        parts.append(real_ip)
        parts.append(_CRLF)
    if set_request_id and not request_id:
        request_id = _new_request_id()
        parts.append(b"X-Request-Id: ")
        parts.append(request_id)
        parts.append(_CRLF)
    parts.append(framing)
    parts.append(_CRLF)
    return _join(parts), request_id


_ID_POOL_BYTES = 4096
_id_pool = b""
_id_pos = _ID_POOL_BYTES


def _new_request_id() -> bytes:
    """32 random hex characters. Random bytes are drawn 4 KiB at a time: one getrandom() per 256 requests."""
    global _id_pool, _id_pos
    if _id_pos >= _ID_POOL_BYTES:
        _id_pool = os.urandom(_ID_POOL_BYTES)
        _id_pos = 0
    start = _id_pos
    _id_pos = start + 16
    return _id_pool[start : start + 16].hex().encode()


def _visible(value: bytes) -> bool:
    """Visible ASCII only (0x21-0x7e)."""
    for c in value:
        if c < 0x21 or c > 0x7E:
            return False
    return True


def response_head(
    status_line: bytes,
    headers: list[tuple[bytes, bytes]],
    header_ids: bytes,
    connection_tokens: tuple[bytes, ...],
    framing: bytes,
    extra: bytes,
) -> bytes:
    """Build the client response head in one buffer.

    ``status_line`` ends with CRLF. Hop-by-hop headers, Content-Length and names listed in ``Connection`` are
    dropped; ``framing`` (Content-Length / Transfer-Encoding / Connection lines) and ``extra`` (header lines added
    by the gateway) are appended before the final CRLF.
    """
    if _COMPILED and not connection_tokens:
        return _response_head_direct(status_line, headers, header_ids, framing, extra)
    parts: list[bytes] = [status_line]
    n = len(headers)
    i = 0
    while i < n:
        hid = header_ids[i]
        if _passes(hid):
            name, value = headers[i]
            i += 1
            if connection_tokens and _listed(name, connection_tokens):
                continue
            parts.append(name)
            parts.append(_COLON)
            parts.append(value)
            parts.append(_CRLF)
        else:
            i += 1
    parts.append(framing)
    parts.append(extra)
    parts.append(_CRLF)
    return _join(parts)


def _response_head_direct(status_line: bytes, headers: list[tuple[bytes, bytes]], header_ids: bytes, framing: bytes,
                          extra: bytes) -> bytes:
    """``response_head`` without Connection tokens, compiled only: the size is summed in a first pass over the
    headers, then every line is copied straight into the one result (no list of parts)."""
    n = len(headers)
    total = len(status_line) + len(framing) + len(extra) + 2
    i = 0
    while i < n:
        hid = header_ids[i]
        if _passes(hid):
            name, value = headers[i]
            total += len(name) + len(value) + 4
        i += 1
    out = PyBytes_FromStringAndSize(cython.NULL, total)  # type: ignore[name-defined]  # noqa: F821
    p = PyBytes_AS_STRING(out)  # type: ignore[name-defined]  # noqa: F821
    size = len(status_line)
    memcpy(p, PyBytes_AS_STRING(status_line), size)  # type: ignore[name-defined]  # noqa: F821
    p += size
    i = 0
    while i < n:
        hid = header_ids[i]
        if _passes(hid):
            name, value = headers[i]
            size = len(name)
            memcpy(p, PyBytes_AS_STRING(name), size)  # type: ignore[name-defined]  # noqa: F821
            p += size
            p[0] = 58  # ": "
            p[1] = 32
            p += 2
            size = len(value)
            memcpy(p, PyBytes_AS_STRING(value), size)  # type: ignore[name-defined]  # noqa: F821
            p += size
            p[0] = 13  # CRLF
            p[1] = 10
            p += 2
        i += 1
    size = len(framing)
    memcpy(p, PyBytes_AS_STRING(framing), size)  # type: ignore[name-defined]  # noqa: F821
    p += size
    size = len(extra)
    memcpy(p, PyBytes_AS_STRING(extra), size)  # type: ignore[name-defined]  # noqa: F821
    p += size
    p[0] = 13
    p[1] = 10
    return out  # type: ignore[no-any-return]


def interim_head(status_line: bytes, headers: list[tuple[bytes, bytes]], header_ids: bytes) -> bytes:
    """A 1xx head (e.g. 103 Early Hints) relayed as received minus hop-by-hop headers."""
    return response_head(status_line, headers, header_ids, (), b"", b"")
