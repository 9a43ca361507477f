"""Schemas of ``entrypoints "<name>"`` and their ``tls`` and ``redirect`` blocks (SPEC §3.1, §10.1)."""

from __future__ import annotations

import importlib.util
import os
import ssl
from dataclasses import replace
from typing import Final

from a3s_gateway.config.model import CertificateConfig, EntrypointConfig, RedirectConfig, TlsConfig
from a3s_gateway.config.schema.checks import (
    check_address,
    check_http_url,
    check_ip,
    check_nameserver,
    file_check,
    parse_address,
    read_problem,
)
from a3s_gateway.config.schema.engine import BOOL, STR, Ctx, Decoded, K, T, is_null, quote, schema


def _build_cert(d: Decoded, ctx: Ctx) -> CertificateConfig:
    return CertificateConfig(d.values["cert_file"] or "", d.values["key_file"] or "")


CERT: Final = schema(
    "certificate",
    [K("cert_file", STR, required=True, path=True), K("key_file", STR, required=True, path=True)],
    _build_cert,
    model=CertificateConfig,
)


def _build_tls(d: Decoded, ctx: Ctx) -> TlsConfig:
    v = d.values
    p = d.path
    if d.has("alpn"):
        v["alpn"] = tuple(v["alpn"])
    else:
        v["alpn"] = None  # filled by the entrypoint (depends on http2 and protocol)
    if d.has("cert_file") != d.has("key_file"):
        missing = "key_file" if d.has("cert_file") else "cert_file"
        ctx.error(d.pos, p, f'"cert_file" and "key_file" must be set together; "{missing}" is missing')
    elif not d.has("cert_file") and not v["certificates"] and not v["acme"]:
        ctx.error(d.pos, p, 'tls requires "cert_file" and "key_file", "certificates", or acme = true')
    pairs = [(f"{p}", v["cert_file"], v["key_file"])] if d.has("cert_file") and d.has("key_file") else []
    pairs += [(f"{p}.certificates[{i}]", c.cert_file, c.key_file) for i, c in enumerate(v["certificates"])]
    for where, cert, key in pairs:
        if not cert or not key or not ctx.ok(f"{where}.cert_file", f"{where}.key_file"):
            continue
        _check_pair(ctx, where, cert, key)
    if v["acme"]:
        ctx.explicit.add("acme")
        if not v["acme_email"]:
            ctx.error(d.pos, p, 'acme requires "acme_email"')
        if v["acme_staging"] and d.has("acme_ca_url"):
            ctx.error(
                ctx.at(f"{p}.acme_staging"), f"{p}.acme_staging", '"acme_staging" and "acme_ca_url" are exclusive'
            )
        if v["challenge"] == "dns-01":
            _check_dns_credentials(ctx, d)
        elif any(dom.startswith("*.") for dom in v["acme_domains"]):
            ctx.error(ctx.at(f"{p}.challenge"), f"{p}.challenge", 'wildcard domains require challenge = "dns-01"')
        if v["acme_ca_file"]:
            file_check(ctx, d, "acme_ca_file")
        _check_writable(ctx, d, "acme_storage_path")
    return TlsConfig(**v)  # alpn None: filled by the entrypoint, which knows http2 and the protocol


def _check_pair(ctx: Ctx, where: str, cert: str, key: str) -> None:
    unreadable = False
    for name, file in (("cert_file", cert), ("key_file", key)):
        problem = read_problem(file)
        if problem:
            ctx.error(ctx.at(f"{where}.{name}"), f"{where}.{name}", problem)
            unreadable = True
    if unreadable:
        return
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            message = f"certificate {quote(cert)} does not match key {quote(key)}"
        else:
            message = f"cannot load certificate {quote(cert)} with key {quote(key)}: {reason}"
        ctx.error(ctx.at(f"{where}.cert_file"), f"{where}.cert_file", message)


def _check_dns_credentials(ctx: Ctx, d: Decoded) -> None:
    provider = d.values["dns_provider"]
    if provider is None:
        ctx.error(d.pos, d.path, 'challenge "dns-01" requires "dns_provider"')
        return
    env = ctx.env
    where = f"{d.path}.dns_provider"
    if provider == "cloudflare" and not (env.get("CF_DNS_API_TOKEN") or env.get("CLOUDFLARE_DNS_API_TOKEN")):
        ctx.error(ctx.at(where), where, "cloudflare credentials are missing", "export CF_DNS_API_TOKEN")
    if provider == "route53" and not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        ctx.error(
            ctx.at(where),
            where,
            "route53 credentials are missing",
            "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )
    if provider == "route53" and importlib.util.find_spec("botocore") is None:
        ctx.error(ctx.at(where), where, "route53 requests are signed with botocore, which is not installed",
                  'pip install "a3s-gateway[route53]"')


def _check_writable(ctx: Ctx, d: Decoded, key: str) -> None:
    value = d.values.get(key)
    path = f"{d.path}.{key}"
    if not value or not ctx.ok(path):
        return
    probe = os.path.abspath(value)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.access(probe, os.W_OK):
        ctx.error(ctx.at(path, d.pos), path, f"{quote(value)} is not writable")


TLS: Final = schema(
    "tls",
    [
        K("cert_file", STR, path=True),
        K("key_file", STR, path=True),
        K("certificates", T.blocks(CERT)),
        K("min_version", T.enum("1.2", "1.3")),
        K("alpn", T.list_of(STR), None),  # None: the entrypoint fills it from http2 and the protocol
        K("acme", BOOL),
        K("acme_email", STR),
        K("acme_domains", T.list_of(STR)),
        K("acme_ca_url", T.string(check_http_url), url=True),
        K("acme_staging", BOOL),
        K("acme_ca_file", STR, path=True),
        K("acme_storage_path", STR, path=True),
        K("challenge", T.enum("http-01", "tls-alpn-01", "dns-01")),
        K("dns_provider", T.enum("cloudflare", "route53")),
        K("acme_dns_resolvers", T.list_of(T.string(check_nameserver))),
    ],
    _build_tls,
    model=TlsConfig,
)


def _build_redirect(d: Decoded, ctx: Ctx) -> RedirectConfig:
    return RedirectConfig(d.values["entrypoint"] or "", d.values["permanent"])


REDIRECT: Final = schema(
    "redirect", [K("entrypoint", STR, required=True), K("permanent", BOOL)], _build_redirect, model=RedirectConfig
)


#: entrypoint keys that apply to some protocols only
PROTOCOL_KEYS: Final = {
    "http2": ("http",),
    "tcp_allowed_ips": ("tcp",),
    "udp_session_timeout_secs": ("udp",),
    "udp_max_sessions": ("udp",),
    "redirect": ("http",),
    "tls": ("http", "tcp"),
    "ai_inspect_limit": ("http",),
}


def _build_entrypoint(d: Decoded, ctx: Ctx) -> EntrypointConfig:
    v = dict(d.values)
    p = d.path
    name = p.split(".", 1)[1]
    proto = v["protocol"]
    address = v["address"] or ""
    host, port = parse_address(address) or ("", 0)
    for key, allowed in PROTOCOL_KEYS.items():
        if d.has(key) and proto not in allowed and not is_null(d.present[key]):
            where = f"{p}.{key}"
            ctx.error(ctx.at(where), where, f'"{key}" is not allowed on {proto} entrypoints')
            ctx.bad.add(where)
    if v["tls"] is not None and v["tls"].alpn is None:
        alpn: tuple[str, ...] = () if proto == "tcp" else (("h2", "http/1.1") if v["http2"] else ("http/1.1",))
        v["tls"] = replace(v["tls"], alpn=alpn)
    if v["tls"] is not None and proto != "udp":
        ctx.explicit.add("tls")
    if v["redirect"] is not None and proto == "http":
        ctx.explicit.add("redirect")
    if d.has("http2") and v["http2"] is True and proto == "http":
        ctx.explicit.add("http2")
    if proto in ("tcp", "udp"):
        ctx.explicit.add(f"{proto} entrypoint")
    if v["trusted_ips"]:
        ctx.explicit.add("trusted_ips")
    if v["max_connections"]:
        ctx.explicit.add("max_connections")
    if v["tcp_allowed_ips"]:
        ctx.explicit.add("tcp_allowed_ips")
    return EntrypointConfig(name=name, host=host, port=port, **{**v, "address": address})


ENTRYPOINT: Final = schema(
    "entrypoint",
    [
        K("address", T.string(check_address), required=True),
        K("protocol", T.enum("http", "tcp", "udp")),
        K("tls", T.block(TLS)),
        K("http2", BOOL),
        K("max_concurrent_streams", T.integer(1, 10000)),
        K("header_read_timeout", T.duration(0, lo_open=True)),
        K("idle_timeout", T.duration(0, lo_open=True)),
        K("max_request_line_bytes", T.integer(256)),
        K("max_header_bytes", T.integer(1024)),
        K("max_headers", T.integer(1)),
        K("trusted_ips", T.list_of(T.string(check_ip))),
        K("redirect", T.block(REDIRECT)),
        K("max_connections", T.integer(0)),
        K("ai_inspect_limit", T.integer(1024, 16777216)),
        K("tcp_allowed_ips", T.list_of(T.string(check_ip))),
        K("udp_session_timeout_secs", T.seconds(0, lo_open=True)),
        K("udp_max_sessions", T.integer(1)),
    ],
    _build_entrypoint,
    model=EntrypointConfig,
)
