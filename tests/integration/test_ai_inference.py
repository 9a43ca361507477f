"""Model-server-aware balancing and queued keep-alive (SPEC §16.5, §16.3 ``queued_keepalive``) through a real
gateway: fake OpenAI-style model servers that export vLLM metrics, and a ``process`` replica that loads for 5 s."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from openai_fake import openai_handler

from support import Backend, Client, gateway_port, parse_head, start_backend

STANDIN = Path(__file__).resolve().parent.parent / "support" / "model_standin.py"

pytestmark = pytest.mark.timeout(60)


class ModelServer:
    """A fake model server: OpenAI chat completions (tests/support/openai_fake.py) and ``GET /metrics`` in vLLM's
    names with the queue it is told to report (``broken``: its metrics endpoint answers 500)."""

    def __init__(self) -> None:
        self.waiting = 0
        self.running = 0
        self.kv = 0.0
        self.broken = False
        self.scrapes = 0
        self.prompts: list[str] = []
        self.backend: Backend | None = None
        self._chat = openai_handler()

    async def start(self) -> ModelServer:
        self.backend = await start_backend(self._handle)
        return self

    @property
    def url(self) -> str:
        assert self.backend is not None
        return self.backend.url

    async def _handle(self, req: Any, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.target == "/metrics":
            self.scrapes += 1
            if self.broken:
                w.write(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                return True
            body = (f"# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
                    f'vllm:num_requests_running{{model_name="m"}} {self.running}\n'
                    f'vllm:kv_cache_usage_perc{{model_name="m"}} {self.kv}\n').encode()
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            return True
        doc = json.loads(req.body)
        self.prompts.append(doc["messages"][-1]["content"])
        return bool(await self._chat(req, r, w))


def inference_config(servers: list[ModelServer], settings: str = "") -> str:
    urls = ", ".join(f'{{ url = "{s.url}" }}' for s in servers)
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "chat" {{
  rule    = "PathPrefix(`/v1`)"
  service = "vllm"
}}
services "vllm" {{
  load_balancer {{
    strategy = "inference"
    servers  = [{urls}]
    inference {{
      scrape_interval = "50ms"
      {settings}
    }}
  }}
}}
'''


def chat(prompt: str, stream: bool = False) -> bytes:
    body = json.dumps({"model": "llama", "stream": stream,
                       "messages": [{"role": "user", "content": prompt}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: m\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def servers(n: int) -> list[ModelServer]:
    return [await ModelServer().start() for _ in range(n)]


async def until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def readings(gw: Any) -> dict[str, float]:
    return {b["url"]: b["model_server"]["waiting"] for b in gw.backends() if "model_server" in b}


async def test_a_backend_reporting_a_queue_of_50_gets_no_new_requests(start_gateway) -> None:
    a, b = await servers(2)
    a.waiting = 50
    gw = await start_gateway(inference_config([a, b]))
    await until(lambda: readings(gw) == {a.url: 50, b.url: 0})
    c = await Client.connect(gateway_port(gw))
    for i in range(20):
        r = await c.request(chat(f"question {i}"))
        assert r.status == 200, r.body
    assert (len(a.prompts), len(b.prompts)) == (0, 20)
    metrics = gw.metrics()
    assert f'gateway_backend_queue_depth{{backend="{a.url}",service="vllm"}} 50.0' in metrics
    assert f'gateway_backend_kv_cache_usage{{backend="{b.url}",service="vllm"}} 0.0' in metrics
    # the queues change places: so does the traffic, at the next scrape
    a.waiting, b.waiting = 0, 50
    await until(lambda: readings(gw) == {a.url: 0, b.url: 50})
    for i in range(10):
        assert (await c.request(chat(f"again {i}"))).status == 200
    assert (len(a.prompts), len(b.prompts)) == (10, 20)
    c.close()


async def test_same_prefix_prompts_land_on_one_backend_at_equal_load(start_gateway) -> None:
    pool = await servers(3)
    gw = await start_gateway(inference_config(pool, "prefix_affinity_bytes = 64"))
    await until(lambda: len(readings(gw)) == 3)
    c = await Client.connect(gateway_port(gw))
    documents = [f"Summarise document {d}: " + "lorem ipsum " * 20 for d in range(8)]
    for round_ in range(4):
        for d, doc in enumerate(documents):  # same first 64 bytes, a different question each round
            assert (await c.request(chat(f"{doc} question {round_}-{d}"))).status == 200
    c.close()
    for d, doc in enumerate(documents):
        holders = [i for i, s in enumerate(pool) if any(p.startswith(doc) for p in s.prompts)]
        assert len(holders) == 1, (d, holders)
    assert len({i for i, s in enumerate(pool) if s.prompts}) >= 2  # different prefixes still spread
    assert 'gateway_inference_prefix_hits_total{service="vllm"} 32.0' in gw.metrics()


async def test_stale_metrics_are_ignored(start_gateway) -> None:
    a, b = await servers(2)
    a.waiting = 50
    gw = await start_gateway(inference_config([a, b], 'stale_after = "300ms"\n      prefix_affinity_bytes = 0'))
    await until(lambda: readings(gw) == {a.url: 50, b.url: 0})
    c = await Client.connect(gateway_port(gw))
    for i in range(4):
        assert (await c.request(chat(f"q{i}"))).status == 200
    assert len(a.prompts) == 0
    a.broken = True  # its last reading (a queue of 50) ages: after stale_after it no longer counts
    seen = a.scrapes
    await until(lambda: a.scrapes > seen)
    await asyncio.sleep(0.5)
    for i in range(6):
        assert (await c.request(chat(f"r{i}"))).status == 200
    assert len(a.prompts) >= 2, (len(a.prompts), len(b.prompts))
    c.close()


def scaled(args: str, keepalive: str, scaling: str = "") -> str:
    argv = ", ".join(json.dumps(a) for a in [sys.executable, str(STANDIN), "--port", "{port}", *args.split()])
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
  ai {{ queued_keepalive = "{keepalive}" }}
}}
services "llm" {{
  scaling {{
    buffer_enabled = true
    executor       = "process"
    {scaling}
    process {{
      command      = [{argv}]
      health_path  = "/health"
      port_range   = "23460-23499"
      stop_timeout = "2s"
    }}
  }}
}}
'''


async def read_stream(c: Client, timeout: float) -> tuple[str, dict[str, str], list[tuple[float, bytes]]]:
    """The response head and its chunks, each with the time it arrived, until the last chunk."""
    t0 = time.monotonic()
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), timeout)
    first, headers = parse_head(head)
    chunks: list[tuple[float, bytes]] = []
    while True:
        size = int((await asyncio.wait_for(c.reader.readuntil(b"\r\n"), timeout)).split(b";")[0], 16)
        data = await c.reader.readexactly(size + 2)
        if size == 0:
            return first, {k.lower(): v for k, v in headers}, chunks
        chunks.append((time.monotonic() - t0, data[:-2]))


async def test_a_stream_held_through_a_5s_cold_start_gets_queued_comments_then_the_model_events(
        start_gateway) -> None:
    gw = await start_gateway(scaled("--startup-delay 5 --tokens 3", "1s"))
    c = await Client.connect(gateway_port(gw))
    c.send(chat("hello", stream=True))
    first, headers, chunks = await read_stream(c, 30)
    assert first.startswith("HTTP/1.1 200")
    assert headers["content-type"] == "text/event-stream" and headers["x-a3s-cold-start"] == "1"
    body = b"".join(data for _, data in chunks)
    comments = [line for line in body.split(b"\n") if line.startswith(b": queued")]
    assert len(comments) >= 3 and comments[0] == b": queued 1s", comments  # one a second, while the model loads
    events = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert [json.loads(e[6:])["token"] for e in events[:-1]] == [0, 1, 2] and events[-1] == b"data: [DONE]"
    assert body.index(b": queued") < body.index(b"data: ")  # comments first, then the model's stream
    arrived = [t for t, data in chunks if data.startswith(b": queued")]
    assert arrived[0] == pytest.approx(1.0, abs=0.6) and arrived[-1] > 3.0
    # the connection stays usable: the replica is ready now, the next stream is the backend's own response
    c.send(chat("again", stream=True))
    first, headers, chunks = await read_stream(c, 10)
    assert first.startswith("HTTP/1.1 200") and "x-a3s-cold-start" not in headers
    assert b": queued" not in b"".join(d for _, d in chunks)
    c.close()


async def test_a_queued_stream_that_fails_ends_with_one_sse_error_event(start_gateway) -> None:
    gw = await start_gateway(scaled("--never-ready", "300ms", "buffer_timeout_secs = 2"))
    c = await Client.connect(gateway_port(gw))
    c.send(chat("hello", stream=True))
    first, headers, chunks = await read_stream(c, 10)
    assert first.startswith("HTTP/1.1 200") and headers["x-a3s-cold-start"] == "1"
    body = b"".join(data for _, data in chunks)
    assert body.count(b": queued") >= 3
    assert body.endswith(b'event: error\ndata: {"error":"Backend scale-up timed out"}\n\n'), body
    assert body.count(b"event: error") == 1
    c.close()


async def test_a_queued_stream_answered_with_an_error_status_ends_with_an_sse_error(start_gateway) -> None:
    gw = await start_gateway(scaled("--startup-delay 1 --status 503", "300ms"))
    c = await Client.connect(gateway_port(gw))
    c.send(chat("hello", stream=True))
    first, headers, chunks = await read_stream(c, 20)
    assert first.startswith("HTTP/1.1 200") and headers["content-type"] == "text/event-stream"
    body = b"".join(data for _, data in chunks)
    assert b": queued" in body
    assert body.endswith(b'event: error\ndata: {"error":"Upstream answered 503"}\n\n'), body
    assert b"status 503" not in body  # the backend's own error body is not relayed
    c.close()


async def test_a_reload_replaces_the_scraper_and_keeps_the_readings(start_gateway) -> None:
    from a3s_gateway import GatewayConfig

    a, b = await servers(2)
    a.waiting = 50
    gw = await start_gateway(inference_config([a, b]))
    await until(lambda: readings(gw) == {a.url: 50, b.url: 0})
    old = gw.runtime.services["vllm"].scraper
    await gw.reload(GatewayConfig.from_hcl(inference_config([a, b], "max_queue = 10")))
    new = gw.runtime.services["vllm"].scraper
    assert new is not old and readings(gw) == {a.url: 50, b.url: 0}  # the backends keep their last reading
    await until(lambda: old._task is None)  # the retired scraper stopped
    seen = a.scrapes
    a.waiting = 20  # above the new max_queue: still no traffic while b reports 0
    await until(lambda: a.scrapes > seen + 2 and readings(gw)[a.url] == 20)
    c = await Client.connect(gateway_port(gw))
    for i in range(5):
        assert (await c.request(chat(f"after reload {i}"))).status == 200
    assert len(a.prompts) == 0 and len(b.prompts) == 5
    c.close()


async def test_a_queued_stream_on_http2_gets_its_comments_and_error_event(start_gateway) -> None:
    """queued_keepalive on an HTTP/2 stream: the gateway's 200 head, the comments and the error event go out as
    HEADERS and DATA (issue 17: no HTTP/1.1 text on a stream), the stream ending after the event."""
    from h2frames import H2Conn, data, request_fields

    gw = await start_gateway(scaled("--never-ready", "300ms", "buffer_timeout_secs = 2"))
    body = json.dumps({"model": "llama", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    fields = request_fields("/v1/chat/completions", "POST", "m",
                            [("content-type", "application/json"), ("content-length", str(len(body)))])

    def run() -> Any:
        with H2Conn(gateway_port(gw), timeout=10) as conn:
            conn.send(conn.headers(1, fields, end_stream=False), data(1, body, True))
            return conn.response(1, 10)

    resp = await asyncio.to_thread(run)
    assert resp.status == 200 and resp.reset is None
    assert resp.header(b"content-type") == b"text/event-stream" and resp.header(b"x-a3s-cold-start") == b"1"
    assert resp.body.count(b": queued") >= 3 and resp.body.count(b"event: error") == 1
    assert resp.body.endswith(b'event: error\ndata: {"error":"Backend scale-up timed out"}\n\n'), resp.body
