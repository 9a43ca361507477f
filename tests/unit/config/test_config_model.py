"""The configuration model (SPEC §3, §6, §14): defaults, value types, explicit features, to_dict / from_dict."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from certs import make_cert
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_gateway.config import MIDDLEWARE_TYPES, GatewayConfig
from a3s_gateway.config.model import (
    AccessLogConfig,
    AdminConfig,
    BoxExecutorConfig,
    EntrypointConfig,
    HealthCheckConfig,
    KubernetesExecutorConfig,
    LoadBalancerConfig,
    MirrorConfig,
    PassiveConfig,
    ProcessExecutorConfig,
    RevisionConfig,
    RolloutConfig,
    ScalingConfig,
    StickyConfig,
    TlsConfig,
    TracingConfig,
    TransportConfig,
    format_duration,
)
from a3s_gateway.config.schema.checks import parse_address
from a3s_gateway.errors import ConfigError

MINIMAL = """
entrypoints "web" { address = ":8080" }
routers "r" { rule = "PathPrefix(`/v1`)"; service = "s" }
services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }
"""


def load(text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    return GatewayConfig.from_hcl(MINIMAL + text, "g.hcl", env=env or {})


# --- SPEC §14: every default on a minimal configuration --------------------------------------------------------------


def test_top_level_admin_access_log_tracing_defaults() -> None:
    config = load("")
    assert config.workers == 1
    assert config.shutdown_timeout == 30.0
    assert config.admin == AdminConfig(
        enabled=True, address="127.0.0.1:9901", host="127.0.0.1", port=9901, middlewares=()
    )
    assert config.access_log is None
    assert config.tracing == TracingConfig(("w3c", "b3"), 1.0, "", {}, "a3s-gateway")
    assert config.providers.file is None and config.providers.dns == () and config.providers.kubernetes is None
    assert load("access_log {}\n").access_log == AccessLogConfig(path="-", format="json", flush_interval=1.0)


def test_entrypoint_defaults() -> None:
    ep = load("").entrypoints["web"]
    assert ep == EntrypointConfig(
        name="web",
        address=":8080",
        host="",
        port=8080,
        protocol="http",
        tls=None,
        http2=True,
        max_concurrent_streams=250,
        header_read_timeout=30.0,
        idle_timeout=90.0,
        max_request_line_bytes=8192,
        max_header_bytes=65536,
        max_headers=100,
        trusted_ips=(),
        redirect=None,
        max_connections=0,
        ai_inspect_limit=65536,
        tcp_allowed_ips=(),
        udp_session_timeout_secs=30.0,
        udp_max_sessions=10000,
    )


def test_router_defaults_and_effective_priority() -> None:
    router = load("").routers["r"]
    assert (router.entrypoints, router.middlewares, router.priority) == ((), (), 0)
    assert router.effective_priority == 17 and router.protocol == "http"
    config = load('routers "p" { rule = "Path(`/x`)"; service = "s"; priority = -3 }\n')
    assert config.routers["p"].effective_priority == -3


def test_service_defaults() -> None:
    service = load("").services["s"]
    lb = service.load_balancer
    assert (lb.strategy, lb.pass_host_header, lb.health_check, lb.sticky) == ("round-robin", True, None, None)
    assert lb.servers[0].weight == 1
    assert lb.passive == PassiveConfig(enabled=True, max_failures=5, window=30.0, ejection=30.0)
    assert service.transport == TransportConfig(
        connect_timeout=5.0,
        response_header_timeout=300.0,
        stream_idle_timeout=300.0,
        request_timeout=0.0,
        tunnel_idle_timeout=3600.0,
        max_idle_connections_per_backend=256,
        idle_connection_timeout=90.0,
        tls_insecure_skip_verify=False,
        tls_ca_file="",
        tls_server_name="",
    )
    assert (service.scaling, service.revisions, service.rollout, service.mirror, service.failover) == (
        None,
        (),
        None,
        None,
        None,
    )


def test_nested_block_defaults() -> None:
    text = """
services "t" {
  load_balancer {
    servers = [{ url = "http://a" }]
    health_check { path = "/health" }
    sticky { cookie = "srv" }
  }
  scaling {}
  mirror { service = "s" }
  revisions = []
}
services "p" {
  scaling {
    executor = "process"
    process { command = ["model", "--port", "{port}"] }
  }
}
services "k" { scaling { executor = "kubernetes" } }
services "q" {
  revisions = [
    { name = "v1", servers = [{ url = "http://a" }] },
    { name = "v2", traffic_percent = 0, servers = [{ url = "http://b" }] }
  ]
  rollout { from = "v1"; to = "v2" }
}
"""
    config = load(text)
    t = config.services["t"]
    assert t.load_balancer.health_check == HealthCheckConfig("/health", 10.0, 5.0, 3, 1, ())
    assert t.load_balancer.sticky == StickyConfig("srv", 3600.0, 100000, False, True, "lax")
    assert t.mirror == MirrorConfig("s", 100.0, 1048576, 128)
    assert t.scaling == ScalingConfig(
        min_replicas=0,
        max_replicas=10,
        container_concurrency=0,
        target_utilization=0.7,
        buffer_enabled=False,
        buffer_size=100,
        buffer_timeout_secs=30.0,
        scale_down_delay_secs=300.0,
        executor="box",
        stable_window=60.0,
        panic_window=6.0,
        panic_threshold=2.0,
        max_scale_up_rate=1000.0,
        max_scale_down_rate=2.0,
        box=BoxExecutorConfig("http://127.0.0.1:9090", "", 10.0),
    )
    process = config.services["p"].scaling
    assert process is not None
    assert process.process == ProcessExecutorConfig(
        command=("model", "--port", "{port}"),
        env={},
        working_dir=os.getcwd(),
        health_path="",
        port_range="20000-20999",
        host="127.0.0.1",
        scheme="http",
        startup_timeout=300.0,
        drain_timeout=60.0,
        stop_timeout=10.0,
    )
    assert process.process.ports == (20000, 20999)
    kubernetes = config.services["k"].scaling
    assert kubernetes is not None and kubernetes.kubernetes == KubernetesExecutorConfig()
    assert kubernetes.kubernetes.token_file == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    q = config.services["q"]
    assert q.revisions[0] == RevisionConfig("v1", 100, q.revisions[0].servers, "round-robin")
    assert q.rollout == RolloutConfig("v1", "v2", 10, 60.0, 0.05, 5000.0, 10)


def test_tls_and_redirect_defaults(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, cn="x")
    text = f"""
entrypoints "s" {{
  address = ":8443"
  tls {{ cert_file = "{cert}"; key_file = "{key}" }}
}}
entrypoints "h1" {{
  address = ":8444"
  http2 = false
  tls {{ cert_file = "{cert}"; key_file = "{key}" }}
}}
entrypoints "t" {{
  address = ":8445"
  protocol = "tcp"
  tls {{ cert_file = "{cert}"; key_file = "{key}" }}
}}
entrypoints "plain" {{
  address = ":8081"
  redirect {{ entrypoint = "s" }}
}}
"""
    config = load(text)
    tls = config.entrypoints["s"].tls
    assert tls == TlsConfig(cert_file=str(cert), key_file=str(key))
    assert tls.alpn == ("h2", "http/1.1") and tls.min_version == "1.2" and tls.challenge == "http-01"
    assert tls.acme_directory_url == "https://acme-v02.api.letsencrypt.org/directory"
    assert tls.acme_storage_path == "/etc/gateway/acme"
    h1 = config.entrypoints["h1"].tls
    assert h1 is not None and h1.alpn == ("http/1.1",)
    tcp = config.entrypoints["t"].tls
    assert tcp is not None and tcp.alpn == ()
    redirect = config.entrypoints["plain"].redirect
    assert redirect is not None and (redirect.entrypoint, redirect.permanent) == ("s", True)


MIDDLEWARE_DEFAULTS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "jwt",
        'value = "s"',
        {
            "value": "s",
            "public_key_file": None,
            "jwks_url": None,
            "jwks_refresh": 600.0,
            "algorithms": ("HS256", "HS384", "HS512"),
            "header": "Authorization",
            "issuer": "",
            "audience": (),
            "leeway": 60.0,
            "require_exp": True,
            "forward_claims": {"sub": "X-JWT-Subject"},
        },
    ),
    ("api-key", 'keys = ["k"]', {"header": "X-API-Key", "keys": ("k",), "strip_header": False}),
    (
        "basic-auth",
        'username = "u"; password = "p"',
        {
            "username": "u",
            "password": "p",
            "users": (),
            "users_file": "",
            "realm": "a3s-gateway",
            "remove_header": False,
        },
    ),
    (
        "forward-auth",
        'forward_auth_url = "http://auth:9000/check"',
        {
            "forward_auth_url": "http://auth:9000/check",
            "forward_auth_method": "GET",
            "forward_auth_timeout": 5.0,
            "forward_auth_request_headers": (),
            "forward_auth_response_headers": (),
        },
    ),
    ("rate-limit", "rate = 2.5", {"rate": 2.5, "period": 1.0, "burst": 3, "key": "client_ip", "max_keys": 65536}),
    (
        "rate-limit-redis",
        'rate = 10; redis_url = "redis://:pw@redis:6379/0"',
        {
            "rate": 10.0,
            "period": 1.0,
            "burst": 10,
            "key": "client_ip",
            "redis_url": "redis://:pw@redis:6379/0",
            "failure_mode": "open",
            "redis_timeout": 1.0,
            "key_prefix": "a3s:ratelimit:",
        },
    ),
    (
        "token-limit",
        "limit = 1000",
        {
            "limit": 1000,
            "window": 60.0,
            "count": "total",
            "key": "client_ip",
            "per_model": {},
            "reserve": "max_tokens",
            "default_reserve": 256,
            "redis_url": "",
            "failure_mode": "open",
            "redis_timeout": 1.0,
            "key_prefix": "a3s:tokens:",
        },
    ),
    (
        "cors",
        "",
        {
            "allowed_origins": ("*",),
            "allowed_methods": ("GET", "POST", "PUT", "DELETE", "OPTIONS"),
            "allowed_headers": ("Content-Type", "Authorization"),
            "expose_headers": (),
            "allow_credentials": False,
            "max_age": 86400.0,
        },
    ),
    ("headers", "", {"request_headers": {}, "response_headers": {}}),
    ("strip-prefix", 'prefixes = ["/api"]', {"prefixes": ("/api",)}),
    ("body-limit", "max_body_bytes = 1024", {"max_body_bytes": 1024}),
    (
        "retry",
        "",
        {
            "max_retries": 3,
            "retry_interval_ms": 100.0,
            "max_interval_ms": 1000.0,
            "retry_on_status": (502, 503, 504),
            "retry_non_idempotent": False,
            "max_replay_bytes": 1048576,
            "max_retry_after": 10.0,
        },
    ),
    ("circuit-breaker", "", {"failure_threshold": 5, "cooldown_secs": 30.0, "success_threshold": 1}),
    ("ip-allow", 'allowed_ips = ["10.0.0.0/8"]', {"allowed_ips": ("10.0.0.0/8",), "trusted_proxies": (), "depth": 0}),
    (
        "compress",
        "",
        {
            "min_size": 1024,
            "encodings": ("br", "gzip", "deflate"),
            "content_types": (
                "text/*",
                "application/json",
                "application/*+json",
                "application/x-ndjson",
                "application/javascript",
                "application/xml",
                "application/*+xml",
                "image/svg+xml",
            ),
            "include_event_stream": False,
        },
    ),
    ("tcp-filter", "max_connections = 5", {"allowed_ips": (), "max_connections": 5}),
    (
        "ws-mux",
        "",
        {"max_channels": 64, "upstream_path": "", "send_queue": 256, "max_message_bytes": 1048576},
    ),
]


def test_every_middleware_type_has_a_defaults_case() -> None:
    assert sorted(t for t, _, _ in MIDDLEWARE_DEFAULTS) == sorted(MIDDLEWARE_TYPES)
    assert len(MIDDLEWARE_TYPES) == 17


@pytest.mark.parametrize(("mw_type", "keys", "expected"), MIDDLEWARE_DEFAULTS)
def test_middleware_defaults(mw_type: str, keys: str, expected: dict[str, Any]) -> None:
    config = load(f'middlewares "m" {{ type = "{mw_type}"; {keys} }}\n')
    mw = config.middlewares["m"]
    assert mw.type == mw_type
    assert {k: dict(v) if hasattr(v, "items") else v for k, v in mw.params.items()} == expected
    with pytest.raises(TypeError):
        mw.params["x"] = 1  # type: ignore[index]


# --- value types (§2.3) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ('"250ms"', 0.25),
        ('"10s"', 10.0),
        ('"1.5s"', 1.5),
        ('"5m"', 300.0),
        ('"1h"', 3600.0),
        ('"1h30m"', 5400.0),
        ('"1m0.5s"', 60.5),
        ("30", 30.0),
        ("0.5", 0.5),
        ('"45"', 45.0),
    ],
)
def test_durations(written: str, seconds: float) -> None:
    config = load(f'entrypoints "d" {{ address = ":1"; idle_timeout = {written} }}\n')
    assert config.entrypoints["d"].idle_timeout == seconds


@pytest.mark.parametrize(
    ("written", "value"),
    [("30", 30.0), ("0.5", 0.5), ('"30"', 30.0), ('"2m"', 120.0), ('"1500ms"', 1.5)],
)
def test_secs_keys(written: str, value: float) -> None:
    config = load(f'middlewares "c" {{ type = "circuit-breaker"; cooldown_secs = {written} }}\n')
    assert config.middlewares["c"].params["cooldown_secs"] == value


@pytest.mark.parametrize(("written", "value"), [("250", 250.0), ('"2s"', 2000.0), ('"250ms"', 250.0), ('"75"', 75.0)])
def test_ms_keys(written: str, value: float) -> None:
    config = load(f'middlewares "r" {{ type = "retry"; retry_interval_ms = {written}; max_interval_ms = 10000 }}\n')
    assert config.middlewares["r"].params["retry_interval_ms"] == value


@pytest.mark.parametrize(
    ("key", "written", "value"),
    [
        ("max_headers", "5.0", 5),
        ("max_headers", '"7"', 7),
        ("http2", '"TRUE"', True),
        ("http2", '"false"', False),
        ("protocol", '"HTTP"', "http"),
        ("trusted_ips", '["10.0.0.0/8", "::1"]', ("10.0.0.0/8", "::1")),
    ],
)
def test_typed_conversions(key: str, written: str, value: object) -> None:
    config = load(f'entrypoints "d" {{ address = ":1"; {key} = {written} }}\n')
    assert getattr(config.entrypoints["d"], key) == value


@pytest.mark.parametrize(
    ("written", "canonical"),
    [("least_connections", "least-connections"), ("Least-Connections", "least-connections"), ("P2C", "p2c")],
)
def test_enums_are_case_insensitive_and_underscore_tolerant(written: str, canonical: str) -> None:
    config = load(
        f'services "t" {{ load_balancer {{ strategy = "{written}"; servers = [{{ url = "http://a" }}] }} }}\n'
    )
    assert config.services["t"].load_balancer.strategy == canonical
    config = load(f'middlewares "m" {{ type = "{"RATE_LIMIT"}"; rate = 1 }}\n')
    assert config.middlewares["m"].type == "rate-limit"


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        (":8080", ("", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:443", ("::1", 443)),
        ("[::]:0", ("::", 0)),
        ("localhost:9901", ("localhost", 9901)),
        ("0.0.0.0", None),
        ("::1:80", None),
        ("host:", None),
        ("host:99999", None),
        ("[zz]:1", None),
    ],
)
def test_addresses(address: str, parsed: tuple[str, int] | None) -> None:
    assert parse_address(address) == parsed


def test_null_is_absent_and_objects_equal_blocks() -> None:
    a = load('entrypoints "d" { address = ":1"; idle_timeout = null\n redirect = null }\n')
    assert a.entrypoints["d"].idle_timeout == 90.0 and a.entrypoints["d"].redirect is None
    block = load(
        'services "t" { load_balancer { servers { url = "http://a" }\n servers { url = "http://b"; weight = 2 } } }\n'
    )
    attr = load(
        'services "t" { load_balancer = { servers = [{ url = "http://a" }, { url = "http://b", weight = 2 }] } }\n'
    )
    assert block.services["t"] == attr.services["t"]
    servers = block.services["t"].load_balancer.servers
    assert [(s.scheme, s.host, s.port, s.weight) for s in servers] == [("http", "a", 80, 1), ("http", "b", 80, 2)]


def test_server_url_parts() -> None:
    text = (
        'services "t" { load_balancer { servers = [{ url = "https://api.example.com/base/" }, '
        '{ url = "h2c://[::1]:50051" }] } }\n'
    )
    servers = load(text).services["t"].load_balancer.servers
    assert [(s.scheme, s.host, s.port, s.path) for s in servers] == [
        ("https", "api.example.com", 443, "/base"),
        ("h2c", "::1", 50051, ""),
    ]


def test_workers_auto() -> None:
    assert load('workers = "auto"\n').workers == "auto"
    assert load("workers = 4\n").workers == 4


# --- explicit features (§13.3) -------------------------------------------------------------------------------------


def test_a_minimal_configuration_uses_no_optional_feature() -> None:
    assert load("").explicit == frozenset()


def test_explicit_features() -> None:
    text = """
entrypoints "t" { address = ":9000"; protocol = "tcp"; max_connections = 5; tcp_allowed_ips = ["10.0.0.0/8"] }
entrypoints "u" { address = ":9001"; protocol = "udp" }
entrypoints "h" { address = ":8081"; http2 = true; trusted_ips = ["10.0.0.1"] }
services "x" {
  load_balancer {
    servers = [{ url = "https://a" }, { url = "h2c://b:1" }]
    health_check { path = "/h" }
    passive { max_failures = 2 }
    sticky { cookie = "c" }
  }
  transport { tls_server_name = "a" }
  scaling { executor = "static" }
  mirror { service = "s" }
  failover { service = "s" }
}
middlewares "rl" { type = "rate-limit"; rate = 1 }
middlewares "unused" { type = "cors" }
middlewares "auth" { type = "api-key"; keys = ["k"] }
routers "x" { rule = "Path(`/x`)"; service = "x"; middlewares = ["rl"] }
admin { middlewares = ["auth"] }
access_log {}
tracing { sample_rate = 0.5 }
workers = 2
providers {
  file { watch = true }
  dns { service = "d"; name = "d.example.com" }
}
services "d" {}
"""
    assert load(text).explicit == {
        "tcp entrypoint",
        "udp entrypoint",
        "max_connections",
        "tcp_allowed_ips",
        "http2",
        "trusted_ips",
        "https backend",
        "h2c backend",
        "health_check",
        "passive health",
        "sticky",
        "transport tls",
        "scaling",
        "executor static",
        "mirror",
        "failover",
        "middleware rate-limit",
        "middleware api-key",
        "admin",
        "admin.middlewares",
        "access_log",
        "tracing",
        "workers",
        "providers.file.watch",
        "providers.dns",
    }


def test_http2_counts_only_when_written_true_and_passive_only_when_enabled() -> None:
    config = load(
        'entrypoints "h" { address = ":8081"; http2 = false }\n'
        'services "t" { load_balancer {\n servers = [{ url = "http://a" }]\n passive { enabled = false } } }\n'
    )
    assert config.explicit == frozenset()


# --- to_dict / from_dict --------------------------------------------------------------------------------------------

SECRETS = """
middlewares "j" { type = "jwt"; value = "hmac-secret" }
middlewares "k" { type = "api-key"; keys = ["key-1", "key-2"] }
middlewares "b" {
  type = "basic-auth"; username = "u"; password = "pw"; users = ["a:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M="]
}
middlewares "r" { type = "rate-limit-redis"; rate = 5; redis_url = "redis://user:pa55@redis:6379/1" }
tracing { otlp_endpoint = "http://collector:4318"; otlp_headers = { Authorization = "Bearer t" } }
services "x" { scaling { box { token = "box-token" } } }
"""


def test_to_dict_redacts_secrets() -> None:
    data = load(SECRETS).to_dict()
    mws = data["middlewares"]
    assert mws["j"]["value"] == "<redacted>"
    assert mws["k"]["keys"] == ["<redacted>", "<redacted>"]
    assert mws["b"]["password"] == "<redacted>" and mws["b"]["users"] == ["<redacted>"]
    assert mws["r"]["redis_url"] == "redis://user:<redacted>@redis:6379/1"
    assert data["tracing"]["otlp_headers"] == {"Authorization": "<redacted>"}
    assert data["services"]["x"]["scaling"]["box"]["token"] == "<redacted>"
    assert "hmac-secret" not in repr(data) and "pa55" not in repr(data)
    plain = load(SECRETS).to_dict(redact=False)
    assert plain["middlewares"]["j"]["value"] == "hmac-secret"


URL_SECRETS = """
middlewares "rq" { type = "rate-limit-redis"; rate = 5; redis_url = "redis://redis:6379/0?password=qpass-1" }
middlewares "ru" { type = "rate-limit-redis"; rate = 5; redis_url = "redis://:upass-2@redis:6379/0" }
middlewares "fa" {
  type = "forward-auth"; forward_auth_url = "https://gw:fapass-3@auth.local/check?token=fatok-4&next=/x"
}
middlewares "jw" { type = "jwt"; jwks_url = "https://idp.local/jwks?access_token=jwtok-5"; algorithms = ["RS256"] }
tracing { otlp_endpoint = "http://otel:otlppass-6@collector:4318" }
services "x" { scaling { box { url = "http://box.local:9090/?api_key=boxkey-7" } } }
services "k" { scaling { executor = "kubernetes"; kubernetes { api_url = "https://k8s:kpass-8@api.local" } } }
providers { discovery { seeds = [{ url = "http://seed.local:8000/?secret=seed-9" }] } }
"""


def test_to_dict_redacts_credentials_in_every_url_valued_key() -> None:
    config = load(URL_SECRETS)
    data = config.to_dict()
    mws = data["middlewares"]
    assert mws["rq"]["redis_url"] == "redis://redis:6379/0?password=<redacted>"
    assert mws["ru"]["redis_url"] == "redis://:<redacted>@redis:6379/0"
    assert mws["fa"]["forward_auth_url"] == "https://gw:<redacted>@auth.local/check?token=<redacted>&next=/x"
    assert mws["jw"]["jwks_url"] == "https://idp.local/jwks?access_token=<redacted>"
    assert data["tracing"]["otlp_endpoint"] == "http://otel:<redacted>@collector:4318"
    assert data["services"]["x"]["scaling"]["box"]["url"] == "http://box.local:9090/?api_key=<redacted>"
    assert data["services"]["k"]["scaling"]["kubernetes"]["api_url"] == "https://k8s:<redacted>@api.local"
    assert data["providers"]["discovery"]["seeds"] == [{"url": "http://seed.local:8000/?secret=<redacted>"}]
    for n, secret in enumerate(("qpass", "upass", "fapass", "fatok", "jwtok", "otlppass", "boxkey", "kpass", "seed-9")):
        assert f"{secret}-{n + 1}" not in repr(data)
        assert f"{secret}-{n + 1}" not in repr(config.middlewares)  # MiddlewareConfig.__repr__ (tracebacks, logs)
    plain = config.to_dict(redact=False)
    assert plain["middlewares"]["fa"]["forward_auth_url"].endswith("check?token=fatok-4&next=/x")
    assert plain["providers"]["discovery"]["seeds"] == [{"url": "http://seed.local:8000/?secret=seed-9"}]


def test_to_dict_shape() -> None:
    data = load("").to_dict()
    assert data["entrypoints"]["web"]["idle_timeout"] == "1m30s"
    assert data["entrypoints"]["web"]["address"] == ":8080"
    assert data["routers"]["r"] == {
        "rule": "PathPrefix(`/v1`)",
        "service": "s",
        "entrypoints": [],
        "middlewares": [],
        "priority": 0,
        "ai": None,
    }
    assert data["services"]["s"]["load_balancer"]["servers"] == [{"url": "http://127.0.0.1:9000", "weight": 1}]
    assert data["services"]["s"]["transport"]["tunnel_idle_timeout"] == "1h"
    assert data["shutdown_timeout"] == "30s" and data["workers"] == 1 and data["access_log"] is None


def test_round_trip_through_from_dict() -> None:
    text = (
        SECRETS
        + """
entrypoints "t" { address = "[::1]:9000"; protocol = "tcp" }
services "v" {
  revisions = [
    { name = "v1", traffic_percent = 90, servers = [{ url = "http://a" }] },
    { name = "v2", traffic_percent = 10, servers = [{ url = "http://b" }] }
  ]
  rollout { from = "v1"; to = "v2"; latency_threshold_ms = "2s" }
  scaling { executor = "kubernetes"; kubernetes { port = "http" } }
}
services "p" { scaling { executor = "process"; process { command = ["m"]; env = { A = "1" } } } }
middlewares "c" { type = "cors"; max_age = 60 }
middlewares "rt" { type = "retry"; retry_interval_ms = 250 }
providers { discovery { seeds = [{ url = "http://10.0.0.5:8000" }] } }
access_log { flush_interval = "250ms" }
shutdown_timeout = "1h30m"
"""
    )
    original = load(text.replace('executor = "process"', 'executor = "process"\n min_replicas = 1'))
    assert original.services["p"].scaling is not None and original.services["p"].scaling.min_replicas == 1
    again = GatewayConfig.from_dict(original.to_dict(redact=False))
    for name in ("entrypoints", "routers", "services", "middlewares", "providers", "admin", "access_log", "tracing"):
        assert getattr(again, name) == getattr(original, name), name
    assert (again.workers, again.shutdown_timeout) == (original.workers, original.shutdown_timeout)
    assert again.to_dict(redact=False) == original.to_dict(redact=False)


def test_from_dict_diagnostics_have_the_dict_prefix() -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_dict({"entrypoints": {"web": {"address": "nope"}}, "wrkers": 2})
    assert [str(i) for i in info.value.issues] == [
        '<dict>: error: wrkers: unknown key "wrkers" (did you mean "workers"?)',
        '<dict>: error: entrypoints.web.address: invalid address "nope"; expected "host:port"',
        "<dict>: warning: entrypoints.web: no router uses this entrypoint; every request on it gets 404\n"
        "    help: attach a router",
    ]


def test_models_are_frozen() -> None:
    config = load("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.entrypoints["web"].port = 1  # type: ignore[misc]
    assert LoadBalancerConfig().passive == PassiveConfig()


def test_summary_and_locations() -> None:
    config = load('middlewares "a" { type = "cors" }\n')
    assert config.summary() == "1 entrypoint, 1 router, 1 service, 1 middleware"
    assert config.locations["routers.r.service"] == ("g.hcl", 3, 43)
    assert config.path is None and config.files == ("g.hcl",)


@given(st.floats(min_value=0, max_value=10**7, allow_nan=False).map(lambda x: round(x, 3)))
@settings(max_examples=60, deadline=None)
def test_format_duration_reads_back(seconds: float) -> None:
    text = format_duration(seconds)
    config = GatewayConfig.from_hcl(f'shutdown_timeout = "{text}"\n')
    assert abs(config.shutdown_timeout - seconds) < 1e-6, (seconds, text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (1.5, "1.5s"), (30, "30s"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_provider_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kubeconfig").write_text("")  # the kubernetes provider needs a connection source (SPEC §12.5)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    from a3s_gateway.config.model import (
        DiscoveryProviderConfig,
        DnsProviderConfig,
        FileProviderConfig,
        KubernetesProviderConfig,
    )

    text = f"""
services "d" {{}}
providers {{
  file {{ directory = "{tmp_path}" }}
  discovery {{ seeds {{ url = "http://10.0.0.5:8000" }} }}
  dns {{ service = "d"; name = "d.example.com" }}
  kubernetes {{}}
}}
"""
    providers = load(text).providers
    assert providers.file == FileProviderConfig(watch=True, directory=str(tmp_path))
    assert providers.discovery == DiscoveryProviderConfig(("http://10.0.0.5:8000",), 30.0, 5.0)
    assert providers.dns == (DnsProviderConfig("d", "d.example.com", "A", 80, "http", 30.0, True),)
    assert providers.kubernetes == KubernetesProviderConfig("", "", "a3s-gateway", False, "")


def test_maps_may_be_written_as_blocks() -> None:
    block = load('tracing {\n  otlp_headers { Authorization = "Bearer t" }\n}\n').tracing
    attr = load('tracing { otlp_headers = { Authorization = "Bearer t" } }\n').tracing
    assert block == attr and dict(block.otlp_headers) == {"Authorization": "Bearer t"}


def test_reprs_hide_secrets() -> None:
    config = load(SECRETS)
    shown = repr(config.middlewares) + repr(config.tracing) + repr(config.services["x"])
    for secret in ("hmac-secret", "key-1", "pw", "pa55", "Bearer t", "box-token", "qUqP5"):
        assert secret not in shown, secret
