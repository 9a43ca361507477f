"""Micro-benchmarks of the HTTP/1 parser twins (compiled vs pure, compared as a ratio in the same run).

* a typical browser GET head with 8 header lines;
* a typical JSON response head;
* a 1 MiB chunked body made of 16 KiB chunks, fed in 64 KiB reads (chunks split across reads, as off a socket).

Run: ``PYTHONPATH=src .venv/bin/python -m pytest bench/test_bench_parser.py --benchmark-only``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import pytest

from a3s_gateway import _compat

COMPILED, PURE = _compat.CYTHON_MODULES["http parser"]

REQUEST_HEAD = (
    b"GET /v1/models?limit=10 HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"\r\n"
)
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Date: Wed, 26 Nov 2025 06:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 1234\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Request-Id: 0123456789abcdef0123456789abcdef\r\n"
    b"\r\n"
)
CHUNK = bytes(range(256)) * 64  # 16 KiB
BODY = b"".join(b"4000\r\n" + CHUNK + b"\r\n" for _ in range(64)) + b"0\r\n\r\n"  # 1 MiB of payload
READS = [BODY[i:i + 65536] for i in range(0, len(BODY), 65536)]


@pytest.fixture(params=[COMPILED, PURE], ids=["compiled", "pure"])
def parser(request: pytest.FixtureRequest) -> ModuleType:
    try:
        return importlib.import_module(request.param)
    except ImportError as e:
        pytest.fail(f"{request.param} is not built ({e}); run `make build`")


def test_parse_request_head(benchmark: Any, parser: ModuleType) -> None:
    head = benchmark(parser.parse_request, REQUEST_HEAD)
    assert head.head_len == len(REQUEST_HEAD) and len(head.headers) == 8


def test_parse_response_head(benchmark: Any, parser: ModuleType) -> None:
    head = benchmark(parser.parse_response, RESPONSE_HEAD)
    assert head.content_length == 1234


def test_decode_chunked_1mib(benchmark: Any, parser: ModuleType) -> None:
    def decode() -> int:
        dec = parser.ChunkedDecoder()
        total = 0
        for data in READS:
            pieces, _ = dec.feed(data)
            for piece in pieces:
                total += len(piece)
        assert dec.done
        return total

    assert benchmark(decode) == 1 << 20
