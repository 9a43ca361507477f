"""``jwt`` middleware (SPEC §6.1): bearer tokens verified with an HMAC secret, a PEM public key or a JWKS endpoint.

PyJWT parses the compact JWS and its algorithm objects verify the signature; keys are prepared for every accepted
algorithm when the instance is built (or when a JWKS arrives), so a request only looks a key up. The time claims
are compared here, in SPEC order, against an injectable wall clock (``now`` of the chain is monotonic).

A JWKS is fetched lazily (first request, or ``start()``), refreshed every ``jwks_refresh`` by the first request
after it is due, and at once when a token names an unknown ``kid`` (at most once per 30 s). Only one fetch runs at a
time; requests that need keys wait for it, the others keep using the previous key set.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import get_default_algorithms

from .._aio import cancel_and_wait
from ..http.client import FetchError, Target, fetch
from .chain import Middleware, Reply, Request, json_reply

log = logging.getLogger("a3s_gateway.middleware.jwt")

MALFORMED: Final = "malformed token"
ALG_NOT_ALLOWED: Final = "algorithm not allowed"
UNKNOWN_KEY: Final = "unknown key"
BAD_SIGNATURE: Final = "invalid signature"
EXPIRED: Final = "token expired"
NOT_YET_VALID: Final = "token not yet valid"
MISSING_EXP: Final = "missing exp"
BAD_ISSUER: Final = "invalid issuer"
BAD_AUDIENCE: Final = "invalid audience"

KID_REFRESH_INTERVAL: Final = 30.0  # an unknown kid refreshes the JWKS at most this often
JWKS_RETRY: Final = 5.0  # after a failed fetch (also the Retry-After of the 503)
JWKS_TIMEOUT: Final = 10.0  # one whole JWKS fetch

_MISSING_TOKEN: Final = {"error": "Missing token"}
_MISSING_HEADERS: Final = ((b"WWW-Authenticate", b'Bearer realm="a3s-gateway"'),)
_UNAVAILABLE: Final = {"error": "Authentication keys unavailable"}
_UNAVAILABLE_HEADERS: Final = ((b"Retry-After", b"5"),)
_BEARER: Final = b"bearer "
_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_JWS: Final = jwt.PyJWS()
_ALGORITHMS: Final = get_default_algorithms()


def _invalid(description: str) -> Reply:
    challenge = f'Bearer realm="a3s-gateway", error="invalid_token", error_description="{description}"'
    return json_reply(401, {"error": f"Invalid token: {description}"}, ((b"WWW-Authenticate", challenge.encode()),))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _header_value(value: Any) -> bytes | None:
    """A claim as a header value: strings as-is, other JSON compact; None if it would break the header line."""
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if _CONTROL.search(raw):
            return None  # CR/LF would inject headers upstream: treated as an absent claim
        return raw
    return orjson.dumps(value)


class KeySet:
    """Prepared verification keys: by ``kid`` then algorithm, and by algorithm alone (tokens without ``kid``)."""

    __slots__ = ("by_alg", "by_kid")

    def __init__(self) -> None:
        self.by_kid: dict[str, dict[str, list[Any]]] = {}
        self.by_alg: dict[str, list[Any]] = {}

    def add(self, key: Any, algorithms: list[str], kid: str | None) -> None:
        """Add ``key`` for each of ``algorithms`` it fits (RSA for RS/PS, the right curve for ES…)."""
        slot = self.by_kid.setdefault(kid, {}) if kid is not None else None
        for alg in algorithms:
            algorithm = _ALGORITHMS.get(alg)
            if algorithm is None or alg.startswith("HS"):
                continue
            try:
                prepared = algorithm.prepare_key(key)
            except (jwt.PyJWTError, TypeError, ValueError):
                continue  # this key cannot verify that algorithm
            self.by_alg.setdefault(alg, []).append(prepared)
            if slot is not None:
                slot.setdefault(alg, []).append(prepared)


def load_public_key(path: str) -> Any:
    """The public key of a PEM public key (SPKI or PKCS#1) or certificate file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"{path}: cannot load the public key: {exc}") from exc


def parse_jwks(body: bytes, algorithms: list[str]) -> KeySet:
    """A JWK set document → KeySet; keys that are unusable (private, symmetric, unknown type) are skipped."""
    doc = orjson.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK set: expected an object with a "keys" array')
    keys = KeySet()
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or "d" in jwk or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, TypeError, ValueError, KeyError):
            continue
        only = jwk.get("alg")
        kid = jwk.get("kid")
        keys.add(key, algorithms if only is None else [a for a in algorithms if a == only],
                 kid if isinstance(kid, str) else None)
    return keys


class _Token:
    __slots__ = ("alg", "claims", "kid", "signature", "signing_input")

    def __init__(self, alg: str, kid: str | None, signing_input: bytes, signature: bytes,
                 claims: dict[str, Any]) -> None:
        self.alg = alg
        self.kid = kid
        self.signing_input = signing_input
        self.signature = signature
        self.claims = claims


class Jwt(Middleware):
    """``jwt``: verifies the bearer token, then forwards selected claims as request headers."""

    kind = "jwt"
    has_request = True

    def __init__(self, name: str, router: str, params: Mapping[str, Any], *,
                 clock: Callable[[], float] = time.time, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(name, router)
        self._clock = clock
        algorithms = [a for a in params["algorithms"] if a.lower() != "none"]
        self._algorithms = frozenset(algorithms)
        self._header: bytes = params["header"].encode("latin-1")
        self._is_authorization = self._header.lower() == b"authorization"
        self._issuer: str = params["issuer"]
        audience = params["audience"]
        self._audience = frozenset((audience,) if isinstance(audience, str) else audience)
        self._leeway = float(params["leeway"])
        self._require_exp = bool(params["require_exp"])
        claims = params["forward_claims"]
        self._forward = tuple((claim, header.encode("latin-1")) for claim, header in claims.items())
        self._keys: KeySet | None = None
        self._target: Target | None = None
        if params.get("value") is not None:
            # The configured secret is an HMAC key by definition: used as bytes, without PyJWT's prepare_key (which
            # refuses PEM-looking secrets to stop algorithm confusion, impossible here: HS* only with `value`).
            self._keys = KeySet()
            secret = params["value"].encode("utf-8")
            for alg in algorithms:
                if alg.startswith("HS"):
                    self._keys.by_alg[alg] = [secret]
        elif params.get("public_key_file"):
            self._keys = KeySet()
            self._keys.add(load_public_key(params["public_key_file"]), algorithms, None)
        else:
            self._target = Target(params["jwks_url"], ssl_context)
            self.is_async = True
        self._algorithm_list = algorithms
        self._refresh = float(params["jwks_refresh"])
        self._task: asyncio.Task[None] | None = None
        self._next_fetch = -math.inf  # monotonic time of the next periodic refresh or retry
        self._last_kid_refresh = -math.inf

    # -- token checks --------------------------------------------------------------------------------------------

    def _token(self, req: Request) -> _Token | Reply:
        """Extraction, structure and ``alg`` checks."""
        value = req.get(self._header)
        if value is None:
            return json_reply(401, _MISSING_TOKEN, _MISSING_HEADERS)
        value = value.strip(b" \t")
        if value[:7].lower() == _BEARER:
            value = value[7:].strip(b" \t")
        elif value.lower() == b"bearer":
            value = b""
        if not value:
            return json_reply(401, _MISSING_TOKEN, _MISSING_HEADERS)
        try:
            parts = _JWS.decode_complete(value, options={"verify_signature": False})
            claims = orjson.loads(parts["payload"])
        except (jwt.PyJWTError, orjson.JSONDecodeError):
            return _invalid(MALFORMED)
        header = parts["header"]
        kid = header.get("kid")
        if not isinstance(claims, dict) or (kid is not None and not isinstance(kid, str)):
            return _invalid(MALFORMED)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return _invalid(ALG_NOT_ALLOWED)
        return _Token(alg, kid, value.rpartition(b".")[0], parts["signature"], claims)

    def _candidates(self, keys: KeySet, tok: _Token) -> list[Any] | None:
        if tok.kid is not None and self._target is not None:
            by_alg = keys.by_kid.get(tok.kid)
            return by_alg.get(tok.alg) if by_alg is not None else None
        return keys.by_alg.get(tok.alg)

    def _finish(self, req: Request, tok: _Token, candidates: list[Any] | None) -> Reply | None:
        """Signature, time, issuer and audience checks; on success the claims are forwarded."""
        if not candidates:
            return _invalid(UNKNOWN_KEY)
        algorithm = _ALGORITHMS[tok.alg]
        for key in candidates:
            try:
                if algorithm.verify(tok.signing_input, key, tok.signature):
                    break
            except (ValueError, TypeError):
                continue
        else:
            return _invalid(BAD_SIGNATURE)
        problem = self._check_claims(tok.claims)
        if problem is not None:
            return _invalid(problem)
        req.claims = tok.claims  # a token-limit key (SPEC §16.4)
        for claim, header in self._forward:
            value = tok.claims.get(claim)
            encoded = None if value is None and claim not in tok.claims else _header_value(value)
            if encoded is None:
                req.remove(header)
            else:
                req.set(header, encoded)
        return None

    def _check_claims(self, claims: dict[str, Any]) -> str | None:
        now = self._clock()
        if "exp" in claims:
            exp = claims["exp"]
            if not _is_number(exp):
                return MALFORMED
            if now > exp + self._leeway:
                return EXPIRED
        elif self._require_exp:
            return MISSING_EXP
        if "nbf" in claims:
            nbf = claims["nbf"]
            if not _is_number(nbf):
                return MALFORMED
            if now < nbf - self._leeway:
                return NOT_YET_VALID
        if self._issuer and claims.get("iss") != self._issuer:
            return BAD_ISSUER
        if self._audience:
            aud = claims.get("aud")
            if isinstance(aud, str):
                aud = [aud]
            if not isinstance(aud, list) or not any(isinstance(a, str) and a in self._audience for a in aud):
                return BAD_AUDIENCE
        return None

    # -- request phase -------------------------------------------------------------------------------------------

    def request(self, req: Request, now: float) -> Reply | None:
        """Verify with the keys at hand (a JWKS instance never fetches here: the proxy awaits ``request_async``)."""
        tok = self._token(req)
        if isinstance(tok, Reply):
            return tok
        keys = self._keys
        if keys is None:
            return json_reply(503, _UNAVAILABLE, _UNAVAILABLE_HEADERS)
        return self._finish(req, tok, self._candidates(keys, tok))

    async def request_async(self, req: Request, now: float) -> Reply | None:
        if self._target is None:
            return self.request(req, now)
        tok = self._token(req)
        if isinstance(tok, Reply):
            return tok
        if now >= self._next_fetch:
            self._kick(now)
        if self._keys is None:
            await self._wait_fetch()
            if self._keys is None:
                return json_reply(503, _UNAVAILABLE, _UNAVAILABLE_HEADERS)
        if tok.kid is not None and tok.kid not in self._keys.by_kid:
            if self._task is None or self._task.done():
                if now - self._last_kid_refresh < KID_REFRESH_INTERVAL:
                    return _invalid(UNKNOWN_KEY)
                self._last_kid_refresh = now
                self._kick(now)
            await self._wait_fetch()
        assert self._keys is not None  # a key set is only ever replaced by another
        return self._finish(req, tok, self._candidates(self._keys, tok))

    # -- JWKS ----------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin the first JWKS fetch now instead of at the first request (no-op without ``jwks_url``)."""
        if self._target is not None and (self._task is None or self._task.done()):
            self._kick(asyncio.get_running_loop().time())

    def _kick(self, now: float) -> None:
        """Start a fetch unless one is running."""
        if self._task is None or self._task.done():
            self._next_fetch = math.inf  # set again when the fetch ends
            self._task = asyncio.get_running_loop().create_task(self._fetch(now))

    async def _wait_fetch(self) -> None:
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)  # a client leaving does not cancel the shared fetch

    async def _fetch(self, started: float) -> None:
        assert self._target is not None
        try:
            res = await asyncio.wait_for(
                fetch(self._target, b"GET", [(b"Accept", b"application/json")]), JWKS_TIMEOUT
            )
            if res.status != 200:
                raise FetchError(f"status {res.status}")
            keys = parse_jwks(res.body, self._algorithm_list)
        except (FetchError, asyncio.TimeoutError, ValueError) as exc:
            self._next_fetch = started + min(self._refresh, JWKS_RETRY)
            error = "timeout" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            log.warning("JWKS fetch failed", extra={"fields": self._fields(error)})
            return
        except Exception:  # a background task is a boundary: log with context, keep the previous keys, retry
            self._next_fetch = started + min(self._refresh, JWKS_RETRY)
            log.exception("JWKS fetch failed", extra={"fields": self._fields("internal error")})
            return
        self._keys = keys
        self._next_fetch = started + self._refresh

    def _fields(self, error: str) -> dict[str, Any]:
        url = self._target.url if self._target is not None else None
        return {"router": self.router, "middleware": self.name, "url": url, "error": error}

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
