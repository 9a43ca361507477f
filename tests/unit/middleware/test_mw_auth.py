"""``api-key`` (SPEC §6.2) and ``basic-auth`` (SPEC §6.3): statuses, bodies, challenges, hashes and the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import string
import subprocess
import threading
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from external import require_tool
from mw_support import body, params, request

from a3s_gateway.middleware import auth
from a3s_gateway.middleware.auth import ApiKey, BasicAuth, apr1
from a3s_gateway.middleware.chain import JSON, Reply

CHALLENGE = (b"WWW-Authenticate", b'Basic realm="a3s-gateway", charset="UTF-8"')

# ---------------------------------------------------------------------------------------------------------------
# api-key
# ---------------------------------------------------------------------------------------------------------------


def api_key(extra: str = "") -> ApiKey:
    return ApiKey("m", "r", params("api-key", f'keys = ["k-one", "k-two", "k-three"]\n{extra}'))


def test_api_key_flags() -> None:
    mw = api_key()
    assert (mw.kind, mw.has_request, mw.is_async, mw.has_response) == ("api-key", True, False, False)


@pytest.mark.parametrize("headers", [[], [(b"X-API-Key", b"wrong")], [(b"X-API-Key", b"")],
                                     [(b"X-API-Key", b"k-one ")], [(b"Authorization", b"k-one")]])
def test_api_key_missing_or_wrong_is_401(headers: list[tuple[bytes, bytes]]) -> None:
    reply = api_key().request(request(headers=headers), 0.0)
    assert reply is not None and reply.status == 401
    assert reply.headers == [(b"Content-Type", JSON)]
    assert reply.body == b'{"error":"Invalid or missing API key"}'


@pytest.mark.parametrize("key", [b"k-one", b"k-two", b"k-three"])
def test_api_key_any_key_accepted_header_kept(key: bytes) -> None:
    req = request(headers=[(b"x-api-key", key)])
    assert api_key().request(req, 0.0) is None
    assert req.headers == [(b"x-api-key", key)] and not req.changed


def test_api_key_strip_header() -> None:
    req = request(headers=[(b"X-Api-Key", b"k-two"), (b"Accept", b"*/*")])
    assert api_key("strip_header = true").request(req, 0.0) is None
    assert req.headers == [(b"Accept", b"*/*")] and req.changed


def test_api_key_custom_header() -> None:
    mw = api_key('header = "X-Token"')
    assert mw.request(request(headers=[(b"X-API-Key", b"k-one")]), 0.0) is not None
    assert mw.request(request(headers=[(b"x-token", b"k-one")]), 0.0) is None


def test_api_key_compares_every_key_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    assert api_key().request(request(headers=[(b"X-API-Key", b"k-one")]), 0.0) is None
    assert len(calls) == 3


# ---------------------------------------------------------------------------------------------------------------
# htpasswd hashes
# ---------------------------------------------------------------------------------------------------------------


def test_apr1_published_vectors() -> None:
    # the Apache httpd documentation's example, and openssl passwd -apr1 outputs
    assert apr1(b"myPassword", b"r31.....") == b"$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"
    assert apr1(b"password", b"xxxxxxxx") == b"$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0"
    long = "a-very-long-password-of-more-than-sixteen-bytes-ü".encode()
    assert apr1(long, b"ab") == b"$apr1$ab$HvZqo.RVUxstvz6ZK.CoA/"


def test_apr1_matches_openssl() -> None:
    require_tool("openssl", "openssl")
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "./"
    for n in (0, 1, 15, 16, 17, 33):
        password = "".join(rng.choice(string.printable[:94]) for _ in range(n))
        salt = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        out = subprocess.run(["openssl", "passwd", "-apr1", "-salt", salt, "-stdin"], input=password.encode(),
                             capture_output=True, check=True).stdout.strip()
        if n == 0:  # openssl refuses an empty line on stdin on some versions
            continue
        assert apr1(password.encode(), salt.encode()) == out, (password, salt)


def _bcrypt(password: bytes, prefix: bytes) -> str:
    h = bcrypt.hashpw(password, bcrypt.gensalt(4))
    return (prefix + h[4:]).decode()


def _sha(password: bytes) -> str:
    return "{SHA}" + base64.b64encode(hashlib.sha1(password).digest()).decode()


USERS = {
    "b2a": ("pw-2a", lambda p: _bcrypt(p, b"$2a$")),
    "b2b": ("pw-2b", lambda p: _bcrypt(p, b"$2b$")),
    "b2y": ("pw-2y", lambda p: _bcrypt(p, b"$2y$")),
    "sha": ("pw:sha", _sha),
    "apr": ("myPassword", lambda p: "$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/"),
}


def htpasswd_lines() -> list[str]:
    return [f"{user}:{make(pw.encode())}" for user, (pw, make) in USERS.items()]


def basic(extra: str = "", lines: list[str] | None = None) -> BasicAuth:
    users = ", ".join(f'"{line}"' for line in (lines if lines is not None else htpasswd_lines()))
    hcl = f'username = "alice"\npassword = "s3cret:x"\nusers = [{users}]\n{extra}'
    return BasicAuth("m", "r", params("basic-auth", hcl))


def basic_header(user: str, password: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode()))]


def assert_401(reply: Reply | None, error: str, challenge: tuple[bytes, bytes] = CHALLENGE) -> None:
    assert reply is not None and reply.status == 401
    assert reply.headers == [(b"Content-Type", JSON), challenge]
    assert body(reply) == {"error": error}


# ---------------------------------------------------------------------------------------------------------------
# basic-auth
# ---------------------------------------------------------------------------------------------------------------


def test_basic_flags() -> None:
    mw = basic()
    assert (mw.kind, mw.has_request, mw.is_async, mw.has_response) == ("basic-auth", True, True, False)


@pytest.mark.parametrize("value", [None, b"Bearer abc", b"Digest x", b"Basicabc", b""])
async def test_basic_missing_credentials(value: bytes | None) -> None:
    headers = [] if value is None else [(b"Authorization", value)]
    assert_401(await basic().request_async(request(headers=headers), 0.0), "Missing credentials")


@pytest.mark.parametrize(
    "token",
    [
        b"!!!!",  # not base64
        b"YWxpY2U6czNjcmV0Ong",  # missing padding
        b"YWxpY2U6czNjcmV0Ong=\n",  # trailing junk
        b"YWxp Y2U6czNjcmV0Ong=",  # space inside
        b"YWxpY2U6czNjcmV0Onh=",  # non-canonical trailing bits (canonical: "Ong=")
        base64.b64encode(b"alice"),  # no colon
        base64.b64encode(b"alice:wrong"),
        base64.b64encode(b"bob:s3cret:x"),  # unknown user
        base64.b64encode(b"alice:s3cret"),  # split at the first colon: password is "s3cret:x"
        base64.b64encode(b":s3cret:x"),
        b"",
    ],
)
async def test_basic_invalid_credentials(token: bytes) -> None:
    req = request(headers=[(b"Authorization", b"Basic " + token)])
    assert_401(await basic().request_async(req, 0.0), "Invalid credentials")


@pytest.mark.parametrize("scheme", [b"Basic", b"basic", b"BASIC"])
async def test_basic_plain_user_scheme_case_insensitive(scheme: bytes) -> None:
    value = scheme + b" " + base64.b64encode(b"alice:s3cret:x")
    req = request(headers=[(b"authorization", value)])
    assert await basic().request_async(req, 0.0) is None
    assert req.headers == [(b"authorization", value)] and not req.changed


@pytest.mark.parametrize("user", sorted(USERS))
async def test_basic_htpasswd_hash_types(user: str) -> None:
    mw = basic()
    password = USERS[user][0]
    assert await mw.request_async(request(headers=basic_header(user, password)), 0.0) is None
    assert_401(await mw.request_async(request(headers=basic_header(user, password + "x")), 0.0),
               "Invalid credentials")
    # the synchronous path agrees
    assert basic().request(request(headers=basic_header(user, password)), 0.0) is None
    assert_401(basic().request(request(headers=basic_header(user, "nope")), 0.0), "Invalid credentials")


async def test_basic_users_file(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("# comment\n\n" + "\n".join(htpasswd_lines()) + "\n")
    mw = BasicAuth("m", "r", params("basic-auth", f'users_file = "{path}"'))
    for user, (password, _) in USERS.items():
        assert await mw.request_async(request(headers=basic_header(user, password)), 0.0) is None
    assert_401(await mw.request_async(request(headers=basic_header("alice", "s3cret:x")), 0.0), "Invalid credentials")


async def test_basic_first_definition_wins() -> None:
    mw = basic(lines=[f"alice:{_sha(b'other')}"])
    assert await mw.request_async(request(headers=basic_header("alice", "s3cret:x")), 0.0) is None
    assert await mw.request_async(request(headers=basic_header("alice", "other")), 0.0) is not None


async def test_basic_realm_and_remove_header() -> None:
    mw = basic('realm = "Staff only"\nremove_header = true')
    assert_401(await mw.request_async(request(), 0.0), "Missing credentials",
               (b"WWW-Authenticate", b'Basic realm="Staff only", charset="UTF-8"'))
    req = request(headers=[*basic_header("alice", "s3cret:x"), (b"Accept", b"*/*")])
    assert await mw.request_async(req, 0.0) is None
    assert req.headers == [(b"Accept", b"*/*")] and req.changed


async def test_basic_bcrypt_runs_off_loop_and_success_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        threads.append(threading.get_ident())
        return real(password, hashed)

    monkeypatch.setattr(auth.bcrypt, "checkpw", spy)
    mw = basic()
    ok = basic_header("b2b", "pw-2b")
    assert await mw.request_async(request(headers=ok), 100.0) is None
    assert threads and threads[0] != threading.get_ident()
    assert await mw.request_async(request(headers=ok), 100.0 + 299.0) is None
    assert len(threads) == 1  # cached
    assert await mw.request_async(request(headers=ok), 100.0 + 300.0) is None
    assert len(threads) == 2  # expired after 5 minutes, verified again
    # failures are not cached
    bad = basic_header("b2b", "wrong")
    for _ in range(2):
        assert await mw.request_async(request(headers=bad), 500.0) is not None
    assert len(threads) == 4


async def test_basic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "CACHE_SIZE", 2)
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return real(password, hashed)

    monkeypatch.setattr(auth.bcrypt, "checkpw", spy)
    mw = basic()
    for user in ("b2a", "b2b", "b2y"):
        assert await mw.request_async(request(headers=basic_header(user, USERS[user][0])), 0.0) is None
    assert len(mw._cache) == 2
    assert await mw.request_async(request(headers=basic_header("b2y", "pw-2y")), 1.0) is None
    assert len(calls) == 3  # newest entry still cached
    assert await mw.request_async(request(headers=basic_header("b2a", "pw-2a")), 1.0) is None
    assert len(calls) == 4  # oldest was evicted


def test_parse_htpasswd_rejects_unknown_hashes() -> None:
    assert auth.parse_htpasswd("u:plaintext") is None
    assert auth.parse_htpasswd("u:$1$abc$def") is None
    assert auth.parse_htpasswd("nocolon") is None
    assert auth.parse_htpasswd("u:{SHA}short") is None
