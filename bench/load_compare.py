"""Load comparison: the gateway against nginx and haproxy on the same backend, with wrk, in one run.

    python bench/load_compare.py --duration 10 --connections 64 --scenarios small,1mib,post16k,sse --repeat 3

For each scenario and repetition every proxy gets the same wrk run in turn (the order rotates between repetitions).
Reported per proxy: requests/s, latency p50/p99, MB/s, and the proxy's CPU µs per request (utime + stime of the proxy
process tree from /proc/PID/stat around the run, ÷ completed requests). Ratios gateway/peer are medians of the
per-repetition ratios. Results are appended as JSON lines to .bench/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _peers import (
    POST_BYTES,
    PROXIES,
    RESULTS_PATH,
    SSE_LOAD_EVENTS,
    CpuPlan,
    Lab,
    Log,
    PeerError,
    Target,
    cpu_seconds,
    describe_targets,
    ensure_tools,
    find_tool,
    loadavg,
    pinned,
    plan_cpus,
    stop_on_sigterm,
    tool_version,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    method: str
    path: str
    body_bytes: int = 0
    close: bool = False  # a new connection per request (Connection: close)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("small", "small keep-alive GET (128 B body)", "GET", "/small"),
    Scenario("close", "small GET on a new connection each (Connection: close)", "GET", "/small", close=True),
    Scenario("1mib", "1 MiB GET", "GET", "/1mib"),
    Scenario("post16k", "16 KiB POST", "POST", "/post", POST_BYTES),
    Scenario("sse", f"SSE stream ({SSE_LOAD_EVENTS} events, one chunk each)", "GET", f"/sse?n={SSE_LOAD_EVENTS}"),
)}

# Issue targets, checked on the gateway/nginx medians: scenario -> [(metric, bound kind, bound)].
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "small": [("cpu_us_per_req", "<=", 2.0), ("rps", ">=", 0.6)],
    "1mib": [("mbps", ">=", 0.9)],
}

# wrk calls done() once at the end; one JSON line is easier to trust than scraping its text report.
LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%.0f,"bytes":%.0f,"duration_us":%.0f,"p50_us":%.0f,"p90_us":%.0f,"p99_us":%.0f,' ..
    '"max_us":%.0f,"mean_us":%.1f,"err_connect":%.0f,"err_read":%.0f,"err_write":%.0f,"err_status":%.0f,' ..
    '"err_timeout":%.0f}\n',
    summary.requests, summary.bytes, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


class WrkError(RuntimeError):
    """wrk did not run or printed no result."""


@dataclass
class Run:
    """One wrk run through one proxy."""

    scenario: str
    proxy: str
    repeat: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    mbps: float
    cpu_us_per_req: float | None
    errors: int
    wrk: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    """Medians over the repetitions of one proxy in one scenario, or why there are none."""

    proxy: str
    runs: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    mbps: float = 0.0
    cpu_us_per_req: float | None = None
    errors: int = 0
    problem: str | None = None


@dataclass
class ScenarioResult:
    scenario: Scenario
    rows: list[Row]
    runs: list[Run]
    ratios: dict[str, dict[str, float | None]]  # "gateway/nginx" -> metric -> median ratio
    verdicts: list[str]
    gateway_problem: str | None


def wrk_script(directory: Path, scenario: Scenario) -> Path:
    """The Lua file for a scenario: request set-up (POST body) plus the JSON done() hook."""
    lines = []
    if scenario.method != "GET":
        lines.append(f'wrk.method = "{scenario.method}"')
    if scenario.close:
        lines.append('wrk.headers["Connection"] = "close"')
    if scenario.body_bytes:
        lines.append(f'wrk.body = string.rep("p", {scenario.body_bytes})')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    path = directory / f"wrk-{scenario.name}.lua"
    path.write_text("\n".join(lines) + LUA_DONE)
    return path


def run_wrk(url: str, script: Path, duration: float, connections: int, threads: int, cpus: Sequence[int]) -> dict[
        str, float]:
    """One wrk run; the numbers of its done() hook."""
    wrk = find_tool("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed (apt-get install -y wrk)")
    seconds = max(1, round(duration))
    argv = pinned([wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
                   "-s", str(script), url], cpus)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as e:
        raise WrkError(f"wrk did not finish: {e}") from e
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            data: dict[str, float] = json.loads(line[len("WRKJSON "):])
            return data
    raise WrkError(f"wrk exited {out.returncode} without a result: {(out.stderr or out.stdout).strip()[-500:]}")


def measure(target: Target, scenario: Scenario, script: Path, duration: float, connections: int, threads: int,
            cpus: CpuPlan, repeat: int) -> Run:
    """One measured wrk run through `target`, with the proxy's CPU time around it."""
    url = f"http://127.0.0.1:{target.port_for(scenario.path)}{scenario.path}"
    pids = target.pids()
    cpu_before = cpu_seconds(pids)
    data = run_wrk(url, script, duration, connections, threads, cpus.client)
    cpu_after = cpu_seconds(pids)
    requests = int(data["requests"])
    secs = data["duration_us"] / 1e6 or duration
    errors = int(sum(v for k, v in data.items() if k.startswith("err_")))
    cpu = (cpu_after - cpu_before) * 1e6 / requests if pids and requests else None
    return Run(scenario.name, target.name, repeat, requests, secs, requests / secs, data["p50_us"] / 1000,
               data["p99_us"] / 1000, data["bytes"] / secs / 1e6, cpu, errors, data)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def summarise(scenario: Scenario, names: Sequence[str], runs: list[Run], problems: dict[str, str]) -> ScenarioResult:
    rows: list[Row] = []
    for name in names:
        mine = [r for r in runs if r.proxy == name]
        if not mine:
            rows.append(Row(name, problem=problems.get(name, "no runs")))
            continue
        cpus = [r.cpu_us_per_req for r in mine if r.cpu_us_per_req is not None]
        rows.append(Row(name, len(mine), _median([r.rps for r in mine]), _median([r.p50_ms for r in mine]),
                        _median([r.p99_ms for r in mine]), _median([r.mbps for r in mine]),
                        _median(cpus) if cpus else None, sum(r.errors for r in mine), problems.get(name)))
    ratios: dict[str, dict[str, float | None]] = {}
    for peer in ("nginx", "haproxy"):
        if peer not in names or "gateway" not in names:
            continue
        ratios[f"gateway/{peer}"] = {m: _paired_ratio(runs, peer, m) for m in
                                     ("rps", "p50_ms", "p99_ms", "mbps", "cpu_us_per_req")}
    verdicts = []
    for metric, kind, bound in TARGETS.get(scenario.name, []):
        value = ratios.get("gateway/nginx", {}).get(metric)
        label = {"cpu_us_per_req": "CPU µs/req", "rps": "req/s", "mbps": "MB/s"}[metric]
        if value is None:
            verdicts.append(f"target gateway/nginx {label} {kind} {bound}×: not measured")
        else:
            ok = value <= bound if kind == "<=" else value >= bound
            verdicts.append(f"target gateway/nginx {label} {kind} {bound}×: {value:.2f}× {'PASS' if ok else 'MISS'}")
    return ScenarioResult(scenario, rows, runs, ratios, verdicts, problems.get("gateway"))


def _paired_ratio(runs: list[Run], peer: str, metric: str) -> float | None:
    """Median over repetitions of gateway/peer for `metric`, pairing runs of the same repetition."""
    by_rep: dict[int, dict[str, float]] = {}
    for r in runs:
        value = getattr(r, metric)
        if r.proxy in ("gateway", peer) and value is not None:
            by_rep.setdefault(r.repeat, {})[r.proxy] = float(value)
    ratios = [v["gateway"] / v[peer] for v in by_rep.values() if "gateway" in v and v.get(peer)]
    return _median(ratios) if ratios else None


def format_result(res: ScenarioResult) -> str:
    """The scenario's table: one row per proxy, then the ratios and the target verdicts."""
    out = [f"\n== {res.scenario.title}: {res.scenario.method} {res.scenario.path}",
           f"{'proxy':<10}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'MB/s':>10}{'CPU µs/req':>12}{'errors':>8}"]
    for row in res.rows:
        if row.runs == 0:
            out.append(f"{row.proxy:<10}  -- {row.problem}")
            continue
        cpu = f"{row.cpu_us_per_req:.1f}" if row.cpu_us_per_req is not None else "-"
        out.append(f"{row.proxy:<10}{row.rps:>11,.0f}{row.p50_ms:>9.2f}{row.p99_ms:>9.2f}{row.mbps:>10,.1f}"
                   f"{cpu:>12}{row.errors:>8}" + (f"  ({row.problem})" if row.problem else ""))
    if any(v is not None for values in res.ratios.values() for v in values.values()):
        out.append(f"{'ratio':<16}{'req/s':>8}{'p50':>8}{'p99':>8}{'MB/s':>8}{'CPU µs/req':>12}")
        for pair, values in res.ratios.items():
            cells = [f"{v:.2f}×" if v is not None else "-" for v in
                     (values[m] for m in ("rps", "p50_ms", "p99_ms", "mbps", "cpu_us_per_req"))]
            out.append(f"{pair:<16}{cells[0]:>8}{cells[1]:>8}{cells[2]:>8}{cells[3]:>8}{cells[4]:>12}")
    out.extend(res.verdicts)
    return "\n".join(out)


@dataclass
class Settings:
    duration: float = 10.0
    connections: int = 64
    threads: int = 0  # 0 = one per load-generator core
    repeat: int = 3
    warmup: float = 1.0
    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    proxies: tuple[str, ...] = PROXIES
    results: Path | None = RESULTS_PATH

    def wrk_threads(self, cpus: CpuPlan) -> int:
        if self.threads > 0:
            return min(self.threads, self.connections)
        n = len(cpus.client) if cpus.pinned else min(2, os.cpu_count() or 1)
        return max(1, min(n, self.connections))


class Recorder:
    """Appends JSON lines to the results file (one per run, one summary per scenario)."""

    def __init__(self, path: Path | None, context: dict[str, object]) -> None:
        self.path = path
        self.context = context
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, object]) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({**self.context, **record}, default=str) + "\n")


def run_context(lab: Lab, settings: Settings, kind: str) -> dict[str, object]:
    """What a result line needs to be interpreted later."""
    return {
        "bench": kind,
        "run_id": f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}",
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": loadavg()},
        "cpu_plan": asdict(lab.cpus),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "versions": {t.name: t.version for t in lab.targets.values()} | {"wrk": tool_version(["wrk", "-v"])},
        "gateway": lab.gateway_info,
    }


def run_scenario(lab: Lab, scenario: Scenario, settings: Settings, recorder: Recorder, log: Log) -> ScenarioResult:
    """All repetitions of one scenario through every requested proxy, interleaved."""
    names = [n for n in settings.proxies if n in lab.targets]
    problems: dict[str, str] = {}
    ready: list[Target] = []
    for name in names:
        t = lab.targets[name]
        if not t.available:
            problems[name] = f"unavailable: {(t.error or '').splitlines()[0]}"
        elif scenario.name in t.broken:
            problems[name] = f"sanity check failed: {t.broken[scenario.name]}"
        else:
            ready.append(t)
    script = wrk_script(lab.dir, scenario)
    threads = settings.wrk_threads(lab.cpus)
    log(f"-- {scenario.name}: {settings.repeat} × {settings.duration:g} s, {settings.connections} connections, "
        f"{threads} wrk thread(s); load average {loadavg()}")
    runs: list[Run] = []
    for rep in range(settings.repeat):
        order = ready[rep % len(ready):] + ready[:rep % len(ready)] if ready else []
        for t in order:
            if t.name in problems:
                continue
            try:
                if settings.warmup > 0:
                    run_wrk(f"http://127.0.0.1:{t.port_for(scenario.path)}{scenario.path}", script,
                            min(settings.warmup, settings.duration), settings.connections, threads, lab.cpus.client)
                run = measure(t, scenario, script, settings.duration, settings.connections, threads, lab.cpus, rep)
            except WrkError as e:
                problems[t.name] = str(e)
                continue
            if t.proc is not None and not t.proc.alive():
                problems[t.name] = f"exited during the run (code {t.proc.popen.returncode}): {t.proc.log_tail(5)}"
            runs.append(run)
            recorder.write({"kind": "run", **asdict(run)})
            cpu = f"{run.cpu_us_per_req:.1f}" if run.cpu_us_per_req is not None else "-"
            log(f"   #{rep + 1} {t.name:<8} {run.rps:>10,.0f} req/s  p99 {run.p99_ms:.2f} ms  {run.mbps:,.1f} MB/s  "
                f"CPU {cpu} µs/req  errors {run.errors}")
    result = summarise(scenario, names, runs, problems)
    recorder.write({"kind": "summary", "scenario": scenario.name, "rows": [asdict(r) for r in result.rows],
                    "ratios": result.ratios, "verdicts": result.verdicts})
    return result


def start_lab(settings: Settings, lab: Lab, log: Log, install: bool = True) -> None:
    """Install what is missing, start the backends and the requested proxies, log what runs where."""
    tools = ensure_tools(["wrk", "nginx", *(["haproxy"] if "haproxy" in settings.proxies else [])], install, log)
    for must in ("wrk", "nginx"):
        if tools[must] is None:
            raise PeerError(f"{must} is required and could not be installed: apt-get install -y {must}")
    lab.start_backends()
    for name in settings.proxies:
        lab.start_proxy(name)
    log(f"CPUs: {lab.cpus.describe()}; load average {loadavg()}")
    for line in describe_targets(lab.targets.values()):
        log(line)
    if lab.gateway_info:
        log("gateway: " + lab.gateway_info.replace("\n", "\n  "))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run (default 10)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument("--threads", type=int, default=0, help="wrk threads (default: one per load-generator core)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions per scenario and proxy (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured wrk seconds before each run (default 1)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    p.add_argument("--proxies", default=",".join(PROXIES),
                   help="comma list of nginx, haproxy, gateway, direct (direct = the backends without a proxy)")
    p.add_argument("--proxy-cpu", type=int, default=None, help="core for the proxy (default: the last one)")
    p.add_argument("--results", type=Path, default=RESULTS_PATH, help=f"JSON lines file (default {RESULTS_PATH})")
    p.add_argument("--no-results", action="store_true", help="do not append to the results file")
    p.add_argument("--no-install", action="store_true", help="never apt-get install missing tools")
    p.add_argument("--no-malloc-env", action="store_true",
                   help=f"do not set {', '.join(('MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_'))} for the gateway")
    p.add_argument("--keep-temp", action="store_true", help="keep the temp directory (configs, logs)")
    p.add_argument("--enforce", action="store_true", help="exit 1 when a target is missed or the gateway cannot run")
    args = p.parse_args(argv)
    unknown = [s for s in args.scenarios.split(",") if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    bad = [x for x in args.proxies.split(",") if x not in (*PROXIES, "direct")]
    if bad:
        p.error(f"unknown proxy(ies) {', '.join(bad)}")
    return args


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    stop_on_sigterm()
    settings = Settings(args.duration, args.connections, args.threads, args.repeat, args.warmup,
                        tuple(args.scenarios.split(",")), tuple(args.proxies.split(",")),
                        None if args.no_results else args.results)
    results: list[ScenarioResult] = []
    with Lab(plan_cpus(args.proxy_cpu), log, args.keep_temp, not args.no_malloc_env) as lab:
        try:
            start_lab(settings, lab, log, install=not args.no_install)
        except PeerError as e:
            log(f"error: {e}")
            return 2
        recorder = Recorder(settings.results, run_context(lab, settings, "load_compare"))
        for name in settings.scenarios:
            res = run_scenario(lab, SCENARIOS[name], settings, recorder, log)
            results.append(res)
            log(format_result(res))
    if settings.results is not None:
        log(f"\nresults appended to {settings.results}")
    missed = [v for r in results for v in r.verdicts if not v.endswith("PASS")]
    gateway_problem = next((r.gateway_problem for r in results if r.gateway_problem), None)
    if gateway_problem and "gateway" in settings.proxies:
        log(f"\nGATEWAY NOT MEASURED: {gateway_problem}")
    return 1 if args.enforce and (missed or gateway_problem) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the peers were stopped on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(130)
