"""WebSocket through the gateway (SPEC §9.3) with the `websockets` library on both ends: the backend's own 101 is
relayed, request middlewares apply to the upgrade, the tunnel relays both ways, survives a reload, and closes when
idle; the access log entry (101) is written when it ends."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets
from support import gateway_port
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from a3s_gateway import GatewayConfig

pytestmark = pytest.mark.timeout(60)


async def echo_backend():  # type: ignore[no-untyped-def]
    """A websockets server that echoes, answers "whoami" with its request path and headers, and pushes on "push"."""

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        async for message in ws:
            if message == "whoami":
                req = ws.request
                await ws.send(json.dumps({"path": req.path, "user": req.headers.get("X-User"),
                                          "auth": req.headers.get("Authorization")}))
            elif message == "push":
                for i in range(3):
                    await ws.send(f"event {i}")
            else:
                await ws.send(message)

    def pick(connection, offered):  # type: ignore[no-untyped-def]
        return "chat.v1" if "chat.v1" in offered else None  # optional: clients that offer none are accepted

    server = await serve(handler, "127.0.0.1", 0, select_subprotocol=pick)
    return server, server.sockets[0].getsockname()[1]


def config(port: int, extra_router: str = "", extra: str = "", idle: str = "1h") -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "ws" {{
  rule    = "PathPrefix(`/ws`)"
  service = "chat"
  {extra_router}
}}
services "chat" {{
  load_balancer {{ servers = [{{ url = "http://127.0.0.1:{port}" }}] }}
  transport {{ tunnel_idle_timeout = "{idle}" }}
}}
{extra}
'''


async def test_echo_subprotocol_and_server_push_through_the_gateway(start_gateway) -> None:
    server, port = await echo_backend()
    gw = await start_gateway(config(port))
    async with connect(f"ws://127.0.0.1:{gateway_port(gw)}/ws/room?x=1", subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"  # negotiated by the backend, relayed unchanged
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv() == b"\x00\x01binary"
        big = "x" * 300_000  # larger than any socket buffer: backpressure both ways
        await ws.send(big)
        assert await ws.recv() == big
        await ws.send("push")
        assert [await ws.recv() for _ in range(3)] == ["event 0", "event 1", "event 2"]
        await ws.send("whoami")
        assert json.loads(await ws.recv())["path"] == "/ws/room?x=1"
    await asyncio.sleep(0.1)
    stats = gw.runtime.route_stats[("ws", "chat")]
    assert stats.gone_streaming == 0
    assert 'gateway_requests_total{code="101",method="GET",router="ws",service="chat"} 1.0' in gw.metrics()
    server.close()


async def test_request_middlewares_apply_to_the_upgrade(start_gateway) -> None:
    server, port = await echo_backend()
    mws = '''
middlewares "key" {
  type   = "api-key"
  keys   = ["k1"]
  header = "X-Api-Key"
}
middlewares "tag" {
  type = "headers"
  request_headers = { "X-User" = "alice" }
  response_headers = { "X-Gateway" = "a3s" }
}
'''
    gw = await start_gateway(config(port, 'middlewares = ["key", "tag"]', mws))
    url = f"ws://127.0.0.1:{gateway_port(gw)}/ws"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401
    async with connect(url, additional_headers={"X-Api-Key": "k1"}) as ws:
        assert ws.response.headers.get("X-Gateway") == "a3s"  # response phase on the 101
        await ws.send("whoami")
        assert json.loads(await ws.recv())["user"] == "alice"
    server.close()


async def test_a_tunnel_survives_a_reload_that_removes_its_router(start_gateway) -> None:
    server, port = await echo_backend()
    hcl = config(port)
    gw = await start_gateway(hcl)
    async with connect(f"ws://127.0.0.1:{gateway_port(gw)}/ws") as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        await gw.reload(GatewayConfig.from_hcl(hcl.replace("PathPrefix(`/ws`)", "PathPrefix(`/other`)"),
                                               filename="t.hcl"))
        await ws.send("after")
        assert await ws.recv() == "after"
    server.close()


async def test_an_idle_tunnel_is_closed_and_logged_as_101(start_gateway, tmp_path) -> None:
    server, port = await echo_backend()
    log = tmp_path / "access.log"
    gw = await start_gateway(config(port, idle="300ms", extra=f'access_log {{\n  path = "{log}"\n}}'))
    async with connect(f"ws://127.0.0.1:{gateway_port(gw)}/ws", ping_interval=None) as ws:
        await ws.send("x")
        assert await ws.recv() == "x"
        t0 = time.monotonic()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert 0.2 < time.monotonic() - t0 < 3
    await gw.shutdown(0.2)  # flushes the access log
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e["status"] for e in entries] == [101] and entries[0]["bytes_out"] > 0
    server.close()


async def test_a_backend_that_refuses_the_upgrade_is_relayed_as_is(start_gateway) -> None:
    async def refuse(connection, request):  # type: ignore[no-untyped-def]
        return connection.respond(403, "no websockets here\n")

    server = await serve(lambda ws: None, "127.0.0.1", 0, process_request=refuse)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config(port))
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{gateway_port(gw)}/ws"):
            pass
    assert refused.value.response.status_code == 403
    assert refused.value.response.body == b"no websockets here\n"
    server.close()


async def test_ws_mux_channels_through_the_gateway_with_auth_and_a_backend_link(start_gateway) -> None:
    """ws-mux (§9.4): the gateway answers the upgrade after the earlier middlewares, clients share channels, and
    the hub's backend link subscribes and publishes on the backend."""
    seen: list[str] = []
    backend_ws: list = []

    async def link(ws) -> None:  # type: ignore[no-untyped-def]
        backend_ws.append(ws)
        async for message in ws:
            seen.append(message)

    server = await serve(link, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mws = '''
middlewares "key" {
  type = "api-key"
  keys = ["k1"]
}
middlewares "mux" {
  type          = "ws-mux"
  max_channels  = 2
  upstream_path = "/hub"
}
'''
    hcl = config(port, 'middlewares = ["key", "mux"]', mws)
    gw = await start_gateway(hcl)
    url = f"ws://127.0.0.1:{gateway_port(gw)}/ws"
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 401  # the middlewares before ws-mux still apply
    key = {"X-API-Key": "k1"}
    async with connect(url, additional_headers=key) as a, connect(url, additional_headers=key) as b:
        for ws in (a, b):
            await ws.send("_sub:news")
            assert await ws.recv() == "_ok:subscribed to news"
        await a.send("news:hello")
        assert await asyncio.wait_for(b.recv(), 5) == "news:hello"  # the other subscriber, not the sender
        await a.send("_ping")
        assert await a.recv() == "_pong"
        await a.send("_sub:x")
        assert await a.recv() == "_ok:subscribed to x"
        await a.send("_sub:y")
        assert await a.recv() == "_error:max channels (2) reached"
        await a.send("_list")
        assert await a.recv() == '_channels:["news","x"]'
        for _ in range(100):
            if "news:hello" in seen:
                break
            await asyncio.sleep(0.02)
        assert seen[:2] == ["_sub:news", "news:hello"]  # the backend link subscribed, then got the publish
        await backend_ws[0].send("news:from-backend")
        assert await asyncio.wait_for(a.recv(), 5) == "news:from-backend"
        assert await asyncio.wait_for(b.recv(), 5) == "news:from-backend"
        await gw.reload(GatewayConfig.from_hcl(hcl + "\n# reloaded\n", filename="t.hcl"))
        await a.send("news:after the reload")  # the hub and its connections are untouched
        assert await asyncio.wait_for(b.recv(), 5) == "news:after the reload"
    assert backend_ws[0].request.path == "/hub"
    server.close()
