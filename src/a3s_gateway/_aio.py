"""asyncio helpers shared by the control-plane tasks (health checkers, exporters, watchers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

RECANCEL_PERIOD: Final = 0.2


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> list[BaseException]:
    """Cancel ``tasks`` and wait until every one has ended; returns the exceptions they ended with.

    A cancellation can be lost: on Python 3.11, ``asyncio.wait_for`` returns the inner result instead of raising
    ``CancelledError`` when the cancel arrives just as the inner awaitable completes, and a loop around such a call
    keeps running. Tasks still running after ``RECANCEL_PERIOD`` are cancelled again, so shutdown never hangs on one.
    """
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_PERIOD)
        for task in pending:
            task.cancel()
    return [exc for t in tasks if not t.cancelled() and (exc := t.exception()) is not None]
