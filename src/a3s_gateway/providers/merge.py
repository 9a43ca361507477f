"""Provider items merged into the file configuration (SPEC §12.1).

Each provider hands over a :class:`Contribution`: routers and services it makes, and the servers of file-defined
services it feeds (DNS). :func:`merge` adds them to the file configuration and validates the provider items as file
items are validated (the same cross-block checks, ``config.references``): a name that collides with a file-defined
one, an invalid item and a router whose service was skipped are each left out with a warning, so a provider never
blocks the file or its other items. The result is one ordinary ``GatewayConfig`` that goes through the one
all-or-nothing reload path (``Gateway.reload``), so workers get provider items like any other generation.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Coroutine, Iterable, Mapping
from types import MappingProxyType

from .._aio import cancel_and_wait
from ..config.model import GatewayConfig, PemCertificate, RouterConfig, ServerConfig, ServiceConfig
from ..config.references import check_references
from ..config.schema.engine import Ctx
from ..middleware import catalog


@dataclasses.dataclass(frozen=True, slots=True)
class Contribution:
    """What one provider adds to the file configuration now.

    ``provider`` is the provider kind shown by the admin API (``dns``, ``discovery``, ``kubernetes``); ``sources``
    maps ``routers.<name>`` / ``services.<name>`` to the diagnostic prefix of the item's source (§2.6:
    ``discovery:<seed url>``); ``servers`` replaces the servers of file-defined services (DNS, §12.4).
    ``certificates`` are served on every TLS entrypoint (Kubernetes TLS Secrets, §10.2); ``warnings`` are the
    provider's own (source-prefixed) reasons for items it left out, reported with the merge's.
    Provider services may have no servers (a Kubernetes Service without ready endpoints): requests get 503.
    """

    provider: str
    routers: Mapping[str, RouterConfig] = dataclasses.field(default_factory=dict)
    services: Mapping[str, ServiceConfig] = dataclasses.field(default_factory=dict)
    servers: Mapping[str, tuple[ServerConfig, ...]] = dataclasses.field(default_factory=dict)
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    certificates: tuple[PemCertificate, ...] = ()
    warnings: tuple[str, ...] = ()

    def source(self, key: str) -> str:
        return self.sources.get(key, self.provider)


def _owner(path: str, prefixes: Iterable[str]) -> str | None:
    """The item key (``routers.x``) that diagnostic ``path`` belongs to, among ``prefixes``."""
    for key in prefixes:
        if path == key or path.startswith((key + ".", key + "[")):
            return key
    return None


def merge(base: GatewayConfig, contributions: Iterable[Contribution]) -> tuple[GatewayConfig, list[str]]:
    """``base`` (the file configuration) plus the valid provider items, and the warnings for the skipped ones.

    Nothing of ``base`` changes but the servers of DNS-fed services; file items always win.
    """
    warnings: list[str] = []
    routers: dict[str, RouterConfig] = {}
    services: dict[str, ServiceConfig] = {}
    owner: dict[str, Contribution] = {}
    origins: dict[str, str] = {}
    fed: dict[str, tuple[ServerConfig, ...]] = {}
    contributions = list(contributions)
    certificates: list[PemCertificate] = []
    for c in contributions:
        warnings.extend(c.warnings)
        certificates.extend(c.certificates)
        skipped: set[str] = set()  # this provider's services that were skipped: its routers to them go too
        for name, servers in c.servers.items():
            if name in base.services:  # the file names the service (checked at load); it may be gone since
                fed[name] = fed.get(name, ()) + servers  # several dns blocks may feed one service
                origins[f"services.{name}"] = c.provider
        for name, svc in c.services.items():
            key = f"services.{name}"
            if name in base.services or name in services:
                what = "a file-defined service" if name in base.services else f"a service of {owner[key].source(key)}"
                warnings.append(f"{c.source(key)}: {key}: {what} has this name; skipped")
                skipped.add(name)
                continue
            services[name] = dataclasses.replace(svc, name=name)
            owner[key] = c
        for name, router in c.routers.items():
            key = f"routers.{name}"
            if name in base.routers or name in routers:
                what = "a file-defined router" if name in base.routers else f"a router of {owner[key].source(key)}"
                warnings.append(f"{c.source(key)}: {key}: {what} has this name; skipped")
                continue
            if router.service in skipped:
                warnings.append(f'{c.source(key)}: {key}: its service "{router.service}" was skipped; skipped')
                continue
            missing = [m for m in router.middlewares
                       if m in base.middlewares and not catalog.is_implemented(base.middlewares[m].type)]
            if missing:
                warnings.append(f'{c.source(key)}: {key}: middleware "{missing[0]}" is of a type this build does not '
                                "run (not supported yet); skipped")
                continue
            routers[name] = dataclasses.replace(router, name=name)
            owner[key] = c
    explicit: set[str] = set()
    checked_routers: dict[str, RouterConfig] = {}
    checked_services: dict[str, ServiceConfig] = {}
    # validate like file items; drop the items with errors (and the routers of a dropped service) until clean
    for _ in range(len(routers) + len(services) + 2):
        ctx = Ctx({})
        all_routers, all_services = check_references(
            ctx, dict(base.entrypoints), {**base.routers, **routers}, {**base.services, **services},
            dict(base.middlewares), set(base.middlewares), base.admin, base.providers, may_be_empty=set(services),
        )
        errors = [i for i in ctx.issues if i.severity == "error"]
        if not errors:
            checked_routers = {n: all_routers[n] for n in routers}
            checked_services = {n: all_services[n] for n in services}
            explicit = ctx.explicit
            break
        keys = [f"routers.{n}" for n in routers] + [f"services.{n}" for n in services]
        bad: dict[str, str] = {}
        for issue in errors:
            found = _owner(issue.path, keys)
            if found is None:
                # an error of a file item that only the provider items cause (a file service used by routers of
                # two protocols): the provider routers of that file service go
                file_key = _owner(issue.path, [f"services.{n}" for n in base.services])
                culprits = [f"routers.{n}" for n, r in routers.items()
                            if file_key is not None and f"services.{r.service}" == file_key]
                for k in culprits:
                    bad.setdefault(k, f"{k}: conflicts with the file configuration: {issue.path}: {issue.message}")
                continue
            bad.setdefault(found, f"{issue.path}: {issue.message}")
        if not bad:  # nothing to blame on one item: keep the file configuration alone
            warnings.append("providers: the provider items conflict with the file configuration ("
                            + "; ".join(f"{i.path}: {i.message}" for i in errors) + "); all skipped")
            routers, services = {}, {}
            continue
        for key, message in bad.items():
            kind, _, name = key.partition(".")
            first, nl, rest = message.partition("\n")  # a rule diagnostic goes on with the rule and a caret
            warnings.append(f"{owner[key].source(key)}: {first}; skipped{nl}{rest}")
            if kind == "services":
                del services[name]
                for rname in [r for r, cfg in routers.items() if cfg.service == name]:
                    rkey = f"routers.{rname}"
                    warnings.append(f'{owner[rkey].source(rkey)}: {rkey}: its service "{name}" was skipped; skipped')
                    del routers[rname]
            else:
                routers.pop(name, None)
    for key in [*(f"routers.{n}" for n in checked_routers), *(f"services.{n}" for n in checked_services)]:
        origins[key] = owner[key].provider
    merged_services = dict(base.services)
    for name, servers in fed.items():
        svc = merged_services[name]
        merged_services[name] = dataclasses.replace(
            svc, load_balancer=dataclasses.replace(svc.load_balancer, servers=servers))
    merged_services.update(checked_services)
    merged = dataclasses.replace(
        base,
        routers={**base.routers, **checked_routers},
        services=merged_services,
        explicit=base.explicit | frozenset(explicit),
        origins=MappingProxyType(origins),
        provided_certificates=tuple(certificates),
    )
    return merged, warnings


class RunningProvider:
    """What every discovery provider shares: its contribution, and one task (``_run``) from ``start`` to ``close``."""

    def __init__(self, source: str) -> None:
        self._contribution = Contribution(source)
        self._task: asyncio.Task[None] | None = None

    def contribution(self, base: GatewayConfig | None = None) -> Contribution:
        """What the provider adds now; ``base`` is the file configuration being merged (Kubernetes translates
        against it)."""
        return self._contribution

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    def _run(self) -> Coroutine[None, None, None]:
        raise NotImplementedError
