"""Ingress status (SPEC §12.5, as ingress controllers do): the gateway's address in ``status.loadBalancer.ingress``
of the Ingresses it serves.

The address comes from ``publish_address`` (IPs and hostnames, as written) or the ``publish_service`` Service
(``namespace/name``): its ``status.loadBalancer.ingress`` when the cloud gave it one, else its
``spec.externalIPs``, else its ``clusterIP``. Both unset: no status is written. An Ingress is PATCHed (merge patch
of the ``status`` subresource) only when its status differs; an Ingress this writer wrote and that is no longer
served gets its address removed. Failures are logged and retried with backoff. Only the process that runs the
providers writes (the single process, or the supervisor: workers run no provider).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..config.model import KubernetesProviderConfig
from ..http.kube import KubeClient, KubeError
from .kube_watch import INGRESSES, Backoff, Key

log = logging.getLogger("a3s_gateway.providers.kubernetes")

Address = dict[str, str]


def _address(text: str) -> Address:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return {"hostname": text}
    return {"ip": text}


def published(cfg: KubernetesProviderConfig, service: Mapping[str, Any] | None) -> list[Address]:
    """The ``status.loadBalancer.ingress`` entries to write ([] = nothing to write)."""
    if cfg.publish_address:
        return [_address(a) for a in cfg.publish_address]
    if service is None:
        return []
    status = service.get("status")
    balancer = status.get("loadBalancer") if isinstance(status, dict) else None
    entries = balancer.get("ingress") if isinstance(balancer, dict) else None
    found: list[Address] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            kept = {k: v for k, v in entry.items() if k in ("ip", "hostname") and isinstance(v, str) and v}
            if kept:
                found.append(kept)
    if found:
        return found
    spec = service.get("spec")
    spec = spec if isinstance(spec, dict) else {}
    external = spec.get("externalIPs")
    if isinstance(external, list) and external:
        return [{"ip": ip} for ip in external if isinstance(ip, str) and ip]
    cluster_ip = spec.get("clusterIP")
    if isinstance(cluster_ip, str) and cluster_ip and cluster_ip != "None":
        return [{"ip": cluster_ip}]
    return []


def current(ingress: Mapping[str, Any]) -> list[Any]:
    status = ingress.get("status")
    balancer = status.get("loadBalancer") if isinstance(status, dict) else None
    entries = balancer.get("ingress") if isinstance(balancer, dict) else None
    return entries if isinstance(entries, list) else []


class StatusWriter:
    """Keeps the served Ingresses' status at the published address. ``wake`` after any change of the Ingresses,
    the published Service or the served set; ``run`` as a task.

    ``served()`` gives the served Ingresses, ``ingresses()`` the Ingress store, ``service()`` the published
    Service object (or None).
    """

    def __init__(self, cfg: KubernetesProviderConfig, served: Callable[[], list[Key]],
                 ingresses: Callable[[], Mapping[Key, dict[str, Any]]],
                 service: Callable[[], Mapping[str, Any] | None], backoff: Backoff | None = None) -> None:
        self.cfg = cfg
        self._served = served
        self._ingresses = ingresses
        self._service = service
        self.backoff = backoff if backoff is not None else Backoff()
        self._wake = asyncio.Event()
        self.written: set[Key] = set()  # Ingresses whose status this writer set
        self.patches = 0
        self.error = ""  # the last failure ("" once a pass succeeds)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, client: KubeClient) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.write(client)
            except KubeError as e:
                delay = self.backoff.next()
                if str(e) != self.error:  # logged when it starts or changes, not on every retry
                    log.warning("kubernetes: writing Ingress status failed: %s; retrying in %.1fs", e, delay)
                self.error = str(e)
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                self.backoff.reset()
                self.error = ""

    async def write(self, client: KubeClient) -> None:
        """One pass: PATCH every Ingress whose status differs from what it should be."""
        addresses = published(self.cfg, self._service())
        if not addresses:
            return  # the published Service has no address (yet): nothing to write
        store = self._ingresses()
        served = set(self._served())
        for key in sorted(served | self.written):
            ingress = store.get(key)
            if ingress is None:
                self.written.discard(key)
                continue
            want: list[Address] | None = addresses if key in served else None
            if key not in served and current(ingress) != addresses:
                self.written.discard(key)  # someone else wrote it since: leave it
                continue
            if want is not None and current(ingress) == want:
                self.written.add(key)
                continue
            namespace, name = key
            await client.merge_patch(f"{INGRESSES.path(namespace)}/{name}/status",
                                     {"status": {"loadBalancer": {"ingress": want}}})
            self.patches += 1
            if want is None:
                self.written.discard(key)
                log.info("kubernetes: Ingress %s/%s is no longer served: status address removed", namespace, name)
            else:
                self.written.add(key)
                log.info("kubernetes: Ingress %s/%s status: %s", namespace, name,
                         ", ".join(a.get("ip") or a.get("hostname", "") for a in want))
