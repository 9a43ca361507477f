"""A fake Kubernetes API server for the provider and executor tests (no cluster runs here).

``async with FakeCluster() as cluster``: an HTTP/1.1 server on 127.0.0.1 (keep-alive, as aiohttp expects) with an
in-memory store of the resources the gateway reads — Ingresses, IngressClasses, Services, EndpointSlices, Secrets,
IngressRoutes — and of Deployments' scale. It implements what the clients rely on:

- list (``GET <collection>``, all namespaces or one, ``labelSelector`` ``k=v``/``k!=v``/``k``, ``fieldSelector``
  ``type=...`` for Secrets) answering ``metadata.resourceVersion``;
- watch (``?watch=1&resourceVersion=N``): the changes after N, then every new change, as newline-delimited JSON
  events on a chunked response; ``BOOKMARK`` events when the test calls :meth:`bookmark` (to watches that asked
  ``allowWatchBookmarks``); a version older than the compaction point (:meth:`compact`) is ``410 Gone``, as a
  status (``gone_as = "status"``) or as an ``ERROR`` event (``"event"``); ``timeoutSeconds`` ends the stream;
- ``PATCH`` (merge patch) of ``ingresses/<name>/status`` and ``deployments/<name>/scale``;
- failure injection: ``cluster.fail`` (resource -> statuses answered to the next lists/watches), ``cluster.down``
  (every call answers 503), :meth:`end_watches` (the server closes the streams), :meth:`gone` (an ERROR 410 event
  on the open streams).

Every request is recorded in ``cluster.requests`` (method, path, query).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: resource -> (API prefix, namespaced); the plural is the resource name
RESOURCES: dict[str, tuple[str, bool]] = {
    "ingresses": ("/apis/networking.k8s.io/v1", True),
    "ingressclasses": ("/apis/networking.k8s.io/v1", False),
    "services": ("/api/v1", True),
    "endpointslices": ("/apis/discovery.k8s.io/v1", True),
    "secrets": ("/api/v1", True),
    "ingressroutes": ("/apis/a3s-gateway.io/v1alpha1", True),
    "deployments": ("/apis/apps/v1", True),
}
KINDS = {"ingresses": "Ingress", "ingressclasses": "IngressClass", "services": "Service",
         "endpointslices": "EndpointSlice", "secrets": "Secret", "ingressroutes": "IngressRoute",
         "deployments": "Deployment"}


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]


@dataclass
class _Watch:
    resource: str
    namespace: str
    match: Callable[[dict[str, Any]], bool]
    bookmarks: bool
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def _selector(text: str) -> Callable[[dict[str, str]], bool]:
    terms = [t.strip() for t in text.split(",") if t.strip()]

    def match(labels: dict[str, str]) -> bool:
        for term in terms:
            if "!=" in term:
                k, v = term.split("!=", 1)
                if labels.get(k.strip()) == v.strip():
                    return False
            elif "=" in term:
                k, v = term.replace("==", "=").split("=", 1)
                if labels.get(k.strip()) != v.strip():
                    return False
            elif term not in labels:
                return False
        return True

    return match


def _status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 merge patch."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


class FakeCluster:
    def __init__(self) -> None:
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.version = 100
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self.compacted = 0  # watches from a version below this are 410 Gone
        self.gone_as = "status"
        self.fail: dict[str, list[int]] = {}
        self.down = False
        self.requests: list[Req] = []
        self.watches: list[_Watch] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.watch_opened = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeCluster:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def kubeconfig(self, path: Any) -> str:
        """Write a kubeconfig pointing at this server to ``path``; its path."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters:\n- name: fake\n  cluster:\n    server: {self.url}\n"
            "users:\n- name: fake\n  user:\n    token: fake-token\n"
            "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n"
        )
        return str(path)

    # --- the store --------------------------------------------------------------------------------------------

    def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, resource, kind, copy.deepcopy(obj)))
        for w in self.watches:
            if w.resource == resource and self._visible(w.namespace, w.match, obj):
                w.queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})

    def put(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (ADDED / MODIFIED)."""
        obj = copy.deepcopy(obj)
        obj.setdefault("kind", KINDS[resource])
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", "") if RESOURCES[resource][1] else "", meta["name"])
        if RESOURCES[resource][1]:
            meta.setdefault("namespace", "default")
            key = (meta["namespace"], meta["name"])
        kind = "MODIFIED" if key in self.store[resource] else "ADDED"
        self.store[resource][key] = obj
        self._record(resource, kind, obj)
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.store[resource].pop((namespace, name))
        self._record(resource, "DELETED", obj)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        return self.store[resource][(namespace, name)]

    def compact(self) -> None:
        """Forget the history: watches from any version before now are 410 Gone."""
        self.compacted = self.version
        self.history.clear()

    def bookmark(self) -> None:
        """A BOOKMARK with the current version to every open watch that allows them."""
        for w in self.watches:
            if w.bookmarks:
                w.queue.put_nowait({"type": "BOOKMARK", "object": {
                    "kind": KINDS[w.resource], "metadata": {"resourceVersion": str(self.version)}}})

    def gone(self) -> None:
        """An ERROR event 410 on every open watch (the server's version window moved past it)."""
        self.compact()
        for w in self.watches:
            w.queue.put_nowait({"type": "ERROR", "object": _status(410, "too old resource version", "Expired")})

    def end_watches(self) -> None:
        for w in self.watches:
            w.queue.put_nowait(None)

    def watch_count(self, resource: str) -> int:
        return sum(1 for w in self.watches if w.resource == resource)

    def calls(self, resource: str, watch: bool | None = None) -> list[Req]:
        return [r for r in self.requests if r.path.rsplit("/", 1)[-1] == resource
                and (watch is None or (r.query.get("watch") == "1") == watch)]

    @staticmethod
    def _visible(namespace: str, match: Callable[[dict[str, Any]], bool], obj: dict[str, Any]) -> bool:
        return (not namespace or obj["metadata"].get("namespace") == namespace) and match(obj)

    # --- HTTP --------------------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ")
                headers = {n.strip().lower(): v.strip() for n, _, v in (ln.partition(":") for ln in lines[1:])}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                parts = urlsplit(target)
                req = Req(method, parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()}, body, headers)
                self.requests.append(req)
                if not await self._serve(req, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (code, len(data), data))

    def _route(self, path: str) -> tuple[str, str, str, str] | None:
        """(resource, namespace, name, subresource) of a path, or None."""
        for resource, (prefix, namespaced) in RESOURCES.items():
            if not path.startswith(prefix + "/"):
                continue
            rest = path[len(prefix) + 1:].split("/")
            namespace = ""
            if namespaced and len(rest) >= 3 and rest[0] == "namespaces":
                namespace, rest = rest[1], rest[2:]
            if rest[0] != resource:
                continue
            return resource, namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else ""
        return None

    async def _serve(self, req: Req, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        route = self._route(req.path)
        if self.down:
            self._send(writer, 503, _status(503, "the API server is down"))
            return True
        if route is None:
            self._send(writer, 404, _status(404, f"no route {req.path}", "NotFound"))
            return True
        resource, namespace, name, sub = route
        failures = self.fail.get(resource)
        if failures:
            code = failures.pop(0)
            self._send(writer, code, _status(code, f"injected failure {code}"))
            return True
        if req.method == "PATCH":
            obj = self.store[resource].get((namespace, name))
            if obj is None:
                self._send(writer, 404, _status(404, f'{resource} "{name}" not found', "NotFound"))
                return True
            patch = json.loads(req.body)
            if resource == "deployments" and sub == "scale":
                obj.setdefault("spec", {})["replicas"] = patch["spec"]["replicas"]
                self._record(resource, "MODIFIED", obj)
                self._send(writer, 200, {"kind": "Scale", "spec": {"replicas": obj["spec"]["replicas"]},
                                         "status": {"replicas": obj.get("status", {}).get("replicas", 0)}})
                return True
            _merge(obj, {"status": patch.get("status")} if sub == "status" else patch)
            self._record(resource, "MODIFIED", obj)
            self._send(writer, 200, obj)
            return True
        if req.method != "GET" or name:
            self._send(writer, 405, _status(405, "not in the fake"))
            return True
        labels = _selector(req.query.get("labelSelector", ""))
        fields = dict(t.split("=", 1) for t in req.query.get("fieldSelector", "").split(",") if "=" in t)

        def match(obj: dict[str, Any]) -> bool:
            return (labels(obj["metadata"].get("labels") or {})
                    and obj.get("type") == fields.get("type", obj.get("type"))
                    and obj["metadata"]["name"] == fields.get("metadata.name", obj["metadata"]["name"]))

        if req.query.get("watch") not in ("1", "true"):
            items = [copy.deepcopy(o) for o in self.store[resource].values() if self._visible(namespace, match, o)]
            self._send(writer, 200, {"kind": KINDS[resource] + "List", "apiVersion": "v1",
                                     "metadata": {"resourceVersion": str(self.version)}, "items": items})
            return True
        since = int(req.query.get("resourceVersion") or self.version)
        if since < self.compacted and self.gone_as == "status":
            self._send(writer, 410, _status(410, f"too old resource version: {since}", "Expired"))
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        w = _Watch(resource, namespace, match, req.query.get("allowWatchBookmarks") == "true")
        if since < self.compacted:
            w.queue.put_nowait({"type": "ERROR", "object": _status(410, f"too old resource version: {since}",
                                                                    "Expired")})
        for rv, res, kind, obj in self.history:
            if rv > since and res == resource and self._visible(namespace, match, obj):
                w.queue.put_nowait({"type": kind, "object": copy.deepcopy(obj)})
        self.watches.append(w)
        self.watch_opened.set()
        seconds = float(req.query.get("timeoutSeconds", "300"))
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        try:
            while True:
                try:
                    item = await asyncio.wait_for(w.queue.get(), max(0.0, end - loop.time()))
                except asyncio.TimeoutError:
                    item = None
                if item is None:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return True
                data = json.dumps(item).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                if item["type"] == "ERROR":  # the API server ends a watch after its error
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    return True
        finally:
            self.watches.remove(w)
