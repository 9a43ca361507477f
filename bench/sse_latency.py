"""SSE per-event added latency: how much later an event arrives through a proxy than straight from the backend.

    python bench/sse_latency.py --duration 5 --streams 8 --rate 100 --repeat 3

The SSE backend (bench/_sse_backend.py) emits events at a fixed rate, each carrying time.monotonic_ns() taken just
before its write. A client process on the same machine (CLOCK_MONOTONIC is machine-wide) stamps each event when its
last byte arrives; latency = receive - send. It runs direct to the backend and through each proxy in turn (rotating
the order between repetitions). Added latency = proxy percentile - direct percentile. Target: gateway p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _peers import (
    PROXIES,
    RESULTS_PATH,
    Lab,
    Log,
    PeerError,
    Target,
    ensure_tools,
    loadavg,
    pinned,
    plan_cpus,
    python_for_gateway,
    stop_on_sigterm,
)

TARGET_ADDED_P99_MS = 1.0
_TS = re.compile(rb'"ts":(\d+)')


# --- client (runs in its own process, pinned to the load-generator cores) -------------------------------------------


class _Stream(asyncio.Protocol):
    """One SSE response: decodes HTTP/1.1 (chunked or not), stamps each complete event on arrival."""

    def __init__(self, skip: int, out: list[int], done: asyncio.Future[str | None]) -> None:
        self.skip = skip
        self.out = out
        self.done = done
        self.buf = bytearray()  # undecoded bytes
        self.body = bytearray()  # decoded body not yet split into events
        self.head_done = False
        self.chunked = False
        self.payload_left = -1  # -1: a chunk-size line comes next
        self.crlf_left = 0
        self.events = 0

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        self.buf += data
        try:
            self._decode()
        except ValueError as e:
            self._finish(f"bad response: {e}")
            return
        while (end := self.body.find(b"\n\n")) >= 0:
            event = bytes(self.body[:end])
            del self.body[:end + 2]
            match = _TS.search(event)
            if match:
                if self.events >= self.skip:
                    self.out.append(now - int(match.group(1)))
                self.events += 1

    def _decode(self) -> None:
        if not self.head_done:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[:end + 4]
            if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                raise ValueError(head.split(b"\r\n", 1)[0].decode("latin-1"))
            self.head_done = True
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
        if not self.chunked:
            self.body += self.buf
            self.buf.clear()
            return
        while True:
            if self.payload_left < 0:  # chunk-size line
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(self.buf[:end]).split(b";", 1)[0], 16)
                del self.buf[:end + 2]
                if size == 0:
                    self._finish(None)
                    return
                self.payload_left, self.crlf_left = size, 2
            elif self.payload_left > 0:
                take = min(self.payload_left, len(self.buf))
                if take == 0:
                    return
                self.body += self.buf[:take]
                del self.buf[:take]
                self.payload_left -= take
            else:  # the CRLF after the payload
                take = min(self.crlf_left, len(self.buf))
                if take == 0:
                    return
                del self.buf[:take]
                self.crlf_left -= take
                if self.crlf_left == 0:
                    self.payload_left = -1

    def _finish(self, problem: str | None) -> None:
        if not self.done.done():
            self.done.set_result(problem)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None if not self.chunked and self.head_done else f"closed after {self.events} events: {exc}")


async def _client(port: int, streams: int, events: int, interval_us: int, skip: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    latencies: list[int] = []
    request = (f"GET /sse-timed?n={events}&interval_us={interval_us} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               "Accept: text/event-stream\r\n\r\n").encode()

    async def one(index: int) -> str | None:
        # Staggered starts: the streams' events are spread over the interval instead of arriving in bursts.
        await asyncio.sleep(index * interval_us / streams / 1e6)
        done: asyncio.Future[str | None] = loop.create_future()
        transport, _ = await loop.create_connection(lambda: _Stream(skip, latencies, done), "127.0.0.1", port)
        try:
            transport.write(request)
            return await asyncio.wait_for(done, events * interval_us / 1e6 + 30)
        except asyncio.TimeoutError:
            return "timed out"
        finally:
            transport.close()

    outcomes = await asyncio.gather(*(one(i) for i in range(streams)), return_exceptions=True)
    errors = [str(o) for o in outcomes if o is not None]
    return {"latencies_ns": latencies, "errors": errors, "expected": streams * max(0, events - skip)}


def client_main(args: argparse.Namespace) -> int:
    coro = _client(args.port, args.streams, args.events, args.interval_us, args.skip)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result))
    return 0


# --- orchestration --------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    duration: float = 5.0  # seconds per stream
    streams: int = 8
    rate: float = 100.0  # events per second per stream
    repeat: int = 3
    skip: int = 5  # first events of each stream not counted (connection set-up, pool warm-up)
    proxies: tuple[str, ...] = PROXIES
    results: Path | None = RESULTS_PATH

    @property
    def events(self) -> int:
        return max(self.skip + 1, round(self.duration * self.rate))

    @property
    def interval_us(self) -> int:
        return max(1, round(1e6 / self.rate))


@dataclass
class LatencyRow:
    target: str
    events: int = 0
    expected: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    errors: list[str] = field(default_factory=list)
    problem: str | None = None


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass
class ClientResult:
    latencies_ns: list[int]
    errors: list[str]
    expected: int


def run_client(port: int, settings: Settings, cpus: Sequence[int]) -> ClientResult:
    """One client process (pinned to the load-generator cores) against `port`."""
    argv = pinned([python_for_gateway(), str(Path(__file__).resolve()), "--client", "--port", str(port),
                   "--streams", str(settings.streams), "--events", str(settings.events),
                   "--interval-us", str(settings.interval_us), "--skip", str(settings.skip)], cpus)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=settings.duration + 90, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise PeerError(f"latency client exited {out.returncode}: {out.stderr.strip()[-500:]}")
    data = json.loads(lines[-1])
    return ClientResult([int(x) for x in data["latencies_ns"]], [str(e) for e in data["errors"]], int(data["expected"]))


def measure_latency(lab: Lab, settings: Settings, log: Log) -> list[LatencyRow]:
    """Direct and each available proxy, `repeat` times, interleaved; rows with added latency vs direct."""
    targets: list[Target] = [lab.targets["direct"]]
    rows: dict[str, LatencyRow] = {"direct": LatencyRow("direct")}
    samples: dict[str, list[int]] = {"direct": []}
    for name in settings.proxies:
        if name == "direct" or name not in lab.targets:
            continue
        t = lab.targets[name]
        rows[name] = LatencyRow(name)
        if not t.available:
            rows[name].problem = f"unavailable: {(t.error or '').splitlines()[0]}"
        elif "sse" in t.broken:
            rows[name].problem = f"sanity check failed: {t.broken['sse']}"
        else:
            targets.append(t)
            samples[name] = []
    log(f"-- SSE latency: {settings.streams} streams × {settings.rate:g} events/s × {settings.duration:g} s, "
        f"{settings.repeat} repetition(s); load average {loadavg()}")
    for rep in range(settings.repeat):
        order = targets[rep % len(targets):] + targets[:rep % len(targets)]
        for t in order:
            if rows[t.name].problem:
                continue
            try:
                data = run_client(t.sse_port or t.port, settings, lab.cpus.client)
            except (PeerError, subprocess.TimeoutExpired) as e:
                rows[t.name].problem = str(e)
                continue
            got = data.latencies_ns
            samples[t.name].extend(got)
            rows[t.name].expected += data.expected
            rows[t.name].errors.extend(data.errors)
            log(f"   #{rep + 1} {t.name:<8} {len(got)} events, p99 {percentile(sorted(got), 99) / 1e6:.3f} ms")
    for name, values in samples.items():
        values.sort()
        row = rows[name]
        row.events = len(values)
        if values:
            row.p50_ms = percentile(values, 50) / 1e6
            row.p99_ms = percentile(values, 99) / 1e6
            row.max_ms = values[-1] / 1e6
    direct = rows["direct"]
    for row in rows.values():
        if row.target != "direct" and row.events and direct.events:
            row.added_p50_ms = row.p50_ms - direct.p50_ms
            row.added_p99_ms = row.p99_ms - direct.p99_ms
    return list(rows.values())


def verdict(rows: Sequence[LatencyRow]) -> str:
    gw = next((r for r in rows if r.target == "gateway"), None)
    if gw is None or gw.added_p99_ms is None:
        return f"target gateway added p99 <= {TARGET_ADDED_P99_MS:g} ms: not measured"
    ok = gw.added_p99_ms <= TARGET_ADDED_P99_MS and gw.events >= gw.expected
    return (f"target gateway added p99 <= {TARGET_ADDED_P99_MS:g} ms: {gw.added_p99_ms:.3f} ms "
            f"{'PASS' if ok else 'MISS'}" + ("" if gw.events >= gw.expected else " (events lost)"))


def format_rows(rows: Sequence[LatencyRow]) -> str:
    out = ["\n== SSE per-event latency (backend send -> client receive)",
           f"{'target':<10}{'events':>14}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'added p50':>11}{'added p99':>11}"]
    for r in rows:
        if r.problem:
            out.append(f"{r.target:<10}  -- {r.problem}")
            continue
        added = [f"{v:+.3f}" if v is not None else "-" for v in (r.added_p50_ms, r.added_p99_ms)]
        out.append(f"{r.target:<10}{f'{r.events}/{r.expected}':>14}{r.p50_ms:>9.3f}{r.p99_ms:>9.3f}{r.max_ms:>9.3f}"
                   f"{added[0]:>11}{added[1]:>11}" + (f"  errors: {'; '.join(r.errors[:3])}" if r.errors else ""))
    out.append(verdict(rows))
    return "\n".join(out)


def record(path: Path | None, settings: Settings, lab: Lab, rows: Sequence[LatencyRow]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    line = {"bench": "sse_latency", "kind": "summary", "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "cpu_plan": asdict(lab.cpus), "loadavg": loadavg(), "gateway": lab.gateway_info,
            "rows": [asdict(r) for r in rows], "verdict": verdict(rows)}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per stream (default 5)")
    p.add_argument("--streams", type=int, default=8, help="concurrent SSE streams (default 8)")
    p.add_argument("--rate", type=float, default=100.0, help="events per second per stream (default 100)")
    p.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    p.add_argument("--skip", type=int, default=5, help="first events per stream not counted (default 5)")
    p.add_argument("--proxies", default=",".join(PROXIES), help="comma list of nginx, haproxy, gateway")
    p.add_argument("--proxy-cpu", type=int, default=None)
    p.add_argument("--results", type=Path, default=RESULTS_PATH)
    p.add_argument("--no-results", action="store_true")
    p.add_argument("--no-install", action="store_true")
    p.add_argument("--keep-temp", action="store_true")
    p.add_argument("--no-malloc-env", action="store_true", help="start the gateway with glibc's malloc defaults")
    # internal: the measuring client
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--events", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--interval-us", type=int, default=10_000, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> int:
    args = parse_args(argv)
    if args.client:
        return client_main(args)
    stop_on_sigterm()
    settings = Settings(args.duration, args.streams, args.rate, args.repeat, args.skip,
                        tuple(x for x in args.proxies.split(",") if x), None if args.no_results else args.results)
    with Lab(plan_cpus(args.proxy_cpu), log, args.keep_temp, not args.no_malloc_env) as lab:
        try:
            tools = ensure_tools(["nginx", *(["haproxy"] if "haproxy" in settings.proxies else [])],
                                 not args.no_install, log)
            if tools["nginx"] is None:
                raise PeerError("nginx is required (apt-get install -y nginx)")
            lab.start_backends()
            for name in settings.proxies:
                lab.start_proxy(name, checks=("sse",))
        except PeerError as e:
            log(f"error: {e}")
            return 2
        for t in lab.targets.values():
            if not t.available:
                log(f"  {t.name} UNAVAILABLE: {t.error}")
        rows = measure_latency(lab, settings, log)
        log(format_rows(rows))
        record(settings.results, settings, lab, rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the peers were stopped on the way out
        print("interrupted", file=sys.stderr)
        sys.exit(130)
