"""The ``kubernetes`` scale executor (SPEC §8.5) against a fake API server on 127.0.0.1: the scale PATCH on the
wire with a re-read token, the EndpointSlice list + watch (events, 410, stream end, framing errors), the replica URLs
(ready and not terminating, named/numbered/first port, scheme, IPv6), the runtime defaults and TLS with the CA file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_scale_api import FakeApi, Request, Sink, response

from a3s_gateway.config.model import KubernetesExecutorConfig
from a3s_gateway.http import kube as kube_client
from a3s_gateway.scaling.executors import ExecutorError, kubernetes
from a3s_gateway.scaling.executors.kubernetes import KubernetesExecutor

PORTS = [{"name": "metrics", "port": 9090, "protocol": "TCP"}, {"name": "http", "port": 8080, "protocol": "TCP"}]
END = b"0\r\n\r\n"
SCALE_PATH = "/apis/apps/v1/namespaces/prod/deployments/web/scale"


def ep(address: str, ready: bool | None = True, terminating: bool | None = None) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [address], "conditions": conditions}


def eps(name: str, *endpoints: dict[str, Any], ports: list[dict[str, Any]] | None = PORTS) -> dict[str, Any]:
    """An EndpointSlice of Service ``web``."""
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}, "resourceVersion": "7"},
            "addressType": "IPv4", "ports": ports, "endpoints": list(endpoints)}


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def gone() -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired",
            "message": "too old resource version: 101 (150)"}


class Cluster:
    """The fake API server's behaviour: scale replies, successive lists, and watch streams the test feeds."""

    def __init__(self) -> None:
        self.api: FakeApi
        self.slices: list[dict[str, Any]] = []  # what the next list returns
        self.version = 100  # each list answers the next resourceVersion: 101, 102, ...
        self.list_status: list[int] = []  # answered, in order, before lists succeed
        self.watch_status: list[int] = []
        self.scale_reply: dict[str, Any] = {"kind": "Scale", "spec": {"replicas": 3}, "status": {"replicas": 1}}
        self.scale_status = 200
        # every watch: its request and the queue of raw body bytes the test sends (None closes the connection)
        self.watches: asyncio.Queue[tuple[Request, asyncio.Queue[bytes | None]]] = asyncio.Queue()
        self.executors: list[KubernetesExecutor] = []  # closed at the end of the test

    async def handle(self, req: Request, writer: asyncio.StreamWriter) -> None:
        if req.method == "PATCH":
            writer.write(response(self.scale_status, self.scale_reply))
        elif req.query.get("watch") != "1":
            status = self.list_status.pop(0) if self.list_status else 200
            if status != 200:
                writer.write(response(status, {"kind": "Status", "code": status, "message": "etcd unavailable"}))
                return
            self.version += 1
            writer.write(response(200, {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                                        "metadata": {"resourceVersion": str(self.version)}, "items": self.slices}))
        elif self.watch_status:
            writer.write(response(self.watch_status.pop(0), gone()))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                         b"Connection: close\r\n\r\n")
            stream: asyncio.Queue[bytes | None] = asyncio.Queue()
            self.watches.put_nowait((req, stream))
            while (data := await stream.get()) is not None:
                writer.write(data)
                await writer.drain()

    async def watch(self) -> tuple[Request, asyncio.Queue[bytes | None]]:
        return await asyncio.wait_for(self.watches.get(), 5.0)

    def lists(self) -> list[Request]:
        return [r for r in self.api.requests if r.method == "GET" and "watch" not in r.query]


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    async with FakeApi(cluster.handle) as api:
        cluster.api = api
        yield cluster
        for executor in cluster.executors:  # their API client sessions
            await executor.close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok-1\n")
    return path


def kube(cluster: Cluster, sink: Sink | None = None, token: Path | None = None, target: str = "web",
         **settings: Any) -> KubernetesExecutor:
    cfg = KubernetesExecutorConfig(**{"namespace": "prod", "api_url": cluster.api.url,
                                      "token_file": str(token or "/nonexistent/token"),
                                      "ca_file": "/nonexistent/ca.crt", **settings})
    executor = KubernetesExecutor(target, cfg, sink if sink is not None else Sink())
    cluster.executors.append(executor)
    return executor


@contextlib.asynccontextmanager
async def running(executor: KubernetesExecutor) -> AsyncIterator[list[str]]:
    """Run the executor's list/watch loop; yields the list of errors it reported."""
    errors: list[str] = []
    task = asyncio.create_task(executor.run(lambda: False, errors.append))
    try:
        yield errors
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- scaling ---------------------------------------------------------------------------------------------------


async def test_kind(cluster: Cluster) -> None:
    assert kube(cluster).kind == "kubernetes"


async def test_scale_patches_the_deployment_and_rereads_the_token(cluster: Cluster, token: Path) -> None:
    executor = kube(cluster, token=token)
    assert await executor.scale(3, 1, "load") == 3
    token.write_text("tok-2")
    cluster.scale_reply = {"kind": "Scale", "spec": {"replicas": 0}}
    assert await executor.scale(0, 3, "idle") == 0
    token.unlink()
    cluster.scale_reply = {"kind": "Scale", "spec": {}, "status": {"replicas": 2}}
    assert await executor.scale(2, 0, "cold start") == 2
    first, second, third = cluster.api.requests
    assert (first.method, first.target) == ("PATCH", SCALE_PATH)
    assert first.header("Content-Type") == "application/merge-patch+json"
    assert json.loads(first.body) == {"spec": {"replicas": 3}}
    assert json.loads(second.body) == {"spec": {"replicas": 0}}
    assert first.header("Content-Length") == str(len(first.body))
    assert [r.header("Authorization") for r in (first, second, third)] == ["Bearer tok-1", "Bearer tok-2", None]


async def test_scale_error_status_carries_the_api_message(cluster: Cluster) -> None:
    cluster.scale_status = 403
    cluster.scale_reply = {"kind": "Status", "code": 403, "message": 'deployments.apps "web" is forbidden'}
    with pytest.raises(ExecutorError, match=f'PATCH .*{SCALE_PATH}: status 403: deployments.apps "web" is forbidden'):
        await kube(cluster).scale(2, 1, "load")


@pytest.mark.parametrize("reply", [{"kind": "Scale"}, {"spec": {"replicas": "3"}}, {"spec": {"replicas": True}}])
async def test_scale_reply_without_replicas_raises(cluster: Cluster, reply: dict[str, Any]) -> None:
    cluster.scale_reply = reply
    with pytest.raises(ExecutorError, match=r"no spec\.replicas"):
        await kube(cluster).scale(2, 1, "load")


async def test_scale_unreachable_raises(cluster: Cluster) -> None:
    executor = kube(cluster, api_url="http://127.0.0.1:1")
    with pytest.raises(ExecutorError, match=re.escape("kubernetes PATCH http://127.0.0.1:1/")):
        await executor.scale(2, 1, "load")


async def test_bad_token_characters_raise(cluster: Cluster, token: Path) -> None:
    token.write_bytes(b"tok\r\nX-Injected: 1")
    with pytest.raises(ExecutorError, match="invalid characters"):
        await kube(cluster, token=token).scale(1, 0, "load")
    assert cluster.api.requests == []


# --- list and watch --------------------------------------------------------------------------------------------


async def test_list_then_watch_follows_the_ready_endpoints(cluster: Cluster, token: Path) -> None:
    cluster.slices = [eps("web-a", ep("10.0.0.2"), ep("10.0.0.1"), ep("10.0.0.3", ready=False),
                          ep("10.0.0.4", terminating=True), ep("10.0.0.5", ready=None))]
    sink = Sink()
    async with running(kube(cluster, sink, token, port="http")) as errors:
        assert await sink.next() == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
        (listed,) = cluster.lists()
        assert listed.path == "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"
        assert listed.query == {"labelSelector": "kubernetes.io/service-name=web"}
        assert listed.header("Authorization") == "Bearer tok-1"

        req, stream = await cluster.watch()
        assert req.path == "/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"
        assert req.query == {"labelSelector": "kubernetes.io/service-name=web", "watch": "1",
                             "resourceVersion": "101", "timeoutSeconds": "300"}
        assert req.header("Authorization") == "Bearer tok-1"

        added = event("ADDED", {**eps("web-b", ep("fd00::7"), ep("10.0.0.1")), "addressType": "IPv6"})
        stream.put_nowait(chunk(added[:25]))  # one event over two chunks
        stream.put_nowait(chunk(added[25:]))
        assert await sink.next() == ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://[fd00::7]:8080"]

        # 10.0.0.1 stops being ready in web-a (still ready in web-b), 10.0.0.2 starts terminating;
        # two events and a bookmark in one chunk
        stream.put_nowait(chunk(
            event("MODIFIED", eps("web-a", ep("10.0.0.2", terminating=True), ep("10.0.0.1", ready=False)))
            + event("BOOKMARK", {"kind": "EndpointSlice", "metadata": {"resourceVersion": "150"}})
            + event("MODIFIED", eps("web-b", ep("fd00::7")))
        ))
        assert await sink.next() == ["http://10.0.0.1:8080", "http://[fd00::7]:8080"]
        assert await sink.next() == ["http://[fd00::7]:8080"]

        stream.put_nowait(chunk(event("ADDED", eps("web-c", ep("10.0.0.9", ready=False)))))  # no change: no report
        stream.put_nowait(chunk(event("DELETED", eps("web-b"))))
        assert await sink.next() == []
        stream.put_nowait(chunk(event("MODIFIED", eps("web-c", ep("10.0.0.9")))))
        assert await sink.next() == ["http://10.0.0.9:8080"]
    assert errors == []
    assert len(cluster.lists()) == 1
    assert sink.pending() == 0


async def test_410_gone_event_relists_and_watches_from_the_new_version(cluster: Cluster, token: Path) -> None:
    cluster.slices = [eps("web-a", ep("10.0.0.1"))]
    sink = Sink()
    async with running(kube(cluster, sink, token)) as errors:
        assert await sink.next() == ["http://10.0.0.1:9090"]
        first, stream = await cluster.watch()
        cluster.slices = [eps("web-a", ep("10.0.0.1")), eps("web-c", ep("10.0.0.8"))]
        token.write_text("tok-2")  # the re-list and the new watch read the token again
        stream.put_nowait(chunk(event("ERROR", gone())))
        assert await sink.next() == ["http://10.0.0.1:9090", "http://10.0.0.8:9090"]
        second, _ = await cluster.watch()
    assert errors == []
    assert (first.query["resourceVersion"], second.query["resourceVersion"]) == ("101", "102")
    lists = cluster.lists()
    assert [r.header("Authorization") for r in (lists[0], first, lists[1], second)] == [
        "Bearer tok-1", "Bearer tok-1", "Bearer tok-2", "Bearer tok-2"]


async def test_410_gone_status_relists(cluster: Cluster) -> None:
    cluster.slices = [eps("web-a", ep("10.0.0.1"))]
    cluster.watch_status = [410]
    async with running(kube(cluster)) as errors:
        req, _ = await cluster.watch()
        assert req.query["resourceVersion"] == "102"
    assert errors == []
    watches = [r for r in cluster.api.requests if r.query.get("watch") == "1"]
    assert [r.query["resourceVersion"] for r in watches] == ["101", "102"]


async def test_stream_end_relists_without_an_error(cluster: Cluster) -> None:
    cluster.slices = [eps("web-a", ep("10.0.0.1"))]
    sink = Sink()
    async with running(kube(cluster, sink)) as errors:
        assert await sink.next() == ["http://10.0.0.1:9090"]
        _, stream = await cluster.watch()
        cluster.slices = []
        stream.put_nowait(END)
        stream.put_nowait(None)
        assert await sink.next() == []
        req, _ = await cluster.watch()
        assert req.query["resourceVersion"] == "102"
    assert errors == []


@pytest.mark.parametrize(
    ("data", "error"),
    [
        # aiohttp does not hand a framing error in the middle of a body to the reader: the read timeout ends it
        (b"zz\r\n", "no event or bookmark for 1s"),
        (chunk(b'{"type": "ADDED"') + END, "the stream ended inside an event"),
        (chunk(b'{"type": "ADDED"'), "reading events: Response payload is not completed"),  # no last chunk
        (chunk(b"not json\n"), "invalid JSON"),
        (chunk(event("ERROR", {"kind": "Status", "code": 500, "message": "internal error"})),
         "watch error 500: internal error"),
        (chunk(event("SURPRISE", eps("web-a"))), "unknown watch event type 'SURPRISE'"),
        (chunk(event("ADDED", {"kind": "EndpointSlice", "metadata": {}})), "without metadata.name"),
    ],
)
async def test_bad_watch_stream_is_an_error_and_relists_after_a_second(
    cluster: Cluster, data: bytes, error: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_client, "WATCH_READ_TIMEOUT", 1.0)
    cluster.slices = [eps("web-a", ep("10.0.0.1"))]
    loop = asyncio.get_running_loop()
    async with running(kube(cluster)) as errors:
        _, stream = await cluster.watch()
        failed = loop.time()
        stream.put_nowait(data)
        stream.put_nowait(None)
        await cluster.watch()
        relisted = loop.time()
    assert len(errors) == 1 and error in errors[0], errors
    assert errors[0].startswith(f"kubernetes watch {cluster.api.url}/")
    assert relisted - failed >= 0.9
    assert len(cluster.lists()) == 2


async def test_list_error_is_reported_and_retried_after_a_second(cluster: Cluster) -> None:
    cluster.slices = [eps("web-a", ep("10.0.0.1"))]
    cluster.list_status = [500]
    sink = Sink()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running(kube(cluster, sink)) as errors:
        assert await sink.next() == ["http://10.0.0.1:9090"]
        assert loop.time() - started >= 0.9
    assert len(errors) == 1 and "GET" in errors[0] and "status 500: etcd unavailable" in errors[0]
    assert len(cluster.lists()) == 2


async def test_watch_error_status_is_reported(cluster: Cluster) -> None:
    cluster.watch_status = [403]
    async with running(kube(cluster)) as errors:
        await cluster.watch()
    assert len(errors) == 1 and "status 403: too old resource version" in errors[0]


# --- replica URLs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "ports", "expected"),
    [
        ({}, PORTS, ["http://10.0.0.1:9090", "http://[2001:db8::1]:9090"]),  # default: the first port
        ({"port": "http"}, PORTS, ["http://10.0.0.1:8080", "http://[2001:db8::1]:8080"]),
        ({"port": "grpc"}, PORTS, []),  # a name the slice does not have: no endpoints from it
        ({"port": 8443}, PORTS, ["http://10.0.0.1:8443", "http://[2001:db8::1]:8443"]),
        ({"port": 8443}, None, ["http://10.0.0.1:8443", "http://[2001:db8::1]:8443"]),
        ({}, None, []),
        ({"port": "http", "scheme": "h2c"}, PORTS, ["h2c://10.0.0.1:8080", "h2c://[2001:db8::1]:8080"]),
        ({"scheme": "https"}, PORTS, ["https://10.0.0.1:9090", "https://[2001:db8::1]:9090"]),
    ],
)
async def test_replica_urls(cluster: Cluster, settings: dict[str, Any], ports: list[dict[str, Any]] | None,
                            expected: list[str]) -> None:
    cluster.slices = [eps("web-a", ep("2001:db8::1"), ep("10.0.0.1"), ports=ports)]
    sink = Sink()
    async with running(kube(cluster, sink, **settings)):
        assert await sink.next() == expected


# --- defaults --------------------------------------------------------------------------------------------------


async def test_defaults_follow_the_target_and_the_pod(cluster: Cluster, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    namespace = tmp_path / "namespace"
    namespace.write_text("team-a\n")
    monkeypatch.setattr(kubernetes, "NAMESPACE_FILE", str(namespace))
    executor = kube(cluster, target="api", namespace="")
    assert (executor.namespace, executor.deployment, executor.service_name) == ("team-a", "api", "api")
    cluster.scale_reply = {"spec": {"replicas": 1}}
    await executor.scale(1, 0, "load")
    assert cluster.api.requests[-1].path == "/apis/apps/v1/namespaces/team-a/deployments/api/scale"
    async with running(executor):
        req, _ = await cluster.watch()
    assert req.path == "/apis/discovery.k8s.io/v1/namespaces/team-a/endpointslices"
    assert req.query["labelSelector"] == "kubernetes.io/service-name=api"

    executor = kube(cluster, target="api", deployment="api-v2", namespace="")
    assert (executor.deployment, executor.service_name) == ("api-v2", "api-v2")
    namespace.unlink()
    assert kube(cluster, namespace="").namespace == "default"


@pytest.mark.parametrize(("host", "port", "url"), [("10.96.0.1", "443", "https://10.96.0.1:443"),
                                                  ("fd00:10:96::1", "6443", "https://[fd00:10:96::1]:6443")])
async def test_in_cluster_api_url(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, host: str, port: str,
                                  url: str) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    assert kube(cluster, api_url="").api_url == url


async def test_no_api_url_out_of_cluster_raises(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ExecutorError, match="KUBERNETES_SERVICE_HOST"):
        kube(cluster, api_url="")


# --- TLS -------------------------------------------------------------------------------------------------------


def server_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


async def test_https_api_is_verified_with_the_ca_file(tmp_path: Path) -> None:
    context, cert = server_tls(tmp_path)
    cluster = Cluster()
    cluster.slices = [eps("web-a", ep("10.0.0.1"))]
    async with FakeApi(cluster.handle, tls=context) as api:
        cluster.api = api
        sink = Sink()
        executor = kube(cluster, sink, ca_file=str(cert))
        assert await executor.scale(3, 1, "load") == 3
        async with running(executor) as errors:
            assert await sink.next() == ["http://10.0.0.1:9090"]
            _, stream = await cluster.watch()
            stream.put_nowait(chunk(event("DELETED", eps("web-a"))))
            assert await sink.next() == []
        assert errors == []
        with pytest.raises(ExecutorError, match="CERTIFICATE_VERIFY_FAILED"):
            await kube(cluster).scale(3, 1, "load")  # no CA file: the system store does not know the server
    for made in cluster.executors:
        await made.close()


async def test_unreadable_ca_file_raises(cluster: Cluster, tmp_path: Path) -> None:
    bad = tmp_path / "ca.crt"
    bad.write_text("not a certificate")
    with pytest.raises(ExecutorError, match="CA file"):
        kube(cluster, api_url="https://127.0.0.1:1", ca_file=str(bad))
