"""Prometheus exposition (SPEC §11.2): a custom collector reads the hot-path counters at scrape time.

The request path only adds to integers on native objects (``stats.py``, ``Backend``); nothing here runs per
request. Each scrape walks the running generation's objects and yields metric families; prometheus-client's
process and Python collectors are registered beside it. Every gateway has its own registry (several gateways in
one process, as in tests, never share series).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .stats import BUCKETS, RATE_BUCKETS, Histogram, RateHistogram


class MetricsSource(Protocol):
    """What the collector reads at scrape time; implemented by the Gateway (observability never imports it)."""

    runtime: Any  # the running generation: route_stats, middlewares, services, scale_targets, mirror_counts
    reload_successes: int
    reload_failures: int
    last_success_time: float

    @property
    def generation(self) -> int: ...

    @property
    def access_log_dropped(self) -> int: ...

    def connection_counts(self) -> dict[str, int]: ...

    def http2_abuse_counts(self) -> dict[tuple[str, str], int]: ...

    def connection_rejections(self) -> dict[str, dict[str, int]]: ...

    def tls_reload_errors(self) -> dict[str, int]: ...

    def tls_certificate_expiry(self) -> dict[tuple[str, str], float]: ...

    def l4_servers(self) -> Any: ...

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LE = [repr(b) for b in BUCKETS] + ["+Inf"]  # "0.005" ... "600.0", as prometheus-client writes them


_RATE_LE = [repr(b) for b in RATE_BUCKETS] + ["+Inf"]


def _cumulative(bounds: list[str], counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative ``le`` buckets."""
    out: list[tuple[str, float]] = []
    total = 0
    for le, n in zip(bounds, counts, strict=True):
        total += n
        out.append((le, total))
    return out


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    return _cumulative(_LE, h.counts)


def _rate_buckets(h: RateHistogram) -> list[tuple[str, float]]:
    return _cumulative(_RATE_LE, h.counts)


def _llm_families(route_stats: list[Any]) -> list[Metric]:
    """Per-model families of inspected requests (SPEC §16.6)."""
    labels = ["router", "service", "model"]
    requests = CounterMetricFamily("gateway_llm_requests", "Inspected requests by model and status.",
                                   labels=[*labels, "code"])
    tokens = CounterMetricFamily("gateway_llm_tokens", "Tokens of inspected requests by kind and source.",
                                 labels=[*labels, "kind", "source"])
    ttft = HistogramMetricFamily("gateway_llm_time_to_first_token_seconds",
                                 "Upstream request sent to the first content event of a stream.", labels=labels)
    inter = HistogramMetricFamily("gateway_llm_inter_token_seconds",
                                  "Gap between two content events of one stream.", labels=labels)
    rate = HistogramMetricFamily("gateway_llm_output_tokens_per_second",
                                 "Output tokens / (last - first content event time), per stream.", labels=labels)
    for st in route_stats:
        for model, ms in sorted(st.models.items()):
            names = [st.router, st.service, model]
            for code, n in ms.codes.items():
                requests.add_metric([*names, str(code)], n)
            for kind, source, n in (("input", "reported", ms.input_reported),
                                    ("output", "reported", ms.output_reported),
                                    ("input", "estimated", ms.input_estimated),
                                    ("output", "estimated", ms.output_estimated)):
                if n:
                    tokens.add_metric([*names, kind, source], n)
            if ms.ttft.count():
                ttft.add_metric(names, _buckets(ms.ttft), ms.ttft.total)
            if ms.inter_token.count():
                inter.add_metric(names, _buckets(ms.inter_token), ms.inter_token.total)
            if sum(ms.tokens_per_second.counts):
                rate.add_metric(names, _rate_buckets(ms.tokens_per_second), ms.tokens_per_second.total)
    return [requests, tokens, ttft, inter, rate]


class GatewayCollector:
    """Yields the gateway_* families of SPEC §11.2 from one Gateway's live objects."""

    def __init__(self, gateway: MetricsSource) -> None:
        self.gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # families are discovered at collect time (registered with auto_describe off)

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        runtime = gw.runtime
        route_stats = list(runtime.route_stats.values()) if runtime is not None else []

        requests = CounterMetricFamily(
            "gateway_requests", "Completed HTTP requests, including gateway and middleware responses.",
            labels=["router", "service", "method", "code"],
        )
        duration = HistogramMetricFamily(
            "gateway_request_duration_seconds", "Request start to last response byte.", labels=["router", "service"]
        )
        ttfb = HistogramMetricFamily(
            "gateway_upstream_ttfb_seconds",
            "Upstream request sent to first response body byte (time to first token for streams).",
            labels=["router", "service"],
        )
        gaps = HistogramMetricFamily(
            "gateway_stream_chunk_gap_seconds", "Gap between consecutive response body chunks from the backend.",
            labels=["router", "service", "revision"],
        )
        failures = CounterMetricFamily(
            "gateway_stream_failures", "Backend failures after the response head.",
            labels=["router", "service", "kind"],
        )
        gone = CounterMetricFamily(
            "gateway_client_disconnects", "Client gone before the response ended.",
            labels=["router", "service", "phase"],
        )
        for st in route_stats:
            labels = [st.router, st.service]
            for method, code, n in st.request_counts():
                requests.add_metric([*labels, method, str(code)], n)
            duration.add_metric(labels, _buckets(st.duration), st.duration.total)
            ttfb.add_metric(labels, _buckets(st.ttfb), st.ttfb.total)
            if st.chunk_gap.count():
                gaps.add_metric([*labels, ""], _buckets(st.chunk_gap), st.chunk_gap.total)
            for revision, h in sorted(st.revision_gap.items()):
                gaps.add_metric([*labels, revision], _buckets(h), h.total)
            if st.sse_errors:
                failures.add_metric([*labels, "sse_error"], st.sse_errors)
            if st.truncated:
                failures.add_metric([*labels, "truncated"], st.truncated)
            for phase, n in (("queued", st.gone_queued), ("waiting_head", st.gone_waiting_head),
                             ("streaming", st.gone_streaming)):
                if n:
                    gone.add_metric([*labels, phase], n)
        retries = CounterMetricFamily("gateway_retries", "Retry attempts.", labels=["router", "service"])
        for st in route_stats:
            if st.retries:
                retries.add_metric([st.router, st.service], st.retries)
        yield from (requests, duration, ttfb, gaps, failures, gone, retries)
        yield from _llm_families(route_stats)

        breaker = GaugeMetricFamily("gateway_circuit_breaker_state", "0 closed, 1 open, 2 half-open.",
                                    labels=["router", "middleware"])
        rejected = CounterMetricFamily("gateway_ratelimit_rejections", "Requests answered 429 by a rate limit.",
                                       labels=["router", "middleware"])
        redis_errors = CounterMetricFamily("gateway_ratelimit_redis_errors",
                                           "Redis failures of rate-limit-redis and token-limit.",
                                           labels=["router", "middleware"])
        token_rejected = CounterMetricFamily("gateway_token_limit_rejections",
                                             "Requests answered 429 by a token-limit.", labels=["router", "middleware"])
        if runtime is not None:
            for (router, name), (_, mw) in sorted(runtime.middlewares.items()):
                if mw.kind == "circuit-breaker":
                    mw.poll(time.monotonic())  # an elapsed cooldown shows as half-open without waiting for traffic
                    breaker.add_metric([router, name], mw.state)
                elif mw.kind in ("rate-limit", "rate-limit-redis"):
                    rejected.add_metric([router, name], int(getattr(mw, "rejections", 0)))
                    if mw.kind == "rate-limit-redis":
                        redis_errors.add_metric([router, name], int(getattr(mw, "errors", 0)))
                elif mw.kind == "token-limit":
                    token_rejected.add_metric([router, name], int(getattr(mw, "rejections", 0)))
                    if getattr(mw, "redis_url", ""):
                        redis_errors.add_metric([router, name], int(getattr(mw, "errors", 0)))
        yield from (breaker, rejected, redis_errors, token_rejected)

        active = GaugeMetricFamily("gateway_active_connections", "Open downstream connections.",
                                   labels=["entrypoint"])
        for name, count in gw.connection_counts().items():
            active.add_metric([name], count)
        yield active
        abuse = CounterMetricFamily("gateway_http2_abuse", "HTTP/2 connections closed with ENHANCE_YOUR_CALM.",
                                    labels=["entrypoint", "kind"])
        for (entrypoint, kind), n in sorted(gw.http2_abuse_counts().items()):
            abuse.add_metric([entrypoint, kind], n)
        yield abuse
        conn_rejected = CounterMetricFamily("gateway_connections_rejected",
                                            "HTTP connections closed right after accept (max_connections).",
                                            labels=["entrypoint", "reason"])
        for name, by_reason in gw.connection_rejections().items():
            for reason, n in sorted(by_reason.items()):
                conn_rejected.add_metric([name, reason], n)
        yield conn_rejected
        tls_errors = CounterMetricFamily("gateway_tls_reload_errors", "Certificate files that failed to reload.",
                                         labels=["entrypoint"])
        for name, n in sorted(gw.tls_reload_errors().items()):
            tls_errors.add_metric([name], n)
        yield tls_errors
        expiry = GaugeMetricFamily("gateway_tls_certificate_expiry_timestamp_seconds", "Certificate notAfter.",
                                   labels=["entrypoint", "domain"])
        for (name, domain), when in sorted(gw.tls_certificate_expiry().items()):
            expiry.add_metric([name, domain], when)
        yield expiry
        tcp_rejected = CounterMetricFamily("gateway_tcp_connections_rejected", "TCP connections refused.",
                                           labels=["entrypoint", "reason"])
        udp_sessions = GaugeMetricFamily("gateway_udp_sessions", "Active UDP sessions.", labels=["entrypoint"])
        udp_dropped = CounterMetricFamily("gateway_udp_datagrams_dropped", "Datagrams dropped at the session limit.",
                                          labels=["entrypoint"])
        for name, kind, server in gw.l4_servers():
            if kind == "tcp":
                for reason, n in sorted(server.stats.rejected.items()):
                    tcp_rejected.add_metric([name, reason], n)
            else:
                udp_sessions.add_metric([name], len(server.sessions))
                udp_dropped.add_metric([name], server.dropped)
        yield from (tcp_rejected, udp_sessions, udp_dropped)

        up = GaugeMetricFamily("gateway_backend_up", "1 eligible, 0 not.", labels=["service", "backend"])
        in_flight = GaugeMetricFamily("gateway_backend_in_flight", "In-flight requests/tunnels.",
                                      labels=["service", "backend"])
        attempts = CounterMetricFamily("gateway_backend_requests", "Attempts per backend.",
                                       labels=["service", "backend", "code"])
        if runtime is not None:
            for svc in runtime.services.values():
                for b in svc.backends:
                    up.add_metric([svc.name, b.url], 1 if b.eligible else 0)
                    in_flight.add_metric([svc.name, b.url], b.load())  # the instance's, with workers
                    for code, n in b.codes.items():
                        attempts.add_metric([svc.name, b.url, str(code)], n)
        yield from (up, in_flight, attempts)
        rev_requests = CounterMetricFamily("gateway_revision_requests", "Attempts per revision.",
                                           labels=["service", "revision", "code"])
        rev_ttfb = HistogramMetricFamily("gateway_revision_ttfb_seconds", "TTFB per router and revision.",
                                         labels=["router", "service", "revision"])
        split = GaugeMetricFamily("gateway_rollout_traffic_percent", "Current split.", labels=["service", "revision"])
        if runtime is not None:
            for svc in runtime.services.values():
                by_revision: dict[tuple[str, int], int] = {}
                for b in svc.backends:
                    if b.revision:
                        for code, n in b.codes.items():
                            key = (b.revision, code)
                            by_revision[key] = by_revision.get(key, 0) + n
                for (revision, code), n in sorted(by_revision.items()):
                    rev_requests.add_metric([svc.name, revision, str(code)], n)
                for revision_pool in getattr(svc.balancer, "revisions", ()):
                    split.add_metric([svc.name, revision_pool.name], revision_pool.percent)
        for st in route_stats:
            for revision, h in sorted(st.revision_ttfb.items()):
                rev_ttfb.add_metric([st.router, st.service, revision], _buckets(h), h.total)
        rollout_state = GaugeMetricFamily("gateway_rollout_state", "1 for the current state, 0 for the others.",
                                          labels=["service", "state"])
        if runtime is not None:
            for svc in runtime.services.values():
                rollout = svc.rollout
                if rollout is not None:
                    for state in ("progressing", "completed", "rolled_back"):
                        rollout_state.add_metric([svc.name, state], 1 if rollout.state == state else 0)
        yield from (rev_requests, rev_ttfb, split, rollout_state)
        desired = GaugeMetricFamily("gateway_autoscaler_desired_replicas", "Desired replicas.", labels=["service"])
        actual = GaugeMetricFamily("gateway_autoscaler_actual_replicas", "Replicas reported by the executor.",
                                   labels=["service"])
        ready = GaugeMetricFamily("gateway_autoscaler_ready_replicas", "Ready replicas.", labels=["service"])
        panic = GaugeMetricFamily("gateway_autoscaler_panic", "1 in panic mode.", labels=["service"])
        executor_errors = CounterMetricFamily("gateway_executor_errors", "Failed executor calls.",
                                              labels=["service", "executor"])
        depth = GaugeMetricFamily("gateway_buffer_queue_depth", "Queued requests.", labels=["service"])
        waited = HistogramMetricFamily("gateway_buffer_wait_seconds", "Time spent queued (all outcomes).",
                                       labels=["service"])
        rejections = CounterMetricFamily("gateway_buffer_rejections", "Queued requests not dispatched, by reason.",
                                         labels=["service", "reason"])
        if runtime is not None:
            for tname, (_, target) in sorted(runtime.scale_targets.items()):
                desired.add_metric([tname], target.autoscaler.desired)
                actual.add_metric([tname], target.actual)
                ready.add_metric([tname], target.ready_count())
                panic.add_metric([tname], 1 if target.autoscaler.panic else 0)
                executor_errors.add_metric([tname, target.cfg.executor], target.executor_errors)
                depth.add_metric([tname], len(target.queue))
                waited.add_metric([tname], _buckets(target.wait), target.wait.total)
                for reason, n in target.rejections.items():
                    rejections.add_metric([tname, reason], n)
        yield from (desired, actual, ready, panic, executor_errors, depth, waited, rejections)
        mirrors = CounterMetricFamily("gateway_mirror_requests", "Mirrored copies by result.",
                                      labels=["service", "result"])
        if runtime is not None:
            for name, counts in sorted(runtime.mirror_counts.items()):
                mirrors.add_metric([name, "sent"], counts.sent)
                mirrors.add_metric([name, "failed"], counts.failed)
                mirrors.add_metric([name, "skipped"], counts.skipped)
        yield mirrors
        queue = GaugeMetricFamily("gateway_backend_queue_depth", "Waiting requests a model server reports.",
                                  labels=["service", "backend"])
        kv = GaugeMetricFamily("gateway_backend_kv_cache_usage", "KV-cache use (0-1) a model server reports.",
                               labels=["service", "backend"])
        hits = CounterMetricFamily("gateway_inference_prefix_hits", "Picks that followed the prompt-prefix affinity.",
                                   labels=["service"])
        if runtime is not None:
            for svc in runtime.services.values():
                if svc.scraper is None:
                    continue
                for b in svc.backends:
                    if b.scraped_at >= 0.0:
                        queue.add_metric([svc.name, b.url], b.waiting)
                        kv.add_metric([svc.name, b.url], b.kv_usage)
                hits.add_metric([svc.name], sum(b.prefix_hits for b in svc.backends))
        yield from (queue, kv, hits)

        reloads = CounterMetricFamily("gateway_config_reloads", "Configuration reloads by result.",
                                      labels=["result"])
        reloads.add_metric(["success"], gw.reload_successes)
        reloads.add_metric(["failure"], gw.reload_failures)
        yield reloads
        last = GaugeMetricFamily("gateway_config_last_reload_success_timestamp_seconds",
                                 "Time of the last successful (re)load.")
        last.add_metric([], gw.last_success_time)
        yield last
        generation = GaugeMetricFamily("gateway_config_generation", "Current generation number.")
        generation.add_metric([], gw.generation)
        yield generation
        dropped = CounterMetricFamily("gateway_access_log_dropped",
                                      "Entries dropped because the log queue was full.")
        dropped.add_metric([], gw.access_log_dropped)
        yield dropped


def make_registry(gateway: MetricsSource) -> CollectorRegistry:
    """A registry with the gateway collector and the standard process / platform / GC collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: Any) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return bytes(generate_latest(registry))
