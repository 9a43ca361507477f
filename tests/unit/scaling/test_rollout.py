"""Rollout state machine (SPEC §8.7) under a fake monotonic clock, a fixed wall clock and a fake rng: steps, rollback
on errors and latency, insufficient data, the 0 % rule, other revisions, the error definition, the TTFB reservoir and
its nearest-rank p99, the dashboard shape, terminal states, reload adoption and the transition log."""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from typing import Any

import pytest

from a3s_gateway.config.model import RolloutConfig
from a3s_gateway.scaling.rollout import (
    Rollout,
    RolloutWindow,
    WindowStats,
    evaluate,
    p99_nearest_rank,
)
from a3s_gateway.service.balancer import RoundRobinBalancer
from a3s_gateway.service.revision import Revision

T0 = 1000.0  # monotonic start
WALL0 = 1767607200.0  # 2026-01-05T10:00:00.000Z, the wall time at T0


def revisions(*split: tuple[str, int]) -> list[Revision]:
    return [Revision(name, percent, RoundRobinBalancer([])) for name, percent in split]


def cfg(**kw: Any) -> RolloutConfig:
    return dataclasses.replace(RolloutConfig(from_="v1", to="v2", step_percent=30, step_interval_secs=60.0), **kw)


def wall_at(now: float) -> float:
    """A wall clock that runs with the fake monotonic clock (WALL0 at T0)."""
    return WALL0 + (now - T0)


def feed(window: RolloutWindow, requests: int, errors: int = 0, ttfb: float = 0.1) -> None:
    """``requests`` attempts of which the first ``errors`` answered 502, each with one TTFB sample."""
    for i in range(requests):
        window.attempt(502 if i < errors else 200, False)
        window.ttfb(ttfb)


def percents(revs: list[Revision]) -> dict[str, int]:
    return {r.name: r.percent for r in revs}


# --- progression -----------------------------------------------------------------------------------------------


def test_full_rollout_completes_in_steps() -> None:
    revs = revisions(("v1", 90), ("v2", 10))
    r = Rollout("svc", cfg(), revs, T0)
    seen = []
    for k in range(1, 4):
        feed(r.window, 10)
        seen.append((r.tick(T0 + 60 * k), r.from_percent, r.to_percent, percents(revs), r.step, r.state))
    assert seen == [
        ("advance", 60, 40, {"v1": 60, "v2": 40}, 1, "progressing"),
        ("advance", 30, 70, {"v1": 30, "v2": 70}, 2, "progressing"),
        ("complete", 0, 100, {"v1": 0, "v2": 100}, 3, "completed"),
    ]


def test_last_step_is_capped_by_from_and_to_never_exceeds_t() -> None:
    revs = revisions(("v1", 70), ("v2", 10))  # T = 80
    r = Rollout("svc", cfg(), revs, T0)
    decisions = []
    for k in range(1, 4):
        feed(r.window, 10)
        decisions.append((r.tick(T0 + 60 * k), r.from_percent, r.to_percent))
    assert decisions == [("advance", 40, 40), ("advance", 10, 70), ("complete", 0, 80)]
    assert percents(revs) == {"v1": 0, "v2": 80}
    assert r.state == "completed"


def test_other_revisions_keep_their_share() -> None:
    revs = revisions(("v0", 20), ("v1", 70), ("v2", 10))
    r = Rollout("svc", cfg(), revs, T0)
    feed(r.window, 10)
    assert r.tick(T0 + 60) == "advance"
    assert percents(revs) == {"v0": 20, "v1": 40, "v2": 40}
    feed(r.window, 10, errors=10)
    assert r.tick(T0 + 120) == "rollback"
    assert percents(revs) == {"v0": 20, "v1": 80, "v2": 0}


def test_to_at_zero_advances_without_data() -> None:
    revs = revisions(("v1", 100), ("v2", 0))
    r = Rollout("svc", cfg(step_percent=10), revs, T0)
    assert r.tick(T0 + 60) == "advance"  # no request at all
    assert percents(revs) == {"v1": 90, "v2": 10}
    assert r.step == 1
    assert r.last is not None and r.last["requests"] == 0


def test_to_at_zero_advances_even_over_stale_errors() -> None:
    r = Rollout("svc", cfg(step_percent=10), revisions(("v1", 100), ("v2", 0)), T0)
    feed(r.window, 50, errors=50)  # cannot come from v2 at 0 %: the 0 % rule matches first
    assert r.tick(T0 + 60) == "advance"
    assert (r.from_percent, r.to_percent) == (90, 10)


def test_to_at_zero_with_from_below_step_completes() -> None:
    revs = revisions(("v0", 95), ("v1", 5), ("v2", 0))
    r = Rollout("svc", cfg(step_percent=10), revs, T0)
    assert r.tick(T0 + 60) == "complete"
    assert percents(revs) == {"v0": 95, "v1": 0, "v2": 5}
    assert r.state == "completed"


def test_nothing_to_move_is_completed_at_start() -> None:
    for split in ((("v1", 0), ("v2", 0)), (("v1", 0), ("v2", 100))):
        revs = revisions(*split)
        r = Rollout("svc", cfg(), revs, T0, wall=lambda: WALL0)
        assert r.state == "completed"
        assert r.tick(T0 + 60) is None
        assert percents(revs) == dict(split)
        assert r.as_dict(T0)["next_evaluation"] is None


# --- rollback and insufficient data ----------------------------------------------------------------------------


def test_rollback_on_error_rate_above_threshold() -> None:
    revs = revisions(("v1", 60), ("v2", 40))
    r = Rollout("svc", cfg(error_rate_threshold=0.05), revs, T0)
    feed(r.window, 19, errors=1)  # 1/19 = 0.0526 > 0.05
    assert r.tick(T0 + 60) == "rollback"
    assert percents(revs) == {"v1": 100, "v2": 0}
    assert (r.state, r.step) == ("rolled_back", 0)


def test_error_rate_at_threshold_advances() -> None:
    r = Rollout("svc", cfg(error_rate_threshold=0.05), revisions(("v1", 60), ("v2", 40)), T0)
    feed(r.window, 20, errors=1)  # exactly 0.05: not above
    assert r.tick(T0 + 60) == "advance"
    assert (r.from_percent, r.to_percent) == (30, 70)


def test_rollback_on_p99_above_threshold() -> None:
    revs = revisions(("v1", 60), ("v2", 40))
    r = Rollout("svc", cfg(latency_threshold_ms=5000.0), revs, T0)
    feed(r.window, 98, ttfb=0.1)
    feed(r.window, 2, ttfb=5.001)  # p99 of 100 = the 99th smallest = 5001 ms
    assert r.tick(T0 + 60) == "rollback"
    assert percents(revs) == {"v1": 100, "v2": 0}
    assert r.last is not None and r.last["p99_ttfb_ms"] == 5001.0 and r.last["error_rate"] == 0.0


def test_p99_at_or_below_threshold_advances() -> None:
    r = Rollout("svc", cfg(latency_threshold_ms=5000.0), revisions(("v1", 60), ("v2", 40)), T0)
    feed(r.window, 98, ttfb=0.1)
    feed(r.window, 1, ttfb=5.0)  # p99 = exactly 5000 ms: not above
    feed(r.window, 1, ttfb=60.0)  # the single slowest is the 100th: outside p99
    assert r.tick(T0 + 60) == "advance"
    assert r.last is not None and r.last["p99_ttfb_ms"] == 5000.0


def test_insufficient_data_keeps_the_split() -> None:
    revs = revisions(("v1", 60), ("v2", 40))
    r = Rollout("svc", cfg(min_requests=10), revs, T0)
    feed(r.window, 9, errors=9)  # all failing, but too few to judge
    assert r.tick(T0 + 60) == "insufficient_data"
    assert percents(revs) == {"v1": 60, "v2": 40}
    assert (r.state, r.step, r.next_at) == ("progressing", 0, T0 + 120)
    feed(r.window, 10)  # the window was reset: the 9 failures do not carry over
    assert r.tick(T0 + 120) == "advance"
    assert percents(revs) == {"v1": 30, "v2": 70}


# --- errors ----------------------------------------------------------------------------------------------------


def test_errors_are_5xx_transport_failures_and_stream_failures() -> None:
    w = RolloutWindow()
    for status in (200, 404, 499, 600, 500, 503, 504, 599):
        w.attempt(status, False)
    w.attempt(0, True)  # connect refused: no status
    w.attempt(200, True)
    w.attempt(200, False)
    w.stream_failure()  # the last 200 broke mid-stream: an error, not another attempt
    stats = w.take()
    assert (stats.requests, stats.errors) == (11, 7)
    assert stats.error_rate == 7 / 11


def test_stream_failures_alone_roll_back() -> None:
    r = Rollout("svc", cfg(), revisions(("v1", 60), ("v2", 40)), T0)
    feed(r.window, 10)
    r.window.stream_failure()
    assert r.tick(T0 + 60) == "rollback"
    assert r.last is not None and (r.last["requests"], r.last["error_rate"]) == (10, 0.1)


def test_error_rate_without_requests_is_zero() -> None:
    assert WindowStats(0, 0, None).error_rate == 0.0
    assert WindowStats(0, 3, None).error_rate == 0.0


def test_evaluate_is_pure_and_ordered() -> None:
    c = cfg(step_percent=25, min_requests=5, error_rate_threshold=0.1, latency_threshold_ms=100.0)
    assert evaluate(c, 80, 0, WindowStats(0, 0, None)) == ("advance", 55, 25)
    assert evaluate(c, 80, 20, WindowStats(4, 4, 900.0)) == ("insufficient_data", 80, 20)
    assert evaluate(c, 80, 20, WindowStats(5, 1, 10.0)) == ("rollback", 100, 0)
    assert evaluate(c, 80, 20, WindowStats(5, 0, 100.5)) == ("rollback", 100, 0)
    assert evaluate(c, 80, 20, WindowStats(5, 0, None)) == ("advance", 55, 45)  # no TTFB sample: latency not judged
    assert evaluate(c, 20, 80, WindowStats(5, 0, 100.0)) == ("complete", 0, 100)


# --- reservoir and p99 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "p99"),
    [
        ([float(i) for i in range(1, 101)], 99.0),
        ([float(i) for i in range(1, 11)], 10.0),
        ([5.0], 5.0),
        ([float(i) for i in range(1, 201)], 198.0),
        ([float(i) for i in range(1, 1001)], 990.0),
        ([3.0, 1.0, 2.0], 3.0),
        ([], None),
    ],
)
def test_p99_nearest_rank(samples: list[float], p99: float | None) -> None:
    assert p99_nearest_rank(samples) == p99


@pytest.mark.parametrize(
    ("rng_value", "p99_ms"),
    [
        (0.0, 6000.0),  # j = 0 every time: slot 0 replaced by 4, 5, then 6 -> [6, 2, 3]
        (0.99, 3000.0),  # j = n: never below capacity -> [1, 2, 3]
        (0.5, 5000.0),  # n=3: j=2 <- 4; n=4: j=2 <- 5; n=5: j=3 dropped -> [1, 2, 5]
    ],
)
def test_reservoir_algorithm_r(rng_value: float, p99_ms: float) -> None:
    w = RolloutWindow(capacity=3, rng=lambda: rng_value)
    for seconds in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0):
        w.ttfb(seconds)
    assert w.sampled == 3
    assert w.take().p99_ttfb_ms == p99_ms  # of 3 samples, p99 is the largest kept


def test_reservoir_keeps_at_most_capacity_and_resets() -> None:
    w = RolloutWindow(rng=random.Random(7).random)
    for i in range(25_000):
        w.ttfb(i / 1000)
    assert w.sampled == 10_000
    stats = w.take()
    assert stats.p99_ttfb_ms is not None and 23_000 < stats.p99_ttfb_ms < 25_000  # near the true 24,750 ms
    assert w.sampled == 0
    assert w.take() == WindowStats(0, 0, None)


# --- dashboard -------------------------------------------------------------------------------------------------


def test_as_dict_before_first_evaluation() -> None:
    r = Rollout("svc", cfg(step_percent=10), revisions(("v1", 100), ("v2", 0)), T0, wall=lambda: wall_at(T0 + 12.5))
    assert r.as_dict(T0 + 12.5) == {
        "from": "v1",
        "to": "v2",
        "state": "progressing",
        "from_percent": 100,
        "to_percent": 0,
        "step": 0,
        "next_evaluation": "2026-01-05T10:01:00.000Z",
        "last_evaluation": None,
    }


def test_as_dict_matches_the_spec_example() -> None:
    now = [T0]
    r = Rollout("svc", cfg(step_percent=10), revisions(("v1", 100), ("v2", 0)), T0, wall=lambda: wall_at(now[0]))
    assert r.tick(T0 + 60) == "advance"
    feed(r.window, 125, errors=1, ttfb=0.1)  # error rate 1/125 = 0.008
    r.window.ttfb(2.3)
    r.window.ttfb(2.3)  # 127 samples: rank ⌈125.73⌉ = 126 -> 2.3 s
    assert r.tick(T0 + 120) == "advance"
    now[0] = T0 + 150.25
    assert r.as_dict(now[0]) == {
        "from": "v1",
        "to": "v2",
        "state": "progressing",
        "from_percent": 80,
        "to_percent": 20,
        "step": 2,
        "next_evaluation": "2026-01-05T10:03:00.000Z",
        "last_evaluation": {
            "timestamp": "2026-01-05T10:02:00.000Z",
            "requests": 125,
            "error_rate": 0.008,
            "p99_ttfb_ms": 2300.0,
            "decision": "advance",
        },
    }


def test_as_dict_converts_monotonic_times_with_milliseconds() -> None:
    # the monotonic clock starts at 7.25 while the wall clock reads 10:00:00.000; evaluation at mono 67.375
    r = Rollout("svc", cfg(), revisions(("v1", 50), ("v2", 50)), 7.25, wall=lambda: WALL0 + 60.5)
    feed(r.window, 10)
    r.tick(67.375)
    d = r.as_dict(67.75)  # wall() - now = WALL0 - 7.25
    assert d["next_evaluation"] == "2026-01-05T10:02:00.000Z"  # next_at = 127.25
    assert d["last_evaluation"]["timestamp"] == "2026-01-05T10:01:00.125Z"


def test_as_dict_in_terminal_state() -> None:
    r = Rollout("svc", cfg(), revisions(("v1", 60), ("v2", 40)), T0, wall=lambda: wall_at(T0 + 60))
    feed(r.window, 10, errors=10, ttfb=0.5)
    assert r.tick(T0 + 60) == "rollback"
    assert r.as_dict(T0 + 60) == {
        "from": "v1",
        "to": "v2",
        "state": "rolled_back",
        "from_percent": 100,
        "to_percent": 0,
        "step": 0,
        "next_evaluation": None,
        "last_evaluation": {
            "timestamp": "2026-01-05T10:01:00.000Z",
            "requests": 10,
            "error_rate": 1.0,
            "p99_ttfb_ms": 500.0,
            "decision": "rollback",
        },
    }


# --- timing and terminal states --------------------------------------------------------------------------------


def test_due_and_late_ticks_keep_the_phase() -> None:
    r = Rollout("svc", cfg(step_percent=10), revisions(("v1", 100), ("v2", 0)), T0)
    assert r.next_at == T0 + 60
    assert not r.due(T0 + 59.999)
    assert r.tick(T0 + 59.999) is None
    assert r.due(T0 + 60)
    assert r.tick(T0 + 60.5) == "advance"
    assert r.next_at == T0 + 120
    feed(r.window, 10)
    assert r.tick(T0 + 250) == "advance"  # late by more than an interval: skip the missed slots
    assert r.next_at == T0 + 300


def test_terminal_states_do_not_tick() -> None:
    done = Rollout("svc", cfg(step_percent=100), revisions(("v1", 60), ("v2", 40)), T0)
    feed(done.window, 10)
    assert done.tick(T0 + 60) == "complete"
    back = Rollout("svc", cfg(), revisions(("v1", 60), ("v2", 40)), T0)
    feed(back.window, 10, errors=10)
    assert back.tick(T0 + 60) == "rollback"
    for r, split in ((done, (0, 100)), (back, (100, 0))):
        last = r.last
        feed(r.window, 100, errors=100)
        for k in range(2, 6):
            assert not r.due(T0 + 60 * k)
            assert r.tick(T0 + 60 * k) is None
        assert (r.from_percent, r.to_percent) == split
        assert r.last is last


# --- reload ----------------------------------------------------------------------------------------------------


def test_adopt_writes_the_current_split_into_new_revisions() -> None:
    old = revisions(("v0", 20), ("v1", 70), ("v2", 10))
    r = Rollout("svc", cfg(), old, T0)
    feed(r.window, 10)
    assert r.tick(T0 + 60) == "advance"
    new = revisions(("v0", 25), ("v1", 70), ("v2", 10))  # rebuilt from the (unchanged rollout) configuration
    r.adopt(new)
    assert percents(new) == {"v0": 25, "v1": 40, "v2": 40}
    feed(r.window, 10)
    assert r.tick(T0 + 120) == "advance"
    assert percents(new) == {"v0": 25, "v1": 10, "v2": 70}
    assert percents(old) == {"v0": 20, "v1": 40, "v2": 40}  # the old objects are no longer written


def test_missing_revision_is_an_error_naming_service() -> None:
    with pytest.raises(ValueError, match=re.escape('service "svc": rollout.to "v2" is not one of its revisions (v1)')):
        Rollout("svc", cfg(), revisions(("v1", 100)), T0)
    r = Rollout("svc", cfg(), revisions(("v1", 90), ("v2", 10)), T0)
    with pytest.raises(ValueError, match=re.escape('rollout.from "v1" is not one of its revisions (v2)')):
        r.adopt(revisions(("v2", 10)))


# --- log -------------------------------------------------------------------------------------------------------


def test_every_evaluation_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    r = Rollout("svc", cfg(), revisions(("v1", 90), ("v2", 10)), T0)
    with caplog.at_level(logging.INFO, logger="a3s_gateway.rollout"):
        feed(r.window, 10, errors=2, ttfb=0.25)
        r.tick(T0 + 60)
    [record] = [rec for rec in caplog.records if rec.name == "a3s_gateway.rollout"]
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "rollout of service svc: v1 90% -> 100%, v2 10% -> 0%: rollback "
        "(requests 10, errors 2, error rate 0.2000, p99 ttfb 250 ms; step 0, state rolled_back)"
    )
