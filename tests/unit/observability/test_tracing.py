"""Trace context extraction, sampling, injection and OTLP/HTTP JSON export (SPEC §11.4)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loops import Run

from a3s_gateway.config.model import TracingConfig
from a3s_gateway.http import _parser_py, hdrs
from a3s_gateway.observability import tracing
from a3s_gateway.observability.tracing import B3, B3MULTI, W3C, TraceContext, Tracer

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACE64 = "a3ce929d0e0e4736"
PADDED = "0000000000000000" + TRACE64
PARENT = "1111111111111111"
HEX32 = re.compile(r"[0-9a-f]{32}\Z")
HEX16 = re.compile(r"[0-9a-f]{16}\Z")

Headers = list[tuple[bytes, bytes]]


def head(*lines: tuple[str, str]) -> tuple[Headers, bytes]:
    """Headers plus their ids, as the parsers classify them (ordinary headers around the trace ones)."""
    headers = [(b"Host", b"example.com"), *((n.encode(), v.encode()) for n, v in lines), (b"Accept", b"*/*")]
    return headers, bytes(hdrs.NAMES.get(n.lower(), hdrs.OTHER) for n, _ in headers)


def never() -> float:
    raise AssertionError("the random source must not be called")


def tracer(*, propagation: tuple[str, ...] = ("w3c", "b3"), sample_rate: float = 1.0,
           rand: Callable[[], float] = never, **kw: Any) -> Tracer:
    return Tracer(TracingConfig(propagation=propagation, sample_rate=sample_rate), rand=rand, **kw)


def assert_new_root(ctx: TraceContext) -> None:
    assert ctx.parent_span_id is None
    assert HEX32.match(ctx.trace_id) and ctx.trace_id not in (TRACE, PADDED)
    assert HEX16.match(ctx.span_id)


# --- extraction -------------------------------------------------------------------------------------------------

# (id, header lines, expected (trace, incoming span, sampled) or None for a new root; sampled None = deferred)
EXTRACT: list[tuple[str, list[tuple[str, str]], tuple[str, str, bool | None] | None]] = [
    ("w3c sampled", [("traceparent", f"00-{TRACE}-{SPAN}-01")], (TRACE, SPAN, True)),
    ("w3c not sampled", [("traceparent", f"00-{TRACE}-{SPAN}-00")], (TRACE, SPAN, False)),
    ("w3c other flag bits", [("traceparent", f"00-{TRACE}-{SPAN}-03")], (TRACE, SPAN, True)),
    ("w3c flag bit 1 only", [("traceparent", f"00-{TRACE}-{SPAN}-02")], (TRACE, SPAN, False)),
    ("w3c with tracestate", [("traceparent", f"00-{TRACE}-{SPAN}-01"), ("tracestate", "k=v")], (TRACE, SPAN, True)),
    ("w3c header name case", [("TraceParent", f"00-{TRACE}-{SPAN}-01")], (TRACE, SPAN, True)),
    ("w3c upper-case trace", [("traceparent", f"00-{TRACE.upper()}-{SPAN}-01")], None),
    ("w3c upper-case flags", [("traceparent", f"00-{TRACE}-{SPAN}-0A")], None),
    ("w3c version 01", [("traceparent", f"01-{TRACE}-{SPAN}-01")], None),
    ("w3c version ff", [("traceparent", f"ff-{TRACE}-{SPAN}-01")], None),
    ("w3c zero trace", [("traceparent", f"00-{'0' * 32}-{SPAN}-01")], None),
    ("w3c zero span", [("traceparent", f"00-{TRACE}-{'0' * 16}-01")], None),
    ("w3c extra field", [("traceparent", f"00-{TRACE}-{SPAN}-01-00")], None),
    ("w3c 64-bit trace", [("traceparent", f"00-{TRACE64}-{SPAN}-01")], None),
    ("w3c short span", [("traceparent", f"00-{TRACE}-{SPAN[:15]}-01")], None),
    ("w3c wrong separator", [("traceparent", f"00_{TRACE}-{SPAN}-01")], None),
    ("w3c empty", [("traceparent", "")], None),
    ("w3c twice", [("traceparent", f"00-{TRACE}-{SPAN}-01"), ("traceparent", f"00-{TRACE}-{SPAN}-01")], None),
    ("tracestate alone", [("tracestate", "k=v")], None),
    ("b3 trace-span", [("b3", f"{TRACE}-{SPAN}")], (TRACE, SPAN, None)),
    ("b3 sampled", [("b3", f"{TRACE}-{SPAN}-1")], (TRACE, SPAN, True)),
    ("b3 not sampled", [("b3", f"{TRACE}-{SPAN}-0")], (TRACE, SPAN, False)),
    ("b3 debug", [("b3", f"{TRACE}-{SPAN}-d")], (TRACE, SPAN, True)),
    ("b3 with parent", [("b3", f"{TRACE}-{SPAN}-1-{PARENT}")], (TRACE, SPAN, True)),
    ("b3 64-bit padded", [("b3", f"{TRACE64}-{SPAN}-1")], (PADDED, SPAN, True)),
    ("b3 bad sampled", [("b3", f"{TRACE}-{SPAN}-x")], None),
    ("b3 parent without sampled", [("b3", f"{TRACE}-{SPAN}-{PARENT}")], None),
    ("b3 bad parent", [("b3", f"{TRACE}-{SPAN}-1-xyz")], None),
    ("b3 upper-case", [("b3", f"{TRACE.upper()}-{SPAN}-1")], None),
    ("b3 zero trace", [("b3", f"{'0' * 32}-{SPAN}-1")], None),
    ("b3 zero 64-bit trace", [("b3", f"{'0' * 16}-{SPAN}-1")], None),
    ("b3 zero span", [("b3", f"{TRACE}-{'0' * 16}-1")], None),
    ("b3 48-bit trace", [("b3", f"{TRACE[:12]}-{SPAN}-1")], None),
    ("b3 multi", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "1")], (TRACE, SPAN, True)),
    ("b3 multi lower-case names", [("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)], (TRACE, SPAN, None)),
    ("b3 multi true", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "true")],
     (TRACE, SPAN, True)),
    ("b3 multi false", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "false")],
     (TRACE, SPAN, False)),
    ("b3 multi 0", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "0")], (TRACE, SPAN, False)),
    ("b3 multi bad sampled is deferred", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "yes")],
     (TRACE, SPAN, None)),
    ("b3 multi debug flag", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Flags", "1")],
     (TRACE, SPAN, True)),
    ("b3 multi debug beats sampled 0",
     [("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "0"), ("X-B3-Flags", "1")],
     (TRACE, SPAN, True)),
    ("b3 multi 64-bit padded", [("X-B3-TraceId", TRACE64), ("X-B3-SpanId", SPAN), ("X-B3-ParentSpanId", PARENT)],
     (PADDED, SPAN, None)),
    ("b3 multi without span", [("X-B3-TraceId", TRACE), ("X-B3-ParentSpanId", PARENT)], None),
    ("b3 multi upper-case", [("X-B3-TraceId", TRACE.upper()), ("X-B3-SpanId", SPAN)], None),
    ("b3 multi zero trace", [("X-B3-TraceId", "0" * 16), ("X-B3-SpanId", SPAN)], None),
    ("b3 multi zero span", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", "0" * 16)], None),
    ("b3 multi twice", [("X-B3-TraceId", TRACE), ("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN)], None),
    ("w3c wins over b3", [("b3", f"{TRACE64}-{PARENT}-0"), ("traceparent", f"00-{TRACE}-{SPAN}-01")],
     (TRACE, SPAN, True)),
    ("invalid w3c falls to b3", [("traceparent", f"00-{TRACE}-{SPAN}"), ("b3", f"{TRACE64}-{SPAN}-0")],
     (PADDED, SPAN, False)),
    ("b3 wins over b3 multi", [("X-B3-TraceId", TRACE), ("X-B3-SpanId", PARENT), ("b3", f"{TRACE64}-{SPAN}-1")],
     (PADDED, SPAN, True)),
    ("invalid b3 falls to b3 multi",
     [("b3", "garbage"), ("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "1")],
     (TRACE, SPAN, True)),
    ("all invalid", [("traceparent", "x"), ("b3", "y"), ("X-B3-TraceId", "z"), ("X-B3-SpanId", SPAN)], None),
]


@pytest.mark.parametrize(("lines", "expected"), [c[1:] for c in EXTRACT], ids=[c[0] for c in EXTRACT])
def test_extraction(lines: list[tuple[str, str]], expected: tuple[str, str, bool | None] | None) -> None:
    for rate, deferred in ((1.0, True), (0.0, False)):
        ctx = tracer(sample_rate=rate).begin(*head(*lines))
        if expected is None:
            assert_new_root(ctx)
            assert ctx.sampled is deferred
            continue
        trace, parent, sampled = expected
        assert (ctx.trace_id, ctx.parent_span_id) == (trace, parent)
        assert ctx.sampled is (deferred if sampled is None else sampled)
        assert HEX16.match(ctx.span_id) and ctx.span_id != parent


@pytest.mark.parametrize(("value", "sampled"), [("1", True), ("d", True), ("0", False)])
def test_b3_sampling_only_header(value: str, sampled: bool) -> None:
    for rate in (0.0, 1.0):
        ctx = tracer(sample_rate=rate).begin(*head(("b3", value)))
        assert_new_root(ctx)
        assert ctx.sampled is sampled


@pytest.mark.parametrize(("lines", "sampled"), [
    ([("X-B3-Sampled", "0")], False),
    ([("X-B3-Sampled", "true")], True),
    ([("X-B3-Flags", "1")], True),
    ([("X-B3-TraceId", "nothex"), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "1")], True),
])
def test_b3_multi_sampling_without_ids_starts_a_root_with_that_decision(lines: list[tuple[str, str]],
                                                                      sampled: bool) -> None:
    for rate in (0.0, 1.0):
        ctx = tracer(sample_rate=rate).begin(*head(*lines))
        assert_new_root(ctx)
        assert ctx.sampled is sampled


def test_ids_from_the_real_parser() -> None:
    raw = (f"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nTRACEPARENT: 00-{TRACE}-{SPAN}-01\r\n"
           f"X-B3-TraceId: {TRACE64}\r\n\r\n").encode()
    h = _parser_py.parse_request(raw)
    assert h is not None
    ctx = tracer().begin(h.headers, h.header_ids)
    assert (ctx.trace_id, ctx.parent_span_id, ctx.sampled) == (TRACE, SPAN, True)
    no_trace = _parser_py.parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: t\r\nX-Other: 1\r\n\r\n")
    assert no_trace is not None
    assert_new_root(tracer().begin(no_trace.headers, no_trace.header_ids))


def test_fast_path_test_matches_max_for_every_id() -> None:
    # the rstrip shortcut must agree with "any id >= TRACEPARENT" for every single id and for mixtures
    for i in range(256):
        for ids in (bytes([i]), bytes([1, i, 0]), bytes([i, 0, 20])):
            assert bool(ids.rstrip(tracing._NON_TRACE_IDS)) is (max(ids) >= hdrs.TRACEPARENT)
    assert max(hdrs.NAMES.values()) == hdrs.X_B3_FLAGS
    assert min(v for k, v in hdrs.NAMES.items() if k in (b"traceparent", b"b3") or k.startswith(b"x-b3")) == 21


def test_no_headers_at_all() -> None:
    assert_new_root(tracer().begin([], b""))


@given(st.lists(st.tuples(st.sampled_from(["traceparent", "tracestate", "b3", "X-B3-TraceId", "X-B3-SpanId",
                                           "X-B3-ParentSpanId", "X-B3-Sampled", "X-B3-Flags", "User-Agent"]),
                          st.one_of(st.text("0123456789abcdefABCDEF-dtrue", max_size=70),
                                    st.binary(max_size=60).map(lambda b: b.decode("latin-1")))),
                max_size=6))
def test_any_header_values_give_a_valid_context(lines: list[tuple[str, str]]) -> None:
    t = Tracer(TracingConfig(propagation=("w3c", "b3", "b3multi"), sample_rate=0.5))
    headers = [(n.encode(), v.encode("latin-1")) for n, v in lines]
    ctx = t.begin(headers, bytes(hdrs.NAMES.get(n.lower(), 0) for n, _ in headers))
    assert HEX32.match(ctx.trace_id) and ctx.trace_id != "0" * 32
    assert HEX16.match(ctx.span_id) and ctx.span_id != "0" * 16
    assert ctx.parent_span_id is None or (HEX16.match(ctx.parent_span_id) and ctx.parent_span_id != ctx.span_id)
    assert ctx.inject.count(b"\r\n") == 5 + (ctx.parent_span_id is not None)


# --- sampling ---------------------------------------------------------------------------------------------------


def test_sample_rate_one_and_zero_never_call_the_random_source() -> None:
    assert all(tracer(sample_rate=1.0).begin([], b"").sampled for _ in range(50))
    assert not any(tracer(sample_rate=0.0).begin([], b"").sampled for _ in range(50))


def test_fractional_sample_rate_uses_the_random_source() -> None:
    draws = iter([0.1, 0.3, 0.29999, 0.9])
    t = tracer(sample_rate=0.3, rand=lambda: next(draws))
    assert [t.begin([], b"").sampled for _ in range(4)] == [True, False, True, False]


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_incoming_decision_is_respected(rate: float) -> None:
    t = tracer(sample_rate=rate)
    assert t.begin(*head(("traceparent", f"00-{TRACE}-{SPAN}-01"))).sampled
    assert not t.begin(*head(("traceparent", f"00-{TRACE}-{SPAN}-00"))).sampled
    assert t.begin(*head(("b3", f"{TRACE}-{SPAN}-1"))).sampled
    assert not t.begin(*head(("X-B3-TraceId", TRACE), ("X-B3-SpanId", SPAN), ("X-B3-Sampled", "0"))).sampled


def test_deferred_decision_uses_the_random_source() -> None:
    draws = iter([0.7, 0.2])
    t = tracer(sample_rate=0.5, rand=lambda: next(draws))
    assert not t.begin(*head(("b3", f"{TRACE}-{SPAN}"))).sampled
    assert t.begin(*head(("b3", f"{TRACE}-{SPAN}"))).sampled


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown format 'jaeger'"):
        Tracer(TracingConfig(propagation=("w3c", "jaeger")))
    with pytest.raises(ValueError, match="sample_rate"):
        Tracer(TracingConfig(sample_rate=1.5))
    with pytest.raises(ValueError, match="not an http"):
        Tracer(TracingConfig(otlp_endpoint="ftp://collector"))
    with pytest.raises(ValueError, match="invalid header"):
        Tracer(TracingConfig(otlp_endpoint="http://c:4318", otlp_headers={"X-A": "a\r\nInjected: 1"}))


# --- ids --------------------------------------------------------------------------------------------------------


def test_new_ids_are_random_and_well_formed() -> None:
    t = tracer()
    seen = [t.begin([], b"") for _ in range(400)]  # crosses a pool refill
    assert len({c.trace_id for c in seen}) == 400 and len({c.span_id for c in seen}) == 400
    for c in seen:
        assert HEX32.match(c.trace_id) and HEX16.match(c.span_id) and c.parent_span_id is None
    a, b = tracer().begin([], b""), tracer().begin([], b"")
    assert a.trace_id != b.trace_id and a.span_id != b.span_id


def test_continued_trace_gets_a_new_span_each_time() -> None:
    t = tracer()
    lines = head(("traceparent", f"00-{TRACE}-{SPAN}-01"))
    a, b = t.begin(*lines), t.begin(*lines)
    assert a.trace_id == b.trace_id == TRACE
    assert len({a.span_id, b.span_id, SPAN}) == 3


def test_random_bytes_are_drawn_4_kib_at_a_time() -> None:
    sizes: list[int] = []

    def urandom(n: int) -> bytes:
        sizes.append(n)
        return os.urandom(n)

    t = tracer(urandom=urandom)
    for _ in range(1000):
        t.begin([], b"")
    assert set(sizes) == {4096}
    assert len(sizes) == math.ceil(1000 / (4096 // 24))  # 24 bytes per root id pair


def test_all_zero_random_ids_are_redrawn() -> None:
    pools = iter([bytes(4096), bytes(4096), os.urandom(4096), os.urandom(4096)])
    t = tracer(urandom=lambda n: next(pools))
    ctx = t.begin([], b"")
    assert ctx.trace_id != "0" * 32 and ctx.span_id != "0" * 16
    ctx = t.begin(*head(("traceparent", f"00-{TRACE}-{SPAN}-01")))
    assert ctx.span_id != "0" * 16


# --- injection --------------------------------------------------------------------------------------------------


def expected_inject(mask: int, trace: str, span: str, sampled: bool, parent: str | None) -> bytes:
    out = ""
    if mask & W3C:
        out += f"traceparent: 00-{trace}-{span}-{'01' if sampled else '00'}\r\n"
    if mask & B3:
        out += f"b3: {trace}-{span}-{int(sampled)}\r\n"
    if mask & B3MULTI:
        out += f"X-B3-TraceId: {trace}\r\nX-B3-SpanId: {span}\r\nX-B3-Sampled: {int(sampled)}\r\n"
        if parent is not None:
            out += f"X-B3-ParentSpanId: {parent}\r\n"
    return out.encode()


PROPAGATIONS = [("w3c",), ("b3",), ("b3multi",), ("w3c", "b3"), ("b3multi", "w3c"), ("w3c", "b3", "b3multi")]


@pytest.mark.parametrize("propagation", PROPAGATIONS, ids="+".join)
@pytest.mark.parametrize("lines", [
    [],
    [("traceparent", f"00-{TRACE}-{SPAN}-01")],
    [("traceparent", f"00-{TRACE}-{SPAN}-00")],
    [("b3", f"{TRACE64}-{SPAN}")],
    [("b3", "0")],
], ids=["root", "w3c-sampled", "w3c-unsampled", "b3-64-deferred", "b3-deny"])
def test_inject_lines_per_mask(propagation: tuple[str, ...], lines: list[tuple[str, str]]) -> None:
    t = tracer(propagation=propagation)
    assert t.mask == sum({"w3c": W3C, "b3": B3, "b3multi": B3MULTI}[p] for p in propagation)
    ctx = t.begin(*head(*lines))
    assert ctx.inject == expected_inject(t.mask, ctx.trace_id, ctx.span_id, ctx.sampled, ctx.parent_span_id)


@pytest.mark.parametrize("propagation", PROPAGATIONS, ids="+".join)
def test_injected_headers_continue_the_trace_downstream(propagation: tuple[str, ...]) -> None:
    first = tracer(propagation=propagation).begin([], b"")
    lines = [tuple(line.split(": ", 1)) for line in first.inject.decode().splitlines()]
    nxt = tracer(propagation=propagation, sample_rate=0.0).begin(*head(*lines))  # type: ignore[arg-type]
    assert (nxt.trace_id, nxt.parent_span_id, nxt.sampled) == (first.trace_id, first.span_id, True)


# --- export: every test runs under the stdlib asyncio loop and under uvloop -------------------------------------



class Collector:
    """A tiny OTLP/HTTP receiver: stores each POST (path, lower-case headers, JSON body)."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.changed = asyncio.Event()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *fields = head.decode("latin-1").split("\r\n")[:-2]
        headers = {k.lower(): v for k, _, v in (f.partition(": ") for f in fields)}
        body = await reader.readexactly(int(headers["content-length"]))
        method, path, _ = request_line.split(" ")
        assert method == "POST"
        self.requests.append((path, headers, json.loads(body)))
        reply = b'{"partialSuccess":{}}'
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (self.status, len(reply), reply))
        await writer.drain()
        writer.close()
        self.changed.set()

    async def wait(self, n: int) -> None:
        """Wait (bounded) until ``n`` requests arrived."""
        async def until() -> None:
            while len(self.requests) < n:
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(until(), 5.0)

    def spans(self) -> list[dict[str, Any]]:
        return [s for _, _, doc in self.requests for s in doc["resourceSpans"][0]["scopeSpans"][0]["spans"]]


@asynccontextmanager
async def collector(status: int = 200) -> AsyncIterator[Collector]:
    c = Collector(status)
    server = await asyncio.start_server(c.handle, "127.0.0.1", 0)
    c.port = server.sockets[0].getsockname()[1]
    try:
        yield c
    finally:
        server.close()
        await server.wait_closed()


def exporter(endpoint: str, **kw: Any) -> Tracer:
    cfg = TracingConfig(propagation=("w3c",), sample_rate=1.0, otlp_endpoint=endpoint,
                        otlp_headers={"Authorization": "Bearer t0ken", "X-Tenant": "acme"}, service_name="edge-1")
    return Tracer(cfg, **kw)


def finish(t: Tracer, ctx: TraceContext, **over: Any) -> None:
    kw: dict[str, Any] = dict(start_wall=1700000000.5, end_wall=1700000000.75, method=b"POST", path=b"/v1/chat",
                              host=b"api.example.com:8443", status=200, client_ip="10.0.0.7", router="chat",
                              service="llm", backend="http://10.1.0.3:8000", retries=1, cold_start=True)
    kw.update(over)
    t.finish(ctx, **kw)


def attrs(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


def test_export_shape_headers_and_sampling(run: Run) -> None:
    async def main() -> None:
        async with collector() as c:
            t = exporter(f"http://127.0.0.1:{c.port}/otlp/", batch_interval=0.05)
            assert t.exporting
            t.start()
            incoming = t.begin(*head(("traceparent", f"00-{TRACE}-{SPAN}-01")))
            root = t.begin([], b"")
            unsampled = t.begin(*head(("traceparent", f"00-{TRACE}-{PARENT}-00")))
            finish(t, incoming)
            finish(t, unsampled)
            finish(t, root, method=b"GET", path=None, host=None, status=503, router="", backend=None, retries=0,
                   cold_start=False)
            await c.wait(1)  # sent by the interval timer, before close()
            await t.close()
        check(c, incoming, root)
        assert t.dropped == 0

    def check(c: Collector, incoming: TraceContext, root: TraceContext) -> None:
        path, headers, doc = c.requests[0]
        assert path == "/otlp/v1/traces"
        assert headers["content-type"] == "application/json"
        assert headers["authorization"] == "Bearer t0ken" and headers["x-tenant"] == "acme"
        assert headers["host"] == f"127.0.0.1:{c.port}"
        rs = doc["resourceSpans"]
        assert len(rs) == 1
        assert rs[0]["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "edge-1"}}]
        assert rs[0]["scopeSpans"][0]["scope"]["name"] == "a3s-gateway"

        spans = c.spans()
        assert [s["spanId"] for s in spans] == [incoming.span_id, root.span_id]  # the unsampled span is absent
        a, b = spans
        assert (a["traceId"], a["parentSpanId"], a["name"], a["kind"]) == (TRACE, SPAN, "POST chat", 2)
        assert (a["startTimeUnixNano"], a["endTimeUnixNano"]) == ("1700000000500000000", "1700000000750000000")
        assert "status" not in a or a["status"].get("code", 0) == 0
        assert attrs(a) == {
            "http.request.method": "POST", "url.path": "/v1/chat", "server.address": "api.example.com",
            "server.port": "8443", "http.response.status_code": "200", "client.address": "10.0.0.7",
            "a3s.router": "chat", "a3s.service": "llm", "a3s.backend": "http://10.1.0.3:8000", "a3s.retries": "1",
            "a3s.cold_start": True,
        }
        assert next(x for x in a["attributes"] if x["key"] == "a3s.retries")["value"] == {"intValue": "1"}
        assert (b["traceId"], b["name"], b["status"]) == (root.trace_id, "GET", {"code": 2})
        assert "parentSpanId" not in b
        assert attrs(b)["http.response.status_code"] == "503" and attrs(b)["a3s.cold_start"] is False
        assert "url.path" not in attrs(b) and "a3s.backend" not in attrs(b) and "server.address" not in attrs(b)

    run(main())


def test_full_batch_is_sent_without_waiting_for_the_interval(run: Run) -> None:
    async def main() -> None:
        async with collector() as c:
            t = exporter(f"http://127.0.0.1:{c.port}", batch_interval=3600)
            t.start()
            ctx = t.begin([], b"")
            for _ in range(tracing.BATCH_SIZE + 3):
                finish(t, ctx)
            await c.wait(1)
            assert len(c.requests[0][2]["resourceSpans"][0]["scopeSpans"][0]["spans"]) == tracing.BATCH_SIZE
            await t.close()
        assert [len(doc["resourceSpans"][0]["scopeSpans"][0]["spans"]) for _, _, doc in c.requests] == [512, 3]

    run(main())


def test_close_flushes_queued_spans(run: Run) -> None:
    async def main() -> None:
        async with collector() as c:
            t = exporter(f"http://127.0.0.1:{c.port}", batch_interval=3600)
            t.start()
            ctxs = [t.begin([], b"") for _ in range(3)]
            for ctx in ctxs:
                finish(t, ctx)
            await asyncio.sleep(0)  # let the exporter task start waiting for its interval
            assert c.requests == []
            await t.close()
            assert [s["spanId"] for s in c.spans()] == [ctx.span_id for ctx in ctxs]
            finish(t, ctxs[0])  # after close: ignored, nothing raised
            await t.close()
            assert len(c.spans()) == 3

    run(main())


def test_close_without_start_still_flushes(run: Run) -> None:
    async def main() -> None:
        async with collector() as c:
            t = exporter(f"http://127.0.0.1:{c.port}")
            finish(t, t.begin([], b""))
            await t.close()
            assert len(c.spans()) == 1

    run(main())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_endpoint_is_logged_not_raised(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        t = exporter(f"http://127.0.0.1:{closed_port()}", batch_interval=3600)
        t.start()
        finish(t, t.begin([], b""))
        await t.close()

    with caplog.at_level(logging.WARNING, logger="a3s_gateway.tracing"):
        run(main())
    [record] = [r for r in caplog.records if r.name == "a3s_gateway.tracing"]
    assert "export to http://127.0.0.1:" in record.getMessage() and "discarded" in record.getMessage()


def test_error_status_is_logged_and_rate_limited(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with collector(status=500) as c:
            t = exporter(f"http://127.0.0.1:{c.port}", batch_interval=3600, clock=lambda: 100.0)
            t.start()
            ctx = t.begin([], b"")
            for _ in range(tracing.BATCH_SIZE * 2):
                finish(t, ctx)
            await c.wait(2)
            await t.close()

    with caplog.at_level(logging.WARNING, logger="a3s_gateway.tracing"):
        run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "a3s_gateway.tracing"]
    assert len(messages) == 1 and "HTTP 500" in messages[0]


def test_queue_overflow_drops_and_warns_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    t = exporter("http://127.0.0.1:9", clock=lambda: now[0])  # not started: nothing drains the queue
    ctx = t.begin([], b"")
    with caplog.at_level(logging.WARNING, logger="a3s_gateway.tracing"):
        for _ in range(tracing.QUEUE_CAPACITY + 5):
            finish(t, ctx)
        now[0] = 10.0
        finish(t, ctx)
    assert t.dropped == 6
    warnings = [r.getMessage() for r in caplog.records if r.name == "a3s_gateway.tracing"]
    assert len(warnings) == 2 and "dropped 5 span(s)" in warnings[1]


def test_without_endpoint_nothing_is_exported(run: Run) -> None:
    async def main() -> None:
        t = tracer()
        assert not t.exporting
        t.start()
        finish(t, t.begin([], b""))
        await t.close()
        assert t.dropped == 0

    run(main())


def test_reserved_export_headers_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="a3s_gateway.tracing"):
        Tracer(TracingConfig(otlp_endpoint="https://collector.example:4318", otlp_headers={"Content-Length": "1"}))
    assert "Content-Length" in caplog.text


def test_close_is_bounded_when_the_collector_hangs(run: Run, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tracing, "CLOSE_TIMEOUT", 0.2)

    async def main() -> None:
        hung: list[asyncio.StreamWriter] = []

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hung.append(writer)

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        t = exporter(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", batch_interval=3600)
        t.start()
        finish(t, t.begin([], b""))
        await asyncio.wait_for(t.close(), 2.0)
        for w in hung:
            w.close()
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger="a3s_gateway.tracing"):
        run(main())
    assert "did not finish within" in caplog.text
