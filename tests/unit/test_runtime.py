"""State.carry and the frozen Runtime (runtime.py): what a reload keeps, renews and retires (SPEC §13.6 #5)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import pytest
from loops import Run

from a3s_gateway import GatewayConfig
from a3s_gateway.config.compile import build_runtime
from a3s_gateway.runtime import Retired, Runtime, State

HC = 'health_check { path = "/h"; interval = "10s" }\n passive { max_failures = 3 }'


def config(services: dict[str, str], middlewares: str = "", router_mws: str = "") -> GatewayConfig:
    """One entrypoint, router ``r`` to the first service, and ``services`` (name -> load_balancer body)."""
    text = 'entrypoints "web" { address = "127.0.0.1:0" }\n'
    first = next(iter(services))
    text += f'routers "r" {{ rule = "PathPrefix(`/`)"; service = "{first}"{router_mws} }}\n'
    for name, body in services.items():
        text += f'services "{name}" {{\n{body}\n}}\n'
    return GatewayConfig.from_hcl(text + middlewares)


def lb(url: str, extra: str = HC) -> str:
    return f'load_balancer {{\n servers = [{{ url = "{url}" }}]\n {extra}\n}}'


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def started(state: State, cfg: GatewayConfig, loop: asyncio.AbstractEventLoop) -> Runtime:
    runtime = build_runtime(cfg, loop, state, 1)
    state.carry(None, runtime)
    return runtime


def test_carry_keeps_the_pool_and_health_of_an_unchanged_service(loop: asyncio.AbstractEventLoop) -> None:
    state = State()
    old = started(state, config({"kept": lb("http://127.0.0.1:9001"), "changed": lb("http://127.0.0.1:9002"),
                                 "gone": lb("http://127.0.0.1:9003")}), loop)
    new = build_runtime(config({"kept": lb("http://127.0.0.1:9001"), "changed": lb("http://127.0.0.1:9004")}),
                        loop, state, 2)
    retired = state.carry(old, new)

    kept_old, kept_new = old.services["kept"], new.services["kept"]
    assert kept_new.pools["http://127.0.0.1:9001"] is kept_old.pools["http://127.0.0.1:9001"]
    assert kept_new.backends[0] is kept_old.backends[0]
    assert kept_new.checker is kept_old.checker is not None
    assert kept_new.passive is kept_old.passive is not None
    assert kept_new.backends[0].passive is kept_new.passive

    changed_old, changed_new = old.services["changed"], new.services["changed"]
    assert changed_new.checker is not changed_old.checker and changed_new.passive is not changed_old.passive
    assert [b.url for b in changed_new.backends] == ["http://127.0.0.1:9004"]
    # removed backends and services: pools closed, health checks handed back to be stopped
    assert changed_old.pools["http://127.0.0.1:9002"].closed
    assert old.services["gone"].pools["http://127.0.0.1:9003"].closed
    assert not kept_old.pools["http://127.0.0.1:9001"].closed
    assert set(map(id, retired.checkers)) == {id(changed_old.checker), id(old.services["gone"].checker)}
    assert set(map(id, retired.passives)) == {id(changed_old.passive), id(old.services["gone"].passive)}
    assert len(retired.mirrors) == 0 and retired.targets == []
    assert set(state.pools) == {"kept", "changed"}
    assert state.checks["kept"][1] is kept_new.checker
    assert state.health.service("gone") == [] and len(state.health.service("kept")) == 1


def test_carry_applies_a_new_weight_to_a_kept_backend(loop: asyncio.AbstractEventLoop) -> None:
    state = State()
    plain = 'load_balancer { servers = [{ url = "http://127.0.0.1:9001", weight = 1 }] }'
    old = started(state, config({"s": plain}), loop)
    new = build_runtime(config({"s": plain.replace("weight = 1", "weight = 5")}), loop, state, 2)
    backend = old.services["s"].backends[0]
    assert new.services["s"].backends[0] is backend and backend.weight == 1  # built, not yet swapped in
    state.carry(old, new)
    assert backend.weight == 5


def test_a_build_that_is_not_carried_changes_nothing_of_the_state(loop: asyncio.AbstractEventLoop) -> None:
    state = State()
    mws = 'middlewares "rl" { type = "rate-limit"; rate = 1; period = "10s"; burst = 2 }\n'
    old = started(state, config({"s": lb("http://127.0.0.1:9001")}, mws, '; middlewares = ["rl"]'), loop)
    pools, checks, instances = dict(state.pools), dict(state.checks), dict(state.middlewares)
    stats = dict(state.route_stats)
    build_runtime(config({"t": lb("http://127.0.0.1:9002")}, mws.replace("burst = 2", "burst = 3"),
                         '; middlewares = ["rl"]'), loop, state, 2)
    assert state.pools == pools and state.checks == checks and state.middlewares == instances
    assert state.route_stats == stats and ("r", "t") not in state.route_stats
    assert not old.services["s"].pools["http://127.0.0.1:9001"].closed


def test_carry_keeps_middleware_instances_while_their_configuration_is_unchanged(
    loop: asyncio.AbstractEventLoop,
) -> None:
    state = State()
    mws = ('middlewares "rl" { type = "rate-limit"; rate = 1; period = "10s"; burst = 2 }\n'
           'middlewares "cb" { type = "circuit-breaker"; failure_threshold = 2 }\n')
    use = '; middlewares = ["rl", "cb"]'
    old = started(state, config({"s": lb("http://127.0.0.1:9001")}, mws, use), loop)
    new = build_runtime(config({"s": lb("http://127.0.0.1:9001")}, mws.replace("burst = 2", "burst = 9"), use),
                        loop, state, 2)
    retired = state.carry(old, new)
    assert new.middlewares[("r", "cb")][1] is old.middlewares[("r", "cb")][1]
    assert new.middlewares[("r", "rl")][1] is not old.middlewares[("r", "rl")][1]
    assert retired.middlewares == [old.middlewares[("r", "rl")][1]]
    assert state.middlewares[("r", "rl")][1] is new.middlewares[("r", "rl")][1]


def test_route_stats_of_removed_routers_stay_in_the_state(loop: asyncio.AbstractEventLoop) -> None:
    state = State()
    old = started(state, config({"s": lb("http://127.0.0.1:9001")}), loop)
    stats = old.route_stats[("r", "s")]
    new = build_runtime(config({"t": lb("http://127.0.0.1:9001")}), loop, state, 2)
    state.carry(old, new)
    assert state.route_stats[("r", "s")] is stats and new.route_stats[("r", "s")] is stats
    assert ("r", "t") in state.route_stats


def test_the_runtime_is_frozen_and_links_failover_and_mirror(loop: asyncio.AbstractEventLoop) -> None:
    state = State()
    a = lb("http://127.0.0.1:9001", "") + '\n failover { service = "b" }\n mirror { service = "b"; percentage = 50 }'
    b = lb("http://127.0.0.1:9002", "") + '\n mirror { service = "a"; percentage = 50 }'
    runtime = started(state, config({"a": a, "b": b}), loop)
    sa, sb = runtime.services["a"], runtime.services["b"]
    assert sa.failover is sb and sb.failover is None
    assert sa.mirror is not None and sa.mirror.target is sb
    assert sb.mirror is not None and sb.mirror.target is sa
    with pytest.raises(dataclasses.FrozenInstanceError):
        runtime.generation = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sa.failover = None  # type: ignore[misc]


def probing() -> set[str]:
    """Names of the running health-check tasks ("health-check <service> <url>")."""
    return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("health-check") and not t.done()}


def test_a_kept_checker_keeps_probing_and_retired_ones_stop(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = State()
        old = started(state, config({"kept": lb("http://127.0.0.1:9"), "gone": lb("http://127.0.0.1:9")}), loop)
        State.start(old)
        await asyncio.sleep(0)
        assert probing() == {"health-check kept http://127.0.0.1:9", "health-check gone http://127.0.0.1:9"}
        new = build_runtime(config({"kept": lb("http://127.0.0.1:9")}), loop, state, 2)
        retired = state.carry(old, new)
        State.start(new)
        await retired.close()
        assert probing() == {"health-check kept http://127.0.0.1:9"}
        await state.close(new).close()
        assert probing() == set()
        assert new.services["kept"].pools["http://127.0.0.1:9"].closed

    run(main())


def test_retired_close_logs_a_failure_and_closes_the_rest(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []

    class Closing:
        def __init__(self, name: str, fail: bool = False) -> None:
            self.name, self.fail = name, fail

        async def close(self) -> None:
            closed.append(self.name)
            if self.fail:
                raise OSError("boom")

    retired = Retired(middlewares=[Closing("mw", fail=True)], targets=[Closing("target")],  # type: ignore[list-item]
                      mirrors=[Closing("mirror")])  # type: ignore[list-item]
    run(retired.close())
    assert sorted(closed) == ["mirror", "mw", "target"]
    assert "OSError('boom')" in caplog.text
