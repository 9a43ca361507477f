"""Fault injection (issue 25): backends that die, stall, reset or answer garbage in every phase; clients that leave
in every phase or trickle their bytes; a client that never reads. Each case checks the status or truncation SPEC
§5.4/§5.6/§5.7 names, the counters §11.2 names, and that the gateway keeps serving. The last test induces 1,000 of
these failures and checks the process's open fd count and RSS come back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from support import Client, Request, config, gateway_port, ok, start_backend

pytestmark = pytest.mark.timeout(90)

GET = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"


def counter(gw, family: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """The value of a counter sample of the gateway's /metrics text (0 when absent)."""
    for fam in text_string_to_metric_families(gw.metrics()):
        if fam.name == family:
            for s in fam.samples:
                if s.name == family + "_total" and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
    return 0.0


def reset(w: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a killed process's kernel may."""
    sock = w.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    w.transport.abort()


def kill(w: asyncio.StreamWriter, how: str) -> None:
    if how == "rst":
        reset(w)
    else:
        w.transport.abort()


async def never(r: asyncio.StreamReader) -> bool:
    await r.read()
    return False


async def still_serves(gw) -> None:  # type: ignore[no-untyped-def]
    c = await Client.connect(gateway_port(gw))
    try:
        r = await c.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (r.status, r.body) == (200, b"fine")
    finally:
        c.close()


async def faulty(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    """The backend of most cases: the request target names the fault."""
    t = req.target
    how = "rst" if t.endswith("-rst") else "fin"
    if t in ("/ok", "/health"):
        w.write(ok(b"fine"))
        await w.drain()
        return True
    if t.startswith("/mid-head"):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await w.drain()
        kill(w, how)
        return False
    if t.startswith("/mid-body"):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
        await w.drain()
        kill(w, how)
        return False
    if t.startswith("/mid-chunked"):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await w.drain()
        kill(w, how)
        return False
    if t.startswith("/after-head"):
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.02)
        reset(w)
        return False
    if t.startswith("/mid-sse"):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            event = b"data: token%d\n\n" % i
            w.write(b"%x\r\n%s\r\n" % (len(event), event))
            await w.drain()
        w.write(b"7\r\ndata: p\r\n")  # half an event, then the backend dies
        await w.drain()
        kill(w, how)
        return False
    if t.startswith("/garbage"):
        w.write(b"\x16\x03\x01\x02\x00garbage that is no HTTP at all\r\n\r\n")
        await w.drain()
        return False
    if t.startswith("/hang-body"):
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        return await never(r)
    if t.startswith("/hang"):
        return await never(r)
    raise AssertionError(t)


async def faulty_gateway(start_gateway, extra_service: str = "", entry: str = ""):  # type: ignore[no-untyped-def]
    backend = await start_backend(faulty)
    gw = await start_gateway(config([backend.url], extra_service, entry=entry))
    return backend, gw


# --- the backend fails ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_backend_killed_mid_head_is_502_upstream_closed(start_gateway, how: str) -> None:
    _backend, gw = await faulty_gateway(start_gateway)
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"GET /mid-head-%s HTTP/1.1\r\nHost: a\r\n\r\n" % how.encode())
    assert r.status == 502 and json.loads(r.body) == {"error": "Upstream closed connection"}
    r = await c.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")  # the client connection is kept
    assert r.body == b"fine"
    assert counter(gw, "gateway_stream_failures") == 0  # no head was sent: not a stream failure


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("path", ["/mid-body", "/mid-chunked", "/after-head"])
async def test_backend_killed_after_the_head_truncates(start_gateway, path: str, how: str) -> None:
    _backend, gw = await faulty_gateway(start_gateway)
    c = await Client.connect(gateway_port(gw))
    c.send(b"GET %s-%s HTTP/1.1\r\nHost: a\r\n\r\n" % (path.encode(), how.encode()))
    head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    rest = await asyncio.wait_for(c.reader.read(), 5)  # then EOF: truncated
    if path == "/mid-body":
        assert rest == b"x" * 1000  # short of Content-Length
    elif path == "/mid-chunked":
        assert rest == b"5\r\nhello\r\n"  # no terminating chunk
    else:
        assert rest == b""
    await asyncio.sleep(0.05)
    assert counter(gw, "gateway_stream_failures", router="r", service="s", kind="truncated") == 1
    await still_serves(gw)


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_backend_killed_mid_sse_ends_with_the_error_event(start_gateway, how: str) -> None:
    _backend, gw = await faulty_gateway(start_gateway)
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"GET /mid-sse-%s HTTP/1.1\r\nHost: a\r\n\r\n" % how.encode())
    assert r.status == 200
    assert r.body == (b"data: token0\n\ndata: token1\n\ndata: token2\n\ndata: p"
                      b'\n\nevent: error\ndata: {"error":"Upstream stream failed"}\n\n')
    assert counter(gw, "gateway_stream_failures", router="r", service="s", kind="sse_error") == 1
    assert (await c.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")).body == b"fine"  # normal end: kept


async def test_backend_answering_garbage_is_502_protocol_error(start_gateway) -> None:
    _backend, gw = await faulty_gateway(start_gateway)
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"GET /garbage HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r.status == 502 and json.loads(r.body) == {"error": "Upstream protocol error"}
    assert (await c.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")).body == b"fine"


async def test_backend_that_never_answers_times_out(start_gateway) -> None:
    backend, gw = await faulty_gateway(
        start_gateway, 'transport {\n response_header_timeout = "300ms"\n stream_idle_timeout = "300ms"\n}')
    c = await Client.connect(gateway_port(gw))
    r = await c.request(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
    assert r.status == 504 and json.loads(r.body) == {"error": "Upstream response timeout"}
    c.send(b"GET /hang-body HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), 5)
    assert await asyncio.wait_for(c.reader.read(), 5) == b"some"  # stream idle: truncated
    await asyncio.sleep(0.05)
    assert counter(gw, "gateway_stream_failures", router="r", service="s", kind="truncated") == 1
    await asyncio.sleep(0.1)
    assert backend.open_connections <= 1  # the abandoned upstream connections are closed (one pooled for /ok)
    await still_serves(gw)


async def test_backend_killed_mid_websocket_closes_the_client(start_gateway) -> None:
    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        message = await ws.recv()
        await ws.send("got " + message)
        if message == "die":
            ws.transport.abort()
            return
        await ws.wait_closed()

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config([f"http://127.0.0.1:{port}"]))
    url = f"ws://127.0.0.1:{gateway_port(gw)}/ws"
    async with connect(url) as ws:
        await ws.send("die")
        assert await ws.recv() == "got die"
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    async with connect(url) as ws:  # the gateway keeps serving
        await ws.send("live")
        assert await ws.recv() == "got live"
    server.close()


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_backend_killed_mid_websocket_frame_frees_the_tunnel(start_gateway, how: str) -> None:
    """A backend killed half-way through a frame while the client keeps sending: the client's connection ends
    without a close frame (1006), both sockets of the tunnel are freed, and a new WebSocket works."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        writer.write(b"\x81\x05hello" + b"\x82\x7e\x03\xe8" + b"b" * 400)  # a frame, then 400 of 1,000 bytes
        await writer.drain()
        await asyncio.sleep(0.1)
        kill(writer, how)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config([f"http://127.0.0.1:{backend_port}"]))
    port = gateway_port(gw)
    fds0 = open_fds({port, backend_port})
    async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        assert await ws.recv() == "hello"
        with pytest.raises(websockets.exceptions.ConnectionClosedError):
            for i in range(200):  # the client goes on sending until the tunnel ends
                await ws.send(f"message {i}")
                await asyncio.sleep(0.01)
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1006  # no close frame: the connection just ended
    for _ in range(50):
        if open_fds({port, backend_port}) <= fds0:
            break
        await asyncio.sleep(0.05)
    assert open_fds({port, backend_port}) <= fds0
    async with connect(f"ws://127.0.0.1:{port}/ws") as ws:  # the gateway keeps serving
        assert await ws.recv() == "hello"
    server.close()


# --- the client fails -------------------------------------------------------------------------------------------


async def test_client_gone_while_queued_is_counted_and_sends_nothing_upstream(start_gateway) -> None:
    backend = await start_backend(faulty)
    scaling = 'scaling {\n executor = "static"\n container_concurrency = 1\n buffer_enabled = true\n}'
    gw = await start_gateway(config([backend.url], scaling))
    busy = await Client.connect(gateway_port(gw))
    for _ in range(50):  # the static endpoint becomes ready after its first probe
        r = await busy.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        if r.status == 200:
            break
        await asyncio.sleep(0.1)
    busy.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")  # holds the only slot
    await asyncio.sleep(0.2)
    seen = len(backend.requests)
    queued = await Client.connect(gateway_port(gw))
    queued.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.sleep(0.2)
    queued.writer.transport.abort()
    await asyncio.sleep(0.1)
    assert counter(gw, "gateway_client_disconnects", router="r", service="s", phase="queued") == 1
    busy.writer.transport.abort()  # frees the slot
    await asyncio.sleep(0.2)
    assert len(backend.requests) == seen  # the queued request never went upstream
    assert counter(gw, "gateway_client_disconnects", router="r", service="s", phase="waiting_head") == 1
    await still_serves(gw)


@pytest.mark.parametrize("phase", ["waiting_head", "mid_upload", "streaming"])
async def test_client_gone_cancels_the_upstream_request(start_gateway, phase: str) -> None:
    upstream_closed = asyncio.Event()

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.target == "/ok":
            w.write(ok(b"fine"))
            return True
        try:
            if req.target == "/stream":
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for _ in range(1000):
                    w.write(b"5\r\nchunk\r\n")
                    await w.drain()
                    await asyncio.sleep(0.01)
            await r.read()  # waits for the gateway to close the upstream connection
        finally:
            upstream_closed.set()
        return False

    async def upload_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"GET /ok" in head:
            writer.write(ok(b"fine"))
            await writer.drain()
        await reader.read()  # the request body never completes: wait for EOF from the gateway
        upstream_closed.set()
        writer.close()

    if phase == "mid_upload":
        server = await asyncio.start_server(upload_handler, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    else:
        backend = await start_backend(handler)
        url = backend.url
    gw = await start_gateway(config([url]))
    c = await Client.connect(gateway_port(gw))
    if phase == "waiting_head":
        c.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.sleep(0.2)
    elif phase == "mid_upload":
        c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n" + b"u" * 100000)
        await asyncio.sleep(0.2)
    else:
        c.send(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(c.reader.readuntil(b"chunk"), 5)
    c.writer.transport.abort()
    await asyncio.wait_for(upstream_closed.wait(), 3)  # cancelled at once: the upstream connection closed
    await asyncio.sleep(0.05)
    counted = "streaming" if phase == "streaming" else "waiting_head"
    assert counter(gw, "gateway_client_disconnects", router="r", service="s", phase=counted) == 1
    if phase != "mid_upload":
        await still_serves(gw)
    else:
        server.close()


async def test_slowloris_head_gets_408_after_header_read_timeout(start_gateway) -> None:
    backend, gw = await faulty_gateway(start_gateway, entry='header_read_timeout = "500ms"')
    c = await Client.connect(gateway_port(gw))
    loop = asyncio.get_running_loop()
    start = loop.time()
    head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 300  # >= 6 s to send whole
    answered = asyncio.ensure_future(c.response())
    for byte in head:  # one byte every 20 ms: the timer covers the whole head, not the gap between bytes
        if answered.done():
            break
        c.send(bytes([byte]))
        await asyncio.sleep(0.02)
    r = await answered
    assert r.status == 408 and json.loads(r.body) == {"error": "Request timeout"}
    assert r.header("connection") == "close"
    assert 0.4 < loop.time() - start < 4.0  # well before the head could end (a timer per gap would wait for it)
    assert await c.closed()
    assert backend.requests == []
    await still_serves(gw)


async def test_slow_body_gets_408_after_idle_timeout(start_gateway) -> None:
    received = asyncio.Event()

    async def upload_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if b"GET /ok" in head:
            writer.write(ok(b"fine"))
            await writer.drain()
            await reader.read()
        else:
            received.set()
            await reader.read()  # the gateway aborts the upstream request
        writer.close()

    server = await asyncio.start_server(upload_handler, "127.0.0.1", 0)
    gw = await start_gateway(config([f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"],
                                    entry='idle_timeout = "400ms"'))
    c = await Client.connect(gateway_port(gw))
    c.send(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"b" * 10)
    r = await c.response()
    assert r.status == 408 and json.loads(r.body) == {"error": "Request timeout"}
    assert await c.closed()
    assert received.is_set()
    await still_serves(gw)
    server.close()


async def test_client_that_never_reads_100mb_keeps_gateway_memory_bounded(start_gateway) -> None:
    total = 100 * 1024 * 1024
    written = 0
    paused = asyncio.Event()
    done = asyncio.Event()

    async def handler(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        nonlocal written
        if req.target == "/ok":
            w.write(ok(b"fine"))
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        try:
            while written < total:
                w.write(block)
                written += len(block)
                try:
                    await asyncio.wait_for(w.drain(), 0.5)
                except asyncio.TimeoutError:
                    paused.set()
                    await w.drain()
        finally:
            done.set()
        return False

    backend = await start_backend(handler)
    gw = await start_gateway(config([backend.url]))
    await still_serves(gw)  # warm-up
    rss0 = rss_kib()
    c = await Client.connect(gateway_port(gw))
    c.writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.writer.transport.pause_reading()
    c.send(GET)
    await asyncio.wait_for(paused.wait(), 10)
    await asyncio.sleep(0.3)
    assert written < 16 * 1024 * 1024  # socket buffers and the 64 KiB high-water marks, never the body
    assert rss_kib() - rss0 < 48 * 1024, f"RSS {rss0} -> {rss_kib()} KiB"  # the process holds no body
    await still_serves(gw)  # other clients are served meanwhile
    c.writer.transport.abort()
    await asyncio.wait_for(done.wait(), 5)  # the backend connection is closed, its writer released
    await asyncio.sleep(0.05)
    assert counter(gw, "gateway_client_disconnects", router="r", service="s", phase="streaming") == 1


# --- 1,000 induced failures -------------------------------------------------------------------------------------


def open_fds(ports: set[int]) -> int:
    """This process's sockets with a local or remote port in ``ports`` (the gateway's and the backend's: the
    whole test process's fd count also moves with what earlier tests left to the garbage collector)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in inodes and ({int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)} & ports):
                count += 1
    return count


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(120)
async def test_a_thousand_induced_failures_leave_fds_and_rss_unchanged(start_gateway) -> None:
    backend = await start_backend(faulty)
    hcl = config([backend.url], entry='header_read_timeout = "300ms"').replace(
        "] }", "]\n passive { enabled = false }\n }")  # 1,000 failures in a row would eject the backend (§7.4)
    gw = await start_gateway(hcl)
    port = gateway_port(gw)

    async def one(i: int) -> None:
        kind = i % 8
        c = await Client.connect(port)
        try:
            if kind == 0:
                r = await c.request(b"GET /mid-head-rst HTTP/1.1\r\nHost: a\r\n\r\n")
                assert r.status == 502
            elif kind == 1:
                c.send(b"GET /mid-body-fin HTTP/1.1\r\nHost: a\r\n\r\n")
                await asyncio.wait_for(c.reader.read(), 5)
            elif kind == 2:
                r = await c.request(b"GET /mid-sse-rst HTTP/1.1\r\nHost: a\r\n\r\n")
                assert r.body.endswith(b"event: error\ndata: {\"error\":\"Upstream stream failed\"}\n\n")
            elif kind == 3:
                r = await c.request(b"GET /garbage HTTP/1.1\r\nHost: a\r\n\r\n")
                assert r.status == 502
            elif kind == 4:  # client gone waiting for the head
                c.send(b"GET /hang HTTP/1.1\r\nHost: a\r\n\r\n")
                await asyncio.sleep(0.005)
                c.writer.transport.abort()
            elif kind == 5:  # client gone mid-upload
                c.send(b"POST /hang HTTP/1.1\r\nHost: a\r\nContent-Length: 50000\r\n\r\n" + b"u" * 1000)
                await asyncio.sleep(0.005)
                reset(c.writer)
            elif kind == 6:  # malformed request
                r = await c.request(b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n")
                assert r.status == 400
            else:  # after-head reset
                c.send(b"GET /after-head-rst HTTP/1.1\r\nHost: a\r\n\r\n")
                await asyncio.wait_for(c.reader.read(), 5)
        finally:
            c.close()

    async def round_of(start: int, n: int) -> None:
        for batch in range(start, start + n, 20):
            await asyncio.gather(*(one(i) for i in range(batch, min(batch + 20, start + n))))

    async def settled_fds() -> int:
        for _ in range(50):  # closes finish on the next loop turns
            await asyncio.sleep(0.05)
            if backend.open_connections <= 1:
                break
        # a pooled keep-alive connection to the backend is two sockets of this process (the gateway's end and the
        # backend's): not a leak, and whether one is pooled at the moment of counting varies from run to run
        return open_fds({port, backend.port}) - 2 * backend.open_connections

    await round_of(0, 200)  # warm-up: imports, pools, allocator arenas
    fds0, rss0 = await settled_fds(), rss_kib()
    await round_of(200, 1000)
    for _ in range(60):  # closes that are still under way finish within a few loop turns; a leak stays
        fds1 = await settled_fds()
        if fds1 <= fds0:
            break
    rss1 = rss_kib()
    assert fds1 <= fds0, f"fds {fds0} -> {fds1}"
    assert rss1 - rss0 < 16 * 1024, f"RSS {rss0} -> {rss1} KiB"
    stats = gw.runtime.route_stats[("r", "s")]
    assert stats.gone_waiting_head >= 250  # kinds 4 and 5 of 1,200
    assert counter(gw, "gateway_stream_failures", router="r", service="s", kind="sse_error") == 150
    await still_serves(gw)
