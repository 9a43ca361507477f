"""Kubernetes provider (SPEC §12.5, issue 23): EndpointSlice reaction time, and first full sync of a large cluster.

Against the fake API server of the tests (tests/support/kube_fake.py), with an in-process gateway whose kubeconfig
points at it:

- ``reaction``: an Ingress routes to Service ``web``; each round rewrites its EndpointSlice to the other of two
  loopback backends and times, with a client asking every 2 ms, from the watch event reaching the gateway (the
  reflector applying it) to the first response from the new backend — the 200 ms debounce plus translating,
  merging, building and swapping one generation; the target is ≤ 500 ms;
- ``sync``: a cluster of N Ingresses (each with its own Service and EndpointSlice) — the time from the gateway's
  start to the provider's first full sync (every collection listed), to the generation with every route, and the
  process RSS before and after.

    .venv/bin/python bench/kube_sync.py --rounds 10 --ingresses 1000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from _peers import ask_once, reply_server  # noqa: E402
from kube_fake import FakeCluster  # noqa: E402

from a3s_gateway import Gateway, GatewayConfig  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def objects(i: int, port: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    name = f"app{i}"
    service = {"metadata": {"namespace": "bench", "name": name},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port}]}}
    slice_ = {"metadata": {"namespace": "bench", "name": f"{name}-a", "labels": {"kubernetes.io/service-name": name}},
              "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
              "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]}
    ingress = {"metadata": {"namespace": "bench", "name": name},
               "spec": {"rules": [{"host": f"{name}.example", "http": {"paths": [
                   {"path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]}}
    return service, slice_, ingress


def hcl(kubeconfig: str) -> str:
    return (f'entrypoints "web" {{ address = "127.0.0.1:0" }}\n'
            f'providers {{ kubernetes {{ kubeconfig = "{kubeconfig}" }} }}\n')


async def reaction(rounds: int, tmp: Path) -> list[float]:
    one = await reply_server(b"one")
    two = await reply_server(b"two")
    ports = [s.sockets[0].getsockname()[1] for s in (one, two)]
    async with FakeCluster() as cluster:
        service, slice_, ingress = objects(0, ports[0])
        for kind, obj in (("services", service), ("endpointslices", slice_), ("ingresses", ingress)):
            cluster.put(kind, obj)
        gw = Gateway(GatewayConfig.from_hcl(hcl(cluster.kubeconfig(tmp / "kc"))), admin="off")
        await gw.start()
        gport = gw.bound_addresses()["web"][1]
        try:
            while await ask_once(gport, "app0.example") != b"one":
                await asyncio.sleep(0.05)
            provider = next(iter(gw._providers.running.values()))  # type: ignore[union-attr]
            seen: list[float] = []
            inner = provider.slices.on_change

            def changed() -> None:
                seen.append(time.monotonic())
                inner()

            provider.slices.on_change = changed
            took = []
            for i in range(rounds):
                port, want = (ports[1], b"two") if i % 2 == 0 else (ports[0], b"one")
                await asyncio.sleep(0.3)
                seen.clear()
                cluster.put("endpointslices", objects(0, port)[1])
                while await ask_once(gport, "app0.example") != want:
                    await asyncio.sleep(0.002)
                took.append((time.monotonic() - seen[0]) * 1000)
            return took
        finally:
            await gw.shutdown(1)
            one.close()
            two.close()


async def sync(count: int, tmp: Path) -> dict[str, float]:
    app = await reply_server(b"app")
    port = app.sockets[0].getsockname()[1]
    async with FakeCluster() as cluster:
        for i in range(count):
            for kind, obj in zip(("services", "endpointslices", "ingresses"), objects(i, port), strict=True):
                cluster.put(kind, obj)
        bare = rss_mib()
        import aiohttp  # noqa: F401  # the client library's own cost, shown apart from the cluster's
        import kubernetes_asyncio.client  # noqa: F401

        before = rss_mib()
        started = time.monotonic()
        gw = Gateway(GatewayConfig.from_hcl(hcl(cluster.kubeconfig(tmp / "kc"))), admin="off")
        await gw.start()
        try:
            while not gw._providers or not gw._providers.running:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
            provider = next(iter(gw._providers.running.values()))  # type: ignore[union-attr]
            await provider.ready.wait()
            synced = time.monotonic() - started
            while len(gw.routes()) < count:
                await asyncio.sleep(0.01)
            routed = time.monotonic() - started
            gport = gw.bound_addresses()["web"][1]
            assert await ask_once(gport, f"app{count - 1}.example") == b"app"
            return {"sync_s": synced, "routes_s": routed, "rss_bare": bare, "rss_before": before,
                    "rss_after": rss_mib()}
        finally:
            await gw.shutdown(1)
            app.close()


async def main(rounds: int, ingresses: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if ingresses:
            found = await sync(ingresses, Path(tmp))
            imported = found["rss_before"] - found["rss_bare"]
            print(f"{ingresses} Ingresses: first full sync {found['sync_s']:.2f} s, every route served after "
                  f"{found['routes_s']:.2f} s; RSS {found['rss_bare']:.1f} MiB, +{imported:.1f} MiB importing "
                  f"kubernetes_asyncio + aiohttp, +{found['rss_after'] - found['rss_before']:.1f} MiB after the "
                  "sync (objects, routes, and the fake API server's responses: same process)")
        if rounds:
            took = await reaction(rounds, Path(tmp))
            print(f"EndpointSlice event -> traffic: median {statistics.median(took):.0f} ms, max {max(took):.0f} ms "
                  f"over {len(took)} changes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--ingresses", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.ingresses))
