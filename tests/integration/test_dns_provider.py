"""DNS provider end to end (SPEC §12.4, §12.1): a local dnsmasq answers for ``a3s.test``; the servers of a
file-defined service follow its A / AAAA / SRV records and their TTLs, traffic follows, an in-flight request on a
backend that left completes, and the unchanged backend keeps its live objects.

A records point at 127.0.0.1 and 127.0.0.2 (both loopback) so that two backends share the port the block names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dnsmasq import Dnsmasq

from a3s_gateway import Gateway
from a3s_gateway.providers import dns as dns_provider
from support import Backend, Client, Request, gateway_port, ok, start_backend

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path, ttl=1)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def quick_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    # TTLs are clamped to [5s, refresh]; a 0.2 s floor keeps a 1 s TTL test short (the clamp is unit-tested)
    monkeypatch.setattr(dns_provider, "MIN_TTL", 0.2)
    monkeypatch.setattr(dns_provider, "LIFETIME", 0.5)


def hcl(ns: str, port: int, name: str = "api.a3s.test", kind: str = "A", refresh: str = "60s") -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{ load_balancer {{ strategy = "round-robin" }} }}
providers {{
  dns {{
    service     = "s"
    name        = "{name}"
    type        = "{kind}"
    port        = {port}
    refresh     = "{refresh}"
    nameservers = ["{ns}"]
  }}
}}
'''


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``pred`` held (fails the test after ``timeout``)."""
    start = time.monotonic()
    while not pred():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def body(port: int) -> tuple[int, bytes]:
    client = await Client.connect(port)
    try:
        resp = await client.request(GET)
        return resp.status, resp.body
    finally:
        client.close()


async def backend_on(host: str, port: int, reply: bytes) -> Backend:
    async def handler(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(reply))
        await writer.drain()
        return True

    backend = Backend(handler)
    backend.server = await asyncio.start_server(backend._serve, host, port)
    backend.port = port
    return backend


def urls(gw: Gateway) -> list[str]:
    return [b["url"] for b in gw.backends()]


async def test_servers_follow_a_records_and_ttl_traffic_follows_in_flight_completes(
    dnsmasq: Dnsmasq, start_gateway: Callable[..., object]
) -> None:
    release = asyncio.Event()
    slow_started = asyncio.Event()

    async def first(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if req.target == "/slow":
            slow_started.set()
            await release.wait()
        writer.write(ok(b"one"))
        await writer.drain()
        return True

    one = await start_backend(first)
    two = await backend_on("127.0.0.2", one.port, b"two")
    dnsmasq.set("api.a3s.test", "127.0.0.1")
    gw = await start_gateway(hcl(dnsmasq.nameserver, one.port))  # type: ignore[operator]
    assert isinstance(gw, Gateway)
    port = gateway_port(gw)
    await until(lambda: urls(gw) == [f"http://127.0.0.1:{one.port}"])
    assert await body(port) == (200, b"one")
    svc = next(s for s in gw.services() if s["name"] == "s")
    assert svc["provider"] == "dns"
    kept = gw.runtime.services["s"].backends[0]  # type: ignore[union-attr]

    # a second address: the first backend keeps its live Backend (pool, health, in-flight count)
    dnsmasq.set("api.a3s.test", "127.0.0.1", "127.0.0.2")
    await until(lambda: len(urls(gw)) == 2)
    assert gw.runtime.services["s"].backends[0] is kept  # type: ignore[union-attr]
    seen = {(await body(port))[1] for _ in range(4)}
    assert seen == {b"one", b"two"}

    # an in-flight request on the first backend, then the record drops it: the request still completes
    slow = await Client.connect(port)
    slow.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(slow_started.wait(), 5)
    assert kept.load() == 1
    generation = gw.generation
    dnsmasq.set("api.a3s.test", "127.0.0.2")
    # refresh is 60 s: following the change within seconds is the 1 s TTL at work
    took = await until(lambda: urls(gw) == [f"http://127.0.0.2:{one.port}"])
    assert took < 4.0
    assert gw.generation == generation + 1
    assert {(await body(port))[1] for _ in range(4)} == {b"two"}
    release.set()
    resp = await slow.response()
    assert (resp.status, resp.body) == (200, b"one")
    slow.close()

    # NXDOMAIN empties the set: the service has no backend left
    dnsmasq.set("api.a3s.test")
    await until(lambda: urls(gw) == [])
    assert (await body(port))[0] == 503
    await two.stop()
    await one.stop()


async def test_server_failure_and_timeout_keep_the_last_set(
    dnsmasq: Dnsmasq, start_gateway: Callable[..., object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="a3s_gateway.providers")
    one = await start_backend()
    dnsmasq.set("api.a3s.test", "127.0.0.1")
    gw = await start_gateway(hcl(dnsmasq.nameserver, one.port, refresh="300ms"))  # type: ignore[operator]
    assert isinstance(gw, Gateway)
    await until(lambda: len(urls(gw)) == 1)
    provider = next(iter(gw._providers.running.values()))  # type: ignore[union-attr]
    # the server now refuses the name (a server failure to the resolver; without the refusal the missing record
    # would be NXDOMAIN): the set stays
    dnsmasq.set("api.a3s.test")
    dnsmasq.refused = ["api.a3s.test"]
    dnsmasq.restart()
    count = provider.resolutions
    await until(lambda: provider.resolutions >= count + 3)
    assert "server failure; keeping 1 server(s)" in caplog.text
    assert urls(gw) == [f"http://127.0.0.1:{one.port}"]
    assert (await body(gateway_port(gw)))[0] == 200
    # no server at all (refused or timed out, depending on the ICMP answer): the set stays
    dnsmasq.stop()
    count = provider.resolutions
    await until(lambda: provider.resolutions >= count + 2)
    assert urls(gw) == [f"http://127.0.0.1:{one.port}"]
    await one.stop()


async def test_srv_lowest_priority_with_weights_and_aaaa(
    dnsmasq: Dnsmasq, start_gateway: Callable[..., object]
) -> None:
    a = await start_backend()
    b = await start_backend()
    dnsmasq.srv = [f"_http._tcp.a3s.test,localhost,{a.port},1,3", f"_http._tcp.a3s.test,localhost,{b.port},1,0",
                   "_http._tcp.a3s.test,localhost,9,2,5"]  # priority 2: a fallback, not used
    dnsmasq.restart()
    srv = hcl(dnsmasq.nameserver, 80, name="_http._tcp.a3s.test", kind="SRV")
    gw = await start_gateway(srv)  # type: ignore[operator]
    assert isinstance(gw, Gateway)
    await until(lambda: len(urls(gw)) == 2)
    assert sorted((r["url"], r["weight"]) for r in gw.backends()) == sorted(
        [(f"http://localhost:{a.port}", 3), (f"http://localhost:{b.port}", 1)])
    assert (await body(gateway_port(gw)))[0] == 200

    dnsmasq.set("api6.a3s.test", "::1")
    v6 = await backend_on("::1", a.port, b"six")
    cfg = gw.config
    from a3s_gateway import GatewayConfig

    await gw.reload(GatewayConfig.from_hcl(hcl(dnsmasq.nameserver, a.port, name="api6.a3s.test", kind="AAAA")))
    assert cfg is not gw.config
    await until(lambda: urls(gw) == [f"http://[::1]:{a.port}"])
    assert await body(gateway_port(gw)) == (200, b"six")
    for backend in (a, b, v6):
        await backend.stop()
