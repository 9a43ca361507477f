"""TLS termination for one entrypoint (SPEC §10): certificates, SNI selection (§10.2) and reloading (§10.3).

:class:`CertStore` loads every configured certificate/key pair into its own ``ssl.SSLContext``; all of them have the
same protocol settings (minimum version, ALPN, options). The store's :attr:`CertStore.context` is the one handed to
``loop.create_server(ssl=...)``: its SNI callback switches each handshake to the context of the selected certificate.
The lookup tables (lowercased exact names, wildcard suffixes) are built when certificates load, so a handshake does
one or two dictionary lookups.

Reloading compares a SHA-256 digest of the certificate and key file contents (not mtime/size/inode: a same-size
rewrite within one filesystem timestamp tick, or a copy that preserves the mtime, would go unseen). A changed pair
that loads replaces the old context for new handshakes; established connections keep their own OpenSSL state.

Left interpreted (not in mypyc's list): it runs once per handshake, where OpenSSL's work dominates.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import os
import ssl
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..config.model import PemCertificate, TlsConfig
from ..errors import GatewayError

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where certificates are read or made: a configuration without TLS never loads it (start-up
# time, SPEC §13.3)

log: Final = logging.getLogger("a3s_gateway.tls")

RELOAD_PERIOD: Final = 5.0
MIN_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
SELF_SIGNED_NAME: Final = "localhost"
SELF_SIGNED_DAYS: Final = 365

# SNI seen by the server, per SSLObject/SSLSocket (server_name() below); weak keys: entries go with the connection
_SERVER_NAMES: Final[weakref.WeakKeyDictionary[ssl.SSLObject | ssl.SSLSocket, str]] = weakref.WeakKeyDictionary()

#: the ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737)
ACME_TLS_ALPN: Final = "acme-tls/1"
_ALPN_EXTENSION: Final = 16
_CLIENT_HELLO: Final = 1  # handshake message type (an IntEnum member in the callback)
# connections whose ClientHello offered acme-tls/1, recorded by the message callback while challenges are pending
_ACME_HELLOS: Final[weakref.WeakKeyDictionary[ssl.SSLObject | ssl.SSLSocket, bool]] = weakref.WeakKeyDictionary()


class TlsError(GatewayError, ValueError):
    """A certificate/key pair cannot be loaded; the message names the file."""


class _Cert:
    """One loaded pair: its context, its lowercased names, and the digest of the file contents it came from."""

    __slots__ = ("cert_file", "context", "digest", "failed", "key_file", "names", "not_after")

    def __init__(self, cert_file: str, key_file: str, context: ssl.SSLContext, names: list[str], digest: bytes,
                 not_after: float = 0.0) -> None:
        self.cert_file = cert_file  # "" for the generated self-signed certificate (nothing to reload)
        self.key_file = key_file
        self.context = context
        self.names = names
        self.digest = digest
        self.failed = b""  # digest of contents that failed to load: reported once, not on every check
        self.not_after = not_after  # the certificate's notAfter, epoch seconds (0: the generated one)


class CertStore:
    """The certificates of one entrypoint: one ssl.SSLContext per certificate (same settings), SNI selection, reload.

    Order is configuration order: ``cert_file`` first (the default), then ``certificates``; with no ``cert_file`` the
    first of ``certificates`` is the default, and with neither a self-signed certificate for "localhost" is
    generated. ``alpn`` overrides ``cfg.alpn``; ``()`` offers no ALPN (TCP entrypoints).

    ``context`` is the context for ``loop.create_server(ssl=...)``; ``reload_errors`` counts failed reloads.
    Raises :class:`TlsError` naming the file when a configured pair cannot be loaded.
    """

    def __init__(self, cfg: TlsConfig, *, alpn: tuple[str, ...] | None = None) -> None:
        version = MIN_VERSIONS.get(cfg.min_version)
        if version is None:
            raise TlsError(f'unsupported TLS min_version "{cfg.min_version}" (expected "1.2" or "1.3")')
        self._min_version = version
        self._alpn: tuple[str, ...] = tuple(cfg.alpn or ()) if alpn is None else alpn
        self.reload_errors = 0
        self._self_signed_pem: tuple[bytes, bytes] | None = None
        self._challenges: dict[str, ssl.SSLContext] = {}  # TLS-ALPN-01 certificates by domain (set_challenges)
        pairs = [(cfg.cert_file, cfg.key_file)] if cfg.cert_file or cfg.key_file else []
        pairs += [(c.cert_file, c.key_file) for c in cfg.certificates]
        self._certs = [self._load(cert, key, _digest(cert, key)) for cert, key in pairs] or [self._self_signed()]
        self._configured = len(self._certs)  # the certificates after these were issued by ACME (set_issued)
        self._provided = 0  # the last certificates come from providers (set_provided)
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}  # "*.example.com" is stored under "example.com"
        self._index()
        # the context given to the server: holds the default certificate as a fallback, but the callback always
        # switches (OpenSSL calls it with or without SNI), so a reloaded default certificate takes effect
        self.context = self._new_context()
        first = self._certs[0]
        if first.cert_file:
            self._load_into(self.context, first.cert_file, first.key_file)
        else:
            self._self_signed_context(self.context)
        self.context.sni_callback = self._on_sni

    # -- selection (§10.2) -------------------------------------------------------------------------------------

    def select(self, server_name: str | None) -> ssl.SSLContext:
        """The context of the certificate for ``server_name``: exact name, then one-label wildcard, else default."""
        if server_name is None:
            return self._certs[0].context
        return self._select(_normalise(server_name))

    def _select(self, name: str) -> ssl.SSLContext:
        context = self._exact.get(name)
        if context is not None:
            return context
        label, dot, parent = name.partition(".")
        if label and dot:
            context = self._wildcard.get(parent)
            if context is not None:
                return context
        return self._certs[0].context

    def _on_sni(self, ssl_object: ssl.SSLObject, server_name: str | None, initial: ssl.SSLContext) -> None:
        if server_name is None:
            ssl_object.context = self._certs[0].context
            return
        name = _normalise(server_name)
        _SERVER_NAMES[ssl_object] = name
        if self._challenges:
            challenge = self._challenges.get(name)
            if challenge is not None and _ACME_HELLOS.pop(ssl_object, False):
                ssl_object.context = challenge  # a validation handshake (RFC 8737): only these see the challenge
                return
        ssl_object.context = self._select(name)

    def set_challenges(self, contexts: dict[str, ssl.SSLContext]) -> None:
        """Answer TLS-ALPN-01 validation handshakes for the domains of ``contexts`` (made by
        :func:`challenge_contexts`): a ClientHello that offers ``acme-tls/1`` with one of these names gets its
        challenge certificate; every other handshake is unaffected. The ClientHello's ALPN list is only visible
        to a message callback (the SNI callback runs after it); it is installed while challenges are pending only,
        as it runs for every TLS record of the connections made meanwhile."""
        self._challenges = dict(contexts)
        self.context._msg_callback = _on_message if contexts else None  # type: ignore[attr-defined]

    @staticmethod
    def server_name(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """The SNI the client sent on this server-side connection, lowercased without a trailing dot; None if none.

        Recorded by the SNI callback of :attr:`context` in a module-level ``WeakKeyDictionary`` keyed by the SSL
        object (``transport.get_extra_info("ssl_object")``), so it is available once the handshake has read the
        ClientHello and goes away with the connection.
        """
        return _SERVER_NAMES.get(ssl_object)

    def names(self) -> list[str]:
        """The names (SAN DNS names, else subject CN) of the loaded certificates, in configuration order."""
        return list(dict.fromkeys(name for cert in self._certs for name in cert.names))

    def _index(self) -> None:
        exact: dict[str, ssl.SSLContext] = {}
        wildcard: dict[str, ssl.SSLContext] = {}
        for cert in self._certs:
            for name in cert.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], cert.context)  # setdefault: the first in configuration order wins
                else:
                    exact.setdefault(name, cert.context)
        self._exact, self._wildcard = exact, wildcard

    def set_issued(self, pairs: list[tuple[str, str]]) -> None:
        """Serve the ACME-issued certificates ``pairs`` (cert_file, key_file) after the configured ones (SPEC
        §10.2 order) for new handshakes: new and changed files are loaded, pairs not listed are dropped. A pair
        that fails to load keeps its previous certificate (or is left out) and is logged and counted."""
        current = {(c.cert_file, c.key_file): c for c in self._certs[self._configured:]}
        fresh: list[_Cert] = []
        for cert_file, key_file in pairs:
            digest = _digest(cert_file, key_file)
            old = current.get((cert_file, key_file))
            if old is not None and digest in (old.digest, old.failed):
                fresh.append(old)
                continue
            try:
                fresh.append(self._load(cert_file, key_file, digest))
            except TlsError as exc:
                self.reload_errors += 1
                log.error("%s; keeping the previous certificate", exc)
                if old is not None:
                    old.failed = digest
                    fresh.append(old)
        provided = self._certs[len(self._certs) - self._provided:]
        self._certs = self._certs[: self._configured] + fresh + provided
        self._index()

    def set_provided(self, certificates: tuple[PemCertificate, ...]) -> None:
        """Serve the provider-supplied ``certificates`` (Kubernetes TLS Secrets, SPEC §12.5) after the configured
        and ACME-issued ones (§10.2 order) for new handshakes: unchanged ones are kept, new and changed ones loaded,
        the ones not listed dropped. One that fails to load is left out, logged and counted."""
        current = {c.digest: c for c in self._certs[len(self._certs) - self._provided:]}
        fresh: list[_Cert] = []
        for pem in certificates:
            digest = hashlib.sha256(len(pem.cert_pem).to_bytes(8, "big") + pem.cert_pem + pem.key_pem).digest()
            old = current.get(digest)
            if old is not None:
                fresh.append(old)
                continue
            try:
                fresh.append(self._load_pem(pem, digest))
            except TlsError as exc:
                self.reload_errors += 1
                log.error("%s; not served", exc)
        if [id(c) for c in fresh] == [id(c) for c in current.values()]:
            return
        self._certs = self._certs[: len(self._certs) - self._provided] + fresh
        self._provided = len(fresh)
        self._index()

    def _load_pem(self, pem: PemCertificate, digest: bytes) -> _Cert:
        """A certificate held in memory; TlsError names its source. load_cert_chain reads files only: a private
        temporary directory (mode 0700) holds the pair while it loads."""
        from cryptography import x509

        context = self._new_context()
        try:
            parsed = x509.load_pem_x509_certificate(pem.cert_pem)
            names = _cert_names(parsed)
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            raise TlsError(f"cannot parse the certificate of {pem.source}: {exc}") from exc
        with tempfile.TemporaryDirectory(prefix="a3s-tls-") as tmp:
            cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for path, data in ((cert_path, pem.cert_pem), (key_path, pem.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            try:
                context.load_cert_chain(cert_path, key_path, password=_no_password)
            except ssl.SSLError as exc:
                why = "the key does not match" if exc.reason == "KEY_VALUES_MISMATCH" else str(exc)
                raise TlsError(f"cannot load the certificate of {pem.source}: {why}") from exc
            except TlsError as exc:
                raise TlsError(f"cannot load the certificate of {pem.source}: {exc}") from exc
        return _Cert("", "", context, names, digest, parsed.not_valid_after_utc.timestamp())

    def expiry(self) -> dict[str, float]:
        """``notAfter`` (epoch seconds) per name of the loaded certificates (the generated one left out)."""
        out: dict[str, float] = {}
        for cert in self._certs:
            if cert.cert_file:
                for name in cert.names:
                    out.setdefault(name, cert.not_after)
        return out

    # -- reloading (§10.3) -------------------------------------------------------------------------------------

    def check(self) -> bool:
        """Reload the pairs whose file contents changed; True when a certificate was replaced.

        A pair that fails to load keeps its previous certificate, is logged and counted in ``reload_errors`` once
        per distinct content (a half-written update is retried when the files change again).
        """
        replaced = False
        for i, cert in enumerate(self._certs):
            if not cert.cert_file:
                continue
            digest = _digest(cert.cert_file, cert.key_file)
            if digest in (cert.digest, cert.failed):
                continue
            try:
                fresh = self._load(cert.cert_file, cert.key_file, digest)
            except TlsError as exc:
                cert.failed = digest
                self.reload_errors += 1
                log.error("%s; keeping the previous certificate", exc)
                continue
            self._certs[i] = fresh
            replaced = True
            log.info("reloaded certificate %s (%s)", cert.cert_file, ", ".join(fresh.names) or "no names")
        if replaced:
            self._index()
        return replaced

    async def watch(self, period: float = RELOAD_PERIOD) -> None:
        """Call :meth:`check` every ``period`` seconds until cancelled."""
        while True:
            await asyncio.sleep(period)
            try:
                self.check()
            except Exception:  # the watcher outlives a bug in one check; logged here, at its boundary
                log.exception("certificate check failed")

    # -- loading -----------------------------------------------------------------------------------------------

    def _new_context(self) -> ssl.SSLContext:
        """A server context with this entrypoint's settings; every certificate's context is made here."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # library default ciphers; client certs not requested
        context.minimum_version = self._min_version  # never below 1.2: MIN_VERSIONS has no older version
        context.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated TLS 1.2 renegotiation is only a DoS lever
        if self._alpn:
            context.set_alpn_protocols(list(self._alpn))
        return context

    def _load(self, cert_file: str, key_file: str, digest: bytes) -> _Cert:
        """Load one pair (``digest`` is the content digest it is recorded under); TlsError names the file."""
        if not cert_file or not key_file:
            raise TlsError(f'certificate "{cert_file}" and key "{key_file}" must both be set')
        try:
            pem = Path(cert_file).read_bytes()
        except OSError as exc:
            raise TlsError(f'cannot read certificate "{cert_file}": {exc.strerror or exc}') from exc
        context = self._new_context()
        self._load_into(context, cert_file, key_file)
        from cryptography import x509

        try:
            parsed = x509.load_pem_x509_certificate(pem)
            names = _cert_names(parsed)
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            raise TlsError(f'cannot parse certificate "{cert_file}": {exc}') from exc
        return _Cert(cert_file, key_file, context, names, digest, parsed.not_valid_after_utc.timestamp())

    @staticmethod
    def _load_into(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_password)
        except TlsError:
            raise
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise TlsError(f'certificate "{cert_file}" does not match key "{key_file}"') from exc
            raise TlsError(f'cannot load certificate "{cert_file}" with key "{key_file}": {exc}') from exc
        except OSError as exc:
            where = exc.filename or f'"{cert_file}" or "{key_file}"'
            raise TlsError(f"cannot read {where}: {exc.strerror or exc}") from exc

    def _self_signed(self) -> _Cert:
        return _Cert("", "", self._self_signed_context(self._new_context()), [SELF_SIGNED_NAME], b"")

    def _self_signed_context(self, context: ssl.SSLContext) -> ssl.SSLContext:
        """Load the generated self-signed certificate into ``context`` (generated once per store)."""
        pem = self._self_signed_pem
        if pem is None:
            pem = self._self_signed_pem = generate_self_signed()
        # load_cert_chain reads files only: a private temporary directory (mode 0700) holds the pair briefly
        with tempfile.TemporaryDirectory(prefix="a3s-tls-") as tmp:
            path = os.path.join(tmp, "pair.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem[0] + pem[1])
            context.load_cert_chain(path)
        return context


def _on_message(conn: ssl.SSLObject | ssl.SSLSocket, direction: str, version: object, content_type: object,
                msg_type: object, data: bytes) -> None:
    """Record the connections whose ClientHello offers ``acme-tls/1`` (runs before the SNI callback)."""
    if direction == "read" and msg_type == _CLIENT_HELLO:
        if ACME_TLS_ALPN in offered_alpn(data):
            _ACME_HELLOS[conn] = True


def offered_alpn(hello: bytes) -> list[str]:
    """The ALPN protocols a ClientHello handshake message (with its 4-byte header) offers; [] when it has none or
    does not parse."""
    try:
        at = 4 + 2 + 32  # header, client_version, random
        at += 1 + hello[at]  # session_id
        at += 2 + int.from_bytes(hello[at:at + 2], "big")  # cipher_suites
        at += 1 + hello[at]  # compression_methods
        end = min(len(hello), at + 2 + int.from_bytes(hello[at:at + 2], "big"))
        at += 2
        while at + 4 <= end:
            kind = int.from_bytes(hello[at:at + 2], "big")
            size = int.from_bytes(hello[at + 2:at + 4], "big")
            at += 4
            if kind == _ALPN_EXTENSION:
                body = hello[at + 2:min(end, at + size)]
                out, i = [], 0
                while i < len(body):
                    length = body[i]
                    out.append(body[i + 1:i + 1 + length].decode("ascii", "replace"))
                    i += 1 + length
                return out
            at += size
    except IndexError:
        pass
    return []


def challenge_contexts(pems: dict[str, tuple[bytes, bytes]]) -> dict[str, ssl.SSLContext]:
    """A server context per domain for TLS-ALPN-01 validation: its challenge certificate and key (PEM), ALPN
    ``acme-tls/1`` only, TLS 1.2 or later."""
    out: dict[str, ssl.SSLContext] = {}
    for domain, (cert_pem, key_pem) in pems.items():
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols([ACME_TLS_ALPN])
        with tempfile.TemporaryDirectory(prefix="a3s-tls-") as tmp:
            path = os.path.join(tmp, "pair.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(cert_pem + key_pem)
            context.load_cert_chain(path)
        out[_normalise(domain)] = context
    return out


def _normalise(server_name: str) -> str:
    """SNI as matched: lowercased (Python passes A-labels), one trailing dot removed."""
    name = server_name.lower()
    return name[:-1] if name.endswith(".") else name


def _no_password() -> bytes:
    # without a callback OpenSSL would prompt on the terminal and block the event loop
    raise TlsError("encrypted private keys are not supported")


def _digest(cert_file: str, key_file: str) -> bytes:
    """SHA-256 over both files' contents; an unreadable file contributes its error, so the digest never raises."""
    h = hashlib.sha256()
    for file in (cert_file, key_file):
        try:
            data = Path(file).read_bytes() if file else b""
        except OSError as exc:
            data = f"\0unreadable:{exc.errno}".encode()
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def _cert_names(cert: x509.Certificate) -> list[str]:
    """The SAN DNS names of ``cert``, else its subject CNs; lowercased, trailing dot removed, in certificate order."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [v for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME) if isinstance(v := a.value, str)]
    return list(dict.fromkeys(_normalise(n) for n in names if n))


def generate_self_signed() -> tuple[bytes, bytes]:
    """An ECDSA P-256 certificate for "localhost" (CN and SAN), valid one year from now: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SELF_SIGNED_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SELF_SIGNED_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem

