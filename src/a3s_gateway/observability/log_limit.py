"""Rate-limited repeated log lines (SPEC §11.5): one line per key per interval, the next one counting the rest.

A per-request warning (a failed auth call, an upstream error, a rejected connection) repeats as often as the
traffic that causes it; one line per occurrence floods the log exactly when the operator needs it. Each
:class:`RateLimitedLog` lets through the first line of a key, drops the repeats for ``interval`` seconds while
counting them, and adds ``suppressed=<count>`` to the first line after the interval::

    limited = RateLimitedLog(logging.getLogger("a3s_gateway.proxy"), 10.0)
    limited.warning(("upstream", "svc"), "upstream connection failed",
                    fields={"service": "svc", "request_id": rid})

Keys are any hashable value the caller chooses: a source and a kind (``(service, "connect")``), never a per-request
value. Lines are written with the ``extra={"fields": ...}`` convention of :mod:`.process_log`. Not thread-safe: one
instance belongs to one event loop. The clock is injectable so tests need no sleep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Final

__all__ = ["INTERVAL", "RateLimitedLog"]

#: SPEC §11.5: at most one line per source and kind every 10 s
INTERVAL: Final = 10.0
#: keys remembered at most; beyond it, keys whose interval is over are forgotten (with the count they still held)
MAX_KEYS: Final = 4096


class _Window:
    """One key's state: when its next line may be written, and the repeats dropped since its last line."""

    __slots__ = ("dropped", "next_at")

    def __init__(self, next_at: float) -> None:
        self.next_at = next_at
        self.dropped = 0


class RateLimitedLog:
    """At most one line per key every ``interval`` seconds on ``logger``; the next line carries ``suppressed=N``."""

    __slots__ = ("_clock", "_state", "interval", "logger", "max_keys")

    def __init__(self, logger: logging.Logger, interval: float = INTERVAL, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS) -> None:
        if interval < 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._state: dict[Hashable, _Window] = {}

    def warning(self, key: Hashable, msg: str, *args: object, fields: Mapping[str, object] | None = None) -> bool:
        """Log ``msg % args`` at WARNING unless ``key`` was logged less than ``interval`` ago; whether it was."""
        return self.log(logging.WARNING, key, msg, *args, fields=fields)

    def error(self, key: Hashable, msg: str, *args: object, fields: Mapping[str, object] | None = None,
              exc_info: BaseException | None = None) -> bool:
        """As :meth:`warning`, at ERROR (with ``exc_info``'s traceback on the lines written)."""
        return self.log(logging.ERROR, key, msg, *args, fields=fields, exc_info=exc_info)

    def log(self, level: int, key: Hashable, msg: str, *args: object,
            fields: Mapping[str, object] | None = None, exc_info: BaseException | None = None) -> bool:
        """Log ``msg % args`` with ``fields`` at ``level``, or count it as suppressed; whether a line was written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        window = self._state.get(key)
        if window is None:
            if len(self._state) >= self.max_keys:
                self._forget(now)
            self._state[key] = _Window(now + self.interval)
            suppressed = 0
        elif now < window.next_at:
            window.dropped += 1
            return False
        else:
            suppressed, window.dropped = window.dropped, 0
            window.next_at = now + self.interval
        out: dict[str, object] = dict(fields) if fields else {}
        if suppressed:
            out["suppressed"] = suppressed
        self.logger.log(level, msg, *args, extra={"fields": out} if out else None, exc_info=exc_info)
        return True

    def suppressed(self, key: Hashable) -> int:
        """Repeats of ``key`` dropped since its last line (0 for an unknown key)."""
        window = self._state.get(key)
        return window.dropped if window is not None else 0

    def _forget(self, now: float) -> None:
        """Make room: drop keys whose interval is over (their next line would be written anyway)."""
        expired = [key for key, window in self._state.items() if window.next_at <= now]
        for key in expired:
            del self._state[key]
        if len(self._state) >= self.max_keys:  # all keys still within their interval: keep the log bounded anyway
            self._state.clear()
