"""Routing by the request body's model (SPEC §16.1, §4.2 ``Model``/``ModelRegexp``, §3.1 ``ai_inspect_limit``):
raw bytes on the client socket → which backend got the request and the exact body it received."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_chunked_requests import RawBackend, decode

from support import Backend, Client, gateway_port, start_backend

pytestmark = pytest.mark.timeout(60)


def two_models(a: str, b: str, fallback: str | None = None, entry: str = "") -> str:
    text = f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {entry}
}}
routers "llama" {{
  rule    = "PathPrefix(`/v1`) && Model(`llama-3-8b`, `llama-3-70b`)"
  service = "a"
}}
routers "qwen" {{
  rule    = "PathPrefix(`/v1`) && ModelRegexp(`^qwen-`)"
  service = "b"
}}
services "a" {{ load_balancer {{ servers = [{{ url = "{a}" }}] }} }}
services "b" {{ load_balancer {{ servers = [{{ url = "{b}" }}] }} }}
'''
    if fallback is not None:
        text += f'''
routers "plain" {{
  rule    = "PathPrefix(`/`)"
  service = "plain"
}}
services "plain" {{ load_balancer {{ servers = [{{ url = "{fallback}" }}] }} }}
'''
    return text


def post(body: bytes, path: str = "/v1/chat/completions", ctype: str = "application/json",
         extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}"
            "\r\n").encode() + body


def chunked_head(path: str = "/v1/chat/completions") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json; charset=utf-8\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()


def chat(model: object, pad: int = 0) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi " + "x" * pad}],
                       "stream": False}).encode()


async def backends(n: int) -> list[Backend]:
    return [await start_backend() for _ in range(n)]


async def test_two_models_two_services_content_length_body_unchanged(start_gateway) -> None:
    a, b = await backends(2)
    gw = await start_gateway(two_models(a.url, b.url))
    c = await Client.connect(gateway_port(gw))
    for model, backend in (("llama-3-70b", a), ("qwen-2.5-7b", b), ("llama-3-8b", a)):
        body = chat(model)
        r = await c.request(post(body))
        assert r.status == 200, r.body
        got = backend.requests[-1]
        assert got.body == body and got.header("content-length") == str(len(body))
    assert len(a.requests) == 2 and len(b.requests) == 1
    # a model no rule names: no router matches
    r = await c.request(post(chat("mistral-7b")))
    assert r.status == 404 and json.loads(r.body) == {"error": "No route matched"}


async def test_chunked_body_in_pieces_routed_and_unchanged(start_gateway) -> None:
    a, b = await backends(2)
    gw = await start_gateway(two_models(a.url, b.url))
    c = await Client.connect(gateway_port(gw))
    body = chat("qwen-2.5-7b", pad=300)
    c.send(chunked_head() + b"%x;ext=1\r\n%s\r\n" % (10, body[:10]))
    await asyncio.sleep(0.05)
    c.send(b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (body[10:11], body[11:200], body[200:])))
    c.send(b"0\r\n\r\n")
    r = await c.response()
    assert r.status == 200
    assert not a.requests and b.requests[0].body == body
    assert b.requests[0].header("transfer-encoding") == "chunked"


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_larger_than_the_limit_routed_on_its_start_and_streamed_whole(start_gateway, chunked) -> None:
    a = await RawBackend().start()
    b = await RawBackend().start()
    gw = await start_gateway(two_models(a.url, b.url, entry="ai_inspect_limit = 1024"))
    c = await Client.connect(gateway_port(gw))
    # "model" after a nested member, inside the first 1024 bytes; the body goes on for 300 KiB
    body = (b'{"messages": [{"role": "user", "content": "a \\" } ] {"}], "model": "llama-3-8b", "prompt": "'
            + bytes(range(48, 58)) * 30000 + b'"}')
    if chunked:
        pieces = [body[i : i + 4000] for i in range(0, len(body), 4000)]
        r = await asyncio.wait_for(Client.request(c, chunked_head() + b"".join(
            b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"), 10)
        assert r.status == 200
        assert decode(a.body()) == (body, b"\r\n")
    else:
        c.send(post(body))  # (this backend answers chunked requests only: the bytes it received are the check)
        await a.until(lambda: bool(a.conns) and len(a.conns[0]) >= len(body))
        assert a.body() == body and b"\r\nContent-Length: %d" % len(body) in a.head()
    assert not b.conns


async def test_no_model_bad_json_or_other_content_type_is_routed_without_a_model(start_gateway) -> None:
    a, b, plain = await backends(3)
    gw = await start_gateway(two_models(a.url, b.url, fallback=plain.url))
    c = await Client.connect(gateway_port(gw))
    bodies = [
        b'{"messages": []}',  # no model
        b'{"model": 7}',  # not a string
        b'{"model": "llama-3-8b"',  # not JSON (complete body, cut short)
        b'["llama-3-8b"]',  # not an object
    ]
    for body in bodies:
        r = await c.request(post(body))
        assert r.status == 200 and plain.requests[-1].body == body
    # not application/json, not POST: never inspected
    r = await c.request(post(chat("llama-3-8b"), ctype="text/plain"))
    assert r.status == 200 and plain.requests[-1].body == chat("llama-3-8b")
    r = await c.request(b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r.status == 200 and plain.requests[-1].method == "GET"
    assert not a.requests and not b.requests
    r = await c.request(post(chat("llama-3-8b"), ctype="application/JSON ; charset=utf-8"))
    assert r.status == 200 and a.requests[0].body == chat("llama-3-8b")


async def test_plain_router_on_the_same_entrypoint_streams_without_holding(start_gateway) -> None:
    a = await RawBackend(early=True).start()
    plain = await RawBackend(early=True).start()
    gw = await start_gateway(two_models(a.url, a.url, fallback=plain.url))
    port = gateway_port(gw)
    c = await Client.connect(port)
    # a JSON POST that no Model rule could match (path /upload): its first bytes reach the backend at once
    c.send(post(b"x" * 100_000, path="/upload")[: -100_000 + 10])
    await plain.until(lambda: bool(plain.conns) and plain.body(0) == b"x" * 10)
    c.close()
    # a JSON POST the Model rules need: nothing reaches a backend until the body's end
    c = await Client.connect(port)
    body = chat("llama-3-8b")
    c.send(post(body)[:-5])
    await asyncio.sleep(0.3)
    assert not a.conns and len(plain.conns) == 1
    c.send(body[-5:])
    await a.until(lambda: bool(a.conns) and a.body(0) == body)
    c.close()


async def test_body_gap_while_inspecting_is_a_408(start_gateway) -> None:
    a, b = await backends(2)
    gw = await start_gateway(two_models(a.url, b.url, entry='idle_timeout = "500ms"'))
    c = await Client.connect(gateway_port(gw))
    c.send(post(chat("llama-3-8b"))[:-3])
    r = await asyncio.wait_for(c.response(), 5)
    assert r.status == 408 and await c.closed()
    assert not a.requests and not b.requests


async def test_expect_continue_is_answered_before_the_body_is_read(start_gateway) -> None:
    a, b = await backends(2)
    gw = await start_gateway(two_models(a.url, b.url))
    c = await Client.connect(gateway_port(gw))
    body = chat("qwen-1")
    c.send(post(body, extra="Expect: 100-continue\r\n")[: -len(body)])
    interim = await c.response()
    assert interim.status == 100
    c.send(body)
    r = await c.response()
    assert r.status == 200 and b.requests[0].body == body and not a.requests
