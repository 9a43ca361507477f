"""Integration fixtures: every async test runs under uvloop and under the stdlib asyncio loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from a3s_gateway import Gateway, GatewayConfig

# Suites with nothing of their own to check against the pure twins of the Cython modules (parser, header filter,
# body framing, shared segment): the control plane (ACME, discovery providers, rollouts, the CLI, the examples) and
# the HTTP/2 server's frame-level suites (their subject, the HTTP/2 layer, has no twin; the HTTP/1 upstream side they
# also drive is what the HTTP/1 suites check in both passes). They drive the data plane like every other suite, so
# `make test` runs them once, on the compiled build; its second pass over the pure twins (`-m "not single_pass"`)
# leaves them out. The twins themselves are unit-tested in both builds (tests/unit/test_mypyc_twins.py and the
# differential parser tests).
SINGLE_PASS = frozenset({
    "test_acme_e2e", "test_acme_dns01", "test_acme_tls_alpn", "test_acme_errors", "test_dns_provider",
    "test_discovery_provider", "test_kubernetes_provider", "test_kube_translate_e2e", "test_rollout_e2e", "test_cli",
    "test_examples", "test_readme_example", "test_h2_conformance", "test_http2_abuse", "test_faults_h2",
    "test_workers",  # its twin, the shared segment, is unit-tested in both builds (tests/unit/test_segment.py)
})


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in SINGLE_PASS:
            item.add_marker(pytest.mark.single_pass)


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


@pytest.fixture
async def start_gateway() -> AsyncIterator[Callable[[str], Awaitable[Gateway]]]:
    """``await start_gateway(hcl_text)`` -> a running in-process Gateway; shut down after the test.

    The admin listener is off unless the test passes ``admin=`` (an address such as ``127.0.0.1:0``, or None for
    the configuration's own).
    """
    started: list[Gateway] = []

    async def start(hcl: str, admin: str | None = "off") -> Gateway:
        gw = Gateway(GatewayConfig.from_hcl(hcl, filename="test.hcl"), admin=admin)
        await gw.start()
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await gw.shutdown(0.5)
