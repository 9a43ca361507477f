"""The Kubernetes provider's machinery (providers/kubernetes.py) against the fake API server, with ``translate``
replaced by a recorder (its output is kube_translate's business): nothing is contributed before every resource is
listed, every change after that reaches the hub once per merge, the translation is cached per change and file
configuration, a connection that cannot be made is retried, the published Service is watched in its own namespace
and the served Ingresses get its address."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kube_fake import FakeCluster
from loops import Run
from test_kube_watch import until

from a3s_gateway import GatewayConfig
from a3s_gateway.config.model import KubernetesProviderConfig
from a3s_gateway.http import kube
from a3s_gateway.providers import kubernetes
from a3s_gateway.providers.kube_translate import KubeState
from a3s_gateway.providers.merge import Contribution

BASE = GatewayConfig.from_hcl('entrypoints "web" { address = "127.0.0.1:0" }\n')


class Recorder:
    def __init__(self) -> None:
        self.states: list[KubeState] = []

    def translate(self, state: KubeState, cfg: KubernetesProviderConfig, base: GatewayConfig) -> Contribution:
        self.states.append(state)
        return Contribution("kubernetes", sources={"n": str(len(self.states))})


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(kubernetes, "translate", rec.translate)
    monkeypatch.setattr(kubernetes, "served_ingresses",
                        lambda state, cfg: sorted(k for k in state.ingresses if k[0] == "shop"))
    return rec


@contextlib.asynccontextmanager
async def provider(cluster: FakeCluster, tmp_path: Path, changes: list[int], **settings: Any
                   ) -> AsyncIterator[kubernetes.KubernetesProvider]:
    cfg = KubernetesProviderConfig(kubeconfig=cluster.kubeconfig(tmp_path / "kc"), **settings)
    p = kubernetes.KubernetesProvider(cfg, lambda: changes.append(1))
    p.start()
    try:
        yield p
    finally:
        await p.close()


def test_contributes_after_the_first_full_sync_then_per_change(run: Run, tmp_path: Path,
                                                                 recorder: Recorder) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", {"metadata": {"name": "a", "namespace": "shop"}})
            cluster.put("secrets", {"metadata": {"name": "t", "namespace": "shop"}, "type": "kubernetes.io/tls"})
            cluster.put("secrets", {"metadata": {"name": "o", "namespace": "shop"}, "type": "Opaque"})
            cluster.put("ingressclasses", {"metadata": {"name": "a3s-gateway"}})
            cluster.fail["endpointslices"] = [500]  # one resource lists late
            changes: list[int] = []
            async with provider(cluster, tmp_path, changes, ingress_route_crd=True) as p:
                await until(lambda: len(cluster.calls("endpointslices", watch=False)) >= 1)
                assert p.contribution(BASE) == Contribution("kubernetes") and recorder.states == []
                assert changes == []
                await asyncio.wait_for(p.ready.wait(), 10)
                assert changes == [1]
                first = p.contribution(BASE)
                assert first.sources == {"n": "1"}
                state = recorder.states[0]
                assert set(state.ingresses) == {("shop", "a")}
                assert set(state.secrets) == {("shop", "t")}  # only kubernetes.io/tls
                assert set(state.ingress_classes) == {"a3s-gateway"}
                assert p.contribution(BASE) is first  # nothing changed: not translated again
                cluster.put("endpointslices", {"metadata": {"name": "s", "namespace": "shop"}})
                await until(lambda: len(changes) == 2)
                assert p.contribution(BASE).sources == {"n": "2"}
                assert set(recorder.states[1].endpoint_slices) == {("shop", "s")}
                other = GatewayConfig.from_hcl('entrypoints "web2" { address = "127.0.0.1:0" }\n')
                assert p.contribution(other).sources == {"n": "3"}  # another file configuration: again
                assert p.synced_after is not None and p.synced_after < 10

    run(main())


def test_namespace_and_label_selector_reach_the_watches(run: Run, tmp_path: Path, recorder: Recorder) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            changes: list[int] = []
            async with provider(cluster, tmp_path, changes, namespace="shop", label_selector="gw=a3s") as p:
                await asyncio.wait_for(p.ready.wait(), 10)
                paths = {r.path: r.query for r in cluster.requests if r.query.get("watch") != "1"}
                assert paths["/apis/networking.k8s.io/v1/namespaces/shop/ingresses"] == {"labelSelector": "gw=a3s"}
                assert paths["/api/v1/namespaces/shop/services"] == {}
                assert paths["/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"] == {}
                assert paths["/api/v1/namespaces/shop/secrets"] == {"fieldSelector": "type=kubernetes.io/tls"}
                assert paths["/apis/networking.k8s.io/v1/ingressclasses"] == {}
                assert not any("ingressroutes" in path for path in paths)  # ingress_route_crd = false

    run(main())


def test_published_service_address_goes_to_the_served_ingresses(run: Run, tmp_path: Path,
                                                                  recorder: Recorder) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", {"metadata": {"name": "a", "namespace": "shop"}})
            cluster.put("ingresses", {"metadata": {"name": "b", "namespace": "elsewhere"}})  # not served
            cluster.put("services", {"metadata": {"name": "gateway", "namespace": "gw"},
                                     "spec": {"clusterIP": "10.96.0.5"}})
            changes: list[int] = []
            async with provider(cluster, tmp_path, changes, namespace="shop", publish_service="gw/gateway"):
                await until(lambda: "status" in cluster.get("ingresses", "shop", "a"))
                assert cluster.get("ingresses", "shop", "a")["status"]["loadBalancer"]["ingress"] == [
                    {"ip": "10.96.0.5"}]
                # the cloud gives the Service its load balancer: the Ingress follows
                cluster.put("services", {"metadata": {"name": "gateway", "namespace": "gw"},
                                         "spec": {"clusterIP": "10.96.0.5"},
                                         "status": {"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}})
                await until(lambda: cluster.get("ingresses", "shop", "a")["status"]["loadBalancer"]["ingress"]
                            == [{"hostname": "lb.example"}])
                assert "status" not in cluster.get("ingresses", "elsewhere", "b")
                watched = [r for r in cluster.calls("services", watch=False)
                           if r.path.startswith("/api/v1/namespaces/gw")]
                assert watched and watched[0].query == {"fieldSelector": "metadata.name=gateway"}

    run(main())


def test_a_connection_that_cannot_be_made_is_retried(run: Run, tmp_path: Path, recorder: Recorder,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            attempts: list[str] = []
            path = tmp_path / "kc"

            async def connector(kubeconfig: str) -> kube.KubeClient:
                attempts.append(kubeconfig)
                if len(attempts) == 1:
                    raise kube.KubeConfigError("kubeconfig: bad")
                return await kube.connect(cluster.kubeconfig(path))

            quick = kubernetes.Backoff
            monkeypatch.setattr(kubernetes, "Backoff", lambda: quick(0.05, 0.1))
            p = kubernetes.KubernetesProvider(KubernetesProviderConfig(kubeconfig=str(path)), lambda: None,
                                              connector)
            p.start()
            try:
                await asyncio.wait_for(p.ready.wait(), 10)
            finally:
                await p.close()
            assert len(attempts) == 2
            assert "providers.kubernetes: cannot connect: kubeconfig: bad; retrying" in caplog.text

    caplog.set_level(logging.INFO, logger="a3s_gateway.providers")
    run(main())
