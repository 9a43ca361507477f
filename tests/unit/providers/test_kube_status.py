"""Ingress status writing (providers/kube_status.py) against the fake API server, and the provider's
configuration keys (``publish_service``, ``publish_address``, the connection-source check of SPEC §12.5)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from kube_fake import FakeCluster
from loops import Run
from test_kube_watch import until

from a3s_gateway import GatewayConfig
from a3s_gateway.config.model import KubernetesProviderConfig
from a3s_gateway.errors import ConfigError
from a3s_gateway.http import kube
from a3s_gateway.providers.kube_status import StatusWriter, published
from a3s_gateway.providers.kube_watch import INGRESSES, Backoff, Reflector


@pytest.mark.parametrize(("cfg", "service", "expected"), [
    (KubernetesProviderConfig(publish_address=("203.0.113.7", "gw.example.com", "2001:db8::1")), None,
     [{"ip": "203.0.113.7"}, {"hostname": "gw.example.com"}, {"ip": "2001:db8::1"}]),
    (KubernetesProviderConfig(publish_service="gw/gateway"),
     {"spec": {"clusterIP": "10.96.0.9", "externalIPs": ["198.51.100.2"]},
      "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9", "ports": [{"port": 80}]},
                                              {"hostname": "lb.example"}]}}},
     [{"ip": "203.0.113.9"}, {"hostname": "lb.example"}]),
    (KubernetesProviderConfig(publish_service="gw/gateway"),
     {"spec": {"clusterIP": "10.96.0.9", "externalIPs": ["198.51.100.2"]}, "status": {"loadBalancer": {}}},
     [{"ip": "198.51.100.2"}]),
    (KubernetesProviderConfig(publish_service="gw/gateway"), {"spec": {"clusterIP": "10.96.0.9"}},
     [{"ip": "10.96.0.9"}]),
    (KubernetesProviderConfig(publish_service="gw/gateway"), {"spec": {"clusterIP": "None"}}, []),
    (KubernetesProviderConfig(publish_service="gw/gateway"), None, []),
    (KubernetesProviderConfig(), None, []),
])
def test_published_address(cfg: KubernetesProviderConfig, service: dict[str, Any] | None,
                           expected: list[dict[str, str]]) -> None:
    assert published(cfg, service) == expected


def ing(name: str, status: list[dict[str, str]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "web"}, "spec": {}}
    if status is not None:
        obj["status"] = {"loadBalancer": {"ingress": status}}
    return obj


def test_status_is_patched_only_when_it_differs_and_removed_when_no_longer_served(
        run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with FakeCluster() as cluster:
            cluster.put("ingresses", ing("a"))
            cluster.put("ingresses", ing("b", [{"ip": "203.0.113.7"}]))  # already right: not patched
            cluster.put("ingresses", ing("c", [{"ip": "192.0.2.1"}]))  # another controller's, not served
            client = await kube.connect(cluster.kubeconfig(tmp_path / "kc"))
            served = [("web", "a"), ("web", "b")]
            store = Reflector(INGRESSES, lambda: writer.wake())
            cfg = KubernetesProviderConfig(publish_address=("203.0.113.7",))
            writer = StatusWriter(cfg, lambda: served, lambda: store.items, lambda: None, Backoff(0.05, 0.1))
            tasks = [asyncio.create_task(store.run(client)), asyncio.create_task(writer.run(client))]
            try:
                await until(lambda: cluster.get("ingresses", "web", "a").get("status") is not None)
                assert cluster.get("ingresses", "web", "a")["status"] == {
                    "loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}
                patches = [r for r in cluster.requests if r.method == "PATCH"]
                assert [r.path for r in patches] == ["/apis/networking.k8s.io/v1/namespaces/web/ingresses/a/status"]
                assert patches[0].headers["content-type"] == "application/merge-patch+json"
                # the MODIFIED event of our own patch wakes the writer: nothing differs, nothing is sent
                await until(lambda: store.items[("web", "a")].get("status") is not None)
                await asyncio.sleep(0.1)
                assert writer.patches == 1
                # a is no longer served: its address goes; c (never ours) is left alone
                served.remove(("web", "a"))
                writer.wake()
                await until(lambda: cluster.get("ingresses", "web", "a")["status"] == {"loadBalancer": {}})
                assert cluster.get("ingresses", "web", "c")["status"]["loadBalancer"]["ingress"] == [
                    {"ip": "192.0.2.1"}]
                assert writer.patches == 2 and writer.written == {("web", "b")}
                # a failing PATCH is retried
                served.append(("web", "c"))
                cluster.fail["ingresses"] = [500]
                writer.wake()
                await until(lambda: cluster.get("ingresses", "web", "c")["status"]["loadBalancer"]["ingress"]
                            == [{"ip": "203.0.113.7"}])
            finally:
                for t in tasks:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
                await client.close()

    run(main())


KUBE = 'entrypoints "web" {{ address = "127.0.0.1:0" }}\nproviders {{ kubernetes {{ {body} }} }}\n'


def test_publish_keys_and_connection_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kc = tmp_path / "kc"
    kc.write_text("")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KUBECONFIG", str(kc))
    cfg = GatewayConfig.from_hcl(KUBE.format(
        body='publish_service = "gw/gateway"\n publish_address = ["203.0.113.7", "gw.example"]'))
    assert cfg.providers.kubernetes == KubernetesProviderConfig(publish_service="gw/gateway",
                                                                publish_address=("203.0.113.7", "gw.example"))
    with pytest.raises(ConfigError, match='invalid publish_service "gateway"; expected "namespace/name"'):
        GatewayConfig.from_hcl(KUBE.format(body='publish_service = "gateway"'))
    with pytest.raises(ConfigError, match=r'providers\.kubernetes\.kubeconfig: kubeconfig ".*/nope" does not exist'):
        GatewayConfig.from_hcl(KUBE.format(body=f'kubeconfig = "{tmp_path}/nope"'))
    monkeypatch.delenv("KUBECONFIG")
    # no connection source on this machine: valid (the file may be checked outside its cluster), with a warning
    cfg = GatewayConfig.from_hcl(KUBE.format(body=""))
    assert cfg.providers.kubernetes == KubernetesProviderConfig()
    assert any("providers.kubernetes.kubeconfig: no Kubernetes connection here" in str(w) for w in cfg.warnings)
