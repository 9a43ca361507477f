"""Credential middlewares: ``api-key`` (SPEC §6.2) and ``basic-auth`` (SPEC §6.3).

Keys, users and hashes are parsed once when the instance is built (at each reload); a request does one header
lookup, one decode and one constant-time comparison. bcrypt runs in the default executor so the event loop never
spends ~100 ms on one password; successful verifications are cached for five minutes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any, Final

import bcrypt

from .chain import Middleware, Reply, Request, json_reply

log = logging.getLogger("a3s_gateway.middleware.auth")

_API_KEY_ERROR: Final = {"error": "Invalid or missing API key"}
_MISSING: Final = {"error": "Missing credentials"}
_INVALID: Final = {"error": "Invalid credentials"}
_AUTHORIZATION: Final = b"Authorization"
CACHE_TTL: Final = 300.0
CACHE_SIZE: Final = 10_000


class ApiKey(Middleware):
    """``api-key``: the key header must equal one of ``keys``; every key is compared, in constant time."""

    kind = "api-key"
    has_request = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        self.header: bytes = params["header"].encode("latin-1")
        # Comparing fixed-length digests hides the key lengths too; every digest is compared, no early exit.
        self._digests = tuple(hashlib.sha256(k.encode("utf-8")).digest() for k in params["keys"])
        self._strip: bool = params["strip_header"]

    def request(self, req: Request, now: float) -> Reply | None:
        value = req.get(self.header)
        if value is None:
            return json_reply(401, _API_KEY_ERROR)
        digest = hashlib.sha256(value).digest()
        match = False
        for key in self._digests:
            match |= hmac.compare_digest(digest, key)
        if not match:
            return json_reply(401, _API_KEY_ERROR)
        req.api_key = value  # a token-limit key (SPEC §16.4)
        if self._strip:
            req.remove(self.header)
        return None


# ---------------------------------------------------------------------------------------------------------------
# htpasswd hashes
# ---------------------------------------------------------------------------------------------------------------

_ITOA64: Final = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_APR1_MAGIC: Final = b"$apr1$"


def _to64(value: int, n: int) -> bytes:
    out = bytearray()
    for _ in range(n):
        out.append(_ITOA64[value & 0x3F])
        value >>= 6
    return bytes(out)


def apr1(password: bytes, salt: bytes) -> bytes:
    """Apache's MD5-crypt (``$apr1$<salt>$<hash>``), as in ``apr_md5_encode``: FreeBSD md5crypt, another magic."""
    salt = salt[:8]
    alt = hashlib.md5(password + salt + password).digest()
    ctx = hashlib.md5(password + _APR1_MAGIC + salt)
    n = len(password)
    while n > 0:
        ctx.update(alt[: min(16, n)])
        n -= 16
    n = len(password)
    while n:
        ctx.update(b"\0" if n & 1 else password[:1])
        n >>= 1
    final = ctx.digest()
    for i in range(1000):
        step = hashlib.md5(password if i & 1 else final)
        if i % 3:
            step.update(salt)
        if i % 7:
            step.update(password)
        step.update(final if i & 1 else password)
        final = step.digest()
    f = final
    encoded = b"".join(
        (
            _to64((f[0] << 16) | (f[6] << 8) | f[12], 4),
            _to64((f[1] << 16) | (f[7] << 8) | f[13], 4),
            _to64((f[2] << 16) | (f[8] << 8) | f[14], 4),
            _to64((f[3] << 16) | (f[9] << 8) | f[15], 4),
            _to64((f[4] << 16) | (f[10] << 8) | f[5], 4),
            _to64(f[11], 2),
        )
    )
    return _APR1_MAGIC + salt + b"$" + encoded


class _User:
    """One user's verifier: ``kind`` is ``plain``, ``sha``, ``apr1`` or ``bcrypt``."""

    __slots__ = ("kind", "salt", "secret")

    def __init__(self, kind: str, secret: bytes, salt: bytes = b"") -> None:
        self.kind = kind
        self.secret = secret
        self.salt = salt

    @property
    def slow(self) -> bool:
        """True when verification must leave the event loop (bcrypt, which releases the GIL).

        apr1 (~0.7 ms) stays inline: its 1,000 small MD5 rounds hold the GIL, so a thread would not free the loop.
        """
        return self.kind == "bcrypt"

    def check(self, password: bytes) -> bool:
        """Whether ``password`` matches (constant-time comparison of equal-length values)."""
        if self.kind == "plain":
            return hmac.compare_digest(hashlib.sha256(password).digest(), self.secret)
        if self.kind == "sha":
            return hmac.compare_digest(hashlib.sha1(password).digest(), self.secret)
        if self.kind == "apr1":
            return hmac.compare_digest(apr1(password, self.salt), self.secret)
        try:
            return bcrypt.checkpw(password, self.secret)
        except ValueError:  # bcrypt refuses NUL bytes in the password
            return False


def parse_htpasswd(line: str) -> tuple[str, _User] | None:
    """``user:hash`` with a bcrypt, ``{SHA}`` or ``$apr1$`` hash; None for anything else (validation reported it)."""
    user, sep, digest = line.partition(":")
    if not sep or not user:
        return None
    raw = digest.encode("ascii", "replace")
    if raw.startswith((b"$2a$", b"$2b$", b"$2y$")) and len(raw) == 60:
        return user, _User("bcrypt", raw)
    if raw.startswith(b"{SHA}"):
        try:
            sha = base64.b64decode(raw[5:], validate=True)
        except binascii.Error:
            return None
        return (user, _User("sha", sha)) if len(sha) == 20 else None
    if raw.startswith(_APR1_MAGIC):
        salt, dollar, _ = raw[len(_APR1_MAGIC) :].partition(b"$")
        return (user, _User("apr1", raw, salt)) if dollar and 0 < len(salt) <= 8 else None
    return None


def _strict_b64(data: bytes) -> bytes | None:
    """Standard base64 with padding and canonical trailing bits, else None."""
    try:
        out = base64.b64decode(data, validate=True)
    except binascii.Error:
        return None
    return out if base64.b64encode(out) == data else None


class BasicAuth(Middleware):
    """``basic-auth``: ``Authorization: Basic`` checked against plain, bcrypt, ``{SHA}`` and ``$apr1$`` users."""

    kind = "basic-auth"
    has_request = True
    is_async = True  # bcrypt verification runs in the executor

    def __init__(self, name: str, router: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, router)
        users: dict[bytes, _User] = {}
        # The first definition of a user wins, as in an htpasswd file: username/password, users, users_file.
        if params.get("username") is not None and params.get("password") is not None:
            secret = hashlib.sha256(params["password"].encode("utf-8")).digest()
            users[params["username"].encode("utf-8")] = _User("plain", secret)
        lines = list(params.get("users") or ())
        path = params.get("users_file") or ""
        if path:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines += [s for s in (raw.strip() for raw in f) if s and not s.startswith("#")]
        for line in lines:
            parsed = parse_htpasswd(line)
            if parsed is None:
                log.warning("ignored invalid htpasswd entry", extra={"fields": {"router": router, "middleware": name}})
                continue
            users.setdefault(parsed[0].encode("utf-8"), parsed[1])
        self._users = users
        # Unknown users are compared against this so the answer takes as long as for a known plain-text user.
        self._dummy = _User("plain", hashlib.sha256(b"\0").digest())
        realm = str(params["realm"]).replace("\\", "\\\\").replace('"', '\\"')
        self._challenge = ((b"WWW-Authenticate", f'Basic realm="{realm}", charset="UTF-8"'.encode()),)
        self._remove: bool = bool(params["remove_header"])
        self._cache: dict[bytes, float] = {}  # SHA-256 of the credentials -> expiry (monotonic)

    def _parse(self, req: Request) -> tuple[bytes, bytes, bytes] | Reply:
        """(cache key, user, password) from the Authorization header, or the 401 reply."""
        value = req.get(_AUTHORIZATION)
        if value is None:
            return json_reply(401, _MISSING, self._challenge)
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"basic":
            return json_reply(401, _MISSING, self._challenge)
        decoded = _strict_b64(token.strip(b" "))
        if decoded is None or b":" not in decoded:
            return json_reply(401, _INVALID, self._challenge)
        user, _, password = decoded.partition(b":")
        return hashlib.sha256(decoded).digest(), user, password

    def _cached(self, key: bytes, now: float) -> bool:
        expiry = self._cache.get(key)
        if expiry is None:
            return False
        if now < expiry:
            return True
        del self._cache[key]
        return False

    def _remember(self, key: bytes, now: float) -> None:
        """Cache a successful verification for CACHE_TTL from now (a hit does not extend it)."""
        cache = self._cache
        if len(cache) >= CACHE_SIZE:
            del cache[next(iter(cache))]  # oldest insertion first
        cache[key] = now + CACHE_TTL

    def request(self, req: Request, now: float) -> Reply | None:
        """Synchronous check (bcrypt inline) for callers that cannot await; the proxy uses ``request_async``."""
        parsed = self._parse(req)
        if isinstance(parsed, Reply):
            return parsed
        key, user, password = parsed
        if not self._cached(key, now):
            entry = self._users.get(user)
            ok = (entry or self._dummy).check(password)
            if entry is None or not ok:
                return json_reply(401, _INVALID, self._challenge)
            self._remember(key, now)
        if self._remove:
            req.remove(_AUTHORIZATION)
        return None

    async def request_async(self, req: Request, now: float) -> Reply | None:
        parsed = self._parse(req)
        if isinstance(parsed, Reply):
            return parsed
        key, user, password = parsed
        if not self._cached(key, now):
            entry = self._users.get(user)
            if entry is None:
                self._dummy.check(password)
                return json_reply(401, _INVALID, self._challenge)
            if entry.slow:
                ok = await asyncio.get_running_loop().run_in_executor(None, entry.check, password)
            else:
                ok = entry.check(password)
            if not ok:
                return json_reply(401, _INVALID, self._challenge)
            self._remember(key, now)
        if self._remove:
            req.remove(_AUTHORIZATION)
        return None
