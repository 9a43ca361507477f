"""Gradual rollout with automatic rollback (SPEC §8.7) through a real gateway: v1 → v2 in steps while v2 is healthy,
back to v1 within one interval when v2 fails or is slow; the state survives a reload with the same rollout block."""

from __future__ import annotations

import asyncio
import time

import pytest
from support import Client, Request, gateway_port, ok, start_backend

pytestmark = pytest.mark.timeout(60)


async def versioned(name: bytes, status: int = 200, delay: float = 0.0):  # type: ignore[no-untyped-def]
    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if delay:
            await asyncio.sleep(delay)
        if status == 200:
            w.write(ok(name))
        else:
            w.write(b"HTTP/1.1 %d E\r\nContent-Length: %d\r\n\r\n%s" % (status, len(name), name))
        return True

    return await start_backend(handler)


def rollout_config(v1: str, v2: str, extra: str = "", step: int = 30) -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "llm"
}}
services "llm" {{
  revisions = [
    {{ name = "v1", traffic_percent = 90, servers = [{{ url = "{v1}" }}] }},
    {{ name = "v2", traffic_percent = 10, servers = [{{ url = "{v2}" }}] }},
  ]
  rollout {{
    from                 = "v1"
    to                   = "v2"
    step_percent         = {step}
    step_interval_secs   = 1
    min_requests         = 3
    error_rate_threshold = 0.2
    latency_threshold_ms = 300
    {extra}
  }}
}}
'''


async def traffic(port: int, stop: asyncio.Event) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    c = await Client.connect(port)
    try:
        while not stop.is_set():
            r = await c.request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            counts[r.body] = counts.get(r.body, 0) + 1
            await asyncio.sleep(0.005)
    finally:
        c.close()
    return counts


async def run_until(gw, port: int, done, timeout: float) -> dict[bytes, int]:  # type: ignore[no-untyped-def]
    stop = asyncio.Event()
    clients = [asyncio.ensure_future(traffic(port, stop)) for _ in range(2)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        await asyncio.sleep(0.05)
    stop.set()
    total: dict[bytes, int] = {}
    for counts in await asyncio.gather(*clients):
        for k, v in counts.items():
            total[k] = total.get(k, 0) + v
    return total


def split(gw) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    revisions = {r.name: r.percent for r in gw.runtime.services["llm"].balancer.revisions}
    return revisions["v1"], revisions["v2"]


async def test_a_healthy_v2_takes_all_traffic_in_steps(start_gateway) -> None:
    v1, v2 = await versioned(b"v1"), await versioned(b"v2")
    gw = await start_gateway(rollout_config(v1.url, v2.url))
    rollout = gw.runtime.services["llm"].rollout
    seen: list[tuple[int, int]] = []

    def done() -> bool:
        if not seen or seen[-1] != split(gw):
            seen.append(split(gw))
        return rollout.state != "progressing"

    counts = await run_until(gw, gateway_port(gw), done, 20)
    assert rollout.state == "completed" and split(gw) == (0, 100)
    assert seen == [(90, 10), (60, 40), (30, 70), (0, 100)]  # 30-point steps, one per interval
    assert counts.get(b"v2", 0) > 0
    view = gw.services()[0]["rollout"]
    assert view["state"] == "completed" and view["step"] == 3 and view["to_percent"] == 100
    assert view["last_evaluation"]["decision"] == "complete" and view["next_evaluation"] is None
    text = gw.metrics()
    assert 'gateway_rollout_state{service="llm",state="completed"} 1.0' in text
    assert 'gateway_rollout_traffic_percent{revision="v2",service="llm"} 100.0' in text


@pytest.mark.parametrize("failure", ["errors", "slow"])
async def test_a_failing_v2_rolls_back_within_one_interval(start_gateway, failure: str) -> None:
    v1 = await versioned(b"v1")
    v2 = await versioned(b"v2", 500) if failure == "errors" else await versioned(b"v2", delay=0.4)
    gw = await start_gateway(rollout_config(v1.url, v2.url, step=10))
    rollout = gw.runtime.services["llm"].rollout
    t0 = time.monotonic()
    await run_until(gw, gateway_port(gw), lambda: rollout.state != "progressing", 20)
    assert rollout.state == "rolled_back" and split(gw) == (100, 0)
    # the first interval with enough samples decides: with 10 % of the traffic that is the first or second one
    assert time.monotonic() - t0 < 3.5
    last = gw.services()[0]["rollout"]["last_evaluation"]
    assert last["decision"] == "rollback" and last["requests"] >= 3
    if failure == "errors":
        assert last["error_rate"] == 1.0
    else:
        assert last["p99_ttfb_ms"] > 300
    # v2 gets nothing more
    counts = await run_until(gw, gateway_port(gw), lambda: False, 0.5)
    assert set(counts) == {b"v1"}


async def test_the_rollout_survives_a_reload_with_the_same_block_and_restarts_when_it_changes(start_gateway) -> None:
    v1, v2 = await versioned(b"v1"), await versioned(b"v2")
    hcl = rollout_config(v1.url, v2.url, step=20)
    gw = await start_gateway(hcl)
    rollout = gw.runtime.services["llm"].rollout
    await run_until(gw, gateway_port(gw), lambda: split(gw) != (90, 10), 10)
    assert split(gw) == (70, 30)
    from a3s_gateway import GatewayConfig

    await gw.reload(GatewayConfig.from_hcl(hcl.replace('"PathPrefix(`/`)"', '"PathPrefix(`/`) || Host(`x`)"'),
                                           filename="test.hcl"))
    assert gw.runtime.services["llm"].rollout is rollout and split(gw) == (70, 30)
    await gw.reload(GatewayConfig.from_hcl(hcl.replace("step_percent         = 20", "step_percent         = 50"),
                                           filename="test.hcl"))
    assert gw.runtime.services["llm"].rollout is not rollout and split(gw) == (90, 10)  # restarted from the config
