"""Certificates from ACME (SPEC §10.4) end to end against pebble on loopback: HTTP-01 issuance answered by the
plain HTTP entrypoint, the TLS entrypoint then serving a chain to pebble's root; a restart that reuses the stored
certificate; renewal of a near-expiry stored certificate; a CA that cannot be reached (fallback served, retried)."""

from __future__ import annotations

import asyncio
import datetime
import http.server
import logging
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pebble_ca import free_port, pebble_server

from a3s_gateway import Gateway, GatewayConfig
from a3s_gateway.acme import manager as acme_manager
from support import start_backend

pytestmark = pytest.mark.timeout(90)

DOMAIN = "gw.example.com"


def acme_config(http_port: int, backend: str, storage: Path, directory_url: str, ca_file: str) -> str:
    """A plain HTTP entrypoint on ``http_port`` (pebble validates there) and an ACME TLS entrypoint whose domain
    comes from the router's Host() rule."""
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:{http_port}"
}}
entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    acme              = true
    acme_email        = "ops@example.com"
    acme_ca_url       = "{directory_url}"
    acme_ca_file      = "{ca_file}"
    acme_storage_path = "{storage}"
  }}
}}
routers "r" {{
  rule        = "Host(`{DOMAIN}`)"
  service     = "s"
  entrypoints = ["websecure"]
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


async def served(port: int) -> bytes:
    """The DER certificate the TLS entrypoint serves for DOMAIN (not verified)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=DOMAIN)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    assert der is not None
    return bytes(der)


async def verified_get(port: int, root: bytes, name: str = DOMAIN) -> bytes:
    """A GET over TLS verified against pebble's root with ``name`` (DOMAIN) as the name; the response bytes."""
    ctx = ssl.create_default_context(cadata=root.decode())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    writer.write(f"GET /x HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


async def wait_for_chain(port: int, root: bytes, limit: float = 30.0, name: str = DOMAIN) -> bytes:
    """Poll until the TLS entrypoint serves a chain that verifies against ``root`` for ``name``."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await verified_get(port, root, name)
        except ssl.SSLCertVerificationError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def der_of(pem_file: Path) -> bytes:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).public_bytes(serialization.Encoding.DER)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def start(hcl: str) -> Gateway:
    gw = Gateway(GatewayConfig.from_hcl(hcl, filename="test.hcl"), admin="off")
    await gw.start()
    return gw


async def test_http01_issuance_then_restart_reuses_the_stored_certificate(tmp_path: Path) -> None:
    backend = await start_backend()
    http_port = free_port()
    storage = tmp_path / "acme"
    with pebble_server(http_port) as ca:
        hcl = acme_config(http_port, backend.url, storage, ca.directory_url, ca.ca_file)
        gw = await start(hcl)
        try:
            tls_port = gw.bound_addresses()["websecure"][1]
            root = ca.root()
            data = await wait_for_chain(tls_port, root)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello from backend")
            cert_file, key_file = storage / DOMAIN / "cert.pem", storage / DOMAIN / "key.pem"
            assert (await served(tls_port)) == der_of(cert_file)
            assert mode(key_file) == mode(storage / "account.key") == mode(storage / "account.json") == 0o600
            assert gw.acme is not None and gw.acme.orders == 1
            assert not gw.live.acme_tokens  # the answer is withdrawn once the order is done
            not_after = x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()
            metric = f'gateway_tls_certificate_expiry_timestamp_seconds{{domain="{DOMAIN}",entrypoint="websecure"}} '
            values = [float(ln[len(metric):]) for ln in gw.metrics().splitlines() if ln.startswith(metric)]
            assert values == [not_after]
            # the plain entrypoint answers only pending tokens (before routing: no router is attached to it)
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            writer.write(b"GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 404")
            writer.close()
            gw.live.acme_tokens[b"tok"] = b"tok.thumbprint"
            reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
            writer.write(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200") and b"Content-Type: text/plain" in answer
            assert answer.endswith(b"\r\n\r\ntok.thumbprint")
            first = cert_file.read_bytes()
        finally:
            await gw.shutdown(0.5)

        # restart: the stored certificate is served from the first handshake, and no order is placed
        gw = await start(hcl)
        try:
            tls_port = gw.bound_addresses()["websecure"][1]
            assert (await served(tls_port)) == der_of(cert_file)
            assert (await verified_get(tls_port, root)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(0.5)  # the background task has looked at the domain by now
            assert gw.acme is not None and gw.acme.orders == 0
            assert cert_file.read_bytes() == first
        finally:
            await gw.shutdown(0.5)


def not_after(pem_file: Path) -> float:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).not_valid_after_utc.timestamp()


def expiry_metric(gw: Gateway, domain: str) -> list[float]:
    """The values of gateway_tls_certificate_expiry_timestamp_seconds for ``domain`` on websecure."""
    metric = f'gateway_tls_certificate_expiry_timestamp_seconds{{domain="{domain}",entrypoint="websecure"}} '
    return [float(line[len(metric):]) for line in gw.metrics().splitlines() if line.startswith(metric)]


def near_expiry_cert_for(storage: Path, domain: str, days: float) -> bytes:
    """A certificate for ``domain`` (self-issued, not from pebble) valid ``days`` more, stored under ``storage``
    where ACME keeps it; its DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=50))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    (storage / domain).mkdir(parents=True)
    (storage / domain / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (storage / domain / "key.pem").chmod(0o600)
    (storage / domain / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert.public_bytes(serialization.Encoding.DER)


def near_expiry_cert(directory: Path, days: float) -> None:
    """A certificate for DOMAIN (self-issued, not from pebble) valid ``days`` more, stored where ACME keeps it."""
    near_expiry_cert_for(directory.parent, DOMAIN, days)


async def test_a_near_expiry_stored_certificate_is_served_then_renewed(tmp_path: Path) -> None:
    backend = await start_backend()
    http_port = free_port()
    storage = tmp_path / "acme"
    near_expiry_cert(storage / DOMAIN, days=10)
    old = der_of(storage / DOMAIN / "cert.pem")
    with pebble_server(http_port) as ca:
        gw = await start(acme_config(http_port, backend.url, storage, ca.directory_url, ca.ca_file))
        try:
            tls_port = gw.bound_addresses()["websecure"][1]
            assert (await served(tls_port)) == old  # loaded at start: served until the renewal replaces it
            await wait_for_chain(tls_port, ca.root())
            assert (await served(tls_port)) == der_of(storage / DOMAIN / "cert.pem") != old
            assert gw.acme is not None and gw.acme.orders == 1
            expiry = gw.tls_certificate_expiry()[("websecure", DOMAIN)]
            assert expiry > time.time() + 30 * 86400  # pebble's certificates run for years: no renewal due
        finally:
            await gw.shutdown(0.5)


async def test_unreachable_ca_serves_the_fallback_and_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(acme_manager, "RETRY_EVERY", 1.0)  # hourly in production
    caplog.set_level(logging.INFO, "a3s_gateway.acme")
    backend = await start_backend()
    http_port, acme_port = free_port(), free_port()
    storage = tmp_path / "acme"
    directory_url = f"https://127.0.0.1:{acme_port}/dir"
    from pebble_ca import Pebble

    ca = Pebble(http_port, acme_port=acme_port)  # certificates made, processes not started yet
    try:
        gw = await start(acme_config(http_port, backend.url, storage, directory_url, ca.ca_file))
        try:
            tls_port = gw.bound_addresses()["websecure"][1]
            deadline = time.monotonic() + 10
            while "not obtained" not in caplog.text and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            failure = next(r.getMessage() for r in caplog.records if "not obtained" in r.getMessage())
            assert DOMAIN in failure and "challenge http-01" in failure and "ConnectionError" in failure
            assert "serving the default certificate meanwhile" in failure
            fallback = x509.load_der_x509_certificate(await served(tls_port))
            assert fallback.subject.rfc4514_string() == "CN=localhost"  # the self-signed fallback
            ca.start()  # the CA comes up: the next hourly (here: 1 s) attempt gets the certificate
            data = await wait_for_chain(tls_port, ca.root())
            assert data.startswith(b"HTTP/1.1 200")
            assert gw.acme is not None and gw.acme.orders >= 2
        finally:
            await gw.shutdown(0.5)
    finally:
        ca.close()



async def test_a_reload_that_adds_a_domain_orders_it_and_one_that_removes_it_stops_renewing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(acme_manager, "CHECK_EVERY", 0.3)  # the renewal pass: every 12 h in production
    caplog.set_level(logging.INFO, "a3s_gateway.acme")
    backend = await start_backend()
    http_port = free_port()
    storage = tmp_path / "acme"
    added, gone = "new.example.com", "gone.example.com"
    stored = {d: near_expiry_cert_for(storage, d, days=40) for d in (DOMAIN, gone)}  # not due: no order at start
    with pebble_server(http_port) as ca:
        base = acme_config(http_port, backend.url, storage, ca.directory_url, ca.ca_file)

        def hosts(*names: str) -> GatewayConfig:
            rule = " || ".join(f"Host(`{n}`)" for n in names)
            return GatewayConfig.from_hcl(base.replace(f"Host(`{DOMAIN}`)", rule), filename="test.hcl")

        gw = Gateway(hosts(DOMAIN, gone), admin="off")
        await gw.start()
        try:
            assert gw.acme is not None
            tls_port = gw.bound_addresses()["websecure"][1]
            root = ca.root()
            assert (await served(tls_port)) == stored[DOMAIN]
            # a reload that adds a domain: it is ordered and served by SNI, without a restart
            await gw.reload(hosts(DOMAIN, gone, added))
            data = await wait_for_chain(tls_port, root, name=added)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello from backend")
            assert gw.acme.orders == 1 and (await served(tls_port)) == stored[DOMAIN]
            assert expiry_metric(gw, added) == [not_after(storage / added / "cert.pem")]
            # a reload that removes one: 15 days later, the renewal pass renews the other 40-day certificate and
            # leaves the removed domain's alone
            await gw.reload(hosts(DOMAIN, added))
            assert f"acme: {gone} is no longer configured; its certificate is not renewed" in caplog.text
            gw.acme.clock = lambda: time.time() + 15 * 86400
            await wait_for_chain(tls_port, root)  # DOMAIN: renewed from pebble
            await asyncio.sleep(1.0)  # three more passes
            assert gw.acme.orders == 2
            assert der_of(storage / gone / "cert.pem") == stored[gone]
            assert f"certificate for {gone}" not in caplog.text
            assert f"renewing a certificate for {DOMAIN}" in caplog.text
            assert expiry_metric(gw, DOMAIN) == [not_after(storage / DOMAIN / "cert.pem")]  # the renewed one
            assert expiry_metric(gw, gone) == []
        finally:
            await gw.shutdown(0.5)


# -- workers: the supervisor runs ACME, every worker answers the challenge and serves the certificate ---------


class _Hello(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


def _verify_sync(port: int, root: bytes) -> bytes:
    ctx = ssl.create_default_context(cadata=root.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=DOMAIN) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return bytes(der)


def test_with_workers_the_supervisor_issues_and_every_worker_serves(tmp_path: Path) -> None:
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    http_port = free_port()
    storage = tmp_path / "acme"
    proc: subprocess.Popen[str] | None = None
    try:
        with pebble_server(http_port) as ca:
            cfg = tmp_path / "gateway.hcl"
            cfg.write_text(acme_config(http_port, f"http://127.0.0.1:{backend.server_address[1]}", storage,
                                       ca.directory_url, ca.ca_file))
            proc = subprocess.Popen([sys.executable, "-m", "a3s_gateway", "-c", str(cfg), "--workers", "2",
                                     "--admin", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
            assert proc.stderr is not None
            lines: list[str] = []
            ports: dict[str, int] = {}
            admin = 0
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                lines.append(line)
                found = re.search(r"entrypoint (\S+) on [^:]+:(\d+) \(", line)
                if found:
                    ports[found.group(1)] = int(found.group(2))
                found = re.search(r"admin API on [^:]+:(\d+)$", line.strip())
                if found:
                    admin = int(found.group(1))
                    break
            assert "websecure" in ports, "".join(lines)
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[union-attr]
            root = ca.root()
            deadline = time.monotonic() + 30
            while True:
                try:
                    first = _verify_sync(ports["websecure"], root)
                    break
                except ssl.SSLCertVerificationError:
                    assert time.monotonic() < deadline, "".join(lines)
                    time.sleep(0.2)
            # every new connection, whichever worker accepts it, gets the issued certificate
            assert {_verify_sync(ports["websecure"], root) for _ in range(20)} == {first}
            assert der_of(storage / DOMAIN / "cert.pem") == first
            assert sum("acme: certificate for gw.example.com issued" in line for line in lines) == 1
            # /metrics of the instance: the expiry once (the maximum over the workers, not their sum)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as response:
                text = response.read().decode()
            metric = f'gateway_tls_certificate_expiry_timestamp_seconds{{domain="{DOMAIN}",entrypoint="websecure"}} '
            not_after = x509.load_pem_x509_certificate((storage / DOMAIN / "cert.pem").read_bytes()).not_valid_after_utc
            assert [float(ln[len(metric):]) for ln in text.splitlines() if ln.startswith(metric)] == [
                not_after.timestamp()]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        backend.shutdown()
        backend.server_close()


async def test_http01_is_answered_before_the_entrypoint_redirect(tmp_path: Path) -> None:
    backend = await start_backend()
    hcl = acme_config(free_port(), backend.url, tmp_path / "acme", f"https://127.0.0.1:{free_port()}/dir", "")
    hcl = hcl.replace('entrypoints "web" {', 'entrypoints "web" {\n  redirect { entrypoint = "websecure" }', 1)
    hcl = hcl.replace('    acme_ca_file      = ""\n', "")
    gw = await start(hcl)
    try:
        port = gw.bound_addresses()["web"][1]
        gw.live.acme_tokens[b"tok"] = b"tok.thumbprint"

        async def get(path: str) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return data

        assert (await get("/.well-known/acme-challenge/tok")).endswith(b"\r\n\r\ntok.thumbprint")
        assert (await get("/.well-known/acme-challenge/other")).startswith(b"HTTP/1.1 404")
        assert (await get("/.well-known/acme-challengeX")).startswith(b"HTTP/1.1 308")
        assert (await get("/x")).startswith(b"HTTP/1.1 308")
    finally:
        await gw.shutdown(0.5)
