"""Backend health (SPEC §7.1, §7.3, §7.4): passive ejection under a fake clock, active thresholds with an injected
probe, the eligibility both compose, state across reloads, and the real HTTP/TCP probes against local servers."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from http_stub import Seen, Stub, response

from a3s_gateway import __version__
from a3s_gateway.config.model import HealthCheckConfig, PassiveConfig
from a3s_gateway.service.balancer import Backend
from a3s_gateway.service.health import (
    ActiveChecker,
    HealthState,
    PassiveHealth,
    Prober,
    ProbeResult,
    tcp_probe,
)

PASSIVE = PassiveConfig(max_failures=5, window=30.0, ejection=10.0)


def passive(state: HealthState | None = None, cfg: PassiveConfig = PASSIVE) -> tuple[PassiveHealth, Backend]:
    return PassiveHealth("s", cfg, state if state is not None else HealthState()), Backend("http://10.0.0.1:8080")


def eject(ph: PassiveHealth, b: Backend, now: float) -> None:
    for i in range(PASSIVE.max_failures):
        ph.record(b, True, now + i * 0.1)


# --- passive ---------------------------------------------------------------------------------------------------


def test_five_failures_within_window_eject() -> None:
    ph, b = passive()
    for t in (0.0, 1.0, 2.0, 3.0):
        ph.record(b, True, t)
        ph.record(b, False, t + 0.5)  # successes do not reset the count
    assert b.eligible
    ph.record(b, True, 29.9)
    assert not b.eligible
    h = ph.state.get("s", b)
    assert h.ejected and h.ejections == 1 and h.ejected_until == pytest.approx(39.9)


def test_failures_spread_wider_than_window_do_not_eject() -> None:
    ph, b = passive()
    for i in range(20):
        ph.record(b, True, i * 7.5)  # 5 consecutive failures span exactly 30 s: never 5 within the window
    assert b.eligible
    assert not ph.state.get("s", b).ejected


def test_ejection_grows_with_n_capped_at_ten() -> None:
    ph, b = passive()
    eject(ph, b, 0.0)
    h = ph.state.get("s", b)
    now = h.ejected_until
    lengths = []
    for _ in range(12):
        assert ph.expire(now - 0.001) == []
        assert ph.expire(now) == [b]
        ph.readmitted(b, False, now)
        assert not b.eligible
        lengths.append(h.ejected_until - now)
        now = h.ejected_until
    assert lengths == [pytest.approx(n * 10.0) for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10)]


def test_readmission_ok_makes_eligible_then_reejection_is_longer() -> None:
    ph, b = passive()
    eject(ph, b, 0.0)
    h = ph.state.get("s", b)
    assert ph.expire(5.0) == []
    assert ph.expire(10.4) == [b]
    ph.readmitted(b, True, 10.4)
    assert b.eligible and not h.ejected
    assert ph.expire(11.0) == []
    eject(ph, b, 12.0)  # within a window of the re-admission: the next ejection is the 2nd
    assert not b.eligible
    assert h.ejections == 2
    assert h.ejected_until == pytest.approx(12.4 + 20.0)


def test_n_resets_after_a_clean_window() -> None:
    ph, b = passive()
    eject(ph, b, 0.0)
    ph.readmitted(b, False, 10.4)  # 2nd ejection
    h = ph.state.get("s", b)
    ph.readmitted(b, True, 40.0)
    ph.record(b, False, 69.0)  # a success, less than a window after re-admission
    assert h.ejections == 2
    ph.record(b, False, 70.0)  # a whole window eligible without ejection: n back to 1
    assert h.ejections == 0
    eject(ph, b, 71.0)
    assert h.ejections == 1
    assert h.ejected_until == pytest.approx(71.4 + 10.0)


def test_no_traffic_after_readmission_still_resets_n() -> None:
    ph, b = passive()
    eject(ph, b, 0.0)
    ph.readmitted(b, False, 10.4)
    ph.readmitted(b, True, 40.0)
    eject(ph, b, 500.0)  # first call long after a clean window
    assert ph.state.get("s", b).ejected_until == pytest.approx(500.4 + 10.0)


def test_outcomes_while_ejected_are_ignored_and_count_restarts() -> None:
    ph, b = passive()
    eject(ph, b, 0.0)
    for t in range(5):
        ph.record(b, True, 1.0 + t)
    ph.readmitted(b, True, 10.4)
    for t in range(4):
        ph.record(b, True, 11.0 + t)  # the pre-ejection failures are gone: 4 are not enough
    assert b.eligible


def test_readmitted_is_a_noop_when_not_ejected() -> None:
    ph, b = passive()
    ph.readmitted(b, False, 1.0)
    assert b.eligible and ph.state.get("s", b).ejections == 0


def test_eligibility_composes_active_and_passive() -> None:
    state = HealthState()
    ph, b = passive(state)
    checker = ActiveChecker("s", [b], HealthCheckConfig(path="/h", unhealthy_threshold=1), state)
    eject(ph, b, 0.0)
    checker.observe(b, True)  # active healthy does not re-admit an ejected backend
    assert not b.eligible
    checker.observe(b, "status 500")  # active down while ejected
    ph.readmitted(b, True, 11.0)  # passive clears, active still down
    assert not b.eligible
    checker.observe(b, True)
    assert b.eligible


def test_state_survives_new_backend_objects_and_forget() -> None:
    state = HealthState()
    ph, b = passive(state)
    eject(ph, b, 0.0)
    b2 = Backend(b.url)  # a reload builds new objects
    state.attach("s", [b2])
    assert not b2.eligible
    ph2 = PassiveHealth("s", PASSIVE, state)
    assert ph2.expire(100.0) == [b2]
    other = Backend("http://10.0.0.2:80")
    state.get("t", other)
    state.forget_except({("t", other.url)})
    assert len(state) == 1
    b3 = Backend(b.url)
    assert state.get("s", b3).ejections == 0 and b3.eligible


async def test_passive_task_runs_readmission_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("a3s_gateway.service.health.EXPIRE_PERIOD", 0.01)
    probed: list[Backend] = []
    answers = [False, True]

    async def probe(backend: Backend) -> bool:
        probed.append(backend)
        return answers.pop(0)

    cfg = PassiveConfig(max_failures=2, window=30.0, ejection=0.02)
    ph = PassiveHealth("s", cfg, HealthState(), readmit_probe=probe)
    b = Backend("http://10.0.0.1:8080")
    now = asyncio.get_running_loop().time()
    ph.record(b, True, now)
    ph.record(b, True, now)
    assert not b.eligible
    ph.start()
    try:
        for _ in range(200):
            if b.eligible:
                break
            await asyncio.sleep(0.01)
    finally:
        await ph.close()
    assert b.eligible and probed == [b, b]
    assert ph.state.get("s", b).ejections == 2


async def test_passive_default_readmit_probe_fails_on_closed_port(closed_port: int) -> None:
    ph = PassiveHealth("s", PassiveConfig(max_failures=1, ejection=0.01), HealthState())
    b = Backend(f"http://127.0.0.1:{closed_port}")
    ph.record(b, True, 0.0)
    await ph._readmit(b)
    assert not b.eligible and ph.state.get("s", b).ejections == 2


# --- active (injected probe) -----------------------------------------------------------------------------------


class Scripted:
    """A probe answering from a per-URL script (the last answer repeats); records the calls."""

    def __init__(self, script: dict[str, list[ProbeResult]]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def __call__(self, backend: Backend, cfg: HealthCheckConfig) -> ProbeResult:
        self.calls.append(backend.url)
        answers = self.script[backend.url]
        return answers.pop(0) if len(answers) > 1 else answers[0]


async def wait_for(cond: object, timeout: float = 2.0) -> None:
    assert callable(cond)
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


FAST = HealthCheckConfig(path="/h", interval=0.01, timeout=0.01, unhealthy_threshold=3, healthy_threshold=2)


async def test_thresholds_both_ways(caplog: pytest.LogCaptureFixture) -> None:
    b = Backend("http://10.0.0.1:80")
    probe = Scripted({b.url: [True, "connection refused", "connection refused", True, "connection refused",
                              "connection refused", "connection refused", True, "x", True, True]})
    checker = ActiveChecker("s", [b], FAST, HealthState(), probe=probe, rng=lambda: 0.0)
    seen: list[bool] = []
    orig = checker.observe

    def observe(backend: Backend, result: ProbeResult) -> None:
        orig(backend, result)
        seen.append(backend.eligible)

    checker.observe = observe  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="a3s_gateway.health"):
        checker.start()
        await wait_for(lambda: len(seen) >= 11)
        await checker.close()
    # down only at the 3rd consecutive failure; up only at the 2nd consecutive success
    assert seen[:11] == [True, True, True, True, True, True, False, False, False, False, True]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "backend http://10.0.0.1:80 of service s is down (3 consecutive failed probes: connection refused)",
        "backend http://10.0.0.1:80 of service s is up (2 consecutive successful probes)",
    ]


async def test_first_probe_at_start_then_random_offset() -> None:
    b1, b2 = Backend("http://10.0.0.1:80"), Backend("http://10.0.0.2:80")
    probe = Scripted({b1.url: [True], b2.url: [True]})
    cfg = HealthCheckConfig(path="/h", interval=10.0, timeout=1.0)
    draws: list[float] = []

    def rng() -> float:
        draws.append(0.5)
        return 0.5

    checker = ActiveChecker("s", [b1, b2], cfg, HealthState(), probe=probe, rng=rng)
    checker.start()
    await wait_for(lambda: len(probe.calls) == 2)
    await asyncio.sleep(0.05)
    assert sorted(probe.calls) == [b1.url, b2.url]  # once each at once; the next ones are ≥ 5 s away
    assert draws == [0.5, 0.5]
    await checker.close()
    assert checker._tasks == []


async def test_close_cancels_cleanly_even_mid_probe() -> None:
    b = Backend("http://10.0.0.1:80")
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hang(backend: Backend, cfg: HealthCheckConfig) -> ProbeResult:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return True

    checker = ActiveChecker("s", [b], FAST, HealthState(), probe=hang)
    checker.start()
    await started.wait()
    tasks = list(checker._tasks)
    await checker.close()
    assert cancelled.is_set() and all(t.done() for t in tasks)
    assert b.eligible  # a cancelled probe is not a failure
    await checker.close()  # idempotent


async def test_close_ends_a_checker_whose_probe_lost_the_cancellation() -> None:
    # Python 3.11's wait_for can return a result instead of raising CancelledError when the cancel lands as the
    # inner call completes; the probe loop then carries on. close() must still end it (CI hung here once).
    b = Backend("http://10.0.0.1:80")
    started = asyncio.Event()
    swallowed = 0

    async def loses_one_cancel(backend: Backend, cfg: HealthCheckConfig) -> ProbeResult:
        nonlocal swallowed
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallowed:
                raise
            swallowed += 1
        return True

    checker = ActiveChecker("s", [b], FAST, HealthState(), probe=loses_one_cancel)
    checker.start()
    await started.wait()
    tasks = list(checker._tasks)
    await asyncio.wait_for(checker.close(), 5)
    assert swallowed == 1 and all(t.done() for t in tasks)


async def test_probe_exception_counts_as_failure() -> None:
    b = Backend("http://10.0.0.1:80")

    async def broken(backend: Backend, cfg: HealthCheckConfig) -> ProbeResult:
        raise RuntimeError("boom")

    checker = ActiveChecker("s", [b], FAST, HealthState(), probe=broken)
    checker.start()
    await wait_for(lambda: not b.eligible)
    await checker.close()


async def test_state_survives_a_new_checker() -> None:
    state = HealthState()
    b = Backend("http://10.0.0.1:80")
    cfg = HealthCheckConfig(path="/h", interval=0.01, timeout=0.01, unhealthy_threshold=1, healthy_threshold=3)
    down = Scripted({b.url: ["status 503"]})
    checker = ActiveChecker("s", [b], cfg, state, probe=down)
    checker.start()
    await wait_for(lambda: not b.eligible)
    await checker.close()

    b2 = Backend(b.url)  # reload: new objects, same (service, URL)
    gate = asyncio.Event()
    calls = 0

    async def up(backend: Backend, c: HealthCheckConfig) -> ProbeResult:
        nonlocal calls
        calls += 1
        if calls >= 2:
            await gate.wait()
        return True

    checker2 = ActiveChecker("s", [b2], cfg, state, probe=up)
    assert not b2.eligible  # inherits "down" before any probe
    checker2.start()
    await wait_for(lambda: calls >= 2)
    assert not b2.eligible and state.get("s", b2).successes == 1  # needs 3 successes
    gate.set()
    await wait_for(lambda: b2.eligible)
    await checker2.close()
    assert state.get("s", b2).backend is b2


# --- real probes -----------------------------------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_http_probe_statuses_and_headers() -> None:
    status = {"/app/healthz": 204, "/app/bad": 500, "/app/teapot": 418}

    def respond(seen: Seen) -> bytes:
        return response(status[seen.target.decode()])

    prober = Prober()
    async with Stub(respond) as stub:
        b = Backend(f"http://127.0.0.1:{stub.port}/app/")
        assert await prober(b, HealthCheckConfig(path="/healthz", timeout=2.0)) is True
        assert await prober(b, HealthCheckConfig(path="/bad", timeout=2.0)) == "status 500"
        assert await prober(b, HealthCheckConfig(path="/teapot", timeout=2.0)) == "status 418"
        assert await prober(b, HealthCheckConfig(path="/teapot", timeout=2.0, expected_status=(418,))) is True
        assert await prober(b, HealthCheckConfig(path="/healthz", timeout=2.0, expected_status=(418,))) == (
            "status 204"
        )
    seen = stub.seen[0]
    assert seen.method == b"GET" and seen.target == b"/app/healthz"
    assert seen.get(b"host") == f"127.0.0.1:{stub.port}".encode() == b.host_header.encode()
    assert seen.get(b"user-agent") == f"a3s-gateway/{__version__}".encode()


async def test_http_probe_timeout_fails() -> None:
    async def slow(seen: Seen) -> bytes:
        await asyncio.sleep(5)
        return response(200)

    async with Stub(slow) as stub:
        b = Backend(f"http://127.0.0.1:{stub.port}")
        result = await Prober()(b, HealthCheckConfig(path="/h", timeout=0.05))
    assert result == "timed out after 0.05s"


async def test_http_probe_connection_refused(closed_port: int) -> None:
    b = Backend(f"http://127.0.0.1:{closed_port}")
    assert await Prober()(b, HealthCheckConfig(path="/h", timeout=1.0)) == "connection refused"


async def test_tcp_probe(closed_port: int) -> None:
    assert await tcp_probe(Backend(f"tcp://127.0.0.1:{closed_port}"), 1.0) == "connection refused"
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = HealthCheckConfig(path=None, timeout=1.0)
        assert await Prober()(Backend(f"tcp://127.0.0.1:{port}"), cfg) is True
        assert await Prober()(Backend(f"http://127.0.0.1:{port}"), cfg) is True  # no path: TCP connect
        assert await Prober()(Backend(f"tcp://127.0.0.1:{closed_port}"), cfg) == "connection refused"
    finally:
        server.close()
        await server.wait_closed()


async def test_checker_with_real_probe_marks_down_and_up() -> None:
    healthy = {"ok": False}

    def respond(seen: Seen) -> bytes:
        return response(200 if healthy["ok"] else 503)

    async with Stub(respond) as stub:
        b = Backend(f"http://127.0.0.1:{stub.port}")
        cfg = HealthCheckConfig(path="/h", interval=0.02, timeout=0.5, unhealthy_threshold=2, healthy_threshold=1)
        checker = ActiveChecker("s", [b], cfg, HealthState())
        checker.start()
        try:
            await wait_for(lambda: not b.eligible)
            healthy["ok"] = True
            await wait_for(lambda: b.eligible)
        finally:
            await checker.close()
