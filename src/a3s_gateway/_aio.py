"""asyncio helpers shared by the control-plane tasks (health checkers, exporters, watchers), and ``timeout`` for
every Python the gateway supports (``asyncio.timeout`` from 3.11 on)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Final

RECANCEL_PERIOD: Final = 0.2


class CompatTimeout:
    """``asyncio.timeout`` for Python 3.10 (``timeout`` there; tested on every version): at the deadline the task
    is cancelled, and the cancellation leaves the ``async with`` block as ``TimeoutError`` (the builtin, as on 3.11).
    A cancellation from elsewhere stays a ``CancelledError``. Known limit (3.10 has no ``Task.uncancel``): when the
    deadline fires in the same loop iteration as the block's last await completes, the block ends normally and the
    task's next await sees the ``CancelledError``."""

    def __init__(self, when: float | None) -> None:
        self._when = when
        self._task: asyncio.Task[Any] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._expired = False

    def when(self) -> float | None:
        return self._when

    def expired(self) -> bool:
        return self._expired

    def reschedule(self, when: float | None) -> None:
        """A new deadline (loop time; None: none)."""
        self._when = when
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._task is None or when is None or self._expired:
            return
        loop = asyncio.get_running_loop()
        if when <= loop.time():
            self._expire()
        else:
            self._handle = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = None
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    async def __aenter__(self) -> CompatTimeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("timeout() must be used inside a task")
        self._task = task
        self.reschedule(self._when)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._task = None
        if self._expired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def compat_timeout(delay: float | None) -> CompatTimeout:
    """A deadline ``delay`` seconds from now (None: none) for an ``async with`` block."""
    return CompatTimeout(None if delay is None else asyncio.get_running_loop().time() + delay)


if sys.version_info >= (3, 11):
    from asyncio import timeout as timeout
else:
    timeout = compat_timeout


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
