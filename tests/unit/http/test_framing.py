"""Body framing of the relay, compiled and pure."""

from __future__ import annotations

import itertools
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from impls import load, twins

from a3s_gateway.errors import ProtocolError
from a3s_gateway.http import _parser_py


@pytest.fixture(params=twins("body relay"))
def relay(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


def test_length_body_split_across_feeds(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.LENGTH, 10, None)
    assert not r.done
    assert r.feed(b"abcd") == ([b"abcd"], 4)
    assert r.feed(b"efghijNEXT") == ([b"efghij"], 6)
    assert r.done and r.received == 10 and r.remaining == 0


def test_zero_length_and_none_are_done(relay: ModuleType) -> None:
    assert relay.BodyReader(relay.LENGTH, 0, None).done
    assert relay.BodyReader(relay.NONE, 0, None).done


def test_until_close_takes_everything(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.UNTIL_CLOSE, 0, None)
    assert r.feed(b"xyz") == ([b"xyz"], 3)
    assert not r.done and r.received == 3


def test_chunked_body_with_trailers(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.CHUNKED, 0, _parser_py.ChunkedDecoder())
    data = b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nGET /next"
    pieces, consumed = r.feed(data)
    assert b"".join(pieces) == b"abcde" and data[consumed:] == b"GET /next"
    assert r.done and r.received == 5 and r.trailers() == [(b"X-T", b"1")]


def test_chunked_error_propagates(relay: ModuleType) -> None:
    r = relay.BodyReader(relay.CHUNKED, 0, _parser_py.ChunkedDecoder())
    with pytest.raises(ProtocolError):
        r.feed(b"zz\r\n")


def test_chunk_frames_and_last_chunk(relay: ModuleType) -> None:
    assert relay.chunk_frames([b"hello", b"", b"x" * 26]) == [
        b"5\r\n",
        b"hello",
        b"\r\n",
        b"1a\r\n",
        b"x" * 26,
        b"\r\n",
    ]
    assert relay.last_chunk([]) == b"0\r\n\r\n"
    assert relay.last_chunk([(b"X-A", b"1"), (b"X-B", b"2")]) == b"0\r\nX-A: 1\r\nX-B: 2\r\n\r\n"


# ---- re-encoding a chunked request body (SPEC §5.5) --------------------------------------------------------------

def chunked_reader(relay: ModuleType) -> Any:
    return relay.BodyReader(relay.CHUNKED, 0, _parser_py.ChunkedDecoder())


def test_rechunk_one_chunk_per_batch_without_extensions(relay: ModuleType) -> None:
    r = chunked_reader(relay)
    pieces, _ = r.feed(b"3;ext=1\r\nabc\r\n2 ; a = \"b\"\r\nde\r\n")
    assert r.rechunk(pieces) == [b"5\r\nabcde", b"\r\n"]  # small pieces: joined with their size line
    pieces, _ = r.feed(b"1;x\r\nf")
    assert r.rechunk(pieces) == [b"1\r\nf", b"\r\n"]
    big = [b"a" * 4000, b"b" * 3000]
    out = r.rechunk(big)
    assert out == [b"1b58\r\n", *big, b"\r\n"]
    assert out[1] is big[0] and out[2] is big[1]  # large pieces are not copied
    pieces, _ = r.feed(b"\r\n")
    assert pieces == [] and r.rechunk(pieces) == []  # nothing decoded: nothing sent
    pieces, _ = r.feed(b"0;last\r\n\r\n")
    assert r.rechunk(pieces) == [b"0\r\n\r\n"]


def test_rechunk_tiny_chunks_make_one_buffer(relay: ModuleType) -> None:
    r = chunked_reader(relay)
    pieces, _ = r.feed(b"1\r\nx\r\n" * 10000)
    assert len(pieces) == 10000 and r.rechunk(pieces) == [b"2710\r\n" + b"x" * 10000, b"\r\n"]


def test_rechunk_body_ending_in_the_batch(relay: ModuleType) -> None:
    r = chunked_reader(relay)
    pieces, consumed = r.feed(b"000005\r\nhello\r\n00\r\n\r\nGET / HTTP/1.1")
    assert consumed == 21 and r.done
    assert b"".join(r.rechunk(pieces)) == b"5\r\nhello\r\n0\r\n\r\n"


def test_rechunk_trailers_forbidden_ones_dropped(relay: ModuleType) -> None:
    r = chunked_reader(relay)
    pieces, _ = r.feed(b"2\r\nhi\r\n0\r\nX-Checksum: abc\r\nContent-Length: 50\r\nHost: evil\r\n"
                       b"transfer-encoding: chunked\r\nGrpc-Status: 0\r\n\r\n")
    assert b"".join(r.rechunk(pieces)) == b"2\r\nhi\r\n0\r\nX-Checksum: abc\r\nGrpc-Status: 0\r\n\r\n"
    r = chunked_reader(relay)
    pieces, _ = r.feed(b"0\r\nContent-Type: x\r\n\r\n")
    assert r.rechunk(pieces) == [b"0\r\n\r\n"]  # every trailer dropped: the plain last chunk


FORBIDDEN_TRAILERS = [
    b"Content-Length", b"Transfer-Encoding", b"Trailer", b"TE", b"Connection", b"Keep-Alive", b"Proxy-Connection",
    b"Upgrade", b"Host", b"Authorization", b"Proxy-Authorization", b"WWW-Authenticate", b"Proxy-Authenticate",
    b"Cookie", b"Set-Cookie", b"Cache-Control", b"Expect", b"Max-Forwards", b"Pragma", b"Range", b"If-Match",
    b"If-None-Match", b"If-Modified-Since", b"If-Unmodified-Since", b"If-Range", b"Content-Type",
    b"Content-Encoding", b"Content-Range", b"content-md5", b"CONTENT-X",
]


@pytest.mark.parametrize("name", FORBIDDEN_TRAILERS)
def test_allowed_trailers_drop_what_rfc_9110_forbids(relay: ModuleType, name: bytes) -> None:
    trailers = [(b"X-A", b"1"), (name, b"v"), (name.lower(), b"w"), (b"grpc-status", b"0"), (b"X-Content", b"2")]
    assert relay.allowed_trailers(trailers) == [(b"X-A", b"1"), (b"grpc-status", b"0"), (b"X-Content", b"2")]


trailer_name = st.sampled_from([b"X-Checksum", b"grpc-status", b"Content-Length", b"host", b"Content-Type",
                                b"Set-Cookie", b"Server-Timing", b"Expect", b"X-Content"])
body_chunks = st.lists(st.tuples(st.binary(min_size=1, max_size=50),
                                 st.sampled_from([b"", b";a=b", b' ; q="x y"', b";n"]),
                                 st.sampled_from(["%x", "%X", "%08x"])), max_size=6)
trailer_lines = st.lists(st.tuples(trailer_name, st.sampled_from([b"", b"1", b"a b", b"\tv"])), max_size=4)


@pytest.fixture(scope="module", params=twins("body relay"))
def relay_mod(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


@pytest.fixture(scope="module", params=twins("http parser"))
def parser_mod(request: pytest.FixtureRequest) -> ModuleType:
    return load(request.param)


def size_lines(body: bytes) -> list[bytes]:
    """The chunk-size lines of a chunked body, walked by its framing."""
    lines = []
    pos = 0
    while True:
        eol = body.index(b"\r\n", pos)
        lines.append(body[pos:eol])
        size = int(body[pos:eol], 16)
        if size == 0:
            return lines
        pos = eol + 2 + size + 2


def relay_body(relay: ModuleType, parser: ModuleType, parts: list[bytes]) -> bytes:
    """What the gateway sends upstream for a chunked body arriving in ``parts``."""
    r = relay.BodyReader(relay.CHUNKED, 0, parser.ChunkedDecoder())
    out: list[bytes] = []
    for part in parts:
        pieces, _ = r.feed(part)
        out += r.rechunk(pieces)
    assert r.done
    return b"".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=body_chunks, trailers=trailer_lines, cuts=st.lists(st.integers(0, 1 << 12), max_size=5))
def test_decode_reencode_decode_is_identity(relay_mod: ModuleType, parser_mod: ModuleType,
                                            chunks: list[tuple[bytes, bytes, str]],
                                            trailers: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    raw = b"".join((fmt % len(d)).encode() + ext + b"\r\n" + d + b"\r\n" for d, ext, fmt in chunks)
    raw += b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    parts = [raw[a:b] for a, b in itertools.pairwise(points)]
    sent = relay_body(relay_mod, parser_mod, parts)
    dec = parser_mod.ChunkedDecoder()
    pieces, consumed = dec.feed(sent)
    assert consumed == len(sent) and dec.done
    assert b"".join(pieces) == b"".join(d for d, _, _ in chunks)
    kept = [(n, v.strip()) for n, v in trailers if n in (b"X-Checksum", b"grpc-status", b"Server-Timing",
                                                         b"X-Content")]
    assert dec.trailers == kept
    assert size_lines(sent) == [b"%x" % len(p) for p in pieces] + [b"0"]  # lower-case hex, no extension
    # canonical: whatever the chunk boundaries, one feed gives one chunk
    assert relay_body(relay_mod, parser_mod, [sent]) == relay_body(relay_mod, parser_mod, [raw])
