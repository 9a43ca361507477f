"""TLS termination (SPEC §10): SNI certificate selection, the self-signed fallback, real handshakes on 127.0.0.1
(certificate per SNI, ALPN, protocol versions, the SNI the server saw), reloading and load errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from certs import make_cert, make_san_cert
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from loops import Run

from a3s_gateway.config.model import CertificateConfig, PemCertificate, TlsConfig
from a3s_gateway.proxy.tls import CertStore, TlsError

Pair = tuple[Path, Path]


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


def tls(default: Pair | None = None, *extra: Pair, **kw: object) -> TlsConfig:
    certificates = tuple(CertificateConfig(str(c), str(k)) for c, k in extra)
    if default is None:
        return TlsConfig(certificates=certificates, **kw)  # type: ignore[arg-type]
    return TlsConfig(str(default[0]), str(default[1]), certificates, **kw)  # type: ignore[arg-type]


def client_context(alpn: list[str] | None = None, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that accepts any certificate: tests compare the served certificate's DER themselves."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maximum is not None:
        ctx.maximum_version = maximum
    return ctx


def tls11_client() -> ssl.SSLContext:
    """A client limited to TLS 1.1 that really sends a TLS 1.1 ClientHello (security level 0 allows it)."""
    ctx = client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "ssl.TLSVersion.TLSv1_1 is deprecated": the point
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def handshake(server: ssl.SSLContext, server_name: str | None = None,
              client: ssl.SSLContext | None = None) -> ssl.SSLObject:
    """A handshake in memory BIOs; returns the client side. A failure raises the SSLError of the side that failed."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    cli = (client or client_context()).wrap_bio(c_in, c_out, server_hostname=server_name)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (obj, src, dst) in enumerate(((cli, c_out, s_in), (srv, s_out, c_in))):
            if not done[i]:
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
                    done[i] = True
            dst.write(src.read())
        if all(done):
            return cli
    raise AssertionError("in-memory handshake did not complete")


def served(server: ssl.SSLContext, server_name: str | None = None) -> bytes:
    """DER of the certificate ``server`` presents to a client sending ``server_name``."""
    peer = handshake(server, server_name).getpeercert(binary_form=True)
    assert peer is not None
    return peer


# --- selection (§10.2) -------------------------------------------------------------------------------------------


@dataclass
class Certs:
    default: Pair  # default.test
    wild: Pair  # *.example.com
    exact: Pair  # a.example.com, b.example.com


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("sni")
    return Certs(
        make_san_cert(d, "default-", ["default.test"]),
        make_san_cert(d, "wild-", ["*.example.com"]),
        make_san_cert(d, "exact-", ["a.example.com", "b.example.com"]),
    )


@pytest.mark.parametrize(
    ("sni", "expected"),
    [
        ("a.example.com", "exact"),  # exact beats a wildcard configured earlier
        ("b.example.com", "exact"),
        ("x.example.com", "wild"),
        ("x.y.example.com", "default"),  # a wildcard covers one label
        ("example.com", "default"),  # ... and not the bare parent
        (".example.com", "default"),  # an empty label is no label
        ("A.Example.COM", "exact"),  # case-insensitive
        ("a.example.com.", "exact"),  # trailing dot ignored
        ("X.EXAMPLE.COM.", "wild"),
        ("default.test", "default"),
        ("unknown.test", "default"),
        (None, "default"),
    ],
)
def test_select(certs: Certs, sni: str | None, expected: str) -> None:
    store = CertStore(tls(certs.default, certs.wild, certs.exact))
    assert served(store.select(sni)) == der(getattr(certs, expected)[0])
    # the context the server gets reaches the same certificate through its SNI callback
    if sni is not None and not sni.startswith("."):  # Python's client cannot send an empty label
        assert served(store.context, sni) == der(getattr(certs, expected)[0])


def test_ties_go_to_configuration_order(tmp_path: Path) -> None:
    d = make_san_cert(tmp_path, "d-", ["a.example.com"])
    x = make_san_cert(tmp_path, "x-", ["a.example.com", "b.example.com", "*.w.test"])
    y = make_san_cert(tmp_path, "y-", ["b.example.com", "*.w.test", "c.example.com"])
    store = CertStore(tls(d, x, y))
    assert served(store.select("a.example.com")) == der(d[0])  # the default certificate comes first
    assert served(store.select("b.example.com")) == der(x[0])
    assert served(store.select("q.w.test")) == der(x[0])
    assert served(store.select("c.example.com")) == der(y[0])
    assert store.names() == ["a.example.com", "b.example.com", "*.w.test", "c.example.com"]


def test_default_is_first_of_certificates_without_cert_file(tmp_path: Path) -> None:
    x = make_san_cert(tmp_path, "x-", ["x.test"])
    y = make_san_cert(tmp_path, "y-", ["y.test"])
    store = CertStore(tls(None, x, y))
    assert served(store.select(None)) == der(x[0])
    assert served(store.select("nothing.test")) == der(x[0])
    assert served(store.select("y.test")) == der(y[0])
    assert served(store.context) == der(x[0])  # no SNI through the server's context


def test_self_signed_fallback_when_nothing_is_configured() -> None:
    store = CertStore(TlsConfig(acme=True))
    before = datetime.datetime.now(datetime.timezone.utc)
    for presented in (served(store.select(None)), served(store.select("anything.test")), served(store.context)):
        cert = x509.load_der_x509_certificate(presented)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert lifetime == datetime.timedelta(days=365)
        assert abs(cert.not_valid_before_utc - before) < datetime.timedelta(minutes=1)
    assert store.names() == ["localhost"]
    assert store.check() is False  # nothing to reload


def test_subject_cn_only_without_san_dns_names(tmp_path: Path) -> None:
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    cn_only = make_cert(tmp_path, "cn-", cn="api.example.com")
    both = make_san_cert(tmp_path, "both-", ["san.example.com"], cn="cn.example.com")
    store = CertStore(tls(default, cn_only, both))
    assert served(store.select("API.example.com")) == der(cn_only[0])
    assert served(store.select("san.example.com")) == der(both[0])
    assert served(store.select("cn.example.com")) == der(default[0])  # a SAN list makes the CN irrelevant
    assert store.names() == ["default.test", "api.example.com", "san.example.com"]


# --- real handshakes on 127.0.0.1 --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(store: CertStore) -> AsyncIterator[int]:
    """An echo server terminating TLS with ``store``; each line comes back prefixed by ``<SNI the server saw>|``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sni = CertStore.server_name(writer.get_extra_info("ssl_object"))
        try:
            while line := await reader.readline():
                writer.write(f"{sni}|".encode() + line)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=store.context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def ssl(self) -> ssl.SSLObject:
        obj: ssl.SSLObject = self.writer.get_extra_info("ssl_object")
        return obj

    @property
    def cert(self) -> bytes:
        peer = self.ssl.getpeercert(binary_form=True)
        assert peer is not None
        return peer

    async def echo(self, data: bytes = b"ping\n") -> bytes:
        self.writer.write(data)
        return await asyncio.wait_for(self.reader.readline(), 5)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def connect(port: int, sni: str | None = None, ctx: ssl.SSLContext | None = None) -> AsyncIterator[Conn]:
    """A TLS client connection; no ``sni``: the host is an IP address, which Python never sends as SNI."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx or client_context(), server_hostname=sni), 5
    )
    conn = Conn(reader, writer)
    try:
        yield conn
    finally:
        await conn.close()


async def test_client_sees_the_certificate_for_its_sni(certs: Certs) -> None:
    store = CertStore(tls(certs.default, certs.wild, certs.exact))
    async with serving(store) as port:
        for sni, expected in [("a.example.com", certs.exact), ("zz.example.com", certs.wild),
                              ("other.test", certs.default), (None, certs.default)]:
            async with connect(port, sni) as conn:
                assert conn.cert == der(expected[0]), sni
                assert await conn.echo() == f"{sni}|ping\n".encode()


async def test_server_name_is_the_sni_the_server_saw(certs: Certs) -> None:
    store = CertStore(tls(certs.default, certs.exact))
    async with serving(store) as port:
        async with connect(port, "B.Example.Com") as conn:
            assert await conn.echo() == b"b.example.com|ping\n"  # recorded lowercased
        async with connect(port, "unknown.test") as conn:
            assert await conn.echo() == b"unknown.test|ping\n"  # recorded even when no certificate matched
        async with connect(port) as conn:
            assert await conn.echo() == b"None|ping\n"


@pytest.mark.parametrize(
    ("store_alpn", "offered", "negotiated"),
    [
        (None, ["h2", "http/1.1"], "h2"),  # None: the configured list, ("h2", "http/1.1")
        (None, ["http/1.1"], "http/1.1"),
        (("http/1.1",), ["h2", "http/1.1"], "http/1.1"),
        ((), ["h2", "http/1.1"], None),  # TCP entrypoints offer no ALPN
    ],
)
async def test_alpn(
    certs: Certs, store_alpn: tuple[str, ...] | None, offered: list[str], negotiated: str | None
) -> None:
    store = CertStore(tls(certs.default, certs.exact), alpn=store_alpn)
    async with serving(store) as port:
        for sni in (None, "a.example.com"):  # the default context and a context switched to by SNI
            async with connect(port, sni, client_context(offered)) as conn:
                assert conn.ssl.selected_alpn_protocol() == negotiated
                assert conn.cert == der((certs.exact if sni else certs.default)[0])


async def test_alpn_comes_from_the_configuration(certs: Certs) -> None:
    store = CertStore(tls(certs.default, certs.exact, alpn=("http/1.1",)))
    async with serving(store) as port, connect(port, "a.example.com", client_context(["h2", "http/1.1"])) as conn:
        assert conn.ssl.selected_alpn_protocol() == "http/1.1"


async def test_min_version(certs: Certs) -> None:
    tls12 = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    async with serving(CertStore(tls(certs.default, min_version="1.2"))) as port:
        async with connect(port, "a.test", tls12) as conn:
            assert conn.ssl.version() == "TLSv1.2"
        async with connect(port, "a.test") as conn:
            assert conn.ssl.version() == "TLSv1.3"
    async with serving(CertStore(tls(certs.default, certs.exact, min_version="1.3"))) as port:
        for sni in ("a.test", "a.example.com"):
            # the client learns little (asyncio's server drops the connection, the alert may not be sent) ...
            with pytest.raises((ssl.SSLError, ConnectionError)):
                async with connect(port, sni, tls12):
                    pass
        async with connect(port, "a.example.com") as conn:
            assert conn.ssl.version() == "TLSv1.3"
    # ... the server side says why: same contexts, handshake in memory
    store = CertStore(tls(certs.default, certs.exact, min_version="1.3"))
    for sni in ("a.test", "a.example.com"):
        with pytest.raises(ssl.SSLError) as refused:
            handshake(store.context, sni, tls12)
        assert refused.value.reason == "UNSUPPORTED_PROTOCOL"  # raised by the server, not a local client failure


async def test_tls11_is_never_accepted(certs: Certs) -> None:
    # control: this client does complete a TLS 1.1 handshake with a server that allows it
    legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        legacy.minimum_version = ssl.TLSVersion.TLSv1_1
    legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
    legacy.load_cert_chain(*certs.default)
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=legacy)
    try:
        async with connect(server.sockets[0].getsockname()[1], "a.test", tls11_client()) as conn:
            assert conn.ssl.version() == "TLSv1.1"
    except ssl.SSLError as exc:
        pytest.skip(f"this OpenSSL cannot negotiate TLS 1.1 at all: {exc}")
    finally:
        server.close()
        await server.wait_closed()
    for min_version in ("1.2", "1.3"):
        store = CertStore(tls(certs.default, certs.exact, min_version=min_version))
        async with serving(store) as port:
            for sni in ("a.test", "a.example.com"):
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    async with connect(port, sni, tls11_client()):
                        pass
                with pytest.raises(ssl.SSLError) as refused:
                    handshake(store.context, sni, tls11_client())
                assert refused.value.reason == "UNSUPPORTED_PROTOCOL"


def test_contexts_have_the_same_settings(certs: Certs) -> None:
    store = CertStore(tls(certs.default, certs.wild, certs.exact, min_version="1.3"))
    contexts = [store.context, *(store.select(n) for n in (None, "x.example.com", "a.example.com"))]
    assert len({id(c) for c in contexts}) == 4
    for ctx in contexts:
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_NONE  # client certificates are not requested
        assert ctx.options == store.context.options


# --- reloading (§10.3) -------------------------------------------------------------------------------------------


@pytest.fixture
def caplog_tls(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="a3s_gateway.tls"):
        yield caplog


async def test_reload_serves_the_new_certificate_to_new_handshakes_only(
    tmp_path: Path, caplog_tls: pytest.LogCaptureFixture
) -> None:
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    old = der(cert)
    store = CertStore(tls(default, (cert, key)))
    async with serving(store) as port:
        async with connect(port, "a.example.com") as before:
            assert before.cert == old
            assert store.check() is False  # nothing changed yet
            make_san_cert(tmp_path, "", ["a.example.com"])  # overwrites cert.pem and key.pem in place
            new = der(cert)
            assert new != old
            assert store.check() is True
            async with connect(port, "a.example.com") as after:
                assert after.cert == new
                assert await after.echo(b"new\n") == b"a.example.com|new\n"
            # the connection opened before the reload keeps its certificate and keeps working
            assert await before.echo(b"still here\n") == b"a.example.com|still here\n"
            assert before.cert == old
        assert store.check() is False
        assert store.reload_errors == 0
    assert any("reloaded certificate" in r.message and str(cert) in r.message for r in caplog_tls.records)


async def test_reload_of_the_default_certificate(tmp_path: Path) -> None:
    cert, key = make_san_cert(tmp_path, "", ["default.test"])
    store = CertStore(tls((cert, key)))
    make_san_cert(tmp_path, "", ["default.test"])
    assert store.check() is True
    async with serving(store) as port, connect(port) as conn:  # no SNI: the default, through the same context
        assert conn.cert == der(cert)


def test_reload_with_new_names_updates_selection(tmp_path: Path) -> None:
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    cert, key = make_san_cert(tmp_path, "", ["b.example.com"])
    store = CertStore(tls(default, (cert, key)))
    assert served(store.context, "b.example.com") == der(cert)
    make_san_cert(tmp_path, "", ["c.example.com"])
    assert store.check() is True
    assert served(store.context, "c.example.com") == der(cert)
    assert served(store.context, "b.example.com") == der(default[0])
    assert store.names() == ["default.test", "c.example.com"]


async def test_broken_file_keeps_the_previous_certificate(tmp_path: Path, caplog_tls: pytest.LogCaptureFixture) -> None:
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    old = der(cert)
    store = CertStore(tls(default, (cert, key)))
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    assert store.check() is False
    assert store.reload_errors == 1
    errors = [r for r in caplog_tls.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(cert) in errors[0].getMessage()
    async with serving(store) as port, connect(port, "a.example.com") as conn:
        assert conn.cert == old
    assert store.check() is False
    assert store.reload_errors == 1  # the same broken content is reported once, not every period
    make_san_cert(tmp_path, "", ["a.example.com"])  # fixed
    assert store.check() is True
    assert served(store.context, "a.example.com") == der(cert) != old
    assert store.reload_errors == 1


def test_half_written_update_waits_for_the_key(tmp_path: Path) -> None:
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    old = der(cert)
    store = CertStore(tls(default, (cert, key)))
    new_cert, new_key = make_san_cert(tmp_path, "new-", ["a.example.com"])
    cert.write_bytes(new_cert.read_bytes())  # the certificate arrives before its key
    assert store.check() is False
    assert store.reload_errors == 1
    assert served(store.context, "a.example.com") == old
    key.write_bytes(new_key.read_bytes())
    assert store.check() is True
    assert served(store.context, "a.example.com") == der(new_cert)


def test_deleted_file_keeps_the_previous_certificate(tmp_path: Path) -> None:
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    old = der(cert)
    store = CertStore(tls((cert, key)))
    key.unlink()
    assert store.check() is False
    assert store.reload_errors == 1
    assert served(store.context, "a.example.com") == old


async def test_watch_checks_every_period(tmp_path: Path, caplog_tls: pytest.LogCaptureFixture) -> None:
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    store = CertStore(tls((cert, key)))
    checked = asyncio.Queue[bool]()
    real_check = store.check
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")  # a failing check is logged and does not stop the watcher
        result = real_check()
        checked.put_nowait(result)
        return result

    store.check = check  # type: ignore[method-assign]
    task = asyncio.create_task(store.watch(period=0.001))
    try:
        assert await asyncio.wait_for(checked.get(), 5) is False
        make_san_cert(tmp_path, "", ["a.example.com"])
        while not await asyncio.wait_for(checked.get(), 5):
            pass
        assert served(store.context, "a.example.com") == der(cert)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog_tls.records)


# --- load errors at start ----------------------------------------------------------------------------------------


def test_missing_files_name_the_file(tmp_path: Path) -> None:
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    missing = tmp_path / "missing.pem"
    for pair, named in [((missing, key), missing), ((cert, missing), missing)]:
        with pytest.raises(TlsError, match=str(named)):
            CertStore(tls(pair))
        with pytest.raises(TlsError, match=str(named)):
            CertStore(tls(None, (cert, key), pair))


def test_mismatched_key_names_the_files(tmp_path: Path) -> None:
    cert, _ = make_san_cert(tmp_path, "a-", ["a.example.com"])
    _, other_key = make_san_cert(tmp_path, "b-", ["b.example.com"])
    with pytest.raises(TlsError, match="does not match") as err:
        CertStore(tls((cert, other_key)))
    assert str(cert) in str(err.value) and str(other_key) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_garbage_certificate_names_the_file(tmp_path: Path) -> None:
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    cert.write_text("not a certificate\n")
    with pytest.raises(TlsError, match=str(cert)):
        CertStore(tls((cert, key)))


def test_encrypted_key_is_an_error_not_a_prompt(tmp_path: Path) -> None:
    cert, key = make_san_cert(tmp_path, "", ["a.example.com"])
    encrypted = tmp_path / "enc-key.pem"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-out", str(encrypted), "-aes256", "-passout", "pass:x"],
                   check=True, capture_output=True)
    with pytest.raises(TlsError, match="encrypted"):
        CertStore(tls((cert, encrypted)))


def test_unsupported_min_version(certs: Certs) -> None:
    for version in ("1.0", "1.1", "tls1.3"):
        with pytest.raises(TlsError, match=version):
            CertStore(tls(certs.default, min_version=version))


# --- both event loops ----------------------------------------------------------------------------------------------


def test_sni_alpn_and_reload_under_both_loops(run: Run, tmp_path: Path) -> None:
    """uvloop terminates TLS with its own SSL protocol: the SNI context switch must work there as well."""
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    cert, key = make_san_cert(tmp_path, "", ["*.example.com"])

    async def scenario() -> None:
        store = CertStore(tls(default, (cert, key)))
        async with serving(store) as port:
            async with connect(port, "q.example.com", client_context(["h2", "http/1.1"])) as conn:
                assert conn.cert == der(cert)
                assert conn.ssl.selected_alpn_protocol() == "h2"
                assert await conn.echo() == b"q.example.com|ping\n"
                make_san_cert(tmp_path, "", ["*.example.com"])
                assert store.check() is True
                async with connect(port, "r.example.com") as fresh:
                    assert fresh.cert == der(cert) != conn.cert
                assert await conn.echo(b"after\n") == b"q.example.com|after\n"
            async with connect(port) as conn:
                assert conn.cert == der(default[0])
                assert await conn.echo() == b"None|ping\n"

    run(scenario())


# --- provider certificates (Kubernetes TLS Secrets, §10.2, §12.5) -----------------------------------------------


def pem(pair: Pair, source: str = "kubernetes:ns/s") -> PemCertificate:
    return PemCertificate(source, pair[0].read_bytes(), pair[1].read_bytes())


def test_provider_certificates_come_after_configured_and_issued_ones(tmp_path: Path,
                                                                     caplog_tls: pytest.LogCaptureFixture) -> None:
    default = make_san_cert(tmp_path, "d-", ["default.test"])
    issued = make_san_cert(tmp_path, "i-", ["both.test"])
    k8s = make_san_cert(tmp_path, "k-", ["both.test", "*.k8s.test"])
    store = CertStore(tls(default))
    store.set_issued([(str(issued[0]), str(issued[1]))])
    store.set_provided((pem(k8s),))
    assert served(store.context, "both.test") == der(issued[0])  # ties: the ACME-issued one comes first
    assert served(store.context, "x.k8s.test") == der(k8s[0])
    assert served(store.context, "other.test") == der(default[0])
    # ACME re-issuing keeps the provider certificates; an unchanged set keeps the loaded context
    store.set_issued([])
    assert served(store.context, "both.test") == der(k8s[0])
    context = store.select("x.k8s.test")
    store.set_provided((pem(k8s),))
    assert store.select("x.k8s.test") is context
    # a changed secret replaces it for new handshakes; one that is gone is no longer served
    renewed = make_san_cert(tmp_path, "r-", ["*.k8s.test"])
    store.set_provided((pem(renewed),))
    assert served(store.context, "x.k8s.test") == der(renewed[0])
    assert served(store.context, "both.test") == der(default[0])
    store.set_provided(())
    assert served(store.context, "x.k8s.test") == der(default[0])
    # one that does not load is left out, logged and counted; the others are served
    other = make_san_cert(tmp_path, "o-", ["o.test"])
    bad = PemCertificate("kubernetes:ns/bad", k8s[0].read_bytes(), other[1].read_bytes())
    store.set_provided((bad, pem(renewed)))
    assert served(store.context, "x.k8s.test") == der(renewed[0])
    assert served(store.context, "both.test") == der(default[0])
    assert store.reload_errors == 1
    assert "cannot load the certificate of kubernetes:ns/bad: the key does not match; not served" in caplog_tls.text
    assert store.check() is False  # nothing of theirs is a file to reload
