"""``cors`` (SPEC §6.7): every row of the behaviour table, origin patterns, Vary, and CORS on later replies."""

from __future__ import annotations

import pytest
from mw_support import body, drive, params, request, response

from a3s_gateway.middleware.chain import JSON, Chain
from a3s_gateway.middleware.cors import Cors, OriginSet
from a3s_gateway.middleware.headers import Headers
from a3s_gateway.middleware.ratelimit import RateLimit

ORIGIN = b"https://app.example.com"
PREFLIGHT_VARY = (b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")


def cors(body_hcl: str = "") -> Cors:
    return Cors("m", "r", params("cors", body_hcl))


def preflight(
    origin: bytes = ORIGIN, method: bytes = b"PUT", req_headers: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    h = [(b"Origin", origin), (b"Access-Control-Request-Method", method)]
    if req_headers is not None:
        h.append((b"Access-Control-Request-Headers", req_headers))
    return h


def forwarded(
    mw: Cors, headers: list[tuple[bytes, bytes]], upstream: list[tuple[bytes, bytes]], method: bytes = b"GET"
) -> list[tuple[bytes, bytes]]:
    """A non-preflight request: it must be forwarded; the response headers after the response phase."""
    req = request(method=method, headers=headers)
    assert mw.request(req, 0.0) is None
    resp = response(200, upstream)
    mw.response(req, resp, 0.0)
    return resp.headers


# --- table rows ---------------------------------------------------------------------------------------------------


def test_no_origin_is_not_cors_and_leaves_the_response_untouched() -> None:
    upstream = [(b"Access-Control-Allow-Origin", b"*"), (b"X", b"1")]
    assert forwarded(cors(), [], upstream) == upstream
    # an OPTIONS with Access-Control-Request-Method but no Origin is not a preflight either
    assert forwarded(cors(), [(b"Access-Control-Request-Method", b"PUT")], upstream, b"OPTIONS") == upstream


def test_preflight_origin_not_allowed() -> None:
    mw = cors('allowed_origins = ["https://app.example.com"]')
    reply = mw.request(request(b"OPTIONS", headers=preflight(b"https://evil.com")), 0.0)
    assert reply is not None and reply.status == 403
    assert body(reply) == {"error": "CORS origin not allowed"}
    assert reply.headers == [(b"Content-Type", JSON)]  # no CORS headers


@pytest.mark.parametrize(
    ("method", "req_headers", "error"),
    [
        (b"PATCH", None, "CORS method not allowed"),
        (b"put", None, "CORS method not allowed"),  # methods are case-sensitive
        (b"PUT", b"Content-Type, X-Custom", "CORS header not allowed"),
        (b"PATCH", b"X-Custom", "CORS method not allowed"),  # the method is checked first
    ],
)
def test_preflight_method_or_header_not_allowed(method: bytes, req_headers: bytes | None, error: str) -> None:
    reply = cors().request(request(b"OPTIONS", headers=preflight(method=method, req_headers=req_headers)), 0.0)
    assert reply is not None and reply.status == 403
    assert body(reply) == {"error": error}
    assert reply.headers == [(b"Content-Type", JSON)]


def test_preflight_allowed_defaults() -> None:
    req = request(b"OPTIONS", headers=preflight(req_headers=b"content-type,  AUTHORIZATION"))
    reply = cors().request(req, 0.0)
    assert reply is not None and reply.status == 204
    assert reply.body == b""
    assert reply.headers == [
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Access-Control-Allow-Methods", b"GET, POST, PUT, DELETE, OPTIONS"),
        (b"Access-Control-Allow-Headers", b"Content-Type, Authorization"),
        (b"Access-Control-Max-Age", b"86400"),
        PREFLIGHT_VARY,
    ]


def test_preflight_allowed_configured_wildcard_headers_and_credentials() -> None:
    mw = cors(
        'allowed_origins = ["https://*.example.com"]\nallowed_methods = ["GET", "PATCH"]\nallowed_headers = ["*"]\n'
        'allow_credentials = true\nmax_age = "10m"\nexpose_headers = ["X-Total"]'
    )
    req = request(b"OPTIONS", headers=preflight(method=b"PATCH", req_headers=b"X-One, x-two"))
    reply = mw.request(req, 0.0)
    assert reply is not None and reply.status == 204
    assert reply.headers == [
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Access-Control-Allow-Methods", b"GET, PATCH"),
        (b"Access-Control-Allow-Headers", b"X-One, x-two"),  # "*": the requested headers echoed
        (b"Access-Control-Max-Age", b"600"),
        (b"Access-Control-Allow-Credentials", b"true"),
        PREFLIGHT_VARY,
    ]


def test_preflight_with_any_header_and_none_requested_has_no_allow_headers() -> None:
    reply = cors('allowed_headers = ["*"]').request(request(b"OPTIONS", headers=preflight()), 0.0)
    assert reply is not None and reply.status == 204
    assert all(n != b"Access-Control-Allow-Headers" for n, _ in reply.headers)


def test_other_request_origin_allowed() -> None:
    mw = cors('allow_credentials = true\nexpose_headers = ["X-Total", "X-Page"]')
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"access-control-allow-origin", b"*"),
        (b"Access-Control-Max-Age", b"5"),
        (b"Vary", b"Accept-Encoding"),
    ]
    assert forwarded(mw, [(b"Origin", ORIGIN)], upstream) == [
        (b"Content-Type", b"text/plain"),
        (b"Vary", b"Accept-Encoding, Origin"),
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Access-Control-Expose-Headers", b"X-Total, X-Page"),
        (b"Access-Control-Allow-Credentials", b"true"),
    ]


def test_other_request_defaults_add_only_origin_and_vary() -> None:
    assert forwarded(cors(), [(b"origin", ORIGIN)], []) == [
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Vary", b"Origin"),
    ]


def test_options_without_request_method_is_an_ordinary_request() -> None:
    assert forwarded(cors(), [(b"Origin", ORIGIN)], [], b"OPTIONS") == [
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Vary", b"Origin"),
    ]


def test_a_get_with_request_method_is_not_a_preflight() -> None:
    assert forwarded(cors(), preflight(), [], b"GET") == [
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Vary", b"Origin"),
    ]


def test_other_request_origin_not_allowed_strips_upstream_cors_headers() -> None:
    mw = cors('allowed_origins = ["https://app.example.com"]')
    upstream = [(b"Access-Control-Allow-Origin", b"*"), (b"ACCESS-CONTROL-ALLOW-CREDENTIALS", b"true"), (b"X", b"1")]
    assert forwarded(mw, [(b"Origin", b"https://evil.com")], upstream) == [(b"X", b"1")]


@pytest.mark.parametrize(
    ("vary", "expected"),
    [
        ([], [(b"Vary", b"Origin")]),
        ([(b"Vary", b"Accept-Encoding")], [(b"Vary", b"Accept-Encoding, Origin")]),
        ([(b"vary", b"Accept, origin")], [(b"vary", b"Accept, origin")]),  # already listed
        ([(b"Vary", b"*")], [(b"Vary", b"*")]),
        ([(b"Vary", b"A"), (b"Vary", b"B")], [(b"Vary", b"A"), (b"Vary", b"B, Origin")]),
    ],
)
def test_vary_origin_is_appended(vary: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]) -> None:
    headers = forwarded(cors(), [(b"Origin", ORIGIN)], vary)
    assert [h for h in headers if h[0].lower() == b"vary"] == expected


# --- origin patterns ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "origin", "allowed"),
    [
        (["*"], b"https://anything.test", True),
        (["*"], b"null", True),
        (["https://app.example.com"], b"https://app.example.com", True),
        (["https://app.example.com"], b"HTTPS://App.Example.COM", True),  # case-insensitive
        (["HTTPS://APP.example.com"], b"https://app.example.com", True),
        (["https://app.example.com"], b"http://app.example.com", False),
        (["https://app.example.com"], b"https://app.example.com:8443", False),
        (["https://app.example.com:8443"], b"https://app.example.com:8443", True),
        (["https://*.example.com"], b"https://a.example.com", True),
        (["https://*.example.com"], b"https://a.b.c.example.com", True),  # any depth
        (["https://*.example.com"], b"https://A.Example.com", True),
        (["https://*.example.com"], b"https://example.com", False),  # subdomains only
        (["https://*.example.com"], b"https://.example.com", False),
        (["https://*.example.com"], b"https://badexample.com", False),
        (["https://*.example.com"], b"http://a.example.com", False),  # scheme must match
        (["https://*.example.com"], b"https://a.example.com:8443", False),
        (["https://*.example.com"], b"https://a.example.com.evil.com", False),
        (["https://*.example.com"], b"https://evil.com/.example.com", False),
        (["https://*.example.com"], b"https://user@a.example.com", False),
        (["https://*.example.com"], b"https://evil.com:1.example.com", False),
        (["https://*.example.com:8443"], b"https://a.example.com:8443", True),
        (["https://*.example.com:8443"], b"https://a.example.com", False),
        (["https://x.test", "https://*.example.com"], b"https://x.test", True),
    ],
)
def test_origin_patterns(patterns: list[str], origin: bytes, allowed: bool) -> None:
    assert OriginSet(patterns).allows(origin) is allowed


def test_the_request_origin_is_echoed_as_sent() -> None:
    mw = cors('allowed_origins = ["https://*.example.com"]')
    headers = forwarded(mw, [(b"Origin", b"https://A.Example.com")], [])
    assert (b"Access-Control-Allow-Origin", b"https://A.Example.com") in headers


# --- CORS headers on the replies of later middlewares (SPEC §6.0) ------------------------------------------------


def test_a_later_429_gets_cors_and_header_middleware_headers() -> None:
    c = Cors("cors", "r", params("cors", 'allowed_origins = ["https://app.example.com"]'))
    h = Headers("h", "r", params("headers", 'response_headers = { "X-Frame-Options" = "DENY" }'))
    rl = RateLimit("rl", "r", params("rate-limit", "rate = 1\nburst = 1"))
    chain = Chain([c, h, rl])
    now = 0.0

    def run() -> tuple[int, list[tuple[bytes, bytes]]]:
        resp = drive(chain, request(headers=[(b"Origin", ORIGIN)], slots=len(chain)), now)
        return resp.status, resp.headers

    status, headers = run()
    assert status == 200
    assert (b"RateLimit-Remaining", b"0") in headers
    assert (b"Access-Control-Allow-Origin", ORIGIN) in headers
    status, headers = run()
    assert status == 429
    assert headers == [
        (b"Content-Type", JSON),
        (b"Retry-After", b"1"),
        (b"RateLimit-Limit", b"1"),
        (b"RateLimit-Remaining", b"0"),
        (b"RateLimit-Reset", b"1"),
        (b"X-Frame-Options", b"DENY"),
        (b"Access-Control-Allow-Origin", ORIGIN),
        (b"Vary", b"Origin"),
    ]


def test_a_preflight_is_answered_before_later_middlewares_run() -> None:
    c = cors()
    rl = RateLimit("rl", "r", params("rate-limit", "rate = 1\nburst = 1"))
    chain = Chain([c, rl])
    for _ in range(3):  # the limiter never runs: no token is used
        resp = drive(chain, request(b"OPTIONS", headers=preflight(), slots=len(chain)), 0.0)
        assert resp.status == 204
        assert (b"Access-Control-Allow-Origin", ORIGIN) in resp.headers
    assert len(rl.buckets) == 0
