"""providers/merge.py, providers/hub.py, the DNS answer -> servers mapping and the well-known document rules
(SPEC §12.1, §12.3, §12.4), without sockets."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from types import SimpleNamespace

import dns.name
import pytest

from a3s_gateway import GatewayConfig
from a3s_gateway.config.model import DnsProviderConfig, LoadBalancerConfig, RouterConfig, ServerConfig, ServiceConfig
from a3s_gateway.providers import dns as dns_provider
from a3s_gateway.providers.hub import Providers
from a3s_gateway.providers.merge import Contribution, merge
from a3s_gateway.providers.wellknown import DocumentError, Seed, contribution_of, parse_document, version_key

FILE = '''
entrypoints "web" { address = "127.0.0.1:0" }
entrypoints "raw" {
  address  = "127.0.0.1:0"
  protocol = "tcp"
}
routers "r" {
  rule    = "PathPrefix(`/`)"
  service = "s"
}
services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9" }] } }
services "fed" { load_balancer { strategy = "round-robin" } }
providers {
  dns {
    service = "fed"
    name    = "fed.example"
  }
}
'''


def svc(name: str, url: str = "http://127.0.0.1:8000") -> ServiceConfig:
    return ServiceConfig(name, load_balancer=LoadBalancerConfig(servers=(ServerConfig(url, 1, "http", "127.0.0.1",
                                                                                      8000),)))


def test_items_merge_with_origins_and_file_names_win() -> None:
    base = GatewayConfig.from_hcl(FILE)
    a = Contribution("discovery", routers={"r": RouterConfig("r", "Path(`/x`)", "new"),
                                           "ok": RouterConfig("ok", "Path(`/ok`)", "new")},
                     services={"new": svc("new"), "s": svc("s")}, sources={"routers.r": "discovery:http://a"})
    b = Contribution("discovery", routers={"to-s": RouterConfig("to-s", "Path(`/s`)", "s")},
                     services={"new": svc("new", "http://127.0.0.1:8001")}, sources={"services.new": "discovery:http://b"})
    merged, warnings = merge(base, [a, b])
    assert set(merged.routers) == {"r", "ok", "to-s"} and merged.routers["r"] == base.routers["r"]
    assert merged.services["new"].load_balancer.servers[0].url == "http://127.0.0.1:8000"  # the first provider's
    assert merged.services["s"] == base.services["s"]
    assert dict(merged.origins) == {"routers.ok": "discovery", "routers.to-s": "discovery",
                                    "services.new": "discovery"}
    assert merged.routers["ok"].effective_priority == len("Path(`/ok`)")  # validated and filled like a file router
    assert warnings == [
        "discovery: services.s: a file-defined service has this name; skipped",
        "discovery:http://a: routers.r: a file-defined router has this name; skipped",
        "discovery:http://b: services.new: a service of discovery has this name; skipped",
    ]
    # b's router to the file service "s" stays (only a provider's routers to its own skipped services go)
    assert merged.routers["to-s"].service == "s" and merged.origins["routers.to-s"] == "discovery"


def test_routers_of_a_skipped_service_go_with_it() -> None:
    base = GatewayConfig.from_hcl(FILE)
    c = Contribution("discovery", services={"s": svc("s")}, routers={"to-s": RouterConfig("to-s", "Path(`/s`)", "s")})
    merged, warnings = merge(base, [c])
    assert set(merged.routers) == {"r"}
    assert warnings[1] == 'discovery: routers.to-s: its service "s" was skipped; skipped'


def test_invalid_items_are_skipped_with_their_routers_and_the_file_is_untouched() -> None:
    base = GatewayConfig.from_hcl(FILE)
    bad_service = ServiceConfig("bad", load_balancer=LoadBalancerConfig(servers=(
        ServerConfig("udp://127.0.0.1:53", 1, "udp", "127.0.0.1", 53),)))
    c = Contribution("discovery", services={"bad": bad_service, "good": svc("good")}, routers={
        "to-bad": RouterConfig("to-bad", "Path(`/b`)", "bad"),
        "bad-rule": RouterConfig("bad-rule", "Path(`/b`", "good"),
        "no-ep": RouterConfig("no-ep", "Path(`/e`)", "good", ("nowhere",)),
        # a tcp router on the file's http service "s": the error is the file service's; the provider router goes
        "mixed": RouterConfig("mixed", "HostSNI(`*`)", "s", ("raw",)),
        "fine": RouterConfig("fine", "Path(`/f`)", "good"),
    })
    merged, warnings = merge(base, [c])
    assert set(merged.routers) == {"r", "fine"}
    assert set(merged.services) == {"s", "fed", "good"}
    text = "\n".join(warnings)
    for name in ("bad-rule", "no-ep", "mixed", "to-bad"):
        assert f"routers.{name}" in text
    assert "services.bad" in text
    assert merged.routers["r"] == base.routers["r"]


def test_dns_servers_feed_the_file_service() -> None:
    base = GatewayConfig.from_hcl(FILE)
    servers = (ServerConfig("http://10.0.0.1:80", 1, "http", "10.0.0.1", 80),)
    merged, warnings = merge(base, [Contribution("dns", servers={"fed": servers, "gone": servers})])
    assert warnings == []
    assert merged.services["fed"].load_balancer.servers == servers
    assert merged.services["fed"].load_balancer.strategy == "round-robin"
    assert dict(merged.origins) == {"services.fed": "dns"}
    assert "gone" not in merged.services


def test_ttl_is_clamped_between_the_floor_and_refresh() -> None:
    cfg = DnsProviderConfig("s", "n", refresh=30.0)
    assert dns_provider.next_delay(cfg, 1.0) == 5.0
    assert dns_provider.next_delay(cfg, 12.0) == 12.0
    assert dns_provider.next_delay(cfg, 3600.0) == 30.0
    assert dns_provider.next_delay(cfg, None) == 30.0
    assert dns_provider.next_delay(DnsProviderConfig("s", "n", refresh=30.0, honor_ttl=False), 12.0) == 30.0


def test_answers_become_sorted_servers() -> None:
    a = [SimpleNamespace(address=x) for x in ("10.0.0.2", "10.0.0.10", "10.0.0.2")]
    cfg = DnsProviderConfig("s", "n", port=8080, scheme="h2c")
    assert [s.url for s in dns_provider.servers_of(cfg, a)] == ["h2c://10.0.0.2:8080", "h2c://10.0.0.10:8080"]
    six = dns_provider.servers_of(DnsProviderConfig("s", "n", type="AAAA"), [SimpleNamespace(address="::1")])
    assert [(s.url, s.host) for s in six] == [("http://[::1]:80", "::1")]

    def srv(prio: int, weight: int, port: int, target: str) -> SimpleNamespace:
        return SimpleNamespace(priority=prio, weight=weight, port=port, target=dns.name.from_text(target))

    records = [srv(10, 0, 81, "b.example."), srv(10, 7, 80, "a.example."), srv(20, 5, 82, "c.example."),
               srv(10, 1, 1, ".")]
    got = dns_provider.servers_of(DnsProviderConfig("s", "n", type="SRV"), records)
    assert [(s.url, s.weight) for s in got] == [("http://a.example:80", 7), ("http://b.example:81", 1)]
    assert ipaddress.ip_address("::1")  # IPv6 literal hosts are bracketed only in the URL


def test_documents_are_checked() -> None:
    doc = parse_document(b'{"name":"llm","version":"2.1.0","routes":[{"rule":"PathPrefix(`/v1`)",'
                         b'"middlewares":["rl"],"priority":3}],"health_path":"/healthz","weight":2}')
    assert (doc.name, doc.version, doc.health_path, doc.weight) == ("llm", "2.1.0", "/healthz", 2)
    assert doc.routes[0].middlewares == ("rl",) and doc.routes[0].priority == 3
    assert parse_document(b'{"name":"x","version":"1","routes":[]}').health_path == "/health"
    for raw, why in [(b"[]", "object"), (b'{"version":"1","routes":[]}', '"name"'),
                     (b'{"name":"a b","version":"1","routes":[]}', "service name"),
                     (b'{"name":"a","routes":[]}', '"version"'),
                     (b'{"name":"a","version":"1","routes":[{"middlewares":[]}]}', 'routes[0]: "rule"'),
                     (b'{"name":"a","version":"1","routes":[],"weight":-1}', '"weight"'), (b"{", "not JSON")]:
        with pytest.raises(DocumentError, match=why.replace("[", r"\[").replace("]", r"\]")):
            parse_document(raw)


def test_semantic_version_order() -> None:
    ordered = ["banana", "0.9", "1.2.0-rc.1", "1.2.0-rc.2", "1.2.0", "1.10.0", "v2"]
    assert sorted(reversed(ordered), key=version_key) == ordered


def test_highest_version_routes_win_ties_by_seed_order() -> None:
    seeds = []
    for url, version, rule in [("http://127.0.0.1:1", "1.0.0", "Path(`/a`)"), ("http://127.0.0.1:2/", "1.0.0",
                               "Path(`/b`)"), ("http://127.0.0.1:3", "0.9.0", "Path(`/c`)")]:
        seed = Seed(url, 1.0)
        seed.document = parse_document(
            f'{{"name":"m","version":"{version}","routes":[{{"rule":"{rule}"}}]}}'.encode())
        seeds.append(seed)
    c = contribution_of(seeds)
    assert c.routers["discovered-m"].rule == "Path(`/a`)"
    assert [s.url for s in c.services["m"].load_balancer.servers] == [
        "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]
    assert c.sources["routers.discovered-m"] == "discovery:http://127.0.0.1:1"


async def test_changes_are_debounced_into_one_reload_after_the_last() -> None:
    reloads: list[float] = []

    async def reload() -> None:
        reloads.append(time.monotonic())

    hub = Providers(reload, debounce=0.2)
    hub._task = asyncio.get_running_loop().create_task(hub._reload_loop())
    start = time.monotonic()
    for _ in range(5):
        hub.changed()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.4)
    assert len(reloads) == 1 and reloads[0] - start >= 0.2 + 0.2 - 0.02
    await hub.close()
