"""Header filtering and head serialisation, compiled and pure (SPEC §5.2, §5.3)."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from impls import load, twins

from a3s_gateway.http import hdrs


def ids(headers: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(hdrs.NAMES.get(n.lower(), 0) for n, _ in headers)


@pytest.fixture(params=twins("header filter"))
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


def head_lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_request_head_filters_and_adds(mod: ModuleType) -> None:
    headers = [
        (b"Host", b"api.example.com:8080"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"s"),
        (b"Keep-Alive", b"5"),
        (b"TE", b"trailers"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"x"),
        (b"Proxy-Connection", b"x"),
        (b"Trailer", b"X"),
        (b"Expect", b"100-continue"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"X-Forwarded-For", b"2.2.2.2"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Real-IP", b"9.9.9.9"),
        (b"Content-Length", b"5"),
        (b"accept", b"*/*"),
        (b"Content-Type", b"a/b"),
    ]
    head, rid = mod.request_head(
        b"POST",
        b"/v1?x",
        headers,
        ids(headers),
        (b"x-secret",),
        None,
        b"api.example.com:8080",
        b"127.0.0.1", b"127.0.0.1",
        b"http",
        b"8080",
        False,
        b"Transfer-Encoding: chunked\r\n",
    )
    lines = head_lines(head)
    assert lines[0] == b"POST /v1?x HTTP/1.1"
    assert lines[1:] == [
        b"Host: api.example.com:8080",
        b"accept: */*",
        b"Content-Type: a/b",
        b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 127.0.0.1",
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Host: api.example.com:8080",
        b"X-Forwarded-Port: 8080",
        b"X-Real-IP: 127.0.0.1",
        b"X-Request-Id: " + rid,
        b"Transfer-Encoding: chunked",
    ]
    assert len(rid) == 32 and int(rid, 16) >= 0


def test_request_head_host_override_and_request_id_kept(mod: ModuleType) -> None:
    headers = [(b"host", b"client"), (b"X-Request-Id", b"abc-123")]
    head, rid = mod.request_head(
        b"GET", b"/", headers, ids(headers), (), b"backend:81", b"client", b"::1", b"::1", b"http", b"80", False, b""
    )
    lines = head_lines(head)
    assert b"host: backend:81" in lines and b"X-Forwarded-Host: client" in lines
    assert rid == b"abc-123" and lines.count(b"X-Request-Id: abc-123") == 1


def test_request_head_absolute_form_authority_replaces_host(mod: ModuleType) -> None:
    """SPEC §5.3: the authority of an absolute-form target replaces the client's Host, in Host and in
    X-Forwarded-Host; the Host line that was replaced appears nowhere."""
    headers = [(b"Host", b"admin.local"), (b"Accept", b"*/*")]
    head, _ = mod.request_head(b"GET", b"/", headers, ids(headers), (), b"public.local", b"public.local",
                               b"1.2.3.4", b"1.2.3.4", b"http", b"80", False, b"")
    lines = head_lines(head)
    assert lines[1] == b"Host: public.local" and b"X-Forwarded-Host: public.local" in lines
    assert b"admin.local" not in head


def test_request_head_without_host_gets_one(mod: ModuleType) -> None:
    """SPEC §5.3: a request with no host at all (HTTP/1.0) is sent with the backend's; no X-Forwarded-Host."""
    headers = [(b"Accept", b"*/*")]
    head, _ = mod.request_head(b"GET", b"/", headers, ids(headers), (), b"backend:8080", b"", b"1.2.3.4",
                               b"1.2.3.4", b"http", b"80", False, b"")
    lines = head_lines(head)
    assert lines.count(b"Host: backend:8080") == 1
    assert not any(line.startswith(b"X-Forwarded-Host") for line in lines)


def test_request_head_keeps_forwarding_headers_a_middleware_edited(mod: ModuleType) -> None:
    """SPEC §5.2, §6.8: forwarding headers a middleware set (in the list) or deleted (not in it) are sent as it left
    them, and the gateway adds none of its own for them; the others are the gateway's as usual."""
    edited = 0
    for hid in (hdrs.X_FORWARDED_PROTO, hdrs.X_FORWARDED_FOR, hdrs.X_REAL_IP, hdrs.X_REQUEST_ID):
        edited |= 1 << hid
    headers = [(b"Host", b"h"), (b"X-Forwarded-Proto", b"https"), (b"X-Real-IP", b"203.0.113.9")]
    head, rid = mod.request_head(b"GET", b"/", headers, ids(headers), (), None, b"h", b"1.2.3.4", b"1.2.3.4",
                                 b"http", b"80", False, b"", 0, edited)
    lines = head_lines(head)
    assert lines[1:] == [b"Host: h", b"X-Forwarded-Proto: https", b"X-Real-IP: 203.0.113.9",
                         b"X-Forwarded-Host: h", b"X-Forwarded-Port: 80"]
    assert rid == b""  # deleted: none sent (the access log makes its own)
    headers = [(b"Host", b"h"), (b"X-Request-Id", b"mw id"), (b"X-Forwarded-For", b"10.0.0.1")]
    head, rid = mod.request_head(b"GET", b"/", headers, ids(headers), (), None, b"h", b"1.2.3.4", b"1.2.3.4",
                                 b"http", b"80", False, b"", 0, edited)
    assert rid == b"mw id" and head_lines(head).count(b"X-Forwarded-For: 10.0.0.1") == 1
    assert b"1.2.3.4" not in head


@pytest.mark.parametrize("bad", [b"", b"has space", b"x" * 201])
def test_invalid_request_id_replaced(mod: ModuleType, bad: bytes) -> None:
    headers = [(b"Host", b"h"), (b"X-Request-Id", bad)]
    head, rid = mod.request_head(
        b"GET", b"/", headers, ids(headers), (), None, b"h", b"1.2.3.4", b"1.2.3.4", b"http", b"80", False, b""
    )
    assert rid != bad and len(rid) == 32 and head.count(b"X-Request-Id") == 1


def test_trusted_peer_keeps_forwarded_headers(mod: ModuleType) -> None:
    headers = [
        (b"Host", b"h"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"orig"),
        (b"X-Forwarded-Port", b"443"),
    ]
    head, _ = mod.request_head(
        b"GET", b"/", headers, ids(headers), (), None, b"h", b"10.0.0.1", b"203.0.113.5", b"http", b"80", True, b""
    )
    lines = head_lines(head)
    assert b"X-Real-IP: 203.0.113.5" in lines and b"X-Forwarded-For: 10.0.0.1" in lines
    assert b"X-Forwarded-Proto: https" in lines and b"X-Forwarded-Proto: http" not in lines
    assert b"X-Forwarded-Host: orig" in lines and b"X-Forwarded-Port: 443" in lines


def test_response_head(mod: ModuleType) -> None:
    headers = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"close, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Keep-Alive", b"x"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"3"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Proxy-Authenticate", b"x"),
        (b"X-Request-Id", b"r"),
    ]
    head = mod.response_head(
        b"HTTP/1.1 200 OK\r\n", headers, ids(headers), (b"x-internal",), b"Content-Length: 3\r\n", b"X-Extra: 1\r\n"
    )
    assert head_lines(head) == [
        b"HTTP/1.1 200 OK",
        b"Content-Type: text/plain",
        b"Set-Cookie: a=1",
        b"Set-Cookie: b=2",
        b"X-Request-Id: r",
        b"Content-Length: 3",
        b"X-Extra: 1",
    ]


def test_interim_head(mod: ModuleType) -> None:
    headers = [(b"Link", b"</a>; rel=preload"), (b"Connection", b"keep-alive")]
    assert mod.interim_head(b"HTTP/1.1 103 Early Hints\r\n", headers, ids(headers)) == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
    )


def test_generated_request_ids_are_unique(mod: ModuleType) -> None:
    headers = [(b"Host", b"h")]
    seen = {mod.request_head(b"GET", b"/", headers, ids(headers), (), None, b"h", b"1.1.1.1", b"1.1.1.1", b"http",
                             b"80", False, b"")[1] for _ in range(1000)}  # crosses several 4 KiB pools
    assert len(seen) == 1000 and all(len(r) == 32 for r in seen)


TRACE_HEADERS = [
    (b"Host", b"h"),
    (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    (b"tracestate", b"vendor=x"),
    (b"b3", b"0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1"),
    (b"X-B3-TraceId", b"0af7651916cd43dd8448eb211c80319c"),
    (b"X-B3-SpanId", b"b7ad6b7169203331"),
    (b"X-B3-ParentSpanId", b"a7ad6b7169203331"),
    (b"X-B3-Sampled", b"1"),
    (b"X-B3-Flags", b"0"),
    (b"User-Agent", b"curl/8"),
]


@pytest.mark.parametrize(
    ("drop", "gone"),
    [
        (0, set()),
        (1, {b"traceparent"}),
        (2, {b"b3"}),
        (4, {b"X-B3-TraceId", b"X-B3-SpanId", b"X-B3-ParentSpanId", b"X-B3-Sampled", b"X-B3-Flags"}),
        (7, {b"traceparent", b"b3", b"X-B3-TraceId", b"X-B3-SpanId", b"X-B3-ParentSpanId", b"X-B3-Sampled",
             b"X-B3-Flags"}),
    ],
)
def test_trace_headers_of_injected_formats_are_replaced(mod: ModuleType, drop: int, gone: set[bytes]) -> None:
    """SPEC §11.4: incoming headers of every injected format are dropped; tracestate and the rest pass."""
    inject = b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-1111111111111111-01\r\n"
    head, _ = mod.request_head(b"GET", b"/", TRACE_HEADERS, ids(TRACE_HEADERS), (), None, b"h", b"1.1.1.1",
                               b"1.1.1.1", b"http", b"80", False, inject, drop)
    lines = head_lines(head)
    assert lines[-1] == inject[:-2]  # gateway lines come last
    names = [line.split(b":")[0] for line in lines[1:-1]]
    for name, _ in TRACE_HEADERS:
        assert (name in names) == (name not in gone), name


def test_trace_header_ids() -> None:
    assert ids(TRACE_HEADERS) == bytes([1, 21, 22, 23, 24, 25, 26, 27, 28, 20])


_NAMES = [*hdrs.NAMES, b"server", b"set-cookie", b"x-a", b"etag", b"content-type"]
_header = st.tuples(
    st.builds(lambda name, upper: name.upper() if upper else name, st.sampled_from(_NAMES), st.booleans()),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(_header, max_size=40), status=st.binary(max_size=40), framing=st.binary(max_size=60),
       extra=st.binary(max_size=60), tokens=st.sampled_from([(), (), (b"x-a",)]))
def test_response_heads_agree(headers: list[tuple[bytes, bytes]], status: bytes, framing: bytes, extra: bytes,
                              tokens: tuple[bytes, ...]) -> None:
    """The compiled builder (sizes summed, then lines copied into one buffer) writes what the pure one writes."""
    pure = load(twins("header filter")[-1].values[0])
    expected = pure.response_head(status + b"\r\n", headers, ids(headers), tokens, framing, extra)
    for param in twins("header filter"):
        mod = load(param.values[0])
        assert mod.response_head(status + b"\r\n", headers, ids(headers), tokens, framing, extra) == expected
        assert mod.interim_head(status + b"\r\n", headers, ids(headers)) == pure.interim_head(
            status + b"\r\n", headers, ids(headers))


def test_response_head_rejects_what_is_not_bytes(mod: ModuleType) -> None:
    headers: list[object] = [(b"Server", b"x"), (b"X-A", "text")]
    with pytest.raises(TypeError):
        mod.response_head(b"HTTP/1.1 200 OK\r\n", headers, b"\x00\x00", (), b"", b"")
