"""``workers = 2`` against ``workers = 1`` on the same backend, in one run (issue 18, SPEC §13.4).

    python bench/workers_compare.py [--duration 8] [--repeat 5] [--connections 64] [--spread 10000]

Prints, per variant (medians of ``--repeat`` alternating runs, nginx measured in the same run as the reference):

- **CPU µs per request summed over every process** (supervisor + workers) on small keep-alive GETs, with both
  variants pinned to the proxy core(s) of ``_peers.plan_cpus`` — the cost of sharing per request (target ≤ 1.10×);
- **req/s** with the gateway unpinned (free to use every core the load generator and the backend leave it). On a
  2-core machine wrk and the backend need a core of their own, so two workers cannot show a gain there: the
  figure shows what the machine allows, not the scaling;
- **the spread of ``--spread`` new connections** (one request each) over the two workers, from the admin API's
  per-worker request counts (each should take 40–60 %);
- **RSS per process** after the load.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import (
    Lab,
    Target,
    cpu_times,
    descendants,
    free_port,
    gateway_command,
    gateway_conf,
    memory_kib,
    plan_cpus,
    wait_listening,
)
from load_compare import SCENARIOS, measure, wrk_script


def start_gateway(lab: Lab, name: str, workers: int, cpus: tuple[int, ...]) -> tuple[Target, int]:
    argv, env, _ = gateway_command(lab.malloc_env)
    target = Target(name, free_port())
    admin = free_port()
    conf = lab.dir / f"{name}.hcl"
    conf.write_text(gateway_conf(target.port, lab.backend_port, lab.sse_port))
    cmd = [*argv, "-c", str(conf), "--log-level", "warning", "--admin", f"127.0.0.1:{admin}",
           "--workers", str(workers)]
    target.proc = lab._spawn(name, cmd, cpus, env)
    wait_listening(target.proc, target.port, 60)
    wait_listening(target.proc, admin, 60)
    lab.targets[name] = target
    return target, admin


def health(admin: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/gateway/health", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def one_request(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /small HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.startswith(b"HTTP/1.1 200")


def spread(port: int, admin: int, n: int) -> list[float]:
    """Share of ``n`` new connections each worker served (from its request counter)."""
    before = {w["index"]: w["requests"] for w in health(admin)["workers"]}
    with ThreadPoolExecutor(16) as pool:
        ok = sum(pool.map(lambda _: one_request(port), range(n)))
    after = {w["index"]: w["requests"] for w in health(admin)["workers"]}
    served = [after[i] - before.get(i, 0) for i in sorted(after)]
    if ok != n or sum(served) != n:
        print(f"  warning: {ok}/{n} answered 200, workers counted {sum(served)}")
    return [s / max(1, sum(served)) for s in served]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--spread", type=int, default=10000)
    args = ap.parse_args(argv)
    cpus = plan_cpus()
    scenario = SCENARIOS["small"]
    with Lab(cpus) as lab, tempfile.TemporaryDirectory() as tmp:
        lab.start_backends()
        nginx = lab.start_proxy("nginx")
        script = wrk_script(Path(tmp), scenario)
        print(f"cores: {cpus.describe()}")
        # 1) CPU per request, both variants on the proxy core(s)
        pinned = {n: start_gateway(lab, f"w{n}-pinned", n, cpus.proxy) for n in (1, 2)}
        cpu: dict[str, list[float]] = {"nginx": [], "w1": [], "w2": []}
        for i in range(args.repeat):
            order = [1, 2] if i % 2 == 0 else [2, 1]
            run = measure(nginx, scenario, script, args.duration, args.connections, 1, cpus, i)
            cpu["nginx"].append(run.cpu_us_per_req or 0.0)
            for n in order:
                target = pinned[n][0]
                pids = [target.proc.pid, *descendants(target.proc.pid)] if target.proc else []
                u0, s0, _ = cpu_times(pids)
                run = measure(target, scenario, script, args.duration, args.connections, 1, cpus, i)
                u1, s1, _ = cpu_times(pids)
                cpu[f"w{n}"].append((u1 - u0 + s1 - s0) * 1e6 / max(1, run.requests))
        med = {k: statistics.median(v) for k, v in cpu.items()}
        print(f"\n== CPU µs per request, all processes (small GETs, {args.connections} keep-alive connections, "
              f"{args.repeat} × {args.duration:g} s, pinned to {cpus.proxy or 'all'})")
        for k, v in med.items():
            print(f"  {k:<6}{v:>10.1f}")
        print(f"  workers=2 / workers=1: {med['w2'] / med['w1']:.2f}× (target ≤ 1.10×)")
        pairs = sorted(b / a for a, b in zip(cpu["w1"], cpu["w2"], strict=True) if a)
        print(f"  per repetition: median {statistics.median(pairs):.2f}× (range {pairs[0]:.2f}–{pairs[-1]:.2f})")
        # 2) spread of new connections over the two workers
        target, admin = pinned[2]
        shares = spread(target.port, admin, args.spread)
        print(f"\n== {args.spread} new connections over 2 workers: "
              + ", ".join(f"worker {i} {s * 100:.1f} %" for i, s in enumerate(shares)))
        # 3) RSS per process
        print("\n== RSS after the load (KiB)")
        for n, (t, _) in pinned.items():
            if t.proc is None:
                continue
            for pid in [t.proc.pid, *descendants(t.proc.pid)]:
                mem = memory_kib(pid)
                if mem:
                    role = "supervisor" if n == 2 and pid == t.proc.pid else ("worker" if n == 2 else "single")
                    print(f"  workers={n} pid {pid:<8}{role:<12}VmRSS {mem.get('VmRSS', 0):>8}  "
                          f"RssAnon {mem.get('RssAnon', 0):>8}")
        for t, _ in pinned.values():
            if t.proc is not None:
                t.proc.stop()
        time.sleep(0.5)
        # 4) req/s unpinned
        free = {n: start_gateway(lab, f"w{n}-free", n, ()) for n in (1, 2)}
        rps: dict[int, list[float]] = {1: [], 2: []}
        for i in range(args.repeat):
            for n in ([1, 2] if i % 2 == 0 else [2, 1]):
                rps[n].append(measure(free[n][0], scenario, script, args.duration, args.connections, 1, cpus, i).rps)
        r1, r2 = statistics.median(rps[1]), statistics.median(rps[2])
        print(f"\n== req/s, gateway unpinned, load generator and backend on {cpus.client or 'any'}: "
              f"workers=1 {r1:,.0f}, workers=2 {r2:,.0f} ({r2 / r1:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
