"""The configuration model: frozen dataclasses for every block of SPEC §3, defaults of SPEC §14.

Attribute names are the HCL key names (``RolloutConfig.from_`` is the one exception: ``from`` is a Python
keyword). Durations and ``*_secs`` keys are float seconds; ``*_ms`` keys are float milliseconds; enums hold
their canonical spelling (``"least-connections"``, ``"rate-limit"``); relative file paths are already
resolved against the directory of the file that named them.

Objects are built by :mod:`a3s_gateway.config.load`; only a validated configuration is ever returned. The
defaults written here are the only ones: a schema key without a written default takes its field's default
(:func:`a3s_gateway.config.schema.engine.schema`).

This module is the leaf of the package: the schemas, the loader and the export import it, so it imports none of
them, not even inside a function (that is an import edge too, and would close a cycle). ``GatewayConfig.from_file``,
``from_hcl``, ``from_dict`` and ``to_dict`` call the :class:`Loader` and :class:`Exporter` that
``a3s_gateway/config/__init__.py`` installs with :func:`install`; Python runs that package initialiser before any
of its submodules, this one included, can be used, so the hooks are always set when a caller reaches them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

from a3s_gateway.errors import Issue
from a3s_gateway.observability.redact import redact_url

__all__ = [
    "DEFAULT_PORTS",
    "REDACTED",
    "AccessLogConfig",
    "AdminConfig",
    "BoxExecutorConfig",
    "CertificateConfig",
    "DiscoveryProviderConfig",
    "DnsProviderConfig",
    "EntrypointConfig",
    "Exporter",
    "FailoverConfig",
    "FileProviderConfig",
    "GatewayConfig",
    "HealthCheckConfig",
    "InferenceConfig",
    "KubernetesExecutorConfig",
    "KubernetesProviderConfig",
    "LoadBalancerConfig",
    "Loader",
    "MiddlewareConfig",
    "MirrorConfig",
    "PassiveConfig",
    "PemCertificate",
    "ProcessExecutorConfig",
    "ProvidersConfig",
    "RedirectConfig",
    "RevisionConfig",
    "RolloutConfig",
    "RouterConfig",
    "ScalingConfig",
    "ServerConfig",
    "ServiceConfig",
    "StickyConfig",
    "TlsConfig",
    "TracingConfig",
    "TransportConfig",
    "format_duration",
    "install",
]

EMPTY_MAP: Final[Mapping[str, Any]] = MappingProxyType({})
_SECRET_PARAMS: Final = frozenset({"value", "password", "users", "keys"})
_URL_PARAMS: Final = frozenset({"redis_url", "forward_auth_url", "jwks_url"})  # shown through redact_url
REDACTED: Final = "<redacted>"  # what a secret shows in logs, reprs and GET /api/gateway/config
LETSENCRYPT: Final = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING: Final = "https://acme-staging-v02.api.letsencrypt.org/directory"


# --- entrypoints (§3.1, §10.1) ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """One extra certificate selected by SNI."""

    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class PemCertificate:
    """A certificate chain and its key held in memory (PEM), made by a provider (Kubernetes TLS Secrets, §12.5);
    served on every TLS entrypoint after the configured and ACME-issued ones (§10.2). ``source`` names where it came
    from (``kubernetes:<ns>/<secret>``)."""

    source: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Entrypoint TLS termination (§10.1). ``alpn`` is already the effective list."""

    cert_file: str = ""
    key_file: str = ""
    certificates: tuple[CertificateConfig, ...] = ()
    min_version: str = "1.2"
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    acme: bool = False
    acme_email: str = ""
    acme_domains: tuple[str, ...] = ()
    acme_ca_url: str = LETSENCRYPT
    acme_staging: bool = False
    acme_ca_file: str = ""
    acme_storage_path: str = "/etc/gateway/acme"
    challenge: str = "http-01"
    dns_provider: str | None = None
    acme_dns_resolvers: tuple[str, ...] = ()

    @property
    def acme_directory_url(self) -> str:
        """The ACME directory actually used (``acme_staging`` selects Let's Encrypt staging)."""
        return LETSENCRYPT_STAGING if self.acme_staging else self.acme_ca_url


@dataclass(frozen=True, slots=True)
class RedirectConfig:
    """``redirect { entrypoint = "websecure", permanent = true }``: 308 (permanent) or 307."""

    entrypoint: str
    permanent: bool = True


@dataclass(frozen=True, slots=True)
class EntrypointConfig:
    """``entrypoints "<name>"`` (§3.1). ``address`` as written; ``host`` "" = all interfaces."""

    name: str
    address: str
    host: str
    port: int
    protocol: str = "http"
    tls: TlsConfig | None = None
    http2: bool = True
    max_concurrent_streams: int = 250
    header_read_timeout: float = 30.0
    idle_timeout: float = 90.0
    max_request_line_bytes: int = 8192
    max_header_bytes: int = 65536
    max_headers: int = 100
    trusted_ips: tuple[str, ...] = ()
    redirect: RedirectConfig | None = None
    max_connections: int = 0
    ai_inspect_limit: int = 65536  # request body bytes held to read the model (§16.1)
    tcp_allowed_ips: tuple[str, ...] = ()
    udp_session_timeout_secs: float = 30.0
    udp_max_sessions: int = 10000


# --- routers (§3.2) ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AiConfig:
    """A router's ``ai`` block (§16.3)."""

    stream_usage: bool = False  # add stream_options.include_usage, take the extra usage event out (§16.2)
    queued_keepalive: float = 0.0  # seconds; 0 = off: SSE comments while a streaming request is queued (§16.3)


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """``routers "<name>"`` (§3.2).

    ``rule`` is the rule after interpolation (legacy TCP/UDP forms already rewritten to ``HostSNI(`*`)``; None
    for a UDP router without rule). ``effective_priority`` = ``priority`` if non-zero, else the length of the
    rule as written (§4.3). ``protocol`` is ``http``, ``tcp`` or ``udp`` (§3.2).
    """

    name: str
    rule: str | None
    service: str
    entrypoints: tuple[str, ...] = ()
    middlewares: tuple[str, ...] = ()
    priority: int = 0
    effective_priority: int = 0
    protocol: str = "http"
    ai: AiConfig | None = None  # the ``ai`` block (§16.3); None: not written


# --- services (§3.3, §7, §8) ------------------------------------------------------------------------------------

#: the port of a backend URL that names none, by scheme (tcp:// and udp:// URLs must name one)
DEFAULT_PORTS: Final[dict[str, int]] = {"http": 80, "https": 443, "h2c": 80}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A static backend. ``scheme``/``host``/``port``/``path`` are parsed from ``url`` (path "" = none)."""

    url: str
    weight: int = 1
    scheme: str = "http"
    host: str = ""
    port: int = 80
    path: str = ""


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """Active health checks (§7.3). ``path`` None = TCP connect probe (tcp services)."""

    path: str | None = None
    interval: float = 10.0
    timeout: float = 5.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    expected_status: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PassiveConfig:
    """Passive outlier ejection (§7.4); on by default."""

    enabled: bool = True
    max_failures: int = 5
    window: float = 30.0
    ejection: float = 30.0


@dataclass(frozen=True, slots=True)
class StickyConfig:
    """Cookie affinity (§7.5)."""

    cookie: str
    ttl: float = 3600.0
    max_sessions: int = 100000
    secure: bool = False
    http_only: bool = True
    same_site: str = "lax"


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """``load_balancer.inference``: model-server metrics scraping of the ``inference`` strategy (§16.5)."""

    metrics_path: str = "/metrics"
    scrape_interval: float = 0.25
    stale_after: float = 2.0
    prefix_affinity_bytes: int = 256
    max_queue: int = 128


@dataclass(frozen=True, slots=True)
class LoadBalancerConfig:
    """``load_balancer`` (§3.3)."""

    strategy: str = "round-robin"
    servers: tuple[ServerConfig, ...] = ()
    pass_host_header: bool = True
    health_check: HealthCheckConfig | None = None
    passive: PassiveConfig = PassiveConfig()
    sticky: StickyConfig | None = None
    inference: InferenceConfig = InferenceConfig()


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Upstream timeouts, pooling and TLS (§5.6, §7.8, §10.5). ``request_timeout`` 0 = none."""

    connect_timeout: float = 5.0
    response_header_timeout: float = 300.0
    stream_idle_timeout: float = 300.0
    request_timeout: float = 0.0
    tunnel_idle_timeout: float = 3600.0
    max_idle_connections_per_backend: int = 256
    idle_connection_timeout: float = 90.0
    tls_insecure_skip_verify: bool = False
    tls_ca_file: str = ""
    tls_server_name: str = ""


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    """Shadow copies of requests (§7.7)."""

    service: str
    percentage: float = 100.0
    max_body_bytes: int = 1048576
    max_in_flight: int = 128


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """Secondary service (§7.6)."""

    service: str


@dataclass(frozen=True, slots=True)
class BoxExecutorConfig:
    """A3S Box scale API (§8.5)."""

    url: str = "http://127.0.0.1:9090"
    token: str = field(default="", repr=False)
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class ProcessExecutorConfig:
    """Child processes (§8.5). ``working_dir`` defaults to the config file's directory."""

    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP)
    working_dir: str = ""
    health_path: str = ""
    port_range: str = "20000-20999"
    host: str = "127.0.0.1"
    scheme: str = "http"
    startup_timeout: float = 300.0
    drain_timeout: float = 60.0
    stop_timeout: float = 10.0

    @property
    def ports(self) -> tuple[int, int]:
        """``port_range`` as (first, last), inclusive."""
        first, _, last = self.port_range.partition("-")
        return int(first), int(last)


@dataclass(frozen=True, slots=True)
class KubernetesExecutorConfig:
    """Deployment scaling (§8.5). Empty strings / None mean the runtime-derived defaults of §8.5."""

    namespace: str = ""
    deployment: str = ""
    service_name: str = ""
    port: int | str | None = None
    scheme: str = "http"
    api_url: str = ""
    token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    ca_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    """``scaling`` (§8). The block of the selected executor is always set (defaults filled); static has none."""

    min_replicas: int = 0
    max_replicas: int = 10
    container_concurrency: int = 0
    target_utilization: float = 0.7
    buffer_enabled: bool = False
    buffer_size: int = 100
    buffer_timeout_secs: float = 30.0
    scale_down_delay_secs: float = 300.0
    executor: str = "box"
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    box: BoxExecutorConfig | None = None
    process: ProcessExecutorConfig | None = None
    kubernetes: KubernetesExecutorConfig | None = None


@dataclass(frozen=True, slots=True)
class RevisionConfig:
    """One revision pool (§8.6); ``strategy`` defaults to the service's load-balancer strategy."""

    name: str
    traffic_percent: int = 100
    servers: tuple[ServerConfig, ...] = ()
    strategy: str = "round-robin"


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """Gradual shift between two revisions (§8.7). ``from_`` is the HCL key ``from``."""

    from_: str
    to: str
    step_percent: int = 10
    step_interval_secs: float = 60.0
    error_rate_threshold: float = 0.05
    latency_threshold_ms: float = 5000.0
    min_requests: int = 10


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """``services "<name>"`` (§3.3). ``protocol`` is that of the routers using it (http when unused)."""

    name: str
    load_balancer: LoadBalancerConfig = LoadBalancerConfig()
    transport: TransportConfig = TransportConfig()
    scaling: ScalingConfig | None = None
    revisions: tuple[RevisionConfig, ...] = ()
    rollout: RolloutConfig | None = None
    mirror: MirrorConfig | None = None
    failover: FailoverConfig | None = None
    protocol: str = "http"


# --- middlewares (§6) -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MiddlewareConfig:
    """``middlewares "<name>"``: canonical ``type`` and its validated parameters, every default applied.

    ``params`` is read-only; keys are the §6 key names. Durations and ``*_secs`` are float seconds, ``*_ms``
    float milliseconds, lists tuples, maps read-only mappings; an optional key that is absent and has no
    default (jwt ``value`` / ``public_key_file`` / ``jwks_url``, basic-auth ``username`` / ``password``) is None.
    """

    name: str
    type: str
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY_MAP)

    def __repr__(self) -> str:
        # secrets stay out of logs and tracebacks
        shown = {
            k: REDACTED if k in _SECRET_PARAMS and v else redact_url(v) if k in _URL_PARAMS and v else v
            for k, v in self.params.items()
        }
        return f"MiddlewareConfig(name={self.name!r}, type={self.type!r}, params={shown!r})"


# --- providers, admin, observability (§3.5-§3.8, §12) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileProviderConfig:
    """``providers { file { ... } }``; ``directory`` resolved, "" = none."""

    watch: bool = True
    directory: str = ""


@dataclass(frozen=True, slots=True)
class DiscoveryProviderConfig:
    """Well-known discovery (§12.3); ``seeds`` are the seed base URLs."""

    seeds: tuple[str, ...] = ()
    poll_interval_secs: float = 30.0
    timeout_secs: float = 5.0


@dataclass(frozen=True, slots=True)
class DnsProviderConfig:
    """One DNS-fed service (§12.4)."""

    service: str
    name: str
    type: str = "A"
    port: int = 80
    scheme: str = "http"
    refresh: float = 30.0
    honor_ttl: bool = True
    nameservers: tuple[str, ...] = ()  # "ip[:port]"; () = the system resolver (/etc/resolv.conf)


@dataclass(frozen=True, slots=True)
class KubernetesProviderConfig:
    """Kubernetes Ingress / IngressRoute (§12.5). ``namespace`` "" = all. ``publish_service`` / ``publish_address``
    (not in SPEC; both empty = off) say what the served Ingresses' ``status.loadBalancer.ingress`` reads."""

    namespace: str = ""
    label_selector: str = ""
    ingress_class: str = "a3s-gateway"
    ingress_route_crd: bool = False
    kubeconfig: str = ""
    publish_service: str = ""  # "namespace/name": Ingress status copies this Service's address
    publish_address: tuple[str, ...] = ()  # IPs / hostnames written to the served Ingresses' status


@dataclass(frozen=True, slots=True)
class ProvidersConfig:
    """``providers`` (§3.5)."""

    file: FileProviderConfig | None = None
    discovery: DiscoveryProviderConfig | None = None
    dns: tuple[DnsProviderConfig, ...] = ()
    kubernetes: KubernetesProviderConfig | None = None


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """``admin`` (§3.6); served even when the block is absent."""

    enabled: bool = True
    address: str = "127.0.0.1:9901"
    host: str = "127.0.0.1"
    port: int = 9901
    middlewares: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    """``access_log`` (§3.7); ``path`` "-" = stdout, otherwise resolved."""

    path: str = "-"
    format: str = "json"
    flush_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """``tracing`` (§3.8)."""

    propagation: tuple[str, ...] = ("w3c", "b3")
    sample_rate: float = 1.0
    otlp_endpoint: str = ""
    otlp_headers: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP, repr=False)
    service_name: str = "a3s-gateway"


# --- the whole configuration ------------------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A loaded, validated configuration (SPEC §3, §13.7).

    ``entrypoints``/``routers``/``services``/``middlewares`` map names to configs in source order.
    ``explicit`` holds the features the configuration explicitly uses (SPEC §13.3). ``locations`` maps key
    paths (``services.llm.scaling``) to ``(file, line, col)`` for runtime messages. ``sources`` maps each file read
    to a digest of the text read (the file watcher compares it with the files once it is armed, §13.6).
    """

    entrypoints: dict[str, EntrypointConfig] = field(default_factory=dict)
    routers: dict[str, RouterConfig] = field(default_factory=dict)
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    middlewares: dict[str, MiddlewareConfig] = field(default_factory=dict)
    providers: ProvidersConfig = ProvidersConfig()
    admin: AdminConfig = AdminConfig()
    access_log: AccessLogConfig | None = None
    tracing: TracingConfig = TracingConfig()
    workers: int | str = 1
    shutdown_timeout: float = 30.0
    warnings: list[Issue] = field(default_factory=list)
    path: str | None = None
    files: tuple[str, ...] = ()
    explicit: frozenset[str] = frozenset()
    locations: Mapping[str, tuple[str, int, int]] = field(default_factory=lambda: EMPTY_MAP)
    sources: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP, compare=False, repr=False)
    #: the provider of each provider-made or provider-fed item (§12.1), ``routers.<name>`` / ``services.<name>`` ->
    #: ``discovery`` | ``dns`` | ...; items absent here come from the file
    origins: Mapping[str, str] = field(default_factory=lambda: EMPTY_MAP, repr=False)
    #: the certificates providers supply (§12.5 TLS Secrets), served on every TLS entrypoint (§10.2)
    provided_certificates: tuple[PemCertificate, ...] = field(default=(), repr=False)

    # -- loading (implemented by config/load.py, installed by a3s_gateway.config) -------------------------

    @classmethod
    def from_file(cls, path: str, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Load ``path`` (plus ``providers.file.directory``) and validate; raises ``ConfigError``."""
        return _installed_loader().load_file(path, env=env)

    @classmethod
    def from_hcl(cls, text: str, filename: str = "<string>", *, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Load HCL ``text``; diagnostics name ``filename``; relative paths resolve against the cwd."""
        return _installed_loader().load_text(text, filename, env=env)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GatewayConfig:
        """Load the JSON shape of ``to_dict()`` / ``GET /api/gateway/config``; diagnostics prefixed ``<dict>``."""
        return _installed_loader().load_dict(data)

    # -- output ---------------------------------------------------------------------------------------------

    def summary(self) -> str:
        """``1 entrypoint, 1 router, 1 service, 2 middlewares`` (SPEC §2.7)."""
        return ", ".join(
            [
                _count(len(self.entrypoints), "entrypoint"),
                _count(len(self.routers), "router"),
                _count(len(self.services), "service"),
                _count(len(self.middlewares), "middleware"),
            ]
        )

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """The effective configuration (SPEC §11.1 config): defaults filled, durations as strings.

        ``from_dict(to_dict(redact=False))`` gives back an equal configuration. With ``redact`` secrets are
        replaced by ``"<redacted>"``.
        """
        if _exporter is None:
            raise RuntimeError(_NOT_INSTALLED)
        return _exporter.config_to_dict(self, redact=redact)


# --- loading and export hooks (see the module docstring) --------------------------------------------------------


class Loader(Protocol):
    """What ``GatewayConfig.from_*`` call: the functions of :mod:`a3s_gateway.config.load`."""

    def load_file(self, path: str, *, env: Mapping[str, str] | None = None) -> GatewayConfig: ...

    def load_text(
        self, text: str, filename: str = "<string>", *, env: Mapping[str, str] | None = None
    ) -> GatewayConfig: ...

    def load_dict(self, data: Mapping[str, Any]) -> GatewayConfig: ...


class Exporter(Protocol):
    """What ``GatewayConfig.to_dict`` calls: the function of :mod:`a3s_gateway.config.export`."""

    def config_to_dict(self, config: GatewayConfig, *, redact: bool = True) -> dict[str, Any]: ...


_NOT_INSTALLED: Final = "a3s_gateway.config has not finished importing"
_loader: Loader | None = None
_exporter: Exporter | None = None


def install(loader: Loader, exporter: Exporter) -> None:
    """Set the loader and exporter behind ``GatewayConfig``; called once, by ``a3s_gateway/config/__init__.py``."""
    global _loader, _exporter
    _loader, _exporter = loader, exporter


def _installed_loader() -> Loader:
    if _loader is None:
        raise RuntimeError(_NOT_INSTALLED)
    return _loader


def format_duration(seconds: float) -> str:
    """``30.0`` -> ``"30s"``, ``0.25`` -> ``"250ms"``, ``5400`` -> ``"1h30m"``; parses back to the same value."""
    if seconds == 0:
        return "0s"
    if not math.isfinite(seconds) or seconds < 0:
        return str(seconds)
    ms = seconds * 1000
    if abs(ms - round(ms)) > 1e-6:
        return f"{seconds:.9f}".rstrip("0") + "s"
    total_ms = round(ms)
    if total_ms < 1000:
        return f"{total_ms}ms"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if rest:
        parts.append(f"{rest // 1000}s" if rest % 1000 == 0 else f"{rest / 1000}s")
    return "".join(parts)
