"""Layer-4 proxying (SPEC §9.5, §9.6) over real loopback sockets, under the stdlib asyncio loop and uvloop.

Backends are asyncio stream servers; the proxy's services are small stand-ins for ServiceRuntime (a real balancer
and TransportConfig, a passive-health recorder). Every wait is bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from a3s_gateway.config.model import TransportConfig
from a3s_gateway.proxy.tcp import HIGH_WATER, TcpServer, TcpTarget
from a3s_gateway.proxy.udp import UdpServer
from a3s_gateway.routing.tcp import TcpRoute, TcpRouter
from a3s_gateway.service.balancer import Backend, make_balancer
from certs import make_cert

TIMEOUT = 5.0
READ_CHUNK = 256 * 1024  # the most either loop reads from a socket at once

# Every async test here runs under both loops (tests/integration/conftest.py).


# --- helpers -----------------------------------------------------------------------------------------------------


class Passive:
    """Records passive-health outcomes like PassiveHealth.record(backend, failed, now)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def record(self, backend: Backend, failed: bool, now: float) -> None:
        self.calls.append((backend.url, failed))


@dataclass
class Service:
    """The part of ServiceRuntime the L4 proxies read."""

    name: str
    balancer: Any
    transport: TransportConfig
    passive: Passive


def service(*ports: int, scheme: str = "tcp", **transport: Any) -> Service:
    backends = [Backend(f"{scheme}://127.0.0.1:{port}") for port in ports]
    passive = Passive()
    for backend in backends:
        backend.passive = passive
    return Service("svc", make_balancer("round-robin", backends), TransportConfig(**transport), passive)


def route(name: str, rule: str, svc: Service, priority: int = 1, **filter_: Any) -> TcpRoute:
    return TcpRoute(name, rule, priority, TcpTarget(name, svc, **filter_))


async def until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait (polling) until ``condition()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True when the peer closes (EOF or reset) without sending anything more."""
    try:
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
    except ConnectionError:
        return True
    return data == b""


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Harness:
    """Starts backends, proxies and clients, and closes them all at the end of a test."""

    def __init__(self) -> None:
        self.servers: list[asyncio.base_events.Server] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.proxies: list[TcpServer] = []
        self.udp: list[UdpServer] = []
        self.transports: list[asyncio.BaseTransport] = []
        self.handlers: list[asyncio.Task[None]] = []

    async def backend(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            self.handlers.append(cast("asyncio.Task[None]", asyncio.current_task()))
            # a cancelled handler task makes asyncio's stream callback log an error: end quietly instead
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await handler(reader, writer)
            writer.close()

        server = await asyncio.start_server(tracked, host, 0, ssl=ssl_ctx)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def proxy(self, routes: list[TcpRoute], **kwargs: Any) -> tuple[TcpServer, int]:
        server = TcpServer(asyncio.get_running_loop(), "l4", TcpRouter(routes), **kwargs)
        await server.start("127.0.0.1", 0)
        self.proxies.append(server)
        return server, server.bound_address()[1]

    async def connect(self, port: int, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, **kwargs), TIMEOUT)
        self.writers.append(writer)
        return reader, writer

    async def close(self) -> None:
        for proxy in self.proxies:
            await proxy.drain(0)
        for udp in self.udp:
            udp.close()
        for transport in self.transports:
            transport.close()
        for writer in self.writers:
            writer.transport.abort()
        for server in self.servers:
            server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self.handlers, return_exceptions=True), TIMEOUT)
        await asyncio.sleep(0.01)  # let connection_lost callbacks run before the loop closes


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def greeter(greeting: bytes) -> Handler:
    """A server-first backend: sends ``greeting`` on connect, then echoes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await echo(reader, writer)

    return handler


async def roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    return await asyncio.wait_for(reader.readexactly(len(data)), TIMEOUT)


# --- TCP: relay ----------------------------------------------------------------------------------------------------


async def test_echo_through_the_proxy(h: Harness) -> None:
    svc = service(await h.backend(echo), scheme="http")  # an http URL means the same host:port
    target_route = route("echo", "HostSNI(`*`)", svc)
    server, port = await h.proxy([target_route])
    reader, writer = await h.connect(port)
    assert await roundtrip(reader, writer, b"hello") == b"hello"
    backend = svc.balancer.backends[0]
    assert (server.stats.connections, server.stats.active) == (1, 1)
    assert (backend.in_flight, target_route.target.active) == (1, 1)
    assert svc.passive.calls == [(backend.url, False)]
    writer.close()
    await until(lambda: not server.connections)
    assert (server.stats.active, backend.in_flight, target_route.target.active) == (0, 0, 0)


async def test_half_close_is_propagated_and_the_reply_still_arrives(h: Harness) -> None:
    backend_saw_eof = asyncio.Event()

    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # until the client's FIN reaches the backend
        backend_saw_eof.set()
        writer.write(b"reply:" + request)
        await writer.drain()

    svc = service(await h.backend(reply_after_eof))
    server, port = await h.proxy([route("r", "HostSNI(`*`)", svc)])
    reader, writer = await h.connect(port)
    writer.write(b"ping")
    writer.write_eof()
    await asyncio.wait_for(backend_saw_eof.wait(), TIMEOUT)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"reply:ping"  # then the backend's FIN
    await until(lambda: not server.connections)
    assert svc.balancer.backends[0].in_flight == 0


async def test_backpressure_bounds_what_the_proxy_buffers(h: Harness) -> None:
    release = asyncio.Event()

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        total = 0
        while chunk := await reader.read(1 << 20):
            total += len(chunk)
        writer.write(str(total).encode())
        await writer.drain()

    server, port = await h.proxy([route("r", "HostSNI(`*`)", service(await h.backend(slow_reader)))])
    reader, writer = await h.connect(port)
    size = 64 << 20
    writer.write(b"x" * size)  # far more than the kernel buffers between client, proxy and backend hold
    await until(lambda: bool(server.connections) and next(iter(server.connections)).paused != 0)
    conn = next(iter(server.connections))
    upstream = conn.upstream
    assert upstream is not None
    samples = []
    for _ in range(20):
        samples.append(upstream.get_write_buffer_size())
        await asyncio.sleep(0.01)
    assert max(samples) <= HIGH_WATER + READ_CHUNK  # the proxy holds at most a high-water mark and one read
    assert writer.transport.get_write_buffer_size() > size // 2  # the rest waits in the client
    release.set()
    await asyncio.wait_for(writer.drain(), TIMEOUT)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == str(size).encode()


async def test_server_first_protocol_works_when_only_catch_all_routes_exist(h: Harness) -> None:
    svc = service(await h.backend(greeter(b"220 ready\r\n")))
    server, port = await h.proxy([route("smtp", "HostSNI(`*`) && ClientIP(`127.0.0.0/8`)", svc)])
    assert not server.router.needs_peek
    reader, _ = await h.connect(port)
    assert await asyncio.wait_for(reader.readexactly(11), 1.0) == b"220 ready\r\n"  # well before the 5 s peek


async def test_connect_refused_closes_the_client_and_counts_a_passive_failure(h: Harness) -> None:
    svc = service(free_port(), connect_timeout=2.0)
    server, port = await h.proxy([route("r", "HostSNI(`*`)", svc)])
    reader, _ = await h.connect(port)
    assert await closed_by_peer(reader)
    backend = svc.balancer.backends[0]
    assert svc.passive.calls == [(backend.url, True)]
    await until(lambda: not server.connections)
    assert (server.stats.upstream_errors, backend.in_flight) == (1, 0)


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops new SYNs, so a connect hangs."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(4):
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        yield port


async def test_connect_timeout_closes_the_client_and_counts_a_passive_failure(h: Harness) -> None:
    with unanswered_port() as backend_port:
        await asyncio.sleep(0.05)  # let the fillers' handshakes fill the queue
        svc = service(backend_port, connect_timeout=0.3)
        server, port = await h.proxy([route("r", "HostSNI(`*`)", svc)])
        loop = asyncio.get_running_loop()
        start = loop.time()
        reader, _ = await h.connect(port)
        assert await closed_by_peer(reader)
        assert loop.time() - start >= 0.25
        assert svc.passive.calls == [(svc.balancer.backends[0].url, True)]
        assert server.stats.upstream_errors == 1


async def test_no_eligible_backend_closes_the_client(h: Harness) -> None:
    svc = service(await h.backend(echo))
    svc.balancer.backends[0].eligible = False
    server, port = await h.proxy([route("r", "HostSNI(`*`)", svc)])
    reader, _ = await h.connect(port)
    assert await closed_by_peer(reader)
    assert server.stats.upstream_errors == 1


async def test_idle_tunnel_is_closed_on_both_sides(h: Harness) -> None:
    backend_closed = asyncio.Event()

    async def echo_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await echo(reader, writer)
        backend_closed.set()

    svc = service(await h.backend(echo_then_wait), tunnel_idle_timeout=0.3)
    server, port = await h.proxy([route("r", "HostSNI(`*`)", svc)])
    reader, writer = await h.connect(port)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(3):  # traffic keeps the tunnel open past the timeout
        assert await roundtrip(reader, writer, b"tick") == b"tick"
        await asyncio.sleep(0.15)
    assert loop.time() - start > 0.3
    assert await closed_by_peer(reader)
    await asyncio.wait_for(backend_closed.wait(), TIMEOUT)
    await until(lambda: not server.connections)
    assert svc.balancer.backends[0].in_flight == 0


async def test_drain_aborts_open_tunnels_after_the_timeout(h: Harness) -> None:
    server, port = await h.proxy([route("r", "HostSNI(`*`)", service(await h.backend(echo)))])
    reader, writer = await h.connect(port)
    assert await roundtrip(reader, writer, b"x") == b"x"
    await asyncio.wait_for(server.drain(0.05), TIMEOUT)
    assert await closed_by_peer(reader)
    await until(lambda: not server.connections)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)  # no longer accepting


async def test_new_router_applies_to_new_connections_only(h: Harness) -> None:
    first = service(await h.backend(greeter(b"1")))
    second = service(await h.backend(greeter(b"2")))
    server, port = await h.proxy([route("r", "HostSNI(`*`)", first)])
    old_reader, old_writer = await h.connect(port)
    assert await asyncio.wait_for(old_reader.readexactly(1), TIMEOUT) == b"1"
    server.router = TcpRouter([route("r", "HostSNI(`*`)", second)])
    new_reader, _ = await h.connect(port)
    assert await asyncio.wait_for(new_reader.readexactly(1), TIMEOUT) == b"2"
    assert await roundtrip(old_reader, old_writer, b"still") == b"still"


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_listener_backend_and_client_ip(h: Harness) -> None:
    svc = service()
    svc.balancer = make_balancer("round-robin", [Backend(f"tcp://[::1]:{await h.backend(echo, host='::1')}")])
    server = TcpServer(asyncio.get_running_loop(), "v6", TcpRouter([route("v6", "ClientIP(`::1`)", svc)]))
    await server.start("::1", 0)
    h.proxies.append(server)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("::1", server.bound_address()[1]), TIMEOUT)
    h.writers.append(writer)
    assert await roundtrip(reader, writer, b"six") == b"six"


# --- TCP: SNI routing ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("certs")
    return {name: make_cert(directory, f"{name}-", f"{name}.test") for name in ("a", "b", "gw")}


def server_context(cert: tuple[Path, Path], alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_context(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def der(cert: tuple[Path, Path]) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert[0].read_text())


def peer_der(writer: asyncio.StreamWriter) -> bytes:
    cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert cert is not None
    return bytes(cert)


async def test_tls_passthrough_routes_by_sni_and_plain_clients_go_to_the_catch_all(
    h: Harness, certs: dict[str, tuple[Path, Path]]
) -> None:
    a = service(await h.backend(echo, server_context(certs["a"])))
    b = service(await h.backend(echo, server_context(certs["b"])))
    plain = service(await h.backend(greeter(b"hi\n")))
    server, port = await h.proxy(
        [route("a", "HostSNI(`a.test`)", a), route("b", "HostSNI(`B.TEST`)", b), route("rest", "HostSNI(`*`)", plain)],
        peek_timeout=0.3,
    )
    assert server.router.needs_peek
    for name in ("a", "b"):
        reader, writer = await h.connect(port, ssl=client_context(), server_hostname=f"{name}.test")
        assert peer_der(writer) == der(certs[name])  # the backend's own certificate: TLS was not terminated
        assert await roundtrip(reader, writer, b"over tls") == b"over tls"
    # a plain client is routed as soon as its first bytes show it is not TLS
    reader, writer = await h.connect(port)
    writer.write(b"plain")
    assert await asyncio.wait_for(reader.readexactly(8), 1.0) == b"hi\nplain"
    # a client that sends nothing is routed when the peek times out
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, _ = await h.connect(port)
    assert await asyncio.wait_for(reader.readexactly(3), TIMEOUT) == b"hi\n"
    assert loop.time() - start >= 0.25


async def test_alpn_routes_a_passthrough_connection(h: Harness, certs: dict[str, tuple[Path, Path]]) -> None:
    a = service(await h.backend(echo, server_context(certs["a"], ["x-a"])))
    b = service(await h.backend(echo, server_context(certs["b"], ["x-b"])))
    _, port = await h.proxy([route("a", "ALPN(`x-a`)", a), route("b", "ALPN(`x-b`, `x-c`)", b)])
    _, writer = await h.connect(port, ssl=client_context(["x-c"]), server_hostname="any.test")
    assert peer_der(writer) == der(certs["b"])


async def test_tls_hello_for_an_unknown_name_is_not_routed(h: Harness, certs: dict[str, tuple[Path, Path]]) -> None:
    a = service(await h.backend(echo, server_context(certs["a"])))
    server, port = await h.proxy([route("a", "HostSNI(`a.test`)", a)])
    with pytest.raises((ConnectionError, ssl.SSLError)):
        await h.connect(port, ssl=client_context(), server_hostname="c.test")
    reader, writer = await h.connect(port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")
    assert await closed_by_peer(reader)
    await until(lambda: server.stats.rejected["no_route"] == 2)


async def test_tls_termination_routes_by_handshake_sni_and_alpn(
    h: Harness, certs: dict[str, tuple[Path, Path]]
) -> None:
    ctx = server_context(certs["gw"], ["x-echo"])

    def remember(obj: Any, name: str | None, _: ssl.SSLContext) -> None:
        obj.sni = name

    ctx.sni_callback = remember
    svc = service(await h.backend(echo))
    server, port = await h.proxy(
        [route("echo", "HostSNI(`gw.test`) && ALPN(`x-echo`)", svc)],
        ssl=ctx,
        sni_of=lambda obj: getattr(obj, "sni", None),
    )
    reader, writer = await h.connect(port, ssl=client_context(["x-echo"]), server_hostname="gw.test")
    assert peer_der(writer) == der(certs["gw"])  # the gateway's certificate: TLS is terminated
    assert await roundtrip(reader, writer, b"decrypted") == b"decrypted"
    reader, writer = await h.connect(port, ssl=client_context(["x-echo"]), server_hostname="other.test")
    assert await closed_by_peer(reader)
    assert server.stats.rejected["no_route"] == 1


# --- TCP: filters --------------------------------------------------------------------------------------------------


async def test_router_filter_rejects_by_ip(h: Harness) -> None:
    svc = service(await h.backend(greeter(b"!")))
    server, port = await h.proxy([route("r", "HostSNI(`*`)", svc, allowed=["10.0.0.0/8", "::1"])])
    reader, _ = await h.connect(port)
    assert await closed_by_peer(reader)
    await until(lambda: not server.connections)
    assert server.stats.rejected == {"ip": 1, "limit": 0, "no_route": 0}
    assert svc.balancer.backends[0].in_flight == 0


async def test_router_filter_limits_connections(h: Harness) -> None:
    svc = service(await h.backend(greeter(b"!")))
    limited = route("r", "HostSNI(`*`)", svc, allowed=["127.0.0.1"], max_connections=1)
    server, port = await h.proxy([limited])
    first, first_writer = await h.connect(port)
    assert await asyncio.wait_for(first.readexactly(1), TIMEOUT) == b"!"
    second, _ = await h.connect(port)
    assert await closed_by_peer(second)
    assert server.stats.rejected == {"ip": 0, "limit": 1, "no_route": 0}
    first_writer.close()
    await until(lambda: limited.target.active == 0)
    third, _ = await h.connect(port)
    assert await asyncio.wait_for(third.readexactly(1), TIMEOUT) == b"!"


async def test_entrypoint_allowlist_is_applied_at_accept(h: Harness) -> None:
    svc = service(await h.backend(greeter(b"!")))
    denied, denied_port = await h.proxy([route("r", "HostSNI(`*`)", svc)], allowed_ips=["10.0.0.0/8"])
    reader, _ = await h.connect(denied_port)
    assert await closed_by_peer(reader)
    assert denied.stats.rejected["ip"] == 1
    assert not denied.connections and svc.balancer.backends[0].in_flight == 0
    _, allowed_port = await h.proxy([route("r", "HostSNI(`*`)", svc)], allowed_ips=["127.0.0.0/8"])
    reader, _ = await h.connect(allowed_port)
    assert await asyncio.wait_for(reader.readexactly(1), TIMEOUT) == b"!"


async def test_entrypoint_connection_limit(h: Harness) -> None:
    svc = service(await h.backend(greeter(b"!")))
    server, port = await h.proxy([route("r", "HostSNI(`*`)", svc)], max_connections=1)
    first, _ = await h.connect(port)
    assert await asyncio.wait_for(first.readexactly(1), TIMEOUT) == b"!"
    second, _ = await h.connect(port)
    assert await closed_by_peer(second)
    assert server.stats.rejected["limit"] == 1
    assert (server.stats.connections, server.stats.active) == (2, 1)


# --- UDP -----------------------------------------------------------------------------------------------------------


class Datagrams(asyncio.DatagramProtocol):
    """A UDP endpoint that queues what it receives; as a backend it echoes with a prefix."""

    def __init__(self, prefix: bytes | None = None) -> None:
        self.prefix = prefix
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if self.prefix is not None:
            assert self.transport is not None
            self.transport.sendto(self.prefix + data, addr)
        self.queue.put_nowait(data)

    async def get(self) -> bytes:
        return await asyncio.wait_for(self.queue.get(), TIMEOUT)


async def udp_endpoint(h: Harness, proto: Datagrams, **kwargs: Any) -> Datagrams:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: proto, **kwargs)
    h.transports.append(transport)
    return proto


async def udp_backend(h: Harness, prefix: bytes) -> int:
    proto = await udp_endpoint(h, Datagrams(prefix), local_addr=("127.0.0.1", 0))
    assert proto.transport is not None
    return int(proto.transport.get_extra_info("sockname")[1])


async def udp_proxy(h: Harness, svc: Service, **kwargs: Any) -> tuple[UdpServer, tuple[str, int]]:
    server = UdpServer(asyncio.get_running_loop(), "dns", svc, **kwargs)
    await server.start("127.0.0.1", 0)
    h.udp.append(server)
    return server, server.bound_address()


async def ask(client: Datagrams, data: bytes) -> bytes:
    assert client.transport is not None
    client.transport.sendto(data)
    return await client.get()


async def test_udp_sessions_per_client(h: Harness) -> None:
    svc = service(await udp_backend(h, b"1:"), await udp_backend(h, b"2:"), scheme="udp")
    server, addr = await udp_proxy(h, svc, session_timeout=30.0, max_sessions=0)
    first = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    second = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    assert await ask(first, b"a") == b"1:a"
    assert await ask(second, b"b") == b"2:b"  # a new session picks the next backend
    assert await ask(first, b"c") == b"1:c"  # and a session keeps its backend
    assert len(server.sessions) == 2
    assert [b.in_flight for b in svc.balancer.backends] == [1, 1]
    assert svc.passive.calls == [(svc.balancer.backends[0].url, False), (svc.balancer.backends[1].url, False)]


async def test_udp_relays_the_largest_datagram_unchanged(h: Harness) -> None:
    backend = await udp_endpoint(h, Datagrams(b""), local_addr=("127.0.0.1", 0))
    assert backend.transport is not None
    svc = service(int(backend.transport.get_extra_info("sockname")[1]), scheme="udp")
    _, addr = await udp_proxy(h, svc, session_timeout=30.0, max_sessions=0)
    client = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    big = bytes(range(256)) * 255 + bytes(227)  # 65,507 bytes: the largest IPv4 UDP payload
    assert await ask(client, big) == big
    assert await backend.get() == big


async def test_udp_session_expires_after_the_idle_timeout(h: Harness) -> None:
    svc = service(await udp_backend(h, b"1:"), await udp_backend(h, b"2:"), scheme="udp")
    server, addr = await udp_proxy(h, svc, session_timeout=0.2, max_sessions=0)
    client = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    assert await ask(client, b"a") == b"1:a"
    await until(lambda: not server.sessions)
    assert [b.in_flight for b in svc.balancer.backends] == [0, 0]
    assert await ask(client, b"b") == b"2:b"  # a new session, a new pick


async def test_udp_max_sessions_drops_new_clients(h: Harness) -> None:
    svc = service(await udp_backend(h, b"1:"), scheme="udp")
    server, addr = await udp_proxy(h, svc, session_timeout=30.0, max_sessions=1)
    first = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    second = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    assert await ask(first, b"a") == b"1:a"
    assert second.transport is not None
    second.transport.sendto(b"dropped")
    assert await ask(first, b"b") == b"1:b"  # sent after, so the dropped datagram was handled before it
    assert server.dropped == 1 and second.queue.empty()
    # an expired session makes room: purged when the next new client arrives (here: at an explicit time)
    assert server.purge_expired(asyncio.get_running_loop().time() + 30.0) == 1
    assert await ask(second, b"c") == b"1:c"
    assert server.dropped == 1


async def test_udp_port_unreachable_counts_a_passive_failure(h: Harness) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = int(sock.getsockname()[1])
    svc = service(closed_port, scheme="udp")
    server, addr = await udp_proxy(h, svc, session_timeout=30.0, max_sessions=0)
    client = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    assert client.transport is not None
    client.transport.sendto(b"anyone?")
    await until(lambda: (svc.balancer.backends[0].url, True) in svc.passive.calls)
    server.close()
    assert not server.sessions and svc.balancer.backends[0].in_flight == 0


async def test_udp_new_sessions_use_a_replaced_service(h: Harness) -> None:
    old = service(await udp_backend(h, b"old:"), scheme="udp")
    new = service(await udp_backend(h, b"new:"), scheme="udp")
    server, addr = await udp_proxy(h, old, session_timeout=30.0, max_sessions=0)
    first = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    assert await ask(first, b"a") == b"old:a"
    server.service = new
    second = await udp_endpoint(h, Datagrams(), remote_addr=addr)
    assert await ask(second, b"b") == b"new:b"
    assert await ask(first, b"c") == b"old:c"
