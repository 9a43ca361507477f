"""Memory given back (issue 25): RSS of the gateway before N connections open, with them open, and after they close.

    python bench/rss_return.py                      # 5,000 connections, the gateway CLI of this checkout
    python bench/rss_return.py --connections 8000 --json

The gateway (started here, one process, `--admin off`) proxies to a small asyncio backend. A warm-up of 200
connections runs first; then RSS(before) is read, N keep-alive connections are opened (one request each, all kept
open at once), RSS(open) is read, they are closed (RST) and RSS is sampled every second for `--wait` seconds.
Target: RSS(after) <= 1.10 x RSS(before), i.e. within 10 % of where it was before the connections opened.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import sys
import time

from _peers import HOST, gateway_in_front, memory_kib, raise_nofile_limit

BACKEND = r'''
import asyncio, sys
async def serve(r, w):
    try:
        while True:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
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
TARGET_RATIO = 1.10


def one_request(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    buf = b""
    while not buf.endswith(b"\r\n\r\nok"):
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed before the response ended")
        buf += data


def open_connections(port: int, count: int) -> list[socket.socket]:
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((HOST, port), timeout=10)
            socks.append(s)
            one_request(s, request)
    except BaseException:
        close_now(socks)
        raise
    return socks


def close_now(socks: list[socket.socket]) -> None:
    linger = struct.pack("ii", 1, 0)  # RST: no TIME_WAIT pile-up on the bench side
    for s in socks:
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()


def rss_kib(pid: int) -> int:
    return memory_kib(pid).get("VmRSS", 0)


def measure(pid: int, port: int, connections: int, wait: float) -> dict[str, object]:
    close_now(open_connections(port, 200))  # warm-up: code paths, the upstream pool, allocator arenas
    time.sleep(2.0)
    before = rss_kib(pid)
    socks = open_connections(port, connections)
    time.sleep(1.0)
    opened = rss_kib(pid)
    close_now(socks)
    after: list[int] = []
    for _ in range(int(wait)):
        time.sleep(1.0)
        after.append(rss_kib(pid))
    final = after[-1]
    return {
        "connections": connections,
        "rss_before_kib": before,
        "rss_open_kib": opened,
        "rss_after_kib": after,
        "grown_kib": opened - before,
        "kept_kib": final - before,
        "ratio": round(final / before, 3),
        "given_back_pct": round(100 * (opened - final) / max(1, opened - before), 1),
        "target_met": final <= TARGET_RATIO * before,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--wait", type=float, default=10.0, help="seconds of RSS samples after the close (default 10)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    raise_nofile_limit(args.connections * 2 + 1024)
    with gateway_in_front("a3s-rss-return-", BACKEND) as peers:
        result = measure(peers.gateway.pid, peers.gateway_port, args.connections, args.wait)
        result["gateway"] = peers.how
    if args.json:
        print(json.dumps(result))
    else:
        after = result["rss_after_kib"]
        assert isinstance(after, list)
        print(f"gateway: {result['gateway']}")
        print(f"{result['connections']} connections: RSS before {result['rss_before_kib'] / 1024:.1f} MiB, "
              f"open {result['rss_open_kib'] / 1024:.1f} MiB, after close "
              + " ".join(f"{a / 1024:.1f}" for a in after) + " MiB (1 s apart)")
        print(f"kept {result['kept_kib'] / 1024:+.1f} MiB ({result['given_back_pct']}% of the growth given back); "
              f"target RSS(after) <= {TARGET_RATIO:.2f} x RSS(before): ratio {result['ratio']} "
              + ("PASS" if result["target_met"] else "MISS"))
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
