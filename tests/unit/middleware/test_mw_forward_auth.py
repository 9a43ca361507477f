"""``forward-auth`` (SPEC §6.4) against a local auth server: the auth request, 2xx header copy, denials relayed,
502 when the service cannot be reached (TCP or TLS), 504 when it is slow."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from http_stub import Seen, Stub, response
from mw_support import body, params, request

from a3s_gateway.middleware.chain import JSON, Reply
from a3s_gateway.middleware.forward_auth import ForwardAuth
from a3s_gateway.observability.process_log import TextFormatter

OK = response(200, [(b"X-Auth-User", b"alice"), (b"X-Auth-Role", b"admin"), (b"X-Auth-Role", b"dev"),
                    (b"X-Other", b"not-copied")])


def forward_auth(url: str, extra: str = "", ssl_context: ssl.SSLContext | None = None) -> ForwardAuth:
    return ForwardAuth("m", "r", params("forward-auth", f'forward_auth_url = "{url}"\n{extra}'),
                       ssl_context=ssl_context)


CLIENT_HEADERS = [
    (b"Host", b"app.example.com"),
    (b"Authorization", b"Bearer t"),
    (b"Cookie", b"sid=1"),
    (b"Connection", b"keep-alive, X-Hop"),
    (b"X-Hop", b"1"),
    (b"Keep-Alive", b"timeout=5"),
    (b"TE", b"trailers"),
    (b"Upgrade", b"websocket"),
    (b"Proxy-Authorization", b"Basic x"),
    (b"Content-Length", b"5"),
    (b"Transfer-Encoding", b"chunked"),
    (b"X-Forwarded-Uri", b"/spoofed"),
    (b"X-Auth-User", b"root"),  # spoof attempt
    (b"x-auth-missing", b"spoof"),
]


def test_flags() -> None:
    mw = forward_auth("http://127.0.0.1:1/auth")
    assert (mw.kind, mw.has_request, mw.is_async, mw.has_response) == ("forward-auth", True, True, False)
    with pytest.raises(RuntimeError):
        mw.request(request(), 0.0)


async def test_2xx_copies_listed_headers_and_sends_the_auth_request() -> None:
    async with Stub(lambda seen: OK) as stub:
        mw = forward_auth(stub.url("/verify?app=1"),
                          'forward_auth_response_headers = ["X-Auth-User", "X-Auth-Role", "X-Auth-Missing"]')
        req = request(method=b"PUT", path=b"/a%20b/c", query=b"x=1&y", headers=CLIENT_HEADERS, client_ip="10.1.2.3")
        assert await mw.request_async(req, 0.0) is None
    assert req.changed
    assert req.get_all(b"X-Auth-User") == [b"alice"]
    assert req.get_all(b"X-Auth-Role") == [b"admin", b"dev"]
    assert req.get(b"X-Auth-Missing") is None
    assert req.get(b"X-Other") is None
    assert req.get(b"Cookie") == b"sid=1"  # the client request is otherwise unchanged

    [seen] = stub.seen
    assert (seen.method, seen.target, seen.version) == (b"GET", b"/verify?app=1", b"HTTP/1.1")
    names = [n.lower() for n, _ in seen.headers]
    assert names.count(b"host") == 1 and seen.get(b"Host") == f"127.0.0.1:{stub.port}".encode()
    assert seen.get(b"Authorization") == b"Bearer t" and seen.get(b"Cookie") == b"sid=1"
    assert seen.get(b"X-Auth-User") == b"root"  # client headers go to the auth service as they are
    for hop in (b"x-hop", b"keep-alive", b"te", b"upgrade", b"proxy-authorization", b"content-length",
                b"transfer-encoding"):
        assert hop not in names, hop
    assert seen.get(b"Connection") == b"close"
    assert seen.get(b"X-Forwarded-Method") == b"PUT"
    assert seen.get(b"X-Forwarded-Proto") == b"http"
    assert seen.get(b"X-Forwarded-Host") == b"example.com"
    assert seen.get(b"X-Forwarded-Uri") == b"/a%20b/c?x=1&y"
    assert seen.get(b"X-Forwarded-For") == b"10.1.2.3"
    assert names.count(b"x-forwarded-uri") == 1


async def test_selected_request_headers_and_trusted_forwarded_values() -> None:
    async with Stub(lambda seen: response(204)) as stub:
        mw = forward_auth(stub.url("/auth"), 'forward_auth_request_headers = ["authorization"]\n'
                                             'forward_auth_method = "POST"')
        headers = [*CLIENT_HEADERS, (b"X-Forwarded-For", b"1.2.3.4, 10.0.0.1"), (b"X-Forwarded-Proto", b"https"),
                   (b"X-Forwarded-Host", b"front.example.com:8443")]
        req = request(headers=headers, client_ip="1.2.3.4", trusted=True, peer="10.0.0.2")
        assert await mw.request_async(req, 0.0) is None
    assert not req.changed  # no response headers configured
    [seen] = stub.seen
    assert seen.method == b"POST"
    assert [n.lower() for n, _ in seen.headers] == [
        b"host", b"authorization", b"x-forwarded-method", b"x-forwarded-proto", b"x-forwarded-host",
        b"x-forwarded-uri", b"x-forwarded-for", b"content-length", b"connection",
    ]
    assert seen.get(b"Content-Length") == b"0"
    assert seen.get(b"X-Forwarded-For") == b"1.2.3.4, 10.0.0.1, 10.0.0.2"  # the peer appended, as upstream
    assert seen.get(b"X-Forwarded-Proto") == b"https"
    assert seen.get(b"X-Forwarded-Host") == b"front.example.com:8443"


async def test_forwarded_values_of_an_untrusted_client_are_the_gateways() -> None:
    """SPEC §5.2: an untrusted client cannot choose the scheme, host or address the auth service judges by; a value
    an earlier middleware set (``headers``) is what the backend gets, so the auth service gets it too."""
    headers = [(b"Host", b"admin.example.com"), (b"X-Forwarded-For", b"10.0.0.1"), (b"X-Forwarded-Proto", b"https"),
               (b"X-Forwarded-Host", b"public.example.com")]
    async with Stub(lambda seen: response(204)) as stub:
        mw = forward_auth(stub.url("/auth"))
        assert await mw.request_async(request(headers=headers, client_ip="198.51.100.7"), 0.0) is None
        edited = request(headers=headers, client_ip="198.51.100.7")
        edited.set(b"X-Forwarded-Proto", b"https")
        edited.remove(b"X-Forwarded-For")
        assert await mw.request_async(edited, 0.0) is None
    plain, set_by_mw = stub.seen
    assert plain.get(b"X-Forwarded-Host") == b"example.com"  # the request's host, as routing saw it
    assert plain.get(b"X-Forwarded-Proto") == b"http"
    assert plain.get(b"X-Forwarded-For") == b"10.0.0.1, 198.51.100.7"  # the peer is the rightmost entry
    assert set_by_mw.get(b"X-Forwarded-Proto") == b"https"
    assert set_by_mw.get(b"X-Forwarded-For") == b"198.51.100.7"


def relayed(reply: Reply | None, status: int) -> Reply:
    assert reply is not None and reply.status == status
    return reply


async def test_302_with_location_is_relayed() -> None:
    raw = response(302, [(b"Location", b"https://login.example.com/?next=%2F"), (b"Set-Cookie", b"s=1"),
                         (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"), (b"Connection", b"close, X-Private"),
                         (b"X-Private", b"1"), (b"Keep-Alive", b"timeout=1")], b"<a>login</a>")
    async with Stub(lambda seen: raw) as stub:
        reply = relayed(await forward_auth(stub.url("/")).request_async(request(), 0.0), 302)
    assert reply.headers == [(b"Location", b"https://login.example.com/?next=%2F"), (b"Set-Cookie", b"s=1")]
    assert reply.body == b"<a>login</a>"


async def test_401_chunked_body_is_relayed() -> None:
    chunks = b"5\r\n{\"err\r\n9;ext=1\r\nor\":\"no\"}\r\n0\r\nX-Trailer: 1\r\n\r\n"
    raw = response(401, [(b"WWW-Authenticate", b'Bearer realm="x"'), (b"Content-Type", b"application/json"),
                         (b"Transfer-Encoding", b"chunked")], chunks, length=False)
    async with Stub(lambda seen: raw) as stub:
        reply = relayed(await forward_auth(stub.url("/")).request_async(request(), 0.0), 401)
    assert reply.headers == [(b"WWW-Authenticate", b'Bearer realm="x"'), (b"Content-Type", b"application/json")]
    assert reply.body == b'{"error":"no"}'


async def test_403_close_delimited_body_after_interim_100() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno access"
    async with Stub(lambda seen: raw) as stub:
        reply = relayed(await forward_auth(stub.url("/")).request_async(request(), 0.0), 403)
    assert reply.headers == [(b"Content-Type", b"text/plain")]
    assert reply.body == b"no access"


async def test_head_method_reads_no_body() -> None:
    # Content-Length describes the body a GET would have had; none follows (reading it would fail: 502).
    async with Stub(lambda seen: b"HTTP/1.1 401 X\r\nContent-Length: 50\r\n\r\n") as stub:
        mw = forward_auth(stub.url("/"), 'forward_auth_method = "HEAD"\nforward_auth_timeout = "2s"')
        reply = relayed(await mw.request_async(request(), 0.0), 401)
    assert stub.seen[0].method == b"HEAD"
    assert reply.body == b"" and reply.headers == []


async def test_unreachable_is_502() -> None:
    async with Stub(lambda seen: OK) as stub:
        url = stub.url("/")
    reply = await forward_auth(url).request_async(request(), 0.0)
    assert reply is not None and reply.status == 502
    assert reply.headers == [(b"Content-Type", JSON)] and body(reply) == {"error": "Auth service unavailable"}


@pytest.mark.parametrize("raw", [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
                                 b"HTTP/1.1 403 X\r\nContent-Length: 10\r\n\r\nshort", b""])
async def test_broken_response_is_502(raw: bytes) -> None:
    async with Stub(lambda seen: raw) as stub:
        reply = await forward_auth(stub.url("/")).request_async(request(), 0.0)
    assert reply is not None and reply.status == 502 and body(reply) == {"error": "Auth service unavailable"}


async def test_slow_service_is_504() -> None:
    release = asyncio.Event()

    async def respond(seen: Seen) -> bytes:
        await release.wait()
        return OK

    async with Stub(respond) as stub:
        mw = forward_auth(stub.url("/"), 'forward_auth_timeout = "100ms"')
        reply = await mw.request_async(request(), 0.0)
        release.set()
    assert reply is not None and reply.status == 504
    assert reply.headers == [(b"Content-Type", JSON)] and body(reply) == {"error": "Auth service timeout"}


# --- https ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


def server_tls(files: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(files[0]), str(files[1]))
    return ctx


async def test_https_auth_service(tls_files: tuple[Path, Path]) -> None:
    client = ssl.create_default_context(cafile=str(tls_files[0]))
    async with Stub(lambda seen: OK, tls=server_tls(tls_files)) as stub:
        mw = forward_auth(stub.url("/auth"), 'forward_auth_response_headers = ["X-Auth-User"]', ssl_context=client)
        req = request()
        assert await mw.request_async(req, 0.0) is None
    assert req.get(b"X-Auth-User") == b"alice"
    assert stub.seen[0].target == b"/auth"


async def test_tls_failure_is_502(tls_files: tuple[Path, Path]) -> None:
    async with Stub(lambda seen: OK, tls=server_tls(tls_files)) as stub:
        reply = await forward_auth(stub.url("/auth")).request_async(request(), 0.0)  # default CAs: untrusted
    assert reply is not None and reply.status == 502 and body(reply) == {"error": "Auth service unavailable"}


async def test_failures_log_one_redacted_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §11.5 / §11.1: a down auth service gives one warning per 10 s, with the request id and the count of the
    ones suppressed, and never the credentials of the auth URL."""
    async with Stub(lambda seen: OK) as stub:
        port = stub.port
    now = [100.0]
    url = f"http://svc:hunter2@127.0.0.1:{port}/check?token=t0k3n&app=1"
    mw = ForwardAuth("fa", "r", params("forward-auth", f'forward_auth_url = "{url}"'), clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="a3s_gateway.middleware.forward_auth")
    for i in range(202):
        reply = await mw.request_async(request(headers=[(b"X-Request-Id", b"rid-%d" % i)]), 0.0)
        assert reply is not None and reply.status == 502
    records = [r for r in caplog.records if r.name == "a3s_gateway.middleware.forward_auth"]
    assert len(records) == 1
    now[0] += 10.0
    await mw.request_async(request(headers=[(b"X-Request-Id", b"rid-last")]), 0.0)
    records = [r for r in caplog.records if r.name == "a3s_gateway.middleware.forward_auth"]
    assert len(records) == 2
    lines = [TextFormatter().format(r) for r in records]
    for line in lines:
        assert "hunter2" not in line and "t0k3n" not in line, line
        assert f'url="http://svc:<redacted>@127.0.0.1:{port}/check?token=<redacted>&app=1"' in line
        assert "auth service unavailable" in line and "middleware=fa" in line and "router=r" in line
    assert "request_id=rid-0" in lines[0] and "suppressed" not in lines[0]
    assert "request_id=rid-last" in lines[1] and lines[1].endswith(" suppressed=201")
