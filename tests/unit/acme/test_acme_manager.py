"""The ACME manager's decisions (SPEC §10.4) with a fake account and a fake clock: domains from acme_domains or
Host() rules, stored certificates installed at configure, rate-limit back-off to the CA's time, hourly retries, a
reload that drops a domain."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from a3s_gateway import GatewayConfig
from a3s_gateway.acme import client as acme_client
from a3s_gateway.acme.client import AcmeFailure, parse_retry_after, retry_at_from_detail
from a3s_gateway.acme.manager import AcmeManager, sites_of
from a3s_gateway.acme.store import Storage
from a3s_gateway.config.compile import unsupported_features

NOW = 1_800_000_000.0
DAY = 86400.0


def pem_pair(domain: str, not_after: float) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(NOW - 60 * DAY, datetime.timezone.utc))
            .not_valid_after(datetime.datetime.fromtimestamp(not_after, datetime.timezone.utc))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def hcl(storage: Path, domains: str = "", rule: str = "Host(`a.example.com`) || Host(`b.example.com`)",
        challenge: str = "") -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    acme = true
    acme_email = "ops@example.com"
    acme_storage_path = "{storage}"
    {domains}
    {challenge}
  }}
}}
routers "r" {{
  rule = "{rule}"
  service = "s"
}}
routers "other" {{
  rule = "Host(`plain.example.com`) && !Host(`not.example.com`)"
  service = "s"
  entrypoints = ["web"]
}}
services "s" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:1" }}] }} }}
'''


class Host:
    def __init__(self) -> None:
        self.installed: dict[str, list[tuple[str, str]]] = {}
        self.published = 0

    def install_certificates(self, entrypoint: str, pairs: list[tuple[str, str]]) -> None:
        self.installed[entrypoint] = list(pairs)

    async def publish_challenges(self) -> None:
        self.published += 1


class FakeAccount:
    """Issues a 90-day certificate, or raises the queued failures first."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.failures: list[AcmeFailure] = []
        self.orders: list[str] = []
        self.email, self.ca_file = "ops@example.com", ""

    def issue(self, domain: str, kind: str, publish: Any, withdraw: Any) -> tuple[bytes, bytes]:
        self.orders.append(domain)
        publish(kind, domain, "tok", "tok.key")
        withdraw(kind, domain, "tok", "tok.key")
        if self.failures:
            raise self.failures.pop(0)
        return pem_pair(domain, self.clock[0] + 90 * DAY)


def make(tmp_path: Path, text: str) -> tuple[AcmeManager, Host, FakeAccount, list[float]]:
    clock = [NOW]
    host = Host()
    manager = AcmeManager(host, {}, clock=lambda: clock[0])
    account = FakeAccount(clock)
    manager._account = lambda site: account  # type: ignore[method-assign]
    manager.configure(GatewayConfig.from_hcl(text, filename="t.hcl"))
    return manager, host, account, clock


async def run_due(manager: AcmeManager) -> None:
    for key, state in list(manager._domains.items()):
        if state.next_at <= manager.clock():
            await manager._check(key, state)


def test_domains_come_from_host_rules_of_the_entrypoint_or_from_acme_domains(tmp_path: Path) -> None:
    derived = sites_of(GatewayConfig.from_hcl(hcl(tmp_path), filename="t.hcl"))
    assert [(s.entrypoint, s.domains) for s in derived] == [("websecure", ("a.example.com", "b.example.com"))]
    listed = sites_of(GatewayConfig.from_hcl(hcl(tmp_path, 'acme_domains = ["X.example.com."]'), filename="t.hcl"))
    assert listed[0].domains == ("x.example.com",)


def test_every_challenge_type_is_supported(tmp_path: Path) -> None:
    assert unsupported_features(GatewayConfig.from_hcl(hcl(tmp_path), filename="t.hcl")) == []
    alpn = GatewayConfig.from_hcl(hcl(tmp_path, challenge='challenge = "tls-alpn-01"'), filename="t.hcl")
    assert unsupported_features(alpn) == []


async def test_stored_certificates_are_installed_and_missing_ones_ordered(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    stored = storage.save("a.example.com", *pem_pair("a.example.com", NOW + 60 * DAY))
    manager, host, account, clock = make(tmp_path, hcl(tmp_path))
    manager._loop = asyncio.get_running_loop()
    assert host.installed == {"websecure": [(stored.cert_file, stored.key_file)]}  # before any order
    await run_due(manager)
    assert account.orders == ["b.example.com"]  # a.example.com has 60 days left
    assert [Path(c).parent.name for c, _ in host.installed["websecure"]] == ["a.example.com", "b.example.com"]
    assert oct(Path(storage.files("b.example.com")[1]).stat().st_mode & 0o777) == "0o600"
    assert manager.expiry()[("websecure", "b.example.com")] == NOW + 90 * DAY
    assert manager.tokens == {} and host.published == 2  # published, then withdrawn
    clock[0] = NOW + 31 * DAY  # a.example.com enters its last 30 days
    await run_due(manager)
    assert account.orders == ["b.example.com", "a.example.com"]


async def test_failures_retry_hourly_and_rate_limits_wait_for_the_time_the_ca_names(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager, host, account, clock = make(tmp_path, hcl(tmp_path, 'acme_domains = ["a.example.com"]'))
    manager._loop = asyncio.get_running_loop()
    account.failures = [
        AcmeFailure("a.example.com", "http-01", "urn:ietf:params:acme:error:unauthorized: 404 at /.well-known"),
        AcmeFailure("a.example.com", "http-01", "urn:ietf:params:acme:error:rateLimited: too many",
                    rate_limited=True, retry_at=NOW + 5 * 3600),
    ]
    await run_due(manager)
    state = manager._domains[next(iter(manager._domains))]
    assert state.next_at == NOW + 3600
    assert "certificate for a.example.com not obtained (challenge http-01): urn:ietf:params:acme:error:unauthorized" \
        in caplog.text
    clock[0] = NOW + 3600
    await run_due(manager)
    assert state.next_at == NOW + 5 * 3600  # the CA's time, not the hourly retry
    clock[0] = NOW + 4 * 3600
    await run_due(manager)
    assert len(account.orders) == 2  # nothing before the CA's time
    clock[0] = NOW + 5 * 3600
    await run_due(manager)
    assert len(account.orders) == 3 and host.installed["websecure"]


async def test_a_reload_that_removes_a_domain_stops_renewing_it(tmp_path: Path) -> None:
    manager, host, account, clock = make(tmp_path, hcl(tmp_path))
    manager._loop = asyncio.get_running_loop()
    await run_due(manager)
    assert sorted(account.orders) == ["a.example.com", "b.example.com"]
    manager.configure(GatewayConfig.from_hcl(hcl(tmp_path, rule="Host(`a.example.com`)"), filename="t.hcl"))
    assert [Path(c).parent.name for c, _ in host.installed["websecure"]] == ["a.example.com"]
    clock[0] = NOW + 70 * DAY
    await run_due(manager)
    assert sorted(account.orders) == ["a.example.com", "a.example.com", "b.example.com"]


def test_retry_after_header_and_detail_text() -> None:
    assert parse_retry_after("120", now=NOW) == NOW + 120
    date = email.utils.formatdate(NOW + 600, usegmt=True)
    assert parse_retry_after(date) == NOW + 600
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    detail = "too many certificates already issued for exact set of domains: retry after 2027-01-15 10:00:00 UTC"
    expected = datetime.datetime(2027, 1, 15, 10, tzinfo=datetime.timezone.utc).timestamp()
    assert retry_at_from_detail(detail) == expected
    assert acme_client.RATE_LIMITED == "urn:ietf:params:acme:error:rateLimited"


def test_dns_server_addresses_with_and_without_a_port(tmp_path: Path) -> None:
    from a3s_gateway.acme.dns import _host_port
    from a3s_gateway.errors import ConfigError

    assert _host_port("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert _host_port("127.0.0.1") == ("127.0.0.1", 53)
    assert _host_port("[::1]:5353") == ("::1", 5353)
    assert _host_port("::1") == ("::1", 53)  # a bare IPv6 address: port 53, not "::" port 1
    resolvers = 'challenge = "dns-01"\n    dns_provider = "cloudflare"\n    acme_dns_resolvers = ["ns1.example.com:x"]'
    with pytest.raises(ConfigError, match=r'invalid nameserver "ns1\.example\.com:x"'):
        GatewayConfig.from_hcl(hcl(tmp_path, 'acme_domains = ["a.example.com"]', challenge=resolvers),
                               filename="t.hcl")
