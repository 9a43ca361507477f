"""Well-known discovery (SPEC §12.3): seeds announce themselves in ``/.well-known/a3s-service.json`` (RFC 8615).

Every ``poll_interval_secs`` each seed is polled: its document is fetched and parsed, then ``<seed><health_path>``
is probed (2xx = healthy). A seed contributes after its first good poll and until 3 consecutive polls fail; a
contributing seed adds the server ``{url = <seed>, weight}`` to service ``<name>`` (round-robin). The routes of the
seed with the highest ``version`` (semantic-version order, then seed order) become routers ``discovered-<name>`` (one
route) or ``discovered-<name>-<i>``, attached to every HTTP entrypoint. Rules, middlewares and names are validated with
the file items when they are merged (``providers.merge``); a bad one is skipped with a ``discovery:<seed url>:``
warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config.model import (
    DiscoveryProviderConfig,
    LoadBalancerConfig,
    RouterConfig,
    ServerConfig,
    ServiceConfig,
)
from ..config.schema.checks import NAME_RE
from ..config.schema.services import parse_server_url
from ..http import client
from ..observability.redact import redact_url
from .merge import Contribution, RunningProvider

log = logging.getLogger("a3s_gateway.providers.discovery")

PATH = "/.well-known/a3s-service.json"
STRIKES = 3  # consecutive failed polls that end a seed's contribution (SPEC §12.3)
MAX_DOCUMENT = 256 * 1024
_SEMVER = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?\Z")


class DocumentError(ValueError):
    """The document is not a valid a3s-service document; the message says why."""


@dataclass(frozen=True, slots=True)
class Route:
    rule: str
    middlewares: tuple[str, ...] = ()
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed ``a3s-service.json``."""

    name: str
    version: str
    routes: tuple[Route, ...]
    health_path: str = "/health"
    weight: int = 1


def _string(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise DocumentError(f'"{key}" must be a non-empty string' if key not in data or default is None
                            else f'"{key}" must be a string')
    return value


def _integer(data: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DocumentError(f'"{key}" must be an integer between {lo} and {hi}')
    return value


def parse_document(raw: bytes) -> Document:
    """The document in ``raw`` (JSON); DocumentError with the reason when it is not valid (SPEC §12.3 fields)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise DocumentError(f"not JSON: {e}") from e
    if not isinstance(data, dict):
        raise DocumentError("expected a JSON object")
    name = _string(data, "name")
    if not NAME_RE.match(name):
        raise DocumentError(f'"name" {name!r} is not a valid service name (letters, digits, ".", "_", "-")')
    if "version" not in data or not isinstance(data["version"], (str, int, float)) or isinstance(data["version"], bool):
        raise DocumentError('"version" is required (a string)')
    routes_in = data.get("routes")
    if not isinstance(routes_in, list):
        raise DocumentError('"routes" must be a list')
    routes: list[Route] = []
    for i, r in enumerate(routes_in):
        if not isinstance(r, dict):
            raise DocumentError(f"routes[{i}] must be an object")
        mws = r.get("middlewares", [])
        if not isinstance(mws, list) or not all(isinstance(m, str) for m in mws):
            raise DocumentError(f'routes[{i}]: "middlewares" must be a list of strings')
        try:
            routes.append(Route(_string(r, "rule"), tuple(mws), _integer(r, "priority", 0, 0, 1 << 31)))
        except DocumentError as e:
            raise DocumentError(f"routes[{i}]: {e}") from e
    health = _string(data, "health_path", "/health")
    if not health.startswith("/"):
        raise DocumentError('"health_path" must start with "/"')
    return Document(name, str(data["version"]), tuple(routes), health, _integer(data, "weight", 1, 0, 1000000))


def version_key(version: str) -> tuple[int, tuple[int, int, int], int, tuple[tuple[int, int | str], ...]]:
    """Semantic-version order (SPEC §12.3): a release after its pre-releases; versions that are not semantic
    versions sort below every one that is."""
    m = _SEMVER.match(version.strip())
    if m is None:
        return (0, (0, 0, 0), 0, ())
    core = (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))
    pre = m.group(4)
    if pre is None:
        return (1, core, 1, ())
    ids = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return (1, core, 0, ids)


class Seed:
    """One seed's polls: its last good document and its run of failed polls."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.shown = redact_url(self.url)
        self.timeout = timeout
        self.document: Document | None = None  # the last good document while contributing
        self.failures = 0
        self.doc_target = client.Target(self.url + PATH)

    @property
    def contributing(self) -> bool:
        return self.document is not None

    async def poll(self) -> bool:
        """Fetch the document and probe the health path; True when the contribution changed."""
        try:
            document = await asyncio.wait_for(self._fetch(), self.timeout)
            await asyncio.wait_for(self._probe(document.health_path), self.timeout)
        except (DocumentError, client.FetchError, asyncio.TimeoutError, ValueError) as e:
            self.failures += 1
            why = "timed out" if isinstance(e, asyncio.TimeoutError) else str(e)
            if self.failures == 1 or self.failures == STRIKES:
                log.warning("discovery:%s: poll failed (%d in a row): %s%s", self.shown, self.failures, why,
                            "; no longer contributing" if self.failures == STRIKES and self.contributing else "")
            if self.failures >= STRIKES and self.document is not None:
                self.document = None
                return True
            return False
        self.failures = 0
        changed = document != self.document
        if changed:
            log.info("discovery:%s: service %s version %s (%d route(s))", self.shown, document.name, document.version,
                     len(document.routes))
        self.document = document
        return changed

    async def _fetch(self) -> Document:
        result = await client.fetch(self.doc_target, b"GET", [(b"Accept", b"application/json")], MAX_DOCUMENT)
        if not 200 <= result.status < 300:
            raise DocumentError(f"GET {PATH} answered {result.status}")
        return parse_document(result.body)

    async def _probe(self, path: str) -> None:
        result = await client.fetch(client.Target(self.url + path), b"GET", [], 64 * 1024)
        if not 200 <= result.status < 300:
            raise DocumentError(f"health probe GET {path} answered {result.status}")


def contribution_of(seeds: list[Seed]) -> Contribution:
    """Services and routers of the contributing seeds (seed order is configuration order)."""
    by_name: dict[str, list[Seed]] = {}
    for seed in seeds:
        if seed.document is not None:
            by_name.setdefault(seed.document.name, []).append(seed)
    routers: dict[str, RouterConfig] = {}
    services: dict[str, ServiceConfig] = {}
    sources: dict[str, str] = {}
    for name, group in by_name.items():
        servers = []
        for seed in group:
            assert seed.document is not None
            parsed = parse_server_url(seed.url)
            if isinstance(parsed, str):
                continue  # a seed URL with a query or user part: refused at load already
            scheme, host, port, path = parsed
            servers.append(ServerConfig(seed.url, seed.document.weight, scheme, host, port, path))
        services[name] = ServiceConfig(name, load_balancer=LoadBalancerConfig(servers=tuple(servers)))
        sources[f"services.{name}"] = f"discovery:{group[0].shown}"
        # highest version wins; max() keeps the first of equals, so seed order breaks ties
        best = max(group, key=lambda s: version_key(s.document.version if s.document else ""))
        assert best.document is not None
        routes = best.document.routes
        for i, route in enumerate(routes):
            router = f"discovered-{name}" if len(routes) == 1 else f"discovered-{name}-{i}"
            routers[router] = RouterConfig(router, route.rule, name, (), route.middlewares, route.priority)
            sources[f"routers.{router}"] = f"discovery:{best.shown}"
    return Contribution("discovery", routers=routers, services=services, sources=sources)


class WellKnownProvider(RunningProvider):
    """``providers { discovery { ... } }``: polls every seed each ``poll_interval_secs`` until closed."""

    def __init__(self, cfg: DiscoveryProviderConfig, changed: Callable[[], None]) -> None:
        super().__init__("discovery")
        self.cfg = cfg
        self._changed = changed
        self.seeds = [Seed(url, cfg.timeout_secs) for url in cfg.seeds]
        #: completed poll rounds (tests read it)
        self.rounds = 0

    async def poll(self) -> None:
        """One round: every seed at once; the contribution is rebuilt when a seed's changed."""
        changed = await asyncio.gather(*(seed.poll() for seed in self.seeds))
        self.rounds += 1
        if any(changed):
            self._contribution = contribution_of(self.seeds)
            self._changed()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.poll()
            except Exception:
                log.exception("discovery: a poll failed unexpectedly")
            await asyncio.sleep(max(0.0, started + self.cfg.poll_interval_secs - loop.time()))
