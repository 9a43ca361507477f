"""CPU cost of LLM request inspection and usage accounting (issue 21, SPEC §16.1, §16.2), all in one run.

    .venv/bin/python bench/llm_cost.py [--rounds 2000] [--sse-rounds 20] [--repeat 5]

Whole exchanges through the proxy's real connection objects on fake transports (as bench/test_bench_exchange.py:
no sockets, so the figure is the gateway's own CPU per request), on one configuration with a plain router and a
``Model(...)`` router to the same backend:

1. a small GET on the plain router (the plain path: inspection must cost nothing there; compare this line between
   two builds, e.g. before/after a change, with ``PYTHONPATH=<other tree>/src``);
2. a 4 KiB JSON POST with a JSON response carrying ``usage``, on the plain router and on the ``Model`` router (the
   body is held and its model read, the response's usage parsed): µs/request added (issue target ≤ 15 µs); the
   same POST to an ``inference`` service (inspection plus the prompt-prefix hash and the scored pick, §16.5);
3. a 1,000-event SSE stream (one event per read, as a model streams it, then the usage chunk) on both routers:
   CPU with usage accounting / without (target ≤ 1.05×); the same with events that also differ outside their text
   (OpenAI's per-chunk ``obfuscation`` member: the meter's per-stream template never matches, every event is
   scanned).

Each figure is the minimum over ``--repeat`` runs of CPU time (``time.process_time``) per request. The build that
runs is printed (compiled or pure); the numbers of a pure build are not the product's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_bench_exchange import FakeTransport

from a3s_gateway._compat import implementations
from a3s_gateway.config import compile as compile_config
from a3s_gateway.config.model import GatewayConfig
from a3s_gateway.proxy.http1 import HttpConnection
from a3s_gateway.proxy.server import HttpServer
from a3s_gateway.proxy.upstream import UpstreamConnection
from a3s_gateway.runtime import State

CONFIG = """
entrypoints "web" { address = "127.0.0.1:8080" }
routers "plain" {
  rule    = "PathPrefix(`/plain`)"
  service = "backend"
}
routers "ai" {
  rule    = "PathPrefix(`/v1`) && Model(`llama-3-8b`)"
  service = "backend"
}
routers "inference" {
  rule    = "PathPrefix(`/inference`)"
  service = "inference"
}
services "backend" {
  load_balancer { servers = [{ url = "http://127.0.0.1:8081" }] }
}
services "inference" {
  load_balancer {
    strategy = "inference"
    servers  = [{ url = "http://127.0.0.1:8082" }]
  }
}
"""

GET = b"GET /plain/small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
SMALL = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 128\r\n"
         b"Connection: keep-alive\r\n\r\n" + b"x" * 128)


def chat_body(size: int, stream: bool) -> bytes:
    doc = {"model": "llama-3-8b", "stream": stream, "max_tokens": 256,
           "messages": [{"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": ""}]}
    pad = size - len(json.dumps(doc).encode())
    doc["messages"][1]["content"] = "x" * max(pad, 0)  # type: ignore[index]
    return json.dumps(doc).encode()


def post(path: bytes, body: bytes) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


JSON_BODY = json.dumps({"id": "c", "object": "chat.completion", "model": "llama-3-8b",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there!"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1000, "completion_tokens": 3, "total_tokens": 1003}}).encode()
JSON_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(JSON_BODY)
                 + JSON_BODY)


def sse_pieces(events: int, varying: bool = False) -> list[bytes]:
    """The SSE response as the backend's reads deliver it: the head, one chunk per event, the usage chunk, end.
    ``varying``: each event also carries an ``obfuscation`` member of its own (as OpenAI's do)."""
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"]
    for i in range(events):
        extra = b',"obfuscation":"%s"' % b"Zq8xW3"[: i % 6 + 1] if varying else b""
        event = b'data: {"id":"c","object":"chat.completion.chunk","model":"llama-3-8b","choices":[{"index":0,' \
                b'"delta":{"content":" tok%d"},"finish_reason":null}]%s}\n\n' % (i, extra)
        pieces.append(b"%x\r\n%s\r\n" % (len(event), event))
    usage = (b'data: {"id":"c","object":"chat.completion.chunk","model":"llama-3-8b","choices":[],'
             b'"usage":{"prompt_tokens":1000,"completion_tokens":%d,"total_tokens":%d}}\n\n' % (events, events + 1000))
    pieces.append(b"%x\r\n%s\r\n" % (len(usage), usage))
    done = b"data: [DONE]\n\n"
    pieces.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return pieces


class Harness:
    """One client connection and one pooled upstream connection on fake transports, reused for every request."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        config = GatewayConfig.from_hcl(CONFIG)
        state = State()
        runtime = compile_config.build_runtime(config, self.loop, state)
        state.carry(None, runtime)
        self.runtime = runtime
        server = HttpServer(self.loop, runtime.entrypoints["web"], "127.0.0.1", 8080)
        self.client = HttpConnection(server)
        self.client_tr = FakeTransport()
        self.client.connection_made(self.client_tr)
        self.pools = [next(iter(runtime.services[name].pools.values())) for name in ("backend", "inference")]
        self.upstreams = [UpstreamConnection(pool) for pool in self.pools]
        self.upstream_trs = [FakeTransport() for _ in self.pools]
        for pool, up, tr in zip(self.pools, self.upstreams, self.upstream_trs, strict=True):
            up.connection_made(tr)
            pool.idle.append(up)

    def exchange(self, request: bytes, response: list[bytes], service: int = 0) -> None:
        if len(self.client_tr.out) > 256:
            self.client_tr.out.clear()
            for tr in self.upstream_trs:
                tr.out.clear()
        self.client.data_received(request)
        upstream = self.upstreams[service]
        for piece in response:
            upstream.data_received(piece)

    def check(self, status: bytes = b"HTTP/1.1 200 OK") -> None:
        heads = [o for o in self.client_tr.out if o.startswith(b"HTTP/1.1")]
        assert heads and heads[-1].startswith(status), heads[-1:]
        for pool, up in zip(self.pools, self.upstreams, strict=True):
            assert pool.idle == [up]
        assert not self.client_tr.closing
        assert self.client.ex.stats is None


def measure(run: Callable[[], None], rounds: int, repeat: int) -> float:
    """Minimum over ``repeat`` runs of CPU seconds per call."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for _ in range(rounds):
            run()
        best = min(best, (time.process_time() - start) / rounds)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000, help="requests per run (GET, 4 KiB POST)")
    ap.add_argument("--sse-rounds", type=int, default=20, help="1,000-event streams per run")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    compiled = all(c for _, _, c in implementations())
    print(f"build: {'compiled' if compiled else 'PURE (interpreted: not the product numbers)'}; "
          f"python {sys.version.split()[0]}")
    h = Harness()
    small = [SMALL]
    body = chat_body(4096, False)
    plain_post, ai_post = post(b"/plain/v1/chat/completions", body), post(b"/v1/chat/completions", body)
    stream_body = chat_body(4096, True)
    plain_sse, ai_sse = post(b"/plain/v1/chat/completions", stream_body), post(b"/v1/chat/completions", stream_body)
    sse = sse_pieces(1000)
    sse_varying = sse_pieces(1000, varying=True)
    inference_post = post(b"/inference/v1/chat/completions", body)
    for request, response in ((GET, small), (plain_post, [JSON_RESPONSE]), (ai_post, [JSON_RESPONSE]),
                              (plain_sse, sse), (ai_sse, sse), (plain_sse, sse_varying), (ai_sse, sse_varying)):
        h.exchange(request, response)  # warm up, and prove each exchange completes
        h.check()
    h.exchange(inference_post, [JSON_RESPONSE], 1)
    h.check()
    get_us = measure(lambda: h.exchange(GET, small), a.rounds, a.repeat) * 1e6
    plain_us = measure(lambda: h.exchange(plain_post, [JSON_RESPONSE]), a.rounds, a.repeat) * 1e6
    ai_us = measure(lambda: h.exchange(ai_post, [JSON_RESPONSE]), a.rounds, a.repeat) * 1e6
    inference_us = measure(lambda: h.exchange(inference_post, [JSON_RESPONSE], 1), a.rounds, a.repeat) * 1e6
    sse_plain = measure(lambda: h.exchange(plain_sse, sse), a.sse_rounds, a.repeat) * 1e6
    sse_ai = measure(lambda: h.exchange(ai_sse, sse), a.sse_rounds, a.repeat) * 1e6
    varying_plain = measure(lambda: h.exchange(plain_sse, sse_varying), a.sse_rounds, a.repeat) * 1e6
    varying_ai = measure(lambda: h.exchange(ai_sse, sse_varying), a.sse_rounds, a.repeat) * 1e6
    h.check()
    route = next(t for t in (r.target for r in h.runtime.entrypoints["web"].router.routes) if t.router == "ai")
    ms = route.stats.models["llama-3-8b"]
    assert ms.output_reported >= 1000, "usage of the streams was not accounted"
    print(f"small GET, plain router:               {get_us:8.2f} µs/request")
    print(f"4 KiB JSON POST, plain router:         {plain_us:8.2f} µs/request")
    print(f"4 KiB JSON POST, Model router:         {ai_us:8.2f} µs/request  (+{ai_us - plain_us:.2f} µs; "
          "target ≤ 15 µs)")
    print(f"4 KiB JSON POST, inference strategy:   {inference_us:8.2f} µs/request  (+{inference_us - plain_us:.2f} µs:"
          " inspection, usage, prompt-prefix hash, scored pick)")
    print(f"1,000-event SSE stream, no accounting: {sse_plain:8.0f} µs/stream")
    print(f"1,000-event SSE stream, accounted:     {sse_ai:8.0f} µs/stream  ({sse_ai / sse_plain:.3f}×; "
          "target ≤ 1.05×)")
    print(f"the same, events differing outside their text: {varying_plain:6.0f} → {varying_ai:.0f} µs/stream "
          f"({varying_ai / varying_plain:.3f}×)")
    h.loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
