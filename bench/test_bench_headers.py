"""Micro benchmark: filter + serialise a typical request head and response head, compiled vs pure."""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from a3s_gateway import _compat
from a3s_gateway.http import hdrs

REQUEST_HEADERS = [
    (b"Host", b"api.example.com"), (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
    (b"Accept", b"text/event-stream"), (b"Accept-Language", b"en-US,en;q=0.5"), (b"Accept-Encoding", b"gzip, br"),
    (b"Authorization", b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"), (b"Connection", b"keep-alive"),
    (b"Content-Type", b"application/json"), (b"Content-Length", b"120"),
]
RESPONSE_HEADERS = [(b"Content-Type", b"text/event-stream"), (b"Cache-Control", b"no-cache"),
                    (b"Transfer-Encoding", b"chunked"), (b"Date", b"Thu, 26 Nov 2026 06:00:00 GMT"),
                    (b"X-Request-Id", b"0123456789abcdef0123456789abcdef")]


def _ids(headers: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(hdrs.NAMES.get(n.lower(), 0) for n, _ in headers)


@pytest.fixture(params=["compiled", "pure"])
def mod(request: pytest.FixtureRequest) -> Any:
    compiled, pure = _compat.CYTHON_MODULES["header filter"]
    return importlib.import_module(compiled if request.param == "compiled" else pure)


def test_request_head(benchmark: Any, mod: Any) -> None:
    ids = _ids(REQUEST_HEADERS)
    benchmark(mod.request_head, b"POST", b"/v1/chat/completions", REQUEST_HEADERS, ids, (), None, b"api.example.com",
              b"127.0.0.1", b"127.0.0.1", b"http", b"8080", False, b"Content-Length: 120\r\n")


def test_response_head(benchmark: Any, mod: Any) -> None:
    ids = _ids(RESPONSE_HEADERS)
    benchmark(mod.response_head, b"HTTP/1.1 200 OK\r\n", RESPONSE_HEADERS, ids, (), b"Transfer-Encoding: chunked\r\n",
              b"")
