"""Active and passive health through a real gateway (SPEC §7.3, §7.4): backends stopped, failing, restarted."""

from __future__ import annotations

import asyncio
import json
import time

from support import Backend, Client, Request, gateway_port, ok, start_backend


def two_backends(urls: list[str], lb_extra: str) -> str:
    servers = ", ".join(f'{{ url = "{u}" }}' for u in urls)
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{
    servers = [{servers}]
    {lb_extra}
  }}
}}
'''


async def named_backend(name: bytes) -> Backend:
    """A backend whose every answer is 200 with body ``name``."""

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(ok(name))
        return True

    return await start_backend(handler)


async def get(port: int) -> tuple[int, bytes]:
    c = await Client.connect(port)
    try:
        r = await c.request(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    finally:
        c.close()
    return r.status, r.body


async def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


async def test_active_check_evicts_a_stopped_backend_and_readmits_it(start_gateway) -> None:
    a = await start_backend()
    b = await start_backend()
    hc = 'health_check {\n  path = "/health"\n  interval = "100ms"\n  timeout = "100ms"\n  unhealthy_threshold = 2\n}'
    gw = await start_gateway(two_backends([a.url, b.url], hc), admin="127.0.0.1:0")
    port = gateway_port(gw)
    assert await wait_for(lambda: any(r.target == "/health" for r in b.requests))
    probe = next(r for r in b.requests if r.target == "/health")
    assert (probe.header("user-agent") or "").startswith("a3s-gateway/")

    b_port = b.port
    await b.stop()
    b.server = None
    started = time.monotonic()
    assert await wait_for(lambda: not gw.runtime.services["s"].backends[1].eligible, 3)
    assert time.monotonic() - started < 2.0  # interval × threshold plus probe timeouts
    for _ in range(6):
        status, body = await get(port)
        assert status == 200 and body == b"hello from backend"  # only the healthy backend is used
    backends = {x["url"]: x for x in gw.backends()}
    assert backends[b.url]["healthy"] is False and backends[a.url]["healthy"] is True
    assert f'gateway_backend_up{{backend="{b.url}",service="s"}} 0.0' in gw.metrics()

    revived = Backend()
    revived.server = await asyncio.start_server(revived._serve, "127.0.0.1", b_port)
    revived.port = b_port
    assert await wait_for(lambda: gw.runtime.services["s"].backends[1].eligible, 3)

    for _ in range(4):
        await get(port)
    seen = {len(a.requests) > 0, len(revived.requests) > 0}
    assert seen == {True}


async def test_all_backends_unhealthy_answers_503(start_gateway) -> None:
    async def sick(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n" if req.target == "/health"
                else ok())
        return True

    a = await start_backend(sick)
    hc = 'health_check {\n  path = "/health"\n  interval = "50ms"\n  timeout = "50ms"\n  unhealthy_threshold = 1\n}'
    gw = await start_gateway(two_backends([a.url], hc))
    assert await wait_for(lambda: not gw.runtime.services["s"].backends[0].eligible, 3)
    status, body = await get(gateway_port(gw))
    assert status == 503 and json.loads(body) == {"error": "No healthy backends"}


async def test_passive_ejection_and_readmission(start_gateway) -> None:
    failing = True

    async def flaky(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n" if failing else ok(b"fine"))
        return True

    a = await start_backend(flaky)
    passive = 'passive {\n  max_failures = 3\n  window = "10s"\n  ejection = "300ms"\n}'
    gw = await start_gateway(two_backends([a.url], passive))
    port = gateway_port(gw)
    assert [(await get(port))[0] for _ in range(3)] == [502, 502, 502]
    status, body = await get(port)  # ejected: the only backend is out
    assert status == 503 and json.loads(body) == {"error": "No healthy backends"}
    failing = False
    assert await wait_for(lambda: gw.runtime.services["s"].backends[0].eligible, 3)  # re-admission probe (TCP)
    assert await get(port) == (200, b"fine")


async def request_with_cookie(port: int, cookie: str | None) -> tuple[int, bytes, str | None]:
    c = await Client.connect(port)
    try:
        extra = f"Cookie: theme=dark; lb={cookie}\r\n" if cookie else ""
        r = await c.request(f"GET /x HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode())
    finally:
        c.close()
    return r.status, r.body, r.header("set-cookie")


async def test_sticky_clients_stay_and_move_when_their_backend_dies(start_gateway) -> None:
    a, b = await named_backend(b"a"), await named_backend(b"b")
    lb = ('sticky {\n  cookie = "lb"\n  ttl = "10m"\n  secure = true\n  same_site = "strict"\n}\n'
          'health_check {\n  path = "/health"\n  interval = "100ms"\n  timeout = "100ms"\n  unhealthy_threshold = 1\n}')
    gw = await start_gateway(two_backends([a.url, b.url], lb))
    port = gateway_port(gw)
    status, first, set_cookie = await request_with_cookie(port, None)
    assert status == 200 and set_cookie is not None
    value = set_cookie.split(";")[0].split("=", 1)[1]
    assert set_cookie == f"lb={value}; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Strict" and len(value) == 16
    bodies = {(await request_with_cookie(port, value))[1] for _ in range(100)}
    assert bodies == {first}  # 100 requests, one backend
    pinned = a if first == b"a" else b
    await pinned.stop()
    assert await wait_for(lambda: not next(x for x in gw.runtime.services["s"].backends
                                           if x.url == pinned.url).eligible, 3)
    status, body, moved = await request_with_cookie(port, value)
    assert status == 200 and body != first and moved is not None and moved.split(";")[0] != f"lb={value}"
    assert (await request_with_cookie(port, "0000000000000000"))[0] == 200  # an unknown value: normal dispatch


async def test_failover_when_the_primary_dies_and_back(start_gateway) -> None:
    primary, spare = await named_backend(b"primary"), await named_backend(b"spare")
    hc = 'health_check {\n  path = "/h"\n  interval = "100ms"\n  timeout = "100ms"\n  unhealthy_threshold = 1\n}'
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "main"
}}
services "main" {{
  load_balancer {{
    servers = [{{ url = "{primary.url}" }}]
    {hc}
  }}
  failover {{ service = "backup" }}
}}
services "backup" {{
  load_balancer {{
    servers = [{{ url = "{spare.url}" }}]
    {hc}
  }}
}}
'''
    gw = await start_gateway(hcl)
    port = gateway_port(gw)
    assert await get(port) == (200, b"primary")
    p_port = primary.port
    await primary.stop()
    assert await wait_for(lambda: not gw.runtime.services["main"].backends[0].eligible, 3)
    assert await get(port) == (200, b"spare")
    await spare.stop()
    assert await wait_for(lambda: not gw.runtime.services["backup"].backends[0].eligible, 3)
    status, body = await get(port)
    assert status == 503 and json.loads(body) == {"error": "No healthy backends (primary + failover)"}
    revived = await named_backend(b"primary again")
    await revived.stop()
    back = Backend(revived.handler)
    back.server = await asyncio.start_server(back._serve, "127.0.0.1", p_port)
    assert await wait_for(lambda: gw.runtime.services["main"].backends[0].eligible, 3)
    status, body = await get(port)
    # back on the primary (an old pooled connection to its first instance may still answer)
    assert status == 200 and body in (b"primary", b"primary again")


async def test_mirror_sends_the_sampled_share_and_the_client_sees_only_the_primary(start_gateway) -> None:
    slow_shadow = asyncio.Event()

    async def shadow_handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.target == "/slow":
            await slow_shadow.wait()  # a stuck shadow never delays the client
        w.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 6\r\n\r\nshadow")
        return True

    primary = await start_backend()
    shadow = await start_backend(shadow_handler)
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "main"
}}
services "main" {{
  load_balancer {{ servers = [{{ url = "{primary.url}" }}] }}
  mirror {{
    service        = "shadow"
    percentage     = 25
    max_body_bytes = 8
  }}
}}
services "shadow" {{
  load_balancer {{ servers = [{{ url = "{shadow.url}" }}] }}
}}
'''
    gw = await start_gateway(hcl, admin="127.0.0.1:0")
    port = gateway_port(gw)
    c = await Client.connect(port)
    for i in range(200):
        r = await c.request(b"GET /m?i=%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        assert r.status == 200 and r.body == b"hello from backend"
    assert await wait_for(lambda: len(shadow.requests) == 50)  # exactly every 4th request
    assert [q.target for q in shadow.requests[:2]] == ["/m?i=3", "/m?i=7"]
    # bodies: request 203 is sampled but over max_body_bytes (skipped); request 207 is copied whole once complete
    for body in (b"a", b"b", b"c", b"0123456789abcdef", b"d", b"e", b"f", b"last"):
        r = await c.request(b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert r.status == 200
    assert await wait_for(lambda: any(q.target == "/body" for q in shadow.requests))
    assert [q.body for q in shadow.requests if q.target == "/body"] == [b"last"]
    assert 'gateway_mirror_requests_total{result="skipped",service="main"} 1.0' in gw.metrics()
    for _ in range(4):
        started = time.monotonic()
        r = await c.request(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        assert r.status == 200 and time.monotonic() - started < 1.0
    c.close()
    slow_shadow.set()
    text = gw.metrics()
    assert 'gateway_mirror_requests_total{result="sent",service="main"}' in text


async def test_revision_split_90_10(start_gateway) -> None:
    v1a, v1b, v2 = await named_backend(b"v1"), await named_backend(b"v1"), await named_backend(b"v2")
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  revisions = [
    {{ name = "v1", traffic_percent = 90, servers = [{{ url = "{v1a.url}" }}, {{ url = "{v1b.url}" }}] }},
    {{ name = "v2", traffic_percent = 10, servers = [{{ url = "{v2.url}" }}], strategy = "least-connections" }},
  ]
}}
'''
    gw = await start_gateway(hcl, admin="127.0.0.1:0")
    c = await Client.connect(gateway_port(gw))
    counts = {b"v1": 0, b"v2": 0}
    for _ in range(2000):
        counts[(await c.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")).body] += 1
    c.close()
    assert abs(counts[b"v2"] / 2000 - 0.10) <= 0.03 and len(v1a.requests) and len(v1b.requests)
    svc = gw.services()[0]
    assert [(r["name"], r["traffic_percent"], r["backends_total"]) for r in svc["revisions"]] == [
        ("v1", 90, 2), ("v2", 10, 1)]
    assert {b["revision"] for b in gw.backends()} == {"v1", "v2"}
    text = gw.metrics()
    assert f'gateway_revision_requests_total{{code="200",revision="v2",service="llm"}} {counts[b"v2"]}.0' in text
    assert 'gateway_revision_ttfb_seconds_count{revision="v1",router="r",service="llm"}' in text
    assert 'gateway_rollout_traffic_percent{revision="v2",service="llm"} 10.0' in text
    # a revision without an eligible backend gives way to the other one
    for b in gw.runtime.services["llm"].backends:
        if b.revision == "v1":
            b.eligible = False
    c = await Client.connect(gateway_port(gw))
    assert {(await c.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")).body for _ in range(10)} == {b"v2"}
    c.close()


async def test_health_state_survives_a_reload(start_gateway) -> None:
    """SPEC §7.3/§13.6: the checkers are replaced on reload; an unhealthy unchanged backend stays unhealthy."""
    from a3s_gateway import GatewayConfig

    a = await start_backend()
    dead = await start_backend()
    await dead.stop()
    hc = 'health_check {\n  path = "/h"\n  interval = "1s"\n  timeout = "200ms"\n  unhealthy_threshold = 1\n}'
    hcl = two_backends([a.url, dead.url], hc)
    gw = await start_gateway(hcl)
    assert await wait_for(lambda: not gw.runtime.services["s"].backends[1].eligible, 3)
    await gw.reload(GatewayConfig.from_hcl(hcl + 'routers "other" {\n  rule = "Path(`/o`)"\n  service = "s"\n}\n'))
    assert gw.generation == 2 and not gw.runtime.services["s"].backends[1].eligible  # not reset to healthy
    assert {(await get(gateway_port(gw)))[0] for _ in range(4)} == {200}
