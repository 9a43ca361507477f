"""TLS-ALPN-01 (RFC 8737, SPEC §10.4): the ACME TLS entrypoint answers validation handshakes (ALPN acme-tls/1)
with the challenge certificate chosen by SNI, and only those; pebble issues through it, validating on the
gateway's TLS port."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pebble_ca import free_port, pebble_server
from test_acme_e2e import DOMAIN, served, start, wait_for_chain

from a3s_gateway import Gateway, GatewayConfig
from a3s_gateway.acme.client import ACME_IDENTIFIER, alpn_certificate
from support import start_backend

pytestmark = pytest.mark.timeout(90)


def alpn_config(tls_port: int, backend: str, storage: Path, directory_url: str, ca_file: str) -> str:
    return f'''
entrypoints "websecure" {{
  address = "127.0.0.1:{tls_port}"
  tls {{
    acme              = true
    acme_email        = "ops@example.com"
    acme_ca_url       = "{directory_url}"
    acme_ca_file      = "{ca_file}"
    acme_storage_path = "{storage}"
    challenge         = "tls-alpn-01"
  }}
}}
routers "r" {{
  rule    = "Host(`{DOMAIN}`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


async def handshake(port: int, alpn: list[str]) -> tuple[x509.Certificate, str | None]:
    """The certificate served for DOMAIN to a client offering ``alpn``, and the protocol selected."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(alpn)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=DOMAIN)
    tls = writer.get_extra_info("ssl_object")
    der, selected = tls.getpeercert(binary_form=True), tls.selected_alpn_protocol()
    writer.close()
    return x509.load_der_x509_certificate(der), selected


async def test_the_challenge_certificate_is_served_to_validation_handshakes_only(tmp_path: Path) -> None:
    backend = await start_backend()
    hcl = alpn_config(0, backend.url, tmp_path / "acme", "https://127.0.0.1:1/dir", "")
    gw = await start(hcl)
    try:
        port = gw.bound_addresses()["websecure"][1]
        normal = await served(port)
        gw.live.acme_alpn[DOMAIN] = alpn_certificate(DOMAIN, "tok.thumbprint")
        await gw.publish_challenges()
        cert, selected = await handshake(port, ["acme-tls/1"])
        assert selected == "acme-tls/1"
        extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
        assert extension.critical
        assert extension.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumbprint").digest()
        assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName) == [DOMAIN]
        # an ordinary client for the same name, at the same time, gets the entrypoint's certificate
        cert, selected = await handshake(port, ["h2", "http/1.1"])
        assert selected == "h2" and (await served(port)) == normal
        gw.live.acme_alpn.clear()
        await gw.publish_challenges()
        cert, _ = await handshake(port, ["acme-tls/1"])
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_oid(ACME_IDENTIFIER)
    finally:
        await gw.shutdown(0.5)


async def test_a_listener_bound_while_a_challenge_is_pending_answers_it(tmp_path: Path) -> None:
    """A worker started (or restarted) while an order waits for validation gets the challenge certificates with
    its start message, before its listeners exist (workers.worker); so does a TLS entrypoint re-bound by a reload
    meanwhile. The new listener answers validation handshakes from its first connection."""
    backend = await start_backend()
    hcl = alpn_config(0, backend.url, tmp_path / "acme", "https://127.0.0.1:1/dir", "")
    gw = Gateway(GatewayConfig.from_hcl(hcl, filename="test.hcl"), admin="off")
    gw.apply_acme({"alpn": {DOMAIN: alpn_certificate(DOMAIN, "tok.thumbprint")}})  # as Worker._start does
    await gw.start()
    try:
        port = gw.bound_addresses()["websecure"][1]
        cert, selected = await handshake(port, ["acme-tls/1"])
        assert selected == "acme-tls/1"
        assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).value.value == \
            b"\x04\x20" + hashlib.sha256(b"tok.thumbprint").digest()
        # a reload that changes the tls block binds a new listener (SPEC §13.6): it answers the challenge too
        await gw.reload(GatewayConfig.from_hcl(hcl.replace('challenge         = "tls-alpn-01"',
                                                           'challenge         = "tls-alpn-01"\n'
                                                           '    min_version       = "1.3"'), filename="test.hcl"))
        port = gw.bound_addresses()["websecure"][1]
        cert, selected = await handshake(port, ["acme-tls/1"])
        assert selected == "acme-tls/1"
        assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
    finally:
        await gw.shutdown(0.5)


async def test_pebble_issues_through_tls_alpn_01_on_the_tls_entrypoint(tmp_path: Path) -> None:
    backend = await start_backend()
    tls_port = free_port()
    storage = tmp_path / "acme"
    with pebble_server(http_port=free_port(), tls_port=tls_port) as ca:
        gw = await start(alpn_config(tls_port, backend.url, storage, ca.directory_url, ca.ca_file))
        try:
            data = await wait_for_chain(tls_port, ca.root())
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello from backend")
            assert gw.acme is not None and gw.acme.orders == 1
            assert not gw.live.acme_alpn  # withdrawn once the order is done
            assert (storage / DOMAIN / "cert.pem").exists()
        finally:
            await gw.shutdown(0.5)


# -- workers: the supervisor orders, the worker that pebble's validation connection lands on answers it --------

WORKER_DOMAINS = [f"w{i}.example.com" for i in range(3)]


def _served_sync(port: int, root: bytes, name: str) -> bytes:
    """The DER certificate a new connection gets for ``name``, verified against ``root``."""
    ctx = ssl.create_default_context(cadata=root.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)


def test_with_workers_every_worker_answers_tls_alpn_01_and_serves_the_chains(tmp_path: Path) -> None:
    """Two workers share the TLS port (SO_REUSEPORT): each validation connection of pebble lands on either. Three
    domains are three orders, each validated over three connections (pebble's VA), and a failed order is retried
    only an hour later: if one worker lacked the challenge certificates, the test would pass with a chance of
    (1/2)^9."""
    tls_port = free_port()
    storage = tmp_path / "acme"
    proc: subprocess.Popen[str] | None = None
    lines: list[str] = []
    with pebble_server(http_port=free_port(), tls_port=tls_port) as ca:
        cfg = tmp_path / "gateway.hcl"
        domains = ", ".join(f'"{d}"' for d in WORKER_DOMAINS)
        cfg.write_text(alpn_config(tls_port, "http://127.0.0.1:1", storage, ca.directory_url, ca.ca_file)
                       .replace('challenge         = "tls-alpn-01"',
                                f'challenge         = "tls-alpn-01"\n    acme_domains      = [{domains}]'))
        try:
            proc = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--workers", "2",
                                     "--admin", "off"], stderr=subprocess.PIPE, text=True)
            stderr = proc.stderr
            assert stderr is not None
            threading.Thread(target=lambda: lines.extend(stderr), daemon=True).start()
            root = ca.root()
            deadline = time.monotonic() + 40
            while sum("acme: certificate for" in line and "issued" in line for line in lines) < len(WORKER_DOMAINS):
                text = "".join(lines)
                assert "not obtained" not in text and proc.poll() is None, text + ca.logs()
                assert time.monotonic() < deadline, text + ca.logs()
                time.sleep(0.1)
            for domain in WORKER_DOMAINS:
                stored = x509.load_pem_x509_certificate((storage / domain / "cert.pem").read_bytes())
                want = stored.public_bytes(serialization.Encoding.DER)
                # new connections land on either worker: every one gets the issued chain, verified for the name
                deadline = time.monotonic() + 10
                while True:
                    try:
                        seen = {_served_sync(tls_port, root, domain) for _ in range(8)}
                        break
                    except ssl.SSLCertVerificationError:  # a worker that has not loaded it yet (sync: 50 ms)
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                assert seen == {want}
        finally:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
