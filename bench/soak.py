"""Soak (issue 25): mixed traffic through one gateway process for a bounded time, with a reload every minute and a
backend restart every 5 minutes, recording RSS, open fds, p99 latency and errors per minute.

    python bench/soak.py                         # 30 minutes (the recorded run, RELIABILITY.md)
    python bench/soak.py --minutes 3             # a short check
    python bench/soak.py --minutes 120 --json    # longer; one JSON object at the end

Everything runs on 127.0.0.1 and stops by itself after --minutes; the gateway (the CLI of this checkout, `--admin
off`) and the two backends (bench/_soak_backend.py) are subprocesses started here and ended by PID.

Traffic (all through the gateway, one router → service "s" with backends A and B, `retry` + `headers` middlewares):
- keep-alive HTTP/1.1: 3 connections, GET and POST (1 KiB) alternately, 20 ms apart;
- new connections: 2 loops, one `Connection: close` GET per connection, 50 ms apart;
- SSE: 2 loops, 20 events 5 ms apart per stream (a new stream 100 ms after the last ended), every event counted;
- WebSocket: 1 connection, a message every 50 ms echoed back, a new connection every 200 messages;
- HTTP/2 (h2c prior knowledge, the `h2` library): 1 connection, batches of 4 concurrent streams (2 GET, 1 POST,
  1 short SSE) 50 ms apart, a new connection every 250 batches.
Events: at 30 s past every minute the configuration is rewritten (a new `X-Soak-Generation` response header) and the
gateway gets SIGHUP; the run checks that new requests carry the new generation within 10 s. At 2.5 min and then every
5 min backend B is stopped (SIGTERM), restarted 1 s later on the same port.

Per minute: traffic pauses, the gateway's upstream pool drains (`idle_connection_timeout = 2s`), and its RSS and fd
count are read at that quiet point (the client connections that stay open are the same every time).
Errors: a failed or wrong exchange is *expected* when it overlaps a backend restart (from the stop until 5 s after B
listens again; streams and tunnels on B are cut), otherwise *unexpected*.
Pass: RSS slope after warm-up <= 1 MB per 10 minutes (least squares over the per-minute samples), fd count flat
(every sample after warm-up within FD_TOLERANCE of the one at the end of warm-up), 0 unexpected errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h11
from _peers import HOST, PeerError, Proc, free_port, gateway_command, memory_kib, stop_on_sigterm, wait_listening
from websockets.asyncio.client import connect as ws_connect

BACKEND = Path(__file__).resolve().parent / "_soak_backend.py"
OP_TIMEOUT = 10.0
RESTART_GRACE = 5.0  # seconds after B listens again during which failures still count as expected
QUIET = 3.5  # seconds of pause before a sample: idle_connection_timeout (2 s) + margin
RSS_SLOPE_MB_PER_10MIN = 1.0
FD_TOLERANCE = 4
POST_BODY = b"p" * 1024


def conf_text(port: int, a: int, b: int, generation: int) -> str:
    return f'''entrypoints "web" {{
  address = "{HOST}:{port}"
}}

middlewares "gen" {{
  type             = "headers"
  response_headers = {{ "X-Soak-Generation" = "{generation}" }}
}}

middlewares "retry" {{
  type              = "retry"
  max_retries       = 2
  retry_interval_ms = 20
}}

routers "all" {{
  rule        = "PathPrefix(`/`)"
  service     = "s"
  middlewares = ["retry", "gen"]
}}

services "s" {{
  load_balancer {{
    servers = [{{ url = "http://{HOST}:{a}" }}, {{ url = "http://{HOST}:{b}" }}]
  }}
  transport {{
    idle_connection_timeout = "2s"
  }}
}}
'''


class Unexpected(Exception):
    """An exchange whose outcome is not what the backend sends."""


# --- clients --------------------------------------------------------------------------------------------------------


class H1:
    """One HTTP/1.1 client connection (h11 reads the gateway's framing strictly)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> H1:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    @property
    def reusable(self) -> bool:
        return self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE

    async def request(self, method: str, target: str, body: bytes = b"", close: bool = False
                      ) -> tuple[int, dict[bytes, bytes], bytes]:
        headers = [("host", "soak.test"), ("content-length", str(len(body)))]
        if close:
            headers.append(("connection", "close"))
        out = self.conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
        out += (self.conn.send(h11.Data(data=body)) or b"") if body else b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(out)
        status, fields, chunks = 0, {}, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status, fields = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise Unexpected(f"{method} {target}: connection closed before the response ended")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return status, fields, b"".join(chunks)


class H2:
    """One h2c (prior knowledge) client connection, streams awaited concurrently."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self.streams: dict[int, dict[str, object]] = {}
        self.closed = False
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, port: int) -> H2:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for e in self.conn.receive_data(data):
                    s = self.streams.get(getattr(e, "stream_id", 0) or 0)
                    if s is None:
                        continue
                    if isinstance(e, h2.events.ResponseReceived):
                        s["status"] = int(dict(e.headers)[":status"])
                    elif isinstance(e, h2.events.DataReceived):
                        s["body"] = bytes(s["body"]) + e.data  # type: ignore[arg-type]
                        self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                    elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
                        s["reset"] = isinstance(e, h2.events.StreamReset)
                        s["done"].set()  # type: ignore[attr-defined]
                self.writer.write(self.conn.data_to_send())
        finally:
            self.closed = True
            for s in self.streams.values():
                s["done"].set()  # type: ignore[attr-defined]

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.closed:
            raise Unexpected("HTTP/2 connection closed")
        sid = self.conn.get_next_available_stream_id()
        state: dict[str, object] = {"status": 0, "body": b"", "reset": False, "done": asyncio.Event()}
        self.streams[sid] = state
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "soak.test")]
        if body:
            fields.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, fields, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.writer.write(self.conn.data_to_send())
        try:
            await state["done"].wait()  # type: ignore[attr-defined]
        finally:
            del self.streams[sid]
        if state["reset"] or not state["status"]:
            raise Unexpected(f"HTTP/2 {method} {path}: stream reset or connection closed")
        return int(state["status"]), bytes(state["body"])  # type: ignore[call-overload]


def check_plain(status: int, body: bytes, sent: bytes) -> None:
    if status != 200 or body != b"ok %d" % len(sent):
        raise Unexpected(f"/plain: {status} {body[:80]!r}")


def check_sse(status: int, body: bytes, events: int) -> None:
    if status != 200 or body.count(b"data: {") != events or b"event: error" in body:
        raise Unexpected(f"/sse: {status}, {body.count(b'data: {')} of {events} events, {body[-80:]!r}")


# --- the run --------------------------------------------------------------------------------------------------------


@dataclass
class Minute:
    index: int
    ops: Counter[str] = field(default_factory=Counter)
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    expected: int = 0
    events: list[str] = field(default_factory=list)
    rss_kib: int = 0
    fds: int = 0

    def p99(self, kinds: tuple[str, ...]) -> float:
        values = sorted(v for k in kinds for v in self.latency_ms.get(k, []))
        return values[min(len(values) - 1, int(len(values) * 0.99))] if values else 0.0


def least_squares_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


class Soak:
    def __init__(self, port: int, gateway: Proc, restart_b: Callable[[], Awaitable[None]],
                 reload: Callable[[int], None]) -> None:
        self.port = port
        self.gateway = gateway
        self.restart_b = restart_b
        self.reload_to = reload
        self.gate = asyncio.Event()
        self.gate.set()
        self.inflight = 0
        self.stopping = False
        self.windows: list[list[float]] = []  # [start, end] of backend restarts (end inf while B is down)
        self.minute = Minute(0)
        self.minutes: list[Minute] = []
        self.generation = 1

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.gateway.pid}/fd"))
        except OSError:
            return -1

    def sample(self, minute: Minute) -> None:
        minute.rss_kib = memory_kib(self.gateway.pid).get("VmRSS", 0)
        minute.fds = self.fds()

    def expected_failure(self, start: float, end: float) -> bool:
        return any(start <= w_end and end >= w_start for w_start, w_end in self.windows)

    async def op(self, kind: str, run: Callable[[], Awaitable[None]]) -> bool:
        """One exchange: waits while traffic is paused, records its latency or its failure. True when it worked."""
        await self.gate.wait()
        self.inflight += 1
        start = time.monotonic()
        minute = self.minute
        try:
            await asyncio.wait_for(run(), OP_TIMEOUT)
        except Exception as e:  # every failure is recorded: a wrong answer, a closed connection, a timeout
            if self.expected_failure(start, time.monotonic()):
                minute.expected += 1
            else:
                minute.unexpected.append(f"{kind}: {type(e).__name__}: {e}"[:300])
            return False
        else:
            minute.ops[kind] += 1
            minute.latency_ms.setdefault(kind, []).append((time.monotonic() - start) * 1000)
            return True
        finally:
            self.inflight -= 1

    # -- traffic loops: each runs until stopping, reconnecting after a failure --

    async def keep_alive(self) -> None:
        conn: H1 | None = None
        i = 0
        while not self.stopping:
            i += 1

            async def one(i: int = i) -> None:
                nonlocal conn
                if conn is None or not conn.reusable:
                    if conn is not None:
                        conn.close()
                    conn = await H1.open(self.port)
                body = POST_BODY if i % 2 else b""
                status, _, got = await conn.request("POST" if body else "GET", "/plain", body)
                check_plain(status, got, body)

            if not await self.op("keepalive", one) and conn is not None:
                conn.close()
                conn = None
            await asyncio.sleep(0.02)
        if conn is not None:
            conn.close()

    async def new_connections(self) -> None:
        while not self.stopping:
            async def one() -> None:
                conn = await H1.open(self.port)
                try:
                    status, _, got = await conn.request("GET", "/plain", close=True)
                    check_plain(status, got, b"")
                finally:
                    conn.close()

            await self.op("newconn", one)
            await asyncio.sleep(0.05)

    async def sse(self) -> None:
        while not self.stopping:
            async def one() -> None:
                conn = await H1.open(self.port)
                try:
                    status, _, got = await conn.request("GET", "/sse?n=20&interval_ms=5")
                    check_sse(status, got, 20)
                finally:
                    conn.close()

            await self.op("sse", one)
            await asyncio.sleep(0.1)

    async def websocket(self) -> None:
        ws = None
        sent = 0
        while not self.stopping:
            async def one() -> None:
                nonlocal ws, sent
                if ws is None or sent >= 200:
                    if ws is not None:
                        await ws.close()
                    ws = await ws_connect(f"ws://{HOST}:{self.port}/ws", open_timeout=5, ping_interval=None,
                                          close_timeout=2)
                    sent = 0
                sent += 1
                message = f"soak {sent}"
                await ws.send(message)
                echo = await ws.recv()
                if echo != message:
                    raise Unexpected(f"websocket echo {echo!r} != {message!r}")

            if not await self.op("websocket", one) and ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 3)
                ws = None
            await asyncio.sleep(0.05)
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)

    async def http2(self) -> None:
        conn: H2 | None = None
        batches = 0
        while not self.stopping:
            async def one() -> None:
                nonlocal conn, batches
                if conn is None or conn.closed or batches >= 250:
                    if conn is not None:
                        conn.close()
                    conn = await H2.open(self.port)
                    batches = 0
                batches += 1
                c = conn
                results = await asyncio.gather(c.request("GET", "/plain"), c.request("GET", "/plain"),
                                               c.request("POST", "/plain", POST_BODY),
                                               c.request("GET", "/sse?n=5&interval_ms=2"))
                for (status, body), sent in zip(results[:3], (b"", b"", POST_BODY), strict=True):
                    check_plain(status, body, sent)
                check_sse(*results[3], 5)

            if not await self.op("http2", one) and conn is not None:
                conn.close()
                conn = None
            await asyncio.sleep(0.05)
        if conn is not None:
            conn.close()

    # -- events --

    async def reload(self) -> None:
        self.generation += 1
        generation = self.generation
        self.reload_to(generation)
        started = time.monotonic()
        while time.monotonic() - started < 10:
            with contextlib.suppress(Exception):
                conn = await H1.open(self.port)
                try:
                    _, fields, _ = await asyncio.wait_for(conn.request("GET", "/plain", close=True), 5)
                finally:
                    conn.close()
                if fields.get(b"x-soak-generation") == str(generation).encode():
                    self.minute.events.append(f"reload {generation} in {time.monotonic() - started:.2f} s")
                    return
            await asyncio.sleep(0.05)
        self.minute.unexpected.append(f"reload {generation}: not applied within 10 s")

    async def restart(self) -> None:
        window = [time.monotonic(), float("inf")]
        self.windows.append(window)
        began = time.monotonic()
        await self.restart_b()
        window[1] = time.monotonic() + RESTART_GRACE
        self.minute.events.append(f"backend B restarted ({time.monotonic() - began:.1f} s down)")

    async def quiet_sample(self, minute: Minute) -> None:
        self.gate.clear()
        deadline = time.monotonic() + OP_TIMEOUT + 5
        while self.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(QUIET)
        self.sample(minute)
        self.gate.set()

    async def run(self, minutes: int, restart_every: float, log: Callable[[str], None]) -> None:
        baseline = Minute(0)
        await asyncio.sleep(QUIET)
        self.sample(baseline)
        self.minutes.append(baseline)
        log(f"start: RSS {baseline.rss_kib / 1024:.1f} MiB, {baseline.fds} fds")
        start = time.monotonic()
        self.minute = Minute(1)
        loops = [self.keep_alive() for _ in range(3)] + [self.new_connections() for _ in range(2)] + \
            [self.sse() for _ in range(2)] + [self.websocket(), self.http2()]
        tasks = [asyncio.ensure_future(c) for c in loops]
        events: list[tuple[float, str]] = [(60 * k + 30, "reload") for k in range(minutes)]
        t = restart_every * 30
        while t < minutes * 60:
            events.append((t, "restart"))
            t += restart_every * 60
        events += [(60 * k, "sample") for k in range(1, minutes + 1)]
        events.sort(key=lambda e: (e[0], e[1] != "sample"))
        try:
            for at, what in events:
                delay = start + at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if not self.gateway.alive():
                    raise PeerError(f"the gateway exited (code {self.gateway.popen.returncode}):\n"
                                    f"{self.gateway.log_tail()}")
                if what == "reload":
                    await self.reload()
                elif what == "restart":
                    await self.restart()
                else:
                    done = self.minute
                    self.minute = Minute(done.index + 1)
                    await self.quiet_sample(done)
                    self.minutes.append(done)
                    log(row(done))
        finally:
            self.stopping = True
            self.gate.set()
            await asyncio.wait(tasks, timeout=OP_TIMEOUT + 5)
            for task in tasks:
                task.cancel()


HTTP_KINDS = ("keepalive", "newconn", "http2")


def row(m: Minute) -> str:
    return (f"min {m.index:3d}  RSS {m.rss_kib / 1024:7.1f} MiB  fds {m.fds:4d}  ops {sum(m.ops.values()):6d}  "
            f"p99 http {m.p99(HTTP_KINDS):6.1f} ms  ws {m.p99(('websocket',)):6.1f} ms  "
            f"sse {m.p99(('sse',)):6.1f} ms  errors {len(m.unexpected)} (+{m.expected} expected)"
            + (f"  [{'; '.join(m.events)}]" if m.events else "")
            + "".join(f"\n      {e}" for e in m.unexpected[:3]))


def verdict(minutes: list[Minute], warmup: int) -> dict[str, object]:
    after = [m for m in minutes if m.index >= warmup]
    rss_points = [(m.index, m.rss_kib * 1024 / 1e6) for m in after]
    slope = least_squares_slope(rss_points) * 10  # MB per 10 minutes
    fd_ref = after[0].fds if after else 0
    fd_dev = max((abs(m.fds - fd_ref) for m in after), default=0)
    unexpected = [e for m in minutes for e in m.unexpected]
    return {
        "warmup_minutes": warmup,
        "rss_slope_mb_per_10min": round(slope, 3),
        "rss_ok": slope <= RSS_SLOPE_MB_PER_10MIN,
        "fd_reference": fd_ref,
        "fd_max_deviation": fd_dev,
        "fd_ok": fd_dev <= FD_TOLERANCE,
        "unexpected_errors": len(unexpected),
        "expected_errors": sum(m.expected for m in minutes),
        "errors_ok": not unexpected,
        "first_errors": unexpected[:10],
        "pass": slope <= RSS_SLOPE_MB_PER_10MIN and fd_dev <= FD_TOLERANCE and not unexpected,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=30, help="length of the run (default 30)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="minutes left out of the RSS slope and fd check (default: minutes / 6, at least 1)")
    ap.add_argument("--restart-every", type=float, default=5.0, help="minutes between backend restarts (default 5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = ap.parse_args()
    if args.minutes < 2:
        ap.error("--minutes must be at least 2")
    warmup = args.warmup if args.warmup is not None else max(1, args.minutes // 6)
    if warmup >= args.minutes:
        ap.error("--warmup must be shorter than --minutes")
    stop_on_sigterm()
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    argv, env, how = gateway_command()
    procs: list[Proc] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="a3s-soak-") as tmp:
        d = Path(tmp)
        port, a_port, b_port = free_port(), free_port(), free_port()
        conf = d / "gateway.hcl"
        backends: dict[str, Proc] = {}

        def start_backend(name: str, backend_port: int, n: int) -> Proc:
            proc = Proc(f"backend {name}", [sys.executable, str(BACKEND), str(backend_port)], d / f"{name}{n}.log")
            procs.append(proc)
            backends[name] = proc
            wait_listening(proc, backend_port, 15)
            return proc

        def write_conf(generation: int) -> None:
            tmp_conf = d / "gateway.hcl.new"
            tmp_conf.write_text(conf_text(port, a_port, b_port, generation))
            tmp_conf.replace(conf)

        def reload(generation: int) -> None:
            write_conf(generation)
            if gw.alive():
                gw.popen.send_signal(signal.SIGHUP)  # by PID, the process we started

        restarts = [0]

        async def restart_b() -> None:
            await asyncio.to_thread(backends["B"].stop)
            await asyncio.sleep(1.0)
            restarts[0] += 1
            await asyncio.to_thread(start_backend, "B", b_port, restarts[0])

        try:
            start_backend("A", a_port, 0)
            start_backend("B", b_port, 0)
            write_conf(1)
            gw = Proc("gateway", [*argv, "-c", str(conf), "--admin", "off", "--log-level", "warning"],
                      d / "gateway.log", env)
            procs.append(gw)
            wait_listening(gw, port, 45)
            log(f"gateway: {how} (PID {gw.pid}); {args.minutes} min, warm-up {warmup} min, "
                f"backend restart every {args.restart_every:g} min")
            soak = Soak(port, gw, restart_b, reload)
            try:
                asyncio.run(soak.run(args.minutes, args.restart_every, log))
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the peers are stopped below, the minutes so far reported
                interrupted = True
            if not gw.alive():
                raise PeerError(f"the gateway exited (code {gw.popen.returncode}):\n{gw.log_tail()}")
            gateway_log = gw.log_tail(20)
        finally:
            for proc in reversed(procs):
                proc.stop()
    result = verdict(soak.minutes, warmup)
    if interrupted:
        result["pass"] = False
    result.update(interrupted=interrupted, gateway=how, minutes=args.minutes, reloads=soak.generation - 1,
                  backend_restarts=restarts[0],
                  per_minute=[{"minute": m.index, "rss_kib": m.rss_kib, "fds": m.fds, "ops": dict(m.ops),
                               "p99_http_ms": round(m.p99(HTTP_KINDS), 1),
                               "p99_ws_ms": round(m.p99(("websocket",)), 1),
                               "p99_sse_ms": round(m.p99(("sse",)), 1),
                               "unexpected": len(m.unexpected), "expected": m.expected, "events": m.events}
                              for m in soak.minutes])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"reloads {result['reloads']}, backend restarts {result['backend_restarts']}, "
              f"operations {sum(sum(m.ops.values()) for m in soak.minutes)}")
        print(f"RSS slope after minute {warmup}: {result['rss_slope_mb_per_10min']:+.3f} MB / 10 min "
              f"(<= {RSS_SLOPE_MB_PER_10MIN}) {'PASS' if result['rss_ok'] else 'FAIL'}")
        print(f"fd count after minute {warmup}: {result['fd_reference']}, max deviation {result['fd_max_deviation']} "
              f"(<= {FD_TOLERANCE}) {'PASS' if result['fd_ok'] else 'FAIL'}")
        print(f"unexpected errors {result['unexpected_errors']} (expected, during backend restarts: "
              f"{result['expected_errors']}) {'PASS' if result['errors_ok'] else 'FAIL'}")
        for e in result["first_errors"]:  # type: ignore[attr-defined]
            print(f"  {e}")
        if not result["pass"] and gateway_log:
            print("gateway log tail:\n" + gateway_log)
        print("INTERRUPTED" if interrupted else "PASS" if result["pass"] else "FAIL")
    return 130 if interrupted else 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
