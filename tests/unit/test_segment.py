"""The shared-memory segment (issue 18), compiled and pure: atomic counters across processes, and the GCRA rate-limit
table, which must give the numbers of the in-process ``TokenBuckets`` (SPEC §6.5) for one process and stay exact for
the whole instance when several processes take from one bucket."""

from __future__ import annotations

import importlib
import math
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from impls import twins

from a3s_gateway import _compat, segment
from a3s_gateway.middleware.ratelimit import TokenBuckets

COMPILED, PURE = _compat.CYTHON_MODULES["shared segment"]
SIZE = 1 << 16  # 8192 words
TABLE = 64  # first word of the test tables

# A worker process: attaches the segment, waits until both workers are attached (word 0 counts them), then runs
# its part; argv: module, fd, size, operation.
CHILD = r"""
import sys, time, importlib
mod = importlib.import_module(sys.argv[1])
seg = mod.Segment.attach(int(sys.argv[2]), int(sys.argv[3]))
seg.add(0, 1)
deadline = time.monotonic() + 20
while seg.get(0) < 2:
    if time.monotonic() > deadline:
        sys.exit("the other worker never attached")
op = sys.argv[4]
if op == "add":
    for _ in range(50000):
        seg.add(8, 1)
elif op.startswith("take"):
    takes, burst = (int(n) for n in op.split(":")[1:])
    allowed = sum(seg.take(64, 16, b"10.0.0.1", 1000.0, 0.1, burst) >= 0 for _ in range(takes))
    seg.add(9, allowed)
    print(allowed)
seg.close()
"""


@pytest.fixture(params=twins("shared segment"))
def twin(request: pytest.FixtureRequest) -> ModuleType:
    try:
        return importlib.import_module(request.param)
    except ImportError as e:  # a missing build fails, never skips
        pytest.fail(f"{request.param} is not built ({e}); run `make build`")


@pytest.fixture
def seg(twin: ModuleType) -> Iterator[Any]:
    s = twin.Segment.create(SIZE)
    yield s
    s.close()


def run_two(twin: ModuleType, seg: Any, op: str) -> list[str]:
    """Run CHILD in two processes at once on ``seg`` (its fd passed to each); their outputs."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, twin.__name__, str(seg.fd), str(seg.size), op],
                              pass_fds=(seg.fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(out.strip())
    return outs


# ---- counters -----------------------------------------------------------------------------------------------------

def test_add_get_set_wrap_at_64_bits(seg: Any) -> None:
    assert (seg.size, seg.words) == (SIZE, SIZE // 8)
    assert seg.get(5) == 0  # a new segment is zeroed
    assert seg.add(5, 7) == 7
    assert seg.add(5, -10) == -3
    assert seg.get(5) == -3
    seg.set(5, 2**63 - 1)
    assert seg.add(5, 1) == -(2**63)  # wraps like C
    assert seg.add(5, -1) == 2**63 - 1
    seg.set(seg.words - 1, -42)
    assert seg.get(seg.words - 1) == -42
    assert [seg.get(i) for i in (4, 6)] == [0, 0]  # neighbours untouched


def test_cas_stores_only_over_the_expected_value(seg: Any) -> None:
    assert seg.cas(3, 0, 11) is True
    assert seg.get(3) == 11
    assert seg.cas(3, 0, 12) is False  # holds 11, not 0: nothing written
    assert seg.get(3) == 11
    assert seg.cas(3, 11, -(2**63)) is True
    assert seg.get(3) == -(2**63)


def test_counters_are_exact_across_two_processes(twin: ModuleType, seg: Any) -> None:
    run_two(twin, seg, "add")
    assert seg.get(0) == 2
    assert seg.get(8) == 100_000  # 2 x 50,000 concurrent increments, none lost


def test_attached_segments_share_memory_and_the_fd_is_not_inherited(twin: ModuleType, seg: Any) -> None:
    other = twin.Segment.attach(os.dup(seg.fd), SIZE)
    try:
        other.add(17, 5)
        assert seg.get(17) == 5
        assert seg.take(TABLE, 16, b"k", 0.0, 1.0, 2) == 1.0
        assert other.take(TABLE, 16, b"k", 0.0, 1.0, 2) == 0.0  # the same bucket
    finally:
        other.close()
    assert seg.get(17) == 5  # closing one mapping leaves the other
    assert not os.get_inheritable(seg.fd)  # workers get it through pass_fds; executors' children never do


def test_a_large_segment_costs_only_the_pages_touched(twin: ModuleType) -> None:
    big = twin.Segment.create(1 << 30)
    try:
        big.set(big.words - 1, 1)
        big.add(0, 1)
        assert os.fstat(big.fd).st_blocks * 512 <= 1 << 20  # 1 GiB segment, a few KiB allocated
    finally:
        big.close()


def test_bad_indexes_sizes_and_tables_are_errors(twin: ModuleType, seg: Any) -> None:
    for index in (-1, seg.words, 2**40):
        for method, args in (("get", ()), ("add", (1,)), ("set", (1,)), ("cas", (0, 1))):
            with pytest.raises(IndexError, match="out of range"):
                getattr(seg, method)(index, *args)
    with pytest.raises(OverflowError):
        seg.add(0, 2**63)
    with pytest.raises(OverflowError):
        seg.set(0, -(2**63) - 1)
    for table, capacity in ((0, 3), (0, 0), (0, -4), (seg.words - 15, 8), (-2, 4), (seg.words + 2, 1)):
        with pytest.raises(ValueError):
            seg.take(table, capacity, b"k", 0.0, 1.0, 1)
        with pytest.raises(ValueError):
            seg.used(table, capacity)
    assert seg.used(seg.words - 16, 8) == 0  # the last words fit exactly
    for now, interval, burst in ((0.0, 0.0, 1), (0.0, 1.0, 0), (math.nan, 1.0, 1), (0.0, math.nan, 1),
                                 (0.0, 1.0, math.nan), (math.inf, 1.0, 1), (0.0, math.inf, 1), (1e10, 1.0, 1),
                                 (0.0, 1e6, 1e6)):
        with pytest.raises(ValueError):
            seg.take(TABLE, 16, b"k", now, interval, burst)
    with pytest.raises(TypeError):
        seg.take(TABLE, 16, "k", 0.0, 1.0, 1)  # keys are bytes
    assert seg.used(TABLE, 16) == 0  # no failed call claimed an entry
    for size in (0, -8, 12):
        with pytest.raises(ValueError, match="multiple of 8"):
            twin.Segment.create(size)
    with pytest.raises(ValueError, match="fewer than"):  # mapping past the file would fault when touched
        twin.Segment.attach(seg.fd, SIZE * 2)
    closed = twin.Segment.create(64)
    closed.close()
    closed.close()  # idempotent
    assert closed.fd == -1
    with pytest.raises(ValueError, match="closed"):
        closed.get(0)
    with pytest.raises(ValueError, match="closed"):
        closed.take(0, 4, b"k", 0.0, 1.0, 1)


# ---- the GCRA table against TokenBuckets --------------------------------------------------------------------------

def test_key_hash_is_fnv1a_64_and_an_entry_stores_it(twin: ModuleType, seg: Any) -> None:
    assert twin.key_hash(b"") == 0xCBF29CE484222325
    assert twin.key_hash(b"a") == 0xAF63DC4C8601EC8C
    assert twin.key_hash(b"foobar") == 0x85944171F73967E8
    seg.take(TABLE, 16, b"foobar", 0.0, 1.0, 1)
    slot = 0x85944171F73967E8 & 15
    assert seg.get(TABLE + 2 * slot) & (2**64 - 1) == 0x85944171F73967E8
    assert seg.get(TABLE + 2 * slot + 1) == 1_000_000_000  # its TAT: now + one interval, in ns
    assert seg.used(TABLE, 16) == 1


def compare(seg: Any, rate: float, period: float, burst: int, steps: list[tuple[str, float]]) -> None:
    """Drive TokenBuckets and the segment's table with the same (key, now) sequence: the same decisions, and the
    same tokens left within 1e-6."""
    tb = TokenBuckets(rate, period, burst, max_keys=1000)
    for i, (key, now) in enumerate(steps):
        want = tb.take(key, now)
        got = seg.take(TABLE, 256, key.encode(), now, period / rate, burst)
        assert (got >= 0) == (want >= 0) and got == pytest.approx(want, abs=1e-6), (i, key, now, want, got)


@pytest.mark.parametrize(("rate", "period", "burst"), [
    (1.0, 1.0, 1), (10.0, 1.0, 5), (2.5, 1.0, 3), (1.0, 10.0, 1), (60.0, 60.0, 2), (3.0, 1.0, 3),
    (100.0, 1.0, 100), (1.0, 3.0, 4), (7.0, 1.0, 2), (1000.0, 1.0, 10),
])
def test_gcra_gives_the_numbers_of_token_buckets(seg: Any, rate: float, period: float, burst: int) -> None:
    rng = random.Random(f"{rate}/{period}/{burst}")
    interval = period / rate
    steps: list[tuple[str, float]] = []
    now = 1000.0
    for _ in range(400):
        # bursts at one instant, steps of a fraction of the interval, and pauses that refill the bucket
        now += rng.choice([0.0, 0.0, interval * rng.random() * 0.3, interval * rng.random() * 2, interval * burst * 3])
        steps.append((rng.choice(["a", "b", "10.0.0.1"]), now))
    compare(seg, rate, period, burst, steps)


@pytest.mark.parametrize(("rate", "period", "burst", "times"), [
    (10.0, 1.0, 1, [100.0, 100.1, 100.2, 100.30000000000001, 100.3]),  # (100.1 - 100.0) * 10 = 0.99999999999994
    (1.0, 3.0, 1, [0.0, 0.0, 3.0, 3.0, 6.000000000000001]),  # a refill of 1/3 per second is inexact in binary
    (1.0, 4.0, 2, [0.0, 0.0, 1.0, 2.0, 4.0, 4.0]),  # test_token_buckets_take_encoding
    (1.0, 1.0, 3, [0.0, 0.0, 0.0, 1.5, 3.0]),  # fractional tokens
    (2.0, 1.0, 4, [0.0] * 5 + [0.25, 0.5, 1000.0] + [1000.0] * 4),  # continuous refill, capped at burst
    (3.0, 1.0, 1, [i / 3 for i in range(30)]),  # exactly one token per 1/3 s: every take allowed
    # 1/7 s is 142857142.857 ns: rounded up, the TAT would run 0.14 ns per take ahead of such a clock and deny it
    (7.0, 1.0, 1, [100 + i / 7 for i in range(200)]),
    (7.0, 1.0, 5, [0.0] * 3 + [100 + i / 7 for i in range(200)]),
    (1.0, 0.3, 2, [i * 0.3 for i in range(100)]),  # 0.3 s: 299999999.99999994 ns, the noise of period / rate
    (0.1, 1.0, 1, [0.0, 9.999999999999998, 10.0, 20.000000000000004]),
])
def test_float_noise_cases_of_the_rate_limiter(seg: Any, rate: float, period: float, burst: int,
                                               times: list[float]) -> None:
    compare(seg, rate, period, burst, [("k", t) for t in times])


def test_a_clock_going_backwards_adds_nothing(seg: Any) -> None:
    # as test_clock_going_backwards_adds_nothing of the rate limiter: rate 1/s, burst 1
    assert seg.take(TABLE, 16, b"k", 50.0, 1.0, 1) == 0.0
    assert seg.take(TABLE, 16, b"k", 10.0, 1.0, 1) == -1.0  # no token at an earlier instant either
    assert seg.take(TABLE, 16, b"k", 50.5, 1.0, 1) == pytest.approx(-0.5)
    assert seg.take(TABLE, 16, b"k", 51.0, 1.0, 1) == 0.0


def test_burst_10_admits_exactly_10_of_50_takes_from_two_processes(twin: ModuleType, seg: Any) -> None:
    allowed = run_two(twin, seg, "take:25:10")
    assert seg.get(9) == 10, allowed  # 10 of the 2 x 25 takes at the same instant, whoever won them
    assert seg.used(TABLE, 16) == 1


def test_a_contended_bucket_admits_exactly_its_burst(twin: ModuleType, seg: Any) -> None:
    run_two(twin, seg, "take:3000:1000")
    assert seg.get(9) == 1000


# ---- eviction -----------------------------------------------------------------------------------------------------

def test_a_full_probe_window_recycles_the_earliest_tat_and_the_evicted_key_restarts_full(seg: Any) -> None:
    keys = [f"k{i}".encode() for i in range(9)]

    def take(key: bytes, now: float = 0.0) -> float:
        return float(seg.take(TABLE, 8, key, now, 1.0, 2))  # capacity 8: every key probes the whole table

    assert [take(k) for k in keys[:8]] == [1.0] * 8  # TAT 1 s each
    assert [take(k) for k in keys[1:8]] == [0.0] * 7  # k1..k7 drained: TAT 2 s; k0 keeps the earliest TAT
    assert seg.used(TABLE, 8) == 8
    assert take(keys[8]) == 1.0  # the window is full: k0's entry is recycled, k8 starts full
    assert take(keys[0]) == 1.0  # k0 was evicted: it restarts full (kept, it would have had 1 token left ...)
    assert take(keys[0]) == 0.0  # ... now it is its own bucket again; k8 (TAT 1 s, the earliest) made room
    assert [take(k) for k in keys[1:8]] == [-1.0] * 7  # the drained keys were kept
    assert seg.used(TABLE, 8) == 8
    # later every bucket is full again: recycling a full bucket loses nothing, whichever key it held
    assert [take(k, 10.0) for k in keys] == [1.0] * 9


def test_eviction_stays_in_the_keys_probe_window(twin: ModuleType, seg: Any) -> None:
    capacity = 64
    start = twin.key_hash(b"other") & (capacity - 1)
    same = [k for k in (f"client-{i}".encode() for i in range(20000)) if twin.key_hash(k) & (capacity - 1) == start]
    assert len(same) >= 9
    outside = next(k for k in (f"x{i}".encode() for i in range(1000))
                   if (twin.key_hash(k) - start) & (capacity - 1) >= 8)
    assert seg.take(TABLE, capacity, outside, 0.0, 1.0, 1) == 0.0
    for key in same[:8]:
        assert seg.take(TABLE, capacity, key, 0.0, 1.0, 1) == 0.0
    window = [TABLE + 2 * ((start + i) % capacity) for i in range(8)]
    assert sorted(seg.get(w) & (2**64 - 1) for w in window) == sorted(twin.key_hash(k) for k in same[:8])
    assert seg.take(TABLE, capacity, same[8], 0.0, 1.0, 1) == 0.0  # recycles one entry of the window
    assert seg.used(TABLE, capacity) == 9  # 8 in the window + the key outside it
    assert seg.take(TABLE, capacity, outside, 0.0, 1.0, 1) == -1.0  # untouched: still drained
    assert twin.key_hash(same[8]) in {seg.get(w) & (2**64 - 1) for w in window}


# ---- the twins agree ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(_compat.NO_EXTENSIONS, reason="A3S_GATEWAY_NO_EXTENSIONS=1: only the pure twin is in use")
def test_compiled_and_pure_twins_give_the_same_outputs_and_tables() -> None:
    try:
        compiled = importlib.import_module(COMPILED)
    except ImportError as e:
        pytest.fail(f"{COMPILED} is not built ({e}); run `make build`")
    pure = importlib.import_module(PURE)
    a, b = compiled.Segment.create(SIZE), pure.Segment.create(SIZE)
    try:
        rng = random.Random(18)
        now = 5000.0
        outputs: list[tuple[float, float]] = []
        for _ in range(3000):
            now += rng.choice([0.0, rng.random() * 0.01, rng.random(), rng.random() * 30, -rng.random() * 0.001])
            key = f"10.0.{rng.randrange(40)}.{rng.randrange(4)}".encode()  # 160 keys on 32 entries: evictions
            interval, burst = rng.choice([(0.1, 10.0), (1 / 3, 3.0), (2.5, 1.0), (0.001, 50.0), (1 / 7, 2.5)])
            outputs.append((compiled.Segment.take(a, TABLE, 32, key, now, interval, burst),
                            pure.Segment.take(b, TABLE, 32, key, now, interval, burst)))
        assert [x for x, _ in outputs] == [y for _, y in outputs]  # exactly: the same arithmetic
        assert any(x < 0 for x, _ in outputs) and any(x >= 1 for x, _ in outputs)
        assert [a.get(i) for i in range(TABLE, TABLE + 64)] == [b.get(i) for i in range(TABLE, TABLE + 64)]
        assert a.used(TABLE, 32) == b.used(TABLE, 32) == 32
        for x in (a, b):
            x.set(3, -5)
            assert (x.add(3, 2**62), x.cas(3, 2**62 - 5, 1), x.get(3)) == (2**62 - 5, True, 1)
    finally:
        a.close()
        b.close()


def test_the_selector_exports_the_chosen_twin() -> None:
    chosen = _compat.load("shared segment")
    assert segment.IMPLEMENTATION == chosen.__name__
    assert segment.create == chosen.Segment.create  # no wrapper
    assert segment.attach == chosen.Segment.attach
    assert (segment.PROBES, segment.ENTRY_WORDS) == (8, 2)
    s = segment.create(64)
    try:
        assert s.take(0, 4, b"k", 0.0, 1.0, 1) == 0.0
    finally:
        s.close()
