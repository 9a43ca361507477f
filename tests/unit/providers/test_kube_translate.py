"""providers/kube_translate.py: Kubernetes Ingresses, IngressRoutes, Services, EndpointSlices and TLS Secrets to
routers, services and certificates (SPEC §12.5, §12.6), and their merge with a file configuration (§12.1)."""

from __future__ import annotations

import base64
import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from a3s_gateway import GatewayConfig
from a3s_gateway.config.model import KubernetesProviderConfig
from a3s_gateway.providers.kube_translate import (
    CONTROLLER,
    KubeState,
    host_rule,
    path_rule,
    served_ingresses,
    traffic_percents,
    translate,
)
from a3s_gateway.providers.merge import merge

FILE = '''
entrypoints "web" { address = "127.0.0.1:0" }
entrypoints "internal" { address = "127.0.0.1:0" }
entrypoints "raw" {
  address  = "127.0.0.1:0"
  protocol = "tcp"
}
routers "file" {
  rule    = "PathPrefix(`/file`)"
  service = "s"
}
routers "raw" {
  rule    = "HostSNI(`*`)"
  service = "t"
}
services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9" }] } }
services "t" { load_balancer { servers = [{ url = "tcp://127.0.0.1:9" }] } }
middlewares "auth" {
  type  = "headers"
  request_headers = { "X-Auth" = "1" }
}
middlewares "tag" {
  type  = "headers"
  response_headers = { "X-Tag" = "1" }
}
'''
CFG = KubernetesProviderConfig()
CRD = KubernetesProviderConfig(ingress_route_crd=True)


@pytest.fixture(scope="module")
def base() -> GatewayConfig:
    return GatewayConfig.from_hcl(FILE)


# --- object builders (the JSON the API server sends) ------------------------------------------------------------


def meta(ns: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"namespace": ns, "name": name, **extra}


def backend(svc: str, port: int | str) -> dict[str, Any]:
    return {"service": {"name": svc, "port": {"number": port} if isinstance(port, int) else {"name": port}}}


def ingress(ns: str, name: str, paths: list[tuple[str, str, str, int | str]] | None = None, host: str = "",
            annotations: dict[str, str] | None = None, cls: str | None = None,
            default: dict[str, Any] | None = None, tls: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if paths is not None:
        rule: dict[str, Any] = {"http": {"paths": [{"path": p, "pathType": t, "backend": backend(s, port)}
                                                   for p, t, s, port in paths]}}
        if host:
            rule["host"] = host
        spec["rules"] = [rule]
    if cls is not None:
        spec["ingressClassName"] = cls
    if default is not None:
        spec["defaultBackend"] = default
    if tls:
        spec["tls"] = [{"hosts": ["x"], "secretName": s} for s in tls]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": meta(ns, name, annotations=annotations or {}), "spec": spec}


def service(ns: str, name: str, ports: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"kind": "Service", "metadata": meta(ns, name), "spec": {"ports": ports, **spec}}


def endpoint(ip: str, ready: bool | None = True, terminating: bool | None = None) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [ip], "conditions": conditions}


def endpoint_slice(ns: str, name: str, svc: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "EndpointSlice", "metadata": meta(ns, name, labels={"kubernetes.io/service-name": svc}),
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}


def app_state(**more: Any) -> KubeState:
    """Service default/app: port 80 "http" -> targetPort "web" (8080 in the slice), port 9000 -> 9001 (number)."""
    state = KubeState(
        services={("default", "app"): service("default", "app", [
            {"name": "http", "port": 80, "targetPort": "web"}, {"name": "metrics", "port": 9000, "targetPort": 9001}])},
        endpoint_slices={("default", "app-x1"): endpoint_slice("default", "app-x1", "app", [
            endpoint("10.0.0.2"), endpoint("10.0.0.1"), endpoint("10.0.0.3", ready=False),
            endpoint("10.0.0.4", ready=True, terminating=True), endpoint("10.0.0.5", ready=None)],
            [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9001}])},
    )
    for key, value in more.items():
        getattr(state, key).update(value)
    return state


def pem_pair(names: list[str]) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def tls_secret(ns: str, name: str, cert: bytes, key: bytes, kind: str = "kubernetes.io/tls") -> dict[str, Any]:
    return {"kind": "Secret", "metadata": meta(ns, name), "type": kind,
            "data": {"tls.crt": base64.b64encode(cert).decode(), "tls.key": base64.b64encode(key).decode()}}


def urls(svc: Any) -> list[str]:
    return [s.url for s in svc.load_balancer.servers]


# --- rules ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "kind", "rule"), [
    ("/api", "Exact", "Path(`/api`)"),
    ("/api", "Prefix", "(Path(`/api`) || PathPrefix(`/api/`))"),
    ("/api/", "Prefix", "(Path(`/api`) || PathPrefix(`/api/`))"),  # a trailing slash is ignored (Kubernetes)
    ("/", "Prefix", "PathPrefix(`/`)"),
    ("/api", "ImplementationSpecific", "PathPrefix(`/api`)"),
    ("", "ImplementationSpecific", "PathPrefix(`/`)"),
])
def test_path_rules_follow_the_spec_table(path: str, kind: str, rule: str) -> None:
    assert path_rule(path, kind) == rule


def test_host_rules_exact_and_one_label_wildcard() -> None:
    assert host_rule("API.example.com") == "Host(`api.example.com`)"
    assert host_rule("*.example.com") == r"HostRegexp(`^[^.]+\.example\.com$`)"


@pytest.mark.parametrize(("weights", "percents"), [
    ([1, 1, 1], [34, 33, 33]), ([1, 1], [50, 50]), ([3, 1], [75, 25]), ([1, 2, 2], [20, 40, 40]),
    ([2, 1, 1], [50, 25, 25]), ([1, 1, 1, 1, 1, 1], [17, 17, 17, 17, 16, 16]), ([5, 0], [100, 0]), ([1], [100]),
])
def test_traffic_percents_are_floors_plus_largest_remainders(weights: list[int], percents: list[int]) -> None:
    assert traffic_percents(weights) == percents
    assert sum(traffic_percents(weights)) == 100


# --- Ingress ----------------------------------------------------------------------------------------------------


def test_an_ingress_becomes_routers_and_services(base: GatewayConfig) -> None:
    state = app_state(ingresses={("default", "web"): ingress("default", "web", [
        ("/api", "Prefix", "app", "http"), ("/metrics", "Exact", "app", 9000)], host="api.example.com",
        default=backend("app", 80))})
    c = translate(state, CFG, base)
    assert c.provider == "kubernetes" and not c.warnings
    assert set(c.routers) == {"k8s-default-web-0-0", "k8s-default-web-0-1", "k8s-default-web-default"}
    r = c.routers["k8s-default-web-0-0"]
    assert r.rule == "Host(`api.example.com`) && (Path(`/api`) || PathPrefix(`/api/`))"
    assert r.service == "k8s-default-app-http" and r.entrypoints == () and r.priority == 0
    assert c.routers["k8s-default-web-0-1"].rule == "Host(`api.example.com`) && Path(`/metrics`)"
    assert c.routers["k8s-default-web-0-1"].service == "k8s-default-app-9000"
    default = c.routers["k8s-default-web-default"]
    assert (default.rule, default.priority, default.service) == ("PathPrefix(`/`)", 1, "k8s-default-app-80")
    # named port "http" -> the slice's port of that name (8080); ready and unset-ready endpoints, sorted;
    # not-ready and terminating ones left out
    assert urls(c.services["k8s-default-app-http"]) == [
        "http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.5:8080"]
    assert urls(c.services["k8s-default-app-80"]) == urls(c.services["k8s-default-app-http"])
    assert urls(c.services["k8s-default-app-9000"]) == [  # numeric targetPort
        "http://10.0.0.1:9001", "http://10.0.0.2:9001", "http://10.0.0.5:9001"]
    assert c.sources["routers.k8s-default-web-0-0"] == "kubernetes:default/web"
    assert c.sources["services.k8s-default-app-http"] == "kubernetes:default/web"
    assert served_ingresses(state, CFG) == [("default", "web")]


def test_endpoints_of_several_slices_ipv6_and_a_numeric_target_without_a_named_slice_port(base: GatewayConfig) -> None:
    state = KubeState(
        services={("ns", "db"): service("ns", "db", [{"port": 5000}])},  # no targetPort: the port itself
        endpoint_slices={
            ("ns", "db-a"): endpoint_slice("ns", "db-a", "db", [endpoint("fd00::2")], []),
            ("ns", "db-b"): endpoint_slice("ns", "db-b", "db", [endpoint("10.1.0.1"), endpoint("10.1.0.1")], []),
            ("other", "db-c"): endpoint_slice("other", "db-c", "db", [endpoint("10.9.9.9")], []),  # other namespace
            ("ns", "x"): endpoint_slice("ns", "x", "not-db", [endpoint("10.8.8.8")], []),
        },
        ingresses={("ns", "i"): ingress("ns", "i", [("/", "Prefix", "db", 5000)])})
    c = translate(state, CFG, base)
    assert urls(c.services["k8s-ns-db-5000"]) == ["http://10.1.0.1:5000", "http://[fd00::2]:5000"]


def test_a_service_without_ready_endpoints_still_makes_its_service(base: GatewayConfig) -> None:
    state = KubeState(services={("ns", "idle"): service("ns", "idle", [{"port": 80, "targetPort": 8080}])},
                      ingresses={("ns", "i"): ingress("ns", "i", [("/", "Prefix", "idle", 80)])})
    c = translate(state, CFG, base)
    assert urls(c.services["k8s-ns-idle-80"]) == []
    merged, warnings = merge(base, [c])
    assert not warnings
    assert merged.services["k8s-ns-idle-80"].load_balancer.servers == ()
    assert merged.routers["k8s-ns-i-0-0"].service == "k8s-ns-idle-80"
    assert merged.origins["services.k8s-ns-idle-80"] == "kubernetes"


def test_annotations(base: GatewayConfig) -> None:
    notes = {"a3s-gateway.io/entrypoints": "web, internal", "a3s-gateway.io/middlewares": "auth,tag",
             "a3s-gateway.io/priority": "42", "a3s-gateway.io/strategy": "least-connections",
             "a3s-gateway.io/scheme": "h2c", "unrelated.io/x": "kept out"}
    state = app_state(ingresses={("default", "i"): ingress("default", "i", [("/", "Prefix", "app", 80)],
                                                           annotations=notes)})
    c = translate(state, CFG, base)
    r = c.routers["k8s-default-i-0-0"]
    assert (r.entrypoints, r.middlewares, r.priority) == (("web", "internal"), ("auth", "tag"), 42)
    svc = c.services["k8s-default-app-80"]
    assert svc.load_balancer.strategy == "least-connections"
    assert urls(svc)[0] == "h2c://10.0.0.1:8080" and svc.load_balancer.servers[0].scheme == "h2c"
    merged, warnings = merge(base, [c])
    assert not warnings and merged.routers["k8s-default-i-0-0"].effective_priority == 42


@pytest.mark.parametrize(("key", "value", "message"), [
    ("priority", "high", 'annotation a3s-gateway.io/priority: "high" is not an integer'),
    ("scheme", "ftp", 'annotation a3s-gateway.io/scheme: "ftp" is not one of http, https, h2c'),
    ("strategy", "fastest", 'annotation a3s-gateway.io/strategy: "fastest" is not one of'),
    ("entrypoints", "web,nope", 'annotations: unknown entrypoint "nope"'),
    ("entrypoints", "raw", 'annotations: entrypoint "raw" is not an http entrypoint'),
    ("middlewares", "auth,missing", 'annotations: unknown middleware "missing"'),
    ("timeout", "5s", "unknown annotation a3s-gateway.io/timeout"),
])
def test_a_bad_annotation_skips_its_ingress_with_a_warning(base: GatewayConfig, key: str, value: str,
                                                           message: str) -> None:
    state = app_state(ingresses={
        ("default", "bad"): ingress("default", "bad", [("/b", "Prefix", "app", 80)],
                                    annotations={f"a3s-gateway.io/{key}": value}),
        ("default", "good"): ingress("default", "good", [("/g", "Prefix", "app", 80)])})
    c = translate(state, CFG, base)
    assert set(c.routers) == {"k8s-default-good-0-0"}
    assert len(c.warnings) == 1 and c.warnings[0].startswith(f"kubernetes:default/bad: {message}")
    assert c.warnings[0].endswith("; Ingress skipped")
    merged, warnings = merge(base, [c])
    assert warnings == list(c.warnings) and "k8s-default-good-0-0" in merged.routers


def test_unknown_services_ports_and_bad_paths_skip_only_their_path(base: GatewayConfig) -> None:
    obj = ingress("default", "i", [("/ok", "Prefix", "app", 80), ("/p", "Prefix", "app", 81),
                                   ("/n", "Prefix", "app", "grpc"), ("/m", "Prefix", "missing", 80),
                                   ("rel", "Prefix", "app", 80), ("/q`", "Exact", "app", 80),
                                   ("/t", "Regex", "app", 80)])
    c = translate(app_state(ingresses={("default", "i"): obj}), CFG, base)
    assert set(c.routers) == {"k8s-default-i-0-0"}
    assert [w.split(": ", 1)[1] for w in c.warnings] == [
        "rules[0].http.paths[1]: Service \"default/app\" has no port 81; path skipped",
        "rules[0].http.paths[2]: Service \"default/app\" has no port 'grpc'; path skipped",
        "rules[0].http.paths[3]: Service \"default/missing\" does not exist; path skipped",
        "rules[0].http.paths[4]: path \"rel\" must start with \"/\"; path skipped",
        "rules[0].http.paths[5]: path '/q`' cannot be used in a rule; path skipped",
        "rules[0].http.paths[6]: pathType \"Regex\" is not Exact, Prefix or ImplementationSpecific; path skipped",
    ]
    assert all(w.startswith("kubernetes:default/i: ") for w in c.warnings)


def test_an_ingress_without_a_usable_path_is_not_served(base: GatewayConfig) -> None:
    state = app_state(ingresses={("default", "i"): ingress("default", "i", [("/x", "Prefix", "missing", 80)],
                                                           host="bad_host!")})
    c = translate(state, CFG, base)
    assert not c.routers and not c.services and c.warnings
    assert served_ingresses(state, CFG) == []


def test_wildcard_host_router(base: GatewayConfig) -> None:
    state = app_state(ingresses={("default", "w"): ingress("default", "w", [("/", "Prefix", "app", 80)],
                                                           host="*.apps.example.com")})
    c = translate(state, CFG, base)
    assert c.routers["k8s-default-w-0-0"].rule == r"HostRegexp(`^[^.]+\.apps\.example\.com$`) && PathPrefix(`/`)"
    merged, warnings = merge(base, [c])
    assert not warnings and "k8s-default-w-0-0" in merged.routers  # a valid rule for the router engine


def test_ingress_classes(base: GatewayConfig) -> None:
    paths = [("/", "Prefix", "app", 80)]
    ours = {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": "public"},
            "spec": {"controller": CONTROLLER}}
    theirs = {"kind": "IngressClass", "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}
    taken = {"kind": "IngressClass", "metadata": {"name": "a3s-gateway"}, "spec": {"controller": "example.com/other"}}
    objects = {
        ("a", "no-class"): ingress("a", "no-class", paths),
        ("a", "by-name"): ingress("a", "by-name", paths, cls="a3s-gateway"),
        ("a", "by-annotation"): ingress("a", "by-annotation", paths,
                                        annotations={"kubernetes.io/ingress.class": "a3s-gateway"}),
        ("a", "our-controller"): ingress("a", "our-controller", paths, cls="public"),
        ("a", "nginx"): ingress("a", "nginx", paths, cls="nginx"),
        ("a", "nginx-annotation"): ingress("a", "nginx-annotation", paths,
                                           annotations={"kubernetes.io/ingress.class": "nginx"}),
        ("a", "unknown"): ingress("a", "unknown", paths, cls="missing-class"),
    }
    state = KubeState(ingresses=objects, ingress_classes={"public": ours, "nginx": theirs},
                      services={("a", "app"): service("a", "app", [{"port": 80}])})
    served = served_ingresses(state, CFG)
    assert served == [("a", "by-annotation"), ("a", "by-name"), ("a", "no-class"), ("a", "our-controller")]
    c = translate(state, CFG, base)
    assert {r.rsplit("-0-0", 1)[0] for r in c.routers} == {f"k8s-a-{n}" for _, n in served}
    assert not c.warnings
    # ingress_class = "nginx", but the IngressClass object "nginx" names another controller: left to it
    other = KubernetesProviderConfig(ingress_class="nginx")
    assert served_ingresses(state, other) == [("a", "no-class"), ("a", "our-controller")]
    # an IngressClass object that gives our class name to another controller: its Ingresses are left alone
    state.ingress_classes["a3s-gateway"] = taken
    assert served_ingresses(state, CFG) == [("a", "no-class"), ("a", "our-controller")]
    c = translate(state, CFG, base)
    assert any('IngressClass "a3s-gateway" belongs to controller "example.com/other"' in w for w in c.warnings)


def test_shared_backends_are_one_service_and_conflicting_annotations_warn(base: GatewayConfig) -> None:
    state = app_state(ingresses={
        ("default", "a"): ingress("default", "a", [("/a", "Prefix", "app", 80)]),
        ("default", "b"): ingress("default", "b", [("/b", "Prefix", "app", 80)]),
        ("default", "c"): ingress("default", "c", [("/c", "Prefix", "app", 80)],
                                  annotations={"a3s-gateway.io/scheme": "https"})})
    c = translate(state, CFG, base)
    assert set(c.services) == {"k8s-default-app-80"} and len(c.routers) == 3
    assert urls(c.services["k8s-default-app-80"])[0].startswith("http://")
    assert c.warnings == ("kubernetes:default/c: services.k8s-default-app-80: already made by kubernetes:default/a "
                          "with other scheme or strategy annotations (or for another Service); that one is used",)


def test_external_name_service(base: GatewayConfig) -> None:
    state = KubeState(services={("ns", "ext"): service("ns", "ext", [{"port": 443}], type="ExternalName",
                                                       externalName="api.example.net")},
                      ingresses={("ns", "i"): ingress("ns", "i", [("/", "Prefix", "ext", 443)],
                                                      annotations={"a3s-gateway.io/scheme": "https"})})
    assert urls(translate(state, CFG, base).services["k8s-ns-ext-443"]) == ["https://api.example.net:443"]


def test_the_result_does_not_depend_on_insertion_order(base: GatewayConfig) -> None:
    a = app_state(ingresses={("default", "x"): ingress("default", "x", [("/x", "Prefix", "app", 80)]),
                             ("default", "y"): ingress("default", "y", [("/y", "Prefix", "app", 80)])})
    b = app_state(ingresses={("default", "y"): a.ingresses[("default", "y")],
                             ("default", "x"): a.ingresses[("default", "x")]})
    assert translate(a, CFG, base) == translate(b, CFG, base)


# --- TLS secrets ------------------------------------------------------------------------------------------------


def test_tls_secrets_become_certificates_and_bad_ones_warn(base: GatewayConfig) -> None:
    cert, key = pem_pair(["api.example.com"])
    other_cert, other_key = pem_pair(["other.example.com"])
    secrets = {
        ("default", "good"): tls_secret("default", "good", cert, key),
        ("default", "mismatch"): tls_secret("default", "mismatch", cert, other_key),
        ("default", "garbage"): tls_secret("default", "garbage", b"not a pem", key),
        ("default", "opaque"): tls_secret("default", "opaque", other_cert, other_key, kind="Opaque"),
    }
    secrets[("default", "nobase64")] = {"type": "kubernetes.io/tls", "metadata": meta("default", "nobase64"),
                                        "data": {"tls.crt": "!!!", "tls.key": "!!!"}}
    names = ["good", "mismatch", "garbage", "opaque", "nobase64", "absent", "good"]
    state = app_state(secrets=secrets, ingresses={
        ("default", "i"): ingress("default", "i", [("/", "Prefix", "app", 80)], tls=names)})
    c = translate(state, CFG, base)
    assert [(p.source, p.cert_pem, p.key_pem) for p in c.certificates] == [("kubernetes:default/good", cert, key)]
    shown = [w.split(": ", 1)[1] for w in c.warnings]
    assert len(shown) == 5 and all(w.startswith("kubernetes:default/i: ") for w in c.warnings)
    assert shown[0] == 'TLS Secret "default/mismatch": tls.crt does not match tls.key; not served'
    assert shown[1].startswith('TLS Secret "default/garbage": tls.crt is not a PEM certificate')
    assert shown[2:] == [
        'TLS Secret "default/opaque" is not of type kubernetes.io/tls; not served',
        'TLS Secret "default/nobase64": tls.crt or tls.key is not base64; not served',
        'TLS Secret "default/absent" does not exist; not served',
    ]
    assert "k8s-default-i-0-0" in c.routers  # a bad secret does not cost the routes
    merged, _ = merge(base, [c])
    assert merged.provided_certificates == c.certificates
    assert key.decode() not in repr(c.certificates[0]) and key.decode() not in repr(merged)  # no key in logs


def test_a_skipped_ingress_contributes_no_certificate(base: GatewayConfig) -> None:
    cert, key = pem_pair(["api.example.com"])
    state = app_state(secrets={("default", "s"): tls_secret("default", "s", cert, key)}, ingresses={
        ("default", "i"): ingress("default", "i", [("/", "Prefix", "app", 80)], tls=["s"], cls="nginx")})
    assert translate(state, CFG, base).certificates == ()


# --- IngressRoute -----------------------------------------------------------------------------------------------


def ingress_route(ns: str, name: str, routes: list[dict[str, Any]], entry_points: list[str] | None = None,
                  secret: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"routes": routes}
    if entry_points is not None:
        spec["entryPoints"] = entry_points
    if secret:
        spec["tls"] = {"secretName": secret}
    return {"apiVersion": "a3s-gateway.io/v1alpha1", "kind": "IngressRoute", "metadata": meta(ns, name),
            "spec": spec}


def two_services() -> dict[tuple[str, str], dict[str, Any]]:
    return {("default", "v1"): service("default", "v1", [{"name": "http", "port": 80, "targetPort": 8000}]),
            ("default", "v2"): service("default", "v2", [{"name": "http", "port": 80, "targetPort": 8000}]),
            ("default", "v3"): service("default", "v3", [{"name": "http", "port": 80, "targetPort": 8000}])}


def slices() -> dict[tuple[str, str], dict[str, Any]]:
    return {("default", f"{v}-s"): endpoint_slice("default", f"{v}-s", v, [endpoint(ip)], [{"name": "http",
                                                                                          "port": 8000}])
            for v, ip in (("v1", "10.0.1.1"), ("v2", "10.0.2.1"), ("v3", "10.0.3.1"))}


def test_ingress_routes_one_service_is_plain_several_are_revisions(base: GatewayConfig) -> None:
    route = ingress_route("default", "llm", [
        {"match": "PathPrefix(`/v1`)", "priority": 7, "middlewares": [{"name": "auth"}, {"name": "tag"}],
         "services": [{"name": "v1", "port": 80, "strategy": "p2c"}]},
        {"match": "PathPrefix(`/v2`)",
         "services": [{"name": "v1", "port": "http"}, {"name": "v2", "port": 80, "scheme": "h2c"},
                      {"name": "v3", "port": 80, "weight": 1}]},
        {"match": "Path(`/w`)", "services": [{"name": "v1", "port": 80, "weight": 3},
                                            {"name": "v2", "port": 80, "weight": 1}]},
    ], entry_points=["web"])
    state = KubeState(services=two_services(), endpoint_slices=slices(),
                      ingress_routes={("default", "llm"): route})
    assert translate(state, CFG, base).routers == {}  # ingress_route_crd = false: not watched, not translated
    c = translate(state, CRD, base)
    assert not c.warnings
    assert set(c.routers) == set(c.services) == {"k8s-default-llm-0", "k8s-default-llm-1", "k8s-default-llm-2"}
    r0 = c.routers["k8s-default-llm-0"]
    assert (r0.rule, r0.service, r0.entrypoints, r0.middlewares, r0.priority) == (
        "PathPrefix(`/v1`)", "k8s-default-llm-0", ("web",), ("auth", "tag"), 7)
    s0 = c.services["k8s-default-llm-0"]
    assert not s0.revisions and s0.load_balancer.strategy == "p2c" and urls(s0) == ["http://10.0.1.1:8000"]
    s1 = c.services["k8s-default-llm-1"]
    assert [(r.name, r.traffic_percent, [s.url for s in r.servers]) for r in s1.revisions] == [
        ("v1", 34, ["http://10.0.1.1:8000"]), ("v2", 33, ["h2c://10.0.2.1:8000"]), ("v3", 33, ["http://10.0.3.1:8000"])]
    assert [r.traffic_percent for r in c.services["k8s-default-llm-2"].revisions] == [75, 25]
    assert c.sources["services.k8s-default-llm-1"] == c.sources["routers.k8s-default-llm-1"] == \
        "kubernetes:default/llm"
    merged, warnings = merge(base, [c])
    assert not warnings
    assert merged.routers["k8s-default-llm-0"].middlewares == ("auth", "tag")
    assert [r.traffic_percent for r in merged.services["k8s-default-llm-1"].revisions] == [34, 33, 33]


@pytest.mark.parametrize(("route", "message"), [
    ({"match": "PathPrefx(`/x`)", "services": [{"name": "v1", "port": 80}]}, "invalid rule: unknown matcher"),
    ({"match": "HostSNI(`*`)", "services": [{"name": "v1", "port": 80}]}, "invalid rule: HostSNI is a TCP matcher"),
    ({"services": [{"name": "v1", "port": 80}]}, '"match" is required'),
    ({"match": "Path(`/x`)", "services": []}, "at least one service is required"),
    ({"match": "Path(`/x`)", "services": [{"name": "v1", "port": 81}]}, 'Service "default/v1" has no port'),
    ({"match": "Path(`/x`)", "services": [{"name": "nope", "port": 80}]}, 'Service "default/nope" does not exist'),
    ({"match": "Path(`/x`)", "services": [{"name": "v1", "port": 80, "scheme": "ws"}]}, 'scheme "ws" is not one of'),
    ({"match": "Path(`/x`)", "services": [{"name": "v1", "port": 80, "weight": -1}]}, "weight must be an integer"),
    ({"match": "Path(`/x`)", "services": [{"name": "v1", "port": 80, "weight": 0},
                                         {"name": "v2", "port": 80, "weight": 0}]}, "weights of the services"),
    ({"match": "Path(`/x`)", "middlewares": [{"name": "nope"}], "services": [{"name": "v1", "port": 80}]},
     'unknown middleware "nope"'),
    ({"match": "Path(`/x`)", "priority": "high", "services": [{"name": "v1", "port": 80}]}, '"priority" must be'),
])
def test_a_bad_ingress_route_route_is_skipped_with_a_warning(base: GatewayConfig, route: dict[str, Any],
                                                            message: str) -> None:
    good = {"match": "Path(`/ok`)", "services": [{"name": "v1", "port": 80}]}
    state = KubeState(services=two_services(), endpoint_slices=slices(),
                      ingress_routes={("default", "r"): ingress_route("default", "r", [route, good])})
    c = translate(state, CRD, base)
    assert set(c.routers) == set(c.services) == {"k8s-default-r-1"}
    assert len(c.warnings) == 1 and c.warnings[0].startswith("kubernetes:default/r: spec.routes[0]: ")
    assert message in c.warnings[0] and "; route skipped" in c.warnings[0]


def test_ingress_route_entrypoints_and_tls(base: GatewayConfig) -> None:
    cert, key = pem_pair(["llm.example.com"])
    good = {"match": "Path(`/ok`)", "services": [{"name": "v1", "port": 80}]}
    state = KubeState(services=two_services(), endpoint_slices=slices(),
                      secrets={("default", "llm-tls"): tls_secret("default", "llm-tls", cert, key)},
                      ingress_routes={("default", "bad"): ingress_route("default", "bad", [good], ["nope"]),
                                      ("default", "ok"): ingress_route("default", "ok", [good], secret="llm-tls")})
    c = translate(state, CRD, base)
    assert set(c.routers) == {"k8s-default-ok-0"} and c.routers["k8s-default-ok-0"].entrypoints == ()
    assert c.warnings == ('kubernetes:default/bad: spec.entryPoints: unknown entrypoint "nope"; IngressRoute skipped',)
    assert [p.source for p in c.certificates] == ["kubernetes:default/llm-tls"]


# --- merge with the file (§12.1) --------------------------------------------------------------------------------


def test_file_names_win_over_kubernetes_items(base: GatewayConfig) -> None:
    file = GatewayConfig.from_hcl(FILE + '''
routers "k8s-default-i-0-0" {
  rule    = "Path(`/mine`)"
  service = "s"
}
services "k8s-default-app-9000" { load_balancer { servers = [{ url = "http://127.0.0.1:7" }] } }
''')
    state = app_state(ingresses={("default", "i"): ingress("default", "i", [
        ("/a", "Prefix", "app", 80), ("/m", "Prefix", "app", 9000)])})
    c = translate(state, CFG, file)
    merged, warnings = merge(file, [c])
    assert merged.routers["k8s-default-i-0-0"] == file.routers["k8s-default-i-0-0"]
    assert merged.services["k8s-default-app-9000"] == file.services["k8s-default-app-9000"]
    assert "k8s-default-i-0-1" not in merged.routers  # its service was skipped: it goes too
    assert "k8s-default-app-80" in merged.services
    assert warnings == [
        "kubernetes:default/i: services.k8s-default-app-9000: a file-defined service has this name; skipped",
        "kubernetes:default/i: routers.k8s-default-i-0-0: a file-defined router has this name; skipped",
        'kubernetes:default/i: routers.k8s-default-i-0-1: its service "k8s-default-app-9000" was skipped; skipped',
    ]


def test_names_of_two_objects_that_meet_keep_the_first(base: GatewayConfig) -> None:
    # Ingress "web" rule 0 path 0 and IngressRoute "web-0" route 0 are both k8s-default-web-0-0
    route = ingress_route("default", "web-0", [{"match": "Path(`/r`)", "services": [{"name": "app", "port": 80}]}])
    state = app_state(ingresses={("default", "web"): ingress("default", "web", [("/i", "Prefix", "app", 80)])},
                      ingress_routes={("default", "web-0"): route})
    c = translate(state, CRD, base)
    assert c.routers["k8s-default-web-0-0"].rule == "(Path(`/i`) || PathPrefix(`/i/`))"
    assert c.sources["routers.k8s-default-web-0-0"] == "kubernetes:default/web"
    assert "k8s-default-web-0-0" not in c.services
    assert c.warnings == ("kubernetes:default/web-0: routers.k8s-default-web-0-0: kubernetes:default/web already "
                          "made an item of this name; skipped",)


def test_a_thousand_ingresses_translate_quickly(base: GatewayConfig) -> None:
    import time

    state = KubeState()
    for i in range(1000):
        ns = f"ns{i % 10}"
        state.services[(ns, f"svc{i}")] = service(ns, f"svc{i}", [{"name": "http", "port": 80, "targetPort": 8080}])
        state.endpoint_slices[(ns, f"svc{i}-a")] = endpoint_slice(
            ns, f"svc{i}-a", f"svc{i}", [endpoint(f"10.{i // 250}.{i % 250}.{j}") for j in range(1, 4)],
            [{"name": "http", "port": 8080}])
        state.ingresses[(ns, f"ing{i}")] = ingress(ns, f"ing{i}", [("/", "Prefix", f"svc{i}", 80)],
                                                   host=f"h{i}.example.com")
    started = time.perf_counter()
    c = translate(state, CFG, base)
    elapsed = time.perf_counter() - started
    assert len(c.routers) == len(c.services) == 1000 and not c.warnings
    assert elapsed < 2.0, f"{elapsed:.2f}s for 1,000 Ingresses"  # linear: ~0.1 s here; quadratic was seconds
