"""token-limit budgets (SPEC §16.4) in-process and in the shared segment (both twins), its configuration checks, and
the pieces of ``stream_usage`` (§16.2): the body rewrite and the filter that takes the usage-only event out."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from impls import twins

from a3s_gateway.config import ConfigError, GatewayConfig
from a3s_gateway.http.inspect import with_include_usage
from a3s_gateway.http.usage import UsageEventFilter
from a3s_gateway.middleware.tokenlimit import LocalBudgets, SharedBudgets

HOUR = 3600.0


@pytest.fixture(params=["local", *twins("shared segment")])
def budgets(request: pytest.FixtureRequest) -> Iterator[Callable[[float], LocalBudgets]]:
    """A factory of budgets with a given window: in-process, or in a segment table of each twin."""
    if request.param == "local":
        yield LocalBudgets
        return
    try:
        twin = importlib.import_module(request.param)
    except ImportError as e:  # a missing build fails, never skips
        pytest.fail(f"{request.param} is not built ({e}); run `make build`")
    seg = twin.Segment.create(1 << 16)
    yield lambda window: SharedBudgets(window, seg, 64, 256)
    seg.close()


def test_reservations_hold_the_limit_and_settle_to_the_usage(budgets: Callable[[float], LocalBudgets]) -> None:
    b = budgets(HOUR)
    now = 10 * HOUR + 5.0
    d = [b.reserve([("k", 1000, 330)], now) for _ in range(4)]
    assert [x.admitted for x in d] == [True, True, True, False]
    assert [x.remaining for x in d] == [670, 340, 10, 10] and {x.limit for x in d} == {1000}
    assert d[0].reset == 3595 and d[0].window == 10
    b.settle([("k", 330)], d[0].window, 30, now + 1)  # 330 reserved, 30 used
    assert b.reserve([("k", 1000, 300)], now + 2).remaining == 1000 - 30 - 330 - 330 - 300
    # an untouched budget always admits one request, its reservation capped at the limit
    assert b.reserve([("other", 1000, 5000)], now).admitted
    assert not b.reserve([("other", 1000, 1)], now).admitted


def test_all_limits_or_none_and_the_header_of_the_fewest_remaining(budgets: Callable[[float], LocalBudgets]) -> None:
    b = budgets(60.0)
    now = 6000.0
    d = b.reserve([("k", 10000, 400), ("k\x00m:big", 500, 400)], now)
    assert d.admitted and (d.limit, d.remaining) == (500, 100)
    d = b.reserve([("k", 10000, 400), ("k\x00m:big", 500, 400)], now)
    assert not d.admitted and (d.limit, d.remaining) == (500, 100)
    d = b.reserve([("k", 10000, 400)], now)  # the refused request charged nothing to the key's budget
    assert d.admitted and (d.limit, d.remaining) == (10000, 10000 - 800)


def test_a_reservation_of_an_ended_window_charges_its_usage_to_the_current_one(
        budgets: Callable[[float], LocalBudgets]) -> None:
    b = budgets(60.0)
    d = b.reserve([("k", 1000, 900)], 6000.0)
    assert d.admitted and d.window == 100
    b.settle([("k", 900)], d.window, 1200, 6061.0)  # the stream ended in the next window: an overdraft there
    d = b.reserve([("k", 1000, 1)], 6062.0)
    assert not d.admitted and d.remaining == 0
    assert b.reserve([("k", 1000, 1)], 6120.0).admitted  # the window after starts empty


def test_many_keys_share_a_small_table_without_errors(budgets: Callable[[float], LocalBudgets]) -> None:
    b = budgets(60.0)
    for i in range(600):  # more keys than the table's 256 entries: recycled, never failing
        assert b.reserve([(f"10.0.{i // 256}.{i % 256}", 100, 10)], 6000.0).admitted


# -- configuration -------------------------------------------------------------------------------------------------

BASE = """
entrypoints "web" { address = ":8080" }
routers "r" {
  rule = "PathPrefix(`/`)"
  service = "s"
  middlewares = ["t"]
}
services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }
"""


def errors(body: str) -> list[str]:
    try:
        GatewayConfig.from_hcl(BASE + 'middlewares "t" {\n  type = "token-limit"\n' + body + "\n}\n", "g.hcl", env={})
    except ConfigError as exc:
        return [str(i) for i in exc.issues if i.severity == "error"]
    return []


@pytest.mark.parametrize(("body", "expected"), [
    ("", 'token-limit requires key "limit"'),
    ("limit = 0", "middlewares.t.limit"),
    ('limit = 10\n  window = "500ms"', "middlewares.t.window"),
    ('limit = 10\n  window = "25h"', "middlewares.t.window"),
    ('limit = 10\n  key = "cookie:x"', 'invalid key "cookie:x"; expected "client_ip", "header:<Name>", "jwt:<claim>"'),
    ('limit = 10\n  count = "both"', "middlewares.t.count"),
    ('limit = 10\n  per_model = { "m" = 0 }', "middlewares.t.per_model"),
    ('limit = 10\n  reserve = "all"', "middlewares.t.reserve"),
    ('limit = 10\n  redis_url = "http://x"', "middlewares.t.redis_url"),
])
def test_invalid_configurations_are_refused_with_their_place(body: str, expected: str) -> None:
    found = errors(body)
    assert any(expected in e for e in found), found
    assert all(e.startswith("g.hcl:") for e in found), found


def test_valid_keys() -> None:
    for key in ("client_ip", "header:X-Tenant", "jwt:sub", "api_key"):
        assert errors(f'limit = 10\n  key = "{key}"\n  window = "24h"') == []


def test_a_router_ai_block_is_checked() -> None:
    with pytest.raises(ConfigError, match="stream_usage"):
        GatewayConfig.from_hcl(BASE.replace('service = "s"', 'service = "s"\n  ai { stream_usage = "yes" }')
                               + 'middlewares "t" { type = "token-limit"; limit = 1 }', "g.hcl", env={})


# -- stream_usage ------------------------------------------------------------------------------------------------

def test_include_usage_is_added_and_other_options_kept() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false}}'
    assert orjson.loads(with_include_usage(body) or b"") == {
        "model": "m", "stream": True, "stream_options": {"continuous_usage_stats": False, "include_usage": True}}
    assert with_include_usage(b"[1]") is None and with_include_usage(b'{"model":') is None


def event(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


@pytest.mark.parametrize("piece", [1, 2, 7, 10000])
@pytest.mark.parametrize("crlf", [False, True])
def test_the_usage_only_event_is_taken_out_and_every_other_byte_kept(piece: int, crlf: bool) -> None:
    kept = [b": keep-alive comment\n\n", event({"choices": [{"delta": {"content": "hi"}}]}),
            b"event: ping\ndata: {\"usage\": 1}\n\n", event({"choices": [], "usage": None})]
    usage = event({"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
    stream = b"".join(kept) + usage + b"data: [DONE]\n\n"
    expected = b"".join(kept) + b"data: [DONE]\n\n"
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
        expected = expected.replace(b"\n", b"\r\n")
    f = UsageEventFilter()
    out = b"".join(f.feed(stream[i:i + piece]) for i in range(0, len(stream), piece)) + f.finish()
    assert out == expected


def test_an_unfinished_event_goes_out_at_the_end() -> None:
    f = UsageEventFilter()
    assert f.feed(b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"cho') == \
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    assert f.finish() == b'data: {"cho'


# -- keys ----------------------------------------------------------------------------------------------------------

def test_api_key_budgets_are_per_accepted_key_and_never_store_it() -> None:
    from mw_support import params, request

    from a3s_gateway.middleware.auth import ApiKey
    from a3s_gateway.middleware.chain import Chain
    from a3s_gateway.middleware.tokenlimit import TokenLimit

    api = ApiKey("auth", "r", params("api-key", 'keys = ["key-one", "key-two"]'))
    limit = TokenLimit("tokens", "r", params("token-limit", 'limit = 10\n  key = "api_key"\n  reserve = "none"'))
    Chain([api, limit])

    def key_of(value: bytes, ip: str = "10.0.0.1") -> str:
        req = request(headers=[(b"X-API-Key", value)], client_ip=ip, slots=2)
        assert api.request(req, 0.0) is None
        return limit.budget_key(req)

    one = key_of(b"key-one")
    assert one == key_of(b"key-one", "10.0.0.2") != key_of(b"key-two")
    assert one.startswith("k:") and "key-one" not in one
    assert limit.budget_key(request(client_ip="10.0.0.3")) == "10.0.0.3"  # no key accepted: the client IP


def test_the_usage_event_is_taken_out_before_compression() -> None:
    import zlib

    from a3s_gateway.http.usage import ThenFilter

    class Deflate:
        def __init__(self) -> None:
            self.z = zlib.compressobj()

        def feed(self, data: bytes) -> bytes:
            return self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)

        def finish(self) -> bytes:
            return self.z.flush()

    content = event({"choices": [{"delta": {"content": "hi"}}]})
    stream = content + event({"choices": [], "usage": {"prompt_tokens": 3}}) + b"data: [DONE]"
    f = ThenFilter(UsageEventFilter(), Deflate())
    out = b"".join(f.feed(stream[i:i + 5]) for i in range(0, len(stream), 5)) + f.finish()
    assert zlib.decompress(out) == content + b"data: [DONE]"


def test_a_claim_or_api_key_without_its_middleware_before_is_a_warning() -> None:
    def warnings(key: str, chain: str) -> list[str]:
        hcl = BASE.replace('["t"]', chain) + f'''middlewares "t" {{
  type = "token-limit"
  limit = 10
  key = "{key}"
}}
middlewares "j" {{ type = "jwt"; value = "s3cret" }}
middlewares "k" {{ type = "api-key"; keys = ["x"] }}
'''
        return [str(w) for w in GatewayConfig.from_hcl(hcl, "g.hcl", env={}).warnings]

    found = warnings("jwt:sub", '["t", "j"]')
    assert len(found) == 1 and found[0].startswith("g.hcl:") and "no jwt middleware comes before it" in found[0]
    assert "no api-key middleware" in warnings("api_key", '["j", "t"]')[0]
    assert warnings("jwt:sub", '["j", "t"]') == warnings("api_key", '["k", "t"]') == []
    assert warnings("header:X-Tenant", '["t"]') == []


def test_the_ai_block_is_for_http_routers() -> None:
    hcl = '''
entrypoints "tcp" {
  address  = ":9000"
  protocol = "tcp"
}
routers "r" {
  rule        = "HostSNI(`*`)"
  service     = "s"
  entrypoints = ["tcp"]
  ai { stream_usage = true }
}
services "s" { load_balancer { servers = [{ url = "tcp://127.0.0.1:9001" }] } }
'''
    with pytest.raises(ConfigError, match="the ai block applies to HTTP routers only"):
        GatewayConfig.from_hcl(hcl, "g.hcl", env={})
