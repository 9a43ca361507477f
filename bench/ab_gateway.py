"""A/B: two variants of the gateway side by side on the same backend, in one run, with their ratio.

    python bench/ab_gateway.py --scenarios small,sse --duration 8 --repeat 5 \
        --a "interpreted-protocols:BENCH_INTERPRET=a3s_gateway.proxy.http1,a3s_gateway.proxy.upstream" \
        --b "compiled:"

A variant is ``name:ENV=VALUE;ENV=VALUE``. With ``BENCH_INTERPRET`` set, ``bench/_interpret`` goes on PYTHONPATH
so the named modules load from their ``.py`` sources (the compiled install otherwise unchanged). Runs alternate
A, B, A, B… so drift on a shared machine hits both sides; the ratio B/A of the medians is printed, with nginx
measured in the same run as the common reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import Lab, Target, free_port, plan_cpus
from load_compare import SCENARIOS, measure, wrk_script

HERE = Path(__file__).resolve().parent


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, envs = text.partition(":")
    env: dict[str, str] = {}
    for item in filter(None, envs.split(";")):
        key, _, value = item.partition("=")
        env[key] = value
    if "BENCH_INTERPRET" in env:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE / "_interpret"), os.environ.get("PYTHONPATH")) if p)
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="variant A (before): name:ENV=V;ENV=V")
    ap.add_argument("--b", required=True, help="variant B (after)")
    ap.add_argument("--scenarios", default="small")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    cpus = plan_cpus()
    with Lab(cpus) as lab, tempfile.TemporaryDirectory() as tmp:
        lab.start_backends()
        nginx = lab.start_proxy("nginx")
        variants = [start_variant(lab, *parse_variant(v)) for v in (args.a, args.b)]
        for scenario_name in args.scenarios.split(","):
            scenario = SCENARIOS[scenario_name]
            script = wrk_script(Path(tmp), scenario)
            runs: dict[str, list[tuple[float, float]]] = {t.name: [] for t in [nginx, *variants]}
            for i in range(args.repeat):
                for target in [nginx, *variants] if i % 2 == 0 else [nginx, *reversed(variants)]:
                    run = measure(target, scenario, script, args.duration, args.connections, 1, cpus, i)
                    runs[target.name].append((run.rps, run.cpu_us_per_req or 0.0))
            print(f"\n== {scenario.title}: {args.repeat} × {args.duration:g} s, {args.connections} connections")
            print(f"{'variant':<28}{'req/s':>10}{'CPU µs/req':>12}")
            med = {}
            for name, values in runs.items():
                rps = statistics.median(v[0] for v in values)
                cpu = statistics.median(v[1] for v in values)
                med[name] = (rps, cpu)
                print(f"{name:<28}{rps:>10,.0f}{cpu:>12.1f}")
            a, b = (v.name for v in variants)
            print(f"B/A ({b} / {a}): req/s {med[b][0] / med[a][0]:.2f}×, CPU µs/req {med[b][1] / med[a][1]:.2f}×")
            ref = med[nginx.name][1]
            print(f"vs nginx: {a} CPU {med[a][1] / ref:.2f}×, {b} CPU {med[b][1] / ref:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
