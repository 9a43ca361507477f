"""``_aio.compat_timeout``: the ``asyncio.timeout`` stand-in the gateway uses on Python 3.10 (checked on every
Python, under both loops), and ``_aio.timeout`` itself."""

from __future__ import annotations

import asyncio
import sys

import pytest

from a3s_gateway import _aio
from loops import Run


def test_timeout_is_asyncio_timeout_from_311() -> None:
    if sys.version_info >= (3, 11):
        assert _aio.timeout is asyncio.timeout
    else:
        assert _aio.timeout is _aio.compat_timeout


def test_deadline_passes(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            async with _aio.compat_timeout(0.05) as t:
                await asyncio.sleep(5)
        assert t.expired()
        assert 0.04 <= loop.time() - start < 2.0
        await asyncio.sleep(0)  # the task is not left cancelled: it goes on normally

    run(main())


def test_block_ends_in_time(run: Run) -> None:
    async def main() -> None:
        async with _aio.compat_timeout(5) as t:
            await asyncio.sleep(0.01)
        assert not t.expired()
        await asyncio.sleep(0.02)  # the timer was cancelled with the block: nothing cancels us now

    run(main())


def test_no_deadline_and_past_deadline(run: Run) -> None:
    async def main() -> None:
        async with _aio.compat_timeout(None) as t:
            await asyncio.sleep(0.01)
        assert t.when() is None and not t.expired()
        with pytest.raises(TimeoutError):
            async with _aio.compat_timeout(-1):
                await asyncio.sleep(1)

    run(main())


def test_reschedule_extends_and_removes_the_deadline(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with _aio.compat_timeout(0.05) as t:
            t.reschedule(loop.time() + 5)
            await asyncio.sleep(0.1)
            t.reschedule(None)
            await asyncio.sleep(0.05)
        assert not t.expired()
        with pytest.raises(TimeoutError):
            async with _aio.compat_timeout(5) as t:
                t.reschedule(loop.time() + 0.02)
                await asyncio.sleep(5)

    run(main())


def test_cancellation_from_elsewhere_stays_cancelled_error(run: Run) -> None:
    async def main() -> None:
        async def body() -> None:
            async with _aio.compat_timeout(5):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(body())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
