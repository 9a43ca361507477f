"""Kubernetes provider (SPEC §12.5, §12.6): the cluster's Ingresses and IngressRoutes become routers, services and
certificates; the gateway acts as the cluster's ingress controller.

One :class:`~.kube_watch.Reflector` per resource keeps the objects current (list + watch, bookmarks, relist on 410,
backoff; the objects kept while the API fails): Ingresses and IngressRoutes (``namespace``, ``label_selector``;
IngressRoutes only with ``ingress_route_crd``), IngressClasses, Services, EndpointSlices and ``kubernetes.io/tls``
Secrets (``namespace``). Nothing is contributed before every reflector has listed once (a half-listed cluster
would route to services without endpoints); after that every change calls the hub's ``changed``, and the
contribution is translated (``kube_translate.translate``) when the hub merges — once per debounced reload, with
the file configuration of that reload. With ``publish_service`` / ``publish_address`` a
:class:`~.kube_status.StatusWriter` writes the served Ingresses' status.

The connection (``http.kube.connect``) follows ``kubeconfig``, the in-cluster service account, ``$KUBECONFIG``,
``~/.kube/config``; a connection that cannot be made is logged and retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._aio import cancel_and_wait
from ..config.model import GatewayConfig, KubernetesProviderConfig
from ..http.kube import KubeClient, KubeConfigError, connect
from .kube_status import StatusWriter
from .kube_translate import KubeState, served_ingresses, translate
from .kube_watch import (
    ENDPOINT_SLICES,
    INGRESS_CLASSES,
    INGRESS_ROUTES,
    INGRESSES,
    SECRETS,
    SERVICES,
    Backoff,
    Key,
    Reflector,
)
from .merge import Contribution, RunningProvider

log = logging.getLogger("a3s_gateway.providers.kubernetes")

TLS_SECRET: str = "kubernetes.io/tls"


class KubernetesProvider(RunningProvider):
    """One ``providers { kubernetes { ... } }`` block, watching until closed."""

    def __init__(self, cfg: KubernetesProviderConfig, changed: Callable[[], None],
                 connector: Callable[[str], Awaitable[KubeClient]] = connect) -> None:
        super().__init__("kubernetes")
        self.cfg = cfg
        self._changed = changed
        self._connector = connector
        ns, labels = cfg.namespace, cfg.label_selector
        on = self._on_change
        self.ingresses = Reflector(INGRESSES, on, namespace=ns, label_selector=labels)
        self.classes = Reflector(INGRESS_CLASSES, on)
        self.services = Reflector(SERVICES, on, namespace=ns)
        self.slices = Reflector(ENDPOINT_SLICES, on, namespace=ns)
        self.secrets = Reflector(SECRETS, on, namespace=ns, field_selector=f"type={TLS_SECRET}")
        self.routes = Reflector(INGRESS_ROUTES, on, namespace=ns, label_selector=labels) \
            if cfg.ingress_route_crd else None
        self.published: Reflector | None = None
        if cfg.publish_service and not cfg.publish_address:
            pns, _, pname = cfg.publish_service.partition("/")
            # its own watch: the published Service may live outside the watched namespace
            self.published = Reflector(SERVICES, self._status_changed, namespace=pns,
                                       field_selector=f"metadata.name={pname}")
        self.status: StatusWriter | None = None
        if cfg.publish_service or cfg.publish_address:
            self.status = StatusWriter(cfg, self.served, lambda: self.ingresses.items, self._published_service)
        self.ready = asyncio.Event()  # every reflector listed once
        self.synced_after: float | None = None  # seconds from the start to the first full sync
        self.client: KubeClient | None = None
        self._version = 0  # bumped by every change of the objects
        self._translated: tuple[int, GatewayConfig] | None = None  # (version, base) of self._contribution

    def reflectors(self) -> list[Reflector]:
        found = [self.ingresses, self.classes, self.services, self.slices, self.secrets]
        found += [r for r in (self.routes, self.published) if r is not None]
        return found

    def state(self) -> KubeState:
        return KubeState(
            ingresses=dict(self.ingresses.items),
            ingress_classes={name: obj for (_, name), obj in self.classes.items.items()},
            services=dict(self.services.items),
            endpoint_slices=dict(self.slices.items),
            secrets={k: v for k, v in self.secrets.items.items() if v.get("type") == TLS_SECRET},
            ingress_routes=dict(self.routes.items) if self.routes is not None else {},
        )

    def served(self) -> list[Key]:
        return served_ingresses(self.state(), self.cfg) if self.ready.is_set() else []

    def _published_service(self) -> Mapping[str, Any] | None:
        if self.published is None:
            return None
        return next(iter(self.published.items.values()), None)

    def _on_change(self) -> None:
        self._version += 1
        if self.ready.is_set():
            self._changed()
            self._status_changed()

    def _status_changed(self) -> None:
        if self.status is not None and self.ready.is_set():
            self.status.wake()

    def contribution(self, base: GatewayConfig | None = None) -> Contribution:
        """The translation of the objects now, for the file configuration ``base`` (cached per change and base)."""
        if not self.ready.is_set() or base is None:
            return self._contribution
        translated = self._translated
        if translated is not None and translated[0] == self._version and translated[1] is base:
            return self._contribution
        try:
            self._contribution = translate(self.state(), self.cfg, base)
        except Exception:  # a translation bug must not stop the gateway: keep the last result
            log.exception("kubernetes: translating the cluster's objects failed; keeping the previous routes")
        self._translated = (self._version, base)
        return self._contribution

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = Backoff()
        while True:
            try:
                client = await self._connector(self.cfg.kubeconfig)
                break
            except KubeConfigError as e:
                delay = backoff.next()
                log.error("providers.kubernetes: cannot connect: %s; retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
        self.client = client
        log.info("kubernetes: watching %s (%s)", client.host, client.source)
        tasks = [loop.create_task(r.run(client)) for r in self.reflectors()]
        try:
            await asyncio.gather(*(r.synced.wait() for r in self.reflectors()))
            self.synced_after = loop.time() - started
            self.ready.set()
            log.info("kubernetes: first sync in %.2fs: %d Ingress(es), %d Service(s), %d EndpointSlice(s), "
                     "%d TLS Secret(s)%s", self.synced_after, len(self.ingresses.items), len(self.services.items),
                     len(self.slices.items), len(self.secrets.items),
                     f", {len(self.routes.items)} IngressRoute(s)" if self.routes is not None else "")
            self._on_change()
            if self.status is not None:
                tasks.append(loop.create_task(self.status.run(client)))
            await asyncio.gather(*tasks)
        finally:
            await cancel_and_wait(tasks)
            await client.close()
