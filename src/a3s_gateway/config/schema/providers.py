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
from a3s_gateway.config.schema.checks import check_http_url, check_nameserver, check_nonempty
from a3s_gateway.config.schema.engine import BOOL, SKIP, STR, Ctx, Decoded, K, Legacy, T, schema


def _build_file_provider(d: Decoded, ctx: Ctx) -> FileProviderConfig:
    v = d.values
    if v["watch"]:
        ctx.explicit.add("providers.file.watch")
    if v["directory"]:
        ctx.explicit.add("providers.file.directory")
    return FileProviderConfig(**v)


FILE_PROVIDER: Final = schema(
    "file", [K("watch", BOOL), K("directory", STR, path=True)], _build_file_provider, model=FileProviderConfig
)


def _build_seed(d: Decoded, ctx: Ctx) -> Any:
    return d.values["url"] if d.values["url"] is not None else SKIP


SEED: Final = schema("seed", [K("url", T.string(check_http_url), None, required=True, url=True)], _build_seed)


def _build_discovery(d: Decoded, ctx: Ctx) -> DiscoveryProviderConfig:
    if not d.values["seeds"] and ctx.ok(f"{d.path}.seeds"):
        ctx.error(d.pos, d.path, 'discovery requires at least one entry in "seeds"')
    ctx.explicit.add("providers.discovery")
    return DiscoveryProviderConfig(**d.values)


DISCOVERY: Final = schema(
    "discovery",
    [
        K("seeds", T.blocks(SEED)),
        K("poll_interval_secs", T.seconds(0, lo_open=True)),
        K("timeout_secs", T.seconds(0, lo_open=True)),
    ],
    _build_discovery,
    model=DiscoveryProviderConfig,
)


def _build_dns(d: Decoded, ctx: Ctx) -> Any:
    v = d.values
    ctx.explicit.add("providers.dns")
    if v["service"] is None or v["name"] is None:
        return SKIP
    return DnsProviderConfig(**v)


DNS: Final = schema(
    "dns",
    [
        K("service", STR, required=True),
        K("name", T.string(check_nonempty), required=True),
        K("type", T.enum("A", "AAAA", "SRV")),
        K("port", T.integer(1, 65535)),
        K("scheme", T.enum("http", "https", "h2c", "tcp", "udp")),
        K("refresh", T.duration(0, lo_open=True)),
        K("honor_ttl", BOOL),
        K("nameservers", T.list_of(T.string(check_nameserver))),
    ],
    _build_dns,
    model=DnsProviderConfig,
)


def _check_publish_service(value: Any) -> str | None:
    namespace, slash, name = value.partition("/")
    if value and (not slash or not namespace or not name or "/" in name):
        return f'invalid publish_service "{value}"; expected "namespace/name"'
    return None


def _build_k8s_provider(d: Decoded, ctx: Ctx) -> KubernetesProviderConfig:
    from a3s_gateway.http.kube import find_source

    ctx.explicit.add("providers.kubernetes")
    kubeconfig = d.values["kubeconfig"]
    if ctx.ok(f"{d.path}.kubeconfig") and find_source(kubeconfig) is None:
        # no network is contacted: only whether a connection source exists (SPEC §12.5 order)
        if kubeconfig:
            ctx.error(ctx.at(f"{d.path}.kubeconfig", d.pos), f"{d.path}.kubeconfig",
                      f'kubeconfig "{kubeconfig}" does not exist')
        else:
            # a warning, not an error: the file is valid and may be checked (validate, CI) outside the cluster it
            # is meant for; the running provider logs the missing connection and retries (backoff)
            ctx.warn(d.pos, f"{d.path}.kubeconfig",
                     "no Kubernetes connection here: not in a cluster (no KUBERNETES_SERVICE_HOST and "
                     "service-account token), and neither $KUBECONFIG nor ~/.kube/config exists; the provider "
                     "retries until one appears",
                     hint="set kubeconfig to a kubeconfig file, or run the gateway in the cluster")
    return KubernetesProviderConfig(**{**d.values, "publish_address": tuple(d.values["publish_address"])})


K8S_PROVIDER: Final = schema(
    "kubernetes",
    [
        K("namespace", STR),
        K("label_selector", STR),
        K("ingress_class", STR),
        K("ingress_route_crd", BOOL),
        K("kubeconfig", STR, path=True),
        K("publish_service", T.string(_check_publish_service)),
        K("publish_address", T.list_of(T.string(check_nonempty))),
    ],
    _build_k8s_provider,
    legacy={
        "watch_interval_secs": Legacy(
            None, T.seconds(0), lambda v: '"watch_interval_secs" is deprecated and ignored: the provider watches'
        )
    },
    model=KubernetesProviderConfig,
)


def _build_providers(d: Decoded, ctx: Ctx) -> ProvidersConfig:
    return ProvidersConfig(**d.values)


PROVIDERS: Final = schema(
    "providers",
    [
        K("file", T.block(FILE_PROVIDER)),
        K("discovery", T.block(DISCOVERY)),
        K("dns", T.blocks(DNS)),
        K("kubernetes", T.block(K8S_PROVIDER)),
    ],
    _build_providers,
    model=ProvidersConfig,
)
