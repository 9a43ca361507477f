"""``jwt`` (SPEC §6.1): extraction, every failure description in check order, keys from a secret, a PEM file, a
certificate and a JWKS endpoint (lazy fetch, 503 before the first success, refresh on an unknown kid), claims."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from http_stub import Seen, Stub, response
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mw_support import body, params, request

from a3s_gateway.middleware.chain import JSON, Reply
from a3s_gateway.middleware.jwt import Jwt

NOW = 1_700_000_000.0
SECRET = "a-test-secret-long-enough-for-hs512-" + "x" * 32


def clock() -> float:
    return NOW


def hs(extra: str = "") -> Jwt:
    return Jwt("m", "r", params("jwt", f'value = "{SECRET}"\n{extra}'), clock=clock)


def token(claims: dict[str, Any] | None = None, key: Any = SECRET, alg: str = "HS256", **headers: Any) -> str:
    payload = {"sub": "user-1", "exp": int(NOW) + 300} if claims is None else claims
    return pyjwt.encode(payload, key, algorithm=alg, headers=headers or None)


def bearer(tok: str | bytes) -> list[tuple[bytes, bytes]]:
    raw = tok.encode() if isinstance(tok, str) else tok
    return [(b"Authorization", b"Bearer " + raw)]


def invalid(reply: Reply | None, description: str) -> None:
    assert reply is not None and reply.status == 401, reply and reply.body
    assert body(reply) == {"error": f"Invalid token: {description}"}
    challenge = f'Bearer realm="a3s-gateway", error="invalid_token", error_description="{description}"'
    assert reply.headers == [(b"Content-Type", JSON), (b"WWW-Authenticate", challenge.encode())]


def test_flags() -> None:
    mw = hs()
    assert (mw.kind, mw.has_request, mw.is_async, mw.has_response) == ("jwt", True, False, False)


# --- extraction ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [[], [(b"Authorization", b"")], [(b"Authorization", b"Bearer")],
                                     [(b"Authorization", b"Bearer   ")], [(b"X-Token", token())]])
def test_missing_token(headers: list[tuple[bytes, bytes]]) -> None:
    reply = hs().request(request(headers=[(n, v if isinstance(v, bytes) else v.encode()) for n, v in headers]), 0.0)
    assert reply is not None and reply.status == 401
    assert body(reply) == {"error": "Missing token"}
    assert reply.headers == [(b"Content-Type", JSON), (b"WWW-Authenticate", b'Bearer realm="a3s-gateway"')]


@pytest.mark.parametrize("value", ["Bearer {t}", "bearer {t}", "BEARER  {t}", "{t}"])
def test_authorization_forms_and_header_forwarded_unchanged(value: str) -> None:
    raw = value.format(t=token()).encode()
    req = request(headers=[(b"Authorization", raw)])
    assert hs().request(req, 0.0) is None
    assert req.get(b"Authorization") == raw
    assert req.get(b"X-JWT-Subject") == b"user-1"


@pytest.mark.parametrize("value", ["{t}", "Bearer {t}", "bearer {t}"])
def test_custom_header_with_optional_bearer(value: str) -> None:
    mw = hs('header = "X-Token"')
    assert mw.request(request(headers=[(b"x-token", value.format(t=token()).encode())]), 0.0) is None
    assert mw.request(request(headers=bearer(token())), 0.0) is not None  # Authorization is not looked at


# --- each failure, in SPEC order -------------------------------------------------------------------------------------


def _seg(data: bytes) -> str:
    return pyjwt.utils.base64url_encode(data).decode()


@pytest.mark.parametrize(
    "tok",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.sig",
        _seg(b"not json") + "." + _seg(b"{}") + ".",
        _seg(b"[1]") + "." + _seg(b"{}") + ".",
        _seg(b'{"alg":"HS256"}') + "." + _seg(b"[1, 2]") + "." + _seg(b"x"),
        _seg(b'{"alg":"HS256"}') + "." + _seg(b"not json") + "." + _seg(b"x"),
        _seg(b'{"alg":"HS256","kid":5}') + "." + _seg(b"{}") + "." + _seg(b"x"),
        "Bearer " + token(),  # "Bearer Bearer <t>"
    ],
)
def test_malformed(tok: str) -> None:
    invalid(hs().request(request(headers=bearer(tok)), 0.0), "malformed token")


def test_malformed_time_claims_after_signature() -> None:
    invalid(hs().request(request(headers=bearer(token({"exp": "soon"}))), 0.0), "malformed token")
    invalid(hs().request(request(headers=bearer(token({"exp": NOW + 10, "nbf": True}))), 0.0), "malformed token")


def test_algorithm_not_allowed() -> None:
    mw = hs('algorithms = ["HS256"]')
    invalid(mw.request(request(headers=bearer(token(alg="HS512"))), 0.0), "algorithm not allowed")
    none = pyjwt.encode({"exp": NOW + 10}, None, algorithm="none")
    invalid(hs().request(request(headers=bearer(none)), 0.0), "algorithm not allowed")
    no_alg = _seg(b'{"typ":"JWT"}') + "." + _seg(b"{}") + "." + _seg(b"x")
    invalid(hs().request(request(headers=bearer(no_alg)), 0.0), "algorithm not allowed")
    # checked before the signature: a bad signature with a refused alg reports the alg
    invalid(mw.request(request(headers=bearer(token(alg="HS384", key=SECRET[::-1]))), 0.0), "algorithm not allowed")


def test_invalid_signature_before_time_checks() -> None:
    wrong = SECRET[::-1]
    invalid(hs().request(request(headers=bearer(token(key=wrong))), 0.0), "invalid signature")
    expired = token({"exp": NOW - 1000}, key=wrong)
    invalid(hs().request(request(headers=bearer(expired)), 0.0), "invalid signature")
    tampered = token().rsplit(".", 1)[0] + "." + _seg(b"\0" * 32)
    invalid(hs().request(request(headers=bearer(tampered)), 0.0), "invalid signature")


@pytest.mark.parametrize(
    ("claims", "description"),
    [
        ({"exp": NOW - 61}, "token expired"),
        ({"exp": NOW - 61, "iss": "bad", "aud": "bad"}, "token expired"),  # exp before iss/aud
        ({"exp": NOW + 10, "nbf": NOW + 61}, "token not yet valid"),
        ({"exp": NOW + 10, "nbf": NOW + 61, "iss": "bad"}, "token not yet valid"),
        ({"sub": "x"}, "missing exp"),
        ({"exp": NOW + 10, "iss": "other", "aud": "api"}, "invalid issuer"),
        ({"exp": NOW + 10, "aud": "api"}, "invalid issuer"),
        ({"exp": NOW + 10, "iss": "idp", "aud": "other"}, "invalid audience"),
        ({"exp": NOW + 10, "iss": "idp", "aud": ["x", "y"]}, "invalid audience"),
        ({"exp": NOW + 10, "iss": "idp"}, "invalid audience"),
        ({"exp": NOW + 10, "iss": "idp", "aud": 5}, "invalid audience"),
    ],
)
def test_claim_failures(claims: dict[str, Any], description: str) -> None:
    mw = hs('issuer = "idp"\naudience = ["api", "web"]')
    invalid(mw.request(request(headers=bearer(token(claims))), 0.0), description)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW - 59, "iss": "idp", "aud": "api"},  # within the 60 s leeway
        {"exp": NOW, "nbf": NOW + 59, "iss": "idp", "aud": ["other", "web"]},
        {"exp": NOW + 1.5, "iss": "idp", "aud": ["api"]},
    ],
)
def test_claims_accepted(claims: dict[str, Any]) -> None:
    mw = hs('issuer = "idp"\naudience = ["api", "web"]')
    assert mw.request(request(headers=bearer(token(claims))), 0.0) is None


def test_leeway_require_exp_and_single_audience() -> None:
    mw = hs('leeway = "0s"\nrequire_exp = false\naudience = "api"')
    assert mw.request(request(headers=bearer(token({"aud": "api"}))), 0.0) is None
    invalid(mw.request(request(headers=bearer(token({"exp": NOW - 1, "aud": "api"}))), 0.0), "token expired")
    invalid(mw.request(request(headers=bearer(token({"aud": "apis"}))), 0.0), "invalid audience")


def test_wall_clock_is_used() -> None:
    t = [NOW]
    mw = Jwt("m", "r", params("jwt", f'value = "{SECRET}"\nleeway = "0s"'), clock=lambda: t[0])
    tok = bearer(token({"exp": NOW + 100}))
    assert mw.request(request(headers=tok), 0.0) is None
    t[0] = NOW + 101
    invalid(mw.request(request(headers=tok), 0.0), "token expired")


# --- forward_claims --------------------------------------------------------------------------------------------------


def test_forward_claims() -> None:
    mw = hs('forward_claims = { sub = "X-User", roles = "X-Roles", admin = "X-Admin", org = "X-Org", '
            'name = "X-Name", nil = "X-Nil" }')
    claims = {"exp": NOW + 10, "sub": "u-1", "roles": ["a", "b"], "admin": True, "org": {"id": 7}, "nil": None,
              "name": "evil\r\nX-Injected: 1"}
    spoofed = [(b"x-user", b"root"), (b"X-Org", b"spoof"), (b"x-name", b"spoof"), (b"Accept", b"*/*")]
    req = request(headers=[*bearer(token(claims)), *spoofed])
    assert mw.request(req, 0.0) is None
    assert req.changed
    assert req.get_all(b"X-User") == [b"u-1"]
    assert req.get(b"X-Roles") == b'["a","b"]'
    assert req.get(b"X-Admin") == b"true"
    assert req.get(b"X-Org") == b'{"id":7}'
    assert req.get(b"X-Nil") == b"null"
    assert req.get(b"X-Name") is None  # would split the header line: dropped like an absent claim
    assert req.get(b"Accept") == b"*/*"


def test_absent_claim_removes_client_header() -> None:
    req = request(headers=[*bearer(token({"exp": NOW + 10})), (b"X-JWT-Subject", b"admin")])
    assert hs().request(req, 0.0) is None
    assert req.get(b"X-JWT-Subject") is None and req.changed


def test_failure_leaves_request_alone() -> None:
    req = request(headers=[*bearer(token({"sub": "x"})), (b"X-JWT-Subject", b"admin")])
    assert hs().request(req, 0.0) is not None
    assert not req.changed


# --- public keys ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: Any) -> bytes:
    return bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))


def _cert(key: Any) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def keyfile_mw(tmp_path: Path, pem: bytes, extra: str = "") -> Jwt:
    path = tmp_path / "key.pem"
    path.write_bytes(pem)
    return Jwt("m", "r", params("jwt", f'public_key_file = "{path}"\n{extra}'), clock=clock)


@pytest.mark.parametrize("alg", ["RS256", "RS512", "PS256"])
def test_rsa_public_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey,
                             alg: str) -> None:
    mw = keyfile_mw(tmp_path, _pem(rsa_key))
    assert mw.request(request(headers=bearer(token(key=rsa_key, alg=alg, kid="ignored"))), 0.0) is None
    invalid(mw.request(request(headers=bearer(token(key=other_rsa_key, alg=alg))), 0.0), "invalid signature")
    # an HMAC token is refused by the default algorithm list of a key
    invalid(mw.request(request(headers=bearer(token())), 0.0), "algorithm not allowed")


def test_pkcs1_rsa_public_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert pem.startswith(b"-----BEGIN RSA PUBLIC KEY-----")
    mw = keyfile_mw(tmp_path, pem, 'algorithms = ["RS256"]')
    assert mw.request(request(headers=bearer(token(key=rsa_key, alg="RS256"))), 0.0) is None


def test_ec_key_and_certificate_files(tmp_path: Path, rsa_key: rsa.RSAPrivateKey,
                                      ec_key: ec.EllipticCurvePrivateKey) -> None:
    mw = keyfile_mw(tmp_path, _cert(ec_key))
    assert mw.request(request(headers=bearer(token(key=ec_key, alg="ES256"))), 0.0) is None
    # ES384 is allowed but a P-256 key cannot verify it; RS256 is allowed but the key is not RSA
    p384 = ec.generate_private_key(ec.SECP384R1())
    invalid(mw.request(request(headers=bearer(token(key=p384, alg="ES384"))), 0.0), "unknown key")
    invalid(mw.request(request(headers=bearer(token(key=rsa_key, alg="RS256"))), 0.0), "unknown key")
    mw = keyfile_mw(tmp_path, _cert(rsa_key))
    assert mw.request(request(headers=bearer(token(key=rsa_key, alg="RS384"))), 0.0) is None


# --- JWKS ------------------------------------------------------------------------------------------------------------


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    out: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    return {**out, "kid": kid, **extra}


class Jwks:
    """The JWKS the stub serves: a status and a list of keys, changeable between requests."""

    def __init__(self) -> None:
        self.status = 200
        self.keys: list[dict[str, Any]] = []
        self.chunked = False

    def __call__(self, seen: Seen) -> bytes:
        data = orjson.dumps({"keys": self.keys})
        if self.status != 200:
            return response(self.status, [(b"Content-Type", b"text/plain")], b"down")
        if self.chunked:
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (data[:10], data[10:])) + b"0\r\n\r\n"
            return response(200, [(b"Transfer-Encoding", b"chunked")], chunks, length=False)
        return response(200, [(b"Content-Type", b"application/json")], data)


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    yield Jwks()


def jwks_mw(url: str, extra: str = "") -> Jwt:
    return Jwt("m", "r", params("jwt", f'jwks_url = "{url}"\n{extra}'), clock=clock)


def unavailable(reply: Reply | None) -> None:
    assert reply is not None and reply.status == 503
    assert body(reply) == {"error": "Authentication keys unavailable"}
    assert reply.headers == [(b"Content-Type", JSON), (b"Retry-After", b"5")]


@pytest.mark.parametrize("chunked", [False, True])
async def test_jwks_lazy_fetch_and_kid_lookup(jwks: Jwks, rsa_key: rsa.RSAPrivateKey,
                                              ec_key: ec.EllipticCurvePrivateKey, chunked: bool) -> None:
    jwks.keys = [jwk(rsa_key, "r1"), jwk(ec_key, "e1", use="sig", alg="ES256"), {"kty": "oct", "k": "AAAA"},
                 {"kty": "weird"}]
    jwks.chunked = chunked
    async with Stub(jwks) as stub:
        mw = jwks_mw(stub.url("/.well-known/jwks.json?x=1"))
        assert mw.is_async
        assert stub.seen == []  # nothing fetched at construction
        assert await mw.request_async(request(headers=bearer(token(key=rsa_key, alg="RS256", kid="r1"))), 1.0) is None
        assert await mw.request_async(request(headers=bearer(token(key=ec_key, alg="ES256", kid="e1"))), 2.0) is None
        assert await mw.request_async(request(headers=bearer(token(key=rsa_key, alg="PS256"))), 3.0) is None  # no kid
        invalid(await mw.request_async(request(headers=bearer(token(key=rsa_key, alg="RS256", kid="e1"))), 4.0),
                "unknown key")
        invalid(await mw.request_async(request(headers=bearer(token(key=ec_key, alg="ES256", kid="r1"))), 5.0),
                "unknown key")
        assert len(stub.seen) == 1
        seen = stub.seen[0]
        assert (seen.method, seen.target) == (b"GET", b"/.well-known/jwks.json?x=1")
        assert seen.get(b"Host") == f"127.0.0.1:{stub.port}".encode()
        assert seen.get(b"Connection") == b"close"
        await mw.close()


async def test_jwks_unavailable_until_first_success(jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks.status = 500
    jwks.keys = [jwk(rsa_key, "r1")]
    tok = bearer(token(key=rsa_key, alg="RS256", kid="r1"))
    async with Stub(jwks) as stub:
        mw = jwks_mw(stub.url())
        unavailable(await mw.request_async(request(headers=tok), 10.0))
        assert len(stub.seen) == 1
        jwks.status = 200
        unavailable(await mw.request_async(request(headers=tok), 14.0))  # retry waits 5 s
        assert len(stub.seen) == 1
        # the token is checked before the keys are needed
        reply = await mw.request_async(request(), 14.0)
        assert reply is not None and body(reply) == {"error": "Missing token"}
        assert await mw.request_async(request(headers=tok), 15.0) is None
        assert len(stub.seen) == 2
        await mw.close()


async def test_jwks_unreachable_and_sync_path(rsa_key: rsa.RSAPrivateKey) -> None:
    async with Stub(lambda seen: b"") as stub:
        url = stub.url()
    mw = jwks_mw(url)  # the stub is closed: connection refused
    tok = bearer(token(key=rsa_key, alg="RS256", kid="r1"))
    unavailable(mw.request(request(headers=tok), 0.0))
    unavailable(await mw.request_async(request(headers=tok), 0.0))
    await mw.close()


async def test_jwks_unknown_kid_refreshes_at_most_every_30s(jwks: Jwks, rsa_key: rsa.RSAPrivateKey,
                                                            ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks.keys = [jwk(rsa_key, "r1")]
    async with Stub(jwks) as stub:
        mw = jwks_mw(stub.url())
        await mw.start()
        assert await mw.request_async(request(headers=bearer(token(key=rsa_key, alg="RS256", kid="r1"))), 0.0) is None
        assert len(stub.seen) == 1
        jwks.keys.append(jwk(ec_key, "e2"))  # rotation: the new key appears
        new = bearer(token(key=ec_key, alg="ES256", kid="e2"))
        assert await mw.request_async(request(headers=new), 1.0) is None
        assert len(stub.seen) == 2
        ghost = bearer(token(key=ec_key, alg="ES256", kid="ghost"))
        invalid(await mw.request_async(request(headers=ghost), 20.0), "unknown key")
        assert len(stub.seen) == 2  # refreshed on an unknown kid 19 s ago
        invalid(await mw.request_async(request(headers=ghost), 31.0), "unknown key")
        assert len(stub.seen) == 3
        # the previous key set survives a failed refresh
        jwks.status = 500
        invalid(await mw.request_async(request(headers=ghost), 62.0), "unknown key")
        assert len(stub.seen) == 4
        assert await mw.request_async(request(headers=new), 63.0) is None
        await mw.close()


async def test_jwks_periodic_refresh_in_background(jwks: Jwks, rsa_key: rsa.RSAPrivateKey,
                                                   ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwks.keys = [jwk(rsa_key, "r1")]
    old = bearer(token(key=rsa_key, alg="RS256", kid="r1"))
    async with Stub(jwks) as stub:
        mw = jwks_mw(stub.url(), 'jwks_refresh = "60s"')
        assert await mw.request_async(request(headers=old), 100.0) is None
        jwks.keys = [jwk(ec_key, "e1")]
        assert await mw.request_async(request(headers=old), 159.0) is None
        assert len(stub.seen) == 1
        # due: this request starts the refresh and is answered with the keys at hand
        assert await mw.request_async(request(headers=old), 160.0) is None
        task = mw._task
        assert task is not None
        await task
        assert len(stub.seen) == 2
        invalid(await mw.request_async(request(headers=old), 161.0), "unknown key")
        await mw.close()


async def test_concurrent_requests_share_one_fetch(jwks: Jwks, rsa_key: rsa.RSAPrivateKey) -> None:
    jwks.keys = [jwk(rsa_key, "r1")]
    tok = bearer(token(key=rsa_key, alg="RS256", kid="r1"))
    async with Stub(jwks) as stub:
        mw = jwks_mw(stub.url())
        replies = await asyncio.gather(*(mw.request_async(request(headers=tok), 0.0) for _ in range(5)))
        assert replies == [None] * 5
        assert len(stub.seen) == 1
        await mw.close()


async def test_jwks_bad_document_is_a_failed_fetch(rsa_key: rsa.RSAPrivateKey) -> None:
    async with Stub(lambda seen: response(200, (), b'{"not":"keys"}')) as stub:
        mw = jwks_mw(stub.url())
        unavailable(await mw.request_async(request(headers=bearer(token(key=rsa_key, alg="RS256"))), 0.0))
        await mw.close()
