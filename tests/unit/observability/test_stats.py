"""Hot-path counters (observability/stats.py, compiled by mypyc): slots, buckets, per-route counts."""

from __future__ import annotations

import pytest

from a3s_gateway.observability import stats
from a3s_gateway.observability.stats import BUCKETS, CodeCounter, Histogram, RouteStats


@pytest.mark.parametrize(
    ("seconds", "index"),
    [(0.0, 0), (0.005, 0), (0.0051, 1), (0.3, 6), (1.0, 7), (599.0, 15), (600.0, 15), (600.1, 16), (1e9, 16)],
)
def test_bucket_index_is_the_first_bound_not_below(seconds: float, index: int) -> None:
    assert stats.bucket_index(seconds) == index
    assert len(BUCKETS) + 1 == stats.N_BUCKETS


@pytest.mark.parametrize(
    ("method", "slot"),
    [(b"GET", 0), (b"HEAD", 1), (b"POST", 2), (b"PUT", 3), (b"DELETE", 4), (b"CONNECT", 5), (b"OPTIONS", 6),
     (b"TRACE", 7), (b"PATCH", 8), (b"PROPFIND", 9), (b"get", 9)],
)
def test_method_slots(method: bytes, slot: int) -> None:
    assert stats.method_slot(method) == slot
    assert stats.METHOD_LABELS[slot] == (method.decode() if slot < 9 else "OTHER")


def test_status_slots_are_stable_and_dense() -> None:
    a = stats.status_slot(418)
    assert stats.status_slot(418) == a and stats.slot_code(a) == 418
    b = stats.status_slot(299)
    assert b != a and stats.slot_code(b) == 299
    assert stats.slot_code(stats.status_slot(-5)) == 0 == stats.slot_code(stats.status_slot(1000))


def test_histogram_counts_and_sum() -> None:
    h = Histogram()
    for s in (0.001, 0.002, 0.2, 7.0, 1000.0):
        h.observe(s)
    assert h.count() == 5
    assert h.counts[0] == 2 and h.counts[5] == 1 and h.counts[10] == 1 and h.counts[16] == 1
    assert h.total == pytest.approx(1007.203)


def test_route_stats_record_by_method_and_code() -> None:
    st = RouteStats("r", "s")
    st.record(b"GET", 200, 0.01)
    st.record(b"GET", 200, 0.02)
    st.record(b"POST", 503, 0.5)
    st.record(b"BREW", 418, 0.0)
    assert sorted(st.request_counts()) == [("GET", 200, 2), ("OTHER", 418, 1), ("POST", 503, 1)]
    assert st.total_requests() == 4
    assert st.duration.count() == 4 and st.duration.total == pytest.approx(0.53)


def test_code_counter() -> None:
    c = CodeCounter()
    for code in (200, 200, 502, 504, 200):
        c.add(code)
    assert sorted(c.items()) == [(200, 3), (502, 1), (504, 1)]


def test_chunk_gaps_by_revision() -> None:
    st = RouteStats("r", "s")
    st.observe_gap("", 0.02)
    st.observe_gap("v2", 0.2)
    st.observe_gap("v2", 0.3)
    assert st.chunk_gap.count() == 1 and st.revision_gap["v2"].count() == 2
