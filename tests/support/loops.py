"""Run a test coroutine under the stdlib asyncio loop and under uvloop (``run`` fixture, for sync test functions).

The fixture is registered by tests/conftest.py; a test asks for it with ``def test_x(run: Run) -> None``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test coroutine in a fresh event loop of each kind."""

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
                r.run(coro)
        else:
            run_310(LOOPS[request.param](), coro)

    return runner


def run_310(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None]) -> None:
    """What ``asyncio.Runner`` does, for Python 3.10: run, then cancel what is left and close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(coro)
    finally:
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
