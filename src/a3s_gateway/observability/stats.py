"""Hot-path counters (SPEC §11.2): plain integers and floats on native objects, read at scrape time.

Compiled by mypyc (the same source runs interpreted). A request adds to the counters of the route it matched
with a handful of list stores: no lock, no dict lookup, no label strings. Status codes are mapped to dense slots
through one process-wide table, so a route's request counts are ``counts[method][slot]`` lists that grow only
when a new status code is first seen. ``metrics.py`` turns these objects into Prometheus families.
"""

from __future__ import annotations

from typing import Final

#: upper bounds of the duration histograms in seconds (SPEC §11.2); the last bucket (+Inf) is implicit
BUCKETS: Final[tuple[float, ...]] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
N_BUCKETS: Final = 17  # len(BUCKETS) + 1 (+Inf)

#: the nine standard methods, index = method slot; slot 9 is OTHER
METHODS: Final[tuple[bytes, ...]] = (
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
)
METHOD_LABELS: Final[tuple[str, ...]] = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
)
N_METHODS: Final = 10

# status code -> dense slot (-1 = not seen yet); slot -> status code
_slot_of: list[int] = [-1] * 1000
_codes: list[int] = []


def status_slot(status: int) -> int:
    """The dense slot of ``status`` (assigned on first use; out-of-range codes share the slot of 0)."""
    if status < 0 or status > 999:
        status = 0
    slot = _slot_of[status]
    if slot < 0:
        slot = len(_codes)
        _codes.append(status)
        _slot_of[status] = slot
    return slot


def slot_code(slot: int) -> int:
    """The status code of a slot."""
    return _codes[slot]


def method_slot(method: bytes) -> int:
    """0-8 for the standard methods, 9 (OTHER) for anything else."""
    if method == b"GET":
        return 0
    if method == b"POST":
        return 2
    i = 0
    for m in METHODS:
        if m == method:
            return i
        i += 1
    return 9


def bucket_index(seconds: float) -> int:
    """Index of the first bucket whose bound is >= ``seconds`` (16 = +Inf). Short durations exit early."""
    i = 0
    for bound in BUCKETS:
        if seconds <= bound:
            return i
        i += 1
    return i


class Histogram:
    """Non-cumulative bucket counts plus the sum of observations (cumulated at scrape time)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * N_BUCKETS
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        i = bucket_index(seconds)
        self.counts[i] += 1
        self.total += seconds

    def count(self) -> int:
        n = 0
        for c in self.counts:
            n += c
        return n


class RouteStats:
    """Counters of one (router, service) pair; ``router == ""`` holds unmatched requests of an entrypoint set.

    Carried across reloads by (router, service) so counters stay monotonic.
    """

    def __init__(self, router: str, service: str) -> None:
        self.router = router
        self.service = service
        self.counts: list[list[int]] = [[] for _ in range(N_METHODS)]
        self.duration = Histogram()
        self.ttfb = Histogram()
        self.chunk_gap = Histogram()
        self.sse_errors = 0
        self.truncated = 0
        self.gone_queued = 0
        self.gone_waiting_head = 0
        self.gone_streaming = 0
        self.retries = 0
        self.revision_ttfb: dict[str, Histogram] = {}  # per revision of the service (§8.6)
        self.revision_gap: dict[str, Histogram] = {}  # chunk gaps of revision backends (``chunk_gap``: the others)
        self.models: dict[str, ModelStats] = {}  # per model of inspected requests (§16.6), at most MAX_MODELS + other

    def record(self, method: bytes, status: int, duration: float) -> None:
        """One completed request: its count by method and status, and its duration."""
        row = self.counts[method_slot(method)]
        slot = status_slot(status)
        if slot >= len(row):
            row.extend([0] * (slot + 1 - len(row)))
        row[slot] += 1
        self.duration.observe(duration)

    def model_stats(self, model: str) -> ModelStats:
        """The counters of ``model`` (SPEC §16.6): past ``MAX_MODELS`` distinct models, those of ``"other"``."""
        ms = self.models.get(model)
        if ms is None:
            if len(self.models) >= MAX_MODELS:
                model = OTHER_MODEL
                ms = self.models.get(model)
            if ms is None:
                ms = self.models[model] = ModelStats(model)
        return ms

    def observe_revision_ttfb(self, revision: str, seconds: float) -> None:
        h = self.revision_ttfb.get(revision)
        if h is None:
            h = self.revision_ttfb[revision] = Histogram()
        h.observe(seconds)

    def observe_gap(self, revision: str, seconds: float) -> None:
        """A gap between two body pieces from a backend (of ``revision``, "" without revisions)."""
        if not revision:
            self.chunk_gap.observe(seconds)
            return
        h = self.revision_gap.get(revision)
        if h is None:
            h = self.revision_gap[revision] = Histogram()
        h.observe(seconds)

    def request_counts(self) -> list[tuple[str, int, int]]:
        """(method label, status, count) for every non-zero counter."""
        out: list[tuple[str, int, int]] = []
        m = 0
        for row in self.counts:
            slot = 0
            for n in row:
                if n:
                    out.append((METHOD_LABELS[m], _codes[slot], n))
                slot += 1
            m += 1
        return out

    def total_requests(self) -> int:
        n = 0
        for row in self.counts:
            for c in row:
                n += c
        return n


class CodeCounter:
    """Counts by status code (per backend: attempts, transport failures as 502/504)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: list[int] = []

    def add(self, status: int) -> None:
        slot = status_slot(status)
        row = self.counts
        if slot >= len(row):
            row.extend([0] * (slot + 1 - len(row)))
        row[slot] += 1

    def items(self) -> list[tuple[int, int]]:
        """(status, count) for every non-zero counter."""
        out: list[tuple[int, int]] = []
        slot = 0
        for n in self.counts:
            if n:
                out.append((_codes[slot], n))
            slot += 1
        return out


#: bucket bounds of ``gateway_llm_output_tokens_per_second`` (SPEC §16.6); +Inf implicit
RATE_BUCKETS: Final[tuple[float, ...]] = (1.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
MAX_MODELS: Final = 100  # distinct model labels per router (SPEC §16.6)
OTHER_MODEL: Final = "other"


class RateHistogram:
    """A histogram over ``RATE_BUCKETS`` (non-cumulative counts and the sum)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * (len(RATE_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        i = 0
        for bound in RATE_BUCKETS:
            if value <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.total += value


class ModelStats:
    """Counters of one model of one (router, service) pair (SPEC §16.6): requests by status, tokens by kind and
    source, time to first token, gaps between content events, output tokens per second."""

    __slots__ = ("codes", "input_estimated", "input_reported", "inter_token", "model", "output_estimated",
                 "output_reported", "tokens_per_second", "ttft")

    def __init__(self, model: str) -> None:
        self.model = model
        self.codes = CodeCounter()
        self.input_reported = 0
        self.output_reported = 0
        self.input_estimated = 0
        self.output_estimated = 0
        self.ttft = Histogram()
        self.inter_token = Histogram()
        self.tokens_per_second = RateHistogram()

    def add_tokens(self, reported: bool, input_tokens: int, output_tokens: int) -> None:
        if reported:
            self.input_reported += input_tokens
            self.output_reported += output_tokens
        else:
            self.input_estimated += input_tokens
            self.output_estimated += output_tokens
