"""Micro benchmark: one whole keep-alive exchange through the proxy's connection objects, no sockets.

A client connection (``HttpConnection``, with the ``Exchange`` it reuses for every request) and a pooled upstream
connection (``UpstreamConnection``, reporting to that exchange) run on fake transports that only collect what is
written: each round feeds a small GET in and a small response back, so the figure is the gateway's own CPU per
request without syscalls — parsing, routing, the middleware chain, head building, relay and accounting.
Parametrised by the benchmark middleware chain of ``_peers.BENCH_CHAIN`` (``none``, each middleware alone, all
five), so the cost of a chain reads as a difference in one run::

    .venv/bin/python -m pytest bench/test_bench_exchange.py --benchmark-only --benchmark-columns=min,median
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from _peers import BENCH_CHAIN, gateway_conf

from a3s_gateway.config import compile as compile_config
from a3s_gateway.config.model import GatewayConfig
from a3s_gateway.proxy.http1 import HttpConnection
from a3s_gateway.proxy.server import HttpServer
from a3s_gateway.proxy.upstream import UpstreamConnection
from a3s_gateway.runtime import State

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 128\r\n"
            b"Connection: keep-alive\r\nETag: \"1-80\"\r\n\r\n" + b"x" * 128)
CHAINS = ["none", *(name for name, _ in BENCH_CHAIN), "5"]


class FakeTransport:
    """Collects writes; answers the few questions the protocols ask."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def get_extra_info(self, key: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if key == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


def make_exchange(chain: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(one keep-alive exchange through the real connection objects on fake transports, a check that the exchanges
    worked and reused one upstream connection; the check also closes the event loop)."""
    loop = asyncio.new_event_loop()
    config = GatewayConfig.from_hcl(gateway_conf(8080, 8081, 8082, "" if chain == "none" else chain))
    state = State()
    runtime = compile_config.build_runtime(config, loop, state)
    state.carry(None, runtime)
    server = HttpServer(loop, runtime.entrypoints["web"], "127.0.0.1", 8080)
    client = HttpConnection(server)
    client_tr = FakeTransport()
    client.connection_made(client_tr)
    pool = next(iter(runtime.services["backend"].pools.values()))
    upstream = UpstreamConnection(pool)
    upstream_tr = FakeTransport()
    upstream.connection_made(upstream_tr)
    pool.idle.append(upstream)
    exchange_object = client.ex  # one per connection, reset for each request

    def exchange() -> None:
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
        if len(client_tr.out) > 256:
            client_tr.out.clear()
            upstream_tr.out.clear()

    def check() -> None:
        assert client_tr.out[-1].startswith(b"HTTP/1.1 200 OK") and not client_tr.closing
        assert pool.idle == [upstream]  # every round reused the same connection
        assert client.ex is exchange_object and exchange_object.stats is None  # and the same exchange, accounted
        loop.close()

    return exchange, check


@pytest.mark.parametrize("chain", CHAINS)
def test_exchange(benchmark: Any, chain: str) -> None:
    exchange, check = make_exchange(chain)
    exchange()
    benchmark(exchange)
    check()
