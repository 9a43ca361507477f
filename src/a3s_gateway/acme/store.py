"""ACME storage (SPEC §10.4): ``<path>/account.json``, ``<path>/account.key``, ``<path>/<domain>/cert.pem`` and
``key.pem``. Private keys and ``account.json`` are written with mode 0600, every file atomically (a temporary file
in the same directory, then ``os.replace``), so a reader (a worker's CertStore, a restart) never sees half a file.

Keys are ECDSA P-256. One certificate per domain: its directory is named by the domain (``*`` of a wildcard is
written ``_``, a character a DNS name cannot have).
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ACCOUNT_JSON: Final = "account.json"
ACCOUNT_KEY: Final = "account.key"
CERT_PEM: Final = "cert.pem"
KEY_PEM: Final = "key.pem"


@dataclass(frozen=True, slots=True)
class StoredCert:
    """A certificate on disk: its files and its validity (seconds since the epoch)."""

    domain: str
    cert_file: str
    key_file: str
    not_before: float
    not_after: float


def new_key_pem() -> bytes:
    """A new ECDSA P-256 private key, PKCS#8 PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` (the directory is created with 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask; the key must be 0600 whatever it is
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def domain_dir(domain: str) -> str:
    """The directory name of ``domain``'s certificate."""
    return domain.replace("*", "_")


class Storage:
    """One ``acme_storage_path``."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    # -- account ---------------------------------------------------------------------------------------------
    def account_key(self) -> bytes:
        """The account key PEM, created (0600) on first use."""
        file = self.path / ACCOUNT_KEY
        try:
            return file.read_bytes()
        except FileNotFoundError:
            pem = new_key_pem()
            write_file(file, pem, 0o600)
            return pem

    def account(self) -> dict[str, Any] | None:
        """The stored registration (``{"directory": url, "regr": {...}}``), None when there is none."""
        try:
            data = json.loads((self.path / ACCOUNT_JSON).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save_account(self, data: dict[str, Any]) -> None:
        write_file(self.path / ACCOUNT_JSON, json.dumps(data, indent=2).encode(), 0o600)

    # -- certificates ----------------------------------------------------------------------------------------
    def files(self, domain: str) -> tuple[str, str]:
        where = self.path / domain_dir(domain)
        return str(where / CERT_PEM), str(where / KEY_PEM)

    def load(self, domain: str) -> StoredCert | None:
        """The stored certificate of ``domain`` if it exists, parses and names the domain; None otherwise."""
        cert_file, key_file = self.files(domain)
        try:
            pem = Path(cert_file).read_bytes()
            if not os.path.exists(key_file):
                return None
            cert = x509.load_pem_x509_certificate(pem)
        except (OSError, ValueError):
            return None
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            names = []
        if domain not in names:
            return None
        return StoredCert(domain, cert_file, key_file, cert.not_valid_before_utc.timestamp(),
                          cert.not_valid_after_utc.timestamp())

    def save(self, domain: str, chain_pem: bytes, key_pem: bytes) -> StoredCert:
        """Store an issued chain and its key (key first: a reader that sees the new certificate finds its key)."""
        cert_file, key_file = self.files(domain)
        write_file(Path(key_file), key_pem, 0o600)
        write_file(Path(cert_file), chain_pem, 0o644)
        stored = self.load(domain)
        if stored is None:
            raise ValueError(f"the certificate issued for {domain} does not name it")
        return stored


def not_after(pem: bytes) -> datetime.datetime:
    """``notAfter`` of the first certificate of a PEM chain."""
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc
