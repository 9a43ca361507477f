"""Response-head vectors for both HTTP/1 parser implementations (SPEC §5.4, §5.7, RFC 9112).

Each vector is a raw response head and either the fields it must parse to (a subset of ``ResponseHead``;
``head_len`` defaults to ``len(raw)``) or the ``(status, message)`` of the ``ProtocolError``: always 502.
"""

from __future__ import annotations

from typing import NamedTuple


class Resp(NamedTuple):
    name: str
    raw: bytes
    expect: dict[str, object] | tuple[int, str]
    limits: dict[str, int] | None = None  # keyword arguments of parse_response


UPSTREAM = (502, "Upstream protocol error")

VALID: list[Resp] = [
    Resp("200 with content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", {
        "status": 200, "reason": b"OK", "version": 1, "content_length": 5, "chunked": False, "keep_alive": True,
        "upgrade": False, "event_stream": False, "connection_tokens": (),
        "headers": [(b"Content-Length", b"5"), (b"Content-Type", b"text/plain")], "header_ids": b"\x02\x13"}),
    Resp("204 without framing", b"HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n",
         {"status": 204, "reason": b"No Content", "content_length": -1, "keep_alive": True}),
    Resp("chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
         {"chunked": True, "keep_alive": True, "content_length": -1}),
    Resp("gzip then chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
         {"chunked": True, "keep_alive": True}),
    Resp("te not chunked is close-delimited", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
         {"chunked": False, "keep_alive": False, "content_length": -1}),
    Resp("chunked then gzip is close-delimited", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
         {"chunked": False, "keep_alive": False}),
    Resp("cl and te: te wins, connection closes",
         b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
         {"chunked": True, "content_length": -1, "keep_alive": False}),
    Resp("http/1.0 closes by default", b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
         {"version": 0, "keep_alive": False, "content_length": 1}),
    Resp("http/1.0 keep-alive", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
         {"version": 0, "keep_alive": True}),
    Resp("connection close", b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n", {"keep_alive": False}),
    Resp("connection tokens", b"HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: 1\r\n\r\n",
         {"keep_alive": True, "connection_tokens": (b"x-hop",)}),
    Resp("101 upgrade", b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
         {"status": 101, "upgrade": True, "header_ids": b"\x04\x0b"}),
    Resp("100 continue", b"HTTP/1.1 100 Continue\r\n\r\n", {"status": 100, "headers": [], "header_ids": b""}),
    Resp("103 early hints", b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n", {"status": 103}),
    Resp("event stream", b"HTTP/1.1 200 OK\r\nContent-Type: Text/Event-Stream ; charset=utf-8\r\n\r\n",
         {"event_stream": True}),
    Resp("event stream, first content-type counts",
         b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Type: text/event-stream\r\n\r\n",
         {"event_stream": False}),
    Resp("not event stream", b"HTTP/1.1 200 OK\r\nContent-Type: text/event-streams\r\n\r\n", {"event_stream": False}),
    Resp("no reason phrase", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", {"status": 200, "reason": b""}),
    Resp("empty reason phrase", b"HTTP/1.1 404 \r\n\r\n", {"status": 404, "reason": b""}),
    Resp("reason with tab and obs-text", b"HTTP/1.1 599 Weird\tReason \xe2\x9c\x93 \r\n\r\n",
         {"status": 599, "reason": b"Weird\tReason \xe2\x9c\x93 "}),
    Resp("content-length list merged", b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
         {"content_length": 3}),
    Resp("header values stripped", b"HTTP/1.1 200 OK\r\nSet-Cookie:  a=b; Path=/ \t\r\n\r\n",
         {"headers": [(b"Set-Cookie", b"a=b; Path=/")]}),
    Resp("status line and header section each exactly max_header_bytes",
         b"HTTP/1.1 200 OK\r\nA: 1234567890\r\n\r\n", {"status": 200}, {"max_header_bytes": 17}),
]

INVALID: list[Resp] = [
    Resp("http/2 status line", b"HTTP/2 200 OK\r\n\r\n", UPSTREAM),
    Resp("http/2.0", b"HTTP/2.0 200 OK\r\n\r\n", UPSTREAM),
    Resp("lower-case protocol", b"http/1.1 200 OK\r\n\r\n", UPSTREAM),
    Resp("two-digit status", b"HTTP/1.1 20 OK\r\n\r\n", UPSTREAM),
    Resp("four-digit status", b"HTTP/1.1 2000 OK\r\n\r\n", UPSTREAM),
    Resp("status 600", b"HTTP/1.1 600 Nope\r\n\r\n", UPSTREAM),
    Resp("status 099", b"HTTP/1.1 099 Nope\r\n\r\n", UPSTREAM),
    Resp("no space after version", b"HTTP/1.1200 OK\r\n\r\n", UPSTREAM),
    Resp("two spaces after version", b"HTTP/1.1  200 OK\r\n\r\n", UPSTREAM),
    Resp("no space before reason", b"HTTP/1.1 200OK\r\n\r\n", UPSTREAM),
    Resp("leading empty line", b"\r\nHTTP/1.1 200 OK\r\n\r\n", UPSTREAM),
    Resp("bare lf", b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", UPSTREAM),
    Resp("nul in reason", b"HTTP/1.1 200 O\x00K\r\n", UPSTREAM),
    Resp("space before colon", b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n", UPSTREAM),
    Resp("obs-fold", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\n\r\n", UPSTREAM),
    Resp("control in value", b"HTTP/1.1 200 OK\r\nX-A: 1\x012\r\n\r\n", UPSTREAM),
    Resp("invalid content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 1a\r\n\r\n", UPSTREAM),
    Resp("differing content-length", b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", UPSTREAM),
    Resp("invalid content-length with te",
         b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n", UPSTREAM),
    Resp("te in http/1.0", b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", UPSTREAM),
    Resp("chunked twice", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", UPSTREAM),
    Resp("empty te", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", UPSTREAM),
    Resp("te with parameters", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;a=b\r\n\r\n", UPSTREAM),
    Resp("too many headers", b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", UPSTREAM, {"max_headers": 1}),
    Resp("header section too large", b"HTTP/1.1 200 OK\r\nA: 12345678901\r\n\r\n", UPSTREAM,
         {"max_header_bytes": 17}),
    Resp("status line too long, incomplete", b"HTTP/1.1 200 " + b"r" * 40, UPSTREAM, {"max_header_bytes": 32}),
]
