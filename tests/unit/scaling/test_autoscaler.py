"""Autoscaler (SPEC §8.2): the rules of ``desired_replicas`` as a table, and traces of ``Autoscaler`` on a fake clock
(samples every 1 s, ticks every 2 s, time as plain floats)."""

from __future__ import annotations

import pytest

from a3s_gateway.config.model import ScalingConfig
from a3s_gateway.scaling.autoscaler import (
    Autoscaler,
    Decision,
    SampleWindow,
    desired_replicas,
    target_concurrency,
)

# τ = 1: one in-flight request per replica, so averages read directly as replica counts
TAU1 = ScalingConfig(container_concurrency=1, target_utilization=1.0, max_replicas=100)


def drive(a: Autoscaler, start: int, end: int, load: int, ready: int, queued: int = 0) -> dict[int, Decision]:
    """Sample ``load`` in flight at every second in (start, end]; tick at every even second; decisions by tick."""
    out: dict[int, Decision] = {}
    for t in range(start + 1, end + 1):
        a.record(float(t), load, queued)
        if t % 2 == 0:
            out[t] = a.decide(float(t), ready, queued)
    return out


# --- desired_replicas: one row per rule ------------------------------------------------------------------------

CASES = [
    # id, cfg, S, P, ready, previous, panic, queued, idle_for, expected
    ("stable ceil", TAU1, 3.2, 3.2, 0, 0, False, 0, 0.0, 4),
    ("stable exact", TAU1, 3.0, 3.0, 3, 3, False, 0, 0.0, 3),
    ("stable float noise 2.1/0.7 is 3", ScalingConfig(container_concurrency=1), 2.1, 2.1, 3, 3, False, 0, 0.0, 3),
    ("steady 10 / 0.7 = 15 clamped to max 10", ScalingConfig(container_concurrency=1), 10.0, 10.0, 10, 10, False, 0,
     0.0, 10),
    ("cc=0 uses 100 x util", ScalingConfig(target_utilization=0.5), 120.0, 120.0, 2, 2, False, 0, 0.0, 3),
    ("not in panic ignores P", TAU1, 1.0, 40.0, 1, 1, False, 0, 0.0, 1),
    ("panic uses D_panic", TAU1, 1.0, 14.2, 5, 5, True, 0, 0.0, 15),
    ("panic never scales down", TAU1, 1.0, 2.0, 6, 9, True, 0, 0.0, 9),
    ("panic with no samples keeps previous", TAU1, None, None, 4, 7, True, 0, 0.0, 7),
    ("scale-up rate caps at ceil(rate x R)", ScalingConfig(container_concurrency=1, target_utilization=1.0,
     max_replicas=100, max_scale_up_rate=2.0), 20.0, 20.0, 3, 3, False, 0, 0.0, 6),
    ("scale-up rate fractional ceil", ScalingConfig(container_concurrency=1, target_utilization=1.0,
     max_replicas=100, max_scale_up_rate=1.5), 20.0, 20.0, 3, 3, False, 0, 0.0, 5),
    ("scale-up rate applies in panic too", ScalingConfig(container_concurrency=1, target_utilization=1.0,
     max_replicas=100, max_scale_up_rate=2.0), 1.0, 50.0, 1, 1, True, 0, 0.0, 2),
    ("no rate limits when R = 0", ScalingConfig(container_concurrency=1, target_utilization=1.0,
     max_replicas=100, max_scale_up_rate=2.0), 20.0, 20.0, 0, 0, False, 0, 0.0, 20),
    ("scale-down rate floors at floor(R / rate)", TAU1, 1.0, 1.0, 8, 8, False, 0, 0.0, 4),
    ("scale-down rate floor of 2.5 is 2", TAU1, 0.0, 0.0, 5, 5, False, 0, 0.0, 2),
    ("scale-down rate 4", ScalingConfig(container_concurrency=1, target_utilization=1.0, max_replicas=100,
     max_scale_down_rate=4.0), 0.0, 0.0, 10, 10, False, 0, 0.0, 2),
    ("max clamp", ScalingConfig(container_concurrency=1, target_utilization=1.0, max_replicas=4), 9.0, 9.0, 4, 4,
     False, 0, 0.0, 4),
    ("max clamp beats the scale-down rate", ScalingConfig(container_concurrency=1, target_utilization=1.0,
     max_replicas=3), 0.0, 0.0, 10, 10, False, 0, 0.0, 3),
    ("min clamp", ScalingConfig(container_concurrency=1, target_utilization=1.0, min_replicas=3), 0.0, 0.0, 3, 3,
     False, 0, 1000.0, 3),
    ("activation: queued and desired 0", TAU1, None, None, 0, 0, False, 2, 1000.0, 1),
    ("no activation without queued", TAU1, None, None, 0, 0, False, 0, 1000.0, 0),
    ("scale-to-zero held before the delay", TAU1, 0.0, 0.0, 1, 1, False, 0, 299.9, 1),
    ("scale-to-zero at exactly the delay", TAU1, 0.0, 0.0, 1, 1, False, 0, 300.0, 0),
    ("scale-to-zero delay 0", ScalingConfig(container_concurrency=1, target_utilization=1.0,
     scale_down_delay_secs=0.0), 0.0, 0.0, 1, 1, False, 0, 0.0, 0),
    ("delay holds a ready replica nobody asked for", TAU1, 0.0, 0.0, 1, 0, False, 0, 10.0, 1),
    ("delay holds a requested replica not yet ready", TAU1, 0.0, 0.0, 0, 1, False, 0, 10.0, 1),
    ("already at zero stays at zero", TAU1, 0.0, 0.0, 0, 0, False, 0, 10.0, 0),
    ("None averages count as 0", TAU1, None, None, 2, 2, False, 0, 0.0, 1),
]


@pytest.mark.parametrize(
    ("cfg", "stable", "panic_avg", "ready", "previous", "panic", "queued", "idle_for", "expected"),
    [pytest.param(*row[1:], id=str(row[0])) for row in CASES],
)
def test_desired_replicas(
    cfg: ScalingConfig,
    stable: float | None,
    panic_avg: float | None,
    ready: int,
    previous: int,
    panic: bool,
    queued: int,
    idle_for: float,
    expected: int,
) -> None:
    assert desired_replicas(cfg, stable, panic_avg, ready, previous, panic, queued, idle_for) == expected


@pytest.mark.parametrize(
    ("cc", "util", "tau"),
    [(0, 0.7, 70.0), (0, 1.0, 100.0), (1, 0.7, 0.7), (10, 0.5, 5.0), (4, 1.0, 4.0)],
)
def test_tau(cc: int, util: float, tau: float) -> None:
    cfg = ScalingConfig(container_concurrency=cc, target_utilization=util)
    assert target_concurrency(cfg) == pytest.approx(tau)
    assert Autoscaler(cfg, 0.0).tau == pytest.approx(tau)


# --- SampleWindow ----------------------------------------------------------------------------------------------


def test_window_empty_mean_is_none() -> None:
    w = SampleWindow(60.0)
    assert len(w) == 0
    assert w.mean(10.0, 60.0) is None


def test_window_drops_samples_older_than_horizon() -> None:
    w = SampleWindow(60.0)
    for t in range(1, 101):
        w.add(float(t), float(t))
    assert len(w) == 60  # t = 41..100; t = 40 is exactly 60 s old and out
    assert w.mean(100.0, 60.0) == pytest.approx(sum(range(41, 101)) / 60)
    assert w.mean(100.0, 6.0) == pytest.approx(sum(range(95, 101)) / 6)


def test_window_mean_of_available_samples() -> None:
    w = SampleWindow(60.0)
    w.add(1.0, 3.0)
    w.add(2.0, 5.0)
    assert w.mean(2.0, 60.0) == 4.0  # two samples, not divided by 60
    assert w.mean(2.0, 1.0) == 5.0  # only t = 2 is within (1, 2]
    assert w.mean(8.0, 6.0) is None  # both are 6 s or older at t = 8


# --- Autoscaler traces -----------------------------------------------------------------------------------------


def test_steady_load_clamped_to_max() -> None:
    a = Autoscaler(ScalingConfig(container_concurrency=1, target_utilization=0.7), 0.0)
    assert a.desired == 0
    out = drive(a, 0, 120, load=10, ready=10)
    last = out[120]
    assert last.desired == 10 and a.desired == 10
    assert not last.panic and not a.panic  # 10/0.7 = 14.3 < 2 x 10
    assert last.stable_avg == 10.0 and last.panic_avg == 10.0
    assert last.reason == "stable 10.0/0.7 -> 15; max_replicas -> 10"


def test_mean_of_available_samples_soon_after_start() -> None:
    a = Autoscaler(TAU1, 0.0)
    a.record(1.0, 3, 0)
    a.record(2.0, 4, 1)  # queued requests count in the sample
    d = a.decide(2.0, 4, 0)
    assert d.stable_avg == 4.0 and d.panic_avg == 4.0
    assert d.desired == 4


def test_no_samples_yet_is_zero_not_an_error() -> None:
    a = Autoscaler(TAU1, 0.0)
    d = a.decide(2.0, 0, 0)
    assert d == Decision(0, False, 0.0, 0.0, "stable 0.0/1 -> 0")


def test_old_samples_leave_the_stable_average() -> None:
    cfg = ScalingConfig(container_concurrency=1, target_utilization=1.0, max_scale_down_rate=100.0,
                        scale_down_delay_secs=0.0)
    a = Autoscaler(cfg, 0.0)
    drive(a, 0, 30, load=5, ready=5)
    out = drive(a, 30, 90, load=0, ready=5)
    assert len(a.window) == 60  # t = 31..90
    assert out[88].stable_avg == pytest.approx(10 / 60)  # t = 29, 30 still in (28, 88]
    assert out[88].desired == 1
    assert out[90].stable_avg == 0.0
    assert out[90].desired == 0


def test_cc_zero_uses_100_times_utilization() -> None:
    a = Autoscaler(ScalingConfig(container_concurrency=0, target_utilization=0.5), 0.0)
    assert a.tau == 50.0
    out = drive(a, 0, 10, load=120, ready=2)
    assert out[10].desired == 3  # ceil(120 / 50)
    assert not out[10].panic  # 2.4 < 2 x 2


def test_burst_panics_and_never_scales_down_until_a_stable_window_passes() -> None:
    a = Autoscaler(TAU1, 0.0)
    base = drive(a, 0, 20, load=1, ready=1)
    assert base[20].desired == 1 and not base[20].panic

    burst = drive(a, 20, 26, load=12, ready=1)
    # tick 22: P over (16, 22] = (4 x 1 + 2 x 12) / 6 = 4.67 >= 2 x max(1, 1)
    assert burst[22].panic and a.panic_since == 22.0
    assert burst[22].panic_avg == pytest.approx(28 / 6)
    assert [burst[t].desired for t in (22, 24, 26)] == [5, 9, 12]
    assert burst[22].reason == "panic 4.7/1 -> 5"

    calm = drive(a, 26, 100, load=0, ready=1)
    # the condition holds at 28 (P = 8) and 30 (P = 4), false from 32: panic lasts until 30 + 60
    assert calm[30].panic_avg == 4.0 and a.panic_last_true == 30.0
    for t in range(28, 90, 2):
        assert calm[t].panic, t
        assert calm[t].desired == 12, t  # D_panic fell to 0 but panic never scales down
    assert not calm[90].panic
    # out of panic: S over (30, 90] is 0; the last request was seen at 26, so the delay keeps one replica
    assert calm[90].desired == 1
    assert calm[90].reason == "stable 0.0/1 -> 0; scale-to-zero delay -> 1"


def test_panic_threshold_reached_despite_float_noise() -> None:
    cfg = ScalingConfig(container_concurrency=1, target_utilization=0.7, panic_window=5.0, max_replicas=100)
    a = Autoscaler(cfg, 0.0)
    for t, c in zip(range(1, 6), (2, 3, 3, 3, 3), strict=True):
        a.record(float(t), c, 0)
    d = a.decide(5.0, 2, 0)  # P = 2.8, P / τ = 3.9999999999999996 ~ 4 = 2 x R
    assert d.panic
    b = Autoscaler(cfg, 0.0)
    for t, c in zip(range(1, 6), (2, 2, 3, 3, 3), strict=True):
        b.record(float(t), c, 0)
    assert not b.decide(5.0, 2, 0).panic  # P = 2.6: 3.71 < 4


def test_panic_reentry_extends_panic() -> None:
    a = Autoscaler(TAU1, 0.0)
    drive(a, 0, 6, load=10, ready=1)
    assert a.panic and a.panic_since == 2.0
    drive(a, 6, 50, load=0, ready=1)
    assert a.panic
    drive(a, 50, 52, load=10, ready=1)  # condition true again at 52
    assert a.panic_last_true == 52.0 and a.panic_since == 2.0
    out = drive(a, 52, 120, load=0, ready=1)
    last_true = max(t for t, d in out.items() if d.panic_avg >= 2.0)
    assert last_true == 56  # P at 56 over (50, 56] = 20/6 still >= 2
    assert out[114].panic and not out[116].panic


def test_scale_up_rate_limit() -> None:
    cfg = ScalingConfig(container_concurrency=1, target_utilization=1.0, max_replicas=100, max_scale_up_rate=2.0,
                        panic_threshold=100.0)
    a = Autoscaler(cfg, 0.0)
    out = drive(a, 0, 10, load=20, ready=2)
    assert out[10].desired == 4
    assert out[10].reason == "stable 20.0/1 -> 20; scale-up rate -> 4"
    assert drive(a, 10, 12, load=20, ready=4)[12].desired == 8


def test_scale_down_rate_limit_then_delay_then_zero() -> None:
    a = Autoscaler(TAU1, 0.0)
    drive(a, 0, 2, load=10, ready=10)
    assert a.desired == 10
    steps = [(10, 5), (5, 2), (2, 1), (1, 1)]  # floor(R / 2); at R = 1 floor is 0 and the delay keeps 1
    t = 68  # no ticks in between: at 70 the load of t = 1, 2 has left the stable window, S = 0
    for ready, expected in steps:
        t += 2
        a.record(float(t), 0, 0)
        d = a.decide(float(t), ready, 0)
        assert d.desired == expected, (ready, d)
    assert d.reason == "stable 0.0/1 -> 0; scale-to-zero delay -> 1"
    assert a.decide(2.0 + 300.0, 1, 0).desired == 0  # last sample with a request was at t = 2


def test_min_and_max_clamp() -> None:
    cfg = ScalingConfig(container_concurrency=1, target_utilization=1.0, min_replicas=2, max_replicas=5,
                        panic_threshold=100.0)
    a = Autoscaler(cfg, 0.0)
    assert a.desired == 2
    assert drive(a, 0, 10, load=0, ready=2)[10].desired == 2
    d = drive(a, 10, 80, load=4, ready=2)[80]
    assert d.desired == 4  # within bounds
    d = drive(a, 80, 150, load=4, ready=5)[150]
    assert d.desired == 4  # scale-down rate floor(5 / 2) = 2 does not bind
    out = drive(a, 150, 250, load=9, ready=5)
    assert out[250].desired == 5 and out[250].reason.endswith("; max_replicas -> 5")


def test_activation_with_queued_requests() -> None:
    a = Autoscaler(TAU1, 0.0)
    d = a.decide(2.0, 0, 3)  # requests queued before any sample saw them
    assert d.desired == 1 and a.desired == 1
    assert d.reason == "stable 0.0/1 -> 0; activation -> 1"
    assert a.last_active == 2.0  # queued requests mean the target is not idle


def test_scale_to_zero_only_after_delay_of_zero_samples() -> None:
    a = Autoscaler(TAU1, 0.0)
    busy = drive(a, 0, 10, load=1, ready=1)
    assert busy[10].desired == 1 and a.last_active == 10.0
    idle = drive(a, 10, 400, load=0, ready=1)
    assert idle[68].stable_avg > 0.0  # t = 10 still in (8, 68]
    assert idle[70].stable_avg == 0.0 and idle[70].desired == 1
    assert idle[70].reason == "stable 0.0/1 -> 0; scale-to-zero delay -> 1"
    assert all(idle[t].desired == 1 for t in range(12, 310, 2))
    assert idle[310].desired == 0  # 300 s after the last sample with a request
    assert idle[310].reason == "stable 0.0/1 -> 0"
    gone = drive(a, 400, 420, load=0, ready=0)
    assert all(d.desired == 0 for d in gone.values())  # at zero it stays at zero
    back = drive(a, 420, 422, load=1, ready=0)
    assert back[422].desired == 1 and not back[422].panic


def test_a_request_during_the_delay_restarts_it() -> None:
    a = Autoscaler(TAU1, 0.0)
    drive(a, 0, 10, load=1, ready=1)
    drive(a, 10, 200, load=0, ready=1)
    drive(a, 200, 201, load=1, ready=1)  # one sample with a request at t = 201
    out = drive(a, 201, 600, load=0, ready=1)
    assert out[500].desired == 1 and out[500].reason.endswith("; scale-to-zero delay -> 1")  # idle 299 s
    assert out[502].desired == 0
    assert min(t for t, d in out.items() if d.desired == 0) == 502  # 201 + 300 = 501, first tick after is 502


def test_idle_time_counts_from_creation_before_any_traffic() -> None:
    a = Autoscaler(TAU1, 1000.0)
    # a replica is ready (say a static server) but no request ever came: kept until creation + delay
    out = drive(a, 1000, 1300, load=0, ready=1)
    assert out[1298].desired == 1
    assert out[1300].desired == 0


def test_no_traffic_from_start_stays_at_zero() -> None:
    a = Autoscaler(TAU1, 0.0)
    out = drive(a, 0, 20, load=0, ready=0)
    assert all(d.desired == 0 and not d.panic for d in out.values())
