"""The ``kubernetes`` scale executor: scales a Deployment, watches its Service's EndpointSlices (SPEC §8.5).

:meth:`KubernetesExecutor.scale` PATCHes ``deployments/{name}/scale``. :meth:`KubernetesExecutor.run` lists the
EndpointSlices labelled ``kubernetes.io/service-name=<service>``, then watches them from the list's resourceVersion
and re-lists when the watch ends or its version is gone (410); every change of the ready set is reported to the sink
as the full sorted list of replica URLs. ``fetch`` reads whole bodies, so the watch stream is read here directly on
asyncio streams by :class:`_Body` (chunked, Content-Length or close-delimited framing, newline-delimited events of
bounded size).

The bearer token is re-read from ``token_file`` before every call (projected service-account tokens rotate); the CA
bundle is loaded once, when the executor is built.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote, urlsplit

from ..._aio import timeout
from ..._version import __version__
from ...config.model import KubernetesExecutorConfig
from ...http.client import MAX_HEAD, FetchError, ProtocolError, Target, fetch, parse_head
from . import EndpointSink, ExecutorError

NAMESPACE_FILE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
API_TIMEOUT: Final = 10.0  # per call; for a watch, up to the response head
WATCH_SECONDS: Final = 300  # asked of the server (timeoutSeconds): the stream ends and the executor re-lists
WATCH_DEADLINE: Final = WATCH_SECONDS + API_TIMEOUT  # a watch still open by then is on a dead connection
RETRY_DELAY: Final = 1.0  # after an error; also the minimum time between two lists
MAX_BODY: Final = 1 << 20
MAX_LIST: Final = 16 << 20
MAX_EVENT: Final = 4 << 20
MAX_ERROR_BODY: Final = 64 * 1024
MAX_TOKEN: Final = 64 * 1024
USER_AGENT: Final = f"a3s-gateway/{__version__}".encode("ascii")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
_BAD_TOKEN: Final = re.compile(rb"[^\x21-\x7e]")


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
        self._token_file = cfg.token_file
        self._sink = sink
        context: ssl.SSLContext | None = None
        if urlsplit(self.api_url).scheme == "https" and os.path.isfile(cfg.ca_file):
            try:
                context = ssl.create_default_context(cafile=cfg.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ExecutorError(f"kubernetes CA file {cfg.ca_file}: {exc}") from exc
        ns = quote(self.namespace, safe="")
        self._scale_api = Target(
            f"{self.api_url}/apis/apps/v1/namespaces/{ns}/deployments/{quote(self.deployment, safe='')}/scale",
            context,
        )
        selector = quote(f"kubernetes.io/service-name={self.service_name}", safe="")
        self._slices_api = Target(
            f"{self.api_url}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector={selector}",
            context,
        )
        self._slices: dict[str, list[str]] = {}  # EndpointSlice name -> its replica URLs
        self._reported: list[str] | None = None

    async def scale(self, desired: int, current: int, reason: str) -> int:
        """Set the Deployment's replicas to ``desired``; the ``spec.replicas`` (else ``status.replicas``) of the reply.

        ``current`` and ``reason`` are not sent: the scale subresource has no place for them.
        """
        headers = [*self._headers(), (b"Content-Type", b"application/merge-patch+json")]
        reply = await self._call(self._scale_api, b"PATCH", headers, b'{"spec":{"replicas":%d}}' % desired, MAX_BODY)
        for part in ("spec", "status"):
            section = reply.get(part)
            replicas = section.get("replicas") if isinstance(section, dict) else None
            if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0:
                return replicas
        raise ExecutorError(f"kubernetes PATCH {self._scale_api.url}: response has no spec.replicas")

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
            except ExecutorError as exc:
                on_error(str(exc))
                next_list = loop.time() + RETRY_DELAY

    async def close(self) -> None:
        """Nothing to release: ``run`` closes its watch connection when its task is cancelled."""

    # --- API calls -------------------------------------------------------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"Accept", b"application/json"), (b"User-Agent", USER_AGENT)]
        try:
            # a small local file, read synchronously on purpose: re-read every call because tokens rotate
            with open(self._token_file, "rb") as f:
                token = f.read(MAX_TOKEN).strip()
        except OSError:
            return headers  # no token: out of cluster against a proxy, or anonymous access
        if token:
            if _BAD_TOKEN.search(token):
                raise ExecutorError(f"kubernetes token file {self._token_file}: token has invalid characters")
            headers.append((b"Authorization", b"Bearer " + token))
        return headers

    async def _call(
        self, api: Target, method: bytes, headers: list[tuple[bytes, bytes]], body: bytes, max_body: int
    ) -> dict[str, Any]:
        what = f"kubernetes {method.decode()} {api.url}"
        try:
            result = await asyncio.wait_for(fetch(api, method, headers, max_body, body=body), API_TIMEOUT)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise ExecutorError(f"{what}: timed out after {API_TIMEOUT:g}s") from None
        except FetchError as exc:
            raise ExecutorError(f"{what}: {exc}") from exc
        if result.status != 200:
            raise ExecutorError(f"{what}: status {result.status}{_status_message(result.body)}")
        reply = _json_object(result.body, what)
        return reply

    async def _list(self) -> str:
        """List the Service's EndpointSlices, report their endpoints; the list's resourceVersion."""
        api = self._slices_api
        what = f"kubernetes GET {api.url}"
        reply = await self._call(api, b"GET", self._headers(), b"", MAX_LIST)
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
        api = self._slices_api
        target = b"%s&watch=1&timeoutSeconds=%d&resourceVersion=%s" % (
            api.target, WATCH_SECONDS, quote(version, safe="").encode("ascii"))
        what = f"kubernetes watch {api.url}"
        phase = "connecting"
        head = [b"GET ", target, b" HTTP/1.1\r\nHost: ", api.host_header, b"\r\n"]
        for name, value in self._headers():
            head += (name, b": ", value, b"\r\n")
        head.append(b"Connection: close\r\n\r\n")
        loop = asyncio.get_running_loop()
        try:
            async with timeout(API_TIMEOUT) as deadline:
                reader, writer = await asyncio.open_connection(
                    api.host, api.port, ssl=api.ssl, server_hostname=api.host if api.ssl else None, limit=MAX_HEAD
                )
                try:
                    phase = "waiting for the response"
                    writer.write(b"".join(head))
                    await writer.drain()
                    status, headers = await _read_head(reader)
                    body = _Body(reader, headers)
                    if status == 410:  # the version is too old: re-list
                        return
                    if status != 200:
                        message = _status_message(await body.read_all(MAX_ERROR_BODY))
                        raise ExecutorError(f"{what}: status {status}{message}")
                    phase = "reading events"
                    deadline.reschedule(loop.time() + WATCH_DEADLINE)
                    while (line := await body.readline(MAX_EVENT)) is not None:
                        if line.strip() and not self._apply(_json_object(line, what), what):
                            return
                finally:
                    writer.close()
        except TimeoutError:
            raise ExecutorError(f"{what}: timed out {phase}") from None
        except asyncio.IncompleteReadError:
            raise ExecutorError(f"{what}: {phase}: the connection closed early") from None
        except (OSError, asyncio.LimitOverrunError, ProtocolError) as exc:  # OSError: refused, reset, TLS
            raise ExecutorError(f"{what}: {phase}: {exc}") from exc

    # --- EndpointSlices --------------------------------------------------------------------------------------------

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



class _Body:
    """The body of one response on ``reader`` (chunked, Content-Length or close-delimited), read by lines."""

    def __init__(self, reader: asyncio.StreamReader, headers: list[tuple[bytes, bytes]]) -> None:
        self._reader = reader
        self._buffer = bytearray()
        self._ended = False
        self._chunked = False
        self._remaining: int | None = None  # Content-Length left; None: until the connection closes
        codings = [v for n, v in headers if n.lower() == b"transfer-encoding"]
        lengths = {v.strip() for n, v in headers if n.lower() == b"content-length"}
        if codings:
            if b",".join(codings).strip().lower() != b"chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {b','.join(codings)!r}")
            self._chunked = True
        elif lengths:
            text = lengths.pop()
            if lengths or not text.isdigit() or len(text) > 18:
                raise ProtocolError("invalid Content-Length")
            self._remaining = int(text)

    async def _next(self, limit: int) -> bytes:
        """The next piece of body data; b"" at the end of the body."""
        reader = self._reader
        if self._chunked:
            line = (await reader.readuntil(b"\r\n"))[:-2]
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX.match(size_text):
                raise ProtocolError("invalid chunk size")
            size = int(size_text, 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers are read and dropped
                    pass
                return b""
            if size > limit:
                raise ProtocolError(f"chunk of {size} bytes is larger than {limit}")
            data = await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("missing CRLF after chunk data")
            return data
        if self._remaining is None:
            return await reader.read(65536)
        if self._remaining == 0:
            return b""
        data = await reader.read(min(self._remaining, 65536))
        if not data:
            raise ProtocolError("connection closed before the end of the body")
        self._remaining -= len(data)
        return data

    async def readline(self, limit: int) -> bytes | None:
        """The next line (without its newline); None at the end of the body."""
        buffer = self._buffer
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line
            if len(buffer) > limit:
                raise ProtocolError(f"watch event larger than {limit} bytes")
            if self._ended:
                if buffer:
                    raise ProtocolError("body ended inside an event")
                return None
            start = len(buffer)
            data = await self._next(limit)
            self._ended = not data
            buffer += data

    async def read_all(self, limit: int) -> bytes:
        """The rest of the body, cut at ``limit`` bytes (for error messages)."""
        while not self._ended and len(self._buffer) < limit:
            data = await self._next(limit)
            self._ended = not data
            self._buffer += data
        return bytes(self._buffer[:limit])


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[bytes, bytes]]]:
    while True:
        status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
        if status >= 200:
            return status, headers
        if status == 101:
            raise ProtocolError("unexpected 101 Switching Protocols")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise ExecutorError(f"{what}: invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ExecutorError(f"{what}: JSON is not an object")
    return value


def _name(obj: dict[str, Any], what: str) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ExecutorError(f"{what}: object without metadata.name")
    return name


def _status_message(body: bytes) -> str:
    """': <message>' of a Kubernetes Status body (or the start of any other body), '' when empty."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and isinstance(status.get("message"), str):
        return f": {status['message']}"
    text = body[:200].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


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
