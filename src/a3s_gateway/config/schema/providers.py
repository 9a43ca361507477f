"""Schemas of the ``providers`` block: file, discovery, dns, kubernetes (SPEC §3.5, §12)."""

from __future__ import annotations

from typing import Any, Final

from a3s_gateway.config.model import (
    DiscoveryProviderConfig,
    DnsProviderConfig,
    FileProviderConfig,
    KubernetesProviderConfig,
    ProvidersConfig,
)
from a3s_gateway.config.schema.checks import _check_http_url, _check_nonempty
from a3s_gateway.config.schema.engine import (
    _K,
    BOOL,
    SKIP,
    STR,
    _block,
    _blocks,
    _Ctx,
    _Decoded,
    _dur,
    _enum,
    _int,
    _Legacy,
    _schema,
    _secs,
    _str,
)


def _build_file_provider(d: _Decoded, ctx: _Ctx) -> FileProviderConfig:
    v = d.values
    if v["watch"]:
        ctx.explicit.add("providers.file.watch")
    if v["directory"]:
        ctx.explicit.add("providers.file.directory")
    return FileProviderConfig(**v)


FILE_PROVIDER: Final = _schema(
    "file", [_K("watch", BOOL, True), _K("directory", STR, "", path=True)], _build_file_provider
)


def _build_seed(d: _Decoded, ctx: _Ctx) -> Any:
    return d.values["url"] if d.values["url"] is not None else SKIP


SEED: Final = _schema("seed", [_K("url", _str(_check_http_url), None, required=True)], _build_seed)


def _build_discovery(d: _Decoded, ctx: _Ctx) -> DiscoveryProviderConfig:
    if not d.values["seeds"] and ctx.ok(f"{d.path}.seeds"):
        ctx.error(d.pos, d.path, 'discovery requires at least one entry in "seeds"')
    ctx.explicit.add("providers.discovery")
    return DiscoveryProviderConfig(**d.values)


DISCOVERY: Final = _schema(
    "discovery",
    [
        _K("seeds", _blocks(SEED), ()),
        _K("poll_interval_secs", _secs(0, lo_open=True), 30.0),
        _K("timeout_secs", _secs(0, lo_open=True), 5.0),
    ],
    _build_discovery,
)


def _build_dns(d: _Decoded, ctx: _Ctx) -> Any:
    v = d.values
    ctx.explicit.add("providers.dns")
    if v["service"] is None or v["name"] is None:
        return SKIP
    return DnsProviderConfig(**v)


DNS: Final = _schema(
    "dns",
    [
        _K("service", STR, None, required=True),
        _K("name", _str(_check_nonempty), None, required=True),
        _K("type", _enum("A", "AAAA", "SRV"), "A"),
        _K("port", _int(1, 65535), 80),
        _K("scheme", _enum("http", "https", "h2c", "tcp", "udp"), "http"),
        _K("refresh", _dur(0, lo_open=True), 30.0),
        _K("honor_ttl", BOOL, True),
    ],
    _build_dns,
)


def _build_k8s_provider(d: _Decoded, ctx: _Ctx) -> KubernetesProviderConfig:
    ctx.explicit.add("providers.kubernetes")
    return KubernetesProviderConfig(**d.values)


K8S_PROVIDER: Final = _schema(
    "kubernetes",
    [
        _K("namespace", STR, ""),
        _K("label_selector", STR, ""),
        _K("ingress_class", STR, "a3s-gateway"),
        _K("ingress_route_crd", BOOL, False),
        _K("kubeconfig", STR, "", path=True),
    ],
    _build_k8s_provider,
    legacy={
        "watch_interval_secs": _Legacy(
            None, _secs(0), lambda v: '"watch_interval_secs" is deprecated and ignored: the provider watches'
        )
    },
)


def _build_providers(d: _Decoded, ctx: _Ctx) -> ProvidersConfig:
    return ProvidersConfig(**d.values)


PROVIDERS: Final = _schema(
    "providers",
    [
        _K("file", _block(FILE_PROVIDER), None),
        _K("discovery", _block(DISCOVERY), None),
        _K("dns", _blocks(DNS), ()),
        _K("kubernetes", _block(K8S_PROVIDER), None),
    ],
    _build_providers,
)
