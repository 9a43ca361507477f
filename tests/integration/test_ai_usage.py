"""Token usage accounting end to end (SPEC §16.2, §16.6, §11.3): a fake OpenAI-style server answering JSON and SSE
streams sent one byte per chunk; the client gets every byte unchanged, and the access log and /metrics show the
usage counted exactly (reported, or estimated when the stream carries none)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from openai_fake import PROMPT_TOKENS, REPLY, json_body, openai_handler, stream_body
from test_observability import ADMIN, sample, scrape

from support import Client, gateway_port, start_backend

pytestmark = pytest.mark.timeout(60)


def llm_config(backend: str, plain: str, log_path: Path) -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/v1`) && ModelRegexp(`^llama-`)"
  service = "vllm"
}}
routers "plain" {{
  rule    = "PathPrefix(`/`)"
  service = "plain"
}}
services "vllm" {{ load_balancer {{ servers = [{{ url = "{backend}" }}] }} }}
services "plain" {{ load_balancer {{ servers = [{{ url = "{plain}" }}] }} }}
access_log {{
  path = "{log_path}"
  flush_interval = "50ms"
}}
'''


def post(doc: dict[str, Any], ctype: bytes = b"application/json") -> tuple[bytes, bytes]:
    body = json.dumps(doc).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (ctype, len(body)) + body), body


async def log_lines(path: Path, n: int) -> list[dict[str, Any]]:
    for _ in range(500):
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n:
            return [json.loads(line) for line in lines]
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} access-log lines")


async def test_usage_from_json_and_one_byte_sse_in_access_log_and_metrics(start_gateway, tmp_path) -> None:
    backend = await start_backend(openai_handler(piece=1, gap=0.005))
    plain = await start_backend(openai_handler(piece=1))
    log_path = tmp_path / "access.log"
    gw = await start_gateway(llm_config(backend.url, plain.url, log_path), admin=ADMIN)
    c = await Client.connect(gateway_port(gw))

    msgs = [{"role": "user", "content": "Say hello to me please"}]
    # 1. JSON response: usage reported
    raw, _ = post({"model": "llama-3-8b", "messages": msgs})
    r = await c.request(raw)
    assert r.status == 200 and r.body == json_body("llama-3-8b")
    # 2. SSE with the usage chunk, every byte in its own chunk: reported usage, the stream relayed unchanged
    raw, _ = post({"model": "llama-3-8b", "messages": msgs, "stream": True,
                   "stream_options": {"include_usage": True}})
    r = await c.request(raw)
    assert r.status == 200 and r.body == stream_body("llama-3-8b", True)
    # 3. SSE without usage: estimated (one token per content event, input = ceil(body bytes / 4))
    raw, body = post({"model": "llama-3-70b", "messages": msgs, "stream": True})
    r = await c.request(raw)
    assert r.status == 200 and r.body == stream_body("llama-3-70b", False)
    # 4. not inspected (not application/json): no model, no usage, nothing per model
    raw, _ = post({"model": "gpt-4o", "messages": msgs, "stream": True, "stream_options": {"include_usage": True}},
                  b"text/plain")
    r = await c.request(raw)
    assert r.status == 200 and r.body == stream_body("gpt-4o", True)
    c.close()

    entries = await log_lines(log_path, 4)
    usage = [(e["router"], e["model"], e["input_tokens"], e["output_tokens"], e["usage_source"]) for e in entries]
    assert usage == [
        ("llm", "llama-3-8b", PROMPT_TOKENS, len(REPLY), "reported"),
        ("llm", "llama-3-8b", PROMPT_TOKENS, len(REPLY), "reported"),
        ("llm", "llama-3-70b", (len(body) + 3) // 4, len(REPLY), "estimated"),
        ("plain", None, None, None, None),
    ]

    fam = await scrape(gw)
    labels = {"router": "llm", "service": "vllm"}
    tokens = "gateway_llm_tokens_total"
    assert sample(fam, "gateway_llm_tokens", tokens, **labels, model="llama-3-8b", kind="input",
                  source="reported") == 2 * PROMPT_TOKENS
    assert sample(fam, "gateway_llm_tokens", tokens, **labels, model="llama-3-8b", kind="output",
                  source="reported") == 2 * len(REPLY)
    assert sample(fam, "gateway_llm_tokens", tokens, **labels, model="llama-3-70b", kind="output",
                  source="estimated") == len(REPLY)
    assert sample(fam, "gateway_llm_tokens", tokens, **labels, model="llama-3-70b", kind="input",
                  source="estimated") == (len(body) + 3) // 4
    assert sample(fam, "gateway_llm_requests", "gateway_llm_requests_total", **labels, model="llama-3-8b",
                  code="200") == 2
    assert not any(s.labels.get("router") == "plain" for f in fam.values() if f.name.startswith("gateway_llm_")
                   for s in f.samples)
    # stream timing: one TTFT per stream, len(REPLY) - 1 gaps per stream, one rate per stream
    for model in ("llama-3-8b", "llama-3-70b"):
        assert sample(fam, "gateway_llm_time_to_first_token_seconds",
                      "gateway_llm_time_to_first_token_seconds_count", **labels, model=model) == 1
        assert sample(fam, "gateway_llm_inter_token_seconds", "gateway_llm_inter_token_seconds_count", **labels,
                      model=model) == len(REPLY) - 1
        assert sample(fam, "gateway_llm_output_tokens_per_second", "gateway_llm_output_tokens_per_second_count",
                      **labels, model=model) == 1
