"""Well-known discovery end to end (SPEC §12.3, §12.1): loopback seeds serve ``/.well-known/a3s-service.json`` and a
health path; the gateway polls them, routes to the contributing ones, takes the routes of the highest version, drops
a seed after 3 failed polls, and skips invalid or colliding items with a warning without blocking the rest."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from a3s_gateway import Gateway, GatewayConfig
from support import Backend, Client, Request, gateway_port, ok, start_backend


@dataclass
class Seed:
    """A backend announcing ``doc``; ``healthy`` answers its health probe, ``up`` its document."""

    doc: dict[str, Any]
    reply: bytes
    healthy: bool = True
    up: bool = True
    backend: Backend = field(init=False)

    async def start(self) -> Seed:
        async def handler(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            if req.target == "/.well-known/a3s-service.json":
                body = json.dumps(self.doc).encode()
                writer.write(ok(body) if self.up else b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n")
            elif req.target == self.doc.get("health_path", "/health"):
                writer.write(ok(b"") if self.healthy else b"HTTP/1.1 500 Bad\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(ok(self.reply + b" " + req.target.encode()))
            await writer.drain()
            return True

        self.backend = await start_backend(handler)
        return self

    @property
    def url(self) -> str:
        return self.backend.url


def hcl(seeds: list[Seed], extra: str = "") -> str:
    listed = ", ".join(f'{{ url = "{s.url}" }}' for s in seeds)
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/file`)"
  service = "s"
}}
services "s" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:9" }}] }} }}
middlewares "tag" {{
  type    = "headers"
  response_headers = {{ "X-Discovered" = "yes" }}
}}
{extra}
providers {{
  discovery {{
    seeds              = [{listed}]
    poll_interval_secs = 0.2
    timeout_secs       = 2
  }}
}}
'''


async def until(pred: Callable[[], bool], timeout: float = 6.0) -> None:
    start = time.monotonic()
    while not pred():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)


async def get(port: int, path: str) -> tuple[int, bytes, str | None]:
    client = await Client.connect(port)
    try:
        resp = await client.request(f"GET {path} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        return resp.status, resp.body, resp.header("x-discovered")
    finally:
        client.close()


def routes(gw: Gateway) -> dict[str, str]:
    return {r["name"]: r["provider"] for r in gw.routes()}


async def test_seeds_route_by_highest_version_and_leave_after_three_strikes(
    start_gateway: Callable[..., Any]
) -> None:
    old = await Seed({"name": "llm", "version": "1.2.0", "routes": [{"rule": "PathPrefix(`/v1`)"}]}, b"old").start()
    new = await Seed({"name": "llm", "version": "1.10.0", "weight": 1, "health_path": "/ready", "routes": [
        {"rule": "PathPrefix(`/v2`)", "middlewares": ["tag"]}, {"rule": "PathPrefix(`/v3`)", "priority": 5}]},
        b"new").start()
    never = await Seed({"name": "cold", "version": "1", "routes": [{"rule": "PathPrefix(`/cold`)"}]}, b"cold",
                       healthy=False).start()
    gw: Gateway = await start_gateway(hcl([old, new, never]))
    port = gateway_port(gw)
    await until(lambda: "discovered-llm-0" in routes(gw))
    # 1.10.0 > 1.2.0 in semantic-version order (not in string order): its two routes win
    assert routes(gw) == {"r": "file", "discovered-llm-0": "discovery", "discovered-llm-1": "discovery"}
    services = {s["name"]: s for s in gw.services()}
    assert services["llm"]["provider"] == "discovery" and services["s"]["provider"] == "file"
    assert sorted(b["url"] for b in services["llm"]["backends"]) == sorted([old.url, new.url])
    assert "cold" not in services  # its probe never passed
    replies = {(await get(port, "/v2/x"))[1] for _ in range(4)}
    assert replies == {b"old /v2/x", b"new /v2/x"}
    assert (await get(port, "/v2/x"))[2] == "yes"  # the file-defined middleware runs
    assert (await get(port, "/v1"))[0] == 404

    # the newer seed fails its probe: it still contributes for two failed polls, and leaves at the third
    provider = next(iter(gw._providers.running.values()))  # type: ignore[union-attr]
    new.healthy = False
    start = provider.rounds
    await until(lambda: provider.rounds >= start + 2)
    assert len(next(s for s in gw.services() if s["name"] == "llm")["backends"]) == 2
    await until(lambda: "discovered-llm" in routes(gw))
    assert [b["url"] for b in next(s for s in gw.services() if s["name"] == "llm")["backends"]] == [old.url]
    assert provider.rounds >= start + 3
    assert await get(port, "/v1/y") == (200, b"old /v1/y", None)

    # no contributing seed: the service and its routers are removed
    old.up = False
    await until(lambda: "llm" not in {s["name"] for s in gw.services()})
    assert routes(gw) == {"r": "file"}
    for seed in (old, new, never):
        await seed.backend.stop()


async def test_routes_live_lists_provider_routers_with_their_source(start_gateway: Callable[..., Any]) -> None:
    seed = await Seed({"name": "llm", "version": "1", "routes": [{"rule": "PathPrefix(`/v1`)"}]}, b"x").start()
    gw: Gateway = await start_gateway(hcl([seed]), admin="127.0.0.1:0")
    await until(lambda: "discovered-llm" in routes(gw))
    host, admin_port = gw.admin_address()  # type: ignore[misc]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "a3s_gateway", "routes", "--live", f"{host}:{admin_port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0].split() == ["PRIORITY", "NAME", "ENTRYPOINTS", "RULE", "SERVICE", "MIDDLEWARES", "SOURCE"]
    table = {line.split()[1]: line.split()[-1] for line in lines[1:]}
    assert table == {"r": "file", "discovered-llm": "discovery"}
    # the file alone does not know the provider's routers, and says where to look
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "a3s_gateway", "routes", "--live", "127.0.0.1:9",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 3 and b"is the gateway running with its admin API on 127.0.0.1:9?" in out
    await seed.backend.stop()


async def test_invalid_and_colliding_items_are_skipped_without_blocking(
    start_gateway: Callable[..., Any], caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="a3s_gateway.providers")
    good = await Seed({"name": "good", "version": "1", "routes": [{"rule": "PathPrefix(`/good`)"}]}, b"good").start()
    bad_rule = await Seed({"name": "broken", "version": "1", "routes": [{"rule": "PathPrefix(`/x`"}]}, b"b").start()
    taken = await Seed({"name": "s", "version": "1", "routes": [{"rule": "PathPrefix(`/s`)"}]}, b"s").start()
    no_mw = await Seed({"name": "nomw", "version": "1", "routes": [{"rule": "Path(`/m`)", "middlewares": ["nope"]}]},
                       b"m").start()
    gw: Gateway = await start_gateway(hcl([good, bad_rule, taken, no_mw]))
    port = gateway_port(gw)
    await until(lambda: "discovered-good" in routes(gw))
    assert await get(port, "/good") == (200, b"good /good", None)
    assert set(routes(gw)) == {"r", "discovered-good"}
    text = caplog.text
    assert f"discovery:{bad_rule.url}: routers.discovered-broken.rule: invalid rule" in text
    assert f"discovery:{taken.url}: services.s: a file-defined service has this name; skipped" in text
    assert f'discovery:{no_mw.url}: routers.discovered-nomw.middlewares[0]: unknown middleware "nope"' in text
    # the services of the skipped routers stay (they are valid); the file's service "s" is untouched
    services = {s["name"]: s for s in gw.services()}
    assert services["s"]["provider"] == "file"
    assert [b["url"] for b in services["s"]["backends"]] == ["http://127.0.0.1:9"]

    # a file reload goes through with the provider items merged in again
    generation = gw.generation
    await gw.reload(GatewayConfig.from_hcl(hcl([good, bad_rule, taken, no_mw], extra='''
routers "extra" {
  rule    = "PathPrefix(`/extra`)"
  service = "s"
}''')))
    assert gw.generation == generation + 1
    assert set(routes(gw)) == {"r", "extra", "discovered-good"}
    assert await get(port, "/good") == (200, b"good /good", None)
    for seed in (good, bad_rule, taken, no_mw):
        await seed.backend.stop()


async def test_providers_run_in_the_supervisor_which_ships_their_items_and_never_in_a_worker() -> None:
    from a3s_gateway.gateway import SUPERVISOR, WORKER

    seed = await Seed({"name": "llm", "version": "1", "routes": [{"rule": "PathPrefix(`/v1`)"}]}, b"x").start()
    config = GatewayConfig.from_hcl(hcl([seed]))

    worker = Gateway(config, admin="off", role=WORKER)
    await worker.start()
    await asyncio.sleep(0.5)  # more than two poll intervals
    assert worker._providers is None and seed.backend.requests == []
    await worker.shutdown(0.5)

    shipped: list[GatewayConfig] = []

    class Peers:
        async def prepare(self, config: GatewayConfig, runtime: Any) -> None:
            shipped.append(config)

        async def commit(self, generation: int) -> None:
            return None

        async def abort(self, generation: int) -> None:
            return None

    supervisor = Gateway(config, admin="off", role=SUPERVISOR)
    supervisor.peers = Peers()
    await supervisor.start()
    try:
        await until(lambda: any("discovered-llm" in c.routers for c in shipped))
        sent = next(c for c in shipped if "discovered-llm" in c.routers)
        assert [s.url for s in sent.services["llm"].load_balancer.servers] == [seed.url]
        assert sent.origins["routers.discovered-llm"] == "discovery"
    finally:
        await supervisor.shutdown(0.5)
        await seed.backend.stop()
