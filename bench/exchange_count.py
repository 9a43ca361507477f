"""Instructions per proxied exchange, counted by callgrind (repeatable on a noisy shared machine).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python bench/exchange_count.py 2000 none
    (the same with 12000: the difference / 10000 is the count per exchange; bench/README.md has a loop doing both)

Runs ``N`` keep-alive exchanges of bench/test_bench_exchange.py (fake transports, no sockets) for one benchmark
chain (``none``, a middleware name of ``_peers.BENCH_CHAIN``, or ``5``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peers import gateway_conf
from test_bench_exchange import REQUEST, RESPONSE, FakeTransport

from a3s_gateway.config import compile as compile_config
from a3s_gateway.config.model import GatewayConfig
from a3s_gateway.proxy.http1 import HttpConnection
from a3s_gateway.proxy.server import HttpServer
from a3s_gateway.proxy.upstream import UpstreamConnection


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    chain = sys.argv[2] if len(sys.argv) > 2 else "none"
    loop = asyncio.new_event_loop()
    config = GatewayConfig.from_hcl(gateway_conf(8080, 8081, 8082, "" if chain == "none" else chain))
    runtime = compile_config.build_runtime(config, loop)
    server = HttpServer(loop, runtime.entrypoints["web"], "127.0.0.1", 8080)
    client = HttpConnection(server)
    client_tr = FakeTransport()
    client.connection_made(client_tr)
    pool = next(iter(runtime.services["backend"].pools.values()))
    upstream = UpstreamConnection(pool)
    upstream.connection_made(FakeTransport())
    pool.idle.append(upstream)
    for _ in range(n):
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
        if len(client_tr.out) > 256:
            client_tr.out.clear()
    assert client_tr.out[-1].startswith(b"HTTP/1.1 200 OK") and pool.idle == [upstream]
    loop.close()


if __name__ == "__main__":
    main()
