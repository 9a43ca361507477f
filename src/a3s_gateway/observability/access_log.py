"""The JSON access log (SPEC §11.3, §3.7): one orjson line per client request, written off the request path.

The request path calls ``AccessLog.record`` with a tuple of raw values (``Entry``): one append to a bounded deque,
no formatting, no I/O. A writer task wakes every ``flush_interval`` seconds, or as soon as ``BATCH`` entries wait,
formats and encodes the entries on the loop ``BATCH`` at a time, and hands each chunk to one dedicated thread that
writes it. One thread keeps the lines in order, and a slow disk stalls only that thread: the queue then fills and
further entries are dropped and counted (``dropped``), never waited for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeAlias

import orjson

from .process_log import rfc3339_ms

log = logging.getLogger("a3s_gateway.access_log")

CAPACITY: Final = 10_000  # queued entries (SPEC §14)
BATCH: Final = 1024  # entries per write; also the queue length that wakes the writer before flush_interval
WARN_INTERVAL: Final = 10.0  # seconds between two warnings about drops, failed writes or malformed entries
PIPE_BUF: Final = 4096  # POSIX: writes of at most this many bytes to a pipe are atomic
FILE_MODE: Final = 0o644  # passed to open(2), so the process umask still applies, as for any log file

#: One access-log entry as the request path builds it: raw values, formatted by the writer (see ``FIELDS``).
Entry: TypeAlias = tuple[
    float,  # start_wall: time.time() at request start
    str,  # client_ip
    bytes,  # method
    bytes | None,  # path
    bytes | None,  # query
    bytes | None,  # host
    int | None,  # status
    int,  # bytes_in
    int,  # bytes_out
    float,  # duration, seconds
    float | None,  # ttfb, seconds
    str | None,  # router
    str | None,  # service
    str | None,  # backend
    str | None,  # entrypoint
    bytes | None,  # user_agent
    bytes | str,  # request_id
    str | None,  # trace_id
    int,  # retries
    bool,  # cold_start
    int | None,  # grpc_status
    str | None,  # model (inspected requests, §16.1)
    int | None,  # input_tokens (§16.2)
    int | None,  # output_tokens
    str | None,  # usage_source: "reported" | "estimated"
]

#: The JSON member names (SPEC §11.3), in the order of the ``Entry`` tuple and of every written line.
FIELDS: Final[tuple[str, ...]] = (
    "timestamp",
    "client_ip",
    "method",
    "path",
    "query",
    "host",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "ttfb_ms",
    "router",
    "service",
    "backend",
    "entrypoint",
    "user_agent",
    "request_id",
    "trace_id",
    "retries",
    "cold_start",
    "grpc_status",
    "model",
    "input_tokens",
    "output_tokens",
    "usage_source",
)


def _text(value: bytes | str | None) -> str | None:
    # str is accepted too, so an entry built with "TCP" instead of b"TCP" still logs
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def format_entry(entry: Entry) -> dict[str, object]:
    """Turn a raw ``Entry`` into the JSON object of SPEC §11.3 (members in ``FIELDS`` order)."""
    (
        start_wall,
        client_ip,
        method,
        path,
        query,
        host,
        status,
        bytes_in,
        bytes_out,
        duration,
        ttfb,
        router,
        service,
        backend,
        entrypoint,
        user_agent,
        request_id,
        trace_id,
        retries,
        cold_start,
        grpc_status,
        model,
        input_tokens,
        output_tokens,
        usage_source,
    ) = entry
    return {
        "timestamp": rfc3339_ms(start_wall),
        "client_ip": client_ip,
        "method": _text(method),
        "path": _text(path),
        "query": _text(query),
        "host": _text(host),
        "status": status,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "duration_ms": round(duration * 1000.0, 3),
        "ttfb_ms": None if ttfb is None else round(ttfb * 1000.0, 3),
        "router": router,
        "service": service,
        "backend": backend,
        "entrypoint": entrypoint,
        "user_agent": _text(user_agent),
        "request_id": _text(request_id),
        "trace_id": trace_id,
        "retries": retries,
        "cold_start": bool(cold_start),
        "grpc_status": grpc_status,
        "model": model,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "usage_source": usage_source,
    }


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def _stdout_fd() -> int:
    try:
        return sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no sys.stdout, or one replaced by an object without a descriptor
        return 1


class _Throttle:
    """Let one log message through per ``interval`` seconds and count the events held back in between."""

    __slots__ = ("held", "interval", "next_at")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = float("-inf")
        self.held = 0

    def allow(self, now: float, count: int = 1) -> int | None:
        """Record ``count`` events; return how many to report (with those held back), or None to stay quiet."""
        self.held += count
        if now < self.next_at:
            return None
        self.next_at = now + self.interval
        held, self.held = self.held, 0
        return held


class AccessLog:
    """Bounded queue of access-log entries plus the writer that drains it to ``path`` (``"-"`` = stdout).

    ``record`` may be called before ``start``; entries wait in the queue. ``reopen`` (SIGUSR1) must be called from the
    loop thread, e.g. through ``loop.add_signal_handler``.
    """

    def __init__(self, path: str, flush_interval: float, *, capacity: int = CAPACITY) -> None:
        if flush_interval <= 0:
            raise ValueError(f"access log flush_interval must be > 0, got {flush_interval!r}")
        if capacity < 1:
            raise ValueError(f"access log capacity must be >= 1, got {capacity!r}")
        self.path = path
        self.flush_interval = flush_interval
        self.capacity = capacity
        #: entries dropped because the queue was full (read by the metrics collector)
        self.dropped = 0
        self._queue: deque[Entry] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._fd = -1  # touched only by the writer thread once started
        self._waiter: asyncio.Future[None] | None = None  # the writer's sleep, resolved early by _wake
        self._closing = False
        self._closed = False
        self._dropped_reported = 0
        self._drop_warning: asyncio.Handle | None = None  # pending warning, or the 10 s window after the last one
        self._write_errors = _Throttle(WARN_INTERVAL)
        self._malformed = _Throttle(WARN_INTERVAL)

    def record(self, entry: Entry) -> None:
        """Queue one entry; O(1) and never blocks. When the queue is full the entry is dropped and counted."""
        queue = self._queue
        if len(queue) >= self.capacity:
            self.dropped += 1
            if self._drop_warning is None and self._loop is not None and not self._closed:
                self._drop_warning = self._loop.call_soon(self._warn_dropped)
            return
        queue.append(entry)
        if len(queue) == BATCH:  # only on the crossing: one wake-up per batch, not per entry
            self._wake()

    def start(self) -> None:
        """Open the output (``OSError`` if it cannot be opened) and start the writer in the running loop."""
        if self._loop is not None:
            raise RuntimeError("access log already started")
        loop = asyncio.get_running_loop()
        self._fd = _stdout_fd() if self.path == "-" else _open_append(self.path)
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="a3s-access-log")
        self._task = loop.create_task(self._run(), name="a3s-access-log")

    def reopen(self) -> None:
        """Reopen the file at ``path`` before the next write (log rotation, SIGUSR1); no-op for stdout."""
        if self.path == "-" or self._executor is None or self._closing:
            return
        # queued behind the write in progress, if any: that one ends in the old file, every later one in the new
        self._executor.submit(self._reopen_file)

    async def close(self) -> None:
        """Write everything still queued, stop the writer and close the file (never stdout). Idempotent."""
        loop, executor = self._loop, self._executor
        if self._closed or loop is None or executor is None:
            return
        self._closed = self._closing = True
        self._wake()
        task = self._task
        if task is not None and not task.done():
            await task
        await self._drain()  # what arrived after the writer's last turn (or everything, if its task was cancelled)
        await loop.run_in_executor(executor, self._close_file)
        executor.shutdown(wait=False)
        if self._drop_warning is not None:
            self._drop_warning.cancel()
            self._drop_warning = None
        # last word at shutdown, even inside a 10 s window: otherwise these counts would never be logged
        self._log_dropped()
        if self._write_errors.held:
            log.error(
                "access log: %d entries lost to failed writes",
                self._write_errors.held,
                extra={"fields": {"path": self.path, "lost": self._write_errors.held}},
            )
        if self._malformed.held:
            log.error(
                "access log: %d malformed entries skipped",
                self._malformed.held,
                extra={"fields": {"skipped": self._malformed.held}},
            )

    # -- writer task (event loop) --------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            if len(self._queue) < BATCH:
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = waiter
                timer = loop.call_later(self.flush_interval, self._wake)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
            await self._drain()

    async def _drain(self) -> None:
        """Format, encode and write every queued entry, BATCH per write; never raises."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        assert executor is not None
        queue = self._queue
        while queue:
            lines: list[bytes] = []
            for _ in range(min(len(queue), BATCH)):
                entry = queue.popleft()
                try:
                    lines.append(orjson.dumps(format_entry(entry), option=orjson.OPT_APPEND_NEWLINE))
                except Exception as exc:  # a malformed tuple from a caller must cost one line, not the log
                    self._entry_failed(exc, entry, loop.time())
            if not lines:
                continue
            try:
                await loop.run_in_executor(executor, self._write, b"".join(lines))
            except Exception as exc:  # OSError mostly (disk full, EIO); the writer goes on with the next batch
                self._write_failed(exc, len(lines), loop.time())

    def _entry_failed(self, exc: Exception, entry: object, now: float) -> None:
        count = self._malformed.allow(now)
        if count is not None:
            log.error(
                "access log: %d malformed entries skipped (last: %r)",
                count,
                exc,
                extra={"fields": {"skipped": count, "entry": repr(entry)[:300]}},
            )

    def _write_failed(self, exc: Exception, lines: int, now: float) -> None:
        lost = self._write_errors.allow(now, lines)
        if lost is not None:
            log.error(
                "access log write failed, %d entries lost: %s",
                lost,
                exc,
                exc_info=None if isinstance(exc, OSError) else exc,
                extra={"fields": {"path": self.path, "lost": lost}},
            )

    def _log_dropped(self) -> bool:
        new = self.dropped - self._dropped_reported
        if not new:
            return False
        self._dropped_reported = self.dropped
        log.warning(
            "access log queue full: %d entries dropped",
            new,
            extra={"fields": {"dropped": new, "dropped_total": self.dropped, "capacity": self.capacity}},
        )
        return True

    def _warn_dropped(self) -> None:
        """Log the drops since the last warning, then keep quiet for WARN_INTERVAL and report what came meanwhile."""
        if self._log_dropped() and self._loop is not None and not self._closed:
            self._drop_warning = self._loop.call_later(WARN_INTERVAL, self._warn_dropped)
        else:
            self._drop_warning = None

    # -- writer thread -------------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        fd = self._fd
        if self.path == "-" and len(data) > PIPE_BUF:
            # a pipe shared with other worker processes (SPEC §13.4) keeps writes of up to PIPE_BUF bytes whole:
            # write whole lines in pieces of at most that size, so no line is split by another process's write
            start = 0
            while start < len(data):
                end = data.rfind(b"\n", start, start + PIPE_BUF) + 1
                if end <= start:  # one line longer than PIPE_BUF: it cannot be atomic anyway
                    end = data.find(b"\n", start) + 1 or len(data)
                self._write_all(fd, data[start:end])
                start = end
            return
        self._write_all(fd, data)

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                # stdout can be a non-blocking pipe shared with another process: wait in this thread until it drains
                select.select([], [fd], [], 1.0)
                continue
            view = view[written:]

    def _reopen_file(self) -> None:
        try:
            fd = _open_append(self.path)
        except OSError as exc:
            log.error(
                "access log reopen failed, still writing to the previous file: %s",
                exc,
                extra={"fields": {"path": self.path}},
            )
            return
        old, self._fd = self._fd, fd
        self._close_fd(old)

    def _close_file(self) -> None:
        if self.path != "-":
            self._close_fd(self._fd)
            self._fd = -1

    def _close_fd(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as exc:  # e.g. EIO from a network file system: the lines may be lost, the log goes on
            log.error("access log close failed: %s", exc, extra={"fields": {"path": self.path}})
