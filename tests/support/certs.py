"""Test TLS material: a fresh self-signed EC certificate and key from the openssl command."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_cert(directory: Path, stem: str = "", cn: str = "api.example.com") -> tuple[Path, Path]:
    """Write ``<stem>cert.pem`` and ``<stem>key.pem`` into ``directory``; return their paths."""
    cert, key = directory / f"{stem}cert.pem", directory / f"{stem}key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}"],
        check=True,
        capture_output=True,
    )
    return cert, key


def make_san_cert(directory: Path, stem: str, names: list[str], cn: str | None = None) -> tuple[Path, Path]:
    """Like :func:`make_cert` with a subjectAltName of DNS ``names``; the CN is ``cn``, else the first name."""
    cert, key = directory / f"{stem}cert.pem", directory / f"{stem}key.pem"
    san = ",".join(f"DNS:{name}" for name in names)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={cn or names[0]}",
         "-addext", f"subjectAltName={san}"],
        check=True,
        capture_output=True,
    )
    return cert, key
