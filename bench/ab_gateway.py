"""A/B: two variants of the gateway side by side on the same backend, in one run, with their ratio.

    python bench/ab_gateway.py --scenarios small,sse --duration 8 --repeat 5 \
        --a "interpreted-protocols:BENCH_INTERPRET=a3s_gateway.proxy.http1,a3s_gateway.proxy.upstream" \
        --b "compiled:"

A variant is ``name:ENV=VALUE;ENV=VALUE``. With ``BENCH_INTERPRET`` set, ``tests/support/interpret`` goes on PYTHONPATH
so the named modules load from their ``.py`` sources (the compiled install otherwise unchanged). Runs alternate
A, B, A, B… so drift on a shared machine hits both sides; the ratio B/A of the medians is printed, with nginx
measured in the same run as the common reference. With ``--together`` A and B are loaded at the same time on the
gateway's core instead (the steadier figure on a noisy machine: bench/README.md, "middleware chain"); every run also
reports user and system CPU time and page faults per 1000 requests, and the per-repetition B/A ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import Lab, Target, cpu_times, free_port, plan_cpus
from load_compare import SCENARIOS, measure, wrk_script

HERE = Path(__file__).resolve().parent
INTERPRET = HERE.parent / "tests" / "support" / "interpret"  # shared with the tests (tests never import bench)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, envs = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, envs.split(";")):
        key, _, value = item.partition("=")
        env[key] = value
    if "BENCH_INTERPRET" in env:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(INTERPRET), os.environ.get("PYTHONPATH")) if p)
    return name, env


def describe(env: dict[str, str]) -> str:
    """What `a3s-gateway version -v` reports under a variant's environment (proves what is compiled)."""
    out = subprocess.run([str(HERE.parent / ".venv" / "bin" / "a3s-gateway"), "version", "-v"],
                         env={**os.environ, **env}, capture_output=True, text=True, check=False)
    return "\n".join(line for line in out.stdout.splitlines() if "compiled" in line or "pure-python" in line)


def start_variant(lab: Lab, name: str, env: dict[str, str]) -> Target:
    print(f"variant {name}:\n{describe(env)}")
    target = Target(name, free_port())
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        lab._start_gateway(target)  # reads os.environ for the gateway's environment
    finally:
        os.environ.clear()
        os.environ.update(saved)
    lab.targets[name] = target
    return target


def run_one(target: Target, scenario: Any, script: Path, args: argparse.Namespace, cpus: Any,
            i: int) -> tuple[float, float, float, float, float]:
    """One wrk run through ``target``: req/s, CPU µs per request, its user and system parts, page faults per 1000
    requests."""
    pids = target.pids()
    u0, s0, f0 = cpu_times(pids)
    run = measure(target, scenario, script, args.duration, args.connections, 1, cpus, i)
    u1, s1, f1 = cpu_times(pids)
    n = max(run.requests, 1)
    return run.rps, run.cpu_us_per_req or 0.0, (u1 - u0) * 1e6 / n, (s1 - s0) * 1e6 / n, (f1 - f0) * 1000 / n


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="variant A (before): name:ENV=V;ENV=V")
    ap.add_argument("--b", required=True, help="variant B (after)")
    ap.add_argument("--scenarios", default="small")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--each", action="store_true", help="print every run, not only the medians")
    ap.add_argument("--together", action="store_true",
                    help="load A and B at the same time (one wrk each) on the gateway's one core: the scheduler "
                         "shares the core between them, so whatever else slows the machine slows both alike")
    args = ap.parse_args(argv)
    cpus = plan_cpus()
    with Lab(cpus) as lab, tempfile.TemporaryDirectory() as tmp:
        lab.start_backends()
        nginx = lab.start_proxy("nginx")
        variants = [start_variant(lab, *parse_variant(v)) for v in (args.a, args.b)]
        a, b = (v.name for v in variants)
        for scenario_name in args.scenarios.split(","):
            scenario = SCENARIOS[scenario_name]
            script = wrk_script(Path(tmp), scenario)
            runs: dict[str, list[tuple[float, float, float, float, float]]] = {t.name: [] for t in [nginx, *variants]}
            for i in range(args.repeat):
                if args.together:
                    order: list[list[Target]] = [[nginx], variants]
                else:
                    order = [[t] for t in ([nginx, *variants] if i % 2 == 0 else [nginx, *reversed(variants)])]
                for group in order:
                    with ThreadPoolExecutor(len(group)) as pool:
                        futures = [pool.submit(run_one, t, scenario, script, args, cpus, i) for t in group]
                        results = [f.result() for f in futures]
                    for target, result in zip(group, results, strict=True):
                        runs[target.name].append(result)
                        if args.each:
                            rps, cpu, user, system, faults = result
                            print(f"  run {i + 1} {target.name:<22}{rps:>10,.0f}{cpu:>12.1f}{user:>8.1f}"
                                  f"{system:>8.1f}{faults:>9.1f}", flush=True)
            how = "A and B loaded together" if args.together else "one at a time, alternating"
            print(f"\n== {scenario.title}: {args.repeat} × {args.duration:g} s, {args.connections} connections, {how}")
            print(f"{'variant':<28}{'req/s':>10}{'CPU µs/req':>12}{'user':>8}{'system':>8}{'faults/1k':>10}")
            med = {}
            for name, values in runs.items():
                rps, cpu, user, system, faults = (statistics.median(v[k] for v in values) for k in range(5))
                med[name] = (rps, cpu)
                print(f"{name:<28}{rps:>10,.0f}{cpu:>12.1f}{user:>8.1f}{system:>8.1f}{faults:>10.1f}")
            print(f"B/A ({b} / {a}): req/s {med[b][0] / med[a][0]:.2f}×, CPU µs/req {med[b][1] / med[a][1]:.2f}×")
            pairs = sorted(rb[0] / ra[0] for ra, rb in zip(runs[a], runs[b], strict=True))
            cpu_pairs = sorted(rb[1] / ra[1] for ra, rb in zip(runs[a], runs[b], strict=True) if ra[1])
            print(f"B/A per repetition: req/s median {statistics.median(pairs):.2f}× (range {pairs[0]:.2f}–"
                  f"{pairs[-1]:.2f}), CPU µs/req median {statistics.median(cpu_pairs):.2f}×")
            ref = med[nginx.name][1]
            print(f"vs nginx: {a} CPU {med[a][1] / ref:.2f}×, {b} CPU {med[b][1] / ref:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
