"""Middlewares through a real gateway and backend (SPEC §6): status, headers and body on the wire."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import time
import zlib

import pytest
from support import Client, Request, gateway_port, ok, start_backend


def gateway_config(backends: list[str], middlewares: str, chain: list[str], rule: str = "PathPrefix(`/`)") -> str:
    servers = ", ".join(f'{{ url = "{u}" }}' for u in backends)
    names = ", ".join(f'"{n}"' for n in chain)
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule        = "{rule}"
  service     = "s"
  middlewares = [{names}]
}}
services "s" {{ load_balancer {{ servers = [{servers}] }} }}
{middlewares}
'''


async def get(port: int, raw: bytes, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
    c = await Client.connect(port)
    try:
        r = await c.request(raw, head_request)
    finally:
        c.close()
    return r.status, {k.lower(): v for k, v in r.headers}, r.body


CORS_AND_KEY = '''
middlewares "cors" {
  type            = "cors"
  allowed_origins = ["https://app.example", "https://*.tenant.example"]
  expose_headers  = ["X-Trace"]
}
middlewares "key" {
  type = "api-key"
  keys = ["k-1", "k-2"]
  strip_header = true
}
'''


async def test_auth_reply_passes_the_response_phase_of_earlier_middlewares(start_gateway) -> None:
    backend = await start_backend()
    gw = await start_gateway(gateway_config([backend.url], CORS_AND_KEY, ["cors", "key"]))
    port = gateway_port(gw)
    status, headers, body = await get(port, b"GET /x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n\r\n")
    assert status == 401 and json.loads(body) == {"error": "Invalid or missing API key"}
    assert headers["access-control-allow-origin"] == "https://app.example" and "origin" in headers["vary"].lower()
    assert backend.requests == []
    status, headers, body = await get(
        port, b"GET /x HTTP/1.1\r\nHost: a\r\nOrigin: https://a.b.tenant.example\r\nX-API-Key: k-2\r\n\r\n")
    assert status == 200 and body == b"hello from backend"
    assert headers["access-control-allow-origin"] == "https://a.b.tenant.example"
    assert headers["access-control-expose-headers"] == "X-Trace"
    assert backend.requests[0].header("x-api-key") is None  # strip_header
    # preflight: answered by the gateway, never forwarded
    status, headers, _ = await get(port, b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://app.example\r\n"
                                         b"Access-Control-Request-Method: POST\r\n\r\n")
    assert status == 204 and headers["access-control-allow-methods"] == "GET, POST, PUT, DELETE, OPTIONS"
    status, _, body = await get(port, b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nOrigin: https://evil.example\r\n"
                                      b"Access-Control-Request-Method: POST\r\n\r\n")
    assert status == 403 and json.loads(body) == {"error": "CORS origin not allowed"}
    assert len(backend.requests) == 1


async def test_headers_and_strip_prefix_change_the_upstream_request(start_gateway) -> None:
    backend = await start_backend()
    mws = '''
middlewares "strip" {
  type = "strip-prefix"
  prefixes = ["/api", "/v1"]
}
middlewares "hdr" {
  type = "headers"
  request_headers  = { "X-Env" = "prod", "X-Drop" = "" }
  response_headers = { "X-Served-By" = "a3s", "Server" = "" }
}
'''
    gw = await start_gateway(gateway_config([backend.url], mws, ["strip", "hdr"]))
    status, headers, _ = await get(gateway_port(gw), b"GET /apiv2/items?q=1 HTTP/1.1\r\nHost: a\r\nX-Drop: 1\r\n"
                                                     b"x-env: dev\r\n\r\n")
    assert status == 200 and headers["x-served-by"] == "a3s"
    req = backend.requests[0]
    assert req.target == "/v2/items?q=1" and req.header("x-forwarded-prefix") == "/api"
    assert req.header("x-env") == "prod" and req.header("x-drop") is None
    assert [n.lower() for n in req.header_names()].count("x-env") == 1


async def test_rate_limit_429_with_headers(start_gateway) -> None:
    backend = await start_backend()
    mws = 'middlewares "rl" {\n  type = "rate-limit"\n  rate = 1\n  period = "10s"\n  burst = 2\n}\n'
    gw = await start_gateway(gateway_config([backend.url], mws, ["rl"]), admin="127.0.0.1:0")
    port = gateway_port(gw)
    first = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert first[0] == 200 and first[1]["ratelimit-limit"] == "2" and first[1]["ratelimit-remaining"] == "1"
    assert (await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200
    status, headers, body = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 429 and json.loads(body) == {"error": "Rate limit exceeded"}
    assert headers["ratelimit-remaining"] == "0" and 1 <= int(headers["retry-after"]) <= 10
    assert len(backend.requests) == 2
    text = gw.metrics()
    assert 'gateway_ratelimit_rejections_total{middleware="rl",router="r"} 1.0' in text
    assert 'gateway_requests_total{code="429",method="GET",router="r",service="s"} 1.0' in text


async def test_ip_allow_forbids(start_gateway) -> None:
    backend = await start_backend()
    mws = 'middlewares "ips" {\n  type = "ip-allow"\n  allowed_ips = ["10.0.0.0/8", "::1"]\n}\n'
    gw = await start_gateway(gateway_config([backend.url], mws, ["ips"]))
    status, _, body = await get(gateway_port(gw), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 403 and json.loads(body) == {"error": "Forbidden"} and backend.requests == []


async def test_body_limit_content_length_and_chunked(start_gateway) -> None:
    async def slurp(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(ok(b"%d" % len(req.body)))
        return True

    backend = await start_backend(slurp)
    mws = 'middlewares "lim" {\n  type = "body-limit"\n  max_body_bytes = 10\n}\n'
    gw = await start_gateway(gateway_config([backend.url], mws, ["lim"]))
    port = gateway_port(gw)
    c = await Client.connect(port)
    r = await c.request(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    assert r.status == 413 and json.loads(r.body) == {"error": "Request body too large", "max_bytes": 10}
    assert r.header("connection") == "close" and await c.closed()
    assert backend.connections == 0  # rejected before any upstream connection (and without 100 Continue)
    assert (await get(port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789"))[2] == b"10"
    c = await Client.connect(port)
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
    await asyncio.sleep(0.1)
    r = await c.request(b"6\r\nghijkl\r\n0\r\n\r\n")
    assert r.status == 413 and await c.closed()


async def test_retry_switches_backend_on_503_and_connect_failure(start_gateway) -> None:
    async def busy(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        return True

    bad = await start_backend(busy)
    good = await start_backend()
    mws = 'middlewares "retry" {\n  type = "retry"\n  max_retries = 2\n  retry_interval_ms = 10\n}\n'
    gw = await start_gateway(gateway_config([bad.url, good.url], mws, ["retry"]), admin="127.0.0.1:0")
    port = gateway_port(gw)
    for _ in range(4):  # round-robin: each request tries the busy backend first, then the other one
        status, _, body = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert status == 200 and body == b"hello from backend"
    assert len(bad.requests) == 4 and len(good.requests) == 4
    assert 'gateway_retries_total{router="r",service="s"} 4.0' in gw.metrics()
    # a POST is not repeated after a 503? It is: 503 means the backend declined it unprocessed (SPEC §6.11)
    status, _, _ = await get(port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    assert status == 200 and good.requests[-1].body == b"hi"


async def test_retry_on_refused_connection_and_exhaustion(start_gateway) -> None:
    good = await start_backend()
    closed = await start_backend()
    await closed.stop()  # nothing listens there any more: connection refused
    mws = 'middlewares "retry" {\n  type = "retry"\n  max_retries = 3\n  retry_interval_ms = 5\n}\n'
    gw = await start_gateway(gateway_config([closed.url, good.url], mws, ["retry"]))
    for _ in range(2):
        assert (await get(gateway_port(gw), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200
    gw2 = await start_gateway(gateway_config([closed.url], mws, ["retry"]))
    started = time.monotonic()
    status, _, body = await get(gateway_port(gw2), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 502 and json.loads(body) == {"error": "Upstream connection failed"}
    assert time.monotonic() - started < 5


async def test_circuit_breaker_opens_half_opens_and_closes(start_gateway) -> None:
    failing = True

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if failing:
            w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n")
        else:
            w.write(ok())
        return True

    backend = await start_backend(handler)
    mws = ('middlewares "cb" {\n  type = "circuit-breaker"\n  failure_threshold = 2\n  cooldown_secs = 0.3\n'
           '  success_threshold = 1\n}\n')
    gw = await start_gateway(gateway_config([backend.url], mws, ["cb"]), admin="127.0.0.1:0")
    port = gateway_port(gw)
    assert [(await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] for _ in range(2)] == [500, 500]
    status, headers, body = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 503 and json.loads(body) == {"error": "Service unavailable (circuit breaker open)"}
    assert headers["retry-after"] == "1" and len(backend.requests) == 2
    assert 'gateway_circuit_breaker_state{middleware="cb",router="r"} 1.0' in gw.metrics()
    await asyncio.sleep(0.35)
    failing = False
    assert (await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200  # the half-open probe succeeds
    assert (await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200
    assert 'gateway_circuit_breaker_state{middleware="cb",router="r"} 0.0' in gw.metrics()


async def test_basic_auth(start_gateway) -> None:
    backend = await start_backend()
    mws = ('middlewares "ba" {\n  type = "basic-auth"\n  username = "ada"\n  password = "lovelace"\n'
           '  remove_header = true\n}\n')
    gw = await start_gateway(gateway_config([backend.url], mws, ["ba"]))
    port = gateway_port(gw)
    status, headers, _ = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 401 and headers["www-authenticate"] == 'Basic realm="a3s-gateway", charset="UTF-8"'
    bad = base64.b64encode(b"ada:wrong")
    assert json.loads((await get(port, b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic " + bad + b"\r\n\r\n"))[2]
                      ) == {"error": "Invalid credentials"}
    good = base64.b64encode(b"ada:lovelace")
    assert (await get(port, b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic " + good + b"\r\n\r\n"))[0] == 200
    assert backend.requests[0].header("authorization") is None


async def test_jwt_hs256_forwards_claims(start_gateway) -> None:
    jwt = pytest.importorskip("jwt")
    backend = await start_backend()
    mws = 'middlewares "auth" {\n  type = "jwt"\n  value = "s3cret-s3cret-s3cret-s3cret-s3cret"\n}\n'
    gw = await start_gateway(gateway_config([backend.url], mws, ["auth"]))
    port = gateway_port(gw)
    status, headers, body = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 401 and json.loads(body) == {"error": "Missing token"}
    token = jwt.encode({"sub": "user-7", "exp": int(time.time()) + 60}, "s3cret-s3cret-s3cret-s3cret-s3cret",
                       algorithm="HS256")
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-JWT-Subject: spoofed\r\nAuthorization: Bearer " + token.encode()
    assert (await get(port, raw + b"\r\n\r\n"))[0] == 200
    assert backend.requests[0].header("x-jwt-subject") == "user-7"
    expired = jwt.encode({"sub": "u", "exp": int(time.time()) - 3600}, "s3cret-s3cret-s3cret-s3cret-s3cret",
                         algorithm="HS256")
    status, headers, body = await get(port, b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                                      + expired.encode() + b"\r\n\r\n")
    assert status == 401 and json.loads(body) == {"error": "Invalid token: token expired"}
    assert 'error_description="token expired"' in headers["www-authenticate"]


async def test_forward_auth(start_gateway) -> None:
    async def auth(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.header("x-token") == "good":
            w.write(b"HTTP/1.1 200 OK\r\nX-User: ada\r\nContent-Length: 0\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 302 Found\r\nLocation: https://login.example/?next=" + (
                req.header("x-forwarded-uri") or "").encode() + b"\r\nContent-Length: 5\r\n\r\nlogin")
        return True

    auth_server = await start_backend(auth)
    backend = await start_backend()
    mws = (f'middlewares "fa" {{\n  type = "forward-auth"\n  forward_auth_url = "{auth_server.url}/check"\n'
           '  forward_auth_response_headers = ["X-User"]\n}\n')
    gw = await start_gateway(gateway_config([backend.url], mws, ["fa"]))
    port = gateway_port(gw)
    status, headers, body = await get(port, b"GET /p?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status == 302 and headers["location"] == "https://login.example/?next=/p?x=1" and body == b"login"
    status, _, _ = await get(port, b"GET /p HTTP/1.1\r\nHost: a\r\nX-Token: good\r\nX-User: spoof\r\n\r\n")
    assert status == 200 and backend.requests[0].header("x-user") == "ada"


async def test_compress_gzip_and_streamed_sse(start_gateway) -> None:
    sent = asyncio.Event()
    release = asyncio.Event()

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.target == "/sse":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(2):
                data = f"data: event{i}\n\n".encode()
                w.write(b"%x\r\n%s\r\n" % (len(data), data))
                await w.drain()
                sent.set()
                await release.wait()
            w.write(b"0\r\n\r\n")
            return True
        body = json.dumps({"items": list(range(500))}).encode()
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: \"v1\"\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)
        return True

    backend = await start_backend(handler)
    mws = 'middlewares "gz" {\n  type = "compress"\n  include_event_stream = true\n}\n'
    gw = await start_gateway(gateway_config([backend.url], mws, ["gz"]))
    port = gateway_port(gw)
    status, headers, body = await get(port, b"GET /json HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n")
    assert status == 200 and headers["content-encoding"] == "gzip" and "content-length" not in headers
    assert json.loads(gzip.decompress(body))["items"][-1] == 499
    assert headers["etag"] == 'W/"v1"' and "accept-encoding" in headers["vary"].lower()
    status, headers, body = await get(port, b"GET /json HTTP/1.1\r\nHost: a\r\n\r\n")
    assert "content-encoding" not in headers and json.loads(body)["items"][0] == 0

    # the compressed stream still arrives event by event: the first event decodes before the second is sent
    c = await Client.connect(port)
    c.send(b"GET /sse HTTP/1.1\r\nHost: a\r\nAccept-Encoding: deflate\r\n\r\n")
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
    assert b"Content-Encoding: deflate" in head
    await sent.wait()
    decoder = zlib.decompressobj()
    size = int((await asyncio.wait_for(c.reader.readuntil(b"\r\n"), 5)).strip(), 16)
    chunk = await asyncio.wait_for(c.reader.readexactly(size + 2), 5)
    assert decoder.decompress(chunk[:-2]) == b"data: event0\n\n"
    release.set()
    c.close()


async def test_middleware_state_survives_an_unrelated_reload(start_gateway) -> None:
    """SPEC §6.0: a (router, middleware) whose configuration is unchanged keeps its state across a reload."""
    from a3s_gateway import GatewayConfig

    backend = await start_backend()
    mws = 'middlewares "rl" {\n  type = "rate-limit"\n  rate = 1\n  period = "1h"\n  burst = 2\n}\n'
    hcl = gateway_config([backend.url], mws, ["rl"])
    gw = await start_gateway(hcl)
    port = gateway_port(gw)
    assert [(await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] for _ in range(2)] == [200, 200]
    await gw.reload(GatewayConfig.from_hcl(hcl + 'routers "other" {\n  rule = "Path(`/x`)"\n  service = "s"\n}\n'))
    assert (await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 429  # same bucket, still empty
    await gw.reload(GatewayConfig.from_hcl(hcl.replace("burst = 2", "burst = 3")))
    assert (await get(port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200  # changed configuration: new state


async def test_access_log_counts_retries(start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def busy(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        return True

    bad = await start_backend(busy)
    good = await start_backend()
    log_path = tmp_path / "access.log"
    mws = 'middlewares "retry" {\n  type = "retry"\n  retry_interval_ms = 1\n}\n'
    hcl = gateway_config([bad.url, good.url], mws, ["retry"]) + (
        f'access_log {{\n  path = "{log_path}"\n  flush_interval = "50ms"\n}}\n')
    gw = await start_gateway(hcl)
    assert (await get(gateway_port(gw), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))[0] == 200
    await asyncio.sleep(0.3)
    entry = json.loads(log_path.read_text().splitlines()[0])
    assert entry["retries"] == 1 and entry["backend"] == good.url and entry["status"] == 200
