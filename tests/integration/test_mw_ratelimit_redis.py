"""rate-limit-redis middleware (SPEC §6.6) against a real redis-server (tests/support/redis_server.py).

The bucket lives on the Redis server clock, which a test cannot fake; tests that need elapsed time move the
bucket's stored timestamp back instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from mw_support import params
from redis_server import RedisServer, free_port, redis_server

from a3s_gateway.middleware.chain import Chain, Reply, Request, Response
from a3s_gateway.middleware.ratelimit_redis import BUCKET_SHA, RateLimitRedis

HOUR = 3600.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as s:
        yield s


@pytest.fixture
def inspect(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url)
    yield client
    client.close()


@pytest.fixture
async def made() -> AsyncIterator[list[RateLimitRedis]]:
    instances: list[RateLimitRedis] = []
    yield instances
    for mw in instances:
        await mw.close()


def limiter(
    made: list[RateLimitRedis], url: str, name: str = "rl", router: str = "r1", **keys: Any
) -> RateLimitRedis:
    """A limiter with the params the validator gives for ``keys`` (every default applied; a key set to None is not
    written)."""
    written = {"redis_url": url, "rate": 1, "period": HOUR, "burst": 3, **keys}
    body = "\n".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in written.items() if v is not None)
    mw = RateLimitRedis(name, router, params("rate-limit-redis", body))
    Chain([mw])
    made.append(mw)
    return mw


def request(ip: str = "10.0.0.1", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(b"GET", b"/", None, b"a.test", headers or [], ip, "r1", b"http", 0, 1)


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = [v for n, v in headers if n.lower() == name.lower()]
    assert len(found) <= 1, found
    return found[0] if found else None


async def allowed(mw: RateLimitRedis, req: Request | None = None) -> Response:
    """Run an admitted request through both phases; the Response carries the headers the client would see."""
    req = req or request()
    assert await mw.request_async(req, 0.0) is None
    resp = Response(200, [(b"Content-Type", b"text/plain")], False)
    mw.response(req, resp, 0.0)
    return resp


async def denied(mw: RateLimitRedis, req: Request | None = None) -> Reply:
    reply = await mw.request_async(req or request(), 0.0)
    assert reply is not None
    return reply


def limits(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None, bytes | None]:
    return (header(headers, b"RateLimit-Limit"), header(headers, b"RateLimit-Remaining"),
            header(headers, b"RateLimit-Reset"))


# --- decisions and headers --------------------------------------------------------------------------------------

async def test_burst_then_429_with_headers(server: RedisServer, made: list[RateLimitRedis]) -> None:
    mw = limiter(made, server.url)  # 1 token per hour, burst 3
    assert (mw.kind, mw.is_async, mw.has_response, mw.has_request) == ("rate-limit-redis", True, True, True)
    for remaining, reset in ((b"2", b"3600"), (b"1", b"7200"), (b"0", b"10800")):
        resp = await allowed(mw)
        assert limits(resp.headers) == (b"3", remaining, reset)
    reply = await denied(mw)
    assert reply.status == 429
    assert orjson.loads(reply.body) == {"error": "Rate limit exceeded"}
    assert header(reply.headers, b"Content-Type") == b"application/json"
    assert header(reply.headers, b"Retry-After") == b"3600"
    assert limits(reply.headers) == (b"3", b"0", b"10800")
    await denied(mw)
    assert (mw.rejections, mw.errors) == (2, 0)


async def test_default_burst_and_fast_refill_headers(server: RedisServer, made: list[RateLimitRedis]) -> None:
    mw = limiter(made, server.url, rate=2.5, period=1.0, burst=None)  # burst = ceil(2.5) = 3, 0.4 s per token
    assert mw.burst == 3
    resp = await allowed(mw)
    assert limits(resp.headers) == (b"3", b"2", b"1")  # ceil(1 / 2.5)


async def test_refill_after_time_passes(
    server: RedisServer, inspect: redis.Redis, made: list[RateLimitRedis]
) -> None:
    mw = limiter(made, server.url, rate=1, period=1.0, burst=2)
    key = mw.bucket_key(request())
    await allowed(mw)
    await allowed(mw)
    reply = await denied(mw)
    assert header(reply.headers, b"Retry-After") == b"1"
    inspect.hincrby(key, "s", -1)  # one second ago: one token back
    resp = await allowed(mw)
    assert limits(resp.headers)[1] == b"0"
    await denied(mw)
    inspect.hincrby(key, "s", -100)  # long ago: full, never more than burst
    resp = await allowed(mw)
    assert limits(resp.headers) == (b"2", b"1", b"1")


async def test_response_phase_replaces_upstream_headers(server: RedisServer, made: list[RateLimitRedis]) -> None:
    mw = limiter(made, server.url)
    req = request()
    assert await mw.request_async(req, 0.0) is None
    resp = Response(200, [(b"ratelimit-limit", b"99"), (b"RateLimit-Remaining", b"99")], False)
    mw.response(req, resp, 0.0)
    assert limits(resp.headers) == (b"3", b"2", b"3600")


async def test_bucket_keys(server: RedisServer, inspect: redis.Redis, made: list[RateLimitRedis]) -> None:
    by_ip = limiter(made, server.url, burst=1)
    await allowed(by_ip, request("10.0.0.1"))
    await denied(by_ip, request("10.0.0.1"))
    await allowed(by_ip, request("10.0.0.2"))
    assert inspect.exists("a3s:ratelimit:r1:rl:10.0.0.1", "a3s:ratelimit:r1:rl:10.0.0.2") == 2

    glob = limiter(made, server.url, name="g", burst=1, key="global", key_prefix="x:")
    await allowed(glob, request("10.0.0.1"))
    await denied(glob, request("10.0.0.2"))
    assert inspect.exists("x:r1:g:global") == 1

    by_header = limiter(made, server.url, name="h", burst=1, key="header:X-User")
    await allowed(by_header, request("10.0.0.1", [(b"x-user", b"alice")]))
    await denied(by_header, request("10.0.0.9", [(b"X-User", b"alice")]))
    await allowed(by_header, request("10.0.0.1", [(b"X-User", b"bob")]))
    await allowed(by_header, request("10.0.0.1"))  # missing header: the client IP's bucket
    await denied(by_header, request("10.0.0.1"))
    # header values are prefixed "h:" so they never share a bucket with a client IP
    assert inspect.exists("a3s:ratelimit:r1:h:h:alice", "a3s:ratelimit:r1:h:h:bob", "a3s:ratelimit:r1:h:10.0.0.1") == 3


async def test_two_gateways_share_one_bucket(server: RedisServer, made: list[RateLimitRedis]) -> None:
    gw1 = limiter(made, server.url)
    gw2 = limiter(made, server.url)  # same router and middleware names, another instance
    assert limits((await allowed(gw1)).headers)[1] == b"2"
    assert limits((await allowed(gw2)).headers)[1] == b"1"
    assert limits((await allowed(gw1)).headers)[1] == b"0"
    assert (await denied(gw2)).status == 429
    assert (gw1.rejections, gw2.rejections) == (0, 1)
    other_router = limiter(made, server.url, router="r2")
    assert limits((await allowed(other_router)).headers)[1] == b"2"


async def test_concurrent_requests_take_exactly_burst(server: RedisServer, made: list[RateLimitRedis]) -> None:
    gws = [limiter(made, server.url, burst=10) for _ in range(2)]
    results = await asyncio.gather(*(gws[i % 2].request_async(request(), 0.0) for i in range(25)))
    assert sum(r is None for r in results) == 10
    assert sum(gw.rejections for gw in gws) == 15


async def test_bucket_expires(server: RedisServer, inspect: redis.Redis, made: list[RateLimitRedis]) -> None:
    mw = limiter(made, server.url, rate=2, period=1.0, burst=5)  # ceil(5 / 2) + 10 = 13 s
    assert mw.ttl == 13
    await allowed(mw)
    key = mw.bucket_key(request())
    assert 12_000 < inspect.pttl(key) <= 13_000
    fields = inspect.hgetall(key)
    assert set(fields) == {b"tokens", b"s", b"us"}
    assert float(fields[b"tokens"]) == 4.0
    inspect.expire(key, 1)
    await allowed(mw)  # every update sets the expiry again
    assert 12_000 < inspect.pttl(key) <= 13_000

    slow = limiter(made, server.url, name="slow")  # 1 token / hour, burst 3: 3 h + 10 s
    await allowed(slow)
    assert (3 * 3600 + 9) * 1000 < inspect.pttl(slow.bucket_key(request())) <= (3 * 3600 + 10) * 1000


async def test_script_reloaded_after_flush(
    server: RedisServer, inspect: redis.Redis, made: list[RateLimitRedis]
) -> None:
    mw = limiter(made, server.url)
    await allowed(mw)
    assert inspect.script_exists(BUCKET_SHA) == [True]
    inspect.script_flush()
    assert limits((await allowed(mw)).headers)[1] == b"1"  # NOSCRIPT -> EVAL
    assert inspect.script_exists(BUCKET_SHA) == [True]
    assert mw.errors == 0


async def test_url_with_password_and_db(made: list[RateLimitRedis]) -> None:
    with redis_server("--requirepass", "s3cret") as s:
        mw = limiter(made, f"redis://:s3cret@127.0.0.1:{s.port}/2")
        await allowed(mw)
        check = redis.Redis(port=s.port, password="s3cret", db=2)
        assert check.exists("a3s:ratelimit:r1:rl:10.0.0.1") == 1
        check.close()
        wrong = limiter(made, f"redis://:nope@127.0.0.1:{s.port}/2", name="w", failure_mode="closed")
        assert (await denied(wrong)).status == 503
        assert wrong.errors == 1


# --- failures ---------------------------------------------------------------------------------------------------

def assert_unavailable(reply: Reply | None) -> None:
    assert reply is not None
    assert reply.status == 503
    assert orjson.loads(reply.body) == {"error": "Rate limiter unavailable"}
    assert header(reply.headers, b"Retry-After") == b"1"
    assert limits(reply.headers) == (None, None, None)


async def test_closed_port_open_mode_admits_without_headers(made: list[RateLimitRedis]) -> None:
    mw = limiter(made, f"redis://127.0.0.1:{free_port()}/0")
    resp = await allowed(mw)
    assert limits(resp.headers) == (None, None, None)
    assert (mw.errors, mw.rejections) == (1, 0)
    await allowed(mw)
    assert mw.errors == 2


async def test_closed_port_closed_mode_answers_503(made: list[RateLimitRedis]) -> None:
    mw = limiter(made, f"redis://127.0.0.1:{free_port()}/0", failure_mode="closed")
    assert_unavailable(await mw.request_async(request(), 0.0))
    assert (mw.errors, mw.rejections) == (1, 0)


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_server_stopped(server: RedisServer, made: list[RateLimitRedis], mode: str) -> None:
    mw = limiter(made, server.url, failure_mode=mode)
    await allowed(mw)
    server.stop()
    req = request()
    reply = await mw.request_async(req, 0.0)
    if mode == "closed":
        assert_unavailable(reply)
    else:
        assert reply is None
        resp = Response(200, [], False)
        mw.response(req, resp, 0.0)
        assert resp.headers == []
    assert mw.errors == 1


@pytest.mark.parametrize("mode", ["open", "closed"])
async def test_timeout(made: list[RateLimitRedis], mode: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # accept commands, never answer
            pass
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    mw = limiter(made, f"redis://127.0.0.1:{port}/0", failure_mode=mode, redis_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await mw.request_async(request(), 0.0)
    assert loop.time() - started < 1.5  # bounded by redis_timeout, no client-side retries
    if mode == "closed":
        assert_unavailable(reply)
    else:
        assert reply is None
    assert mw.errors == 1
    await mw.close()
    srv.close()
    await srv.wait_closed()


async def test_failures_logged_at_most_every_10s(made: list[RateLimitRedis], caplog: pytest.LogCaptureFixture) -> None:
    mw = limiter(made, f"redis://127.0.0.1:{free_port()}/0", failure_mode="closed")
    caplog.set_level(logging.WARNING, logger="a3s_gateway.middleware")
    for now in (100.0, 101.0, 109.9, 110.0, 111.0):
        await mw.request_async(request(), now)
    records = [r for r in caplog.records if r.name == "a3s_gateway.middleware"]
    assert len(records) == 2
    assert "'rl'" in records[0].getMessage() and "'r1'" in records[0].getMessage()
    assert "2 more failures" in records[1].getMessage()
    assert mw.errors == 5


async def test_close_releases_connections(
    server: RedisServer, inspect: redis.Redis, made: list[RateLimitRedis]
) -> None:
    mw = limiter(made, server.url)
    await allowed(mw)
    before = inspect.info("clients")["connected_clients"]
    await mw.close()
    for _ in range(100):  # the server notices the closed socket asynchronously
        if inspect.info("clients")["connected_clients"] < before:
            break
        await asyncio.sleep(0.01)
    assert inspect.info("clients")["connected_clients"] == before - 1
    await allowed(mw)  # a closed instance reconnects lazily (a reload may still hand it requests)



def test_two_gateway_processes_share_one_redis_limit(server: RedisServer, tmp_path: Path) -> None:
    """Two `a3s-gateway` processes with the same router/middleware names enforce one limit (SPEC §6.6)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    backend_port = free_port()
    root = Path(__file__).resolve().parents[2]
    backend = subprocess.Popen([sys.executable, str(root / "examples" / "demo_backend.py"), "--port",
                                str(backend_port)])
    ports = [free_port(), free_port()]
    gateways = []
    try:
        for port in ports:
            cfg = tmp_path / f"g{port}.hcl"
            cfg.write_text(f'''
entrypoints "web" {{ address = "127.0.0.1:{port}" }}
routers "api" {{
  rule = "PathPrefix(`/`)"
  service = "s"
  middlewares = ["shared"]
}}
services "s" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:{backend_port}" }}] }} }}
middlewares "shared" {{
  type = "rate-limit-redis"
  redis_url = "{server.url}"
  rate = 1
  period = "1h"
  burst = 4
  key = "global"
}}
''')
            gateways.append(subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--admin", "off"],
                                             stderr=subprocess.PIPE))

        def status(port: int) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        deadline = time.monotonic() + 20
        for port in ports:  # wait until both listen (no request sent: the bucket stays full)
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        while time.monotonic() < deadline:  # and the backend answers
            try:
                socket.create_connection(("127.0.0.1", backend_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        got = [status(ports[i % 2]) for i in range(6)]  # alternating between the two gateways
        assert got == [200, 200, 200, 200, 429, 429]
    finally:
        for p in [*gateways, backend]:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
