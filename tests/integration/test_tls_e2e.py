"""TLS termination on HTTP entrypoints (SPEC §10.1–§10.3) and the plain-HTTP redirect (§3.1), through a real
gateway: certificates chosen by SNI, ALPN, minimum version, certificate files replaced without dropping
connections, and curl as the client."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from support import gateway_port, start_backend

from certs import make_san_cert
from external import require_tool

pytestmark = pytest.mark.timeout(60)


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def client_ctx(alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the tests compare the served certificate byte for byte instead
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def https_get(port: int, sni: str, ctx: ssl.SSLContext | None = None) -> tuple[bytes, bytes, str | None]:
    """(served certificate DER, response, negotiated ALPN) of one GET over TLS."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx or client_ctx(), server_hostname=sni)
    obj = writer.get_extra_info("ssl_object")
    cert = obj.getpeercert(binary_form=True)
    writer.write(f"GET /x HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return cert, data, obj.selected_alpn_protocol()


def tls_config(backend: str, default: tuple[Path, Path], extra: tuple[Path, Path], tls_extra: str = "",
               entry_extra: str = "") -> str:
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {entry_extra}
}}
entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    cert_file    = "{default[0]}"
    key_file     = "{default[1]}"
    certificates = [{{ cert_file = "{extra[0]}", key_file = "{extra[1]}" }}]
    {tls_extra}
  }}
}}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


async def test_certificates_by_sni_alpn_and_https_forwarding(start_gateway, tmp_path: Path) -> None:
    backend = await start_backend()
    default = make_san_cert(tmp_path, "default-", ["api.example.com"])
    extra = make_san_cert(tmp_path, "wild-", ["*.models.example.com"])
    gw = await start_gateway(tls_config(backend.url, default, extra))
    port = gateway_port(gw, "websecure")
    cert, data, alpn = await https_get(port, "api.example.com", client_ctx(["http/1.1"]))
    assert cert == der(default[0]) and data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello from backend")
    assert alpn == "http/1.1"
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(["h2", "http/1.1"]),
                                              server_hostname="api.example.com")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"  # offered when http2 = true
    writer.close()
    assert (await https_get(port, "llama.models.example.com"))[0] == der(extra[0])
    assert (await https_get(port, "a.b.models.example.com"))[0] == der(default[0])  # one label only
    assert backend.requests[0].header("x-forwarded-proto") == "https"


async def test_min_version_refuses_older_clients(start_gateway, tmp_path: Path) -> None:
    backend = await start_backend()
    default = make_san_cert(tmp_path, "d-", ["api.example.com"])
    extra = make_san_cert(tmp_path, "e-", ["other.example.com"])
    gw = await start_gateway(tls_config(backend.url, default, extra, 'min_version = "1.3"'))
    port = gateway_port(gw, "websecure")
    old = client_ctx()
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await https_get(port, "api.example.com", old)
    assert (await https_get(port, "api.example.com"))[1].startswith(b"HTTP/1.1 200")


async def test_replaced_certificate_files_serve_new_handshakes_and_keep_open_connections(
    start_gateway, tmp_path: Path
) -> None:
    backend = await start_backend()
    default = make_san_cert(tmp_path, "d-", ["api.example.com"])
    extra = make_san_cert(tmp_path, "e-", ["other.example.com"])
    gw = await start_gateway(tls_config(backend.url, default, extra))
    port = gateway_port(gw, "websecure")
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(),
                                                   server_hostname="api.example.com")
    fresh = make_san_cert(tmp_path, "fresh-", ["api.example.com"])
    shutil.copy(fresh[0], default[0])
    shutil.copy(fresh[1], default[1])
    assert gw._servers["websecure"].certs.check()  # what the 5 s watcher does
    assert (await https_get(port, "api.example.com"))[0] == der(fresh[0])
    writer.write(b"GET /x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")  # opened before: unaffected
    writer.close()
    default[0].write_text("not a certificate")
    assert not gw._servers["websecure"].certs.check()
    assert (await https_get(port, "api.example.com"))[0] == der(fresh[0])  # a broken file keeps the old one
    assert 'gateway_tls_reload_errors_total{entrypoint="websecure"} 1.0' in gw.metrics()


async def test_plain_entrypoint_redirects_to_the_tls_one(start_gateway, tmp_path: Path) -> None:
    backend = await start_backend()
    default = make_san_cert(tmp_path, "d-", ["api.example.com"])
    extra = make_san_cert(tmp_path, "e-", ["other.example.com"])
    hcl = tls_config(backend.url, default, extra, entry_extra='redirect { entrypoint = "websecure" }')
    gw = await start_gateway(hcl)
    secure_port = gw._config.entrypoints["websecure"].port
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port(gw))
    writer.write(b"GET /v1/models?a=1 HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n")
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    writer.close()
    assert head.startswith("HTTP/1.1 308 Permanent Redirect\r\n")
    assert f"Location: https://api.example.com:{secure_port}/v1/models?a=1\r\n" in head
    assert "Content-Length: 0\r\n" in head and backend.requests == []
    temporary = hcl.replace('entrypoint = "websecure"', 'entrypoint = "websecure"\n    permanent = false')
    gw2 = await start_gateway(temporary)
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_port(gw2))
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 307 ")
    writer.close()


async def test_curl_through_tls(start_gateway, tmp_path: Path) -> None:
    require_tool("curl", "curl")
    backend = await start_backend()
    default = make_san_cert(tmp_path, "d-", ["api.example.com"])
    extra = make_san_cert(tmp_path, "e-", ["other.example.com"])
    gw = await start_gateway(tls_config(backend.url, default, extra))
    port = gateway_port(gw, "websecure")
    t0 = time.monotonic()
    out = await asyncio.to_thread(
        subprocess.run,
        ["curl", "-sS", "--cacert", str(default[0]), "--resolve", f"api.example.com:{port}:127.0.0.1",
         f"https://api.example.com:{port}/x"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and out.stdout == "hello from backend", out.stderr
    assert time.monotonic() - t0 < 20
