"""TCP and UDP entrypoints configured in HCL (SPEC §9.5, §9.6, §6.15): TLS passthrough routed by SNI (the client
sees the backend's own certificate), TLS termination on a TCP entrypoint, tcp-filter, a UDP echo, and a reload
that keeps an open tunnel."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from support import gateway_port

from a3s_gateway import GatewayConfig
from certs import make_san_cert

pytestmark = pytest.mark.timeout(60)


async def tls_echo(tmp_path: Path, name: str) -> tuple[asyncio.AbstractServer, int, bytes]:
    """A TLS echo server with its own certificate for ``name``; (server, port, certificate DER)."""
    cert, key = make_san_cert(tmp_path, f"{name}-", [name])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(name.encode() + b":" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], ssl.PEM_cert_to_DER_cert(cert.read_text())


async def plain_echo() -> tuple[asyncio.AbstractServer, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(b"plain:" + data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def tls_roundtrip(port: int, sni: str, payload: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure(), server_hostname=sni)
    cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(payload)
    data = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return cert, data


async def test_sni_passthrough_catch_all_and_tcp_filter(start_gateway, tmp_path: Path) -> None:
    a, a_port, a_der = await tls_echo(tmp_path, "a.example.com")
    b, b_port, b_der = await tls_echo(tmp_path, "b.example.com")
    p, p_port = await plain_echo()
    hcl = f'''
entrypoints "tcp" {{
  address  = "127.0.0.1:0"
  protocol = "tcp"
}}
routers "a" {{
  rule    = "HostSNI(`a.example.com`)"
  service = "a"
}}
routers "b" {{
  rule        = "HostSNIRegexp(`^b\\\\.`)"
  service     = "b"
  middlewares = ["one-at-a-time"]
}}
routers "rest" {{
  rule     = "HostSNI(`*`)"
  service  = "plain"
  priority = -1
}}
middlewares "one-at-a-time" {{
  type            = "tcp-filter"
  max_connections = 1
}}
services "a" {{
  load_balancer {{ servers = [{{ url = "tcp://127.0.0.1:{a_port}" }}] }}
}}
services "b" {{
  load_balancer {{ servers = [{{ url = "tcp://127.0.0.1:{b_port}" }}] }}
}}
services "plain" {{
  load_balancer {{ servers = [{{ url = "tcp://127.0.0.1:{p_port}" }}] }}
}}
'''
    gw = await start_gateway(hcl)
    port = gateway_port(gw, "tcp")
    assert await tls_roundtrip(port, "a.example.com", b"hi") == (a_der, b"a.example.com:hi")  # backend's own cert
    assert await tls_roundtrip(port, "b.example.com", b"yo") == (b_der, b"b.example.com:yo")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # not TLS: the catch-all route
    writer.write(b"PING\r\n")
    assert await asyncio.wait_for(reader.read(100), 10) == b"plain:PING\r\n"
    writer.close()
    # tcp-filter: a second concurrent connection through router b is refused
    r1, w1 = await asyncio.open_connection("127.0.0.1", port, ssl=insecure(), server_hostname="b.example.com")
    w1.write(b"1")
    assert await asyncio.wait_for(r1.read(100), 5) == b"b.example.com:1"
    with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, OSError)):
        await tls_roundtrip(port, "b.example.com", b"2")
    w1.close()
    assert 'gateway_tcp_connections_rejected_total{entrypoint="tcp",reason="limit"} 1.0' in gw.metrics()
    for s in (a, b, p):
        s.close()


async def test_tls_termination_on_a_tcp_entrypoint_and_a_reload_keeps_the_tunnel(start_gateway, tmp_path) -> None:
    p, p_port = await plain_echo()
    cert, key = make_san_cert(tmp_path, "gw-", ["db.example.com"])
    hcl = f'''
entrypoints "tcps" {{
  address  = "127.0.0.1:0"
  protocol = "tcp"
  tls {{
    cert_file = "{cert}"
    key_file  = "{key}"
  }}
}}
routers "db" {{
  rule    = "HostSNI(`db.example.com`)"
  service = "plain"
}}
services "plain" {{
  load_balancer {{ servers = [{{ url = "tcp://127.0.0.1:{p_port}" }}] }}
}}
'''
    gw = await start_gateway(hcl)
    port = gateway_port(gw, "tcps")
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=insecure(),
                                                   server_hostname="db.example.com")
    assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(
        cert.read_text())  # the gateway terminates TLS
    writer.write(b"one")
    assert await asyncio.wait_for(reader.read(100), 5) == b"plain:one"
    await gw.reload(GatewayConfig.from_hcl(hcl.replace("HostSNI(`db.example.com`)", "HostSNI(`other`)"),
                                           filename="t.hcl"))
    writer.write(b"two")
    assert await asyncio.wait_for(reader.read(100), 5) == b"plain:two"  # the open tunnel is untouched
    writer.close()
    try:  # no route any more: the connection is closed without data
        _, data = await tls_roundtrip(port, "db.example.com", b"three")
    except (ConnectionError, ssl.SSLError, OSError):
        data = b""
    assert data == b""
    p.close()


async def test_udp_echo_through_the_gateway(start_gateway) -> None:
    loop = asyncio.get_running_loop()

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
            self.transport = transport

        def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
            self.transport.sendto(b"echo:" + data, addr)

    backend, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    b_port = backend.get_extra_info("sockname")[1]
    hcl = f'''
entrypoints "dns" {{
  address  = "127.0.0.1:0"
  protocol = "udp"
}}
routers "dns" {{
  entrypoints = ["dns"]
  service     = "dns"
}}
services "dns" {{
  load_balancer {{ servers = [{{ url = "udp://127.0.0.1:{b_port}" }}] }}
}}
'''
    gw = await start_gateway(hcl)
    port = gateway_port(gw, "dns")
    got: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
            got.put_nowait(data)

    clients = [(await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port)))[0] for _ in range(2)]
    for i, c in enumerate(clients):
        c.sendto(b"q%d" % i)
    answers = {await asyncio.wait_for(got.get(), 5) for _ in clients}
    assert answers == {b"echo:q0", b"echo:q1"}
    assert 'gateway_udp_sessions{entrypoint="dns"} 2.0' in gw.metrics()
    await gw.reload(GatewayConfig.from_hcl(hcl + "\n# reloaded\n",
                                           filename="t.hcl"))
    clients[0].sendto(b"again")  # the session made before the reload goes on
    assert await asyncio.wait_for(got.get(), 5) == b"echo:again"
    assert len(gw._servers["dns"].server.sessions) == 2
    for c in clients:
        c.close()
    backend.close()
