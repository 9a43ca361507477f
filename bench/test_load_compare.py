"""Load comparison of the gateway with nginx and haproxy (pytest entry; `make bench` or
`pytest bench --benchmark-only -s`). One test per wrk scenario, then SSE added latency and idle RSS.

Each test prints its table and appends JSON lines to .bench/results.jsonl. Missed targets are reported, not failed,
unless --load-enforce (BENCH_ENFORCE=1): on a shared 2-core VM run-to-run noise reaches 40%. A gateway that cannot
run yet makes the tests skip with the reason, after the nginx and haproxy rows are printed.
"""

from __future__ import annotations

from typing import Any

import idle_rss
import pytest
import sse_latency
from _peers import Lab, Log, plan_cpus
from load_compare import SCENARIOS, Recorder, Settings, format_result, run_scenario


def _conclude(pytestconfig: pytest.Config, gateway_problem: str | None, verdicts: list[str]) -> None:
    enforce = bool(pytestconfig.getoption("--load-enforce"))
    if gateway_problem:
        if enforce:
            pytest.fail(f"gateway not measured: {gateway_problem}", pytrace=False)
        pytest.skip(f"gateway not measured: {gateway_problem}")
    missed = [v for v in verdicts if not v.endswith("PASS")]
    if enforce and missed:
        pytest.fail("; ".join(missed), pytrace=False)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_load_compare(scenario: str, benchmark: Any, bench_lab: Lab, load_settings: Settings,
                      bench_recorder: Recorder, bench_log: Log, bench_summary: list[str],
                      pytestconfig: pytest.Config) -> None:
    if scenario not in load_settings.scenarios:
        pytest.skip(f"scenario {scenario} not selected (--load-scenarios)")
    result = benchmark.pedantic(run_scenario, args=(bench_lab, SCENARIOS[scenario], load_settings, bench_recorder,
                                                    bench_log), rounds=1, iterations=1)
    text = format_result(result)
    bench_log(text)
    bench_summary.append(text)
    benchmark.extra_info["ratios"] = result.ratios
    benchmark.extra_info["rows"] = {r.proxy: {"rps": r.rps, "p99_ms": r.p99_ms, "mbps": r.mbps,
                                              "cpu_us_per_req": r.cpu_us_per_req} for r in result.rows}
    for row in result.rows:
        if row.proxy == "nginx" and row.runs == 0:
            pytest.fail(f"nginx (the reference) produced no result: {row.problem}", pytrace=False)
        if row.errors and row.proxy != "gateway":
            pytest.fail(f"{row.proxy}: {row.errors} wrk errors", pytrace=False)
    gateway = next((r for r in result.rows if r.proxy == "gateway"), None)
    gateway_problem = result.gateway_problem or (f"{gateway.errors} wrk errors" if gateway and gateway.errors else None)
    _conclude(pytestconfig, gateway_problem if "gateway" in load_settings.proxies else None, result.verdicts)


def test_sse_added_latency(benchmark: Any, bench_lab: Lab, load_settings: Settings, bench_log: Log,
                           bench_summary: list[str], pytestconfig: pytest.Config) -> None:
    settings = sse_latency.Settings(duration=float(pytestconfig.getoption("--sse-duration")),
                                    repeat=load_settings.repeat, proxies=load_settings.proxies,
                                    results=load_settings.results)
    rows = benchmark.pedantic(sse_latency.measure_latency, args=(bench_lab, settings, bench_log), rounds=1,
                              iterations=1)
    text = sse_latency.format_rows(rows)
    bench_log(text)
    bench_summary.append(text)
    sse_latency.record(settings.results, settings, bench_lab, rows)
    benchmark.extra_info["rows"] = {r.target: {"p99_ms": r.p99_ms, "added_p99_ms": r.added_p99_ms} for r in rows}
    direct = rows[0]
    if direct.problem or not direct.events:
        pytest.fail(f"direct SSE measurement failed: {direct.problem or 'no events'}", pytrace=False)
    gateway = next((r for r in rows if r.target == "gateway"), None)
    problem = gateway.problem if gateway else None
    _conclude(pytestconfig, problem if "gateway" in load_settings.proxies else None, [sse_latency.verdict(rows)])


def test_idle_rss_per_connection(benchmark: Any, load_settings: Settings, bench_log: Log, bench_summary: list[str],
                                 pytestconfig: pytest.Config) -> None:
    # Fresh proxies of its own: the session's have relayed 1 MiB bodies, and freed heap that stays resident would
    # absorb the memory of new connections.
    connections = int(pytestconfig.getoption("--idle-connections"))
    cpu = int(pytestconfig.getoption("--load-proxy-cpu"))
    results, info = benchmark.pedantic(
        idle_rss.run_fresh, args=(load_settings.proxies, connections, 1.0, plan_cpus(None if cpu < 0 else cpu),
                                  bench_log), rounds=1, iterations=1)
    text = idle_rss.format_results(results)
    bench_log(text)
    bench_summary.append(text)
    idle_rss.record(load_settings.results, results, {"gateway": info})
    benchmark.extra_info["kib_per_conn"] = {r.target: max(r.kib_per_conn, r.marginal_kib_per_conn) for r in results}
    gateway = next((r for r in results if r.target == "gateway"), None)
    problem = gateway.problem if gateway else None
    _conclude(pytestconfig, problem if "gateway" in load_settings.proxies else None, [idle_rss.verdict(results)])
