"""Admin API listener (SPEC §11.1) over real loopback sockets, under the stdlib asyncio loop and uvloop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import pytest
from loops import Run

from a3s_gateway.observability.admin import AdminServer

JSON = "application/json"
TEXT = "text/plain; version=0.0.4; charset=utf-8"
TIMEOUT = 5.0

ROUTES = [
    {"name": "llm", "rule": "PathPrefix(`/v1`)", "service": "llm-backend", "priority": 17},
    {"name": "my route", "rule": "Host(`a`)", "service": "web", "priority": 9},
    {"name": "a/b", "rule": "Path(`/ab`)", "service": "web", "priority": 8},
    {"name": "café", "rule": "Path(`/c`)", "service": "web", "priority": 7},
]
SERVICES = [
    {"name": "llm-backend", "strategy": "least-connections", "backends_total": 1},
    {"name": "web", "strategy": "round-robin", "backends_total": 1},
]
BACKENDS = [
    {"service": "llm-backend", "url": "http://127.0.0.1:8001", "weight": 1, "healthy": True},
    {"service": "web", "url": "http://127.0.0.1:8002", "weight": 1, "healthy": False},
]
CONFIG = {"entrypoints": {"web": {"address": "0.0.0.0:8080"}}, "auth": {"value": "<redacted>"}}
VERSION = {"name": "a3s-gateway", "version": "1.0.0", "python": "3.11.9", "compiled": True}
METRICS = b"# TYPE gateway_requests_total counter\ngateway_requests_total 3\n"


class FakeSource:
    """An AdminSource with fixed data; ``state`` and ``failing`` are set by the tests."""

    def __init__(self) -> None:
        self.state = "running"
        self.failing: set[str] = set()
        self.metrics = METRICS

    def _check(self, name: str) -> None:
        if name in self.failing:
            raise RuntimeError(f"{name} broke")

    def health(self) -> dict[str, Any]:
        self._check("health")
        return {"state": self.state, "uptime_secs": 5, "last_reload": None}

    def metrics_text(self) -> bytes:
        self._check("metrics_text")
        return self.metrics

    def config_dict(self) -> dict[str, Any]:
        self._check("config_dict")
        return CONFIG

    def routes(self) -> list[dict[str, Any]]:
        self._check("routes")
        return ROUTES

    def services(self) -> list[dict[str, Any]]:
        self._check("services")
        return SERVICES

    def backends(self) -> list[dict[str, Any]]:
        self._check("backends")
        return BACKENDS

    def version(self) -> dict[str, Any]:
        self._check("version")
        return VERSION




@asynccontextmanager
async def serving(source: FakeSource | None = None, **kw: float) -> AsyncIterator[tuple[AdminServer, FakeSource]]:
    src = source or FakeSource()
    server = AdminServer(asyncio.get_running_loop(), "127.0.0.1", 0, src, **kw)
    await server.start()
    try:
        yield server, src
    finally:
        await server.close()


@asynccontextmanager
async def client(server: AdminServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = server.bound_address()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} repeated"
        return values[0] if values else None

    def json(self) -> Any:
        assert self.header("Content-Type") == JSON
        return orjson.loads(self.body)


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> Response:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    resp = Response(int(status), headers, b"")
    length = resp.header("Content-Length")
    assert length is not None, "every response has Content-Length"
    if not head_only:
        resp.body = await asyncio.wait_for(reader.readexactly(int(length)), TIMEOUT)
    return resp


async def assert_closed(reader: asyncio.StreamReader) -> None:
    """The server closed the connection: EOF (or a reset) with no further bytes."""
    try:
        rest = await asyncio.wait_for(reader.read(65536), TIMEOUT)
    except ConnectionResetError:
        return
    assert rest == b""


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}\r\n".encode()


async def request(server: AdminServer, raw: bytes, *, head_only: bool = False) -> Response:
    async with client(server) as (reader, writer):
        writer.write(raw)
        return await read_response(reader, head_only=head_only)


# ---- endpoints --------------------------------------------------------------------------------------------------

ENDPOINTS = [
    ("/api/gateway/health", 200, JSON, {"state": "running", "uptime_secs": 5, "last_reload": None}),
    ("/api/gateway/metrics", 200, TEXT, METRICS),
    ("/metrics", 200, TEXT, METRICS),
    ("/api/gateway/config", 200, JSON, CONFIG),
    ("/api/gateway/routes", 200, JSON, ROUTES),
    ("/api/gateway/routes/llm", 200, JSON, ROUTES[0]),
    ("/api/gateway/services", 200, JSON, SERVICES),
    ("/api/gateway/services/web", 200, JSON, SERVICES[1]),
    ("/api/gateway/backends", 200, JSON, BACKENDS),
    ("/api/gateway/version", 200, JSON, VERSION),
    ("/api/gateway/routes/nope", 404, JSON, {"error": "Route not found"}),
    ("/api/gateway/services/nope", 404, JSON, {"error": "Service not found"}),
    ("/api/gateway/nope", 404, JSON, {"error": "Not found"}),
    ("/", 404, JSON, {"error": "Not found"}),
    ("/api/gateway/routes/llm/extra", 404, JSON, {"error": "Not found"}),
    ("/api/gateway/health//", 404, JSON, {"error": "Not found"}),
]


@pytest.mark.parametrize(("path", "status", "ctype", "expected"), ENDPOINTS, ids=[e[0] for e in ENDPOINTS])
def test_endpoint(run: Run, path: str, status: int, ctype: str, expected: object) -> None:
    async def main() -> None:
        async with serving() as (server, _):
            resp = await request(server, get(path))
        assert resp.status == status
        assert resp.header("Content-Type") == ctype
        assert resp.header("Cache-Control") == "no-store"
        assert resp.header("Connection") is None  # HTTP/1.1 keep-alive is the default
        date = resp.header("Date")
        assert date is not None and parsedate_to_datetime(date).tzinfo is not None
        assert int(resp.header("Content-Length") or -1) == len(resp.body)
        if ctype == JSON:
            assert orjson.loads(resp.body) == expected
        else:
            assert resp.body == expected

    run(main())


@pytest.mark.parametrize(
    ("state", "status"),
    [("running", 200), ("reloading", 200), ("created", 503), ("starting", 503), ("stopping", 503), ("stopped", 503)],
)
def test_health_status_follows_state(run: Run, state: str, status: int) -> None:
    async def main() -> None:
        async with serving() as (server, src):
            src.state = state
            resp = await request(server, get("/api/gateway/health"))
        assert resp.status == status
        assert resp.json()["state"] == state

    run(main())


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/gateway/routes/my%20route", ROUTES[1]),
        ("/api/gateway/routes/a%2Fb", ROUTES[2]),
        ("/api/gateway/routes/a%2fb/", ROUTES[2]),
        ("/api/gateway/routes/caf%C3%A9", ROUTES[3]),
        ("/api/gateway/services/%77eb", SERVICES[1]),
        ("/api/gateway/services/llm-backend/", SERVICES[0]),
        ("/api/gateway/routes/", ROUTES),
        ("/api/gateway/backends/", BACKENDS),
        ("/api/gateway/version/?pretty=1", VERSION),
        ("/api/gateway/routes/llm?x=%41&y", ROUTES[0]),
    ],
)
def test_names_trailing_slash_and_query(run: Run, path: str, expected: object) -> None:
    async def main() -> None:
        async with serving() as (server, _):
            resp = await request(server, get(path))
        assert resp.status == 200
        assert resp.json() == expected

    run(main())


def test_invalid_utf8_name_is_not_found(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, _):
            resp = await request(server, get("/api/gateway/services/%FF"))
        assert (resp.status, resp.json()) == (404, {"error": "Service not found"})

    run(main())


def test_absolute_form_target(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, _):
            resp = await request(server, get("http://admin/api/gateway/version"))
        assert (resp.status, resp.json()) == (200, VERSION)

    run(main())


# ---- methods ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/gateway/health", "/metrics", "/api/gateway/routes/llm", "/api/gateway/nope"])
def test_head_has_get_headers_and_no_body(run: Run, path: str) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(get(path, "HEAD") + get(path))
            head = await read_response(reader, head_only=True)
            full = await read_response(reader)  # parses only if HEAD sent no body bytes
        assert head.status == full.status
        assert head.header("Content-Length") == str(len(full.body)) != "0"
        assert head.header("Content-Type") == full.header("Content-Type")
        assert head.header("Cache-Control") == "no-store"

    run(main())


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405(run: Run, method: str) -> None:
    async def main() -> None:
        async with serving() as (server, src), client(server) as (reader, writer):
            src.failing.add("routes")  # a 405 never asks the source
            writer.write(get("/api/gateway/routes/llm", method, "Content-Length: 0\r\n"))
            resp = await read_response(reader)
            assert resp.status == 405
            assert resp.header("Allow") == "GET, HEAD"
            assert resp.json() == {"error": "Method not allowed"}
            writer.write(get("/api/gateway/version"))  # still usable
            assert (await read_response(reader)).json() == VERSION

    run(main())


def test_connect_is_405_with_allow_and_close(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(b"CONNECT admin:443 HTTP/1.1\r\nHost: admin:443\r\n\r\n")
            resp = await read_response(reader)
            assert resp.status == 405
            assert resp.header("Allow") == "GET, HEAD"
            assert resp.header("Connection") == "close"
            await assert_closed(reader)

    run(main())


# ---- connection handling ----------------------------------------------------------------------------------------


def test_keep_alive_two_requests(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(get("/api/gateway/version"))
            first = await read_response(reader)
            writer.write(get("/api/gateway/routes/llm"))
            second = await read_response(reader)
            assert server.connections and len(server.connections) == 1
        assert first.json() == VERSION
        assert second.json() == ROUTES[0]

    run(main())


def test_pipelined_requests_are_answered_in_order(run: Run) -> None:
    async def main() -> None:
        paths = ["/api/gateway/services/web", "/metrics", "/api/gateway/nope", "/api/gateway/routes/llm"]
        async with serving() as (server, _), client(server) as (reader, writer):
            raw = b"".join(get(p) for p in paths)
            for i in range(0, len(raw), 7):  # heads split across reads too
                writer.write(raw[i : i + 7])
            responses = [await read_response(reader) for _ in paths]
        assert [r.status for r in responses] == [200, 200, 404, 200]
        assert responses[0].json() == SERVICES[1]
        assert responses[1].body == METRICS
        assert responses[3].json() == ROUTES[0]

    run(main())


def test_pipelined_responses_respect_backpressure(run: Run) -> None:
    async def main() -> None:
        src = FakeSource()
        src.metrics = b"x" * 262144
        n = 160  # ~20 MB of answers: the server must pause while the client does not read
        async with serving(src) as (server, _), client(server) as (reader, writer):
            writer.write(b"".join(get(f"/metrics?i={i}") if i % 2 else get("/api/gateway/version") for i in range(n)))
            await writer.drain()
            await asyncio.sleep(0.05)
            for i in range(n):
                resp = await read_response(reader)
                assert resp.status == 200
                assert resp.body == (src.metrics if i % 2 else orjson.dumps(VERSION))

    run(main())


def test_connection_close_request(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(get("/api/gateway/version", extra="Connection: close\r\n") + get("/metrics"))
            resp = await read_response(reader)
            assert resp.header("Connection") == "close"
            assert resp.json() == VERSION
            await assert_closed(reader)  # the pipelined request after it is not answered

    run(main())


def test_http10(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(b"GET /api/gateway/version HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            kept = await read_response(reader)
            assert kept.header("Connection") == "keep-alive"
            writer.write(b"GET /api/gateway/version HTTP/1.0\r\n\r\n")
            last = await read_response(reader)
            assert last.header("Connection") == "close"
            assert last.json() == VERSION
            await assert_closed(reader)

    run(main())


def test_small_body_is_discarded_and_connection_reused(run: Run) -> None:
    async def main() -> None:
        body = b"z" * 65536
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(get("/api/gateway/version", "POST", f"Content-Length: {len(body)}\r\n"))
            assert (await read_response(reader)).status == 405  # answered before the body arrives
            writer.write(body[:1000])
            await asyncio.sleep(0.01)
            writer.write(body[1000:] + get("/api/gateway/routes/llm"))
            resp = await read_response(reader)
        assert resp.json() == ROUTES[0]

    run(main())


@pytest.mark.parametrize(
    "extra",
    [
        "Content-Length: 65537\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Content-Length: 10\r\nExpect: 100-continue\r\n",
    ],
    ids=["large", "chunked", "expect"],
)
def test_unread_body_answers_then_closes(run: Run, extra: str) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(get("/api/gateway/version", extra=extra) + b"5\r\nhello\r\n")
            resp = await read_response(reader)
            assert resp.json() == VERSION
            assert resp.header("Connection") == "close"
            await assert_closed(reader)

    run(main())


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", 400),
        (b"GET /met rics HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 33000 + b"\r\n\r\n", 431),
    ],
    ids=["no-host", "bad-field", "bad-target", "version", "line-too-long", "too-many-headers", "headers-too-large"],
)
def test_malformed_request_is_answered_then_closed(run: Run, raw: bytes, status: int) -> None:
    async def main() -> None:
        async with serving() as (server, _), client(server) as (reader, writer):
            writer.write(raw)
            resp = await read_response(reader)
            assert resp.status == status
            assert resp.header("Connection") == "close"
            assert isinstance(resp.json()["error"], str)
            await assert_closed(reader)

    run(main())


def test_failing_source_is_500_and_logged(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with serving() as (server, src), client(server) as (reader, writer):
            src.failing.add("routes")
            writer.write(get("/api/gateway/routes") + get("/api/gateway/routes/llm", "HEAD"))
            resp = await read_response(reader)
            head = await read_response(reader, head_only=True)
            assert (resp.status, resp.json()) == (500, {"error": "Internal error"})
            assert head.status == 500 and head.header("Content-Length") == str(len(resp.body))
            writer.write(get("/api/gateway/services/web"))
            assert (await read_response(reader)).json() == SERVICES[1]
            src.failing.clear()
            writer.write(get("/api/gateway/routes/llm"))
            assert (await read_response(reader)).json() == ROUTES[0]

    with caplog.at_level(logging.ERROR, logger="a3s_gateway.admin"):
        run(main())
    records = [r for r in caplog.records if r.name == "a3s_gateway.admin"]
    assert len(records) == 2
    assert records[0].exc_info is not None and "routes broke" in str(records[0].exc_info[1])
    assert "/api/gateway/routes" in records[0].getMessage()


def test_unserializable_source_value_is_500(run: Run) -> None:
    class Odd(FakeSource):
        def version(self) -> dict[str, Any]:
            return {"when": object()}

    async def main() -> None:
        async with serving(Odd()) as (server, _), client(server) as (reader, writer):
            writer.write(get("/api/gateway/version") + get("/metrics"))
            assert (await read_response(reader)).status == 500
            assert (await read_response(reader)).body == METRICS

    run(main())


# ---- timeouts and lifecycle -------------------------------------------------------------------------------------


def test_idle_keep_alive_connection_times_out(run: Run) -> None:
    async def main() -> None:
        async with serving(idle_timeout=0.2) as (server, _), client(server) as (reader, writer):
            writer.write(get("/api/gateway/version"))
            await read_response(reader)
            await assert_closed(reader)
            assert not server.connections

    run(main())


def test_incomplete_head_times_out(run: Run) -> None:
    async def main() -> None:
        async with serving(head_timeout=0.2) as (server, _), client(server) as (reader, writer):
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")
            await assert_closed(reader)

    run(main())


def test_close_closes_connections_and_listener(run: Run) -> None:
    async def main() -> None:
        server = AdminServer(asyncio.get_running_loop(), "127.0.0.1", 0, FakeSource())
        await server.start()
        host, port = server.bound_address()
        assert host == "127.0.0.1" and port > 0
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(get("/api/gateway/version"))
        await read_response(reader)
        idle_reader, idle_writer = await asyncio.open_connection(host, port)
        idle_writer.write(b"GET /metrics HTTP/1.1\r\n")  # a head in progress
        for _ in range(500):  # until the server has accepted it
            if len(server.connections) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(server.connections) == 2
        await server.close()
        await assert_closed(reader)
        await assert_closed(idle_reader)
        assert not server.connections
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)
        for w in (writer, idle_writer):
            w.close()

    run(main())


def test_bind_error_raises_oserror(run: Run) -> None:
    async def main() -> None:
        async with serving() as (server, src):
            _, port = server.bound_address()
            other = AdminServer(asyncio.get_running_loop(), "127.0.0.1", port, src)
            with pytest.raises(OSError):
                await other.start()

    run(main())
