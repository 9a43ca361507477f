"""DNS-01 (SPEC §10.4) against pebble: a wildcard certificate issued through a fake Cloudflare API and a fake
Route53 API (tests/support/fake_dns_api.py) that push the TXT records into pebble-challtestsrv, the propagation
checked against ``acme_dns_resolvers`` (challtestsrv's DNS), the records removed afterwards; without resolvers,
against the zone's authoritative name servers; missing credentials are a ``validate`` error naming the variable."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dnsmasq import Dnsmasq
from fake_dns_api import FakeCloudflare, FakeRoute53
from pebble_ca import free_port, pebble_server
from test_acme_e2e import start, wait_for_chain

from a3s_gateway.acme import dns as acme_dns
from support import start_backend

pytestmark = pytest.mark.timeout(90)


def dns_config(provider: str, backend: str, storage: Path, directory_url: str, ca_file: str,
               resolver: str) -> str:
    return f'''
entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    acme               = true
    acme_email         = "ops@example.com"
    acme_ca_url        = "{directory_url}"
    acme_ca_file       = "{ca_file}"
    acme_storage_path  = "{storage}"
    acme_domains       = ["*.example.com"]
    challenge          = "dns-01"
    dns_provider       = "{provider}"
    {f'acme_dns_resolvers = ["{resolver}"]' if resolver else ""}
  }}
}}
routers "r" {{
  rule    = "PathPrefix(`/`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


@pytest.mark.parametrize("provider", ["cloudflare", "route53"])
async def test_a_wildcard_certificate_through_dns01(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    provider: str) -> None:
    backend = await start_backend()
    storage = tmp_path / "acme"
    with pebble_server(http_port=free_port()) as ca:
        management = f"http://127.0.0.1:{ca.challtest_management_port}"
        api: FakeCloudflare | FakeRoute53
        if provider == "cloudflare":
            api = FakeCloudflare("example.com", management, token="cf-token")
            monkeypatch.setenv("CF_DNS_API_TOKEN", "cf-token")
            monkeypatch.setenv("CF_API_URL", api.url)
        else:
            api = FakeRoute53("example.com", management, access_key="AKIDTEST")
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
            monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE53", api.url)
            monkeypatch.delenv("AWS_HOSTED_ZONE_ID", raising=False)
        gw = await start(dns_config(provider, backend.url, storage, ca.directory_url, ca.ca_file,
                                    f"127.0.0.1:{ca.dns_port}"))
        try:
            port = gw.bound_addresses()["websecure"][1]
            data = await wait_for_chain(port, ca.root(), name="a.example.com")
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello from backend")
            with pytest.raises(ssl.SSLCertVerificationError):  # one label only (SPEC §10.2)
                await wait_for_chain(port, ca.root(), limit=0, name="a.b.example.com")
            assert (storage / "_.example.com" / "cert.pem").exists()
            assert gw.acme is not None and gw.acme.orders == 1
            assert api.records == {"_acme-challenge.example.com": []}  # created, then removed
            methods = {method for method, _ in api.calls}
            assert {"GET", "POST"} <= methods
        finally:
            await gw.shutdown(0.5)
            api.close()


async def test_without_resolvers_issuance_waits_for_the_authoritative_name_servers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """No ``acme_dns_resolvers``: the zone of ``_acme-challenge.example.com`` (SOA), its NS and the name server's
    address come from a resolver (dnsmasq, authoritative for example.com, NS ns1.example.com at 127.0.0.1), and the
    TXT record is asked of that name server (challtestsrv, which pebble validates against). The provider's API
    answers at once but the record appears in DNS only 1.5 s later: asking the CA to validate before then fails
    the order (retried an hour later), so the certificate arrives only if the propagation wait happened."""
    caplog.set_level(logging.INFO, "a3s_gateway.acme")
    backend = await start_backend()
    storage = tmp_path / "acme"
    resolver = Dnsmasq(tmp_path / "dnsmasq", ttl=1)
    resolver.auth = ("example.com", "ns1.example.com")
    resolver.start()
    try:
        with pebble_server(http_port=free_port()) as ca:
            # the lookups the gateway makes, on loopback ports instead of the system resolver and port 53
            monkeypatch.setattr(acme_dns._Provider, "bootstrap", (resolver.nameserver,))
            monkeypatch.setattr(acme_dns._Provider, "nameserver_port", ca.dns_port)
            monkeypatch.setattr(acme_dns._Provider, "every", 0.2)
            monkeypatch.setattr(acme_dns._Provider, "timeout", 15.0)
            api = FakeCloudflare("example.com", f"http://127.0.0.1:{ca.challtest_management_port}", token="t",
                                 delay=1.5)
            monkeypatch.setenv("CF_DNS_API_TOKEN", "t")
            monkeypatch.setenv("CF_API_URL", api.url)
            hcl = dns_config("cloudflare", backend.url, storage, ca.directory_url, ca.ca_file, "")
            assert "acme_dns_resolvers" not in hcl
            began = time.monotonic()
            gw = await start(hcl.replace('"*.example.com"', '"gw.example.com"'))
            try:
                port = gw.bound_addresses()["websecure"][1]
                data = await wait_for_chain(port, ca.root(), name="gw.example.com")
                assert data.startswith(b"HTTP/1.1 200")
                assert time.monotonic() - began >= 1.5
                assert gw.acme is not None and gw.acme.orders == 1
                assert "not obtained" not in caplog.text
                assert "_acme-challenge.gw.example.com created; waiting until it is visible" in caplog.text
                assert api.records == {"_acme-challenge.gw.example.com": []}
            finally:
                await gw.shutdown(0.5)
                api.close()
    finally:
        resolver.stop()


@pytest.mark.parametrize(("provider", "variable"), [("cloudflare", "CF_DNS_API_TOKEN"),
                                                    ("route53", "AWS_ACCESS_KEY_ID")])
def test_missing_credentials_are_a_validate_error(tmp_path: Path, provider: str, variable: str) -> None:
    cfg = tmp_path / "gateway.hcl"
    cfg.write_text(dns_config(provider, "http://127.0.0.1:1", tmp_path / "acme", "https://127.0.0.1:1/dir", "",
                              "127.0.0.1:53"))
    env = {k: v for k, v in __import__("os").environ.items()
           if not k.startswith(("CF_", "CLOUDFLARE_", "AWS_"))}
    done = subprocess.run([sys.executable, "-m", "a3s_gateway", "validate", "-c", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{provider} credentials are missing" in done.stderr + done.stdout
    assert variable in done.stderr + done.stdout
