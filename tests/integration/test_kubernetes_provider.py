"""Kubernetes provider end to end (SPEC §12.5, §12.6): a running gateway with a kubeconfig pointing at the fake API
server (tests/support/kube_fake.py). An Ingress with a Prefix path becomes a working route; an EndpointSlice change
moves traffic within the reaction budget without dropping an in-flight request; the route stays while the API is
down; deleting the Ingress removes the route; an IngressRoute with two weighted Services splits traffic; a TLS
Secret is served by SNI; the served Ingress gets the published address in its status."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from certs import make_san_cert
from kube_fake import FakeCluster

from a3s_gateway import Gateway
from support import Client, Request, gateway_port, ok, start_backend

pytestmark = pytest.mark.timeout(60)


def gateway_hcl(kubeconfig: str, extra: str = "", entrypoints: str = "") -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
{entrypoints}
providers {{
  kubernetes {{
    kubeconfig = "{kubeconfig}"
    {extra}
  }}
}}
'''


def service(name: str, target: int, ns: str = "shop") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": target}]}}


def endpoint_slice(name: str, svc: str, port: int, *addresses: str, ns: str = "shop") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses]}


def ingress(name: str, path: str, svc: str, ns: str = "shop", host: str = "",
            tls_secret: str = "") -> dict[str, Any]:
    rule: dict[str, Any] = {"http": {"paths": [{"path": path, "pathType": "Prefix",
                                                "backend": {"service": {"name": svc, "port": {"number": 80}}}}]}}
    if host:
        rule["host"] = host
    spec: dict[str, Any] = {"ingressClassName": "a3s-gateway", "rules": [rule]}
    if tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    return {"metadata": {"namespace": ns, "name": name}, "spec": spec}


async def until(pred: Callable[[], bool], timeout: float = 8.0) -> float:
    start = time.monotonic()
    while not pred():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def get(port: int, path: str = "/shop/cart", host: str = "a") -> tuple[int, bytes]:
    client = await Client.connect(port)
    try:
        resp = await client.request(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return resp.status, resp.body
    finally:
        client.close()


def urls(gw: Gateway) -> list[str]:
    return sorted(b["url"] for b in gw.backends())


async def test_ingress_route_follows_endpoints_survives_api_outage_and_goes_with_the_ingress(
    start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    release = asyncio.Event()
    slow_started = asyncio.Event()

    async def first(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if req.target == "/shop/slow":
            slow_started.set()
            await release.wait()
        writer.write(ok(b"one"))
        await writer.drain()
        return True

    async def second(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(ok(b"two"))
        await writer.drain()
        return True

    one = await start_backend(first)
    two = await start_backend(second)
    async with FakeCluster() as cluster:
        cluster.put("services", service("web", 8080))
        cluster.put("endpointslices", endpoint_slice("web-a", "web", one.port, "127.0.0.1"))
        cluster.put("ingresses", ingress("shop", "/shop", "web"))
        gw = await start_gateway(gateway_hcl(cluster.kubeconfig(tmp_path / "kc"),
                                             'publish_address = ["203.0.113.7"]'))
        port = gateway_port(gw)
        await until(lambda: urls(gw) == [f"http://127.0.0.1:{one.port}"])
        assert await get(port) == (200, b"one")
        assert await get(port, "/shop") == (200, b"one")
        assert (await get(port, "/shopping"))[0] == 404  # Prefix is element-wise
        router = next(r for r in gw.routes() if r["name"] == "k8s-shop-shop-0-0")
        assert router["provider"] == "kubernetes"
        # the served Ingress gets the published address in its status
        await until(lambda: cluster.get("ingresses", "shop", "shop").get("status") is not None)
        assert cluster.get("ingresses", "shop", "shop")["status"] == {
            "loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]}}

        # an in-flight request on the first endpoint; the slice moves to the second: traffic follows, the
        # in-flight request completes
        slow = await Client.connect(port)
        slow.send(b"GET /shop/slow HTTP/1.1\r\nHost: a\r\n\r\n")
        await asyncio.wait_for(slow_started.wait(), 5)
        cluster.put("endpointslices", endpoint_slice("web-a", "web", two.port, "127.0.0.1"))
        took = await until(lambda: urls(gw) == [f"http://127.0.0.1:{two.port}"])
        assert took < 2.0  # the target is 0.5 s after the event (200 ms debounce + the reload); generous here
        assert {(await get(port))[1] for _ in range(4)} == {b"two"}
        release.set()
        resp = await slow.response()
        assert (resp.status, resp.body) == (200, b"one")
        slow.close()

        # the API goes away: the routes stay
        generation = gw.generation
        cluster.down = True
        cluster.end_watches()
        await asyncio.sleep(0.6)
        assert await get(port) == (200, b"two") and gw.generation == generation
        cluster.down = False

        # deleting the Ingress removes the route
        cluster.delete("ingresses", "shop", "shop")
        await until(lambda: not any(r["name"].startswith("k8s-shop-shop") for r in gw.routes()))
        assert (await get(port))[0] == 404
    await one.stop()
    await two.stop()


async def test_ingress_route_with_two_weighted_services_splits_traffic(
    start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    def reply(body: bytes) -> Any:
        async def handler(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(ok(body))
            await writer.drain()
            return True
        return handler

    stable = await start_backend(reply(b"stable"))
    canary = await start_backend(reply(b"canary"))
    async with FakeCluster() as cluster:
        cluster.put("services", service("stable", 8080))
        cluster.put("services", service("canary", 8080))
        cluster.put("endpointslices", endpoint_slice("stable-a", "stable", stable.port, "127.0.0.1"))
        cluster.put("endpointslices", endpoint_slice("canary-a", "canary", canary.port, "127.0.0.1"))
        cluster.put("ingressroutes", {
            "apiVersion": "a3s-gateway.io/v1alpha1", "metadata": {"namespace": "shop", "name": "split"},
            "spec": {"routes": [{"match": "PathPrefix(`/split`)", "services": [
                {"name": "stable", "port": 80, "weight": 3}, {"name": "canary", "port": "http", "weight": 1}]}]}})
        gw = await start_gateway(gateway_hcl(cluster.kubeconfig(tmp_path / "kc"), "ingress_route_crd = true"))
        port = gateway_port(gw)
        await until(lambda: any(r["name"] == "k8s-shop-split-0" for r in gw.routes()))
        await until(lambda: len(urls(gw)) == 2)
        seen = [(await get(port, "/split"))[1] for _ in range(80)]
        assert set(seen) == {b"stable", b"canary"}
        assert 40 <= seen.count(b"stable") <= 75, seen.count(b"stable")  # 75 % of 80 = 60
    await stable.stop()
    await canary.stop()


async def test_tls_secret_is_served_by_sni(start_gateway: Callable[..., Any], tmp_path: Path) -> None:
    backend = await start_backend()
    default = make_san_cert(tmp_path, "default-", ["default.example"])
    shop = make_san_cert(tmp_path, "shop-", ["shop.example"])
    async with FakeCluster() as cluster:
        cluster.put("services", service("web", 8080))
        cluster.put("endpointslices", endpoint_slice("web-a", "web", backend.port, "127.0.0.1"))
        cluster.put("secrets", {"metadata": {"namespace": "shop", "name": "shop-tls"}, "type": "kubernetes.io/tls",
                                "data": {"tls.crt": base64.b64encode(shop[0].read_bytes()).decode(),
                                         "tls.key": base64.b64encode(shop[1].read_bytes()).decode()}})
        cluster.put("ingresses", ingress("shop", "/", "web", host="shop.example", tls_secret="shop-tls"))
        secure = f'''entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    cert_file = "{default[0]}"
    key_file  = "{default[1]}"
  }}
}}'''
        gw = await start_gateway(gateway_hcl(cluster.kubeconfig(tmp_path / "kc"), entrypoints=secure))
        port = gateway_port(gw, "websecure")
        await until(lambda: len(urls(gw)) == 1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        async def served(sni: str) -> tuple[bytes, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
            cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.write(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return cert, data

        want = ssl.PEM_cert_to_DER_cert(shop[0].read_text())
        cert, data = await served("shop.example")
        for _ in range(100):  # the certificate arrives with the generation that has the route
            if cert == want:
                break
            await asyncio.sleep(0.05)
            cert, data = await served("shop.example")
        assert cert == want
        assert data.startswith(b"HTTP/1.1 200")
        assert (await served("other.example"))[0] == ssl.PEM_cert_to_DER_cert(default[0].read_text())
    await backend.stop()
