"""The response of an HTTP/2 stream as fields (issue 17): what http2.response_fields keeps of a backend head and
the gateway's lines, and the gateway's own answers as fields (proxy/responses.py) — the values the HTTP/1.1 head
carries, without connection-specific fields (RFC 9113 §8.2.2)."""

from __future__ import annotations

import orjson

from a3s_gateway.http import hdrs
from a3s_gateway.proxy import responses
from a3s_gateway.proxy.http2 import own_fields, response_fields


def ids(headers: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(hdrs.NAMES.get(n.lower(), 0) for n, _ in headers)


def test_response_fields_drop_framing_hop_by_hop_and_connection_named_fields() -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"9"), (b"Transfer-Encoding", b"chunked"),
               (b"Connection", b"close, X-Private"), (b"X-Private", b"1"), (b"Keep-Alive", b"timeout=5"),
               (b"Proxy-Authenticate", b"Basic"), (b"Trailer", b"x-sum"), (b"Upgrade", b"h2c"), (b"TE", b"trailers"),
               (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"X-Value", b"  spaced\x80")]
    fields = response_fields(201, headers, ids(headers), (b"x-private",), 12, b"X-A3S-Cold-Start: 1\r\n")
    assert fields == [(b":status", b"201"), (b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                      (b"set-cookie", b"b=2"), (b"x-value", b"  spaced\x80"), (b"content-length", b"12"),
                      (b"x-a3s-cold-start", b"1")]
    assert response_fields(204, [], b"", (), -1, b"") == [(b":status", b"204")]


def test_own_fields_lower_case_without_connection_specific_fields() -> None:
    assert own_fields([(b"Grpc-Status", b"0"), (b"Connection", b"close"), (b"TE", b"trailers"),
                       (b"Transfer-Encoding", b"chunked")]) == [(b"grpc-status", b"0")]


def test_gateway_answers_as_fields_carry_the_text_answers_values() -> None:
    fields, body = responses.error_fields("Request buffer full", b"Retry-After: 5\r\nX-A3S-Cold-Start: 1\r\n")
    fields = own_fields(fields)  # as the stream sends them
    assert body == orjson.dumps({"error": "Request buffer full"})
    assert fields[:4] == [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                          (b"retry-after", b"5"), (b"x-a3s-cold-start", b"1")]
    assert fields[4][0] == b"date" and responses.date_line() == b"Date: " + fields[4][1] + b"\r\n"
    grpc = own_fields(responses.grpc_error_fields(503, "No healthy backends", b"Retry-After: 1\r\n"))
    assert grpc[:6] == [(b"content-type", b"application/grpc"), (b"grpc-status", b"14"),
                        (b"grpc-message", b"No healthy backends"), (b"retry-after", b"1"), (b"content-length", b"0"),
                        grpc[5]]
    assert grpc[5][0] == b"date"
    assert responses.redirect_fields(b"https://a/x")[:2] == [(b"location", b"https://a/x"), (b"content-length", b"0")]
