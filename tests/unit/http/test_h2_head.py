"""Request heads of HTTP/2 streams (http/h2_head.py): the same head, or the same rejection, as the HTTP/1.1 parser
gives the equivalent HTTP/1.1 request — what proxy/http2.py used to write as text and parse again."""

from __future__ import annotations

import pytest

from a3s_gateway.errors import ProtocolError
from a3s_gateway.http import _parser_py
from a3s_gateway.http.framing import CHUNKED, new_body_reader
from a3s_gateway.http.h2_head import StreamDecoder, request_head

FIELDS = ("method", "target", "path", "query", "authority", "version", "headers", "header_ids", "host",
          "content_length", "chunked", "keep_alive", "upgrade", "te_trailers", "connection_tokens", "head_len")
TE_CHUNKED = b"transfer-encoding: chunked\r\n"


def equivalent_text(method: bytes, path: bytes, authority: bytes, fields: list[tuple[bytes, bytes]],
                    cookies: list[bytes], body_follows: bool) -> bytes:
    """The HTTP/1.1 head proxy/http2.py wrote for such a stream before heads were built from fields."""
    lines = [n + b": " + v + b"\r\n" for n, v in fields]
    if cookies:
        lines.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
    if body_follows and not any(n == b"content-length" for n, _ in fields):
        lines.append(TE_CHUNKED)
    return b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, path, authority, b"".join(lines))


def parsed(text: bytes, **limits: int) -> _parser_py.RequestHead:
    head = _parser_py.parse_request(text, *limits.values())
    assert head is not None
    return head


CASES = [
    (b"GET", b"/", b"example.com", [], [], False),
    (b"GET", b"/a/b?x=1&y=%20z", b"api.example.com:8443", [(b"accept", b"*/*"), (b"user-agent", b"curl/8")], [],
     False),
    (b"POST", b"/v1/chat", b"h", [(b"content-type", b"application/json"), (b"content-length", b"12")], [], True),
    (b"POST", b"/upload", b"h", [(b"content-type", b"text/plain")], [], True),  # unannounced length
    (b"GET", b"/c", b"h", [(b"accept", b"a")], [b"a=1", b"b=2", b"c=3"], False),
    (b"GET", b"/f", b"h", [(b"x-forwarded-for", b"10.0.0.1"), (b"x-request-id", b"r1"), (b"te", b"trailers"),
                           (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")], [], False),
    (b"OPTIONS", b"*", b"h", [], [], False),
    (b"PUT", b"/p", b"", [(b"content-length", b"0")], [], False),  # no authority: an empty Host, as before
    (b"POST", b"/g", b"h", [(b"content-type", b"application/grpc"), (b"te", b"trailers"),
                            (b"grpc-timeout", b"5S")], [], True),
]


@pytest.mark.parametrize("case", CASES, ids=[c[1].decode() + ("+body" if c[5] else "") for c in CASES])
def test_head_is_that_of_the_equivalent_http1_request(case: tuple) -> None:
    method, path, authority, fields, cookies, body_follows = case
    head = request_head(method, path, authority, fields, cookies, body_follows)
    text = equivalent_text(*case)
    want = parsed(text)
    if want.chunked:  # the text said so with a header; the stream says it with END_STREAM, no header
        i = want.headers.index((b"transfer-encoding", b"chunked"))
        want.headers = want.headers[:i] + want.headers[i + 1 :]
        want.header_ids = want.header_ids[:i] + want.header_ids[i + 1 :]
        want.head_len -= len(TE_CHUNKED)
    for name in FIELDS:
        assert getattr(head, name) == getattr(want, name), name
    assert head.expect_continue is False  # no 100-continue handshake on HTTP/2
    assert head.request_fields() == want.request_fields()


def test_cookies_are_one_field_joined_with_semicolons() -> None:
    head = request_head(b"GET", b"/", b"h", [(b"accept", b"x")], [b"a=1", b"b=2"], False)
    assert head.headers[-1] == (b"cookie", b"a=1; b=2")
    assert head.headers[0] == (b"host", b"h")


def test_body_framing() -> None:
    assert request_head(b"POST", b"/", b"h", [], [], True).chunked is True
    assert request_head(b"POST", b"/", b"h", [], [], False).chunked is False
    with_length = request_head(b"POST", b"/", b"h", [(b"content-length", b"5")], [], True)
    assert (with_length.chunked, with_length.content_length) == (False, 5)


REJECTED = [
    (b"G@T", b"/", b"h", [], [], False),
    (b"GET", b"/a#frag", b"h", [], [], False),
    (b"GET", b"/a%zz", b"h", [], [], False),
    (b"GET", b"/a b", b"h", [], [], False),
    (b"GET", b"/", b"h", [(b"x-a", b"one\x01two")], [], False),
    (b"GET", b"/", b"h", [(b"x-a", b"\x7f")], [], False),
    (b"GET", b"/", b"h", [], [b"a=\x02"], False),
    (b"GET", b"/", b"bad host!", [], [], False),
    (b"GET", b"/", b"h/x", [], [], False),
    (b"POST", b"/", b"h", [(b"content-length", b"x1")], [], True),
    (b"POST", b"/", b"h", [(b"content-length", b"1"), (b"content-length", b"2")], [], True),
    (b"POST", b"/", b"h", [(b"content-length", b"1234567890123456789")], [], True),
    (b"GET", b"/", b"h", [(b"x-a", b"1")] * 120, [], False),
    # control characters in the method or the path: "invalid characters" (a malformed stream, RST_STREAM), as the
    # parser says of the request line (found by fuzz/targets.py h2head); h2 itself lets these through
    (b"G\x01T", b"/", b"h", [], [], False),
    (b"GET", b"/a\x7f", b"h", [], [], False),
    (b"GET", b"/a\tb", b"h", [], [], False),
    (b"G\x1b", b"/" + b"a" * 9000, b"h", [], [], False),  # before the length check, like the parser
    (b"GET", b"/" + b"a" * 9000, b"h", [], [], False),
    (b"GET", b"/", b"h", [(b"x-big", b"v" * 70000)], [], False),
]


@pytest.mark.parametrize("case", REJECTED, ids=[str(i) for i in range(len(REJECTED))])
def test_rejected_like_the_equivalent_http1_request(case: tuple) -> None:
    with pytest.raises(ProtocolError) as want:
        _parser_py.parse_request(equivalent_text(*case))
    with pytest.raises(ProtocolError) as got:
        request_head(*case)
    assert (got.value.status, got.value.message) == (want.value.status, want.value.message)


def test_limits_are_those_given() -> None:
    fields = [(b"x-%d" % i, b"v") for i in range(10)]
    request_head(b"GET", b"/", b"h", fields, [], False, max_headers=11)
    with pytest.raises(ProtocolError) as e:
        request_head(b"GET", b"/", b"h", fields, [], False, max_headers=10)
    assert e.value.status == 431
    with pytest.raises(ProtocolError) as e:
        request_head(b"GET", b"/" + b"a" * 100, b"h", [], [], False, max_line=64)
    assert e.value.status == 414


def test_stream_decoder_reads_unframed_data_and_ends_with_its_trailers() -> None:
    decoder = StreamDecoder()
    reader = new_body_reader(CHUNKED, 0, decoder)
    pieces, consumed = reader.feed(b"hello")
    assert (pieces, consumed, reader.done) == ([b"hello"], 5, False)
    assert reader.rechunk(pieces) == [b"5\r\nhello", b"\r\n"]  # framed for an HTTP/1.1 backend
    decoder.end([(b"x-checksum", b"abc"), (b"content-length", b"5")])
    pieces, consumed = reader.feed(b"")
    assert (pieces, consumed, reader.done, reader.received) == ([], 0, True, 5)
    # the last chunk carries the trailers RFC 9110 allows
    assert reader.rechunk(pieces) == [b"0\r\nx-checksum: abc\r\n\r\n"]
