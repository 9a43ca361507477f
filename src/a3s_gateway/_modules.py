"""The one list of compiled modules: read by setup.py (which compiles them), by ``_compat`` (``version -v``, the
compiled/pure choice) and by the tests. No imports: setup.py executes this file before the package is installed."""

from __future__ import annotations

#: role -> (compiled module, pure twin): Cython modules have two names, the pure twin is chosen at run time.
CYTHON_MODULES: dict[str, tuple[str, str]] = {
    "http parser": ("a3s_gateway.http._parser_c", "a3s_gateway.http._parser_py"),
    "header filter": ("a3s_gateway.http._headers_c", "a3s_gateway.http._headers_py"),
    "body relay": ("a3s_gateway.http._framing_c", "a3s_gateway.http._framing_py"),
    "shared segment": ("a3s_gateway._segment_c", "a3s_gateway._segment_py"),
}

#: role -> (native module, the pure implementation used without it): a Cython wrapper of a C library found at build
#: time (setup.py skips it when the library is missing); its fallback is another implementation, not a twin.
NATIVE_MODULES: dict[str, tuple[str, str]] = {
    "http2 engine": ("a3s_gateway.proxy._nghttp2", "h2"),  # libnghttp2; without it proxy/http2.py runs on h2
}

#: role -> module compiled by mypyc in one group (the same .py runs interpreted in a pure build). The connection
#: protocols are plain classes (no asyncio.Protocol base) so that mypyc makes them native.
MYPYC_MODULES: dict[str, str] = {
    "ip addresses": "a3s_gateway.netaddr",
    "rule matchers": "a3s_gateway.routing.matchers",
    "router": "a3s_gateway.routing.router",
    "balancer": "a3s_gateway.service.balancer",
    "request counters": "a3s_gateway.observability.stats",
    "usage meter": "a3s_gateway.http.usage",
    "middleware chain": "a3s_gateway.middleware.chain",
    "cors": "a3s_gateway.middleware.cors",
    "headers middleware": "a3s_gateway.middleware.headers",
    "path rewrite": "a3s_gateway.middleware.rewrite",
    "body limit": "a3s_gateway.middleware.bodylimit",
    "ip allow": "a3s_gateway.middleware.ipallow",
    "circuit breaker": "a3s_gateway.middleware.breaker",
    "token buckets": "a3s_gateway.middleware.ratelimit",
    "upstream relay": "a3s_gateway.proxy.upstream",
    "request exchange": "a3s_gateway.proxy.exchange",
    "client connection": "a3s_gateway.proxy.http1",
}


def mypyc_paths(src: str = "src") -> list[str]:
    """The mypyc modules as source paths (what ``mypycify`` takes)."""
    return [f"{src}/{name.replace('.', '/')}.py" for name in MYPYC_MODULES.values()]
