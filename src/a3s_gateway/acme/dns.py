"""DNS-01 providers (SPEC §10.4): ``_acme-challenge.<domain>`` TXT records through Cloudflare's v4 REST API or
Route53's REST API, then a wait until the record is visible (propagation), and their removal afterwards.

Every call blocks (requests, dnspython): the ACME order runs them in its executor thread. Zones are found through
the provider's API, not DNS: the domain and each parent are asked for, the longest that exists wins. Credentials
and API base URLs come from the environment (``validate`` reports missing credentials):

- Cloudflare: ``CF_DNS_API_TOKEN`` (or ``CLOUDFLARE_DNS_API_TOKEN``), ``CF_API_URL``.
- Route53: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``,
  ``AWS_HOSTED_ZONE_ID``, ``AWS_ENDPOINT_URL_ROUTE53`` (then ``AWS_ENDPOINT_URL``). Requests are signed with
  botocore's SigV4 signer (AWS's own implementation; the optional ``route53`` extra) rather than a hand-made one.

Propagation is checked against ``acme_dns_resolvers`` when set, else the zone's authoritative name servers: the
zone (SOA), its NS names and their addresses are looked up with the system resolver, then each server is asked for
the TXT record on port 53, every 5 s, up to 120 s. Where those lookups go is the providers' ``bootstrap`` and
``nameserver_port`` attributes (the system resolver and 53), which tests point at servers on loopback ports.
"""

from __future__ import annotations

import logging
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any, Final, Protocol
from urllib.parse import quote

import requests

from ..config.schema.checks import parse_nameserver

log: Final = logging.getLogger("a3s_gateway.acme")

LABEL: Final = "_acme-challenge"
TTL: Final = 120
PROPAGATION_TIMEOUT: Final = 120.0
PROPAGATION_EVERY: Final = 5.0
API_TIMEOUT: Final = 30
CLOUDFLARE_API: Final = "https://api.cloudflare.com/client/v4"
ROUTE53_API: Final = "https://route53.amazonaws.com"
_R53: Final = "https://route53.amazonaws.com/doc/2013-04-01/"


class DnsError(Exception):
    """A provider call failed or the record did not become visible; the message says which and why."""


class DnsProvider(Protocol):
    def present(self, domain: str, value: str) -> None:
        """Add ``value`` to the TXT records of ``_acme-challenge.<domain>``; return once it is visible."""
        ...

    def cleanup(self, domain: str, value: str) -> None:
        """Remove that TXT value again."""
        ...


def provider(kind: str, resolvers: tuple[str, ...], env: Mapping[str, str] | None = None) -> DnsProvider:
    """The provider named by ``dns_provider`` with its credentials from ``env`` (the process environment)."""
    env = os.environ if env is None else env
    if kind == "cloudflare":
        return Cloudflare(env, resolvers)
    if kind == "route53":
        return Route53(env, resolvers)
    raise DnsError(f'unknown dns_provider "{kind}"')


def candidates(name: str) -> list[str]:
    """``name`` and each parent with at least two labels, longest first."""
    labels = name.rstrip(".").split(".")
    return [".".join(labels[i:]) for i in range(len(labels) - 1)]


class _Provider:
    """Record creation by the subclass, then the propagation wait (shared)."""

    timeout = PROPAGATION_TIMEOUT
    every = PROPAGATION_EVERY
    #: the resolvers ("host:port") that find the zone's SOA, NS names and their addresses; () = the system's
    bootstrap: tuple[str, ...] = ()
    #: the port the authoritative name servers are asked on
    nameserver_port = 53

    def __init__(self, resolvers: tuple[str, ...]) -> None:
        self.resolvers = resolvers
        self.session = requests.Session()

    def present(self, domain: str, value: str) -> None:
        fqdn = f"{LABEL}.{domain}"
        self._add(fqdn, value)
        log.info("acme: dns-01 TXT record %s created; waiting until it is visible", fqdn)
        self._wait(fqdn, value)

    def cleanup(self, domain: str, value: str) -> None:
        self._remove(f"{LABEL}.{domain}", value)

    def _add(self, fqdn: str, value: str) -> None:
        raise NotImplementedError

    def _remove(self, fqdn: str, value: str) -> None:
        raise NotImplementedError

    def _wait(self, fqdn: str, value: str) -> None:
        deadline = time.monotonic() + self.timeout
        servers: list[tuple[str, int]] = []
        while True:
            try:
                servers = servers or self._servers(fqdn)
                if all(value in _txt(fqdn, host, port) for host, port in servers):
                    return
                seen = "not yet visible"
            except Exception as exc:  # dnspython raises many kinds; a failed look is retried like a miss
                seen = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + self.every > deadline:
                raise DnsError(f"TXT record {fqdn} not visible within {self.timeout:.0f}s ({seen})")
            time.sleep(self.every)

    def _servers(self, fqdn: str) -> list[tuple[str, int]]:
        """``acme_dns_resolvers``, else the addresses of the zone's authoritative name servers (the zone is the
        closest enclosing SOA of ``fqdn``; every address of every NS name, IPv4 and IPv6)."""
        if self.resolvers:
            return [_host_port(item) for item in self.resolvers]
        import dns.nameserver
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=not self.bootstrap)
        if self.bootstrap:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*_host_port(item)) for item in self.bootstrap]
        resolver.lifetime = 10.0
        zone = dns.resolver.zone_for_name(fqdn, resolver=resolver)
        out: list[tuple[str, int]] = []
        for ns in resolver.resolve(zone, "NS"):
            for kind in ("A", "AAAA"):
                answer = resolver.resolve(ns.target, kind, raise_on_no_answer=False)
                out.extend((str(address), self.nameserver_port) for address in answer)
        if not out:
            raise DnsError(f"no address for the name servers of {zone}")
        return list(dict.fromkeys(out))

    def _json(self, response: requests.Response, what: str) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.ok or (isinstance(body, dict) and body.get("success") is False):
            detail = body.get("errors") if isinstance(body, dict) else response.text[:300]
            raise DnsError(f"{what}: HTTP {response.status_code}: {detail}")
        return body


def _host_port(item: str) -> tuple[str, int]:
    """A resolver address (``ip``, ``ip:port``, ``[v6]:port``; validated with the configuration)."""
    parsed = parse_nameserver(item)
    if parsed is None:
        raise DnsError(f"invalid DNS server address {item!r}; expected an IP address with an optional port")
    return parsed


def _txt(fqdn: str, host: str, port: int) -> set[str]:
    """The TXT strings of ``fqdn`` as ``host:port`` answers them (empty when it has none)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    query = dns.message.make_query(fqdn, dns.rdatatype.TXT)
    answer = dns.query.udp(query, host, port=port, timeout=5)
    out: set[str] = set()
    for rrset in answer.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            for rdata in rrset:
                out.add(b"".join(rdata.strings).decode())
    return out


class Cloudflare(_Provider):
    """Cloudflare's v4 REST API with an API token (Zone:DNS:Edit)."""

    def __init__(self, env: Mapping[str, str], resolvers: tuple[str, ...]) -> None:
        super().__init__(resolvers)
        token = env.get("CF_DNS_API_TOKEN") or env.get("CLOUDFLARE_DNS_API_TOKEN")
        if not token:
            raise DnsError("cloudflare credentials are missing: export CF_DNS_API_TOKEN")
        self.base = (env.get("CF_API_URL") or CLOUDFLARE_API).rstrip("/")
        self.session.headers["Authorization"] = f"Bearer {token}"

    def _zone(self, fqdn: str) -> str:
        for candidate in candidates(fqdn):
            response = self.session.get(f"{self.base}/zones", params={"name": candidate}, timeout=API_TIMEOUT)
            found = self._json(response, f"cloudflare zone lookup {candidate}").get("result") or []
            if found:
                return str(found[0]["id"])
        raise DnsError(f"cloudflare: no zone for {fqdn}")

    def _add(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        record: dict[str, Any] = {"type": "TXT", "name": fqdn, "content": value, "ttl": TTL}
        response = self.session.post(f"{self.base}/zones/{zone}/dns_records", json=record, timeout=API_TIMEOUT)
        self._json(response, f"cloudflare create TXT {fqdn}")

    def _remove(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        url = f"{self.base}/zones/{zone}/dns_records"
        response = self.session.get(url, params={"type": "TXT", "name": fqdn}, timeout=API_TIMEOUT)
        for record in self._json(response, f"cloudflare list TXT {fqdn}").get("result") or []:
            if record.get("content") == value:
                gone = self.session.delete(f"{url}/{record['id']}", timeout=API_TIMEOUT)
                self._json(gone, f"cloudflare delete TXT {fqdn}")


class Route53(_Provider):
    """Route53's REST API (2013-04-01), requests signed with botocore's SigV4."""

    def __init__(self, env: Mapping[str, str], resolvers: tuple[str, ...]) -> None:
        super().__init__(resolvers)
        key, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise DnsError("route53 credentials are missing: export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        from botocore.auth import SigV4Auth  # type: ignore[import-untyped]
        from botocore.credentials import Credentials  # type: ignore[import-untyped]

        self.signer = SigV4Auth(Credentials(key, secret, env.get("AWS_SESSION_TOKEN") or None), "route53",
                                env.get("AWS_REGION") or "us-east-1")
        base = env.get("AWS_ENDPOINT_URL_ROUTE53") or env.get("AWS_ENDPOINT_URL") or ROUTE53_API
        self.base = base.rstrip("/")
        self.zone_id = env.get("AWS_HOSTED_ZONE_ID", "")

    def _call(self, method: str, path: str, body: bytes = b"", what: str = "") -> ET.Element:
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]

        request = AWSRequest(method=method, url=f"{self.base}{path}", data=body,
                             headers={"Content-Type": "text/xml"} if body else {})
        self.signer.add_auth(request)
        response = self.session.request(method, request.url, data=body or None, headers=dict(request.headers),
                                        timeout=API_TIMEOUT)
        if not response.ok:
            raise DnsError(f"route53 {what}: HTTP {response.status_code}: {response.text[:300]}")
        return ET.fromstring(response.content)

    def _zone(self, fqdn: str) -> str:
        if self.zone_id:
            return self.zone_id
        for candidate in candidates(fqdn):
            tree = self._call("GET", f"/2013-04-01/hostedzonesbyname?dnsname={quote(candidate)}&maxitems=1",
                              what=f"ListHostedZonesByName {candidate}")
            for zone in tree.iter(f"{{{_R53}}}HostedZone"):
                if zone.findtext(f"{{{_R53}}}Name", "").rstrip(".") == candidate:
                    return zone.findtext(f"{{{_R53}}}Id", "").rsplit("/", 1)[-1]
        raise DnsError(f"route53: no hosted zone for {fqdn}")

    def _values(self, zone: str, fqdn: str) -> list[str]:
        tree = self._call("GET", f"/2013-04-01/hostedzone/{zone}/rrset?name={quote(fqdn)}&type=TXT&maxitems=1",
                          what=f"ListResourceRecordSets {fqdn}")
        for rrset in tree.iter(f"{{{_R53}}}ResourceRecordSet"):
            if rrset.findtext(f"{{{_R53}}}Name", "").rstrip(".") == fqdn and \
                    rrset.findtext(f"{{{_R53}}}Type") == "TXT":
                return [v.text or "" for v in rrset.iter(f"{{{_R53}}}Value")]
        return []

    def _change(self, zone: str, action: str, fqdn: str, values: list[str]) -> None:
        records = "".join(f"<ResourceRecord><Value>{_xml(v)}</Value></ResourceRecord>" for v in values)
        body = (f'<?xml version="1.0" encoding="UTF-8"?><ChangeResourceRecordSetsRequest xmlns="{_R53}">'
                f"<ChangeBatch><Changes><Change><Action>{action}</Action><ResourceRecordSet><Name>{fqdn}.</Name>"
                f"<Type>TXT</Type><TTL>{TTL}</TTL><ResourceRecords>{records}</ResourceRecords>"
                "</ResourceRecordSet></Change></Changes></ChangeBatch></ChangeResourceRecordSetsRequest>")
        self._call("POST", f"/2013-04-01/hostedzone/{zone}/rrset/", body.encode(),
                   what=f"ChangeResourceRecordSets {action} {fqdn}")

    def _add(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        values = self._values(zone, fqdn)  # a wildcard and its base domain share the name: keep the other value
        quoted = f'"{value}"'
        if quoted not in values:
            self._change(zone, "UPSERT", fqdn, [*values, quoted])

    def _remove(self, fqdn: str, value: str) -> None:
        zone = self._zone(fqdn)
        values = self._values(zone, fqdn)
        rest = [v for v in values if v != f'"{value}"']
        if rest == values:
            return
        self._change(zone, "UPSERT" if rest else "DELETE", fqdn, rest or values)


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
