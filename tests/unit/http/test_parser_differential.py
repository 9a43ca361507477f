"""Differential test of the HTTP/1 parser twins: generated, then mutated, heads and chunked bodies must give the
compiled and the pure implementation identical results — the same fields, or the same ProtocolError — and every
prefix of a message must give either "incomplete" or the outcome of the whole message.
"""

from __future__ import annotations

import importlib
import itertools
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from a3s_gateway import _compat
from a3s_gateway.errors import ProtocolError
from a3s_gateway.http import hdrs

COMPILED_NAME, PURE_NAME = _compat.CYTHON_MODULES["http parser"]
RELAY_COMPILED, RELAY_PURE = _compat.CYTHON_MODULES["body relay"]
pytestmark = pytest.mark.skipif(_compat.NO_EXTENSIONS,
                                reason="A3S_GATEWAY_NO_EXTENSIONS=1: no compiled twin to compare")

REQUEST_FIELDS = ("method", "target", "path", "query", "authority", "version", "headers", "header_ids", "host",
                  "content_length", "chunked", "keep_alive", "expect_continue", "upgrade", "te_trailers",
                  "connection_tokens", "head_len")
RESPONSE_FIELDS = ("status", "reason", "version", "headers", "header_ids", "content_length", "chunked",
                   "keep_alive", "upgrade", "event_stream", "connection_tokens", "head_len")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def twins() -> tuple[ModuleType, ModuleType]:
    try:
        compiled = importlib.import_module(COMPILED_NAME)
    except ImportError as e:  # a missing build fails, never skips
        pytest.fail(f"{COMPILED_NAME} is not built ({e}); build it with `make build`")
    return compiled, importlib.import_module(PURE_NAME)


def outcome(parse: Any, buf: bytes, fields: tuple[str, ...], limits: dict[str, int]) -> Any:
    try:
        head = parse(buf, **limits)
    except ProtocolError as e:
        return ("error", e.status, e.message)
    if head is None:
        return None
    out = {f: getattr(head, f) for f in fields}
    if hasattr(head, "request_fields"):  # the chain's one-call view agrees with the attributes
        body_length = -1 if head.chunked else max(head.content_length, 0)
        assert head.request_fields() == (head.method, head.path, head.query, head.host, head.headers, body_length)
        out["request_fields"] = head.request_fields()
    return out


def check_prefixes(parse: Any, buf: bytes, fields: tuple[str, ...], limits: dict[str, int], whole: Any) -> None:
    """Every prefix parses to None or to the outcome of the whole buffer (byte-by-byte feeding changes nothing)."""
    for i in range(len(buf)):
        got = outcome(parse, buf[:i], fields, limits)
        assert got is None or got == whole, (i, buf[:i], got, whole)


# ---- generators -------------------------------------------------------------------------------------------------

INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b" ", b"\t", b":", b",", b";",
               b"=", b'"', b"\\", b"%", b"#", b"?", b"/", b"@", b"[", b"]", b"a", b"Z", b"0", b"9", b"f", b"-"]
mutation = st.tuples(st.sampled_from(["insert", "replace", "delete"]), st.integers(0, 1 << 16),
                     st.sampled_from(INTERESTING))
# Mostly intact messages, so that valid heads and the later checks are reached often too.
mutations = st.one_of(st.just([]), st.just([]), st.lists(mutation, min_size=1, max_size=1),
                      st.lists(mutation, min_size=1, max_size=3))


def mutate(raw: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    b = bytearray(raw)
    for kind, where, piece in mutations:
        i = where % (len(b) + 1)
        if kind == "insert":
            b[i:i] = piece
        elif kind == "replace":
            b[i:i + 1] = piece
        else:
            del b[i:i + 1]
    return bytes(b)


def any_case(names: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.sampled_from(names).flatmap(lambda n: st.sampled_from([n, n.upper(), n.title()]))


TCHAR = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
visible = st.binary(min_size=0, max_size=12).map(lambda b: bytes(0x21 + c % 94 for c in b))
token = st.binary(min_size=1, max_size=8).map(lambda b: bytes(TCHAR[c % len(TCHAR)] for c in b))
NAMES = [*hdrs.NAMES, b"X-A", b"Accept", b"Cookie", b"x-b", b"User-Agent", b"Accept-Encoding"]
VALUES = [b"", b"a", b"0", b"5", b"5, 5", b"5,6", b"007", b"abc", b"chunked", b"Chunked", b"gzip, chunked",
          b"chunked, gzip", b"chunked, chunked", b", chunked", b"identity", b"close", b"keep-alive", b"Upgrade",
          b"upgrade, X-Foo", b"keep-alive, close", b"100-continue", b"trailers, deflate", b"websocket",
          b"text/event-stream; charset=utf-8", b"text/html", b"example.com:80", b"[::1]:8", b"10.0.0.1",
          b"a b", b" padded\t", b"caf\xc3\xa9", b"u@h", b"x" * 30]
value = st.one_of(st.sampled_from(VALUES), visible)
separator = st.sampled_from([b": ", b": ", b": ", b":", b":\t", b" : "])
field_line = st.builds(lambda n, sep, v: n + sep + v + b"\r\n", st.one_of(any_case(NAMES), any_case(NAMES), token),
                       separator, value)
fields = st.lists(field_line, max_size=6).map(b"".join)

segment = st.sampled_from([b"a", b"v1", b"a", b"%20", b"x.y", b"~", b"!$&'()*+,;=:@", b"", b"%zz", b"\xc3\xa9"])
path = st.lists(segment, max_size=4).map(lambda segs: b"/" + b"/".join(segs))
query = st.one_of(st.none(), st.none(), st.sampled_from([b"", b"a=1", b"q=%41&b", b"?x", b"#f"]))
origin = st.builds(lambda p, q: p if q is None else p + b"?" + q, path, query)
authority = st.sampled_from([b"a", b"example.com", b"example.com:8080", b"[::1]", b"[::1]:80", b"10.0.0.1:1",
                             b"", b":80", b"u@h", b"h:x", b"%41", b"%4", b"[x]"])
absolute = st.builds(lambda s, a, rest: s + b"://" + a + rest, st.sampled_from([b"http", b"HTTPS", b"http", b"ftp"]),
                     authority, st.one_of(st.just(b""), origin, st.just(b"?q")))
target = st.one_of(origin, origin, origin, absolute, st.just(b"*"), authority)
method = st.one_of(st.sampled_from([b"GET", b"GET", b"POST", b"OPTIONS", b"CONNECT", b"HEAD", b"connect"]),
                   st.sampled_from([b"GET", b"POST", b"PUT"]), token, visible.filter(bool))
request_version = st.sampled_from([b"HTTP/1.1"] * 6 + [b"HTTP/1.0"] * 2 + [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/1.10"])
request_head = st.builds(
    lambda lead, m, t, v, host, f, follow: lead + m + b" " + t + b" " + v + b"\r\n" + host + f + b"\r\n" + follow,
    st.sampled_from([b"", b"", b"\r\n"]), method, target, request_version,
    st.sampled_from([b"Host: h\r\n", b"Host: h\r\n", b""]), fields,
    st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n", b"\r\n"]),
)
request_limits = st.one_of(st.just({}), st.just({}), st.fixed_dictionaries({
    "max_line": st.sampled_from([8192, 12, 20, 40]),
    "max_header_bytes": st.sampled_from([65536, 0, 10, 30, 80]),
    "max_headers": st.sampled_from([100, 0, 1, 3]),
}))

status_line = st.builds(lambda v, s, r: v + b" " + s + r + b"\r\n",
                        st.sampled_from([b"HTTP/1.1"] * 4 + [b"HTTP/1.0", b"HTTP/2", b"HTTP/1.2"]),
                        st.sampled_from([b"200", b"200", b"101", b"204", b"100", b"404", b"599", b"600", b"099",
                                         b"20"]),
                        st.sampled_from([b" OK", b" OK", b"", b" ", b" Not\tFound", b"OK", b" caf\xc3\xa9"]))
response_head = st.builds(lambda s, f, follow: s + f + b"\r\n" + follow, status_line, fields,
                          st.sampled_from([b"", b"body", b"HTTP/1.1 200 OK\r\n\r\n"]))
response_limits = st.one_of(st.just({}), st.just({}), st.fixed_dictionaries({
    "max_header_bytes": st.sampled_from([65536, 0, 16, 30, 80]),
    "max_headers": st.sampled_from([100, 0, 1, 3]),
}))

extension = st.sampled_from([b""] * 6 + [b";a", b";a=b", b' ; a = "q\\"x"', b";a=", b"; ", b";a b", b';a="\xff"',
                             b"\t;x=y;z"])
size_format = st.sampled_from(["%x"] * 5 + ["%X", "%04x", "%016x", "%017x", " %x", "%x "])
chunk = st.one_of(
    st.builds(lambda data, fmt, ext: (fmt % len(data)).encode() + ext + b"\r\n" + data + b"\r\n",
              st.binary(min_size=1, max_size=40), size_format, extension),
    # sizes around 2^63-1, the largest allowed (SPEC §5.5): the rest of the body is their data, or the 400
    st.sampled_from([b"7fffffffffffffff\r\nab", b"7FFFFFFFFFFFFFFF;x\r\n", b"8000000000000000\r\nab",
                     b"FFFFFFFFFFFFFFFF\r\n", b"fffffffffffffffff\r\n"]),
)
trailer_line = st.builds(lambda n, v: n + b": " + v + b"\r\n", st.one_of(any_case(NAMES), token), value)
trailers = st.one_of(st.just(b""), st.lists(trailer_line, max_size=3).map(b"".join), fields)
chunked_body = st.builds(
    lambda chunks, last, ext, t, follow: b"".join(chunks) + last + ext + b"\r\n" + t + b"\r\n" + follow,
    st.lists(chunk, max_size=4), st.sampled_from([b"0", b"0", b"000", b"0000000000000000"]), extension, trailers,
    st.sampled_from([b"", b"GET / HTTP/1.1\r\n\r\n"]),
)


# ---- properties -------------------------------------------------------------------------------------------------

@SETTINGS
@given(raw=request_head, mutations=mutations, limits=request_limits)
@example(raw=b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", mutations=[], limits={})
def test_requests_agree(twins: tuple[ModuleType, ModuleType], raw: bytes, mutations: list[tuple[str, int, bytes]],
                        limits: dict[str, int]) -> None:
    compiled, pure = twins
    buf = mutate(raw, mutations)
    whole = outcome(compiled.parse_request, buf, REQUEST_FIELDS, limits)
    assert outcome(pure.parse_request, buf, REQUEST_FIELDS, limits) == whole
    for mod in twins:
        check_prefixes(mod.parse_request, buf, REQUEST_FIELDS, limits, whole)


@SETTINGS
@given(raw=response_head, mutations=mutations, limits=response_limits)
def test_responses_agree(twins: tuple[ModuleType, ModuleType], raw: bytes, mutations: list[tuple[str, int, bytes]],
                         limits: dict[str, int]) -> None:
    compiled, pure = twins
    buf = mutate(raw, mutations)
    whole = outcome(compiled.parse_response, buf, RESPONSE_FIELDS, limits)
    assert outcome(pure.parse_response, buf, RESPONSE_FIELDS, limits) == whole
    for mod in twins:
        check_prefixes(mod.parse_response, buf, RESPONSE_FIELDS, limits, whole)


def feed_all(mod: ModuleType, parts: list[bytes], max_trailer_bytes: int | None) -> tuple[list[Any], Any]:
    """Per-call results, and the overall outcome: (payload, trailers, consumed, done) or the error."""
    dec = mod.ChunkedDecoder() if max_trailer_bytes is None else mod.ChunkedDecoder(max_trailer_bytes)
    calls: list[Any] = []
    body: list[bytes] = []
    consumed = 0
    for part in parts:
        try:
            pieces, used = dec.feed(part)
        except ProtocolError as e:
            calls.append(("error", e.status, e.message))
            return calls, ("error", e.status, e.message)
        assert used == len(part) or dec.done
        calls.append((pieces, used, dec.done))
        body += pieces
        consumed += used
    return calls, (b"".join(body), list(dec.trailers) if dec.done else None, consumed, dec.done)


@SETTINGS
@given(raw=chunked_body, mutations=mutations, cuts=st.lists(st.integers(0, 1 << 16), max_size=6),
       max_trailer_bytes=st.sampled_from([None, None, 0, 2, 8, 24]))
def test_chunked_agree(twins: tuple[ModuleType, ModuleType], raw: bytes, mutations: list[tuple[str, int, bytes]],
                       cuts: list[int], max_trailer_bytes: int | None) -> None:
    compiled, pure = twins
    buf = mutate(raw, mutations)
    points = sorted({c % (len(buf) + 1) for c in cuts} | {0, len(buf)})
    parts = [buf[a:b] for a, b in itertools.pairwise(points)]
    calls, result = feed_all(compiled, parts, max_trailer_bytes)
    assert feed_all(pure, parts, max_trailer_bytes) == (calls, result)
    for mod in twins:  # where the input is cut does not matter
        assert feed_all(mod, [buf], max_trailer_bytes)[1] == result


def rechunk_all(parser: ModuleType, relay: ModuleType, parts: list[bytes]) -> list[Any]:
    """What the relay sends upstream for each part of a chunked request body (SPEC §5.5), or the error."""
    reader = relay.BodyReader(relay.CHUNKED, 0, parser.ChunkedDecoder())
    out: list[Any] = []
    for part in parts:
        try:
            pieces, used = reader.feed(part)
        except ProtocolError as e:
            out.append(("error", e.status, e.message))
            break
        out.append((reader.rechunk(pieces), used, reader.done))
    return out


@SETTINGS
@given(raw=chunked_body, mutations=mutations, cuts=st.lists(st.integers(0, 1 << 16), max_size=6))
def test_rechunk_agree(twins: tuple[ModuleType, ModuleType], raw: bytes, mutations: list[tuple[str, int, bytes]],
                       cuts: list[int]) -> None:
    compiled, pure = twins
    try:
        relay_c = importlib.import_module(RELAY_COMPILED)
    except ImportError as e:  # a missing build fails, never skips
        pytest.fail(f"{RELAY_COMPILED} is not built ({e}); build it with `make build`")
    relay_py = importlib.import_module(RELAY_PURE)
    buf = mutate(raw, mutations)
    points = sorted({c % (len(buf) + 1) for c in cuts} | {0, len(buf)})
    parts = [buf[a:b] for a, b in itertools.pairwise(points)]
    assert rechunk_all(compiled, relay_c, parts) == rechunk_all(pure, relay_py, parts)
