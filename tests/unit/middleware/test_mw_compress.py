"""compress middleware (SPEC §6.14): negotiation, the not-compressed conditions, streaming output, ETag and Vary."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import brotli  # type: ignore[import-untyped]
import pytest
from mw_support import params as validated

from a3s_gateway.middleware.chain import Chain, Request, Response
from a3s_gateway.middleware.compress import Compress, choose_encoding

DEFAULT = ("br", "gzip", "deflate")


def make(params: Mapping[str, Any] | None = None) -> Compress:
    mw = Compress("gz", "r1", {**validated("compress"), **(params or {})})
    Chain([mw])
    return mw


def request(accept: bytes | list[bytes] | None = b"gzip, deflate, br", method: bytes = b"GET") -> Request:
    values = [] if accept is None else [accept] if isinstance(accept, bytes) else accept
    headers = [(b"Host", b"a.test"), *((b"Accept-Encoding", v) for v in values)]
    return Request(method, b"/", None, b"a.test", headers, "10.0.0.1", "r1", b"http", 0, 1)


def response(*headers: tuple[bytes, bytes], status: int = 200, local: bool = False) -> Response:
    base = [(b"Content-Type", b"application/json"), (b"Content-Length", b"5000")]
    names = {n.lower() for n, _ in headers}
    hs = [h for h in base if h[0].lower() not in names] + [h for h in headers if h[1] != b"-"]
    return Response(status, hs, local)


def run(mw: Compress, req: Request, resp: Response) -> Response:
    mw.request(req, 0.0)
    mw.response(req, resp, 0.0)
    return resp


def values(resp: Response, name: bytes) -> list[bytes]:
    return [v for n, v in resp.headers if n.lower() == name.lower()]


# --- negotiation ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("accept", "encodings", "expected"),
    [
        ([b"gzip"], DEFAULT, "gzip"),
        ([b"gzip, deflate, br"], DEFAULT, "br"),  # tie: encodings order
        ([b"gzip, deflate, br"], ("gzip", "br"), "gzip"),
        ([b"deflate, gzip"], ("gzip", "deflate"), "gzip"),
        ([b"br;q=0.5, gzip;q=0.8"], DEFAULT, "gzip"),
        ([b"br;q=0.8, gzip;q=0.8, deflate;q=0.9"], DEFAULT, "deflate"),
        ([b"br;q=0.801, gzip;q=0.8"], ("gzip", "br"), "br"),
        ([b"gzip;q=0"], DEFAULT, None),
        ([b"gzip;q=0.000, deflate"], DEFAULT, "deflate"),
        ([b"*"], DEFAULT, "br"),
        ([b"*"], ("deflate", "gzip"), "deflate"),
        ([b"*;q=0.5, gzip"], DEFAULT, "gzip"),
        ([b"br;q=0, *"], DEFAULT, "gzip"),  # explicit q=0 beats *
        ([b"*;q=0"], DEFAULT, None),
        ([b"*;q=0, deflate"], DEFAULT, "deflate"),
        ([b"identity"], DEFAULT, None),
        ([b"compress, zstd"], DEFAULT, None),
        ([b""], DEFAULT, None),
        ([], DEFAULT, None),
        ([b"GZIP"], DEFAULT, "gzip"),
        ([b" gzip ; Q=0.3 ,deflate;q=0.2"], DEFAULT, "gzip"),
        ([b"gzip;q=0.5", b"br;q=0.6"], DEFAULT, "br"),  # several header lines
        ([b"gzip;q=1.5, deflate;q=0.1"], DEFAULT, "deflate"),  # invalid q: element ignored
        ([b"gzip;q=abc"], DEFAULT, None),
        ([b"gzip;q=0.1234"], DEFAULT, None),  # more than 3 decimals
        ([b"gzip;q=1.000"], DEFAULT, "gzip"),
        ([b"br"], ("gzip",), None),
    ],
)
def test_choose_encoding(accept: list[bytes], encodings: tuple[str, ...], expected: str | None) -> None:
    assert choose_encoding(accept, encodings) == expected


def test_request_phase_stores_choice_in_notes() -> None:
    mw = make({"encodings": ("gzip", "deflate")})
    req = request(b"br, deflate;q=0.5, gzip;q=0.4")
    mw.request(req, 0.0)
    assert req.notes[mw.slot] == "deflate"
    req = request(None)
    mw.request(req, 0.0)
    assert req.notes[mw.slot] is None


@pytest.mark.parametrize(("coding", "header"), [("gzip", b"gzip"), ("deflate", b"deflate"), ("br", b"br")])
def test_compresses_with_the_negotiated_coding(coding: str, header: bytes) -> None:
    resp = run(make(), request(header), response())
    assert resp.body_filter is not None
    assert values(resp, b"content-encoding") == [header]
    assert values(resp, b"content-length") == []
    assert values(resp, b"vary") == [b"Accept-Encoding"]


# --- not compressed ---------------------------------------------------------------------------------------------

NOT_COMPRESSED: list[tuple[str, Callable[[], tuple[Compress, Request, Response]]]] = [
    ("no acceptable coding", lambda: (make(), request(b"identity"), response())),
    ("no Accept-Encoding", lambda: (make(), request(None), response())),
    ("q=0 only", lambda: (make(), request(b"gzip;q=0, br;q=0, deflate;q=0"), response())),
    ("already encoded", lambda: (make(), request(), response((b"Content-Encoding", b"identity")))),
    ("status 101", lambda: (make(), request(), response(status=101))),
    ("status 204", lambda: (make(), request(), response(status=204))),
    ("status 206", lambda: (make(), request(), response(status=206))),
    ("status 304", lambda: (make(), request(), response(status=304))),
    ("HEAD", lambda: (make(), request(method=b"HEAD"), response())),
    ("no-transform", lambda: (make(), request(), response((b"Cache-Control", b"public, No-Transform")))),
    ("no-transform, 2nd line", lambda: (
        make(), request(), response((b"Cache-Control", b"max-age=5"), (b"cache-control", b"no-transform")))),
    ("image/png", lambda: (make(), request(), response((b"Content-Type", b"image/png")))),
    ("no Content-Type", lambda: (make(), request(), response((b"Content-Type", b"-")))),
    ("event-stream", lambda: (make(), request(), response((b"Content-Type", b"text/event-stream")))),
    ("short", lambda: (make(), request(), response((b"Content-Length", b"1023")))),
    ("short, custom min_size", lambda: (make({"min_size": 10}), request(), response((b"Content-Length", b"9")))),
    ("empty body", lambda: (make(), request(), response((b"Content-Length", b"0")))),
    ("local response", lambda: (make(), request(), response(local=True))),
    ("type not listed", lambda: (make({"content_types": ("text/html",)}), request(),
                                 response((b"Content-Type", b"application/json")))),
    ("coding not configured", lambda: (make({"encodings": ("br",)}), request(b"gzip"), response())),
]


@pytest.mark.parametrize("case", [c[1] for c in NOT_COMPRESSED], ids=[c[0] for c in NOT_COMPRESSED])
def test_not_compressed(case: Callable[[], tuple[Compress, Request, Response]]) -> None:
    mw, req, resp = case()
    before = list(resp.headers)
    run(mw, req, resp)
    assert resp.body_filter is None
    assert [h for h in resp.headers if h[0].lower() != b"vary"] == before  # nothing else touched


@pytest.mark.parametrize(
    ("content_type", "params", "compressed"),
    [
        (b"text/html", {}, True),
        (b"text/html; charset=utf-8", {}, True),
        (b"TEXT/Plain;charset=UTF-8", {}, True),
        (b"application/json", {}, True),
        (b"application/problem+json", {}, True),
        (b"application/ld+json; profile=x", {}, True),
        (b"application/x-ndjson", {}, True),
        (b"application/javascript", {}, True),
        (b"application/xml", {}, True),
        (b"application/atom+xml", {}, True),
        (b"image/svg+xml", {}, True),
        (b"image/svg", {}, False),
        (b"application/octet-stream", {}, False),
        (b"application/jsonx", {}, False),
        (b"application/json+zip", {}, False),
        (b"text", {}, False),
        (b"text/event-stream", {}, False),
        (b"text/event-stream; charset=utf-8", {"include_event_stream": True}, True),
        (b"video/mp4", {"content_types": ("video/*",)}, True),
        (b"image/png", {"content_types": ("*",)}, True),
        (b"application/vnd.api+json", {"content_types": ("application/vnd.*",)}, True),
        (b"application/json", {"content_types": ("Application/JSON; charset=utf-8",)}, True),
    ],
)
def test_content_types(content_type: bytes, params: dict[str, Any], compressed: bool) -> None:
    mw = make(params)
    assert mw.compressible(content_type) is compressed
    resp = run(mw, request(b"gzip"), response((b"Content-Type", content_type)))
    assert (resp.body_filter is not None) is compressed


def test_min_size_boundary_and_absent_length() -> None:
    assert run(make(), request(), response((b"Content-Length", b"1024"))).body_filter is not None
    assert run(make(), request(), response((b"Content-Length", b"-"))).body_filter is not None
    assert run(make({"min_size": 0}), request(), response((b"Content-Length", b"0"))).body_filter is not None
    assert run(make(), request(), response((b"Content-Length", b"12x"))).body_filter is None


class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


def test_existing_filter_is_kept() -> None:
    mw = make()
    req = request()
    resp = response()
    sentinel = _Identity()
    resp.body_filter = sentinel
    run(mw, req, resp)
    assert resp.body_filter is sentinel
    assert values(resp, b"content-encoding") == []


# --- streaming --------------------------------------------------------------------------------------------------

class _Decoder:
    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.d: Any = brotli.Decompressor() if coding == "br" else zlib.decompressobj(31 if coding == "gzip" else 15)

    def feed(self, data: bytes) -> bytes:
        if self.coding != "br":
            out: bytes = self.d.decompress(data)
            return out
        out = self.d.process(data)
        while True:  # brotli's decoder hands out large outputs in pieces of ~32 KiB
            more: bytes = self.d.process(b"")
            if not more:
                return out
            out += more

    def done(self) -> bool:
        return bool(self.d.is_finished()) if self.coding == "br" else bool(self.d.eof)


CHUNKS = [b'{"token": "Hello"}\n', b"", b'{"token": " world"}\n', b"x" * 70000, bytes(range(256)) * 3, b"!"]


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_each_chunk_decodes_immediately(coding: str) -> None:
    resp = run(make(), request(coding.encode()), response())
    f = resp.body_filter
    assert f is not None
    dec = _Decoder(coding)
    wire = b""
    for chunk in CHUNKS:
        out = f.feed(chunk)
        if not chunk:
            assert out == b""
        wire += out
        assert dec.feed(out) == chunk  # nothing held back by the compressor
    tail = f.finish()
    assert dec.feed(tail) == b""
    assert dec.done()
    # the whole stream is a valid stream of the declared format
    wbits = 31 if coding == "gzip" else 15
    whole = brotli.decompress(wire + tail) if coding == "br" else zlib.decompress(wire + tail, wbits)
    assert whole == b"".join(CHUNKS)
    assert len(wire + tail) < len(whole)  # and it does compress


def test_gzip_and_deflate_framing() -> None:
    gz = run(make(), request(b"gzip"), response()).body_filter
    zl = run(make(), request(b"deflate"), response()).body_filter
    assert gz is not None and zl is not None
    assert gz.feed(b"abc")[:2] == b"\x1f\x8b"  # gzip magic
    assert zlib.decompress(zl.feed(b"abc") + zl.finish()) == b"abc"  # zlib format, not raw deflate


def test_empty_body_stream() -> None:
    for coding in ("gzip", "deflate", "br"):
        f = run(make({"min_size": 0}), request(coding.encode()), response((b"Content-Length", b"0"))).body_filter
        assert f is not None
        assert _Decoder(coding).feed(f.finish()) == b""


# --- ETag and Vary ----------------------------------------------------------------------------------------------

def test_strong_etag_made_weak() -> None:
    resp = run(make(), request(), response((b"ETag", b'"abc"')))
    assert values(resp, b"etag") == [b'W/"abc"']


def test_weak_etag_unchanged() -> None:
    resp = run(make(), request(), response((b"etag", b'W/"abc"')))
    assert values(resp, b"etag") == [b'W/"abc"']


def test_etag_kept_when_not_compressed() -> None:
    resp = run(make(), request(b"identity"), response((b"ETag", b'"abc"')))
    assert values(resp, b"etag") == [b'"abc"']


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        ([], [b"Accept-Encoding"]),
        ([b"Origin"], [b"Origin, Accept-Encoding"]),
        ([b"Origin", b"Cookie"], [b"Origin, Accept-Encoding", b"Cookie"]),
        ([b"origin, accept-encoding"], [b"origin, accept-encoding"]),
        ([b"Origin", b"Accept-Encoding"], [b"Origin", b"Accept-Encoding"]),
        ([b"*"], [b"*"]),
        ([b""], [b"Accept-Encoding"]),
    ],
)
def test_vary(existing: list[bytes], expected: list[bytes]) -> None:
    resp = run(make(), request(), response(*((b"Vary", v) for v in existing)))
    assert values(resp, b"vary") == expected


@pytest.mark.parametrize(
    "make_case",
    [
        lambda: (request(b"identity"), response()),
        lambda: (request(None), response()),
        lambda: (request(), response(status=304)),
        lambda: (request(method=b"HEAD"), response()),
        lambda: (request(), response((b"Content-Length", b"10"))),
        lambda: (request(), response((b"Content-Encoding", b"gzip"))),
        lambda: (request(), response((b"Cache-Control", b"no-transform"))),
        lambda: (request(), response(local=True)),
    ],
)
def test_vary_on_compressible_type_even_when_not_compressed(
    make_case: Callable[[], tuple[Request, Response]],
) -> None:
    req, resp = make_case()
    run(make(), req, resp)
    assert resp.body_filter is None
    assert values(resp, b"vary") == [b"Accept-Encoding"]


@pytest.mark.parametrize("content_type", [b"image/png", b"text/event-stream", b"-"])
def test_no_vary_on_other_types(content_type: bytes) -> None:
    resp = run(make(), request(), response((b"Content-Type", content_type)))
    assert values(resp, b"vary") == []


def test_flags_and_kind() -> None:
    mw = make()
    assert (mw.kind, mw.has_request, mw.has_response, mw.is_async) == ("compress", True, True, False)
    assert mw.encodings == DEFAULT
    assert mw.min_size == 1024
