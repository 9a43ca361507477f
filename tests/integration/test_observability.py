"""Observability end to end (SPEC §11): admin API, Prometheus metrics, access log, trace propagation, OTLP export."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from a3s_gateway import GatewayConfig, StartupError
from support import Client, Request, config, gateway_port, ok, start_backend

ADMIN = "127.0.0.1:0"


async def admin_get(gw: Any, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    _, port = gw.admin_address()
    c = await Client.connect(port)
    try:
        resp = await c.request(f"{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode(),
                               head_request=method == "HEAD")
    finally:
        c.close()
    return resp.status, {k.lower(): v for k, v in resp.headers}, resp.body


async def scrape(gw: Any) -> dict[str, Any]:
    status, headers, body = await admin_get(gw, "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: dict[str, Any], family: str, sample_name: str, **labels: str) -> float | None:
    for s in families[family].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    return None


async def sse_handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    if "/stream" in req.target:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            data = f"data: token{i}\n\n".encode()
            w.write(b"%x\r\n%s\r\n" % (len(data), data))
            await w.drain()
            await asyncio.sleep(0.03)
        w.write(b"0\r\n\r\n")
        return True
    if "/fail" in req.target:
        w.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")
        return True
    w.write(ok(b"hello"))
    return True


async def test_metrics_count_known_traffic(start_gateway) -> None:
    backend = await start_backend(sse_handler)
    gw = await start_gateway(config([backend.url], rule="PathPrefix(`/v1`)"), admin=ADMIN)
    c = await Client.connect(gateway_port(gw))
    for _ in range(3):
        assert (await c.request(b"GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\n")).status == 200
    assert (await c.request(b"POST /v1/fail HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")).status == 503
    assert (await c.request(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).status == 404
    resp = await c.request(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200 and resp.body.count(b"data: token") == 3
    c.close()

    fam = await scrape(gw)
    total = "gateway_requests_total"
    assert sample(fam, "gateway_requests", total, router="r", service="s", method="GET", code="200") == 4
    assert sample(fam, "gateway_requests", total, router="r", service="s", method="POST", code="503") == 1
    assert sample(fam, "gateway_requests", total, router="", service="", method="GET", code="404") == 1
    hist = "gateway_request_duration_seconds"
    assert sample(fam, hist, hist + "_count", router="r", service="s") == 5
    assert sample(fam, hist, hist + "_bucket", router="r", service="s", le="+Inf") == 5
    # the stream took >= 60 ms: it is above the 0.05 s bucket, the fast requests are below
    assert sample(fam, hist, hist + "_bucket", router="r", service="s", le="0.05") == 4
    assert sample(fam, hist, hist + "_bucket", router="r", service="s", le="10.0") == 5
    ttfb = "gateway_upstream_ttfb_seconds"
    assert sample(fam, ttfb, ttfb + "_count", router="r", service="s") == 5
    gap = "gateway_stream_chunk_gap_seconds"
    gaps = sample(fam, gap, gap + "_count", router="r", service="s", revision="")
    assert gaps is not None and gaps >= 2  # three events 30 ms apart, then the last chunk
    assert sample(fam, gap, gap + "_bucket", router="r", service="s", revision="", le="0.01") is not None
    backend_total = "gateway_backend_requests_total"
    assert sample(fam, "gateway_backend_requests", backend_total, service="s", backend=backend.url, code="200") == 4
    assert sample(fam, "gateway_backend_requests", backend_total, service="s", backend=backend.url, code="503") == 1
    assert sample(fam, "gateway_backend_up", "gateway_backend_up", service="s", backend=backend.url) == 1
    assert sample(fam, "gateway_backend_in_flight", "gateway_backend_in_flight", service="s") == 0
    assert sample(fam, "gateway_active_connections", "gateway_active_connections", entrypoint="web") is not None
    assert sample(fam, "gateway_config_generation", "gateway_config_generation") == 1
    assert sample(fam, "gateway_config_reloads", "gateway_config_reloads_total", result="success") == 0
    assert (sample(fam, "gateway_config_last_reload_success_timestamp_seconds",
                   "gateway_config_last_reload_success_timestamp_seconds") or 0) > 1.7e9
    assert "process_cpu_seconds" in fam and "python_info" in fam
    assert gw.metrics().startswith("# HELP")


async def test_client_disconnect_and_truncation_are_counted(start_gateway) -> None:
    release = asyncio.Event()

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.target == "/hang":
            await release.wait()
            return False
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")  # then the backend dies
        await w.drain()
        return False

    backend = await start_backend(handler)
    gw = await start_gateway(config([backend.url]), admin=ADMIN)
    c = await Client.connect(gateway_port(gw))
    c.send(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.2)
    c.close()
    c2 = await Client.connect(gateway_port(gw))
    c2.send(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await c2.closed()
    await asyncio.sleep(0.1)
    release.set()
    fam = await scrape(gw)
    assert sample(fam, "gateway_client_disconnects", "gateway_client_disconnects_total", router="r",
                  phase="waiting_head") == 1
    assert sample(fam, "gateway_stream_failures", "gateway_stream_failures_total", router="r", kind="truncated") == 1


async def test_reload_metrics_and_health(start_gateway) -> None:
    backend = await start_backend()
    hcl = config([backend.url])
    gw = await start_gateway(hcl, admin=ADMIN)
    status, _, body = await admin_get(gw, "/api/gateway/health")
    health = json.loads(body)
    assert status == 200 and health["state"] == "running" and health["last_reload"] is None
    assert set(health) == {"state", "uptime_secs", "active_connections", "total_requests", "backends_total",
                           "backends_healthy", "config_generation", "last_reload"}
    await gw.reload(GatewayConfig.from_hcl(hcl.replace("PathPrefix(`/`)", "PathPrefix(`/v2`)")))
    fam = await scrape(gw)
    assert sample(fam, "gateway_config_reloads", "gateway_config_reloads_total", result="success") == 1
    assert sample(fam, "gateway_config_generation", "gateway_config_generation") == 2
    health = json.loads((await admin_get(gw, "/api/gateway/health"))[2])
    assert health["config_generation"] == 2 and health["last_reload"]["success"] is True
    assert health["last_reload"]["timestamp"].endswith("Z")


async def test_dashboard_endpoints_json_shapes(start_gateway, tmp_path: Path) -> None:
    backend = await start_backend()
    hcl = config([backend.url], rule="PathPrefix(`/v1`)") + '''
middlewares "key" { type = "api-key"
  keys = ["sk-secret-1"] }
'''
    gw = await start_gateway(hcl, admin=ADMIN)
    c = await Client.connect(gateway_port(gw))
    assert (await c.request(b"GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n")).status == 200
    c.close()

    status, headers, body = await admin_get(gw, "/api/gateway/routes")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == [{"name": "r", "rule": "PathPrefix(`/v1`)", "service": "s", "entrypoints": ["web"],
                                 "middlewares": [], "priority": 17, "protocol": "http", "provider": "file"}]
    assert json.loads((await admin_get(gw, "/api/gateway/routes/r/"))[2])["name"] == "r"
    assert (await admin_get(gw, "/api/gateway/routes/zz"))[0] == 404

    backend_view = {"url": backend.url, "weight": 1, "healthy": True, "active_connections": 0, "revision": None}
    services = json.loads((await admin_get(gw, "/api/gateway/services"))[2])
    assert services == [{"name": "s", "strategy": "round-robin", "backends_total": 1, "backends_healthy": 1,
                         "backends": [backend_view], "scaling": None, "revisions": [], "rollout": None,
                         "provider": "file"}]
    assert json.loads((await admin_get(gw, "/api/gateway/services/s"))[2]) == services[0]
    assert json.loads((await admin_get(gw, "/api/gateway/services/nope"))[2]) == {"error": "Service not found"}
    assert json.loads((await admin_get(gw, "/api/gateway/backends"))[2]) == [{"service": "s", **backend_view}]

    version = json.loads((await admin_get(gw, "/api/gateway/version"))[2])
    assert version["name"] == "a3s-gateway" and set(version) == {"name", "version", "python", "compiled"}

    cfg = json.loads((await admin_get(gw, "/api/gateway/config"))[2])
    assert cfg["middlewares"]["key"]["keys"] == ["<redacted>"] and b"sk-secret-1" not in json.dumps(cfg).encode()
    assert cfg["entrypoints"]["web"]["address"] == "127.0.0.1:0"

    health = json.loads((await admin_get(gw, "/api/gateway/health"))[2])
    assert health["total_requests"] == 1 and health["backends_total"] == 1 and health["backends_healthy"] == 1

    status, headers, body = await admin_get(gw, "/api/gateway/health", "POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert (await admin_get(gw, "/api/nope"))[0] == 404
    status, headers, body = await admin_get(gw, "/api/gateway/metrics", "HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0


async def test_access_log_one_line_per_request(start_gateway, tmp_path: Path) -> None:
    backend = await start_backend(sse_handler)
    log_path = tmp_path / "access.log"
    hcl = config([backend.url], rule="PathPrefix(`/v1`)") + f'''
access_log {{
  path = "{log_path}"
  flush_interval = "50ms"
}}
'''
    gw = await start_gateway(hcl)
    c = await Client.connect(gateway_port(gw))
    await c.request(b"GET /v1/a?q=1 HTTP/1.1\r\nHost: h.example\r\nUser-Agent: probe/1\r\nX-Request-Id: rid-1\r\n\r\n")
    resp = await c.request(b"POST /v1/stream HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\n\r\nabc")
    await c.request(b"GET /other HTTP/1.1\r\nHost: h.example\r\n\r\n")
    c.send(b"GET /v1/bad HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")  # duplicate Host: 400
    assert await c.closed()
    await asyncio.sleep(0.3)
    lines = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
    assert len(lines) == 4
    first, stream, missing, bad = lines
    assert first["method"] == "GET" and first["path"] == "/v1/a" and first["query"] == "q=1"
    assert first["host"] == "h.example" and first["status"] == 200 and first["user_agent"] == "probe/1"
    assert first["request_id"] == "rid-1" and first["bytes_out"] == 5 and first["bytes_in"] == 0
    assert first["router"] == "r" and first["service"] == "s" and first["backend"] == backend.url
    assert first["entrypoint"] == "web" and first["client_ip"] == "127.0.0.1" and first["retries"] == 0
    assert first["cold_start"] is False and first["grpc_status"] is None and len(first["trace_id"]) == 32
    assert first["timestamp"].endswith("Z") and first["ttfb_ms"] is not None
    assert stream["bytes_in"] == 3 and stream["bytes_out"] == len(resp.body) and stream["duration_ms"] >= 60
    assert stream["ttfb_ms"] <= stream["duration_ms"]
    assert missing["status"] == 404 and missing["router"] is None and missing["backend"] is None
    assert missing["ttfb_ms"] is None and missing["bytes_out"] == len(b'{"error":"No route matched"}')
    assert bad["status"] == 400 and bad["method"] == "GET" and bad["path"] is None


async def test_trace_context_injected_upstream(start_gateway) -> None:
    backend = await start_backend()
    gw = await start_gateway(config([backend.url]))
    c = await Client.connect(gateway_port(gw))
    trace = "0af7651916cd43dd8448eb211c80319c"
    await c.request(f"GET / HTTP/1.1\r\nHost: x\r\ntraceparent: 00-{trace}-b7ad6b7169203331-01\r\n"
                    "tracestate: v=1\r\nb3: 1111111111111111-2222222222222222-1\r\n\r\n".encode())
    await c.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    c.close()
    first, second = backend.requests
    version, got_trace, span, flags = (first.header("traceparent") or "").split("-")
    assert (version, got_trace, flags) == ("00", trace, "01") and span != "b7ad6b7169203331"
    assert first.header("tracestate") == "v=1"
    assert first.header("b3") == f"{trace}-{span}-1"  # the W3C context won; the incoming b3 is replaced
    assert [n.lower() for n in first.header_names()].count("b3") == 1
    new_trace = (second.header("traceparent") or "").split("-")[1]
    assert len(new_trace) == 32 and new_trace != trace and (second.header("b3") or "").startswith(new_trace)


async def test_b3multi_propagation_only(start_gateway) -> None:
    backend = await start_backend()
    gw = await start_gateway(config([backend.url]) + 'tracing { propagation = ["b3multi"] }\n')
    c = await Client.connect(gateway_port(gw))
    await c.request(b"GET / HTTP/1.1\r\nHost: x\r\nX-B3-TraceId: 463ac35c9f6413ad\r\nX-B3-SpanId: a2fb4a1d1a96d312\r\n"
                    b"X-B3-Sampled: 0\r\n\r\n")
    c.close()
    req = backend.requests[0]
    assert req.header("x-b3-traceid") == "0000000000000000463ac35c9f6413ad"
    assert req.header("x-b3-parentspanid") == "a2fb4a1d1a96d312" and req.header("x-b3-sampled") == "0"
    assert req.header("x-b3-spanid") not in (None, "a2fb4a1d1a96d312")
    assert req.header("traceparent") is None and req.header("b3") is None


async def test_spans_exported_to_otlp_receiver(start_gateway) -> None:
    received: list[dict[str, Any]] = []

    async def receiver(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        received.append({"head": head.decode(), "body": json.loads(await reader.readexactly(length))})
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    collector = await asyncio.start_server(receiver, "127.0.0.1", 0)
    port = collector.sockets[0].getsockname()[1]
    backend = await start_backend()
    gw = await start_gateway(config([backend.url], rule="PathPrefix(`/v1`)") + f'''
tracing {{
  otlp_endpoint = "http://127.0.0.1:{port}"
  otlp_headers  = {{ "x-team" = "llm" }}
  service_name  = "edge-gw"
}}
''')
    c = await Client.connect(gateway_port(gw))
    await c.request(b"GET /v1/chat HTTP/1.1\r\nHost: api\r\n\r\n")
    await c.request(b"GET /nope HTTP/1.1\r\nHost: api\r\n"
                    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\n\r\n")  # not sampled
    c.close()
    await gw.shutdown(1)  # flushes the exporter
    collector.close()
    assert received, "no export reached the receiver"
    assert "POST /v1/traces" in received[0]["head"] and "x-team: llm" in received[0]["head"].lower()
    spans = [s for batch in received for rs in batch["body"]["resourceSpans"] for ss in rs["scopeSpans"]
             for s in ss["spans"]]
    resource = received[0]["body"]["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "edge-gw"}} in resource
    assert len(spans) == 1
    span = spans[0]
    attrs = {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}
    assert span["name"] == "GET r" and span["kind"] == 2
    assert attrs["url.path"] == "/v1/chat" and attrs["a3s.router"] == "r" and attrs["a3s.backend"] == backend.url
    assert str(attrs["http.response.status_code"]) == "200"
    sent = backend.requests[0].header("traceparent") or ""
    assert sent.split("-")[1] == span["traceId"] and sent.split("-")[2] == span["spanId"]


async def test_admin_address_in_use_fails_start(start_gateway) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    backend = await start_backend()
    try:
        with pytest.raises(StartupError, match=f"admin: cannot listen on 127.0.0.1:{port}"):
            await start_gateway(config([backend.url]), admin=f"127.0.0.1:{port}")
    finally:
        blocker.close()


async def test_admin_middlewares_protect_the_dashboard(start_gateway) -> None:
    """admin { middlewares } (SPEC §3.6): basic-auth in front of every admin endpoint, CORS on its answers."""
    backend = await start_backend()
    hcl = config([backend.url]) + '''
admin { middlewares = ["cors", "ops"] }
middlewares "ops" {
  type     = "basic-auth"
  username = "ops"
  password = "s3cret"
}
middlewares "cors" {
  type = "cors"
  allowed_origins = ["https://dash.example"]
}
'''
    gw = await start_gateway(hcl, admin=ADMIN)
    _, port = gw.admin_address()
    c = await Client.connect(port)
    r = await c.request(b"GET /api/gateway/health HTTP/1.1\r\nHost: a\r\nOrigin: https://dash.example\r\n\r\n")
    assert r.status == 401 and r.header("www-authenticate") is not None
    assert r.header("access-control-allow-origin") == "https://dash.example"
    token = base64.b64encode(b"ops:s3cret").decode()
    # pipelined: the second request waits for the first one's (asynchronous) authentication, answers stay in order
    c.send(f"GET /api/gateway/health HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {token}\r\n\r\n"
           f"GET /api/gateway/version HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {token}\r\n\r\n".encode())
    first = await c.response()
    second = await c.response()
    assert first.status == 200 and json.loads(first.body)["state"] == "running"
    assert second.status == 200 and json.loads(second.body)["name"] == "a3s-gateway"
    c.close()


URL_SECRETS = '''
middlewares "rq" { type = "rate-limit-redis"; rate = 5; redis_url = "redis://127.0.0.1:9/0?password=qpass-1" }
middlewares "ru" { type = "rate-limit-redis"; rate = 5; redis_url = "redis://:upass-2@127.0.0.1:9/0" }
middlewares "fa" {
  type = "forward-auth"; forward_auth_url = "http://gw:fapass-3@127.0.0.1:9/check?token=fatok-4&next=/x"
}
middlewares "jw" { type = "jwt"; jwks_url = "http://127.0.0.1:9/jwks?Access_Token=jwtok-5"; algorithms = ["RS256"] }
tracing { otlp_endpoint = "http://otel:otlppass-6@127.0.0.1:9" }
'''


async def test_config_endpoint_shows_no_url_credentials(start_gateway) -> None:
    """SPEC §11.1: every URL-valued key loses its userinfo password and credential query values."""
    backend = await start_backend()
    gw = await start_gateway(config([backend.url]) + URL_SECRETS, admin=ADMIN)
    status, _, body = await admin_get(gw, "/api/gateway/config")
    assert status == 200
    for secret in ("qpass-1", "upass-2", "fapass-3", "fatok-4", "jwtok-5", "otlppass-6"):
        assert secret.encode() not in body, secret
    cfg = json.loads(body)
    assert cfg["middlewares"]["rq"]["redis_url"] == "redis://127.0.0.1:9/0?password=<redacted>"
    assert cfg["middlewares"]["ru"]["redis_url"] == "redis://:<redacted>@127.0.0.1:9/0"
    assert cfg["middlewares"]["fa"]["forward_auth_url"] == "http://gw:<redacted>@127.0.0.1:9/check?token=<redacted>&next=/x"
    assert cfg["middlewares"]["jw"]["jwks_url"] == "http://127.0.0.1:9/jwks?Access_Token=<redacted>"
    assert cfg["tracing"]["otlp_endpoint"] == "http://otel:<redacted>@127.0.0.1:9"


EXPOSED = "reachable from other hosts and has no admin middlewares"


async def test_admin_on_all_interfaces_without_middlewares_warns(start_gateway,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §3.6: a non-loopback admin address without admin middlewares logs a warning at start."""
    backend = await start_backend()
    caplog.set_level(logging.WARNING, logger="a3s_gateway")
    await start_gateway(config([backend.url]), admin=ADMIN)
    assert EXPOSED not in caplog.text  # loopback: nothing to warn about
    gw = await start_gateway(config([backend.url]), admin="0.0.0.0:0")
    _, port = gw.admin_address()
    [record] = [r for r in caplog.records if EXPOSED in r.getMessage()]
    assert record.levelno == logging.WARNING and f"0.0.0.0:{port}" in record.getMessage()
    caplog.clear()
    protected = config([backend.url]) + '''
admin { middlewares = ["ops"] }
middlewares "ops" { type = "ip-allow"; allowed_ips = ["127.0.0.1/32"] }
'''
    await start_gateway(protected, admin="0.0.0.0:0")
    assert EXPOSED not in caplog.text


async def dead_url() -> str:
    """The URL of a loopback port nothing listens on (bound, then closed)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return f"http://127.0.0.1:{port}"


def proxy_records(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    """The key/value fields of the ``a3s_gateway.proxy`` lines whose message is ``message``."""
    return [dict(r.fields) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == "a3s_gateway.proxy" and r.getMessage() == message]


async def test_gateway_errors_are_logged_with_the_request_id(start_gateway, caplog: pytest.LogCaptureFixture,
                                                             tmp_path: Path) -> None:
    """SPEC §5.7 / §11.5: a 502 or 504 writes a process-log line with the request id, router, service and backend
    (which the client's answer never shows); repeats of one service and kind are rate-limited."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answers(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        hung.append(w)
        await asyncio.sleep(10)
        return False

    dead_a, dead_b = await dead_url(), await dead_url()
    slow = await start_backend(never_answers)
    log_path = tmp_path / "access.log"
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "ra" {{
  rule = "PathPrefix(`/a`)"
  service = "sa"
}}
routers "rb" {{
  rule = "PathPrefix(`/b`)"
  service = "sb"
}}
routers "rc" {{
  rule = "PathPrefix(`/c`)"
  service = "sc"
}}
services "sa" {{ load_balancer {{ servers = [{{ url = "{dead_a}" }}] }} }}
services "sb" {{ load_balancer {{ servers = [{{ url = "{dead_b}" }}] }} }}
services "sc" {{
  load_balancer {{ servers = [{{ url = "{slow.url}" }}] }}
  transport {{ response_header_timeout = "200ms" }}
}}
access_log {{
  path = "{log_path}"
  flush_interval = "50ms"
}}
'''
    caplog.set_level(logging.WARNING, logger="a3s_gateway")
    gw = await start_gateway(hcl)
    port = gateway_port(gw)
    for i in range(5):
        c = await Client.connect(port)
        resp = await c.request(f"GET /a/{i} HTTP/1.1\r\nHost: x\r\nX-Request-Id: probe-{i}\r\n\r\n".encode())
        c.close()
        assert resp.status == 502 and json.loads(resp.body) == {"error": "Upstream connection failed"}
        assert dead_a.encode() not in resp.body and dead_a.rsplit(":", 1)[1].encode() not in resp.body
    [line] = proxy_records(caplog, "Upstream connection failed")  # the four repeats are suppressed
    assert line["request_id"] == "probe-0" and line["status"] == 502
    assert (line["router"], line["service"], line["backend"]) == ("ra", "sa", dead_a)
    assert "refused" in str(line["error"]).lower() or "111" in str(line["error"])

    c = await Client.connect(port)
    assert (await c.request(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")).status == 502  # another service: its own line
    resp = await c.request(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    c.close()
    assert resp.status == 504 and json.loads(resp.body) == {"error": "Upstream response timeout"}
    _, generated = proxy_records(caplog, "Upstream connection failed")
    [timeout] = proxy_records(caplog, "Upstream response timeout")
    assert (generated["service"], generated["backend"]) == ("sb", dead_b)
    assert (timeout["status"], timeout["service"], timeout["backend"]) == (504, "sc", slow.url)
    # a request without X-Request-Id: the line carries the id the gateway generated, as sent upstream and logged
    assert len(timeout["request_id"]) == 32
    assert slow.requests[0].header("x-request-id") == timeout["request_id"]
    await asyncio.sleep(0.3)
    entries = [orjson.loads(x) for x in log_path.read_bytes().splitlines()]
    by_path = {e["path"]: e for e in entries}
    assert by_path["/a/0"]["request_id"] == "probe-0"
    assert by_path["/b"]["request_id"] == generated["request_id"] and len(generated["request_id"]) == 32
    assert by_path["/c"]["request_id"] == timeout["request_id"]
    for w in hung:
        w.close()


async def test_connections_over_max_connections_are_counted_and_logged(start_gateway,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §3.1: a connection beyond max_connections is closed, counted in gateway_connections_rejected_total and
    logged at most once per 10 s."""
    backend = await start_backend()
    caplog.set_level(logging.WARNING, logger="a3s_gateway")
    gw = await start_gateway(config([backend.url], entry="max_connections = 1"), admin=ADMIN)
    port = gateway_port(gw)
    first = await Client.connect(port)
    assert (await first.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).status == 200
    for _ in range(3):
        extra = await Client.connect(port)
        assert await extra.closed()
        extra.close()
    assert (await first.request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).status == 200  # the admitted one is served
    fam = await scrape(gw)
    assert sample(fam, "gateway_connections_rejected", "gateway_connections_rejected_total",
                  entrypoint="web", reason="limit") == 3
    [line] = proxy_records(caplog, "connection rejected: entrypoint at max_connections")
    assert line == {"entrypoint": "web", "max_connections": 1, "rejected_total": 1}
    first.close()
