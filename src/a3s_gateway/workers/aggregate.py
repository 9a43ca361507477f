"""Instance totals from worker snapshots (SPEC §13.4): what ``/metrics`` and the admin API of a supervisor show.

Each worker answers a ``collect`` request with a :func:`snapshot` of its own data plane; the supervisor sums the
snapshots. Counters and histograms are summed per series, so the totals equal what clients observed across all
workers. The families only the control plane knows (backend health, autoscaler, rollout, reloads) come from the
supervisor itself; circuit-breaker state is per worker (SPEC §13.4) and shows the most open one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client.core import Metric

from ..observability.metrics import GatewayCollector, MetricsSource

#: families the supervisor answers from its own objects (workers run no probe, autoscaler, executor or rollout)
SUPERVISOR_FAMILIES: Final = frozenset({
    "gateway_backend_up",
    "gateway_backend_in_flight",  # read from the shared segment
    "gateway_backend_queue_depth",  # model-server metrics: the supervisor scrapes them (§16.5)
    "gateway_backend_kv_cache_usage",
    "gateway_rollout_traffic_percent",
    "gateway_rollout_state",
    "gateway_autoscaler_desired_replicas",
    "gateway_autoscaler_actual_replicas",
    "gateway_autoscaler_ready_replicas",
    "gateway_autoscaler_panic",
    "gateway_executor_errors",
    "gateway_config_reloads",
    "gateway_config_last_reload_success_timestamp_seconds",
    "gateway_config_generation",
})
#: per-worker state shown as the maximum over the workers (a breaker open in one worker shows open)
#: and certificate expiry (every worker serves the same certificates: a sum would be meaningless)
MAX_FAMILIES: Final = frozenset({"gateway_circuit_breaker_state", "gateway_tls_certificate_expiry_timestamp_seconds"})

#: a family as it crosses the channel: (name, type, documentation, [(sample name, labels, value)])
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


def families(metrics: Iterable[Metric]) -> list[Family]:
    return [(m.name, m.type, m.documentation, [(s.name, dict(s.labels), float(s.value)) for s in m.samples])
            for m in metrics]


def snapshot(gateway: MetricsSource) -> dict[str, Any]:
    """One worker's numbers: its metric families, open connections and requests (in-flight counts per backend are
    read from the shared segment, not from snapshots)."""
    runtime = gateway.runtime
    total = sum(st.total_requests() for st in runtime.route_stats.values()) if runtime is not None else 0
    return {
        "families": families(GatewayCollector(gateway).collect()),
        "connections": gateway.connection_counts(),
        "total_requests": total,
    }


def merge(local: Iterable[Metric], workers: list[list[Family]]) -> Iterator[Metric]:
    """The supervisor's families: its own for :data:`SUPERVISOR_FAMILIES`, the workers' summed for the others."""
    order: list[str] = []
    merged: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    own: dict[str, Metric] = {}
    for metric in local:
        if metric.name in SUPERVISOR_FAMILIES:
            own[metric.name] = metric
            order.append(metric.name)
        elif metric.name not in merged:
            merged[metric.name] = (metric.type, metric.documentation, {})
            order.append(metric.name)
    for worker in workers:
        for name, kind, doc, samples in worker:
            if name in SUPERVISOR_FAMILIES:
                continue
            entry = merged.get(name)
            if entry is None:
                entry = merged[name] = (kind, doc, {})
                order.append(name)
            series = entry[2]
            for sample, labels, value in samples:
                key = (sample, tuple(sorted(labels.items())))
                if name in MAX_FAMILIES:
                    series[key] = max(series.get(key, value), value)
                else:
                    series[key] = series.get(key, 0.0) + value
    for name in order:
        if name in own:
            yield own[name]
            continue
        kind, doc, series = merged[name]
        metric = Metric(name, doc, kind)
        for (sample, pairs), value in series.items():
            metric.add_sample(sample, dict(pairs), value)
        yield metric


class MergedCollector:
    """The supervisor's ``gateway_*`` collector: its own families merged with the workers' last snapshots."""

    def __init__(self, gateway: MetricsSource, snapshots: Any) -> None:
        self.local = GatewayCollector(gateway)
        self.snapshots = snapshots  # () -> list of the workers' family lists

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return merge(self.local.collect(), self.snapshots())
