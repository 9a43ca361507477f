"""The discovery providers a gateway runs (SPEC §12): started, kept or stopped to match each configuration, their
changes debounced into one reload.

A provider keeps running (and keeps what it found) while its configuration block is unchanged, so a file reload
does not empty a DNS-fed service or forget the seeds that contribute. Provider changes are debounced on the trailing
edge (a reload starts 200 ms after the last change, SPEC §12.1); a change during a reload schedules exactly one
more reload afterwards.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from .._aio import cancel_and_wait
from ..config.model import (
    DiscoveryProviderConfig,
    DnsProviderConfig,
    GatewayConfig,
    KubernetesProviderConfig,
    ProvidersConfig,
)
from .merge import Contribution

log = logging.getLogger("a3s_gateway.providers")

DEBOUNCE: float = 0.2  # seconds after the last provider change (SPEC §12.1)


class Provider(Protocol):
    """One running provider: it calls the ``changed`` callback it was made with when :meth:`contribution` changed."""

    def start(self) -> None: ...

    async def close(self) -> None: ...

    def contribution(self, base: GatewayConfig | None = None) -> Contribution: ...


#: (kind, configuration block) -> a provider; the key of a running provider
Key = tuple[str, object]


def _make(key: Key, changed: Callable[[], None]) -> Provider:
    kind, cfg = key
    if kind == "dns":
        from .dns import DnsProvider

        assert isinstance(cfg, DnsProviderConfig)
        return DnsProvider(cfg, changed)
    if kind == "kubernetes":
        from .kubernetes import KubernetesProvider

        assert isinstance(cfg, KubernetesProviderConfig)
        return KubernetesProvider(cfg, changed)
    from .wellknown import WellKnownProvider

    assert isinstance(cfg, DiscoveryProviderConfig)
    return WellKnownProvider(cfg, changed)


def wanted(config: ProvidersConfig) -> list[Key]:
    """The providers a ``providers`` block runs, in a stable order (the file provider is the FileWatcher)."""
    keys: list[Key] = [("dns", d) for d in config.dns]
    if config.discovery is not None:
        keys.append(("discovery", config.discovery))
    if config.kubernetes is not None:
        keys.append(("kubernetes", config.kubernetes))
    return keys


class Providers:
    """The running providers of one gateway; ``reload`` is awaited (debounced) after their changes and must not
    raise for a bad configuration (it logs and keeps the running generation)."""

    def __init__(self, reload: Callable[[], Awaitable[None]], *, debounce: float = DEBOUNCE,
                 make: Callable[[Key, Callable[[], None]], Provider] = _make) -> None:
        self._reload = reload
        self._make = make
        self.debounce = debounce
        self.running: dict[Key, Provider] = {}
        self._wake = asyncio.Event()
        self._last_change = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._warned: set[str] = set()  # skip warnings already logged (each reload merges again)

    def contributions(self, base: GatewayConfig) -> list[Contribution]:
        """What the running providers of ``base.providers`` contribute now to the file configuration ``base``
        (providers the block no longer has: nothing)."""
        return [self.running[key].contribution(base) for key in wanted(base.providers) if key in self.running]

    def warn(self, warnings: list[str]) -> None:
        """Log the merge warnings not logged before (a warning that went away is logged again if it returns)."""
        for line in warnings:
            if line not in self._warned:
                log.warning("%s", line)
        self._warned = set(warnings)

    async def sync(self, config: ProvidersConfig) -> bool:
        """Start the providers ``config`` adds, stop the ones it dropped, keep the unchanged ones. True when any
        provider was stopped (its items must leave the running configuration)."""
        keys = wanted(config)
        gone = [p for key, p in self.running.items() if key not in keys]
        added = {key: self._make(key, self.changed) for key in keys if key not in self.running}
        self.running = {key: self.running.get(key) or added[key] for key in keys}
        for provider in added.values():
            provider.start()
        if keys and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._reload_loop())
        for provider in gone:
            await provider.close()
        return bool(gone)

    def changed(self) -> None:
        """A provider's contribution changed: (re)arm the trailing debounce timer."""
        if self._closed:
            return
        self._last_change = asyncio.get_running_loop().time()
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        running, self.running = list(self.running.values()), {}
        for provider in running:
            await provider.close()
        if self._task is not None and self._task is not asyncio.current_task():
            await cancel_and_wait([self._task])

    async def _reload_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            await self._wake.wait()
            while True:  # trailing edge: wait until `debounce` has passed since the last change
                delay = self._last_change + self.debounce - loop.time()
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            self._wake.clear()  # a change during the reload sets it again -> exactly one more reload
            try:
                await self._reload()
            except Exception:
                log.exception("reload after a provider change failed unexpectedly")
