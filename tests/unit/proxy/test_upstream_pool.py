"""The upstream pool's hand-over (SPEC §7.8): a connection released while a request waits for one goes to that
request, whatever the idle limit, and the connection being opened for the request joins the pool instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from a3s_gateway.config.model import TransportConfig
from a3s_gateway.proxy.upstream import Pool
from a3s_gateway.service.balancer import Backend


class Accepts:
    """A loopback TCP server that only counts the connections it accepted and keeps them open."""

    def __init__(self) -> None:
        self.count = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.count += 1
        self.writers.append(writer)


@pytest.fixture
async def server() -> AsyncIterator[Accepts]:
    accepts = Accepts()
    srv = await asyncio.start_server(accepts.handle, "127.0.0.1", 0)
    accepts.port = srv.sockets[0].getsockname()[1]
    yield accepts
    for w in accepts.writers:
        w.close()
    srv.close()


def pool(server: Accepts, max_idle: int) -> Pool:
    return Pool(Backend(f"http://127.0.0.1:{server.port}"), asyncio.get_running_loop(),
                TransportConfig(max_idle_connections_per_backend=max_idle))


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_a_released_connection_goes_to_the_waiting_request_even_with_no_idle_room(server: Accepts) -> None:
    p = pool(server, 0)  # no idle connection is kept: before, a released one was always closed
    first = await p.connect()
    waiting = asyncio.ensure_future(p.connect())
    await asyncio.sleep(0)  # the request waits; the connection opened for it is not open yet
    assert len(p.waiters) == 1
    p.release(first, True)
    got = await waiting
    assert got is first and got.reused and not got.transport.is_closing()
    assert not p.waiters
    # the connection opened for the waiting request was not needed any more: with no idle room it is closed
    await until(lambda: server.count == 2 and p.connections == 2)
    assert p.idle == []


async def test_the_connection_opened_for_a_served_waiter_joins_the_pool(server: Accepts) -> None:
    p = pool(server, 4)
    first = await p.connect()
    waiting = asyncio.ensure_future(p.connect())
    await asyncio.sleep(0)
    p.release(first, True)
    assert await waiting is first
    await until(lambda: len(p.idle) == 1)
    spare = p.idle[0]
    assert spare is not first and not spare.transport.is_closing()
    assert p.take() is spare and server.count == 2


async def test_waiters_are_served_oldest_first_then_the_idle_list(server: Accepts) -> None:
    p = pool(server, 4)
    a, b, c = await p.connect(), await p.connect(), await p.connect()
    w1 = asyncio.ensure_future(p.connect())
    w2 = asyncio.ensure_future(p.connect())
    await asyncio.sleep(0)
    p.release(a, True)
    p.release(b, True)
    p.release(c, True)  # no waiter left: idle
    assert await w1 is a and await w2 is b
    assert c in p.idle


async def test_a_waiter_cancelled_after_the_hand_over_gives_the_connection_back(server: Accepts) -> None:
    p = pool(server, 1)
    first = await p.connect()
    waiting = asyncio.ensure_future(p.connect())
    await asyncio.sleep(0)
    p.release(first, True)
    waiting.cancel()  # the client left before its request resumed
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert p.idle == [first] and not first.transport.is_closing()
    await asyncio.sleep(0.1)
    assert p.idle == [first] and p.connections == 1  # the connection being opened for it was cancelled


async def test_a_fresh_connection_is_never_a_handed_over_one(server: Accepts) -> None:
    """The retry after a stale keep-alive connection uses a new connection (§7.8)."""
    p = pool(server, 1)
    first = await p.connect()
    fresh = asyncio.ensure_future(p.connect(fresh=True))
    await asyncio.sleep(0)
    p.release(first, True)
    got = await fresh
    assert got is not first and not got.reused and p.idle == [first]


async def test_a_failed_connect_reaches_the_waiting_request() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    p = Pool(Backend(f"http://127.0.0.1:{port}"), asyncio.get_running_loop(), TransportConfig())
    with pytest.raises(OSError):
        await p.connect()
    assert not p.waiters
