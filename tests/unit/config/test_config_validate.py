"""Validation (SPEC §2.4-§2.7, §3, §6, §7.6, §8.6, §8.7, §15): every diagnostic, its location and its wording."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from certs import make_cert

from a3s_gateway.config import GatewayConfig, format_validate_report, validate_file
from a3s_gateway.config.references import format_rule_error
from a3s_gateway.config.schema.engine import suggest
from a3s_gateway.errors import ConfigError, Issue

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
QUICKSTART = (FIXTURES.parents[1] / "examples" / "readme-quickstart.hcl").read_text()
FULL = (FIXTURES / "readme_full.hcl").read_text()

# a backend and a router, so that snippets below only show what they test
BASE = """
entrypoints "web" { address = ":8080" }
routers "r" { rule = "PathPrefix(`/`)"; service = "s" }
services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }
"""


def diagnostics(text: str, env: dict[str, str] | None = None, filename: str = "g.hcl") -> list[str]:
    """Every diagnostic (errors and warnings) of loading ``text``, as printed."""
    try:
        config = GatewayConfig.from_hcl(text, filename, env=env or {})
    except ConfigError as exc:
        return [str(i) for i in exc.issues]
    return [str(i) for i in config.warnings]


def messages(text: str, env: dict[str, str] | None = None) -> list[str]:
    """``path: message`` of every error of ``BASE + text``."""
    try:
        GatewayConfig.from_hcl(BASE + text, "g.hcl", env=env or {})
    except ConfigError as exc:
        return [f"{i.path}: {i.message}" for i in exc.issues if i.severity == "error"]
    return []


# --- SPEC §15: the README configurations ----------------------------------------------------------------------------


def test_quick_start_is_valid_with_jwt_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gateway.hcl").write_text(QUICKSTART)
    monkeypatch.chdir(tmp_path)
    text, code = validate_file("gateway.hcl", env={"JWT_SECRET": "s3cret"})
    assert text == "✓ gateway.hcl: configuration is valid (1 entrypoint, 1 router, 1 service, 2 middlewares)\n"
    assert code == 0


def test_quick_start_without_jwt_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gateway.hcl").write_text(QUICKSTART)
    monkeypatch.chdir(tmp_path)
    text, code = validate_file("gateway.hcl", env={})
    assert text == (
        'gateway.hcl:33:42: error: middlewares.auth-jwt.value: environment variable "JWT_SECRET" is not set\n'
        "    help: export it, or write ${JWT_SECRET:-default}\n"
        "✗ gateway.hcl: 1 error, 0 warnings\n"
    )
    assert code == 1


FULL_EXPECTED = """\
gateway.hcl:2:1: warning: entrypoints.web: no router uses this entrypoint; every request on it gets 404
    help: attach a router, or add redirect { entrypoint = "websecure" }
gateway.hcl:26:12: error: services.llm-service.mirror.service: unknown service "llm-canary"
    help: define services "llm-canary" { ... } or remove the mirror block
gateway.hcl:40:3: error: services.llm-service.rollout: rollout requires revisions, but service "llm-service" \
defines none
    help: move load_balancer.servers into revisions = [{ name = "v1", traffic_percent = 100, servers = [...] }, \
{ name = "v2", traffic_percent = 0, servers = [...] }]
✗ gateway.hcl: 2 errors, 1 warning
"""


@pytest.fixture
def full_example_files(tmp_path: Path) -> dict[str, str]:
    """The certificate files and the conf.d directory the full example names, made real under tmp_path."""
    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = make_cert(certs)
    (tmp_path / "conf.d").mkdir()
    return {
        "/etc/certs/cert.pem": str(cert),
        "/etc/certs/key.pem": str(key),
        "/etc/gateway/conf.d/": str(tmp_path / "conf.d") + "/",
    }


def relocate(text: str, files: dict[str, str]) -> str:
    for old, new in files.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    return text


def test_full_example_gives_exactly_the_errors_of_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_example_files: dict[str, str]
) -> None:
    # only lines 5 and 60 change (file paths); no diagnostic is on them
    (tmp_path / "gateway.hcl").write_text(relocate(FULL, full_example_files))
    monkeypatch.chdir(tmp_path)
    text, code = validate_file("gateway.hcl", env={"JWT_SECRET": "s3cret"})
    assert text == FULL_EXPECTED
    assert code == 1


def test_full_example_verbatim_also_lists_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gateway.hcl").write_text(FULL)
    monkeypatch.chdir(tmp_path)
    text, code = validate_file("gateway.hcl", env={"JWT_SECRET": "s3cret"})
    lines = text.splitlines()
    extra = [
        'gateway.hcl:5:9: error: entrypoints.websecure.tls.cert_file: cannot read "/etc/certs/cert.pem": '
        "No such file or directory",
        'gateway.hcl:5:44: error: entrypoints.websecure.tls.key_file: cannot read "/etc/certs/key.pem": '
        "No such file or directory",
        'gateway.hcl:60:24: error: providers.file.directory: cannot read "/etc/gateway/conf.d/": '
        "No such file or directory",
    ]
    if Path("/etc/certs/cert.pem").exists() or Path("/etc/gateway/conf.d").exists():
        pytest.fail("this machine has /etc/certs or /etc/gateway/conf.d; the test expects them absent")
    for line in extra:
        assert line in lines
    assert lines[-1] == "✗ gateway.hcl: 5 errors, 1 warning"
    assert code == 1


CORRECTED_WEB = """entrypoints "web" {
  address = "0.0.0.0:80"
  redirect { entrypoint = "websecure" }      # HTTP → HTTPS (308)
}"""

CORRECTED_SERVICES = """services "llm-service" {
  load_balancer {
    strategy = "least-connections"
    health_check { path = "/health"; interval = "10s" }
  }

  # The current model (v1) takes all traffic; the new one (v2) starts at 0 %
  revisions = [
    { name = "v1", traffic_percent = 100, servers = [
        { url = "http://127.0.0.1:8001" },
        { url = "http://127.0.0.1:8002" }
    ] },
    { name = "v2", traffic_percent = 0, servers = [{ url = "http://127.0.0.1:8003" }] }
  ]

  # Mirror 5% of traffic to a new model for shadow testing
  mirror { service = "llm-canary"; percentage = 5 }

  # Scale to zero when idle — buffer requests during cold start
  scaling {
    min_replicas          = 0
    max_replicas          = 8
    container_concurrency = 10
    target_utilization    = 0.7
    buffer_enabled        = true
    executor              = "box"
  }

  # Shift traffic from v1 to v2 over 10 steps, 1 minute apart
  # Auto-rollback if error rate > 5% or p99 > 5s
  rollout {
    from                 = "v1"
    to                   = "v2"
    step_percent         = 10
    step_interval_secs   = 60
    error_rate_threshold = 0.05
    latency_threshold_ms = 5000
  }
}

services "llm-canary" {
  load_balancer { servers = [{ url = "http://127.0.0.1:8101" }] }
}"""


def corrected_full_example() -> str:
    text = FULL.replace('entrypoints "web"       { address = "0.0.0.0:80" }', CORRECTED_WEB)
    start = text.index('services "llm-service" {')
    end = text.index('middlewares "auth-jwt"')
    return text[:start] + CORRECTED_SERVICES + "\n\n" + text[end:]


def test_corrected_full_example_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_example_files: dict[str, str]
) -> None:
    (tmp_path / "gateway.hcl").write_text(relocate(corrected_full_example(), full_example_files))
    monkeypatch.chdir(tmp_path)
    text, code = validate_file("gateway.hcl", env={"JWT_SECRET": "s3cret"})
    assert text == "✓ gateway.hcl: configuration is valid (2 entrypoints, 1 router, 2 services, 3 middlewares)\n"
    assert code == 0
    config = GatewayConfig.from_file("gateway.hcl", env={"JWT_SECRET": "s3cret"})
    service = config.services["llm-service"]
    assert [(r.name, r.traffic_percent, r.strategy) for r in service.revisions] == [
        ("v1", 100, "least-connections"),
        ("v2", 0, "least-connections"),
    ]
    assert config.routers["llm-api"].effective_priority == 44
    assert config.entrypoints["web"].redirect is not None and config.entrypoints["web"].redirect.permanent
    assert config.entrypoints["websecure"].tls is not None
    assert config.entrypoints["websecure"].tls.alpn == ("h2", "http/1.1")


# --- the table of SPEC §2.6 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        # unknown / missing keys
        (
            'services "t" {\n  load_balancer {\n    servers = [{ url = "http://a:1" }]\n    helth_check { path = "/" '
            "}\n"
            "  }\n}\n",
            'services.t.load_balancer.helth_check: unknown key "helth_check" (did you mean "health_check"?)',
        ),
        (
            'middlewares "m" { type = "rate-limit"; rate = 1; brust = 2 }',
            'middlewares.m.brust: unknown key "brust" (did you mean "burst"?)',
        ),
        (
            'middlewares "m" { type = "jwt"; value = "x"; rate = 2 }',
            'middlewares.m.rate: unknown key "rate" (did you mean "type"?)',
        ),
        ('entrypoints "e" { protocol = "http" }', 'entrypoints.e: missing required key "address"'),
        ('middlewares "m" { type = "rate-limit" }', 'middlewares.m: rate-limit requires key "rate"'),
        ('middlewares "m" { rate = 1 }', 'middlewares.m: missing required key "type"'),
        ('entrypoint "e" { address = ":1" }\nfoo = 1', 'foo: unknown key "foo"'),
        # types, enums, ranges, durations
        (
            'entrypoints "e" { address = ":1"; max_headers = "ten" }',
            'entrypoints.e.max_headers: expected integer, got string "ten"',
        ),
        (
            'entrypoints "e" { address = ":1"; max_headers = 1.5 }',
            "entrypoints.e.max_headers: expected integer, got number 1.5",
        ),
        ('entrypoints "e" { address = ":1"; http2 = "yes" }', 'entrypoints.e.http2: expected bool, got string "yes"'),
        (
            'middlewares "m" { type = "rate-limit"; rate = "fast" }',
            'middlewares.m.rate: expected number, got string "fast"',
        ),
        (
            'services "t" { load_balancer { strategy = "fastest"; servers = [{ url = "http://a:1" }] } }',
            'services.t.load_balancer.strategy: invalid value "fastest"; expected one of: round-robin, weighted, '
            "least-connections, random, p2c, inference",
        ),
        (
            'middlewares "m" { type = "jwtt"; value = "x" }',
            'middlewares.m.type: invalid value "jwtt"; expected one of: jwt, '
            "api-key, basic-auth, forward-auth, rate-limit, rate-limit-redis, token-limit, cors, headers, "
            "strip-prefix, body-limit, retry, "
            "circuit-breaker, ip-allow, compress, tcp-filter, ws-mux",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a:1" }] }\n mirror { service = "s"; '
            "percentage = 150 }\n}",
            "services.t.mirror.percentage: must be between 0 and 100, got 150",
        ),
        (
            'entrypoints "e" { address = ":1"; idle_timeout = "10 sec" }',
            'entrypoints.e.idle_timeout: invalid duration "10 sec"; use e.g. "250ms", "10s", "1.5s", "5m", "1h"',
        ),
        (
            'entrypoints "e" { address = ":1"; idle_timeout = "1d" }',
            'entrypoints.e.idle_timeout: invalid duration "1d"; use e.g. "250ms", "10s", "1.5s", "5m", "1h"',
        ),
        (
            'entrypoints "e" { address = ":1"; idle_timeout = "-1s" }',
            'entrypoints.e.idle_timeout: invalid duration "-1s"; use e.g. "250ms", "10s", "1.5s", "5m", "1h"',
        ),
        (
            'entrypoints "e" { address = ":1"; idle_timeout = "" }',
            'entrypoints.e.idle_timeout: invalid duration ""; use e.g. "250ms", "10s", "1.5s", "5m", "1h"',
        ),
        (
            'entrypoints "e" { address = ":1"; idle_timeout = -1 }',
            'entrypoints.e.idle_timeout: invalid duration -1; use e.g. "250ms", "10s", "1.5s", "5m", "1h"',
        ),
        (
            'entrypoints "e" { address = ":1"; idle_timeout = 0 }',
            "entrypoints.e.idle_timeout: must be greater than 0s, got 0s",
        ),
        (
            'entrypoints "e" { address = ":1"; max_request_line_bytes = 100 }',
            "entrypoints.e.max_request_line_bytes: must be at least 256, got 100",
        ),
        (
            'entrypoints "e" { address = ":1"; max_concurrent_streams = 0 }',
            "entrypoints.e.max_concurrent_streams: must be between 1 and 10000, got 0",
        ),
        ("workers = 0", "workers: must be at least 1, got 0"),
        ('workers = "many"', 'workers: expected integer or "auto", got string "many"'),
        (
            'shutdown_timeout = "10 sec"',
            'shutdown_timeout: invalid duration "10 sec"; use e.g. "250ms", "10s", "1.5s", "5m", "1h"',
        ),
        # addresses
        (
            'entrypoints "e" { address = "0.0.0.0" }',
            'entrypoints.e.address: invalid address "0.0.0.0"; expected "host:port"',
        ),
        (
            'entrypoints "e" { address = "0.0.0.0:70000" }',
            'entrypoints.e.address: invalid address "0.0.0.0:70000": port must be between 0 and 65535',
        ),
        (
            'entrypoints "e" { address = "::1:80" }',
            'entrypoints.e.address: invalid address "::1:80"; expected "host:port"',
        ),
        (
            'entrypoints "e" { address = "0.0.0.0:8080" }',
            'entrypoints.e.address: address "0.0.0.0:8080" is already used by entrypoint "web" (defined at g.hcl:2:1)',
        ),
        (
            'admin { address = "127.0.0.1:8080" }',
            'entrypoints.web.address: address ":8080" is also the admin address "127.0.0.1:8080"',
        ),
        (
            'entrypoints "e" { address = ":1"; trusted_ips = ["10.0.0.0/33"] }',
            'entrypoints.e.trusted_ips[0]: invalid CIDR "10.0.0.0/33"',
        ),
        (
            'entrypoints "e" { address = ":1"; trusted_ips = ["10.0.0.300"] }',
            'entrypoints.e.trusted_ips[0]: invalid IP address "10.0.0.300"',
        ),
        # references
        ('routers "x" { rule = "Path(`/x`)"; service = "t" }', 'routers.x.service: unknown service "t"'),
        (
            'routers "x" { rule = "Path(`/x`)"; service = "s"; entrypoints = ["webb"] }',
            'routers.x.entrypoints[0]: unknown entrypoint "webb"',
        ),
        (
            'routers "x" { rule = "Path(`/x`)"; service = "s"; middlewares = ["nope"] }',
            'routers.x.middlewares[0]: unknown middleware "nope"',
        ),
        ('admin { middlewares = ["nope"] }', 'admin.middlewares[0]: unknown middleware "nope"'),
        (
            'entrypoints "e" { address = ":1"\n redirect { entrypoint = "web" } }',
            'entrypoints.e.redirect.entrypoint: redirect target "web" must be another http entrypoint with tls',
        ),
        (
            'entrypoints "e" { address = ":1"\n redirect { entrypoint = "nope" } }',
            'entrypoints.e.redirect.entrypoint: unknown entrypoint "nope"',
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a:1" }] }\n failover { service = "t" }\n}',
            "services.t.failover.service: a service cannot be its own failover target",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a:1" }] }\n mirror { service = "t" }\n}',
            "services.t.mirror.service: a service cannot be its own mirror target",
        ),
        # middleware parameters
        (
            'middlewares "m" { type = "ip-allow"; allowed_ips = ["10.0.0.0/33"] }',
            'middlewares.m.allowed_ips[0]: invalid CIDR "10.0.0.0/33"',
        ),
        ('middlewares "m" { type = "ip-allow"; allowed_ips = [] }', "middlewares.m.allowed_ips: must not be empty"),
        (
            'middlewares "m" { type = "jwt" }',
            'middlewares.m: jwt requires exactly one of "value", "public_key_file", "jwks_url"',
        ),
        (
            'middlewares "m" { type = "jwt"; value = "a"; jwks_url = "https://x/k" }',
            'middlewares.m: jwt requires exactly one of "value", "public_key_file", "jwks_url"',
        ),
        ('middlewares "m" { type = "jwt"; value = "" }', "middlewares.m.value: must not be empty"),
        (
            'middlewares "m" { type = "jwt"; value = "a"; algorithms = ["none"] }',
            'middlewares.m.algorithms[0]: algorithm "none" is never accepted',
        ),
        (
            'middlewares "m" { type = "jwt"; value = "a"; algorithms = ["RS256"] }',
            'middlewares.m.algorithms[0]: algorithm "RS256" needs a public key (public_key_file or jwks_url)',
        ),
        (
            'middlewares "m" { type = "jwt"; jwks_url = "ftp://x" }',
            'middlewares.m.jwks_url: invalid URL "ftp://x"; expected an http:// or https:// URL',
        ),
        ('middlewares "m" { type = "api-key"; keys = [] }', "middlewares.m.keys: must not be empty"),
        ('middlewares "m" { type = "api-key"; keys = [""] }', "middlewares.m.keys[0]: must not be empty"),
        (
            'middlewares "m" { type = "basic-auth"; username = "u" }',
            'middlewares.m: "username" and "password" must be set together',
        ),
        (
            'middlewares "m" { type = "basic-auth" }',
            'middlewares.m: basic-auth requires at least one user: set "username" and "password", "users" or '
            '"users_file"',
        ),
        (
            'middlewares "m" { type = "basic-auth"; users = ["bob"] }',
            'middlewares.m.users[0]: invalid htpasswd entry: expected "user:hash"',
        ),
        ('middlewares "m" { type = "forward-auth" }', 'middlewares.m: forward-auth requires key "forward_auth_url"'),
        (
            'middlewares "m" { type = "forward-auth"; forward_auth_url = "http://a"; forward_auth_method = "PUT" }',
            'middlewares.m.forward_auth_method: invalid value "PUT"; expected one of: GET, POST, HEAD',
        ),
        ('middlewares "m" { type = "rate-limit"; rate = 0 }', "middlewares.m.rate: must be greater than 0, got 0"),
        (
            'middlewares "m" { type = "rate-limit"; rate = 1; key = "ip" }',
            'middlewares.m.key: invalid key "ip"; expected "client_ip", "global" or "header:<Name>"',
        ),
        (
            'middlewares "m" { type = "rate-limit-redis"; rate = 1; redis_url = "http://x" }',
            "middlewares.m.redis_url: invalid URL; expected redis://[user:password@]host[:port][/db] or rediss://...",
        ),
        (
            'middlewares "m" { type = "rate-limit-redis"; rate = 1; redis_url = "redis://x"; max_keys = 5 }',
            'middlewares.m.max_keys: unknown key "max_keys"',
        ),
        (
            'middlewares "m" { type = "headers"\n request_headers = { "Bad Name" = "x" } }',
            'middlewares.m.request_headers.Bad Name: invalid header name "Bad Name"',
        ),
        (
            'middlewares "m" { type = "strip-prefix"; prefixes = ["api"] }',
            'middlewares.m.prefixes[0]: must start with "/", got "api"',
        ),
        (
            'middlewares "m" { type = "body-limit"; max_body_bytes = 0 }',
            "middlewares.m.max_body_bytes: must be greater than 0, got 0",
        ),
        (
            'middlewares "m" { type = "retry"; max_retries = 11 }',
            "middlewares.m.max_retries: must be between 1 and 10, got 11",
        ),
        (
            'middlewares "m" { type = "retry"; retry_on_status = [404] }',
            "middlewares.m.retry_on_status[0]: must be 429 or between 500 and 599, got 404",
        ),
        (
            'middlewares "m" { type = "retry"; retry_interval_ms = 100; max_interval_ms = 50 }',
            "middlewares.m.max_interval_ms: max_interval_ms (50) must be at least retry_interval_ms (100)",
        ),
        (
            'middlewares "m" { type = "circuit-breaker"; cooldown_secs = 0 }',
            "middlewares.m.cooldown_secs: must be greater than 0s, got 0s",
        ),
        (
            'middlewares "m" { type = "ip-allow"; allowed_ips = ["1.2.3.4"]; depth = 1; trusted_proxies = '
            '["10.0.0.1"] }',
            'middlewares.m.depth: "depth" and "trusted_proxies" are exclusive',
        ),
        (
            'middlewares "m" { type = "compress"; encodings = ["zstd"] }',
            'middlewares.m.encodings[0]: invalid value "zstd"; expected one of: br, gzip, deflate',
        ),
        (
            'middlewares "m" { type = "tcp-filter" }',
            'middlewares.m: tcp-filter requires "allowed_ips" or "max_connections"',
        ),
        (
            'middlewares "m" { type = "ws-mux"; max_channels = 2000 }',
            "middlewares.m.max_channels: must be between 1 and 1024, got 2000",
        ),
        (
            'middlewares "m" { type = "ws-mux"; upstream_path = "hub" }',
            'middlewares.m.upstream_path: must start with "/", got "hub"',
        ),
        # placement and protocols
        (
            'middlewares "w" { type = "ws-mux" }\nmiddlewares "c" { type = "cors" }\n'
            'routers "x" { rule = "Path(`/ws`)"; service = "s"; middlewares = ["w", "c"] }',
            "routers.x.middlewares[0]: ws-mux must be the last middleware of the router",
        ),
        (
            'middlewares "f" { type = "tcp-filter"; max_connections = 5 }\n'
            'routers "x" { rule = "Path(`/t`)"; service = "s"; middlewares = ["f"] }',
            "routers.x.middlewares[0]: tcp-filter can only be used by TCP routers",
        ),
        (
            'entrypoints "t" { address = ":9"; protocol = "tcp" }\n'
            'routers "x" { rule = "Path(`/t`)"; service = "s"; entrypoints = ["web", "t"] }',
            'routers.x.entrypoints: router "x" mixes entrypoints of protocols http and tcp',
        ),
        (
            'entrypoints "u" { address = ":9"; protocol = "udp"\n tls { cert_file = "a"; key_file = "b" } }',
            'entrypoints.u.tls: "tls" is not allowed on udp entrypoints',
        ),
        (
            'entrypoints "e" { address = ":1"; ai_inspect_limit = 1000 }',
            "entrypoints.e.ai_inspect_limit: must be between 1024 and 16777216, got 1000",
        ),
        (
            'entrypoints "e" { address = ":1"; ai_inspect_limit = 16777217 }',
            "entrypoints.e.ai_inspect_limit: must be between 1024 and 16777216, got 16777217",
        ),
        (
            'entrypoints "u" { address = ":9"; protocol = "tcp"; ai_inspect_limit = 4096 }',
            'entrypoints.u.ai_inspect_limit: "ai_inspect_limit" is not allowed on tcp entrypoints',
        ),
        (
            'entrypoints "u" { address = ":9"; protocol = "tcp"; http2 = false }',
            'entrypoints.u.http2: "http2" is not allowed on tcp entrypoints',
        ),
        # files
        (
            'middlewares "m" { type = "jwt"; public_key_file = "/nonexistent/key.pem" }',
            'middlewares.m.public_key_file: cannot read "/nonexistent/key.pem": No such file or directory',
        ),
        (
            'middlewares "m" { type = "basic-auth"; users_file = "/nonexistent/htpasswd" }',
            'middlewares.m.users_file: cannot read "/nonexistent/htpasswd": No such file or directory',
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "https://a" }] }\n transport { tls_ca_file = '
            '"/nonexistent/ca.pem" }\n}',
            'services.t.transport.tls_ca_file: cannot read "/nonexistent/ca.pem": No such file or directory',
        ),
        (
            'providers { file { directory = "/nonexistent/conf.d" } }',
            'providers.file.directory: cannot read "/nonexistent/conf.d": No such file or directory',
        ),
        # backends, scaling, revisions, rollout
        (
            'services "t" {}',
            'services.t: service "t" has no backends: set load_balancer.servers, revisions, or a scaling executor '
            'other than "static"',
        ),
        (
            'services "t" { scaling { executor = "static" } }',
            'services.t: service "t" has no backends: set load_balancer.servers, revisions, or a scaling executor '
            'other than "static"',
        ),
        (
            'services "t" { load_balancer { servers = [{ url = "ftp://a" }] } }',
            'services.t.load_balancer.servers[0].url: invalid URL "ftp://a"; expected "<scheme>://host[:port][/path]" '
            "with scheme "
            "http, https, h2c, tcp or udp",
        ),
        (
            'services "t" { load_balancer { servers = [{ url = "tcp://a:5" }] } }\n'
            'routers "x" { rule = "Path(`/t`)"; service = "t" }',
            'services.t.load_balancer.servers[0].url: scheme "tcp" is not allowed for a http service; use http, https '
            "or h2c",
        ),
        (
            'services "t" { load_balancer { servers = [{ url = "http://a", weight = 0 }] } }',
            "services.t.load_balancer.servers: the weights of servers must not all be 0",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n scaling {\n min_replicas = 5; '
            "max_replicas = 4 }\n}",
            "services.t.scaling.min_replicas: min_replicas (5) is greater than max_replicas (4)",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n scaling { target_utilization = 1.5 '
            "}\n}",
            "services.t.scaling.target_utilization: target_utilization must be in (0, 1], got 1.5",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n scaling { panic_window = "2m" }\n}',
            "services.t.scaling.panic_window: panic_window (2m) must not exceed stable_window (1m)",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n scaling { executor = "box"\n '
            'process { command = ["x"] } }\n}',
            'services.t.scaling.process: a process block requires executor = "process", but executor is "box"',
        ),
        (
            'services "t" { scaling { executor = "process" } }',
            'services.t.scaling: executor "process" requires a process block with "command"',
        ),
        (
            'services "t" {\n revisions = [{ name = "a", traffic_percent = 50, servers = [{ url = "http://a" }] },\n'
            ' { name = "b", traffic_percent = 40, servers = [{ url = "http://b" }] }]\n}',
            "services.t.revisions: traffic_percent of revisions must sum to 100, got 90",
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n'
            ' revisions = [{ name = "a", servers = [{ url = "http://b" }] }]\n}',
            "services.t.load_balancer.servers: load_balancer.servers must be empty when revisions are set",
        ),
        (
            'services "t" {\n revisions = [{ name = "a", servers = [{ url = "http://b" }] }, { name = "a", '
            "traffic_percent = 0 }]\n}",
            'services.t.revisions[1].name: duplicate revision "a" (also revisions[0])',
        ),
        (
            'services "t" {\n revisions = [{ name = "a b", servers = [{ url = "http://b" }] }]\n}',
            'services.t.revisions[0].name: invalid name "a b"; names match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$',
        ),
        (
            'services "t" {\n revisions = [{ name = "v1", servers = [{ url = "http://b" }] },\n'
            ' { name = "v2", traffic_percent = 0, servers = [{ url = "http://c" }] }]\n rollout { from = "v1"; to = '
            '"v3" }\n}',
            'services.t.rollout.to: rollout.to "v3" is not a revision of service "t"',
        ),
        (
            'services "t" {\n revisions = [{ name = "v1", servers = [{ url = "http://b" }] }]\n rollout { from = '
            '"v1"; to = "v1" }\n}',
            "services.t.rollout.to: rollout.to must differ from rollout.from",
        ),
        # duplicates and names
        (
            'entrypoints "e" {\n address = ":1"\n address = ":2"\n}',
            'entrypoints.e.address: duplicate key "address" (also set at g.hcl:6:2)',
        ),
        (
            'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n load_balancer {}\n}',
            'services.t.load_balancer: duplicate block "load_balancer" (also defined at g.hcl:6:2)',
        ),
        (
            'service "s" { load_balancer { servers = [{ url = "http://b" }] } }',
            'services.s: duplicate services "s" (also defined at g.hcl:4:1)',
        ),
        (
            'entrypoints "bad name" { address = ":1" }',
            'entrypoints.bad name: invalid name "bad name"; names match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$',
        ),
        ('entrypoints { address = ":1" }', "entrypoints: entrypoints block needs exactly one label (its name), got 0"),
        (
            'entrypoints "e" { address = ":1"\n tls "x" { cert_file = "a" } }',
            'entrypoints.e.tls: block "tls" takes no label',
        ),
        ('entrypoints "e" { address { } }', "entrypoints.e.address: expected string, got block"),
        (
            'entrypoints "e" { address = ":1"; redirect = "web" }',
            'entrypoints.e.redirect: expected block or object, got string "web"',
        ),
    ],
)
def test_each_check_of_the_diagnostics_table(snippet: str, expected: str) -> None:
    assert expected in messages(snippet)


def test_failover_cycle_is_reported_once() -> None:
    text = """
services "a" {
  load_balancer { servers = [{ url = "http://a" }] }
  failover { service = "b" }
}
services "b" {
  load_balancer { servers = [{ url = "http://b" }] }
  failover { service = "a" }
}
services "c" {
  load_balancer { servers = [{ url = "http://c" }] }
  failover { service = "a" }
}
"""
    assert messages(text) == ["services.a.failover.service: failover cycle: a → b → a"]


def test_rollout_without_revisions_suppresses_dependent_diagnostics() -> None:
    text = 'services "t" {\n load_balancer { servers = [{ url = "http://a" }] }\n rollout { from = "x"; to = "y" }\n}'
    assert messages(text) == ['services.t.rollout: rollout requires revisions, but service "t" defines none']


def test_all_diagnostics_are_collected_and_sorted() -> None:
    text = 'entrypoints "e" { address = "x" }\nworkers = 0\nrouters "q" { rule = "Path(`/`)"; service = "nope" }\n'
    found = diagnostics(BASE + text)
    errors = [line.split(": error")[0] for line in found if ": error" in line]
    assert errors == ["g.hcl:5:19", "g.hcl:6:1", "g.hcl:7:35"]


def test_locations_point_at_keys_blocks_and_list_items() -> None:
    text = (
        'services "t" {\n'
        "  load_balancer {\n"
        "    servers = [\n"
        '      { url = "http://a" },\n'
        '      { url = "http://b", weight = -1 }\n'
        "    ]\n"
        "  }\n"
        "}\n"
    )
    assert diagnostics(text, filename="x.hcl") == [
        "x.hcl:5:27: error: services.t.load_balancer.servers[1].weight: must be between 0 and 1000000, got -1"
    ]


def test_ai_inspect_limit_error_points_at_its_line() -> None:
    text = 'entrypoints "e" {\n  address = ":1"\n  ai_inspect_limit = "big"\n}\n'
    errors = [line for line in diagnostics(text, filename="x.hcl") if ": error:" in line]
    assert errors == ['x.hcl:3:3: error: entrypoints.e.ai_inspect_limit: expected integer, got string "big"']


def test_did_you_mean_for_references() -> None:
    text = (
        'services "llm-backend" { load_balancer { servers = [{ url = "http://a" }] } }\n'
        'routers "x" { rule = "Path(`/q`)"; service = "llm-backnd" }\n'
    )
    assert diagnostics(BASE + text)[0].endswith(
        'error: routers.x.service: unknown service "llm-backnd"\n    help: did you mean "llm-backend"?'
    )


@pytest.mark.parametrize(
    ("word", "candidates", "expected"),
    [
        ("helth_check", ["health_check", "path"], "health_check"),
        ("brust", ["burst", "rate", "key"], "burst"),
        ("abc", ["abd", "abe"], "abd"),  # ties: alphabetical
        ("zzzzzz", ["health_check"], None),  # farther than 3
        ("Hots", ["Host", "Path"], "Host"),  # transposition
    ],
)
def test_suggestions(word: str, candidates: list[str], expected: str | None) -> None:
    assert suggest(word, candidates) == expected


# --- rules ---------------------------------------------------------------------------------------------------------


class FakeRuleError(Exception):
    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.offset, self.hint = message, offset, hint


def test_rule_error_formatting() -> None:
    message, hint = format_rule_error("Hots(`a`)", 'unknown matcher "Hots"', 0, 'did you mean "Host"?')
    assert (
        message
        == 'invalid rule: unknown matcher "Hots" at offset 0 of the rule (did you mean "Host"?)\n    Hots(`a`)\n    ^'
    )
    assert hint is None
    message, hint = format_rule_error("Path(`/a`) && ", "expected a matcher", 14, "remove the trailing &&")
    assert message.splitlines()[1:] == ["    Path(`/a`) && ", "                  ^"]
    assert hint == "remove the trailing &&"
    issue = Issue("g.hcl", 3, 9, "routers.r.rule", "error", message, hint)
    assert str(issue).splitlines()[-1] == "    help: remove the trailing &&"


def test_rule_errors_come_from_the_rule_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    def check_rule(text: str, protocol: str) -> None:
        if "Hots" in text:
            raise FakeRuleError('unknown matcher "Hots"', text.index("Hots"), 'did you mean "Host"?')

    fake = types.ModuleType("a3s_gateway.routing.rules")
    fake.check_rule = check_rule  # type: ignore[attr-defined]
    fake.RuleError = FakeRuleError  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "a3s_gateway.routing.rules", fake)
    import a3s_gateway.routing

    monkeypatch.setattr(a3s_gateway.routing, "rules", fake, raising=False)
    text = 'routers "x" {\n  rule = "Path(`/`) && Hots(`a`)"\n  service = "s"\n}\n'
    assert diagnostics(BASE + text)[0] == (
        'g.hcl:6:3: error: routers.x.rule: invalid rule: unknown matcher "Hots" at offset 13 of the rule '
        '(did you mean "Host"?)\n    Path(`/`) && Hots(`a`)\n                 ^'
    )


@pytest.mark.parametrize(
    "rule",
    ["Hots(`a`)", "Path(`/a`", "HostSNI(`*`)", "Path()"],
)
def test_real_rule_engine_rejects_bad_rules(rule: str) -> None:
    pytest.importorskip("a3s_gateway.routing.rules")
    text = f'routers "x" {{\n  rule = "{rule}"\n  service = "s"\n  entrypoints = ["web"]\n}}\n'
    found = diagnostics(BASE + text)
    assert found and found[0].startswith("g.hcl:6:3: error: routers.x.rule: invalid rule: ")
    assert " of the rule" in found[0] and found[0].split("\n")[1] == f"    {rule}"


# --- protocols ---------------------------------------------------------------------------------------------------


def test_router_protocols() -> None:
    text = """
entrypoints "tcp" { address = ":9000"; protocol = "tcp" }
entrypoints "udp" { address = ":9001"; protocol = "udp" }
services "t" { load_balancer { servers = [{ url = "tcp://10.0.0.1:5432" }] } }
services "u" { load_balancer { servers = [{ url = "udp://10.0.0.1:53" }] } }
routers "sni" { rule = "HostSNI(`db.example.com`)"; service = "t" }
routers "dns" { service = "u"; entrypoints = ["udp"] }
"""
    config = GatewayConfig.from_hcl(BASE + text)
    assert {n: r.protocol for n, r in config.routers.items()} == {"r": "http", "sni": "tcp", "dns": "udp"}
    assert config.services["t"].protocol == "tcp"
    assert config.routers["dns"].rule is None and config.routers["dns"].effective_priority == 0


def test_udp_entrypoint_takes_one_router_and_no_middlewares() -> None:
    text = """
entrypoints "udp" { address = ":9001"; protocol = "udp" }
services "u" { load_balancer { servers = [{ url = "udp://10.0.0.1:53" }] } }
middlewares "f" { type = "tcp-filter"; max_connections = 1 }
routers "a" { service = "u"; entrypoints = ["udp"] }
routers "b" { service = "u"; entrypoints = ["udp"]; middlewares = ["f"] }
routers "c" { rule = "Path(`/`)"; service = "u"; entrypoints = ["udp"] }
"""
    found = messages(text)
    assert 'routers.b.entrypoints: udp entrypoint "udp" accepts exactly one router; router "a" already uses it' in found
    assert "routers.b.middlewares: udp routers take no middlewares" in found
    assert "routers.c.rule: udp routers take no rule, or HostSNI(`*`)" in found


def test_tcp_router_accepts_only_tcp_filter() -> None:
    text = """
entrypoints "tcp" { address = ":9000"; protocol = "tcp" }
services "t" { load_balancer { servers = [{ url = "tcp://10.0.0.1:5432" }] } }
middlewares "f" { type = "tcp-filter"; allowed_ips = ["10.0.0.0/8"] }
middlewares "rl" { type = "rate-limit"; rate = 5 }
routers "ok" { rule = "HostSNI(`*`)"; service = "t"; middlewares = ["f"] }
routers "bad" { rule = "HostSNI(`x`)"; service = "t"; middlewares = ["rl"] }
"""
    assert messages(text) == [
        "routers.bad.middlewares[0]: rate-limit cannot be used by TCP routers; only tcp-filter can"
    ]


def test_tcp_services_have_no_http_features() -> None:
    text = """
entrypoints "tcp" { address = ":9000"; protocol = "tcp" }
services "t" {
  load_balancer {
    servers = [{ url = "tcp://10.0.0.1:5432" }]
    sticky { cookie = "x" }
  }
  mirror { service = "s" }
}
routers "db" { rule = "HostSNI(`*`)"; service = "t" }
"""
    found = messages(text)
    assert "services.t.load_balancer.sticky: sticky is not available for tcp services" in found
    assert "services.t.mirror: mirror is not available for tcp services" in found


# --- legacy spellings and warnings (§1.3, §2.6) --------------------------------------------------------------------


def test_legacy_spellings_are_accepted_with_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kubeconfig").write_text("")  # the kubernetes provider needs a connection source (SPEC §12.5)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    text = """
shutdown_timeout_secs = 45
entrypoints "tcp" { address = ":9000"; protocol = "tcp" }
services "t" { load_balancer { servers = [{ url = "tcp://10.0.0.1:5432" }] } }
routers "legacy" { rule = "PathPrefix(`/`)"; service = "t"; entrypoints = ["tcp"] }
services "k" {
  load_balancer { servers = [{ url = "http://a" }] }
  scaling {
    executor            = "k8s"
    scale_to_zero_grace = "5m"
  }
}
providers { kubernetes { watch_interval_secs = 30 } }
"""
    config = GatewayConfig.from_hcl(BASE + text, "g.hcl")
    assert config.shutdown_timeout == 45.0
    assert config.routers["legacy"].rule == "HostSNI(`*`)"
    assert config.routers["legacy"].effective_priority == len("PathPrefix(`/`)")
    scaling = config.services["k"].scaling
    assert scaling is not None and scaling.executor == "kubernetes" and scaling.scale_down_delay_secs == 300.0
    assert [str(w) for w in config.warnings] == [
        'g.hcl:6:1: warning: shutdown_timeout_secs: "shutdown_timeout_secs" is deprecated; use shutdown_timeout = '
        '"45s"',
        'g.hcl:9:20: warning: routers.legacy.rule: rule "PathPrefix(`/`)" is deprecated for tcp routers; use '
        "HostSNI(`*`)",
        'g.hcl:13:5: warning: services.k.scaling.executor: executor "k8s" is deprecated; use "kubernetes"',
        'g.hcl:14:5: warning: services.k.scaling.scale_to_zero_grace: "scale_to_zero_grace" is deprecated; '
        "use scale_down_delay_secs = 300",
        'g.hcl:17:26: warning: providers.kubernetes.watch_interval_secs: "watch_interval_secs" is deprecated and '
        "ignored: the provider watches",
    ]


def test_legacy_and_new_spelling_together_is_an_error() -> None:
    assert messages('shutdown_timeout = "10s"\nshutdown_timeout_secs = 5') == [
        'shutdown_timeout_secs: "shutdown_timeout_secs" and "shutdown_timeout" are both set; keep "shutdown_timeout"'
    ]


@pytest.mark.parametrize(
    ("extra", "warned"),
    [
        ('entrypoints "other" { address = ":81" }', True),
        ('entrypoints "other" { address = ":81"; protocol = "tcp" }', False),
        (
            'entrypoints "other" { address = ":81" }\nrouters "o" { rule = "Path(`/o`)"; service = "s"; entrypoints = '
            '["other"] }',
            False,
        ),
    ],
)
def test_entrypoint_without_router_warning(extra: str, warned: bool) -> None:
    base = BASE.replace('service = "s" }', 'service = "s"; entrypoints = ["web"] }')
    found = diagnostics(base + extra)
    assert any("no router uses this entrypoint" in line for line in found) is warned
    assert not any(": error:" in line for line in found)


def test_strict_turns_warnings_into_errors() -> None:
    base = BASE.replace('service = "s" }', 'service = "s"; entrypoints = ["web"] }')
    config = GatewayConfig.from_hcl(base + 'entrypoints "other" { address = ":81" }\n', "gateway.hcl")
    text, code = format_validate_report("gateway.hcl", config)
    assert code == 0
    assert text.endswith("✓ gateway.hcl: configuration is valid (2 entrypoints, 1 router, 1 service, 0 middlewares)\n")
    assert text.startswith("gateway.hcl:5:1: warning: entrypoints.other: no router uses this entrypoint")
    text, code = format_validate_report("gateway.hcl", config, strict=True)
    assert code == 1
    assert text.startswith("gateway.hcl:5:1: error: entrypoints.other:")
    assert text.endswith("✗ gateway.hcl: 1 error, 0 warnings\n")


def test_report_counts_use_singular_and_plural() -> None:
    error = ConfigError(
        [
            Issue("g.hcl", 2, 1, "a", "error", "x"),
            Issue("g.hcl", 1, 1, "b", "error", "y"),
            Issue("g.hcl", 3, 1, "c", "warning", "z"),
            Issue("g.hcl", 4, 1, "d", "warning", "w"),
        ]
    )
    text, code = format_validate_report("g.hcl", error)
    assert text.splitlines() == [
        "g.hcl:1:1: error: b: y",
        "g.hcl:2:1: error: a: x",
        "g.hcl:3:1: warning: c: z",
        "g.hcl:4:1: warning: d: w",
        "✗ g.hcl: 2 errors, 2 warnings",
    ]
    assert code == 1
    empty = GatewayConfig.from_hcl("")
    assert format_validate_report("g.hcl", empty)[0] == (
        "✓ g.hcl: configuration is valid (0 entrypoints, 0 routers, 0 services, 0 middlewares)\n"
    )


# --- files and directory merging (§2.5) ----------------------------------------------------------------------------


def test_directory_files_are_merged_in_name_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "b.hcl").write_text('routers "b" { rule = "Path(`/b`)"; service = "s" }\n')
    (conf / "a.hcl").write_text('services "s" { load_balancer { servers = [{ url = "http://a" }] } }\n')
    (conf / ".hidden.hcl").write_text("this is not HCL")
    (conf / "notes.txt").write_text("nor this")
    (conf / "sub.hcl").mkdir()
    (tmp_path / "gateway.hcl").write_text(
        'entrypoints "web" { address = ":8080" }\nproviders { file { directory = "conf.d" } }\n'
    )
    monkeypatch.chdir(tmp_path)
    config = GatewayConfig.from_file("gateway.hcl")
    assert config.files == ("gateway.hcl", "conf.d/a.hcl", "conf.d/b.hcl")
    assert list(config.routers) == ["b"] and list(config.services) == ["s"]
    assert config.providers.file is not None and config.providers.file.directory == "conf.d"
    assert config.path == "gateway.hcl"


def test_duplicates_across_files_name_both_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "extra.hcl").write_text('\n\nrouter "llm" { rule = "Path(`/x`)"; service = "s" }\nworkers = 2\n')
    (tmp_path / "gateway.hcl").write_text(
        BASE.replace('routers "r"', 'routers "llm"') + 'providers { file { directory = "conf.d" } }\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_file("gateway.hcl")
    assert [str(i) for i in info.value.issues] == [
        'conf.d/extra.hcl:3:1: error: routers.llm: duplicate routers "llm" (also defined at gateway.hcl:3:1)',
        'conf.d/extra.hcl:4:1: error: workers: "workers" is allowed only in the main configuration file',
    ]


def test_relative_paths_resolve_against_the_file_that_names_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "etc"
    (sub / "certs").mkdir(parents=True)
    make_cert(sub / "certs")
    other, _ = make_cert(sub / "certs", "other-")
    (sub / "gateway.hcl").write_text(
        BASE
        + 'entrypoints "s" {\n  address = ":8443"\n  tls { cert_file = "certs/cert.pem"; key_file = "certs/key.pem" '
        "}\n}\n"
        'entrypoints "bad" {\n  address = ":9443"\n  tls { cert_file = "certs/other-cert.pem"; key_file = '
        '"certs/key.pem" }\n}\n'
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_file("etc/gateway.hcl")
    errors = [str(i) for i in info.value.issues if i.severity == "error"]
    assert errors == [
        'etc/gateway.hcl:11:9: error: entrypoints.bad.tls.cert_file: certificate "etc/certs/other-cert.pem" does not '
        'match key "etc/certs/key.pem"'
    ]
    assert other.exists()


def test_unreadable_main_file() -> None:
    with pytest.raises(ConfigError) as info:
        GatewayConfig.from_file("/nonexistent/gateway.hcl")
    assert (
        str(info.value)
        == '/nonexistent/gateway.hcl: error: cannot read "/nonexistent/gateway.hcl": No such file or directory'
    )


def test_readable_files_pass(tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("# users\nalice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n")
    cert, _ = make_cert(tmp_path)
    text = (
        f'middlewares "b" {{ type = "basic-auth"; users_file = "{htpasswd}" }}\n'
        f'middlewares "j" {{ type = "jwt"; public_key_file = "{cert}" }}\n'
    )
    config = GatewayConfig.from_hcl(BASE + text)
    assert config.middlewares["j"].params["algorithms"] == ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
    bad = tmp_path / "bad.htpasswd"
    bad.write_text("alice:plaintext\n")
    assert messages(f'middlewares "b" {{ type = "basic-auth"; users_file = "{bad}" }}') == [
        f'middlewares.b.users_file: line 1 of "{bad}": invalid htpasswd entry: unsupported hash; use bcrypt '
        "($2a$, $2b$, $2y$), {SHA} or $apr1$"
    ]
    assert shutil.which("openssl")


def test_health_check_timeout_must_not_exceed_interval() -> None:
    text = (
        'services "t" {\n load_balancer {\n servers = [{ url = "http://a" }]\n'
        ' health_check { path = "/h"; interval = "2s" } } }'
    )
    found = diagnostics(BASE + text)
    assert found == [
        "g.hcl:8:2: error: services.t.load_balancer.health_check.timeout: timeout (5s) must not exceed interval (2s)\n"
        "    help: the default timeout is 5s; set timeout to at most the interval"
    ]


def test_acme_http01_without_port_80_is_a_warning(tmp_path: Path) -> None:
    text = f"""
entrypoints "s" {{
  address = ":8443"
  tls {{
    acme = true; acme_email = "ops@example.com"; acme_storage_path = "{tmp_path}"
  }}
}}
"""
    found = diagnostics(BASE + text)
    assert found == [
        "g.hcl:8:3: warning: entrypoints.s.tls: acme http-01 challenges are answered on port 80, but no plain http "
        "entrypoint listens there\n"
        '    help: add entrypoints "web" { address = ":80" }, or use challenge = "tls-alpn-01"'
    ]
    assert diagnostics(BASE.replace(":8080", ":80") + text) == []


NUL_PATHS = {
    "tls cert and key": 'entrypoints "w" {\n  address = ":1"\n  tls {\n    cert_file = "/tmp/c\x00"\n'
                        '    key_file = "/tmp/k\x00"\n  }\n}\n',
    "ca file": 'services "s" {\n  load_balancer { servers = [{ url = "http://a" }] }\n'
               '  transport { tls_ca_file = "/tmp/ca\x00" }\n}\n',
    "users file": 'middlewares "m" {\n  type = "basic-auth"\n  users_file = "/tmp/u\x00"\n}\n',
    "jwt public key": 'middlewares "m" {\n  type = "jwt"\n  public_key_file = "/tmp/k\x00"\n}\n',
    "watched directory": 'providers {\n  file { directory = "/tmp/d\x00" }\n}\n',
}


@pytest.mark.parametrize("text", NUL_PATHS.values(), ids=NUL_PATHS.keys())
def test_a_file_path_with_a_nul_is_a_config_error(text: str) -> None:
    """Found by the config fuzzer (issue 25): open() raises ValueError, not OSError, for a NUL in a path; the
    loader let it out instead of reporting the file as unreadable."""
    with pytest.raises(ConfigError, match=r"cannot read .*embedded null"):
        GatewayConfig.from_hcl(text, filename="nul.hcl")
