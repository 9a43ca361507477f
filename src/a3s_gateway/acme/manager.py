"""The ACME manager (SPEC §10.4): which domains each ACME entrypoint needs, their stored certificates, issuance of
the missing ones in the background, renewal, and the hand-over of certificates and HTTP-01 answers to the data
plane through an :class:`AcmeHost` (the Gateway).

One certificate per domain, stored under ``acme_storage_path``. At start (and on every reload) the stored
certificates are loaded and installed at once; a domain without a valid one is ordered in the background while the
entrypoint serves its default (self-signed) certificate. A certificate is renewed when fewer than 30 days remain
(checked every 12 h); a failed order is retried hourly, or at the time a rate-limiting CA names. The ``acme``
library blocks: its calls run in a thread, the HTTP-01 answers they publish come back to the loop.

Time is the ``clock`` parameter (epoch seconds); the intervals are the manager's attributes, so tests shorten them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from ..routing import rules

if TYPE_CHECKING:
    from ..config.model import GatewayConfig, TlsConfig
    from .client import AcmeAccount
    from .dns import DnsProvider
    from .store import Storage, StoredCert

log: Final = logging.getLogger("a3s_gateway.acme")

RENEW_BEFORE: Final = 30 * 86400.0  # renew when fewer than 30 days remain
CHECK_EVERY: Final = 12 * 3600.0  # renewal check
RETRY_EVERY: Final = 3600.0  # after a failed order
PUBLISH_TIMEOUT: Final = 30.0  # for an HTTP-01 answer to reach every process


class AcmeHost(Protocol):
    """What the manager drives (the Gateway): certificates per entrypoint, and the HTTP-01 answers it serves."""

    def install_certificates(self, entrypoint: str, pairs: list[tuple[str, str]]) -> None:
        """Serve ``pairs`` ((cert_file, key_file) of the issued certificates) on ``entrypoint`` for new handshakes."""
        ...

    async def publish_challenges(self) -> None:
        """Return once the HTTP-01 answers (token table) and TLS-ALPN-01 certificates (alpn table) are served by
        every process."""
        ...


@dataclass(frozen=True, slots=True)
class Site:
    """One ACME entrypoint: where its account and certificates live and which domains it serves."""

    entrypoint: str
    storage_path: str
    directory_url: str
    email: str
    ca_file: str
    challenge: str
    domains: tuple[str, ...]
    dns_provider: str = ""
    dns_resolvers: tuple[str, ...] = ()

    @property
    def account_key(self) -> tuple[str, str]:
        return (self.storage_path, self.directory_url)


@dataclass(slots=True)
class _Domain:
    """The state of one domain of one account: its stored certificate and when to look at it next."""

    name: str
    stored: StoredCert | None = None
    next_at: float = 0.0
    failures: int = 0
    error: str = ""
    sites: set[str] = field(default_factory=set)


def sites_of(config: GatewayConfig) -> list[Site]:
    """The ACME entrypoints of ``config`` with their domains (``acme_domains``, else the literal ``Host()``
    arguments of the HTTP routers on the entrypoint, in configuration order)."""
    out = []
    for name, ep in config.entrypoints.items():
        tls = ep.tls
        if tls is None or not tls.acme:
            continue
        domains = tls.acme_domains or tuple(_router_hosts(config, name, ep.protocol))
        out.append(_site(name, tls, tuple(dict.fromkeys(d.lower().rstrip(".") for d in domains))))
    return out


def _site(name: str, tls: TlsConfig, domains: tuple[str, ...]) -> Site:
    return Site(name, tls.acme_storage_path, tls.acme_directory_url, tls.acme_email, tls.acme_ca_file,
                tls.challenge, domains, tls.dns_provider or "", tls.acme_dns_resolvers)


def _router_hosts(config: GatewayConfig, entrypoint: str, protocol: str) -> list[str]:
    hosts: list[str] = []
    for router in config.routers.values():
        if router.protocol != "http" or router.rule is None:
            continue
        if router.entrypoints and entrypoint not in router.entrypoints:
            continue
        if not router.entrypoints and protocol != "http":
            continue
        try:
            node = rules.parse_rule(router.rule)
        except rules.RuleError:
            continue
        hosts.extend(_literal_hosts(node))
    return [h for h in hosts if "*" not in h and "." in h]


def _literal_hosts(node: rules.Node) -> list[str]:
    """``Host()`` arguments outside negations: the names the router serves."""
    if isinstance(node, rules.Call):
        return list(node.args) if node.name == "Host" else []
    if isinstance(node, rules.Not):
        return []
    return [h for item in node.items for h in _literal_hosts(item)]


class AcmeManager:
    """Issues and renews the certificates of every ACME entrypoint; a control-plane component (the single process
    or the supervisor runs it; workers receive its results).

    ``tokens`` is the HTTP-01 table (``token`` → key authorization, as bytes) the plain HTTP entrypoints answer
    from; ``alpn`` the TLS-ALPN-01 table (domain → challenge certificate and key PEM) the ACME TLS entrypoints
    answer validation handshakes from. The manager fills them while a challenge is pending; dns-01 records go
    through the entrypoint's DNS provider (acme.dns).
    """

    def __init__(self, host: AcmeHost, tokens: dict[bytes, bytes],
                 alpn: dict[str, tuple[bytes, bytes]] | None = None, *,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.host = host
        self.tokens = tokens
        self.alpn: dict[str, tuple[bytes, bytes]] = {} if alpn is None else alpn
        self.clock: Callable[[], float] = clock or time.time
        self.renew_before = RENEW_BEFORE
        self.check_every = CHECK_EVERY
        self.retry_every = RETRY_EVERY
        #: orders placed (issued or failed); tests read it
        self.orders = 0
        self.sites: list[Site] = []
        self._domains: dict[tuple[str, str, str], _Domain] = {}  # (storage, directory, domain)
        self._accounts: dict[tuple[str, str], AcmeAccount] = {}
        self._storages: dict[str, Storage] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- configuration ---------------------------------------------------------------------------------------
    def configure(self, config: GatewayConfig) -> None:
        """Take the ACME entrypoints of ``config``: load their stored certificates (installed at once), forget the
        domains no entrypoint names any more (no renewal), and wake the background task for the rest."""
        self.sites = sites_of(config)
        wanted: dict[tuple[str, str, str], set[str]] = {}
        for site in self.sites:
            for domain in site.domains:
                wanted.setdefault((*site.account_key, domain), set()).add(site.entrypoint)
        for key in [k for k in self._domains if k not in wanted]:
            log.info("acme: %s is no longer configured; its certificate is not renewed", key[2])
            del self._domains[key]
        for key, entrypoints in wanted.items():
            state = self._domains.get(key)
            if state is None:
                state = self._domains[key] = _Domain(key[2])
                state.stored = self._storage(key[0]).load(key[2])
                if state.stored is not None:
                    log.info("acme: loaded the stored certificate of %s (valid until %s)", key[2],
                             _when(state.stored.not_after))
            state.sites = entrypoints
        if not any(site.domains for site in self.sites):
            for site in self.sites:
                log.warning("acme on entrypoint %s: no domain (set acme_domains or route Host(`...`) to it)",
                            site.entrypoint)
        self._install_all()
        self._wake.set()

    def start(self) -> None:
        """Start the background issuance/renewal task (in the running loop)."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def expiry(self) -> dict[tuple[str, str], float]:
        """``notAfter`` (epoch seconds) per (entrypoint, domain) of the certificates served."""
        out: dict[tuple[str, str], float] = {}
        for state in self._domains.values():
            if state.stored is not None:
                for entrypoint in state.sites:
                    out[(entrypoint, state.name)] = state.stored.not_after
        return out

    def _storage(self, path: str) -> Storage:
        from .store import Storage

        storage = self._storages.get(path)
        if storage is None:
            storage = self._storages[path] = Storage(path)
        return storage

    def _account(self, site: Site) -> AcmeAccount:
        from .client import AcmeAccount

        account = self._accounts.get(site.account_key)
        if account is None or (account.email, account.ca_file) != (site.email, site.ca_file):
            account = AcmeAccount(self._storage(site.storage_path), site.directory_url, site.email, site.ca_file)
            self._accounts[site.account_key] = account
        return account

    def _install_all(self) -> None:
        pairs: dict[str, list[tuple[str, str]]] = {site.entrypoint: [] for site in self.sites}
        now = self.clock()
        for state in self._domains.values():
            stored = state.stored
            if stored is None or stored.not_after <= now:
                continue
            for entrypoint in sorted(state.sites):
                pairs.setdefault(entrypoint, []).append((stored.cert_file, stored.key_file))
        for entrypoint, found in pairs.items():
            self.host.install_certificates(entrypoint, found)

    # -- the background task ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            for key in list(self._domains):
                state = self._domains.get(key)
                if state is None or state.next_at > self.clock():
                    continue
                try:
                    await self._check(key, state)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug in one domain's check must not end the others' renewals
                    log.exception("acme: checking %s failed", state.name)
                    state.next_at = self.clock() + self.retry_every
            now = self.clock()
            wait = min([s.next_at - now for s in self._domains.values()], default=self.check_every)
            if wait > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(wait, self.check_every))

    async def _check(self, key: tuple[str, str, str], state: _Domain) -> None:
        """Order ``state``'s domain when it has no certificate or renewal is due; schedule the next look."""
        now = self.clock()
        stored = state.stored
        if stored is not None and stored.not_after - now > self.renew_before:
            state.next_at = min(stored.not_after - self.renew_before, now + self.check_every)
            return
        site = next((s for s in self.sites if s.entrypoint in state.sites and s.account_key == key[:2]), None)
        if site is None:
            return
        from .client import AcmeFailure

        account = self._account(site)
        loop = asyncio.get_running_loop()
        self.orders += 1
        why = "renewing" if stored is not None else "requesting"
        log.info("acme: %s a certificate for %s from %s (challenge %s)", why, state.name, site.directory_url,
                 site.challenge)
        try:
            chain, key_pem = await loop.run_in_executor(
                None, account.issue, state.name, site.challenge, functools.partial(self._publish_threadsafe, site),
                functools.partial(self._withdraw_threadsafe, site))
        except AcmeFailure as failure:
            state.failures += 1
            state.error = failure.detail
            retry = self.clock() + self.retry_every
            if failure.rate_limited and failure.retry_at is not None:
                retry = max(failure.retry_at, self.clock())
            state.next_at = retry
            kept = f"; still serving the certificate valid until {_when(stored.not_after)}" if stored else (
                "; serving the default certificate meanwhile")
            log.error("acme: certificate for %s not obtained (challenge %s): %s%s; retrying at %s", failure.domain,
                      failure.challenge, failure.detail, kept, _when(retry))
            return
        if key not in self._domains:  # removed by a reload while the order ran
            return
        state.stored = self._storage(key[0]).save(state.name, chain, key_pem)
        state.failures = 0
        state.error = ""
        state.next_at = min(state.stored.not_after - self.renew_before, self.clock() + self.check_every)
        log.info("acme: certificate for %s issued, valid until %s", state.name, _when(state.stored.not_after))
        self._install_all()

    # -- challenge answers (called from the executor thread) ------------------------------------------------
    def _publish_threadsafe(self, site: Site, kind: str, name: str, token: str, validation: str) -> None:
        if kind == "dns-01":
            self._dns(site).present(name, validation)  # blocks until the record is visible (propagation)
            return
        if kind == "tls-alpn-01":
            from .client import alpn_certificate

            self._on_loop(self._publish_alpn(name, alpn_certificate(name, validation)))
            return
        self._on_loop(self._publish(token.encode(), validation.encode()))

    def _withdraw_threadsafe(self, site: Site, kind: str, name: str, token: str, validation: str) -> None:
        if kind == "dns-01":
            self._dns(site).cleanup(name, validation)
        elif kind == "tls-alpn-01":
            self._on_loop(self._withdraw_alpn(name))
        else:
            self._on_loop(self._withdraw(token.encode()))

    def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.run_coroutine_threadsafe(coro, loop).result(PUBLISH_TIMEOUT)

    def _dns(self, site: Site) -> DnsProvider:
        """The DNS provider of ``site`` (credentials from the environment, checked by validate)."""
        from .dns import provider

        return provider(site.dns_provider, site.dns_resolvers)

    async def _publish(self, token: bytes, validation: bytes) -> None:
        self.tokens[token] = validation
        await self.host.publish_challenges()

    async def _withdraw(self, token: bytes) -> None:
        self.tokens.pop(token, None)
        await self.host.publish_challenges()

    async def _publish_alpn(self, domain: str, pems: tuple[bytes, bytes]) -> None:
        self.alpn[domain] = pems
        await self.host.publish_challenges()

    async def _withdraw_alpn(self, domain: str) -> None:
        self.alpn.pop(domain, None)
        await self.host.publish_challenges()


def _when(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


