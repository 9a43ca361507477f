"""``token-limit`` (SPEC §16.4) and ``ai { stream_usage }`` (§16.2) end to end, against fake OpenAI-style servers.

Budgets are checked through what clients see: admissions, 429 answers and their ``RateLimit-*`` headers. The
``RateLimit-Remaining`` of an admitted request is the limit less everything charged, its own reservation included,
so it shows how earlier requests were settled (reservation replaced by the usage)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai_fake import PROMPT_TOKENS, REPLY, openai_handler, stream_body
from redis_server import RedisServer, redis_server
from test_ai_usage import log_lines
from test_observability import ADMIN, sample, scrape

from support import Client, Request, gateway_port, start_backend

pytestmark = pytest.mark.timeout(60)


def est(body: bytes) -> int:
    """The input estimate of a request body (§16.2): ceil(bytes / 4)."""
    return (len(body) + 3) // 4


def chat(model: str = "m1", max_tokens: int | None = 300, stream: bool = False, headers: str = "",
         chunked: bool = False, **extra: Any) -> tuple[bytes, bytes]:
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    if stream:
        doc["stream"] = True
    body = json.dumps(doc).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n" + headers.encode()
    if chunked:
        half = len(body) // 2
        framed = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed, body
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body, body


class UsageServer:
    """Answers chat completions with the usage a test sets (``usage[model]`` = (input, output)), each request held
    until ``gate`` is set; ``held`` counts the requests waiting at the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0
        self.most_held = 0
        self.usage: dict[str, tuple[int, int]] = {}

    async def handle(self, req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        doc = json.loads(req.body)
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.gate.wait()
        finally:
            self.held -= 1
        inp, out = self.usage.get(doc["model"], (10, 20))
        body = json.dumps({"object": "chat.completion", "model": doc["model"], "choices": [],
                           "usage": {"prompt_tokens": inp, "completion_tokens": out}}).encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True


def limit_config(backend: str, limit_keys: str, middlewares: str = '"tokens"', extra: str = "",
                 router: str = "") -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule        = "PathPrefix(`/v1`)"
  service     = "llm"
  middlewares = [{middlewares}]
  {router}
}}
services "llm" {{ load_balancer {{ servers = [{{ url = "{backend}" }}] }} }}
middlewares "tokens" {{
  type   = "token-limit"
  window = "1h"
  {limit_keys}
}}
{extra}
'''


async def send(port: int, raw: bytes) -> Any:
    c = await Client.connect(port)
    try:
        return await c.request(raw)
    finally:
        c.close()


async def test_ten_concurrent_requests_hold_a_1000_token_budget_and_settle_to_the_usage(start_gateway) -> None:
    server = UsageServer()
    backend = await start_backend(server.handle)
    gw = await start_gateway(limit_config(backend.url, "limit = 1000"))
    port = gateway_port(gw)
    raw, body = chat(max_tokens=300)
    reserve = 300 + est(body)  # 3 fit in 1,000 tokens, a 4th does not
    assert 3 * reserve <= 1000 < 4 * reserve

    server.gate.clear()
    tasks = [asyncio.create_task(send(port, raw)) for _ in range(10)]
    for _ in range(500):  # the admitted ones wait at the backend; the rest are answered at once
        if server.held == 3 and sum(t.done() for t in tasks) == 7:
            break
        await asyncio.sleep(0.01)
    rejected = [t.result() for t in tasks if t.done()]
    pending = [t for t in tasks if not t.done()]
    assert len(rejected) == 7 and server.held == 3
    for r in rejected:
        assert r.status == 429 and json.loads(r.body) == {"error": "Token limit exceeded"}
        assert r.header("RateLimit-Limit") == "1000"
        assert r.header("RateLimit-Remaining") == str(1000 - 3 * reserve)
        assert 1 <= int(r.header("RateLimit-Reset") or 0) <= 3600  # fixed windows: the end of the current one
        assert r.header("Retry-After") == r.header("RateLimit-Reset")
    server.gate.set()
    admitted = await asyncio.gather(*pending)
    assert [r.status for r in admitted] == [200, 200, 200] and server.most_held == 3
    # each was settled to its usage (10 + 20 tokens), not kept at its reservation: a 4th fits now
    r = await send(port, raw)
    assert r.status == 200
    assert r.header("RateLimit-Remaining") == str(1000 - 3 * 30 - reserve)
    assert r.header("RateLimit-Limit") == "1000"


async def test_per_model_budgets_apply_in_addition_to_the_limit(start_gateway) -> None:
    server = UsageServer()
    server.usage["big"] = (50, 450)
    backend = await start_backend(server.handle)
    gw = await start_gateway(limit_config(backend.url, 'limit = 10000\n  per_model = { "big" = 600 }'))
    port = gateway_port(gw)
    raw_big, body_big = chat("big", max_tokens=400)
    r = await send(port, raw_big)
    assert r.status == 200
    assert (r.header("RateLimit-Limit"), r.header("RateLimit-Remaining")) == ("600", str(600 - 400 - est(body_big)))
    r = await send(port, raw_big)  # 500 used of the model's 600: the next 400 do not fit
    assert r.status == 429 and r.header("RateLimit-Limit") == "600" and r.header("RateLimit-Remaining") == "100"
    raw_small, body_small = chat("small", max_tokens=400)
    r = await send(port, raw_small)  # another model: only the key's limit applies
    assert r.status == 200 and r.header("RateLimit-Limit") == "10000"
    assert r.header("RateLimit-Remaining") == str(10000 - 500 - 400 - est(body_small))


async def test_budgets_keyed_by_header_and_count_output_only(start_gateway) -> None:
    server = UsageServer()
    backend = await start_backend(server.handle)
    gw = await start_gateway(limit_config(backend.url, 'limit = 100\n  count = "output"\n  key = "header:X-Tenant"'))
    port = gateway_port(gw)
    server.usage["m1"] = (500, 90)  # input tokens do not count
    a, _ = chat(max_tokens=80, headers="X-Tenant: a\r\n")
    b, _ = chat(max_tokens=80, headers="X-Tenant: b\r\n")
    assert (await send(port, a)).status == 200
    r = await send(port, a)
    assert r.status == 429 and r.header("RateLimit-Remaining") == "10"
    r = await send(port, b)
    assert r.status == 200 and r.header("RateLimit-Remaining") == "20"


async def test_budgets_keyed_by_a_jwt_claim(start_gateway) -> None:
    jwt = pytest.importorskip("jwt")
    server = UsageServer()
    backend = await start_backend(server.handle)
    extra = '''
middlewares "auth" {
  type        = "jwt"
  value       = "s3cret-s3cret-s3cret-s3cret-s3cret"
  require_exp = false
}
'''
    gw = await start_gateway(limit_config(backend.url, 'limit = 500\n  key = "jwt:sub"', '"auth", "tokens"', extra))
    port = gateway_port(gw)

    def token(sub: str) -> str:
        return str(jwt.encode({"sub": sub}, "s3cret-s3cret-s3cret-s3cret-s3cret", algorithm="HS256"))

    alice, body = chat(max_tokens=300, headers=f"Authorization: Bearer {token('alice')}\r\n")
    bob, _ = chat(max_tokens=300, headers=f"Authorization: Bearer {token('bob')}\r\n")
    server.usage["m1"] = (100, 300)
    assert (await send(port, alice)).status == 200
    r = await send(port, alice)
    assert r.status == 429 and r.header("RateLimit-Remaining") == "100"
    r = await send(port, bob)  # another subject: its own budget
    assert r.status == 200 and r.header("RateLimit-Remaining") == str(500 - 300 - est(body))


async def test_each_exchange_is_counted_once_with_its_rejections(start_gateway) -> None:
    server = UsageServer()
    backend = await start_backend(server.handle)
    gw = await start_gateway(limit_config(backend.url, "limit = 50"), admin=ADMIN)
    raw, _ = chat(max_tokens=100)
    c = await Client.connect(gateway_port(gw))
    statuses = [(await c.request(raw)).status for _ in range(3)]  # keep-alive; the body comes with the head
    c.close()
    assert statuses == [200, 429, 429]
    for _ in range(200):  # until the gateway has seen the client leave
        if not sum(gw.connection_counts().values()):
            break
        await asyncio.sleep(0.01)
    fam = await scrape(gw)
    assert sample(fam, "gateway_token_limit_rejections", "gateway_token_limit_rejections_total", router="llm",
                  middleware="tokens") == 2
    counts = [(s.labels["code"], s.value) for s in fam["gateway_requests"].samples
              if s.name == "gateway_requests_total" and s.labels.get("router") == "llm"]
    assert sorted(counts) == [("200", 1), ("429", 2)]


async def test_a_client_that_leaves_before_the_answer_is_charged_the_input_estimate(start_gateway) -> None:
    server = UsageServer()
    server.usage["probe"] = (0, 0)
    backend = await start_backend(server.handle)
    gw = await start_gateway(limit_config(backend.url, "limit = 5000"))
    port = gateway_port(gw)
    raw, body = chat(max_tokens=1000)
    server.gate.clear()
    c = await Client.connect(port)
    c.send(raw)
    for _ in range(500):
        if server.held == 1:
            break
        await asyncio.sleep(0.01)
    c.writer.transport.abort()  # the request reached the model; its client leaves before any answer
    for _ in range(500):
        if not sum(gw.connection_counts().values()):
            break
        await asyncio.sleep(0.01)
    server.gate.set()
    probe, probe_body = chat("probe", max_tokens=0)
    r = await send(port, probe)
    assert r.status == 200 and r.header("RateLimit-Remaining") == str(5000 - est(body) - est(probe_body))


def sse_events(n: int) -> list[bytes]:
    return [b'data: {"choices":[{"index":0,"delta":{"content":"w%d"}}]}\n\n' % i for i in range(n)]


async def test_a_failed_stream_and_a_client_that_leaves_are_charged_what_was_streamed(start_gateway) -> None:
    left = asyncio.Event()

    async def handle(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        doc = json.loads(req.body)
        if doc["model"] == "probe":  # reports no tokens: settles to nothing
            usage = b'{"usage":{"prompt_tokens":0,"completion_tokens":0}}'
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(usage), usage))
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for event in sse_events(5):
            w.write(b"%x\r\n%s\r\n" % (len(event), event))
        await w.drain()
        if doc["model"] == "fails":
            return False  # the connection closes mid-stream: no last chunk, no usage
        try:  # "leaves": more events until the gateway drops the connection (the client left)
            for event in sse_events(1000):
                await asyncio.sleep(0.02)
                w.write(b"%x\r\n%s\r\n" % (len(event), event))
                await w.drain()
        except ConnectionError:
            pass
        left.set()
        return False

    backend = await start_backend(handle)
    gw = await start_gateway(limit_config(backend.url, "limit = 5000"))
    port = gateway_port(gw)
    raw, body = chat("fails", max_tokens=1000, stream=True)
    r = await send(port, raw)
    assert r.status == 200 and r.body.count(b"event: error") == 1
    charged = est(body) + 5  # no usage: the estimate (input, one token per content event)
    probe, probe_body = chat("probe", max_tokens=0)  # reserves its input estimate, settles to 0
    r = await send(port, probe)
    assert r.header("RateLimit-Remaining") == str(5000 - charged - est(probe_body))

    raw, body = chat("leaves", max_tokens=1000, stream=True)
    c = await Client.connect(port)
    c.send(raw)
    got = b""
    while got.count(b"data:") < 5:
        got += await asyncio.wait_for(c.reader.read(65536), 5)
    c.writer.transport.abort()
    await asyncio.wait_for(left.wait(), 10)
    r = await send(port, probe)
    streamed = 5000 - int(r.header("RateLimit-Remaining") or 0) - charged - est(probe_body) - est(body)
    # the content events relayed before the client left (at least the 5 it read), not the 1,000 reserved
    assert 5 <= streamed < 100


async def test_stream_usage_is_invisible_to_the_client(start_gateway, tmp_path: Path) -> None:
    backend = await start_backend(openai_handler(piece=3))
    log_path = tmp_path / "access.log"
    extra = f'access_log {{\n  path = "{log_path}"\n  flush_interval = "50ms"\n}}'
    gw = await start_gateway(limit_config(backend.url, "limit = 100000", "", extra, "ai { stream_usage = true }"))
    port = gateway_port(gw)
    for chunked in (False, True):
        raw, body = chat("m1", max_tokens=None, stream=True, chunked=chunked)
        via_gateway = await send(port, raw)
        direct = await send(backend.port, raw)
        assert via_gateway.status == direct.status == 200
        assert via_gateway.body == direct.body == stream_body("m1", False)
        sent = json.loads(backend.requests[-2].body)  # what the gateway forwarded
        assert sent["stream_options"] == {"include_usage": True}
        assert {k: v for k, v in sent.items() if k != "stream_options"} == json.loads(body)
    # a client that asks for the usage chunk gets it; its body is forwarded byte for byte
    raw, body = chat("m1", max_tokens=None, stream=True, stream_options={"include_usage": True})
    r = await send(port, raw)
    assert r.body == stream_body("m1", True) and backend.requests[-1].body == body
    entries = await log_lines(log_path, 3)
    assert [(e["input_tokens"], e["output_tokens"], e["usage_source"]) for e in entries] == \
        [(PROMPT_TOKENS, len(REPLY), "reported")] * 3


async def test_stream_usage_under_compression(start_gateway) -> None:
    import zlib

    backend = await start_backend(openai_handler(piece=5))
    extra = '''
middlewares "zip" {
  type                 = "compress"
  min_size             = 0
  encodings            = ["gzip"]
  include_event_stream = true
}
'''
    gw = await start_gateway(limit_config(backend.url, "limit = 100000", '"zip"', extra, "ai { stream_usage = true }"))
    raw, _ = chat("m1", max_tokens=None, stream=True, headers="Accept-Encoding: gzip\r\n")
    r = await send(gateway_port(gw), raw)
    assert r.status == 200 and r.header("Content-Encoding") == "gzip"
    assert zlib.decompress(r.body, 47) == stream_body("m1", False)
    assert json.loads(backend.requests[-1].body)["stream_options"] == {"include_usage": True}


# -- Redis ------------------------------------------------------------------------------------------------------

@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def test_two_gateways_on_one_redis_share_a_budget(start_gateway, redis: RedisServer) -> None:
    pytest.importorskip("redis")
    server = UsageServer()
    server.usage["m1"] = (100, 500)
    backend = await start_backend(server.handle)
    keys = f'limit = 1000\n  redis_url = "{redis.url}"'
    first = gateway_port(await start_gateway(limit_config(backend.url, keys)))
    second = gateway_port(await start_gateway(limit_config(backend.url, keys)))
    raw, body = chat(max_tokens=300)
    r = await send(first, raw)
    assert r.status == 200 and r.header("RateLimit-Remaining") == str(1000 - 300 - est(body))
    server.usage["probe"] = (0, 0)
    probe, probe_body = chat("probe", max_tokens=0)  # reserves its input estimate, settles to nothing
    for _ in range(100):  # the first request is settled in the background once its response ended
        r = await send(second, probe)
        if r.header("RateLimit-Remaining") == str(1000 - 600 - est(probe_body)):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"not settled to 600 tokens: {r.header('RateLimit-Remaining')} remaining")
    r = await send(second, raw)  # 600 charged through the first gateway: 300 more fit
    assert r.status == 200 and r.header("RateLimit-Remaining") == str(1000 - 600 - 300 - est(body))
    r = await send(first, raw)
    assert r.status == 429 and r.header("RateLimit-Limit") == "1000"


async def test_redis_failure_follows_failure_mode(start_gateway, redis: RedisServer) -> None:
    pytest.importorskip("redis")
    backend = await start_backend(UsageServer().handle)
    url = redis.url
    redis.stop()
    closed = gateway_port(await start_gateway(limit_config(
        backend.url, f'limit = 1000\n  redis_url = "{url}"\n  failure_mode = "closed"\n  redis_timeout = "200ms"')))
    opened = gateway_port(await start_gateway(limit_config(
        backend.url, f'limit = 1000\n  redis_url = "{url}"\n  redis_timeout = "200ms"')))
    raw, _ = chat()
    r = await send(closed, raw)
    assert r.status == 503 and json.loads(r.body) == {"error": "Rate limiter unavailable"}
    assert r.header("Retry-After") == "1"
    r = await send(opened, raw)
    assert r.status == 200 and r.header("RateLimit-Limit") is None
