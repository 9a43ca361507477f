"""The ``kubernetes`` scale executor: scales a Deployment, watches its Service's EndpointSlices (SPEC §8.5).

:meth:`KubernetesExecutor.scale` PATCHes ``deployments/{name}/scale``. :meth:`KubernetesExecutor.run` lists the
EndpointSlices labelled ``kubernetes.io/service-name=<service>``, then watches them from the list's resourceVersion
and re-lists when the watch ends or its version is gone (410); every change of the ready set is reported to the sink
as the full sorted list of replica URLs.

The calls go through the project's Kubernetes client (``http.kube``, on kubernetes_asyncio) with an explicit
connection: ``api_url`` (else the in-cluster API address), the bearer token of ``token_file`` re-read before every
call (projected service-account tokens rotate) and the CA bundle ``ca_file``, checked when the executor is built.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, urlsplit

from ...config.model import KubernetesExecutorConfig
from ...http.kube import KubeClient, KubeError, Watch, connect_explicit
from . import EndpointSink, ExecutorError

NAMESPACE_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
RETRY_DELAY: Final = 1.0  # after an error; also the minimum time between two lists


class KubernetesExecutor:
    """Scales one Deployment and reports the ready endpoints of its Service to ``sink``.

    Raises ExecutorError when no API server is configured and the process is not in a cluster, or the CA file
    cannot be loaded.
    """

    kind = "kubernetes"

    def __init__(self, target: str, cfg: KubernetesExecutorConfig, sink: EndpointSink) -> None:
        self.target = target
        self.namespace = cfg.namespace or _in_cluster_namespace()
        self.deployment = cfg.deployment or target
        self.service_name = cfg.service_name or self.deployment
        self.api_url = (cfg.api_url or _in_cluster_api_url()).rstrip("/")
        self._port = cfg.port
        self._scheme = cfg.scheme
        self._sink = sink
        if urlsplit(self.api_url).scheme == "https" and os.path.isfile(cfg.ca_file):
            try:
                ssl.create_default_context(cafile=cfg.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ExecutorError(f"kubernetes CA file {cfg.ca_file}: {exc}") from exc
        self._client: KubeClient = connect_explicit(self.api_url, cfg.token_file, cfg.ca_file)
        ns = quote(self.namespace, safe="")
        self._scale_path = f"/apis/apps/v1/namespaces/{ns}/deployments/{quote(self.deployment, safe='')}/scale"
        self._slices_path = f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
        self._selector = [("labelSelector", f"kubernetes.io/service-name={self.service_name}")]
        self._slices: dict[str, list[str]] = {}  # EndpointSlice name -> its replica URLs
        self._reported: list[str] | None = None

    async def scale(self, desired: int, current: int, reason: str) -> int:
        """Set the Deployment's replicas to ``desired``; the ``spec.replicas`` (else ``status.replicas``) of the reply.

        ``current`` and ``reason`` are not sent: the scale subresource has no place for them.
        """
        try:
            reply = await self._client.merge_patch(self._scale_path, {"spec": {"replicas": desired}})
        except KubeError as exc:
            raise ExecutorError(str(exc)) from exc
        for part in ("spec", "status"):
            section = reply.get(part)
            replicas = section.get("replicas") if isinstance(section, dict) else None
            if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0:
                return replicas
        raise ExecutorError(f"kubernetes PATCH {self.api_url}{self._scale_path}: response has no spec.replicas")

    async def run(self, fast: Callable[[], bool], on_error: Callable[[str], None]) -> None:
        """List and watch forever; errors go to ``on_error`` and the list is retried after 1 s. Cancel to stop.

        ``fast`` is not used: the watch pushes every change (it is accepted for the executors' common interface).
        """
        loop = asyncio.get_running_loop()
        next_list = loop.time()
        while True:
            delay = next_list - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_list = loop.time() + RETRY_DELAY  # a server that ends every watch at once is not hammered
            try:
                await self._watch(await self._list())
            except (ExecutorError, KubeError) as exc:
                on_error(str(exc))
                next_list = loop.time() + RETRY_DELAY

    async def close(self) -> None:
        """Close the API connections (``run`` ends its watch when its task is cancelled)."""
        await self._client.close()

    # --- EndpointSlices --------------------------------------------------------------------------------------------

    async def _list(self) -> str:
        """List the Service's EndpointSlices, report their endpoints; the list's resourceVersion."""
        what = f"kubernetes GET {self.api_url}{self._slices_path}"
        reply = await self._client.list(self._slices_path, self._selector)
        items = reply.get("items") or []
        metadata = reply.get("metadata")
        version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(items, list) or not isinstance(version, str) or not version:
            raise ExecutorError(f"{what}: not an EndpointSliceList (items, metadata.resourceVersion)")
        slices: dict[str, list[str]] = {}
        for item in items:
            if not isinstance(item, dict):
                raise ExecutorError(f"{what}: an item is not an object")
            slices[_name(item, what)] = self._slice_urls(item, what)
        self._slices = slices
        self._report()
        return version

    async def _watch(self, version: str) -> None:
        """Apply watch events from ``version`` until the stream ends or the version is gone (410)."""
        try:
            watch: Watch = await self._client.watch(self._slices_path, self._selector, version, bookmarks=False)
        except KubeError as exc:
            if exc.status == 410:  # the version is too old: re-list
                return
            raise
        try:
            while (event := await watch.next()) is not None:
                if not self._apply(event, watch.what):
                    return
        finally:
            watch.close()

    def _apply(self, event: dict[str, Any], what: str) -> bool:
        """Apply one watch event; False when the watch must be restarted with a new list (410 Gone)."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ExecutorError(f"{what}: {kind} event without an object")
        if kind == "ERROR":
            if obj.get("code") == 410:
                return False
            raise ExecutorError(f"{what}: watch error {obj.get('code')}: {obj.get('message')}")
        if kind == "BOOKMARK":  # only a newer resourceVersion; a restarted watch starts from a fresh list anyway
            return True
        if kind in ("ADDED", "MODIFIED"):
            self._slices[_name(obj, what)] = self._slice_urls(obj, what)
        elif kind == "DELETED":
            self._slices.pop(_name(obj, what), None)
        else:
            raise ExecutorError(f"{what}: unknown watch event type {kind!r}")
        self._report()
        return True

    def _slice_urls(self, obj: dict[str, Any], what: str) -> list[str]:
        """The URLs of the ready, not terminating endpoints of one EndpointSlice."""
        name = _name(obj, what)
        port = self._resolve_port(obj.get("ports"), f"{what}: EndpointSlice {name}")
        endpoints = obj.get("endpoints") or []
        if port is None or not isinstance(endpoints, list):
            return []
        urls = []
        for endpoint in endpoints:
            conditions = endpoint.get("conditions") if isinstance(endpoint, dict) else None
            if not isinstance(conditions, dict):
                conditions = {}
            if conditions.get("ready") is not True or conditions.get("terminating") is True:
                continue
            addresses = endpoint.get("addresses")
            # the API allows several fungible addresses and says consumers may use only the first
            if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
                raise ExecutorError(f"{what}: EndpointSlice {name} has an endpoint without addresses")
            address = addresses[0]
            host = f"[{address}]" if ":" in address else address
            urls.append(f"{self._scheme}://{host}:{port}")
        return urls

    def _resolve_port(self, ports: object, where: str) -> int | None:
        """The configured port: a number as is, a name looked up in the slice, none = the slice's first port."""
        if isinstance(self._port, int):
            return self._port
        if ports is None:
            return None
        if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
            raise ExecutorError(f"{where}: 'ports' is not a list of objects")
        for entry in ports:
            if self._port is None or entry.get("name") == self._port:
                number = entry.get("port")
                return number if isinstance(number, int) and not isinstance(number, bool) else None
        return None

    def _report(self) -> None:
        urls = sorted({url for urls in self._slices.values() for url in urls})
        if urls != self._reported:
            self._reported = urls
            self._sink.set_endpoints(list(urls))


def _name(obj: dict[str, Any], what: str) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ExecutorError(f"{what}: object without metadata.name")
    return name


def _in_cluster_namespace() -> str:
    try:
        with open(NAMESPACE_FILE, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except (OSError, UnicodeError):
        return "default"


def _in_cluster_api_url() -> str:
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443") or "443"
    if not host:
        raise ExecutorError("kubernetes executor: no api_url and KUBERNETES_SERVICE_HOST is not set (not in a cluster)")
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
