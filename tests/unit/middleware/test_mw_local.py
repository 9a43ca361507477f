"""``headers`` (§6.8), ``strip-prefix`` (§6.9), ``body-limit`` (§6.10) and ``ip-allow`` (§6.13)."""

from __future__ import annotations

import pytest
from mw_support import body, drive, params, request, response

from a3s_gateway.middleware.bodylimit import BodyLimit
from a3s_gateway.middleware.chain import JSON, Chain
from a3s_gateway.middleware.headers import Headers
from a3s_gateway.middleware.ipallow import IpAllow
from a3s_gateway.middleware.rewrite import StripPrefix

# --- headers ------------------------------------------------------------------------------------------------------


def test_request_headers_set_replace_and_delete() -> None:
    mw = Headers(
        "m",
        "r",
        params(
            "headers", 'request_headers = { "X-Forwarded-Proto" = "https", "X-Forwarded-For" = "", "X-New" = "a b" }'
        ),
    )
    assert mw.has_request and not mw.has_response
    req = request(
        headers=[
            (b"x-forwarded-proto", b"http"),
            (b"X-Forwarded-For", b"1.2.3.4"),
            (b"Accept", b"*/*"),
            (b"X-FORWARDED-FOR", b"5.6.7.8"),
        ]
    )
    assert mw.request(req, 0.0) is None
    assert req.headers == [(b"Accept", b"*/*"), (b"X-Forwarded-Proto", b"https"), (b"X-New", b"a b")]
    assert req.changed


def test_deleting_an_absent_request_header_changes_nothing() -> None:
    mw = Headers("m", "r", params("headers", 'request_headers = { "X-Gone" = "" }'))
    req = request(headers=[(b"A", b"1")])
    mw.request(req, 0.0)
    assert req.headers == [(b"A", b"1")]
    assert not req.changed


@pytest.mark.parametrize("local", [False, True])
def test_response_headers_on_upstream_and_gateway_responses(local: bool) -> None:
    mw = Headers("m", "r", params("headers", 'response_headers = { "Server" = "", "X-Frame-Options" = "DENY" }'))
    assert mw.has_response and not mw.has_request
    resp = response(502 if local else 200, [(b"server", b"nginx"), (b"x-frame-options", b"SAMEORIGIN")], local)
    mw.response(request(), resp, 0.0)
    assert resp.headers == [(b"X-Frame-Options", b"DENY")]


def test_header_values_keep_utf8() -> None:
    mw = Headers("m", "r", params("headers", 'response_headers = { "X-Note" = "café" }'))
    resp = response()
    mw.response(request(), resp, 0.0)
    assert resp.headers == [(b"X-Note", "café".encode())]


def test_headers_response_phase_reaches_a_later_middleware_reply() -> None:
    h = Headers("h", "r", params("headers", 'response_headers = { "X-Frame-Options" = "DENY" }'))
    limit = BodyLimit("b", "r", params("body-limit", "max_body_bytes = 10"))
    resp = drive(Chain([h, limit]), request(body_length=11, slots=2), 0.0)
    assert resp.status == 413
    assert (b"X-Frame-Options", b"DENY") in resp.headers


# --- strip-prefix -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefixes", "path", "new_path", "removed"),
    [
        ('["/api"]', b"/api/users", b"/users", b"/api"),
        ('["/api"]', b"/api", b"/", b"/api"),
        ('["/api"]', b"/api/", b"/", b"/api"),
        ('["/api"]', b"/apiv2/x", b"/v2/x", b"/api"),  # raw string prefix, as Traefik
        ('["/api/"]', b"/api/x", b"/x", b"/api/"),
        ('["/api", "/api/v1"]', b"/api/v1/x", b"/v1/x", b"/api"),  # first in list order
        ('["/api/v1", "/api"]', b"/api/v1/x", b"/x", b"/api/v1"),
        ('["/v1", "/api"]', b"/api/v1/x", b"/v1/x", b"/api"),
        ('["/a%20b"]', b"/a%20b/c", b"/c", b"/a%20b"),  # raw (not decoded) path
    ],
)
def test_strip_prefix(prefixes: str, path: bytes, new_path: bytes, removed: bytes) -> None:
    mw = StripPrefix("m", "r", params("strip-prefix", f"prefixes = {prefixes}"))
    req = request(path=path, query=b"a=1&b=/api", headers=[(b"X-Forwarded-Prefix", b"/spoofed")])
    assert mw.request(req, 0.0) is None
    assert req.path == new_path
    assert req.query == b"a=1&b=/api"
    assert req.target() == new_path + b"?a=1&b=/api"
    assert req.get_all(b"x-forwarded-prefix") == [removed]
    assert req.changed


@pytest.mark.parametrize("path", [b"/other", b"/API/x", b"/ap", b"/"])
def test_strip_prefix_no_match_leaves_the_request_alone(path: bytes) -> None:
    mw = StripPrefix("m", "r", params("strip-prefix", 'prefixes = ["/api"]'))
    req = request(path=path, headers=[(b"Accept", b"*/*")])
    assert mw.request(req, 0.0) is None
    assert req.path == path
    assert req.headers == [(b"Accept", b"*/*")]
    assert not req.changed


# --- body-limit ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "rejected"), [(0, False), (1024, False), (1025, True), (10**9, True), (-1, False)])
def test_body_limit(length: int, rejected: bool) -> None:
    mw = BodyLimit("m", "r", params("body-limit", "max_body_bytes = 1024"))
    assert mw.max_body_bytes == 1024
    reply = mw.request(request(b"POST", body_length=length), 0.0)
    if not rejected:
        assert reply is None  # chunked (-1) bodies are counted by the proxy while streaming
        return
    assert reply is not None and reply.status == 413
    assert body(reply) == {"error": "Request body too large", "max_bytes": 1024}
    assert reply.body == b'{"error":"Request body too large","max_bytes":1024}'
    assert reply.headers == [(b"Content-Type", JSON), (b"Connection", b"close")]


def test_chain_body_limit_is_the_smallest_limit() -> None:
    a = BodyLimit("a", "r", params("body-limit", "max_body_bytes = 5000"))
    b = BodyLimit("b", "r", params("body-limit", "max_body_bytes = 300"))
    assert Chain([a, b]).body_limit == 300


# --- ip-allow -----------------------------------------------------------------------------------------------------


def ip_allow(hcl: str) -> IpAllow:
    return IpAllow("m", "r", params("ip-allow", hcl))


def allowed(mw: IpAllow, client_ip: str, xff: list[bytes] | None = None) -> bool:
    headers = [(b"X-Forwarded-For", v) for v in xff or []]
    reply = mw.request(request(client_ip=client_ip, headers=headers), 0.0)
    if reply is None:
        return True
    assert reply.status == 403
    assert body(reply) == {"error": "Forbidden"}
    assert reply.headers == [(b"Content-Type", JSON)]
    return False


@pytest.mark.parametrize(
    ("client_ip", "ok"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("192.168.1.7", True),
        ("192.168.1.8", False),
        ("2001:db8::42", True),
        ("2001:db9::1", False),
        ("::ffff:10.9.9.9", True),  # IPv4-mapped IPv6 normalised
        ("::ffff:11.0.0.1", False),
        ("", False),
        ("not-an-ip", False),
    ],
)
def test_ip_allow_uses_the_client_ip(client_ip: str, ok: bool) -> None:
    mw = ip_allow('allowed_ips = ["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]')
    assert allowed(mw, client_ip) is ok


def test_ip_allow_decisions_in_a_row_keep_their_own_answer() -> None:
    """The decision for the address asked last is reused: alternating and repeated addresses, allowed or denied,
    an empty address and a table cleared when full all keep the right answer."""
    mw = ip_allow('allowed_ips = ["10.0.0.0/8"]')
    order = ["10.1.1.1", "10.1.1.1", "11.0.0.1", "11.0.0.1", "10.1.1.1", "", "", "10.2.2.2", "not-an-ip", "10.2.2.2"]
    assert [allowed(mw, ip) for ip in order] == [True, True, False, False, True, False, False, True, False, True]
    for i in range(5000):  # past the table's bound: cleared, the last decision stays right
        assert allowed(mw, f"11.{i >> 8 & 255}.{i & 255}.1") is False
    assert allowed(mw, "10.1.1.1") and not allowed(mw, "11.0.0.1") and allowed(mw, "10.1.1.1")


def test_ip_allow_mapped_networks_match_ipv4_clients() -> None:
    mw = ip_allow('allowed_ips = ["::ffff:10.0.0.0/104"]')
    assert allowed(mw, "10.200.0.1")
    assert not allowed(mw, "11.0.0.1")


def test_without_options_x_forwarded_for_is_ignored() -> None:
    mw = ip_allow('allowed_ips = ["203.0.113.0/24"]')
    assert not allowed(mw, "198.51.100.1", [b"203.0.113.7, 198.51.100.1"])


# X-Forwarded-For as middlewares see it: what the peer sent (the proxy appends the peer when it forwards).
TRUSTED = 'allowed_ips = ["203.0.113.0/24"]\ntrusted_proxies = ["10.0.0.0/8"]'


@pytest.mark.parametrize(
    ("peer", "xff", "ok"),
    [
        ("10.0.0.1", [b"203.0.113.7, 10.0.0.2"], True),  # rightmost untrusted entry
        ("10.0.0.1", [b"203.0.113.7"], True),
        ("10.0.0.1", [b"203.0.113.7, 198.51.100.1"], False),  # spoofed left entry ignored
        ("10.0.0.1", [b"198.51.100.1, 203.0.113.7"], True),
        ("10.0.0.1", [b"203.0.113.7", b"10.0.0.2"], True),  # several header lines
        ("198.51.100.9", [b"203.0.113.7"], False),  # the peer is not a trusted proxy: the peer is checked
        ("203.0.113.8", [b"198.51.100.1"], True),  # ... and an allowed peer passes
        ("10.0.0.1", [b"10.0.0.3, 10.0.0.2"], False),  # all trusted: the leftmost
        ("10.0.0.1", [], False),  # trusted peer without the header: the peer
        ("::ffff:10.0.0.1", [b"203.0.113.7"], True),  # mapped addresses normalised
        ("10.0.0.1", [b"::ffff:203.0.113.7"], True),
        ("10.0.0.1", [b"garbage"], False),  # unparsable client entry: denied, never the peer
        ("10.0.0.1", [b"203.0.113.7, garbage"], False),
        ("10.0.0.1", [b" 203.0.113.7 ,, 10.0.0.2 "], True),  # blanks and empty items
    ],
)
def test_ip_allow_trusted_proxies(peer: str, xff: list[bytes], ok: bool) -> None:
    assert allowed(ip_allow(TRUSTED), peer, xff) is ok


def test_ip_allow_all_hops_trusted_checks_the_leftmost_entry() -> None:
    mw = ip_allow('allowed_ips = ["10.0.0.3"]\ntrusted_proxies = ["10.0.0.0/8"]')
    assert allowed(mw, "10.0.0.1", [b"10.0.0.3, 10.0.0.2"])
    assert not allowed(mw, "10.0.0.1", [b"10.0.0.2, 10.0.0.3"])


def test_ip_allow_trusted_proxies_without_x_forwarded_for_uses_the_client_ip() -> None:
    mw = ip_allow(TRUSTED)
    assert allowed(mw, "203.0.113.9")
    assert not allowed(mw, "198.51.100.1")


@pytest.mark.parametrize(
    ("depth", "xff", "ok"),
    [
        (1, [b"198.51.100.1, 203.0.113.7"], True),  # 1st from the right
        (2, [b"198.51.100.1, 203.0.113.7"], False),
        (2, [b"203.0.113.5, 198.51.100.1"], True),
        (2, [b"203.0.113.5", b"198.51.100.1"], True),  # several header lines
        (3, [b"198.51.100.1, 203.0.113.7"], False),  # missing entry: denied
        (1, [], False),  # no header at all
    ],
)
def test_ip_allow_depth(depth: int, xff: list[bytes], ok: bool) -> None:
    mw = ip_allow(f'allowed_ips = ["203.0.113.0/24"]\ndepth = {depth}')
    # the client IP is allowed: with depth it is never the fallback
    assert allowed(mw, "203.0.113.9", xff) is ok
