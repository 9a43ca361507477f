"""The ACME protocol for one account, through certbot's ``acme`` library (JWS, nonces, the order state machine):
blocking calls, run by the manager in a thread executor, never on the event loop.

What this module adds is the gateway's policy: ECDSA P-256 keys, the account kept in the storage, the CA's
``Retry-After`` remembered for rate-limit errors, and errors a user can act on (:class:`AcmeFailure`: the domain,
the challenge type and the CA's problem detail).
"""

from __future__ import annotations

import datetime
import email.utils
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
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
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


class AcmeAccount:
    """One account (one storage directory and one CA directory URL). Every method blocks: call it in a thread.

    ``publish(domain, token, key_authorization)`` makes an HTTP-01 answer visible on every plain HTTP entrypoint
    (of every worker) before it returns; ``withdraw(token)`` removes it.
    """

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

    def issue(self, domain: str, publish: Callable[[str, str, str], None],
              withdraw: Callable[[str], None]) -> tuple[bytes, bytes]:
        """Order, validate (HTTP-01) and download a certificate for ``domain``: (full chain PEM, key PEM)."""
        with self._lock:
            try:
                return self._issue(domain, publish, withdraw)
            except AcmeFailure:
                raise
            except messages.Error as exc:
                self._client = None  # a fresh directory and nonce next time
                raise self._failure(domain, exc) from exc
            except errors.ValidationError as exc:
                raise AcmeFailure(domain, "http-01", _validation_detail(exc)) from exc
            except errors.IssuanceError as exc:
                raise self._failure(domain, exc.error) from exc
            except errors.TimeoutError as exc:
                raise AcmeFailure(domain, "http-01", f"the CA did not finish within {ORDER_DEADLINE:.0f}s") from exc
            except (requests.RequestException, errors.Error, OSError, ValueError) as exc:
                self._client = None
                raise AcmeFailure(domain, "http-01", f"{type(exc).__name__}: {exc}") from exc

    def _failure(self, domain: str, error: messages.Error) -> AcmeFailure:
        detail = f"{error.typ}: {error.detail or error.title or ''}".rstrip(": ")
        if error.typ != RATE_LIMITED:
            return AcmeFailure(domain, "http-01", detail)
        header = self._net.retry_after if self._net is not None else None
        retry_at = header or retry_at_from_detail(error.detail or "")
        return AcmeFailure(domain, "http-01", detail, rate_limited=True, retry_at=retry_at)

    def _issue(self, domain: str, publish: Callable[[str, str, str], None],
               withdraw: Callable[[str], None]) -> tuple[bytes, bytes]:
        acme = self._connect()
        net = self._net
        assert net is not None and net.key is not None
        key_pem = new_key_pem()
        csr = acme_crypto.make_csr(key_pem, [domain])
        order = acme.new_order(csr)
        published: list[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # authorised recently: the CA reuses it
                challenge = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)),
                                 None)
                if challenge is None:
                    raise AcmeFailure(domain, "http-01", "the CA offered no http-01 challenge")
                response, validation = challenge.response_and_validation(net.key)
                token = challenge.chall.encode("token")
                publish(domain, token, validation)
                published.append(token)
                acme.answer_challenge(challenge, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_DEADLINE)
            order = acme.poll_and_finalize(order, deadline)
        finally:
            for token in published:
                withdraw(token)
        if not order.fullchain_pem:
            raise AcmeFailure(domain, "http-01", "the CA returned no certificate")
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
