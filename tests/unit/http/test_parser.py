"""Strict HTTP/1 head parser and chunked decoder (SPEC §5.5), compiled and pure.

Every vector of tests/vectors is fed whole, byte by byte (growing the buffer and parsing each time until the
outcome is known) and followed by the bytes of the next pipelined message, to both implementations.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from impls import twins

from a3s_gateway import _compat
from a3s_gateway.errors import ProtocolError
from a3s_gateway.http import hdrs
from vectors import chunked as chunk_vectors
from vectors import http1_requests as request_vectors
from vectors import http1_responses as response_vectors

REPO = Path(__file__).resolve().parents[3]
COMPILED, PURE = _compat.CYTHON_MODULES["http parser"]
BUILD_HINT = (
    "build it with `make build`, or this extension alone: `.venv/bin/cython -3 src/a3s_gateway/http/_parser_c.pyx` "
    "then compile the .c together with csrc/http1.c (-Icsrc) into src/a3s_gateway/http/_parser_c<EXT_SUFFIX>"
)

REQUEST_FIELDS = ("method", "target", "path", "query", "authority", "version", "headers", "header_ids", "host",
                  "content_length", "chunked", "keep_alive", "expect_continue", "upgrade", "te_trailers",
                  "connection_tokens", "head_len")
RESPONSE_FIELDS = ("status", "reason", "version", "headers", "header_ids", "content_length", "chunked",
                   "keep_alive", "upgrade", "event_stream", "connection_tokens", "head_len")
BOOL_FIELDS = {"chunked", "keep_alive", "expect_continue", "upgrade", "te_trailers", "event_stream"}
NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n"
NEXT_BODY = b"hello"
MODES = ["whole", "bytewise", "pipelined"]

Outcome = Any  # None (incomplete), (status, message), or {field: value}


@pytest.fixture(params=twins("http parser"))
def parser(request: pytest.FixtureRequest) -> ModuleType:
    try:
        return importlib.import_module(request.param)
    except ImportError as e:  # a missing build fails, never skips
        pytest.fail(f"{request.param} is not built ({e}); {BUILD_HINT}")


def outcome(parse: Callable[..., Any], buf: bytes, fields: tuple[str, ...], limits: dict[str, int] | None) -> Outcome:
    try:
        head = parse(buf, **(limits or {}))
    except ProtocolError as e:
        return (e.status, e.message)
    if head is None:
        return None
    return {f: getattr(head, f) for f in fields}


def feed_head(parse: Callable[..., Any], raw: bytes, mode: str, fields: tuple[str, ...],
              limits: dict[str, int] | None, follow: bytes) -> Outcome:
    if mode == "whole":
        return outcome(parse, raw, fields, limits)
    if mode == "pipelined":
        return outcome(parse, raw + follow, fields, limits)
    for i in range(1, len(raw) + 1):
        result = outcome(parse, raw[:i], fields, limits)
        if result is not None:
            if isinstance(result, dict):
                assert i == len(raw), f"head complete after {i} of {len(raw)} bytes"
            return result
    return None


def check_head(got: Outcome, expect: dict[str, object] | tuple[int, str], raw: bytes) -> None:
    if isinstance(expect, tuple):
        assert got == expect
        return
    assert isinstance(got, dict), f"expected a head, got {got!r}"
    expected = {"head_len": len(raw), **expect}
    for name, value in expected.items():
        assert got[name] == value, name
    for name, value in got.items():
        if name in BOOL_FIELDS:
            assert type(value) is bool, name
        elif name in ("query",):
            assert value is None or type(value) is bytes
        elif isinstance(value, (bytes, bytearray, memoryview)):
            assert type(value) is bytes, name
    assert type(got["headers"]) is list and type(got["connection_tokens"]) is tuple
    assert all(type(n) is bytes and type(v) is bytes for n, v in got["headers"])
    assert got["header_ids"] == bytes(hdrs.NAMES.get(n.lower(), 0) for n, _ in got["headers"])


# ---- request heads ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vector", request_vectors.VALID + request_vectors.INVALID, ids=lambda v: v.name)
def test_request_vector(parser: ModuleType, vector: request_vectors.Req, mode: str) -> None:
    got = feed_head(parser.parse_request, vector.raw, mode, REQUEST_FIELDS, vector.limits, NEXT_REQUEST)
    check_head(got, vector.expect, vector.raw)


def test_every_request_violation_of_the_spec_table_has_a_vector() -> None:
    statuses = {v.expect for v in request_vectors.INVALID if isinstance(v.expect, tuple)}
    assert statuses == {
        request_vectors.URI_TOO_LONG, request_vectors.BAD_LINE, request_vectors.BAD_TARGET,
        request_vectors.NOT_ALLOWED, request_vectors.BAD_VERSION, request_vectors.TOO_LARGE,
        request_vectors.BAD_FIELD, request_vectors.OBS_FOLD, request_vectors.BAD_CHARS, request_vectors.BAD_HOST,
        request_vectors.CL_AND_TE, request_vectors.BAD_CL, request_vectors.BAD_TE,
        request_vectors.TE_NOT_IMPLEMENTED,
    }


def test_violation_in_the_first_bytes_is_immediate(parser: ModuleType) -> None:
    for raw, message in [(b"\n", "invalid characters"), (b"G\x00", "invalid characters"),
                         (b"GET / HTTP/1.1\r\nHost: a\n", "invalid characters"),
                         (b"GET  ", "malformed request line"), (b"GET /\tx", "invalid characters")]:
        if b"  " in raw:  # a structural error needs its whole line
            assert parser.parse_request(raw) is None
            continue
        with pytest.raises(ProtocolError, match=message):
            parser.parse_request(raw)


def test_incomplete_heads_need_more(parser: ModuleType) -> None:
    for raw in [b"", b"\r", b"\r\n", b"GET", b"GET / HTTP/1.1\r", b"GET / HTTP/1.1\r\nHost: a\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"GET / HTTP/1.1\r\nX: " + b"a" * 1000]:
        assert parser.parse_request(raw) is None, raw


def test_bytes_like_input(parser: ModuleType) -> None:
    raw = b"GET /p?q HTTP/1.1\r\nHost: h\r\n\r\n"
    for buf in (bytearray(raw), memoryview(raw)):
        head = parser.parse_request(buf)
        assert head.path == b"/p" and type(head.path) is bytes and head.headers == [(b"Host", b"h")]
        assert type(head.headers[0][1]) is bytes


def test_negative_limits_are_refused(parser: ModuleType) -> None:
    with pytest.raises((ValueError, OverflowError)):
        parser.parse_request(b"GET / HTTP/1.1\r\n\r\n", max_line=-1)
    with pytest.raises((ValueError, OverflowError)):
        parser.parse_response(b"HTTP/1.1 200 OK\r\n\r\n", max_headers=-1)
    with pytest.raises((ValueError, OverflowError)):
        parser.ChunkedDecoder(-1)


def test_many_headers_over_the_stack_buffer(parser: ModuleType) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(300)) + b"\r\n"
    head = parser.parse_request(raw, max_headers=301)
    assert len(head.headers) == 301 and head.headers[-1] == (b"X-299", b"299")
    with pytest.raises(ProtocolError, match="too large"):
        parser.parse_request(raw, max_headers=300)


def test_head_classes_are_constructible(parser: ModuleType) -> None:
    head = parser.parse_request(request_vectors.BROWSER_GET)
    fields = {f: getattr(head, f) for f in REQUEST_FIELDS}
    again = parser.RequestHead(**fields)
    assert {f: getattr(again, f) for f in REQUEST_FIELDS} == fields
    assert "RequestHead(" in repr(again)
    resp = parser.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n")
    fields = {f: getattr(resp, f) for f in RESPONSE_FIELDS}
    assert {f: getattr(parser.ResponseHead(**fields), f) for f in RESPONSE_FIELDS} == fields


def test_host_value_is_the_header_object(parser: ModuleType) -> None:
    head = parser.parse_request(b"GET / HTTP/1.1\r\nHost: example.com:81\r\n\r\n")
    assert head.host == b"example.com:81" == head.headers[0][1]


# ---- header ids -------------------------------------------------------------------------------------------------

def test_c_header_id_enum_matches_hdrs() -> None:
    text = (REPO / "csrc" / "http1.h").read_text()
    enum = {m[1]: int(m[2]) for m in re.finditer(r"\bH1_HDR_([A-Z0-9_]+)\s*=\s*(\d+)", text)}
    assert enum.pop("OTHER") == hdrs.OTHER == 0
    assert {name.lower().replace("_", "-").encode(): num for name, num in enum.items()} == hdrs.NAMES
    for name, num in enum.items():
        assert getattr(hdrs, name) == num


@pytest.mark.parametrize("name", sorted(hdrs.NAMES))
def test_header_names_classified_case_insensitively(parser: ModuleType, name: bytes) -> None:
    value = {b"content-length": b"0", b"transfer-encoding": b"chunked"}.get(name, b"x")
    for variant in (name, name.upper(), name.title(), name[:1].upper() + name[1:]):
        head = parser.parse_response(b"HTTP/1.1 200 OK\r\n" + variant + b": " + value + b"\r\nX-" + variant
                                     + b": y\r\n\r\n")
        assert head.header_ids == bytes([hdrs.NAMES[name], 0]), variant
        assert head.headers[0][0] == variant


# ---- response heads ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vector", response_vectors.VALID + response_vectors.INVALID, ids=lambda v: v.name)
def test_response_vector(parser: ModuleType, vector: response_vectors.Resp, mode: str) -> None:
    got = feed_head(parser.parse_response, vector.raw, mode, RESPONSE_FIELDS, vector.limits, NEXT_BODY)
    check_head(got, vector.expect, vector.raw)


def test_informational_heads_parse_one_at_a_time(parser: ModuleType) -> None:
    buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    statuses = []
    while buf:
        head = parser.parse_response(buf)
        statuses.append(head.status)
        buf = buf[head.head_len:]
    assert statuses == [100, 103, 200]


# ---- chunked ----------------------------------------------------------------------------------------------------

def decode(mod: ModuleType, parts: list[bytes], max_trailer_bytes: int | None) -> Outcome:
    """Feed ``parts``: (payload, trailers, consumed) or (status, message)."""
    dec = mod.ChunkedDecoder() if max_trailer_bytes is None else mod.ChunkedDecoder(max_trailer_bytes)
    assert dec.done is False and dec.trailers == []
    body: list[bytes] = []
    consumed = 0
    try:
        for part in parts:
            pieces, used = dec.feed(part)
            assert all(type(p) is bytes and p for p in pieces)
            assert 0 <= used <= len(part) and (used == len(part) or dec.done)
            body += pieces
            consumed += used
    except ProtocolError as e:
        return (e.status, e.message)
    assert dec.done, "decoder not done at the end of a complete body"
    return (b"".join(body), dec.trailers, consumed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("vector", chunk_vectors.VALID + chunk_vectors.INVALID, ids=lambda v: v.name)
def test_chunked_vector(parser: ModuleType, vector: chunk_vectors.Chunked, mode: str) -> None:
    raw = vector.raw + (NEXT_REQUEST if mode == "pipelined" else b"")
    parts = [raw[i:i + 1] for i in range(len(raw))] if mode == "bytewise" else [raw]
    got = decode(parser, parts, vector.max_trailer_bytes)
    if len(vector.expect) == 2 and isinstance(vector.expect[0], int):
        assert got == vector.expect
    else:
        body, trailers = vector.expect
        assert got == (body, trailers, len(vector.raw))


@pytest.mark.parametrize("vector", chunk_vectors.VALID, ids=lambda v: v.name)
def test_chunked_every_two_part_split(parser: ModuleType, vector: chunk_vectors.Chunked) -> None:
    raw = vector.raw + NEXT_REQUEST
    whole = decode(parser, [raw], vector.max_trailer_bytes)
    for i in range(len(raw) + 1):
        assert decode(parser, [raw[:i], raw[i:]], vector.max_trailer_bytes) == whole, i


def test_chunked_pieces_are_slices_not_bytes(parser: ModuleType) -> None:
    chunk = bytes(range(256)) * 64  # 16 KiB
    body = b"".join(b"4000\r\n" + chunk + b"\r\n" for _ in range(64)) + b"0\r\n\r\n"
    dec = parser.ChunkedDecoder()
    pieces, used = dec.feed(body)
    assert used == len(body) and dec.done
    assert len(pieces) == 64 and all(p == chunk for p in pieces)
    dec = parser.ChunkedDecoder()
    dec.feed(b"4000\r\n")
    data = chunk[:1000]
    pieces, used = dec.feed(data)
    assert used == 1000 and len(pieces) == 1 and pieces[0] is data  # a feed inside one chunk: no copy


def test_chunked_done_leaves_the_rest(parser: ModuleType) -> None:
    dec = parser.ChunkedDecoder()
    assert dec.feed(b"1\r\na\r\n0\r\nT: v\r\n\r\nGET") == ([b"a"], 17)
    assert dec.done and dec.trailers == [(b"T", b"v")]
    assert dec.feed(b"more") == ([], 0)
    assert dec.feed(b"") == ([], 0)


def test_chunked_failure_is_final(parser: ModuleType) -> None:
    dec = parser.ChunkedDecoder()
    with pytest.raises(ProtocolError) as info:
        dec.feed(b"z\r\n")
    assert (info.value.status, info.value.message) == chunk_vectors.BAD_CHUNK
    with pytest.raises(ProtocolError):
        dec.feed(b"0\r\n\r\n")


@pytest.mark.parametrize("size", [b"7FFFFFFFFFFFFFFF", b"7fffffffffffffff", b"07FFFFFFFFFFFFFF"])
def test_chunked_largest_size_is_accepted(parser: ModuleType, size: bytes) -> None:
    dec = parser.ChunkedDecoder()  # 2^63-1 is the largest size (SPEC §5.5); its data simply goes on
    assert dec.feed(size + b";x=y\r\nabc") == ([b"abc"], len(size) + 9)
    assert not dec.done


def test_chunked_pieces_before_a_split_violation(parser: ModuleType) -> None:
    dec = parser.ChunkedDecoder()
    assert dec.feed(b"3\r\nab") == ([b"ab"], 5)
    assert dec.feed(b"c") == ([b"c"], 1)
    with pytest.raises(ProtocolError):
        dec.feed(b"\n")


def test_chunked_accepts_bytes_like(parser: ModuleType) -> None:
    dec = parser.ChunkedDecoder()
    pieces, used = dec.feed(bytearray(b"2\r\nab\r\n0\r\n\r\n"))
    assert pieces == [b"ab"] and type(pieces[0]) is bytes and used == 12 and dec.done


# ---- the twins --------------------------------------------------------------------------------------------------

def test_both_twins_have_the_same_api(parser: ModuleType) -> None:
    for name in ("parse_request", "parse_response", "ChunkedDecoder", "RequestHead", "ResponseHead"):
        assert hasattr(parser, name), name
    if parser.__name__ == COMPILED:
        assert _compat.is_compiled(parser), f"{COMPILED} loaded from {parser.__file__}; {BUILD_HINT}"
    else:
        assert parser.__name__ == PURE


@pytest.mark.parametrize("ctl", [b"\x00", b"\x01", b"\x0b", b"\x1f", b"\x7f", b"\r", b"\n"])
def test_control_character_found_at_every_offset(parser: ModuleType, ctl: bytes) -> None:
    for filler in (b"a", b"\xff", b"\t"):  # the C scanner reads 8 bytes at a time: every alignment, both sides
        for i in range(24):
            value = bytearray(filler * 24)
            value[i:i + 1] = ctl
            with pytest.raises(ProtocolError, match="invalid characters"):
                parser.parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nX: v" + bytes(value) + b"v\r\n\r\n")
            line = bytearray(b"GET /" + b"a" * 24 + b" HTTP/1.1\r\n")
            line[5 + i:6 + i] = ctl
            with pytest.raises(ProtocolError, match="invalid characters"):
                parser.parse_request(bytes(line))


def test_tab_and_obs_text_at_every_offset(parser: ModuleType) -> None:
    for i in range(24):
        value = bytearray(b"\xfe" * 24)
        value[i:i + 1] = b"\t"
        head = parser.parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nX: v" + bytes(value) + b"v\r\n\r\n")
        assert head.headers[1][1] == b"v" + bytes(value) + b"v"
