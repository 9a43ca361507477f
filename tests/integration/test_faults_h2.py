"""Fault injection over HTTP/2 (issue 25; SPEC §5.4, §9.1, §9.2), continuing test_faults.py: an h2c (gRPC) backend
killed mid-stream; an HTTP/2 client gone in every phase (before the head is answered, mid-upload, mid-response,
mid-SSE), by RST_STREAM or by dropping its connection; an HTTP/2 client that never reads a large response, by
granting no flow-control window or by not reading its socket. Each case checks what the client sees, that the
upstream connection is closed at once, the §11.2 counters, the process's fd count and RSS, and that the gateway
goes on serving the other streams and clients."""

from __future__ import annotations

import asyncio
import socket
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from test_faults import counter, kill, open_fds, rss_kib
from test_http2_e2e import H2Client

from support import Client, config, gateway_port

pytestmark = pytest.mark.timeout(60)


def grpc_message(payload: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(payload)) + payload


GRPC_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


class H2Backend:
    """An h2c prior-knowledge backend (the h2 library, server side) answering gRPC calls by path:
    ``/llm.Generate/Ok`` one message then ``grpc-status: 0``; ``/llm.Generate/Die-fin`` / ``Die-rst`` the response
    head and two messages, then the connection is closed or reset."""

    def __init__(self) -> None:
        self.paths: list[bytes] = []
        self.open_connections = 0
        self.port = 0

    async def start(self) -> H2Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        self.open_connections += 1
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        path = dict(event.headers)[b":path"]
                        self.paths.append(path)
                        sid = event.stream_id
                        conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])
                        if path == b"/llm.Generate/Ok":
                            conn.send_data(sid, grpc_message(b"fine"))
                            conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
                        else:
                            conn.send_data(sid, grpc_message(b"token-1") + grpc_message(b"token-2"))
                            writer.write(conn.data_to_send())
                            await writer.drain()
                            await asyncio.sleep(0.1)  # the two messages reach the client, then the backend dies
                            kill(writer, "rst" if path.endswith(b"-rst") else "fin")
                            return
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                writer.write(conn.data_to_send())
        except ConnectionError:
            pass
        finally:
            self.open_connections -= 1
            writer.close()


def grpc_config(port: int) -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "llm" {{
  rule    = "PathPrefix(`/llm.Generate/`)"
  service = "llm"
}}
services "llm" {{
  load_balancer {{ servers = [{{ url = "h2c://127.0.0.1:{port}" }}] }}
}}
'''


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.parametrize("deadline", [False, True])
async def test_backend_killed_mid_grpc_stream(start_gateway, how: str, deadline: bool) -> None:
    """§5.4/§9.2: the head and both messages are relayed, then the call fails — with a deadline, trailers
    ``grpc-status: 14``; without, ``RST_STREAM(INTERNAL_ERROR)``; never a clean end. The next call works."""
    backend = await H2Backend().start()
    gw = await start_gateway(grpc_config(backend.port))
    client = await H2Client.connect(gateway_port(gw))
    try:
        headers = [*GRPC_HEADERS, *([("grpc-timeout", "10S")] if deadline else [])]
        r = await client.request("POST", f"/llm.Generate/Die-{how}", grpc_message(b"prompt"), headers=headers)
        assert r["headers"][b":status"] == b"200"
        assert r["body"] == grpc_message(b"token-1") + grpc_message(b"token-2")
        if deadline:
            assert r["trailers"] == {b"grpc-status": b"14", b"grpc-message": b"Upstream stream failed"}
            assert not r["reset"]
        else:
            assert r["reset"] and r["trailers"] == {}
        await asyncio.sleep(0.05)
        assert counter(gw, "gateway_stream_failures", router="llm", service="llm", kind="truncated") == 1
        r = await client.request("POST", "/llm.Generate/Ok", grpc_message(b"again"), headers=GRPC_HEADERS)
        assert (r["body"], r["trailers"]) == (grpc_message(b"fine"), {b"grpc-status": b"0"})
        assert backend.open_connections == 1  # the dead connection is gone, a new one serves
    finally:
        client.close()
        backend.server.close()


# --- the HTTP/2 client goes ----------------------------------------------------------------------------------------


class Upstream:
    """A raw HTTP/1.1 backend: ``/hang`` never answers, ``/upload`` reads a body that never completes, ``/stream``
    and ``/sse`` send a chunk (an event) every 10 ms without end, ``/short-sse`` five events then the end, ``/ok``
    answers. ``gone`` is set when the gateway closes a connection of an unfinished exchange."""

    def __init__(self) -> None:
        self.open_connections = 0
        self.received = 0
        self.started = asyncio.Event()
        self.gone = asyncio.Event()
        self.port = 0

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/ok":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
                    continue
                if path == b"/short-sse":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    for i in range(5):
                        writer.write(b"9\r\ndata: %d\n\n\r\n" % i)
                        await writer.drain()
                        await asyncio.sleep(0.05)
                    writer.write(b"0\r\n\r\n")
                    continue
                self.started.set()
                if path == b"/upload":
                    while await reader.read(65536):
                        self.received += 1
                elif path in (b"/stream", b"/sse"):
                    sse = path == b"/sse"
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" +
                                 (b"Content-Type: text/event-stream\r\n" if sse else b"") + b"\r\n")
                    for i in range(3000):
                        writer.write(b"a\r\ndata: %03d\n\r\n" % (i % 1000) if sse else b"5\r\nchunk\r\n")
                        await writer.drain()
                        await asyncio.sleep(0.01)
                else:
                    await reader.read()
                self.gone.set()
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.gone.set()
        finally:
            self.open_connections -= 1
            writer.close()


async def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    assert check()


@pytest.mark.parametrize("way", ["rst_stream", "connection"])
@pytest.mark.parametrize("phase", ["before_head", "mid_upload", "mid_response", "mid_sse"])
async def test_http2_client_gone_frees_the_upstream_connection(start_gateway, phase: str, way: str) -> None:
    """§5.4: a client gone in any phase cancels the upstream request at once (the connection closed, not pooled),
    counted by phase; a stream of another client in flight at the time completes, and the gateway goes on."""
    upstream = await Upstream().start()
    gw = await start_gateway(config([f"http://127.0.0.1:{upstream.port}"]))
    port = gateway_port(gw)
    other = await H2Client.connect(port)
    client = await H2Client.connect(port)
    try:
        bystander = other.start("GET", "/short-sse")  # another client's stream, in flight throughout
        if phase == "mid_upload":
            sid = client.conn.get_next_available_stream_id()
            client.streams[sid] = {"headers": {}, "body": b"", "chunks": [], "trailers": {},
                                   "done": asyncio.Event(), "reset": False}
            client.conn.send_headers(sid, [(":method", "POST"), (":path", "/upload"), (":scheme", "http"),
                                           (":authority", "a"), ("content-length", "1000000")])
            for _ in range(3):
                client.conn.send_data(sid, b"u" * 16000)
            client.writer.write(client.conn.data_to_send())
            await asyncio.wait_for(upstream.started.wait(), 5)
            await wait_for(lambda: upstream.received > 0)
        else:
            path = {"before_head": "/hang", "mid_response": "/stream", "mid_sse": "/sse"}[phase]
            sid = client.start("GET", path)
            await asyncio.wait_for(upstream.started.wait(), 5)
            if phase != "before_head":
                await wait_for(lambda: len(client.streams[sid]["body"]) > 0)
        assert upstream.open_connections == 2  # the bystander's and this one
        if way == "rst_stream":
            client.reset(sid)
        else:
            client.writer.transport.abort()
        await asyncio.wait_for(upstream.gone.wait(), 3)  # the upstream connection is closed at once
        await wait_for(lambda: upstream.open_connections <= 1)
        await asyncio.sleep(0.05)
        counted = "streaming" if phase in ("mid_response", "mid_sse") else "waiting_head"
        assert counter(gw, "gateway_client_disconnects", router="r", service="s", phase=counted) == 1
        r = await other.wait(bystander)
        assert r["body"] == b"".join(b"data: %d\n\n" % i for i in range(5)) and not r["reset"]
        if way == "rst_stream":  # the client's connection goes on
            assert (await client.request("GET", "/ok"))["body"] == b"fine"
        assert (await other.request("GET", "/ok"))["body"] == b"fine"
    finally:
        client.close()
        other.close()
        upstream.server.close()


# --- the HTTP/2 client never reads ----------------------------------------------------------------------------------


class WindowlessClient(H2Client):
    """Reads every frame but never acknowledges DATA: the stream's and the connection's windows stay shut."""

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            for e in self.conn.receive_data(data):
                s = self.streams.get(getattr(e, "stream_id", 0) or 0)
                if isinstance(e, h2.events.ResponseReceived) and s is not None:
                    s["headers"] = dict(e.headers)
                elif isinstance(e, h2.events.DataReceived) and s is not None:
                    s["body"] += e.data
            self.writer.write(self.conn.data_to_send())


@pytest.mark.parametrize("stall", ["no_window", "no_read"])
async def test_http2_client_that_never_reads_100mb_keeps_memory_bounded(start_gateway, stall: str) -> None:
    """§5.4 backpressure: the gateway stops reading the backend while the client takes nothing (HTTP/2 flow
    control, or a socket not read); its memory stays bounded; others are served; the client's reset frees it all."""
    total = 100 * 1024 * 1024
    written = 0
    paused = asyncio.Event()
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal written
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            while b"GET /ok" in head:  # keep-alive
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
                head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * 65536
        try:
            while written < total:
                writer.write(block)
                written += len(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except asyncio.TimeoutError:
                    paused.set()
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            done.set()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    backend_port = server.sockets[0].getsockname()[1]
    gw = await start_gateway(config([f"http://127.0.0.1:{backend_port}"]))
    port = gateway_port(gw)
    warm = await Client.connect(port)  # kept open: counted in both fd samples
    await warm.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    fds0, rss0 = open_fds({port, backend_port}), rss_kib()
    client = (await WindowlessClient.connect(port)) if stall == "no_window" else (await H2Client.connect(port))
    try:
        if stall == "no_read":  # windows wide open: only the socket holds the gateway back
            client.writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
            client.conn.increment_flow_control_window(2**31 - 1 - 65535)
            client.writer.write(client.conn.data_to_send())
            await asyncio.sleep(0.1)  # the SETTINGS exchange, then the client reads no more
            client.task.cancel()
        sid = client.start("GET", "/big")
        await asyncio.wait_for(paused.wait(), 10)
        await asyncio.sleep(0.3)
        assert written < 24 * 1024 * 1024  # loopback socket buffers (seen: 4-9 MiB), 64 KiB marks and window
        assert rss_kib() - rss0 < 48 * 1024, f"RSS {rss0} -> {rss_kib()} KiB"
        if stall == "no_window":
            assert len(client.streams[sid]["body"]) <= 65535  # the client's window was respected
        c = await Client.connect(port)  # other clients are served meanwhile
        assert (await c.request(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")).body == b"fine"
        c.close()
        if stall == "no_window":
            client.reset(sid)
        else:
            client.writer.transport.abort()
        await asyncio.wait_for(done.wait(), 5)  # the backend connection is closed
    finally:
        client.close()
    await asyncio.sleep(0.1)
    assert counter(gw, "gateway_client_disconnects", router="r", service="s", phase="streaming") == 1
    for _ in range(50):  # closes finish within a few loop turns
        if open_fds({port, backend_port}) <= fds0:
            break
        await asyncio.sleep(0.05)
    assert open_fds({port, backend_port}) <= fds0
    warm.close()
    server.close()
