"""The ACME protocol for one account, through certbot's ``acme`` library (JWS, nonces, the order state machine):
blocking calls, run by the manager in a thread executor, never on the event loop.

What this module adds is the gateway's policy: ECDSA P-256 keys, the account kept in the storage, the CA's
``Retry-After`` remembered for rate-limit errors, and errors a user can act on (:class:`AcmeFailure`: the domain,
the challenge type and the CA's problem detail).
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import logging
import re
import ssl
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import requests
from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from .._version import __version__
from .store import Storage, new_key_pem

log: Final = logging.getLogger("a3s_gateway.acme")

RATE_LIMITED: Final = "urn:ietf:params:acme:error:rateLimited"
ORDER_DEADLINE: Final = 90.0  # seconds for the CA to validate and issue one order
NETWORK_TIMEOUT: Final = 30
# Let's Encrypt names the time in the problem detail too: "... retry after 2024-05-01 12:00:00 UTC ..."
_RETRY_AFTER_TEXT: Final = re.compile(r"retry after (\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d)", re.IGNORECASE)


class AcmeFailure(Exception):
    """An order that did not give a certificate. ``retry_at`` (epoch seconds) is set when the CA named a time
    (rate limits); ``detail`` is the CA's problem detail or the transport error."""

    def __init__(self, domain: str, challenge: str, detail: str, *, rate_limited: bool = False,
                 retry_at: float | None = None) -> None:
        super().__init__(f"{domain}: {challenge}: {detail}")
        self.domain = domain
        self.challenge = challenge
        self.detail = detail
        self.rate_limited = rate_limited
        self.retry_at = retry_at


class _Network(client.ClientNetwork):
    """ClientNetwork that verifies the CA against ``verify`` (a CA bundle path or True) and remembers the
    ``Retry-After`` of the last error response (the library's Error objects do not carry it)."""

    def __init__(self, key: JWK, verify: str | bool) -> None:
        super().__init__(key, alg=ES256, user_agent=f"a3s-gateway/{__version__}", timeout=NETWORK_TIMEOUT)
        self.verify_ssl = verify  # type: ignore[assignment]  # requests takes a bundle path as well
        self.retry_after: float | None = None

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        response = super()._send_request(method, url, *args, **kwargs)
        if not response.ok:
            self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return response


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header (seconds or an HTTP date) as epoch seconds; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        base = datetime.datetime.now(datetime.timezone.utc).timestamp() if now is None else now
        return base + int(value)
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def retry_at_from_detail(detail: str) -> float | None:
    """The time named in a rate-limit problem detail ("retry after 2024-05-01 12:00:00 UTC"), epoch seconds."""
    found = _RETRY_AFTER_TEXT.search(detail)
    if found is None:
        return None
    text = found.group(1).replace("T", " ")
    stamp = datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def trust_bundle(ca_file: str) -> str | bool:
    """What requests verifies the CA with: the system trust plus ``ca_file`` (SPEC §10.1 "extra PEM trust") as
    one temporary bundle, or True (the system trust) without ``ca_file``."""
    if not ca_file:
        return True
    parts: list[bytes] = []
    paths = ssl.get_default_verify_paths()
    for system in (paths.cafile, paths.openssl_cafile):
        if system and Path(system).is_file():
            parts.append(Path(system).read_bytes())
            break
    parts.append(Path(ca_file).read_bytes())
    bundle = tempfile.NamedTemporaryFile(prefix="a3s-acme-ca-", suffix=".pem", delete=False)
    with bundle:
        bundle.write(b"\n".join(parts))
    return bundle.name


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The tls-alpn-01 response (RFC 8737; the ``acme`` library dropped its own class in 3.0): an empty object."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """The tls-alpn-01 challenge; its validation is the key authorization, which the challenge certificate's
    acmeIdentifier extension carries the SHA-256 of (:func:`alpn_certificate`)."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused: Any) -> str:
        return self.key_authorization(account_key)


#: the challenge classes by SPEC name; the validation each yields: http-01 the key authorization (served at
#: /.well-known/acme-challenge/<token>), tls-alpn-01 the key authorization, dns-01 the TXT record value
CHALLENGES: Final[dict[str, type[challenges.KeyAuthorizationChallenge]]] = {
    "http-01": challenges.HTTP01, "tls-alpn-01": TLSALPN01, "dns-01": challenges.DNS01}

ACME_IDENTIFIER: Final = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier (RFC 8737 §6.1)

Publish = Callable[[str, str, str, str], None]
Withdraw = Callable[[str, str, str, str], None]


def alpn_certificate(domain: str, key_authorization: str) -> tuple[bytes, bytes]:
    """The tls-alpn-01 challenge certificate of ``domain`` (RFC 8737 §3): self-signed, the domain as its only SAN,
    the critical acmeIdentifier extension holding the SHA-256 of ``key_authorization``; (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a3s-gateway tls-alpn-01")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class AcmeAccount:
    """One account (one storage directory and one CA directory URL). Every method blocks: call it in a thread."""

    def __init__(self, storage: Storage, directory_url: str, email: str, ca_file: str = "") -> None:
        self.storage = storage
        self.directory_url = directory_url
        self.email = email
        self.ca_file = ca_file
        self._lock = threading.Lock()  # one order at a time per account: the library's nonce pool is not shared
        self._client: client.ClientV2 | None = None
        self._net: _Network | None = None
        self._verify: str | bool | None = None

    def _connect(self) -> client.ClientV2:
        """The client with a registered account: the stored registration when it is for this CA, else a new one."""
        if self._client is not None:
            return self._client
        if self._verify is None:
            self._verify = trust_bundle(self.ca_file)
        key = serialization.load_pem_private_key(self.storage.account_key(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.storage.path}/account.key is not an ECDSA key")
        jwk = JWKEC(key=key)
        net = _Network(jwk, self._verify)
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        stored = self.storage.account()
        if stored is not None and stored.get("directory") == self.directory_url and "regr" in stored:
            net.account = messages.RegistrationResource.from_json(stored["regr"])
        else:
            registration = messages.NewRegistration.from_data(email=self.email, terms_of_service_agreed=True)
            try:
                regr = acme.new_account(registration)
            except errors.ConflictError as exc:  # the key is known to the CA already: take its account URL
                regr = messages.RegistrationResource(uri=str(exc), body=registration)
                net.account = regr
            self.storage.save_account({"directory": self.directory_url, "regr": regr.to_json()})
            log.info("acme: registered account %s at %s", regr.uri, self.directory_url)
        self._client, self._net = acme, net
        return acme

    def issue(self, domain: str, kind: str, publish: Publish, withdraw: Withdraw) -> tuple[bytes, bytes]:
        """Order, validate (challenge ``kind``) and download a certificate for ``domain``: (full chain PEM, key
        PEM). ``publish(kind, name, token, validation)`` makes one answer visible to the CA before it returns;
        ``withdraw(kind, name, token, validation)`` removes it once the order is done."""
        with self._lock:
            try:
                return self._issue(domain, kind, publish, withdraw)
            except AcmeFailure:
                raise
            except messages.Error as exc:
                self._client = None  # a fresh directory and nonce next time
                raise self._failure(domain, kind, exc) from exc
            except errors.ValidationError as exc:
                raise AcmeFailure(domain, kind, _validation_detail(exc)) from exc
            except errors.IssuanceError as exc:
                raise self._failure(domain, kind, exc.error) from exc
            except errors.TimeoutError as exc:
                raise AcmeFailure(domain, kind, f"the CA did not finish within {ORDER_DEADLINE:.0f}s") from exc
            except (requests.RequestException, errors.Error, OSError, ValueError) as exc:
                self._client = None
                raise AcmeFailure(domain, kind, f"{type(exc).__name__}: {exc}") from exc

    def _failure(self, domain: str, kind: str, error: messages.Error) -> AcmeFailure:
        detail = f"{error.typ}: {error.detail or error.title or ''}".rstrip(": ")
        if error.typ != RATE_LIMITED:
            return AcmeFailure(domain, kind, detail)
        header = self._net.retry_after if self._net is not None else None
        retry_at = header or retry_at_from_detail(error.detail or "")
        return AcmeFailure(domain, kind, detail, rate_limited=True, retry_at=retry_at)

    def _issue(self, domain: str, kind: str, publish: Publish, withdraw: Withdraw) -> tuple[bytes, bytes]:
        acme = self._connect()
        net = self._net
        assert net is not None and net.key is not None
        wanted = CHALLENGES[kind]
        key_pem = new_key_pem()
        csr = acme_crypto.make_csr(key_pem, [domain])
        order = acme.new_order(csr)
        published: list[tuple[str, str, str]] = []
        try:
            answers = []
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # authorised recently: the CA reuses it
                challenge = next((c for c in authz.body.challenges if isinstance(c.chall, wanted)), None)
                if challenge is None:
                    raise AcmeFailure(domain, kind, f"the CA offered no {kind} challenge")
                response, validation = challenge.response_and_validation(net.key)
                name = authz.body.identifier.value  # a wildcard's authorization is for its base domain
                token = challenge.chall.encode("token")
                try:
                    publish(kind, name, token, validation)
                except Exception as exc:  # a DNS API or propagation failure: the user acts on its message
                    raise AcmeFailure(domain, kind, f"publishing the answer for {name} failed: {exc}") from exc
                published.append((name, token, validation))
                answers.append((challenge, response))
            for challenge, response in answers:  # every answer is in place before the CA looks (dns-01: one name)
                acme.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for name, token, validation in published:
                try:
                    withdraw(kind, name, token, validation)
                except Exception as exc:  # a record left behind must not hide the order's outcome
                    log.warning("acme: removing the %s answer for %s failed: %s", kind, name, exc)
        if not order.fullchain_pem:
            raise AcmeFailure(domain, kind, "the CA returned no certificate")
        return order.fullchain_pem.encode(), key_pem


def _validation_detail(exc: errors.ValidationError) -> str:
    """The CA's problem detail of each failed challenge."""
    parts = []
    for authz in exc.failed_authzrs:
        for challenge in authz.body.challenges:
            error = challenge.error
            if error is not None:
                parts.append(f"{error.typ}: {error.detail or ''}".rstrip(": "))
    return "; ".join(parts) or "validation failed"
