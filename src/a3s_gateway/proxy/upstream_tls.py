"""Client TLS to https:// backends (SPEC §10.5): one context per (transport settings, ALPN), cached."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.model import TransportConfig

_contexts: dict[tuple[bool, str, tuple[str, ...]], ssl.SSLContext] = {}


def client_context(cfg: TransportConfig, alpn: list[str]) -> ssl.SSLContext:
    """Verification against the system trust store or ``tls_ca_file`` (hostname = ``tls_server_name`` or the URL
    host, checked by the caller's ``server_hostname``), unless ``tls_insecure_skip_verify``."""
    key = (cfg.tls_insecure_skip_verify, cfg.tls_ca_file, tuple(alpn))
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.tls_insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(alpn)
        _contexts[key] = ctx
    return ctx
