"""Schemas of ``entrypoints "<name>"`` and their ``tls`` and ``redirect`` blocks (SPEC §3.1, §10.1)."""

from __future__ import annotations

import os
import ssl
from dataclasses import replace
from typing import Final

from a3s_gateway.config.model import CertificateConfig, EntrypointConfig, RedirectConfig, TlsConfig
from a3s_gateway.config.schema.checks import (
    _check_address,
    _check_http_url,
    _check_ip,
    _file_check,
    _read_problem,
    parse_address,
)
from a3s_gateway.config.schema.engine import (
    _K,
    BOOL,
    STR,
    _block,
    _blocks,
    _Ctx,
    _Decoded,
    _dur,
    _enum,
    _int,
    _is_null,
    _list,
    _q,
    _schema,
    _secs,
    _str,
)


def _build_cert(d: _Decoded, ctx: _Ctx) -> CertificateConfig:
    return CertificateConfig(d.values["cert_file"] or "", d.values["key_file"] or "")


CERT: Final = _schema(
    "certificate",
    [_K("cert_file", STR, required=True, path=True), _K("key_file", STR, required=True, path=True)],
    _build_cert,
)


def _build_tls(d: _Decoded, ctx: _Ctx) -> TlsConfig:
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
            _file_check(ctx, d, "acme_ca_file")
        _check_writable(ctx, d, "acme_storage_path")
    return TlsConfig(**v)  # alpn None: filled by the entrypoint, which knows http2 and the protocol


def _check_pair(ctx: _Ctx, where: str, cert: str, key: str) -> None:
    unreadable = False
    for name, file in (("cert_file", cert), ("key_file", key)):
        problem = _read_problem(file)
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
            message = f"certificate {_q(cert)} does not match key {_q(key)}"
        else:
            message = f"cannot load certificate {_q(cert)} with key {_q(key)}: {reason}"
        ctx.error(ctx.at(f"{where}.cert_file"), f"{where}.cert_file", message)


def _check_dns_credentials(ctx: _Ctx, d: _Decoded) -> None:
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


def _check_writable(ctx: _Ctx, d: _Decoded, key: str) -> None:
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
        ctx.error(ctx.at(path, d.pos), path, f"{_q(value)} is not writable")


TLS: Final = _schema(
    "tls",
    [
        _K("cert_file", STR, "", path=True),
        _K("key_file", STR, "", path=True),
        _K("certificates", _blocks(CERT), ()),
        _K("min_version", _enum("1.2", "1.3"), "1.2"),
        _K("alpn", _list(STR), None),
        _K("acme", BOOL, False),
        _K("acme_email", STR, ""),
        _K("acme_domains", _list(STR), ()),
        _K("acme_ca_url", _str(_check_http_url), "https://acme-v02.api.letsencrypt.org/directory"),
        _K("acme_staging", BOOL, False),
        _K("acme_ca_file", STR, "", path=True),
        _K("acme_storage_path", STR, "/etc/gateway/acme", path=True),
        _K("challenge", _enum("http-01", "tls-alpn-01", "dns-01"), "http-01"),
        _K("dns_provider", _enum("cloudflare", "route53"), None),
    ],
    _build_tls,
)


def _build_redirect(d: _Decoded, ctx: _Ctx) -> RedirectConfig:
    return RedirectConfig(d.values["entrypoint"] or "", d.values["permanent"])


REDIRECT: Final = _schema(
    "redirect", [_K("entrypoint", STR, required=True), _K("permanent", BOOL, True)], _build_redirect
)


#: entrypoint keys that apply to some protocols only
_PROTOCOL_KEYS: Final = {
    "http2": ("http",),
    "tcp_allowed_ips": ("tcp",),
    "udp_session_timeout_secs": ("udp",),
    "udp_max_sessions": ("udp",),
    "redirect": ("http",),
    "tls": ("http", "tcp"),
}


def _build_entrypoint(d: _Decoded, ctx: _Ctx) -> EntrypointConfig:
    v = dict(d.values)
    p = d.path
    name = p.split(".", 1)[1]
    proto = v["protocol"]
    address = v["address"] or ""
    host, port = parse_address(address) or ("", 0)
    for key, allowed in _PROTOCOL_KEYS.items():
        if d.has(key) and proto not in allowed and not _is_null(d.present[key]):
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


ENTRYPOINT: Final = _schema(
    "entrypoint",
    [
        _K("address", _str(_check_address), None, required=True),
        _K("protocol", _enum("http", "tcp", "udp"), "http"),
        _K("tls", _block(TLS), None),
        _K("http2", BOOL, True),
        _K("max_concurrent_streams", _int(1, 10000), 250),
        _K("header_read_timeout", _dur(0, lo_open=True), 30.0),
        _K("idle_timeout", _dur(0, lo_open=True), 90.0),
        _K("max_request_line_bytes", _int(256), 8192),
        _K("max_header_bytes", _int(1024), 65536),
        _K("max_headers", _int(1), 100),
        _K("trusted_ips", _list(_str(_check_ip)), ()),
        _K("redirect", _block(REDIRECT), None),
        _K("max_connections", _int(0), 0),
        _K("tcp_allowed_ips", _list(_str(_check_ip)), ()),
        _K("udp_session_timeout_secs", _secs(0, lo_open=True), 30.0),
        _K("udp_max_sessions", _int(1), 10000),
    ],
    _build_entrypoint,
)
