"""https:// backends (SPEC §10.5): verified against tls_ca_file (or the system store), tls_server_name for SNI and
verification, tls_insecure_skip_verify; a verification failure is a connect failure (502)."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest
from certs import make_san_cert

from support import Client, gateway_port

pytestmark = pytest.mark.timeout(60)


async def tls_backend(tmp_path: Path) -> tuple[asyncio.AbstractServer, int, Path]:
    cert, key = make_san_cert(tmp_path, "backend-", ["model.internal"])
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    seen: list[str | None] = []
    ctx.sni_callback = lambda obj, name, context: seen.append(name)  # type: ignore[assignment,misc,return-value]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            body = json.dumps({"sni": seen[-1] if seen else None}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    return server, server.sockets[0].getsockname()[1], cert


def config(port: int, transport: str) -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "https://127.0.0.1:{port}" }}] }}
  transport {{
    {transport}
  }}
}}
'''


async def get(port: int) -> tuple[int, bytes]:
    c = await Client.connect(port)
    try:
        r = await c.request(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n")
    finally:
        c.close()
    return r.status, r.body


async def test_verified_with_the_ca_file_and_server_name(start_gateway, tmp_path: Path) -> None:
    server, port, cert = await tls_backend(tmp_path)
    gw = await start_gateway(config(port, f'tls_ca_file = "{cert}"\n    tls_server_name = "model.internal"'))
    status, body = await get(gateway_port(gw))
    assert status == 200 and json.loads(body)["sni"] == "model.internal"
    server.close()


async def test_an_unverifiable_backend_is_a_502_unless_verification_is_skipped(start_gateway, tmp_path) -> None:
    server, port, cert = await tls_backend(tmp_path)
    gw = await start_gateway(config(port, f'tls_ca_file = "{cert}"'))  # the name 127.0.0.1 is not in the cert
    status, body = await get(gateway_port(gw))
    assert status == 502 and json.loads(body) == {"error": "Upstream connection failed"}
    gw2 = await start_gateway(config(port, "tls_insecure_skip_verify = true"))
    status, _ = await get(gateway_port(gw2))
    assert status == 200
    server.close()


async def test_an_https_backend_that_selects_h2_is_spoken_to_in_http2(start_gateway, tmp_path: Path) -> None:
    """§9.1: upstream HTTP/2 over TLS when the backend's ALPN says h2 — here the backend is another gateway."""
    from a3s_gateway.proxy.http2 import H2Protocol
    from support import start_backend

    origin = await start_backend()
    cert, key = make_san_cert(tmp_path, "inner-", ["inner.example"])
    inner = await start_gateway(f'''
entrypoints "tls" {{
  address = "127.0.0.1:0"
  tls {{
    cert_file = "{cert}"
    key_file  = "{key}"
  }}
}}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "o"
}}
services "o" {{
  load_balancer {{ servers = [{{ url = "{origin.url}" }}] }}
}}
''')
    inner_port = gateway_port(inner, "tls")
    outer = await start_gateway(config(inner_port, f'tls_ca_file = "{cert}"\n    tls_server_name = "inner.example"'))
    for path in (b"/one", b"/two"):
        c = await Client.connect(gateway_port(outer))
        r = await c.request(b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        c.close()
        assert r.status == 200 and r.body == b"hello from backend"
    connections = list(inner._servers["tls"].connections)
    assert len(connections) == 1 and isinstance(connections[0], H2Protocol)  # one HTTP/2 connection, two streams
    assert [q.target for q in origin.requests] == ["/one", "/two"]


async def test_health_probes_use_the_transport_tls_settings(start_gateway, tmp_path: Path) -> None:
    server, port, cert = await tls_backend(tmp_path)
    hc = 'health_check {\n    path = "/health"\n    interval = "100ms"\n    timeout = "100ms"\n  }'
    hcl = config(port, f'tls_ca_file = "{cert}"\n    tls_server_name = "model.internal"').replace(
        '  transport {', f'  load_balancer {{\n    {hc}\n  }}\n  transport {{').replace(
        f'  load_balancer {{ servers = [{{ url = "https://127.0.0.1:{port}" }}] }}\n', '')
    hcl = hcl.replace(f"    {hc}", f'    servers = [{{ url = "https://127.0.0.1:{port}" }}]\n    {hc}')
    gw = await start_gateway(hcl)
    backend = gw.runtime.services["s"].backends[0]
    checker = gw.runtime.services["s"].checker
    assert checker is not None
    for _ in range(50):  # several probe rounds: a probe that ignored tls_ca_file would fail verification
        await asyncio.sleep(0.02)
    health = gw.live.health.get("s", backend)
    assert health.successes >= 2 and health.failures == 0 and backend.eligible
    assert (await get(gateway_port(gw)))[0] == 200
    server.close()
