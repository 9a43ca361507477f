"""Kubernetes objects through a real gateway (SPEC §12.5, §12.6, §10.2): a hand-made KubeState is translated, merged
into the file configuration and applied by ``Gateway.reload``; the Ingress routes reach the EndpointSlice's backend
(Prefix paths element-wise, a Service without endpoints answers 503), an IngressRoute splits traffic between two
Services, and the TLS Secret is served by SNI on the TLS entrypoint and replaced when it changes. The watching side
(client, watches, fake API server) is tested in its own module."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
from certs import make_san_cert

from a3s_gateway import Gateway, GatewayConfig
from a3s_gateway.config.model import KubernetesProviderConfig
from a3s_gateway.providers.kube_translate import KubeState, served_ingresses, translate
from a3s_gateway.providers.merge import merge
from support import Client, Request, gateway_port, ok, start_backend

pytestmark = pytest.mark.timeout(60)


def file_config(default: tuple[Path, Path]) -> str:
    return f'''
entrypoints "web" {{ address = "127.0.0.1:0" }}
entrypoints "websecure" {{
  address = "127.0.0.1:0"
  tls {{
    cert_file = "{default[0]}"
    key_file  = "{default[1]}"
  }}
}}
routers "file" {{
  rule    = "PathPrefix(`/file`)"
  service = "file"
}}
services "file" {{ load_balancer {{ servers = [{{ url = "http://127.0.0.1:9" }}] }} }}
middlewares "tag" {{
  type             = "headers"
  response_headers = {{ "X-From-K8s" = "yes" }}
}}
'''


def k8s_service(name: str, target: int) -> dict[str, Any]:
    return {"metadata": {"namespace": "prod", "name": name},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": target}]}}


def k8s_slice(name: str, service: str, port: int) -> dict[str, Any]:
    return {"metadata": {"namespace": "prod", "name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": port}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}},
                          {"addresses": ["127.0.0.2"], "conditions": {"ready": True, "terminating": True}}]}


def tls_secret(pair: tuple[Path, Path]) -> dict[str, Any]:
    return {"metadata": {"namespace": "prod", "name": "api-tls"}, "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(pair[0].read_bytes()).decode(),
                     "tls.key": base64.b64encode(pair[1].read_bytes()).decode()}}


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


async def served_cert(port: int, sni: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the served certificate is compared byte for byte
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    cert = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.write(f"GET /split HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return bytes(cert)


async def get(port: int, path: str, host: str = "api.example.com") -> tuple[int, bytes, str | None]:
    client = await Client.connect(port)
    try:
        resp = await client.request(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    finally:
        client.close()
    return resp.status, resp.body, resp.header("x-from-k8s")


async def apply(gw: Gateway, base: GatewayConfig, state: KubeState, cfg: KubernetesProviderConfig) -> list[str]:
    merged, warnings = merge(base, [translate(state, cfg, base)])
    await gw.reload(merged)
    return warnings


async def test_ingress_route_tls_and_traffic_split_through_a_gateway(start_gateway: Any, tmp_path: Path) -> None:
    async def named(tag: bytes) -> Any:
        async def handler(req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            writer.write(ok(tag + b" " + req.target.encode()))
            await writer.drain()
            return True
        return await start_backend(handler)

    v1, v2 = await named(b"v1"), await named(b"v2")
    default = make_san_cert(tmp_path, "default-", ["default.test"])
    api = make_san_cert(tmp_path, "api-", ["api.example.com"])
    gw = await start_gateway(file_config(default))
    base = gw.config
    state = KubeState(
        services={("prod", "v1"): k8s_service("v1", v1.port), ("prod", "v2"): k8s_service("v2", v2.port),
                  ("prod", "idle"): k8s_service("idle", 8080)},
        endpoint_slices={("prod", "v1-a"): k8s_slice("v1-a", "v1", v1.port),
                         ("prod", "v2-a"): k8s_slice("v2-a", "v2", v2.port)},
        secrets={("prod", "api-tls"): tls_secret(api)},
        ingresses={("prod", "api"): {
            "metadata": {"namespace": "prod", "name": "api", "annotations": {"a3s-gateway.io/middlewares": "tag"}},
            "spec": {"ingressClassName": "a3s-gateway",
                     "tls": [{"hosts": ["api.example.com"], "secretName": "api-tls"}],
                     "rules": [{"host": "api.example.com", "http": {"paths": [
                         {"path": "/api", "pathType": "Prefix",
                          "backend": {"service": {"name": "v1", "port": {"name": "http"}}}},
                         {"path": "/idle", "pathType": "Exact",
                          "backend": {"service": {"name": "idle", "port": {"number": 80}}}}]}}]}}},
        ingress_routes={("prod", "split"): {
            "metadata": {"namespace": "prod", "name": "split"},
            "spec": {"routes": [{"match": "PathPrefix(`/split`)",
                                 "services": [{"name": "v1", "port": 80, "weight": 1},
                                              {"name": "v2", "port": "http", "weight": 1}]}]}}},
    )
    cfg = KubernetesProviderConfig(ingress_route_crd=True)
    assert await apply(gw, base, state, cfg) == []
    assert served_ingresses(state, cfg) == [("prod", "api")]
    web, websecure = gateway_port(gw, "web"), gateway_port(gw, "websecure")

    # the Prefix path: /api and below it, element-wise; the terminating endpoint 127.0.0.2 gets nothing
    assert await get(web, "/api") == (200, b"v1 /api", "yes")
    assert await get(web, "/api/v1/chat") == (200, b"v1 /api/v1/chat", "yes")
    assert (await get(web, "/apix"))[0] == 404
    assert (await get(web, "/api", host="other.example.com"))[0] == 404
    assert (await get(web, "/file"))[0] == 502  # the file router is untouched (its backend port 9 is closed)
    status, body, _ = await get(web, "/idle")  # a Service without endpoints: its service exists, with no servers
    assert status == 503 and b"No healthy backends" in body
    # the IngressRoute's two Services share the traffic 50/50
    bodies = [(await get(web, "/split"))[1] for _ in range(10)]
    assert sorted(bodies) == [b"v1 /split"] * 5 + [b"v2 /split"] * 5
    assert len(v2.requests) == 5 and all(r.target != "/api" for r in v2.requests)

    # the TLS Secret is served by SNI on the TLS entrypoint; other names get the file's default certificate
    assert await served_cert(websecure, "api.example.com") == der(api[0])
    assert await served_cert(websecure, "default.test") == der(default[0])
    # a changed Secret replaces the certificate for new handshakes; the listener is kept
    listener = gw._servers["websecure"]
    renewed = make_san_cert(tmp_path, "renewed-", ["api.example.com"])
    state.secrets[("prod", "api-tls")] = tls_secret(renewed)
    assert await apply(gw, base, state, cfg) == []
    assert gw._servers["websecure"] is listener
    assert await served_cert(websecure, "api.example.com") == der(renewed[0])

    # the endpoints move: traffic follows; the Ingress goes: its routes and certificate go
    state.endpoint_slices[("prod", "v1-a")] = k8s_slice("v1-a", "v1", v2.port)
    await apply(gw, base, state, cfg)
    assert await get(web, "/api/x") == (200, b"v2 /api/x", "yes")
    del state.ingresses[("prod", "api")]
    await apply(gw, base, state, cfg)
    assert (await get(web, "/api"))[0] == 404
    assert not any(name.startswith("k8s-prod-api-") for name in gw.config.routers)
    assert await served_cert(websecure, "api.example.com") == der(default[0])
    await v1.stop()
    await v2.stop()
