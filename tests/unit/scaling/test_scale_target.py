"""A scale target's replica count when the static servers stand in for Box's replicas (SPEC §8.2, §8.5)."""

from __future__ import annotations

import asyncio

from a3s_gateway.config.model import ScalingConfig, TransportConfig
from a3s_gateway.scaling.target import ScaleTarget
from a3s_gateway.service.health import HealthState

SERVERS = ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]


def target() -> ScaleTarget:
    return ScaleTarget("llm", "llm", ScalingConfig(buffer_enabled=True), [], {}, TransportConfig(),
                       asyncio.get_running_loop(), HealthState())


async def test_two_servers_standing_in_for_one_replica_are_one_replica() -> None:
    """Counted as two, the scale-down rate limit floor(2 / 2.0) = 1 would keep the target from reaching zero."""
    t = target()
    t.set_endpoints(SERVERS, 1)
    for backend in list(t.backends):
        t.mark_ready(backend)
    assert (t.ready_count(), t.replicas_ready()) == (2, 1)
    t.set_endpoints(SERVERS, 5)  # more replicas than servers: the servers are what is ready
    assert t.replicas_ready() == 2
    t.set_endpoints(SERVERS)  # one replica per endpoint (listed endpoints, or Box unreachable)
    assert t.replicas_ready() == 2


async def test_a_scale_up_behind_ready_servers_is_not_left_pending() -> None:
    """No readiness probe reports Box's second replica when the same servers stand in: the report ends the wait."""
    t = target()
    t.set_endpoints(SERVERS, 1)
    for backend in list(t.backends):
        t.mark_ready(backend)
    t.desired, t.scale_pending = 2, True
    assert t.urgent()
    t.set_endpoints(SERVERS, 2)
    assert not t.scale_pending


async def test_a_cold_start_stays_pending_until_a_server_is_ready() -> None:
    t = target()
    t.desired, t.scale_pending = 1, True
    t.set_endpoints(SERVERS, 1)  # Box runs a replica; the servers are probed first
    assert t.scale_pending and t.ready_count() == 0
    t.mark_ready(t.backends[0])
    assert not t.scale_pending and t.replicas_ready() == 1
