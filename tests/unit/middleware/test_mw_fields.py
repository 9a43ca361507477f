"""The middleware chain's header lists (``chain.Request`` / ``chain.Response``): case-insensitive edits, the
``hdrs`` ids handed to the head builders, batch sets, and a request that never writes into the parsed head."""

from __future__ import annotations

import pytest
from mw_support import params

from a3s_gateway.http import hdrs
from a3s_gateway.middleware.chain import HeaderEdits, Request, Response, length_mask, lower_name, name_id
from a3s_gateway.middleware.ratelimit import RateLimit, int_bytes


def _ids(headers: list[tuple[bytes, bytes]]) -> bytes:
    return bytes(hdrs.NAMES.get(n.lower(), 0) for n, _ in headers)


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(b"GET", b"/", None, b"h", headers, "127.0.0.1", "r", b"http", 0, 2)


def test_name_caches() -> None:
    assert lower_name(b"X-Served-By") == b"x-served-by"
    assert lower_name(b"X-Served-By") == b"x-served-by"  # the remembered one
    assert name_id(b"Content-Type") == bytes((hdrs.CONTENT_TYPE,))
    assert name_id(b"CONNECTION") == bytes((hdrs.CONNECTION,))
    assert name_id(b"X-Other") == b"\x00"


def test_request_copies_the_parsed_list_before_changing_it() -> None:
    parsed = [(b"Host", b"h"), (b"Accept", b"*/*")]
    req = _request(parsed)
    assert req.headers is parsed and req.get(b"accept") == b"*/*"
    req.set(b"X-Env", b"bench")
    assert parsed == [(b"Host", b"h"), (b"Accept", b"*/*")]  # untouched
    assert req.headers == [(b"Host", b"h"), (b"Accept", b"*/*"), (b"X-Env", b"bench")] and req.changed
    req2 = _request(parsed)
    req2.set_many(HeaderEdits(((b"A", b"1"), (b"B", b"2"))))
    assert parsed == [(b"Host", b"h"), (b"Accept", b"*/*")]
    req3 = _request(parsed)
    req3.remove(b"ACCEPT")
    assert parsed == [(b"Host", b"h"), (b"Accept", b"*/*")] and req3.headers == [(b"Host", b"h")]


@pytest.mark.parametrize("existing", [False, True])
def test_set_many_appends_or_replaces(existing: bool) -> None:
    headers = [(b"Server", b"x"), (b"Content-Length", b"3")]
    if existing:
        headers.append((b"x-b", b"old"))
    resp = Response(200, list(headers), False)
    base = _ids(headers)
    resp.set_many(HeaderEdits(((b"X-A", b"1"), (b"X-B", b"2"), (b"Connection", b"close"))))
    want = [(b"Server", b"x"), (b"Content-Length", b"3"), (b"X-A", b"1"), (b"X-B", b"2"), (b"Connection", b"close")]
    assert resp.headers == want
    assert resp.header_ids(base) == _ids(want)  # the ids follow: Connection is still known as hop-by-hop


def test_header_ids_after_adds_and_removals() -> None:
    headers = [(b"Host", b"h"), (b"Connection", b"keep-alive"), (b"X-Trace", b"1")]
    base = _ids(headers)
    resp = Response(200, list(headers), False)
    assert resp.header_ids(base) is base
    resp.add(b"Transfer-Encoding", b"chunked")
    resp.headers.append((b"X-Direct", b"appended without add"))  # lists edited in place still classify right
    resp.add(b"Upgrade", b"h2c")
    assert resp.header_ids(base) == _ids(resp.headers)
    resp.remove(b"connection")
    assert resp.header_ids(base) == _ids(resp.headers)
    resp.add(b"Keep-Alive", b"1")
    assert resp.header_ids(base) == _ids(resp.headers)


def test_remembered_id_joins_follow_each_head() -> None:
    """The ids of requests and responses (their base ids plus the appended ones) are remembered for the last head:
    heads that alternate, with other base ids or other appended headers, still get their own ids."""
    edits = HeaderEdits(((b"X-Env", b"bench"), (b"Connection", b"close")))
    other = HeaderEdits(((b"X-Served-By", b"a3s"), (b"Upgrade", b"h2c")))
    heads = [[(b"Host", b"h"), (b"Accept", b"*/*")], [(b"Host", b"h"), (b"TE", b"trailers"), (b"X-A", b"1")]]
    for round_ in range(3):
        for headers in heads:
            req = _request(headers)
            req.set_many(edits)
            assert req.header_ids(_ids(headers)) == _ids(req.headers)
            resp = Response(200, list(headers), False)
            resp.set_many(edits)
            resp.set_many(other if round_ % 2 else HeaderEdits(((b"X-B", b"2"),)))  # a second batch, joined
            assert resp.header_ids(_ids(headers)) == _ids(resp.headers)
            assert headers == heads[heads.index(headers)] and len(headers) in (2, 3)  # parsed lists untouched


def test_batch_set_on_the_shared_list_keeps_every_lookup_right() -> None:
    """A batch set on a request that still shares the parsed list copies it once, with the new headers; lower-case
    names computed before (``get_all``) stay in step."""
    parsed = [(b"Host", b"h"), (b"X-Forwarded-For", b"1.2.3.4")]
    req = _request(parsed)
    assert req.get_all(b"x-forwarded-for") == [b"1.2.3.4"]  # lower-case names computed now
    edits = HeaderEdits(((b"X-Env", b"bench"), (b"X-Two", b"2")))
    req.set_many(edits)
    assert parsed == [(b"Host", b"h"), (b"X-Forwarded-For", b"1.2.3.4")]
    assert req.headers == [*parsed, (b"X-Env", b"bench"), (b"X-Two", b"2")] and req.changed
    assert edits.listed == [(b"X-Env", b"bench"), (b"X-Two", b"2")]  # the prepared list is not the request's
    assert req.get(b"x-two") == b"2" and req.get_all(b"X-ENV") == [b"bench"]
    assert req.header_ids(_ids(parsed)) == _ids(req.headers)
    req.set_many(edits)  # present now: replaced, not appended again
    assert req.headers == [*parsed, (b"X-Env", b"bench"), (b"X-Two", b"2")]
    assert req.remove(b"x-env") and req.headers == [*parsed, (b"X-Two", b"2")]
    assert req.header_ids(_ids(parsed)) == _ids(req.headers)


def test_header_edits_need_distinct_names() -> None:
    with pytest.raises(ValueError):
        HeaderEdits(((b"X-A", b"1"), (b"x-a", b"2")))


def test_rate_limit_headers_replace_the_backends_own() -> None:
    mw = RateLimit("m", "r", params("rate-limit", "rate = 10\nburst = 5"))
    req = _request([])
    assert mw.request(req, 100.0) is None
    plain = Response(200, [(b"Server", b"x")], False)
    mw.response(req, plain, 100.0)
    assert plain.headers == [(b"Server", b"x"), (b"RateLimit-Limit", b"5"), (b"RateLimit-Remaining", b"4"),
                             (b"RateLimit-Reset", b"1")]
    own = Response(200, [(b"ratelimit-remaining", b"99"), (b"Server", b"x")], False)
    mw.response(req, own, 100.0)
    assert [v for n, v in own.headers if n.lower() == b"ratelimit-remaining"] == [b"4"]
    assert sorted(n for n, _ in own.headers) == [b"RateLimit-Limit", b"RateLimit-Remaining", b"RateLimit-Reset",
                                                 b"Server"]


def test_int_bytes() -> None:
    for n in (0, 1, 9, 10, 4095, 4096, 123456789):
        assert int_bytes(n) == str(n).encode()


def test_has_any_compares_only_names_of_a_listed_length() -> None:
    long_name = b"X-" + b"a" * 70
    resp = Response(200, [(b"Server", b"n"), (b"ETag", b'"1"'), (long_name.upper(), b"v")], False)
    lows = (b"etag", b"x-other")
    assert length_mask(lows) == (1 << 4) | (1 << 7)
    assert resp.has_any(lows, length_mask(lows))
    assert resp.has_any(lows)  # no mask: every name compared
    assert not resp.has_any((b"vary",), length_mask((b"vary",)))
    # a listed name of 62+ bytes: every name is compared
    assert length_mask((b"etag", long_name.lower())) == -1
    assert resp.has_any((long_name.lower(),), length_mask((long_name.lower(),)))
    assert not resp.has_any((b"x-" + b"b" * 70,), length_mask((b"x-" + b"b" * 70,)))


def test_length_bits_follow_appends_and_removals() -> None:
    """``has_any``/``get`` answer from the names' length bits once computed: every change must keep them true."""
    resp = Response(200, [(b"Server", b"n")], False)
    assert not resp.has_any((b"x-a",), length_mask((b"x-a",)))  # computes the bits: only length 6
    resp.add(b"X-A", b"1")  # a new length, added to the bits
    assert resp.has_any((b"x-a",), length_mask((b"x-a",))) and resp.get(b"x-a") == b"1"
    resp.append_new(((b"X-Bb", b"2"),), (b"x-bb",), name_id(b"X-Bb"), length_mask((b"x-bb",)))
    assert resp.has_any((b"x-bb",), length_mask((b"x-bb",))) and resp.get(b"X-BB") == b"2"
    resp.append_new(((b"X-Ccc", b"3"),), (b"x-ccc",), name_id(b"X-Ccc"))  # no mask given: every bit
    assert resp.get(b"x-ccc") == b"3"
    assert resp.remove(b"x-a")  # recomputed on the next lookup
    assert not resp.has_any((b"x-a",), length_mask((b"x-a",))) and resp.get(b"X-A") is None
    resp.set(b"X-A", b"again")
    assert resp.get(b"x-a") == b"again"
    long_name = b"X-" + b"L" * 64
    resp.add(long_name, b"v")  # 61 bytes or more share one bit
    assert resp.get(long_name) == b"v" and resp.has_any((long_name.lower(),), length_mask((long_name.lower(),)))
    assert resp.get(b"x-" + b"m" * 64) is None
    resp.remove_prefix(b"x-")
    assert resp.get(b"x-bb") is None and resp.get(b"server") == b"n"


@pytest.mark.parametrize("name", [b"_Under", b"^Caret", b"1Digit", b"-dash", b"ORIGIN", b"origin", b"oRiGiN"])
def test_lookups_of_names_not_starting_with_a_letter(name: bytes) -> None:
    """The first-byte shortcut compares bytes that lower-casing leaves alone as they are."""
    req = _request([(b"Host", b"h"), (b"Accept", b"*/*"), (name, b"v")])
    low = name.lower()
    assert req.get(name) == b"v" and req.get_lower(low) == b"v"
    assert req.has_any((low,), length_mask((low,)))
    other = bytes([low[0] ^ 0x01]) + low[1:]
    assert req.get(other) is None and not req.has_any((other,), length_mask((other,)))


def test_rate_limit_header_values_follow_the_bucket() -> None:
    """Remaining and Reset are remembered between responses only while their value is the same."""
    mw = RateLimit("m", "r", params("rate-limit", "rate = 1\nburst = 3"))
    seen = []
    for _ in range(4):
        req = _request([])
        if mw.request(req, 50.0) is not None:
            break
        resp = Response(200, [], False)
        mw.response(req, resp, 50.0)
        seen.append(dict(resp.headers))
    assert [h[b"RateLimit-Remaining"] for h in seen] == [b"2", b"1", b"0"]
    assert [h[b"RateLimit-Reset"] for h in seen] == [b"1", b"2", b"3"]
    assert {h[b"RateLimit-Limit"] for h in seen} == {b"3"}


def test_rate_limit_header_items_follow_the_token_count() -> None:
    """The three items are remembered for the last token count: a count seen again after others (a refill) and a
    count that rounds to the same Remaining with another Reset each get their own values."""
    mw = RateLimit("m", "r", params("rate-limit", 'rate = 1\nperiod = "2s"\nburst = 3'))  # 0.5 token/s

    def headers_at(now: float) -> dict[bytes, bytes]:
        req = _request([])
        assert mw.request(req, now) is None
        resp = Response(200, [], False)
        mw.response(req, resp, now)
        return dict(resp.headers)

    got = [headers_at(t) for t in (50.0, 50.0, 53.0, 57.0, 57.0)]
    # tokens left: 2, 1, 1.5 (Remaining 1 again, another Reset), 2 (refilled to 3), 1 (a count seen before)
    assert [h[b"RateLimit-Remaining"] for h in got] == [b"2", b"1", b"1", b"2", b"1"]
    assert [h[b"RateLimit-Reset"] for h in got] == [b"2", b"4", b"3", b"2", b"4"]
    assert {h[b"RateLimit-Limit"] for h in got} == {b"3"}


def test_request_edited_bits_name_what_middlewares_set_or_deleted() -> None:
    """``Request.edited`` (bit ``1 << hdrs id``) tells the head builder which forwarding headers a middleware
    decided (SPEC §5.2, §6.8): set, batch-set, and deleted even when the client had not sent it."""
    req = _request([(b"Host", b"h"), (b"X-Forwarded-Proto", b"ftp")])
    assert req.edited == 0
    req.set(b"x-forwarded-proto", b"https")
    req.remove(b"X-Forwarded-For")  # absent: nothing removed, still decided
    assert req.edited == (1 << hdrs.X_FORWARDED_PROTO) | (1 << hdrs.X_FORWARDED_FOR)
    assert req.headers == [(b"Host", b"h"), (b"x-forwarded-proto", b"https")]
    req.set_many(HeaderEdits(((b"X-Real-IP", b"1.2.3.4"), (b"X-Other", b"1"))))
    assert req.edited & (1 << hdrs.X_REAL_IP) and req.edited & 1  # X-Other has id 0
    assert not req.edited & (1 << hdrs.X_REQUEST_ID)
