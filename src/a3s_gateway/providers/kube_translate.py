"""Kubernetes objects -> gateway configuration (SPEC §12.5 Ingress, §12.6 IngressRoute).

Pure and synchronous: :func:`translate` turns the objects the provider watches (raw API objects as JSON dicts,
camelCase as the API server sends them) into one :class:`~a3s_gateway.providers.merge.Contribution`. The watching
side (the client, the watches and the status writer) keeps a :class:`KubeState` up to date and calls it after every
change; nothing here does I/O.

- Ingress classes: an Ingress is processed when it names no class, names ``ingress_class`` (``spec.ingressClassName``,
  else the legacy annotation ``kubernetes.io/ingress.class``), or names an IngressClass object whose
  ``spec.controller`` is :data:`CONTROLLER`. An IngressClass object named ``ingress_class`` whose controller is
  another one means the class belongs to that controller: its Ingresses are left alone (with a warning). Marking an
  IngressClass default (``ingressclass.kubernetes.io/is-default-class``) changes nothing here: the API server writes
  the default class into Ingresses created without one, and an Ingress that still names none is processed anyway.
- Per rule path: router ``k8s-<ns>-<ingress>-<rule i>-<path i>``; ``spec.defaultBackend``: router
  ``k8s-<ns>-<ingress>-default`` with ``PathPrefix(`/`)`` and priority 1.
- Backends: service ``k8s-<ns>-<svc>-<port>`` (port as the Ingress names it, number or name); servers are the ready,
  non-terminating endpoints of the Service's EndpointSlices, ``<scheme>://<ip>:<targetPort>``. A Service with no
  such endpoint still makes its service, with no servers (requests get 503 until endpoints appear).
- ``spec.tls[].secretName`` (and an IngressRoute's ``spec.tls.secretName``): ``kubernetes.io/tls`` Secrets whose
  ``tls.crt``/``tls.key`` load and match become certificates of every TLS entrypoint (SPEC §10.2).

Anything invalid (a bad annotation, an unknown Service or port, a bad match rule, a bad certificate) is left out with a
warning carried by the Contribution (prefixed ``kubernetes:<ns>/<name>:``); it never raises.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..config.model import (
    GatewayConfig,
    KubernetesProviderConfig,
    LoadBalancerConfig,
    PemCertificate,
    RevisionConfig,
    RouterConfig,
    ServerConfig,
    ServiceConfig,
)
from ..config.references import format_rule_error
from ..config.schema.services import STRATEGY
from ..routing.rules import RuleError, check_rule
from .merge import Contribution

#: ``spec.controller`` of the IngressClass objects this gateway serves (the Helm chart ships one)
CONTROLLER: Final = "a3s-gateway.io/ingress-controller"
PROVIDER: Final = "kubernetes"
ANNOTATION: Final = "a3s-gateway.io/"  # prefix of the annotations of SPEC §12.5
CLASS_ANNOTATION: Final = "kubernetes.io/ingress.class"
SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"
TLS_SECRET_TYPE: Final = "kubernetes.io/tls"
SCHEMES: Final = ("http", "https", "h2c")
STRATEGIES: Final = STRATEGY.choices  # the load_balancer.strategy values
DEFAULT_PRIORITY: Final = 1  # spec.defaultBackend (SPEC §12.5)
_HOST_RE: Final = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_INT_RE: Final = re.compile(r"[+-]?\d{1,10}\Z")

Key = tuple[str, str]


@dataclass(slots=True)
class KubeState:
    """The watched objects, as the API server sends them (JSON dicts, camelCase)."""

    ingresses: dict[Key, dict[str, Any]] = field(default_factory=dict)  # (namespace, name) -> object
    ingress_classes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> object (cluster-scoped)
    services: dict[Key, dict[str, Any]] = field(default_factory=dict)
    endpoint_slices: dict[Key, dict[str, Any]] = field(default_factory=dict)  # (namespace, slice name) -> object
    secrets: dict[Key, dict[str, Any]] = field(default_factory=dict)  # only type kubernetes.io/tls
    ingress_routes: dict[Key, dict[str, Any]] = field(default_factory=dict)


class Invalid(ValueError):
    """An object (or one of its items) that cannot be translated; the message says why."""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return _dict(obj.get("metadata"))


def _annotations(obj: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in _dict(_meta(obj).get("annotations")).items() if isinstance(v, str)}


# --- classes --------------------------------------------------------------------------------------------------


def ingress_class_of(ingress: dict[str, Any]) -> str | None:
    """The class an Ingress names: ``spec.ingressClassName``, else the legacy annotation; None when it names none."""
    name = _str(_dict(ingress.get("spec")).get("ingressClassName"))
    if not name:
        name = _annotations(ingress).get(CLASS_ANNOTATION, "")
    return name or None


def class_owner(state: KubeState, name: str) -> str | None:
    """The ``spec.controller`` of IngressClass ``name``; None when there is no such object."""
    obj = state.ingress_classes.get(name)
    if obj is None:
        return None
    return _str(_dict(obj.get("spec")).get("controller"))


def is_ours(state: KubeState, cfg: KubernetesProviderConfig, ingress: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``ingress`` is processed (SPEC §12.5), and why not (a warning, or "" when it is simply not ours)."""
    name = ingress_class_of(ingress)
    if name is None:
        return True, ""
    owner = class_owner(state, name)
    if name == cfg.ingress_class:
        if owner is not None and owner != CONTROLLER:
            return False, (f'IngressClass "{name}" belongs to controller "{owner}", not {CONTROLLER}; '
                           "the Ingress is left to it")
        return True, ""
    return owner == CONTROLLER, ""


# --- rules ----------------------------------------------------------------------------------------------------


def _literal(text: str, what: str) -> str:
    if "`" in text or not text.isprintable():
        raise Invalid(f"{what} {text!r} cannot be used in a rule")
    return text


def host_rule(host: str) -> str:
    """``Host(`h`)``; a wildcard ``*.d`` is ``HostRegexp(`^[^.]+\\.d$`)`` (one label, SPEC §12.5)."""
    host = host.lower()
    if not _HOST_RE.match(host):
        raise Invalid(f'host "{host}" is not a valid host name')
    if host.startswith("*."):
        return "HostRegexp(`^[^.]+" + ("." + host[2:]).replace(".", "\\.") + "$`)"
    return f"Host(`{host}`)"


def path_rule(path: str, path_type: str) -> str:
    """The rule of one Ingress path (SPEC §12.5): ``Exact`` -> ``Path``; ``Prefix`` -> the path itself or below it,
    element-wise (``/`` -> everything); ``ImplementationSpecific`` -> ``PathPrefix``."""
    if path_type not in ("Exact", "Prefix", "ImplementationSpecific"):
        raise Invalid(f'pathType "{path_type}" is not Exact, Prefix or ImplementationSpecific')
    if not path:
        if path_type != "ImplementationSpecific":
            raise Invalid(f"a {path_type} path must not be empty")
        path = "/"
    if not path.startswith("/"):
        raise Invalid(f'path "{path}" must start with "/"')
    _literal(path, "path")
    if path_type == "Exact":
        return f"Path(`{path}`)"
    if path_type == "ImplementationSpecific":
        return f"PathPrefix(`{path}`)"
    trimmed = path.rstrip("/")  # Kubernetes ignores a trailing slash of a Prefix path
    if not trimmed:
        return "PathPrefix(`/`)"
    return f"(Path(`{trimmed}`) || PathPrefix(`{trimmed}/`))"


def traffic_percents(weights: list[int]) -> list[int]:
    """Percentages proportional to ``weights``: floors plus the largest remainders (earlier first on ties), summing
    to 100 (SPEC §12.6). ``weights`` must have a positive sum."""
    total = sum(weights)
    floors = [w * 100 // total for w in weights]
    remainders = [w * 100 % total for w in weights]
    left = 100 - sum(floors)
    for i in sorted(range(len(weights)), key=lambda i: (-remainders[i], i))[:left]:
        floors[i] += 1
    return floors


# --- backends -------------------------------------------------------------------------------------------------


def _server(scheme: str, host: str, port: int) -> ServerConfig:
    shown = f"[{host}]" if ":" in host else host
    return ServerConfig(url=f"{scheme}://{shown}:{port}", weight=1, scheme=scheme, host=host, port=port)


def _service_port(service: dict[str, Any], port: int | str) -> dict[str, Any]:
    """The ``spec.ports`` entry of ``service`` that ``port`` (a number or a name) names."""
    for entry in _list(_dict(service.get("spec")).get("ports")):
        entry = _dict(entry)
        if isinstance(port, int) and entry.get("port") == port:
            return entry
        if isinstance(port, str) and entry.get("name") == port:
            return entry
    raise Invalid(f"has no port {port!r}" if isinstance(port, str) else f"has no port {port}")


def slices_by_service(state: KubeState) -> dict[Key, list[dict[str, Any]]]:
    """The EndpointSlices of each (namespace, Service name), by their ``kubernetes.io/service-name`` label."""
    out: dict[Key, list[dict[str, Any]]] = {}
    for (ns, _), slice_ in sorted(state.endpoint_slices.items()):
        service = _dict(_meta(slice_).get("labels")).get(SERVICE_NAME_LABEL)
        if isinstance(service, str) and service:
            out.setdefault((ns, service), []).append(slice_)
    return out


def endpoints_of(state: KubeState, namespace: str, name: str, port: int | str, scheme: str,
                 index: dict[Key, list[dict[str, Any]]] | None = None) -> tuple[ServerConfig, ...]:
    """The servers of Service ``namespace/name`` port ``port``: its ready, non-terminating endpoints, at the target
    port (the EndpointSlice port of the same name, else a numeric ``targetPort``, else the port itself); sorted, so
    another order of the same endpoints is the same set. Invalid when the Service or the port does not exist.
    ``index`` is :func:`slices_by_service` of ``state`` (made here when not given)."""
    service = state.services.get((namespace, name))
    if service is None:
        raise Invalid(f'Service "{namespace}/{name}" does not exist')
    try:
        entry = _service_port(service, port)
    except Invalid as e:
        raise Invalid(f'Service "{namespace}/{name}" {e}') from None
    port_name = _str(entry.get("name"))
    target = entry.get("targetPort")
    fallback = target if isinstance(target, int) and not isinstance(target, bool) else None
    if fallback is None and target is None:
        fallback = entry.get("port") if isinstance(entry.get("port"), int) else None
    spec = _dict(service.get("spec"))
    if spec.get("type") == "ExternalName":
        external = _str(spec.get("externalName")).rstrip(".")
        number = entry.get("port")
        if not external or not isinstance(number, int):
            raise Invalid(f'Service "{namespace}/{name}" has no externalName')
        return (_server(scheme, external, number),)
    if index is None:
        index = slices_by_service(state)
    found: dict[str, ServerConfig] = {}
    for slice_ in index.get((namespace, name), ()):
        number = fallback
        for p in _list(slice_.get("ports")):
            p = _dict(p)
            if _str(p.get("name")) == port_name and isinstance(p.get("port"), int):
                number = p["port"]
                break
        if number is None or not 0 < number < 65536:
            continue  # a named targetPort this slice does not resolve
        for endpoint in _list(slice_.get("endpoints")):
            endpoint = _dict(endpoint)
            conditions = _dict(endpoint.get("conditions"))
            # ready: unset means ready (API contract); terminating: unset means not terminating
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            addresses = [a for a in _list(endpoint.get("addresses")) if isinstance(a, str) and a]
            if addresses:  # the addresses of one endpoint are interchangeable: the first is used
                server = _server(scheme, addresses[0], number)
                found.setdefault(server.url, server)
    return tuple(sorted(found.values(), key=lambda s: s.url))


def _port_of(backend: dict[str, Any]) -> int | str:
    port = _dict(backend.get("port"))
    number = port.get("number")
    if isinstance(number, int) and not isinstance(number, bool):
        return number
    name = port.get("name")
    if isinstance(name, str) and name:
        return name
    raise Invalid("the backend names no port (port.number or port.name)")


# --- the translation --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Annotations:
    entrypoints: tuple[str, ...] = ()
    middlewares: tuple[str, ...] = ()
    priority: int = 0
    strategy: str = "round-robin"
    scheme: str = "http"


def _names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (p.strip() for p in text.split(",")) if n)


def _check_refs(base: GatewayConfig | None, entrypoints: Iterable[str], middlewares: Iterable[str]) -> None:
    """File-defined entrypoints (HTTP) and middlewares (SPEC §12.1); not checked without ``base``."""
    if base is None:
        return
    for name in entrypoints:
        ep = base.entrypoints.get(name)
        if ep is None:
            raise Invalid(f'unknown entrypoint "{name}"')
        if ep.protocol != "http":
            raise Invalid(f'entrypoint "{name}" is not an http entrypoint')
    for name in middlewares:
        if name not in base.middlewares:
            raise Invalid(f'unknown middleware "{name}"')


def parse_annotations(annotations: Mapping[str, str], base: GatewayConfig | None) -> _Annotations:
    """The ``a3s-gateway.io/*`` annotations of an Ingress (SPEC §12.5); Invalid names the bad one."""
    out = _Annotations()
    for key, value in annotations.items():
        if not key.startswith(ANNOTATION):
            continue
        what = key[len(ANNOTATION):]
        text = value.strip()
        if what == "entrypoints":
            out.entrypoints = _names(text)
        elif what == "middlewares":
            out.middlewares = _names(text)
        elif what == "priority":
            if not _INT_RE.match(text):
                raise Invalid(f'annotation {key}: "{value}" is not an integer')
            out.priority = int(text)
        elif what == "strategy":
            if text not in STRATEGIES:
                raise Invalid(f'annotation {key}: "{value}" is not one of {", ".join(STRATEGIES)}')
            out.strategy = text
        elif what == "scheme":
            if text not in SCHEMES:
                raise Invalid(f'annotation {key}: "{value}" is not one of {", ".join(SCHEMES)}')
            out.scheme = text
        else:
            raise Invalid(f"unknown annotation {key} (known: entrypoints, middlewares, priority, strategy, scheme)")
    try:
        _check_refs(base, out.entrypoints, out.middlewares)
    except Invalid as e:
        raise Invalid(f"annotations: {e}") from None
    return out


def _tls_certificate(state: KubeState, namespace: str, secret_name: str) -> PemCertificate:
    """The certificate of TLS Secret ``namespace/secret_name``; Invalid when it is missing or does not load."""
    secret = state.secrets.get((namespace, secret_name))
    where = f'TLS Secret "{namespace}/{secret_name}"'
    if secret is None:
        raise Invalid(f"{where} does not exist")
    if secret.get("type") != TLS_SECRET_TYPE:
        raise Invalid(f"{where} is not of type {TLS_SECRET_TYPE}")
    data = _dict(secret.get("data"))
    try:
        cert = base64.b64decode(_str(data.get("tls.crt")), validate=True)
        key = base64.b64decode(_str(data.get("tls.key")), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid(f"{where}: tls.crt or tls.key is not base64") from None
    problem = pem_problem(cert, key)
    if problem:
        raise Invalid(f"{where}: {problem}")
    return PemCertificate(f"kubernetes:{namespace}/{secret_name}", cert, key)


@functools.lru_cache(maxsize=1024)
def pem_problem(cert: bytes, key: bytes) -> str:
    """Why a PEM certificate chain and key cannot be served ("" when they can): unreadable, encrypted, or not a
    pair. Remembered: every change in the cluster translates every Secret again, and loading a key costs."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    if not cert or not key:
        return "tls.crt and tls.key must both be set"
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError as e:
        return f"tls.crt is not a PEM certificate ({e})"
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        return "tls.key is encrypted (not supported)"
    except (ValueError, UnsupportedAlgorithm) as e:
        return f"tls.key is not a PEM private key ({e})"
    raw = serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(serialization.Encoding.DER, raw) != \
            private.public_key().public_bytes(serialization.Encoding.DER, raw):
        return "tls.crt does not match tls.key"
    return ""


class _Builder:
    """One translation: the items made so far, their sources, the warnings."""

    def __init__(self, state: KubeState, cfg: KubernetesProviderConfig, base: GatewayConfig | None) -> None:
        self.state = state
        self.cfg = cfg
        self.base = base
        self.routers: dict[str, RouterConfig] = {}
        self.services: dict[str, ServiceConfig] = {}
        self.sources: dict[str, str] = {}
        self.certificates: dict[str, PemCertificate] = {}
        self.warnings: list[str] = []
        self.served: list[Key] = []
        self._slices = slices_by_service(state)
        self._endpoints: dict[tuple[str, str, int | str, str], tuple[ServerConfig, ...] | Invalid] = {}

    def endpoints(self, namespace: str, name: str, port: int | str, scheme: str) -> tuple[ServerConfig, ...]:
        """:func:`endpoints_of`, once per Service port and scheme in a translation."""
        key = (namespace, name, port, scheme)
        found = self._endpoints.get(key)
        if found is None:
            try:
                found = endpoints_of(self.state, namespace, name, port, scheme, self._slices)
            except Invalid as e:
                found = e
            self._endpoints[key] = found
        if isinstance(found, Invalid):
            raise Invalid(str(found))
        return found

    def taken(self, source: str, kind: str, name: str) -> bool:
        """Whether another object already made router or service ``name`` (names of two objects can meet:
        ``k8s-a-b-0-0`` is Ingress ``b`` rule 0 path 0 and IngressRoute ``b-0`` route 0 of namespace ``a``); warns."""
        key = f"{kind}.{name}"
        if key in self.sources and self.sources[key] != source:
            self.warn(source, f"{key}: {self.sources[key]} already made an item of this name; skipped")
            return True
        return False

    def warn(self, source: str, message: str) -> None:
        self.warnings.append(f"{source}: {message}")

    def certificate(self, source: str, namespace: str, secret_name: str) -> None:
        if not secret_name:
            return
        try:
            cert = _tls_certificate(self.state, namespace, secret_name)
        except Invalid as e:
            self.warn(source, f"{e}; not served")
            return
        self.certificates.setdefault(cert.source, cert)

    def ingress(self, key: Key, obj: dict[str, Any]) -> None:
        namespace, name = key
        source = f"{PROVIDER}:{namespace}/{name}"
        ours, why = is_ours(self.state, self.cfg, obj)
        if not ours:
            if why:
                self.warn(source, why)
            return
        try:
            notes = parse_annotations(_annotations(obj), self.base)
        except Invalid as e:
            self.warn(source, f"{e}; Ingress skipped")
            return
        spec = _dict(obj.get("spec"))
        made: dict[str, RouterConfig] = {}
        backends: dict[str, ServiceConfig] = {}
        for i, rule in enumerate(_list(spec.get("rules"))):
            rule = _dict(rule)
            host = _str(rule.get("host"))
            try:
                host_part = host_rule(host) if host else ""
            except Invalid as e:
                self.warn(source, f"rules[{i}]: {e}; rule skipped")
                continue
            for j, path in enumerate(_list(_dict(rule.get("http")).get("paths"))):
                path = _dict(path)
                where = f"rules[{i}].http.paths[{j}]"
                try:
                    rule_text = path_rule(_str(path.get("path")), _str(path.get("pathType")) or
                                          "ImplementationSpecific")
                    service = self._backend(namespace, _dict(path.get("backend")), notes)
                except Invalid as e:
                    self.warn(source, f"{where}: {e}; path skipped")
                    continue
                if host_part:
                    rule_text = f"{host_part} && {rule_text}"
                router = f"k8s-{namespace}-{name}-{i}-{j}"
                backends.setdefault(service.name, service)
                made[router] = RouterConfig(router, rule_text, service.name, notes.entrypoints, notes.middlewares,
                                            notes.priority)
        default = spec.get("defaultBackend")
        if isinstance(default, dict):
            try:
                service = self._backend(namespace, default, notes)
            except Invalid as e:
                self.warn(source, f"defaultBackend: {e}; skipped")
            else:
                router = f"k8s-{namespace}-{name}-default"
                backends.setdefault(service.name, service)
                made[router] = RouterConfig(router, "PathPrefix(`/`)", service.name, notes.entrypoints,
                                            notes.middlewares, DEFAULT_PRIORITY)
        for svc in backends.values():
            self._add_service(source, svc)
        for router, cfg in list(made.items()):
            if self.taken(source, "routers", router):
                del made[router]
                continue
            self.routers[router] = cfg
            self.sources[f"routers.{router}"] = source
        if made:
            self.served.append(key)
            for tls in _list(spec.get("tls")):
                self.certificate(source, namespace, _str(_dict(tls).get("secretName")))

    def _backend(self, namespace: str, backend: dict[str, Any], notes: _Annotations) -> ServiceConfig:
        """The service of an Ingress backend (``service.name`` + ``service.port``)."""
        svc = _dict(backend.get("service"))
        svc_name = _str(svc.get("name"))
        if not svc_name:
            raise Invalid("the backend names no Service (only service backends are supported)")
        port = _port_of(svc)
        servers = self.endpoints(namespace, svc_name, port, notes.scheme)
        name = f"k8s-{namespace}-{svc_name}-{port}"
        return ServiceConfig(name, load_balancer=LoadBalancerConfig(strategy=notes.strategy, servers=servers))

    def _add_service(self, source: str, svc: ServiceConfig) -> None:
        key = f"services.{svc.name}"
        old = self.services.get(svc.name)
        if old is None:
            self.services[svc.name] = svc
            self.sources[key] = source
        elif old != svc:  # two Ingresses on one Service port with other scheme/strategy annotations
            self.warn(source, f"{key}: already made by {self.sources[key]} with other scheme or strategy "
                              "annotations (or for another Service); that one is used")

    def ingress_route(self, key: Key, obj: dict[str, Any]) -> None:
        namespace, name = key
        source = f"{PROVIDER}:{namespace}/{name}"
        spec = _dict(obj.get("spec"))
        entrypoints = tuple(e for e in _list(spec.get("entryPoints")) if isinstance(e, str))
        try:
            _check_refs(self.base, entrypoints, ())
        except Invalid as e:
            self.warn(source, f"spec.entryPoints: {e}; IngressRoute skipped")
            return
        made = 0
        for i, route in enumerate(_list(spec.get("routes"))):
            item = f"k8s-{namespace}-{name}-{i}"
            try:
                router, service = self._route(namespace, item, entrypoints, _dict(route))
            except Invalid as e:
                first, nl, rest = str(e).partition("\n")
                self.warn(source, f"spec.routes[{i}]: {first}; route skipped{nl}{rest}")
                continue
            if self.taken(source, "routers", item) or self.taken(source, "services", item):
                continue
            self.routers[item] = router
            self.services[item] = service
            self.sources[f"routers.{item}"] = self.sources[f"services.{item}"] = source
            made += 1
        if made:
            self.certificate(source, namespace, _str(_dict(spec.get("tls")).get("secretName")))

    def _route(self, namespace: str, item: str, entrypoints: tuple[str, ...], route: dict[str, Any]
               ) -> tuple[RouterConfig, ServiceConfig]:
        match = _str(route.get("match"))
        if not match.strip():
            raise Invalid('"match" is required')
        try:
            check_rule(match, "http")
        except RuleError as e:
            message, hint = format_rule_error(match, e.message, e.offset, e.hint)
            raise Invalid(message + (f"\n    help: {hint}" if hint else "")) from None
        priority = route.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise Invalid('"priority" must be an integer')
        middlewares: list[str] = []
        for j, mw in enumerate(_list(route.get("middlewares"))):
            mw_name = _str(_dict(mw).get("name"))
            if not mw_name:
                raise Invalid(f"middlewares[{j}]: a name is required")
            middlewares.append(mw_name)
        _check_refs(self.base, (), middlewares)
        backends = _list(route.get("services"))
        if not backends:
            raise Invalid("at least one service is required")
        pools: list[tuple[str, int, str, tuple[ServerConfig, ...]]] = []  # (revision name, weight, strategy, servers)
        for j, backend in enumerate(backends):
            backend = _dict(backend)
            where = f"services[{j}]"
            svc_name = _str(backend.get("name"))
            port = backend.get("port")
            if not svc_name:
                raise Invalid(f"{where}: a name is required")
            if isinstance(port, str) and port.isdigit():
                port = int(port)
            if isinstance(port, bool) or not isinstance(port, (int, str)) or port == "":
                raise Invalid(f"{where}: port (a number or a name) is required")
            weight = backend.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise Invalid(f"{where}: weight must be an integer >= 0")
            scheme = backend.get("scheme", "http")
            if scheme not in SCHEMES:
                raise Invalid(f'{where}: scheme "{scheme}" is not one of {", ".join(SCHEMES)}')
            strategy = backend.get("strategy", "round-robin")
            if strategy not in STRATEGIES:
                raise Invalid(f'{where}: strategy "{strategy}" is not one of {", ".join(STRATEGIES)}')
            try:
                servers = self.endpoints(namespace, svc_name, port, str(scheme))
            except Invalid as e:
                raise Invalid(f"{where}: {e}") from None
            if any(p[0] == svc_name for p in pools):
                raise Invalid(f'{where}: Service "{svc_name}" is listed twice')
            pools.append((svc_name, weight, str(strategy), servers))
        router = RouterConfig(item, match, item, entrypoints, tuple(middlewares), priority)
        if len(pools) == 1:
            _, _, strategy, servers = pools[0]
            return router, ServiceConfig(item, load_balancer=LoadBalancerConfig(strategy=strategy, servers=servers))
        weights = [p[1] for p in pools]
        if sum(weights) <= 0:
            raise Invalid("the weights of the services must not all be 0")
        revisions = tuple(RevisionConfig(n, pct, servers, strategy)
                          for (n, _, strategy, servers), pct in zip(pools, traffic_percents(weights), strict=True))
        return router, ServiceConfig(item, revisions=revisions)


def _build(state: KubeState, cfg: KubernetesProviderConfig, base: GatewayConfig | None) -> _Builder:
    builder = _Builder(state, cfg, base)
    for key in sorted(state.ingresses):
        builder.ingress(key, state.ingresses[key])
    if cfg.ingress_route_crd:
        for key in sorted(state.ingress_routes):
            builder.ingress_route(key, state.ingress_routes[key])
    return builder


def translate(state: KubeState, cfg: KubernetesProviderConfig, base: GatewayConfig) -> Contribution:
    """The routers, services and certificates the objects of ``state`` make (SPEC §12.5, §12.6), with a warning for
    each item left out. ``base`` is the file configuration: the entrypoints and middlewares that annotations and
    IngressRoutes name must exist there. Objects are visited in (namespace, name) order, so the result of a state
    does not depend on the order events arrived in."""
    b = _build(state, cfg, base)
    return Contribution(PROVIDER, routers=b.routers, services=b.services, sources=b.sources,
                        certificates=tuple(b.certificates.values()), warnings=tuple(b.warnings))


def served_ingresses(state: KubeState, cfg: KubernetesProviderConfig) -> list[Key]:
    """The (namespace, name) of the processed Ingresses that make at least one router (their status gets the
    gateway's address). The file configuration is not consulted: an Ingress naming an entrypoint or middleware the
    file lacks still counts."""
    return _build(state, cfg, None).served
