"""DNS provider (SPEC §12.4): the servers of a file-defined service follow the A, AAAA or SRV records of a name.

Resolution uses dnspython's asyncio resolver. Chosen over aiodns (pycares) because it is pure Python (nothing to
compile for the wheels and the one-file binary), runs on the loop's own datagram transports (the same under uvloop
and asyncio), hands back each RRset's TTL, tells the outcomes §12.4 treats differently apart as exception types
(NXDOMAIN and an empty answer empty the set; SERVFAIL/REFUSED from every server, ``NoNameservers``, and timeouts keep
it) and takes a port per nameserver (Consul DNS on 127.0.0.1:8600). It is kept by the dnspython maintainers and
reads ``/etc/resolv.conf`` like the system resolver when no ``nameservers`` are given. No cache: every resolution
asks the server, so the TTL we honour is the record's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from ..config.model import DnsProviderConfig, ServerConfig
from ..config.schema.checks import parse_nameserver
from .merge import Contribution, RunningProvider

log = logging.getLogger("a3s_gateway.providers.dns")

#: the smallest TTL-driven re-resolution interval (SPEC §12.4: TTLs are clamped to [5s, refresh])
MIN_TTL: float = 5.0
#: one resolution's time limit (every nameserver tried within it)
LIFETIME: float = 5.0


def next_delay(cfg: DnsProviderConfig, ttl: float | None) -> float:
    """Seconds until the next resolution: ``refresh``, or the smallest TTL clamped to ``[MIN_TTL, refresh]``."""
    if not cfg.honor_ttl or ttl is None:
        return cfg.refresh
    return min(cfg.refresh, max(MIN_TTL, ttl))


def _server(scheme: str, host: str, port: int, weight: int) -> ServerConfig:
    shown = f"[{host}]" if ":" in host else host
    return ServerConfig(url=f"{scheme}://{shown}:{port}", weight=weight, scheme=scheme, host=host, port=port)


def servers_of(cfg: DnsProviderConfig, records: list[Any]) -> tuple[ServerConfig, ...]:
    """The servers of an answer's records (sorted, so an answer in another order is the same set).

    A/AAAA: ``<scheme>://<ip>:<port>`` (IPv6 bracketed), weight 1. SRV: the records of the lowest priority,
    ``<scheme>://<target>:<port>``, weight = SRV weight (0 -> 1); a target ``.`` (service absent) adds nothing.
    """
    if cfg.type == "SRV":
        if not records:
            return ()
        lowest = min(int(r.priority) for r in records)
        found: dict[str, ServerConfig] = {}
        for r in records:
            target = r.target.to_text(omit_final_dot=True)
            if int(r.priority) != lowest or target in ("", "."):
                continue
            server = _server(cfg.scheme, target, int(r.port), int(r.weight) or 1)
            found.setdefault(server.url, server)
        return tuple(sorted(found.values(), key=lambda s: s.url))
    addresses = sorted({ipaddress.ip_address(r.address) for r in records},
                       key=lambda a: (a.version, int(a)))
    return tuple(_server(cfg.scheme, str(a), cfg.port, 1) for a in addresses)


def make_resolver(cfg: DnsProviderConfig) -> dns.asyncresolver.Resolver:
    """A resolver asking ``cfg.nameservers`` (ip[:port]), else the system's (``/etc/resolv.conf``)."""
    if not cfg.nameservers:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        servers: list[dns.nameserver.Nameserver] = []
        for text in cfg.nameservers:
            parsed = parse_nameserver(text)
            assert parsed is not None  # validated at load
            servers.append(dns.nameserver.Do53Nameserver(parsed[0], parsed[1]))
        resolver.nameservers = servers
    resolver.lifetime = LIFETIME
    resolver.cache = None
    return resolver


class DnsProvider(RunningProvider):
    """One ``providers { dns { ... } }`` block: resolves ``name`` and feeds ``service`` until closed."""

    def __init__(self, cfg: DnsProviderConfig, changed: Callable[[], None]) -> None:
        super().__init__("dns")
        self.cfg = cfg
        self._changed = changed
        #: the current server set; None until the first answer (the service then has no servers yet)
        self.servers: tuple[ServerConfig, ...] | None = None
        self._failing = ""  # the kind of failure the last resolutions ended with ("" = answered)
        #: resolutions made (tests and the bench read it)
        self.resolutions = 0

    async def _run(self) -> None:
        resolver = make_resolver(self.cfg)
        while True:
            try:
                delay = await self.resolve(resolver)
            except Exception:  # a bug must not end the provider: log and try again later
                log.exception("dns %s: resolution failed unexpectedly", self.cfg.name)
                delay = self.cfg.refresh
            await asyncio.sleep(delay)

    async def resolve(self, resolver: dns.asyncresolver.Resolver) -> float:
        """One resolution; updates the set and returns the seconds until the next one."""
        cfg = self.cfg
        self.resolutions += 1
        try:
            answer = await resolver.resolve(cfg.name, cfg.type, raise_on_no_answer=False, search=True)
        except dns.resolver.NXDOMAIN:
            self._set((), "NXDOMAIN")
            return next_delay(cfg, None)
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as e:
            # SERVFAIL (or REFUSED) from every nameserver, or no answer in time: keep the last set (§12.4)
            failure = "timed out" if isinstance(e, dns.exception.Timeout) else "server failure"
            if failure != self._failing:  # logged when it starts or changes, not on every retry
                kept = "no servers yet" if self.servers is None else f"keeping {len(self.servers)} server(s)"
                log.warning("dns %s %s for service %s: %s; %s", cfg.type, cfg.name, cfg.service, failure, kept)
            self._failing = failure
            return min(cfg.refresh, MIN_TTL)
        rrset = answer.rrset
        records = list(rrset) if rrset is not None else []
        self._set(servers_of(cfg, records), "" if records else "empty answer")
        return next_delay(cfg, float(rrset.ttl) if rrset is not None else None)

    def _set(self, servers: tuple[ServerConfig, ...], why: str) -> None:
        if self._failing:
            log.info("dns %s %s for service %s answers again", self.cfg.type, self.cfg.name, self.cfg.service)
        self._failing = ""
        if servers == self.servers:
            return
        self.servers = servers
        cfg = self.cfg
        log.info("dns %s %s: service %s now has %d server(s)%s", cfg.type, cfg.name, cfg.service, len(servers),
                 f" ({why})" if why else ": " + ", ".join(s.url for s in servers))
        self._contribution = Contribution("dns", servers={cfg.service: servers})
        self._changed()
