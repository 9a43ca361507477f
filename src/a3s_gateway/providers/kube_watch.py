"""Reflectors: one list + watch loop per Kubernetes resource collection, keeping its objects (SPEC §12.5).

A :class:`Reflector` lists its collection, then watches it from the list's ``resourceVersion`` with
``allowWatchBookmarks`` (a bookmark only advances the version), and applies every ADDED / MODIFIED / DELETED event
to its store. When a watch ends (the server's ``timeoutSeconds``) it watches again from the last version seen;
when that version is gone (``410``, as the reply's status or as an ``ERROR`` event) it lists again and replaces the
store with the list (the objects that went away meanwhile are dropped). Any other error — the API unreachable, a
5xx, a bad stream — is logged and retried after an exponential backoff (0.5 s doubling up to 30 s, reset by a
watch that delivered something); the store is kept as it was, so an unreachable API never empties the routes.

The store holds the objects as the API sends them (camelCase JSON dicts), keyed by ``(namespace, name)``
(``("", name)`` for cluster-scoped resources). ``on_change`` is called after every change of the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from ..http.kube import KubeClient, KubeError, Watch

log = logging.getLogger("a3s_gateway.providers.kubernetes")

BACKOFF_FIRST: Final = 0.5
BACKOFF_CAP: Final = 30.0

Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Resource:
    """A collection of the API: ``plural`` under ``prefix`` (``/api/v1``, ``/apis/<group>/<version>``)."""

    plural: str
    prefix: str
    namespaced: bool = True

    def path(self, namespace: str) -> str:
        if self.namespaced and namespace:
            return f"{self.prefix}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{self.prefix}/{self.plural}"


INGRESSES: Final = Resource("ingresses", "/apis/networking.k8s.io/v1")
INGRESS_CLASSES: Final = Resource("ingressclasses", "/apis/networking.k8s.io/v1", namespaced=False)
SERVICES: Final = Resource("services", "/api/v1")
ENDPOINT_SLICES: Final = Resource("endpointslices", "/apis/discovery.k8s.io/v1")
SECRETS: Final = Resource("secrets", "/api/v1")
INGRESS_ROUTES: Final = Resource("ingressroutes", "/apis/a3s-gateway.io/v1alpha1")
DEPLOYMENTS: Final = Resource("deployments", "/apis/apps/v1")


class Backoff:
    """Exponential delays: ``first``, doubling, capped at ``cap``; :meth:`reset` starts over."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, delay * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


def key_of(obj: dict[str, Any]) -> Key | None:
    """``(namespace, name)`` of an object, None when it has no name."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    name = meta.get("name")
    namespace = meta.get("namespace") or ""
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return namespace, name


def _version(obj: object) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    version = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else ""


class Reflector:
    """The objects of one collection, kept current by list + watch. Run :meth:`run` as a task; cancel to stop.

    ``synced`` is set after the first successful list; ``error`` is the last error ("" once it works again);
    ``lists`` and ``watches`` count the calls made (tests and the admin read them).
    """

    def __init__(self, resource: Resource, on_change: Callable[[], None], *, namespace: str = "",
                 label_selector: str = "", field_selector: str = "", backoff: Backoff | None = None) -> None:
        self.resource = resource
        self.namespace = namespace if resource.namespaced else ""
        self.query: list[tuple[str, str]] = []
        if label_selector:
            self.query.append(("labelSelector", label_selector))
        if field_selector:
            self.query.append(("fieldSelector", field_selector))
        self.on_change = on_change
        self.backoff = backoff if backoff is not None else Backoff()
        self.items: dict[Key, dict[str, Any]] = {}
        self.version = ""  # "" = list before the next watch
        self.synced = asyncio.Event()
        self.error = ""
        self.lists = 0
        self.watches = 0

    @property
    def what(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return f"{self.resource.plural}{where}"

    async def run(self, client: KubeClient) -> None:
        path = self.resource.path(self.namespace)
        while True:
            try:
                if not self.version:
                    await self._list(client, path)
                watch = await client.watch(path, self.query, self.version)
                self.watches += 1
                self._recovered()
                try:
                    delivered = await self._consume(watch)
                finally:
                    watch.close()
                if delivered:
                    self.backoff.reset()
                if not delivered and self.version:  # an empty stream: do not spin on a server ending them at once
                    await asyncio.sleep(self.backoff.next())
            except KubeError as e:
                if e.status == 410:  # the version is gone: list again, at once
                    log.info("kubernetes %s: resource version %s is gone; listing again", self.what, self.version)
                    self.version = ""
                    continue
                delay = self.backoff.next()
                if str(e) != self.error:
                    kept = f"keeping {len(self.items)} object(s)" if self.synced.is_set() else "not listed yet"
                    log.warning("kubernetes %s: %s; %s, retrying in %.1fs", self.what, e, kept, delay)
                self.error = str(e)
                await asyncio.sleep(delay)

    def _recovered(self) -> None:
        if self.error:
            log.info("kubernetes %s: the API answers again", self.what)
            self.error = ""

    async def _list(self, client: KubeClient, path: str) -> None:
        reply = await client.list(path, self.query)
        self.lists += 1
        items = reply.get("items")
        version = _version(reply)
        if not isinstance(items, list) or not version:
            raise KubeError(f"kubernetes GET {client.host}{path}: not a list (items, metadata.resourceVersion)")
        fresh: dict[Key, dict[str, Any]] = {}
        for obj in items:
            key = key_of(obj) if isinstance(obj, dict) else None
            if key is not None:
                assert isinstance(obj, dict)
                fresh[key] = obj
        changed = fresh != self.items
        self.items = fresh
        self.version = version
        self._recovered()
        first = not self.synced.is_set()
        self.synced.set()
        if changed or first:
            self.on_change()

    async def _consume(self, watch: Watch) -> bool:
        """Apply events until the stream ends; True when it delivered any. KubeError(410) when the version is
        gone."""
        delivered = False
        while (event := await watch.next()) is not None:
            delivered = True
            kind = event.get("type")
            obj = event.get("object")
            if not isinstance(obj, dict):
                raise KubeError(f"{watch.what}: {kind} event without an object")
            if kind == "ERROR":
                code = obj.get("code")
                raise KubeError(f"{watch.what}: watch error {code}: {obj.get('message')}",
                                code if isinstance(code, int) else 0)
            version = _version(obj)
            if kind == "BOOKMARK":
                if version:
                    self.version = version
                continue
            key = key_of(obj)
            if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
                raise KubeError(f"{watch.what}: bad watch event {kind!r}")
            if kind == "DELETED":
                changed = self.items.pop(key, None) is not None
            else:
                changed = self.items.get(key) != obj
                self.items[key] = obj
            if version:
                self.version = version
            if changed:
                self.on_change()
        return delivered
