"""A throw-away ACME CA for tests: Debian's ``pebble`` with ``pebble-challtestsrv`` as its DNS resolver, on loopback
ports, stopped by PID afterwards.

Every name resolves to 127.0.0.1 (challtestsrv's default answer; no AAAA), so pebble validates HTTP-01 against
``http://127.0.0.1:<http_port>`` — the test passes the port of the gateway's plain HTTP entrypoint. The Debian
package does not ship pebble's test CA (``test/certs/pebble.minica.pem``), so the helper makes its own CA and a
certificate for 127.0.0.1/localhost for pebble's HTTPS; ``ca_file`` is that CA (the gateway's ``acme_ca_file``).
``root()`` fetches the root pebble issues under from its management API (new at every start).

Usage (``tests/`` is on ``sys.path``)::

    with pebble_server(http_port=port) as ca:      # skips (fails under A3S_REQUIRE_SERVICES=1) without pebble
        ca.directory_url, ca.ca_file, ca.root()

Environment: ``PEBBLE_VA_NOSLEEP=1`` (validate at once), ``PEBBLE_VA_ALWAYS_VALID=0`` (really validate),
``PEBBLE_WFE_NONCEREJECT=0`` (no random badNonce), ``PEBBLE_AUTHZREUSE=0`` (every order validates again).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from external import require_tool

START_TIMEOUT = 15.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    return free_ports(1, kind)[0]


def free_ports(count: int, kind: int = socket.SOCK_STREAM, avoid: tuple[int, ...] = ()) -> list[int]:
    """``count`` distinct free loopback ports: every socket stays bound until all are chosen (one at a time, the
    kernel may hand the same port out twice), and none of ``avoid``."""
    held: list[socket.socket] = []  # an avoided port stays bound too, so it is not handed out again
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, kind)
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca_and_server(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signs for 127.0.0.1 and localhost: (ca.pem, server cert.pem, server key.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a3s test pebble CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "pebble-cert.pem", directory / "pebble-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(_pem_key(key))
    return paths


class Pebble:
    """pebble + pebble-challtestsrv; ``start()`` returns once the ACME directory answers."""

    def __init__(self, http_port: int, tls_port: int = 0, acme_port: int = 0) -> None:
        self.pebble = require_tool("pebble", "pebble")
        self.challtestsrv = require_tool("pebble-challtestsrv", "pebble")
        self.http_port = http_port
        # four TCP ports chosen together (distinct, and none of the given ones): a port taken twice made pebble's
        # listener fail with "address already in use" against challtestsrv's management server
        given = tuple(p for p in (http_port, tls_port, acme_port) if p)
        tls, acme, self.management_port, self.challtest_management_port = free_ports(4, avoid=given)
        self.tls_port = tls_port or tls
        self.acme_port = acme_port or acme
        self.dns_port = free_port(socket.SOCK_DGRAM)
        self._dir = tempfile.TemporaryDirectory(prefix="a3s-pebble-")
        self.dir = Path(self._dir.name)
        ca, cert, key = make_ca_and_server(self.dir)
        self.ca_file = str(ca)
        self._cert, self._key = cert, key
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.acme_port}/dir"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def start(self) -> Pebble:
        with open(self.dir / "challtestsrv.log", "wb") as log:  # the child keeps its own descriptor
            self._procs.append(subprocess.Popen(
                [self.challtestsrv, "-dns01", f"127.0.0.1:{self.dns_port}", "-http01", "", "-https01", "",
                 "-tlsalpn01", "", "-management", f"127.0.0.1:{self.challtest_management_port}",
                 "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.acme_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self._cert), "privateKey": str(self._key),
            "httpPort": self.http_port, "tlsPort": self.tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        (self.dir / "pebble.json").write_text(json.dumps(config))
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_VA_ALWAYS_VALID": "0", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        with open(self.dir / "pebble.log", "wb") as log:
            self._procs.append(subprocess.Popen(
                [self.pebble, "-config", str(self.dir / "pebble.json"), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.dir))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            try:
                urllib.request.urlopen(self.directory_url, context=self._context(), timeout=1).read()
                return self
            except OSError:
                time.sleep(0.05)  # waiting for a process to come up, not for behaviour under test
        logs = self.logs()
        self.stop()
        raise RuntimeError(f"pebble did not start:\n{logs}")

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{(self.dir / name).read_text(errors='replace')[-3000:]}"
                         for name in ("pebble.log", "challtestsrv.log") if (self.dir / name).exists())

    def root(self) -> bytes:
        """The PEM root certificate pebble issues under (its management API; a new one per pebble start)."""
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        data: bytes = urllib.request.urlopen(url, context=self._context(), timeout=5).read()
        return data

    def stop(self) -> None:
        """Stop both processes (SIGTERM by PID, SIGKILL after 5 s) and reap them."""
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()


@contextlib.contextmanager
def pebble_server(http_port: int, tls_port: int = 0, acme_port: int = 0) -> Iterator[Pebble]:
    """A running pebble for the ``with`` block."""
    server = Pebble(http_port, tls_port, acme_port)
    try:
        yield server.start()
    finally:
        server.close()
