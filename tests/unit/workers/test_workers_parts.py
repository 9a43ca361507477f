"""The pieces of the supervisor/worker model (SPEC §13.4) that need no processes: the merge of worker metric
snapshots, the segment layout and its bookkeeping for dead workers, the control channel, a failed commit."""

from __future__ import annotations

import asyncio
import socket
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from a3s_gateway import segment
from a3s_gateway.config.model import GatewayConfig
from a3s_gateway.service.balancer import Backend, LeastConnectionsBalancer
from a3s_gateway.workers.aggregate import families, merge
from a3s_gateway.workers.channel import Channel, ChannelClosed
from a3s_gateway.workers.shared import Layout, attach


def _worker(requests: float, breaker: float, up: float) -> list[Any]:
    c = CounterMetricFamily("gateway_requests", "Completed.", labels=["router", "code"])
    c.add_metric(["r", "200"], requests)
    h = HistogramMetricFamily("gateway_request_duration_seconds", "Duration.", labels=["router"])
    h.add_metric(["r"], [("0.1", requests), ("+Inf", requests)], requests * 0.01)
    b = GaugeMetricFamily("gateway_circuit_breaker_state", "State.", labels=["router"])
    b.add_metric(["r"], breaker)
    u = GaugeMetricFamily("gateway_backend_up", "Up.", labels=["backend"])
    u.add_metric(["x"], up)
    return families([c, h, b, u])


def test_merge_sums_counters_and_histograms_takes_the_most_open_breaker_and_the_supervisor_s_health() -> None:
    own = GaugeMetricFamily("gateway_backend_up", "Up.", labels=["backend"])
    own.add_metric(["x"], 1)
    local_requests = CounterMetricFamily("gateway_requests", "Completed.", labels=["router", "code"])
    merged = {m.name: m for m in merge([own, local_requests], [_worker(3, 0, 0), _worker(4, 1, 0)])}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in merged.values() for s in m.samples}
    assert samples[("gateway_requests_total", (("code", "200"), ("router", "r")))] == 7
    assert samples[("gateway_request_duration_seconds_count", (("router", "r"),))] == 7
    assert samples[("gateway_request_duration_seconds_bucket", (("le", "+Inf"), ("router", "r")))] == 7
    assert samples[("gateway_request_duration_seconds_sum", (("router", "r"),))] == pytest.approx(0.07)
    assert samples[("gateway_circuit_breaker_state", (("router", "r"),))] == 1
    assert samples[("gateway_backend_up", (("backend", "x"),))] == 1  # the supervisor's, not the workers' zeros
    assert list(merged) == ["gateway_backend_up", "gateway_requests", "gateway_request_duration_seconds",
                            "gateway_circuit_breaker_state"]


class _Mw:
    kind = "rate-limit"

    def __init__(self) -> None:
        self.shared: tuple[Any, int, int] | None = None

    def share(self, seg: Any, table: int, capacity: int) -> None:
        self.shared = (seg, table, capacity)


class _Cfg:
    def __init__(self, max_keys: int) -> None:
        self.params = {"max_keys": max_keys}

    def __repr__(self) -> str:
        return f"_Cfg({self.params})"


class _Svc:
    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends


class _Runtime:
    def __init__(self, backends: list[Backend], mws: dict[tuple[str, str], tuple[Any, Any]]) -> None:
        self.services = {"s": _Svc(backends)}
        self.middlewares = mws


def test_layout_gives_every_backend_and_rate_limit_one_place_and_keeps_it() -> None:
    seg = segment.create(16 * 1024 * 1024)
    try:
        layout = Layout(2, seg.words)
        a, b = Backend("http://a:1"), Backend("http://b:1")
        mw = _Mw()
        runtime: Any = _Runtime([a, b], {("r", "limit"): (_Cfg(100), mw)})
        assert layout.allocate(runtime) is True
        assert layout.allocate(runtime) is False  # nothing new
        slot_a = layout.slots[("s", "http://a:1")]
        assert layout.slots[("s", "http://b:1")] == slot_a + layout.stride
        table, capacity = next(iter(layout.tables.values()))
        assert capacity == 128 and table >= slot_a + 2 * layout.stride
        # a worker (index 0) and another (index 1) attach their own Backend objects for the same backend
        w0, w1 = Backend("http://a:1"), Backend("http://a:1")
        attach(_Runtime([w0], {("r", "limit"): (_Cfg(100), mw)}), seg, layout.message(), 0)  # type: ignore[arg-type]
        attach(_Runtime([w1], {}), seg, layout.message(), 1)  # type: ignore[arg-type]
        assert mw.shared == (seg, table, capacity)
        w0.acquire()
        w0.acquire()
        w1.acquire()
        assert w0.load() == w1.load() == 3 and w0.in_flight == 2
        # least-connections in the second worker sees the first worker's requests
        other = Backend("http://b:1")
        attach(_Runtime([other], {}), seg, layout.message(), 1)  # type: ignore[arg-type]
        assert LeastConnectionsBalancer([w1, other]).pick() is other
        # worker 0 dies with 2 in flight: they leave the total, worker 1's stays
        layout.forget_worker(seg, 0)
        assert w1.load() == 1
        w1.release()
        assert w1.load() == 0
    finally:
        seg.close()


def test_a_backend_counted_before_it_is_shared_moves_its_count() -> None:
    seg = segment.create(1024 * 1024)
    try:
        b = Backend("http://a:1")
        b.acquire()
        b.share(seg, 8, 9)
        assert seg.get(8) == 1 and seg.get(9) == 1 and b.load() == 1
        b.release()
        assert seg.get(8) == 0 and b.load() == 0 and b.in_flight == 0
    finally:
        seg.close()


async def test_channel_calls_replies_messages_and_the_end() -> None:
    left, right = socket.socketpair()
    a, b = await Channel.open(left), await Channel.open(right)
    seen: list[dict[str, Any]] = []

    def answer(message: dict[str, Any]) -> None:
        seen.append(message)
        if message["op"] == "ping":
            b.reply(message, True, config=message["config"])

    serving = asyncio.ensure_future(b.serve(answer))
    reading = asyncio.ensure_future(a.serve(lambda m: None))
    config = GatewayConfig.from_hcl('entrypoints "web" { address = "127.0.0.1:0" }\n')
    assert isinstance(config.locations, MappingProxyType)
    reply = await a.call({"op": "ping", "config": config}, 5)
    assert reply["ok"] is True and reply["config"] == config  # frozen configurations cross the channel
    a.send({"op": "note", "n": 1})
    await asyncio.sleep(0.05)
    assert [m["op"] for m in seen] == ["ping", "note"]
    b.close()
    await asyncio.wait_for(reading, 5)
    with pytest.raises(ChannelClosed):
        await a.call({"op": "ping", "config": config}, 5)
    serving.cancel()
    a.close()


async def test_a_worker_that_cannot_commit_is_killed_for_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    from a3s_gateway.workers import supervisor as sup

    class FakeChannel:
        async def call(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
            return {"ok": False, "error": "generation 2 was not prepared"}

    class FakeProcess:
        pid = 4242
        killed = False

        def kill(self) -> None:
            self.killed = True

    config = GatewayConfig.from_hcl('entrypoints "web" { address = "127.0.0.1:0" }\n')
    s = sup.Supervisor(config, 2)
    try:
        proc = FakeProcess()
        worker = sup.WorkerProcess(0, proc, FakeChannel(), 0.0)  # type: ignore[arg-type]
        s.workers[0] = worker
        await s.commit(2)
        assert proc.killed
    finally:
        s.segment.close()
