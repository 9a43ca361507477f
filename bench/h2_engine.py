"""HTTP/2 server engines alone, same run: the pure ``h2`` library against the libnghttp2 engine (proxy/_nghttp2.pyx).

    .venv/bin/python bench/h2_engine.py --streams 20000 --batch 10 --repeat 3

No sockets and no gateway: one client connection's bytes (made once with the ``h2`` client: ``--batch`` small GETs
per write, like h2load -m10) are fed to each engine, which answers every request with a 200, two fields and a
13-byte body and serializes its frames. What is timed is the engine's CPU time (``time.process_time``) per stream:
receive + events + response + bytes out. The medians of ``--repeat`` runs are printed, and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import h2.config
import h2.connection
import h2.events

from a3s_gateway import _compat

BODY = b"hello, world\n"
FIELDS = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"13")]


def client_writes(streams: int, batch: int) -> list[bytes]:
    """The client's bytes, one element per write: the preface (with a large connection window), then batches."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.increment_flow_control_window(2**31 - 1 - 65535)
    writes = [client.data_to_send()]
    sid = 1
    for _ in range(0, streams, batch):
        for _ in range(batch):
            client.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"bench"),
                                      (b":path", b"/small"), (b"user-agent", b"h2load"),
                                      (b"accept", b"*/*")], end_stream=True)
            sid += 2
        writes.append(client.data_to_send())
    return writes


def run_h2(writes: list[bytes]) -> tuple[float, int]:
    config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=True,
                                       validate_outbound_headers=False, normalize_outbound_headers=False)
    server = h2.connection.H2Connection(config)
    served = out = 0
    start = time.process_time()
    server.initiate_connection()
    for data in writes:
        for event in server.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                sid = event.stream_id
                server.send_headers(sid, FIELDS)
                server.send_data(sid, BODY, end_stream=True)
                served += 1
        out += len(server.data_to_send())
    return time.process_time() - start, served


def run_ng(writes: list[bytes], ng: Any) -> tuple[float, int]:
    request = ng.REQUEST
    served = out = 0
    start = time.process_time()
    server = ng.NgServerSession()
    for data in writes:
        for kind, sid, _fields, _end in server.receive(data):
            if kind == request:
                server.submit_response(sid, FIELDS)
                server.send_data(sid, BODY, True)
                served += 1
        out += len(server.data_to_send())
        server.sent_events()
    return time.process_time() - start, served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ng = _compat.native("http2 engine")
    if ng is None:
        print("the libnghttp2 engine is not built (pkg-config libnghttp2, then make build)", file=sys.stderr)
        return 2
    writes = client_writes(args.streams, args.batch)
    h2_us: list[float] = []
    ng_us: list[float] = []
    for _ in range(args.repeat):  # alternated, so that both see the same machine
        seconds, served = run_h2(writes)
        assert served == args.streams, served
        h2_us.append(seconds / served * 1e6)
        seconds, served = run_ng(writes, ng)
        assert served == args.streams, served
        ng_us.append(seconds / served * 1e6)
    h2_med, ng_med = statistics.median(h2_us), statistics.median(ng_us)
    print(f"{args.streams} GET streams, {args.batch} per write, median of {args.repeat}")
    print(f"  h2 (pure Python)   {h2_med:8.2f} us CPU/stream   runs: {', '.join(f'{v:.2f}' for v in h2_us)}")
    print(f"  nghttp2 (Cython)   {ng_med:8.2f} us CPU/stream   runs: {', '.join(f'{v:.2f}' for v in ng_us)}")
    print(f"  nghttp2 / h2       {ng_med / h2_med:8.3f}x CPU   ({h2_med / ng_med:.1f}x fewer us per stream)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
