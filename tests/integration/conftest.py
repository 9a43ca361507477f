"""Integration fixtures: every async test runs under uvloop and under the stdlib asyncio loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvloop

from a3s_gateway import Gateway, GatewayConfig


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
