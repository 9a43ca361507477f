"""Cold start: how long a request held in the cold-start queue waits once its replica is ready (SPEC §8.4).

    .venv/bin/python bench/cold_start.py --rounds 30 --held 8

Each round: a gateway service at zero (``executor = "static"``, ``buffer_enabled``) whose one server is not listening;
``--held`` requests are sent and wait in the queue; then the server starts listening. Two figures per round:

- **dispatch**: from the moment the gateway marks the replica ready (its readiness probe passed) to the first held
  request arriving at the replica — the gateway's own share (issue target ≤ 20 ms);
- **end to end**: from the server's ``listen()`` to that arrival — adds the readiness probe period (every 100 ms
  while requests wait, SPEC §8.3), so it lies between the dispatch time and ~100 ms.

Everything runs on 127.0.0.1 in one process and one event loop (uvloop unless ``--loop asyncio``).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from support import Backend, Client, gateway_port

from a3s_gateway import Gateway, GatewayConfig


async def one_round(held: int) -> tuple[float, float]:
    probe = Backend()
    await probe.start()
    port = probe.port
    await probe.stop()
    hcl = f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "http://127.0.0.1:{port}" }}] }}
  scaling {{
    buffer_enabled = true
    executor       = "static"
  }}
}}
'''
    gw = Gateway(GatewayConfig.from_hcl(hcl, filename="bench.hcl"), admin="off")
    await gw.start()
    target = gw.runtime.scale_targets["s"][1]
    marked: list[float] = []
    mark_ready = target.mark_ready

    def timed_mark_ready(backend):  # type: ignore[no-untyped-def]
        marked.append(time.perf_counter())
        mark_ready(backend)

    target.mark_ready = timed_mark_ready
    arrived: list[float] = []

    async def handler(req, r, w) -> bool:  # type: ignore[no-untyped-def]
        arrived.append(time.perf_counter())
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    clients = [await Client.connect(gateway_port(gw)) for _ in range(held)]
    for c in clients:
        c.send(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n")
    while len(target.queue) < held:
        await asyncio.sleep(0.005)
    await asyncio.sleep(random.uniform(0.0, 0.1))  # any phase of the 100 ms probe period
    backend = Backend(handler)
    listened = time.perf_counter()
    backend.server = await asyncio.start_server(backend._serve, "127.0.0.1", port)
    for c in clients:
        r = await c.response()
        assert r.status == 200, r.status
        c.close()
    await gw.shutdown(0.5)
    await backend.stop()
    return arrived[0] - marked[0], arrived[0] - listened


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--held", type=int, default=8)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    a = ap.parse_args()

    async def run() -> list[tuple[float, float]]:
        return [await one_round(a.held) for _ in range(a.rounds)]

    factory = uvloop.new_event_loop if a.loop == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        results = runner.run(run())
    dispatch = sorted(d * 1000 for d, _ in results)
    e2e = sorted(e * 1000 for _, e in results)

    def p(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    print(f"cold start, {a.rounds} rounds, {a.held} held requests, {a.loop}")
    print(f"  ready -> first held request at the replica: median {statistics.median(dispatch):.2f} ms, "
          f"p90 {p(dispatch, 0.9):.2f} ms, max {dispatch[-1]:.2f} ms   (target <= 20 ms)")
    print(f"  listen() -> first held request at the replica: median {statistics.median(e2e):.2f} ms, "
          f"p90 {p(e2e, 0.9):.2f} ms, max {e2e[-1]:.2f} ms   (includes the 100 ms readiness probe period)")


if __name__ == "__main__":
    main()
