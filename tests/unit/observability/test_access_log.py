"""JSON access log (SPEC §11.3, §3.7): field formatting, the background writer, drops, rotation, shutdown flush."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from a3s_gateway.observability.access_log import BATCH, FIELDS, AccessLog, Entry, format_entry

T0 = 1767607200.123  # 2026-01-05T10:00:00.123Z


def make_entry(
    *,
    start_wall: float = T0,
    client_ip: str = "10.0.0.1",
    method: bytes = b"GET",
    path: bytes | None = b"/v1/chat",
    query: bytes | None = b"a=1&b=2",
    host: bytes | None = b"api.example.com",
    status: int | None = 200,
    bytes_in: int = 12,
    bytes_out: int = 3456,
    duration: float = 0.0123456,
    ttfb: float | None = 0.0045674,
    router: str | None = "llm",
    service: str | None = "llm-backend",
    backend: str | None = "http://127.0.0.1:8001",
    entrypoint: str | None = "web",
    user_agent: bytes | None = b"curl/8.5.0",
    request_id: bytes | str = b"req-1",
    trace_id: str | None = "0af7651916cd43dd8448eb211c80319c",
    retries: int = 1,
    cold_start: bool = False,
    grpc_status: int | None = None,
    model: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    usage_source: str | None = None,
) -> Entry:
    return (
        start_wall, client_ip, method, path, query, host, status, bytes_in, bytes_out, duration, ttfb, router,
        service, backend, entrypoint, user_agent, request_id, trace_id, retries, cold_start, grpc_status, model,
        input_tokens, output_tokens, usage_source,
    )  # fmt: skip


def read_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``condition`` with generous patience: the machine may be busy, the test is about behaviour."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def log_records() -> Iterator[list[logging.LogRecord]]:
    """Records of the access-log logger, whatever another test did to the ``a3s_gateway`` logger's propagation."""
    logger = logging.getLogger("a3s_gateway.access_log")
    captured: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    handler = Collect(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield captured
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- formatting ---------------------------------------------------------------------------------------------------


def test_fields_are_the_spec_names_in_order() -> None:
    assert FIELDS == (
        "timestamp", "client_ip", "method", "path", "query", "host", "status", "bytes_in", "bytes_out",
        "duration_ms", "ttfb_ms", "router", "service", "backend", "entrypoint", "user_agent", "request_id",
        "trace_id", "retries", "cold_start", "grpc_status", "model", "input_tokens", "output_tokens", "usage_source",
    )  # fmt: skip
    assert tuple(format_entry(make_entry())) == FIELDS


def test_format_every_field() -> None:
    assert format_entry(make_entry(cold_start=True, grpc_status=14, model="llama-3-8b", input_tokens=12,
                                   output_tokens=34, usage_source="reported")) == {
        "timestamp": "2026-01-05T10:00:00.123Z",
        "client_ip": "10.0.0.1",
        "method": "GET",
        "path": "/v1/chat",
        "query": "a=1&b=2",
        "host": "api.example.com",
        "status": 200,
        "bytes_in": 12,
        "bytes_out": 3456,
        "duration_ms": 12.346,
        "ttfb_ms": 4.567,
        "router": "llm",
        "service": "llm-backend",
        "backend": "http://127.0.0.1:8001",
        "entrypoint": "web",
        "user_agent": "curl/8.5.0",
        "request_id": "req-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "retries": 1,
        "cold_start": True,
        "grpc_status": 14,
        "model": "llama-3-8b",
        "input_tokens": 12,
        "output_tokens": 34,
        "usage_source": "reported",
    }


def test_format_nulls_and_empty_names() -> None:
    formatted = format_entry(
        make_entry(
            method=b"TCP", path=None, query=None, host=None, status=None, ttfb=None, router="", service="",
            backend=None, entrypoint=None, user_agent=None, request_id="tcp-7", trace_id=None, grpc_status=None,
        )
    )  # fmt: skip
    assert formatted["method"] == "TCP"
    for name in ("path", "query", "host", "status", "ttfb_ms", "backend", "entrypoint", "user_agent", "trace_id",
                 "grpc_status", "model", "input_tokens", "output_tokens", "usage_source"):  # fmt: skip
        assert formatted[name] is None, name
    assert formatted["router"] == "" and formatted["service"] == ""
    assert formatted["request_id"] == "tcp-7"
    line = orjson.loads(orjson.dumps(formatted))
    assert line["path"] is None and line["router"] == "" and line["cold_start"] is False


def test_format_rounding_and_timestamps() -> None:
    assert format_entry(make_entry(duration=1.5, ttfb=0.0))["duration_ms"] == 1500.0
    assert format_entry(make_entry(duration=1.5, ttfb=0.0))["ttfb_ms"] == 0.0
    assert format_entry(make_entry(duration=0.0000004))["duration_ms"] == 0.0
    assert format_entry(make_entry(duration=2.0000016))["duration_ms"] == 2000.002
    assert format_entry(make_entry(start_wall=1767607200.0))["timestamp"] == "2026-01-05T10:00:00.000Z"
    # milliseconds round, and carry into the seconds
    assert format_entry(make_entry(start_wall=1767607200.9996))["timestamp"] == "2026-01-05T10:00:01.000Z"
    assert format_entry(make_entry(start_wall=1767607259.007))["timestamp"] == "2026-01-05T10:00:59.007Z"


def test_format_decodes_invalid_utf8_with_replacement() -> None:
    formatted = format_entry(make_entry(path=b"/caf\xc3\xa9/\xff", user_agent=b"\xfe", request_id=b"r\x80"))
    assert formatted["path"] == "/café/\ufffd"
    assert formatted["user_agent"] == "\ufffd"
    assert formatted["request_id"] == "r\ufffd"
    orjson.dumps(formatted)  # valid for the encoder


# -- writer -------------------------------------------------------------------------------------------------------


async def test_lines_written_after_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 0.05)
    alog.start()
    entries = [make_entry(retries=i, path=f"/p{i}".encode()) for i in range(3)]
    for entry in entries:
        alog.record(entry)
    await wait_until(lambda: len(read_lines(path)) == 3)
    assert read_lines(path) == [format_entry(e) for e in entries]
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 3
    alog.record(make_entry(retries=9))  # the writer keeps going after its first batch
    await wait_until(lambda: len(read_lines(path)) == 4)
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == [0, 1, 2, 9]
    assert alog.dropped == 0


async def test_early_write_at_batch_size(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 3600.0)
    alog.start()
    for i in range(BATCH - 1):
        alog.record(make_entry(retries=i))
    await asyncio.sleep(0.2)
    assert path.read_bytes() == b""  # neither the interval nor the batch size reached yet
    alog.record(make_entry(retries=BATCH - 1))
    await wait_until(lambda: len(path.read_bytes().splitlines()) == BATCH)
    assert [line["retries"] for line in read_lines(path)] == list(range(BATCH))
    await alog.close()


async def test_queue_full_drops_and_warns_once(tmp_path: Path, log_records: list[logging.LogRecord]) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 3600.0, capacity=10)
    alog.start()
    for i in range(25):
        alog.record(make_entry(retries=i))
    assert alog.dropped == 15
    await wait_until(lambda: any(r.levelno == logging.WARNING for r in log_records))
    for i in range(5):
        alog.record(make_entry(retries=100 + i))
    assert alog.dropped == 20
    await asyncio.sleep(0.1)
    warnings = [r for r in log_records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # rate-limited: the next one waits for the 10 s window
    assert "15" in warnings[0].getMessage()
    assert warnings[0].fields["dropped"] == 15  # type: ignore[attr-defined]
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == list(range(10))
    warnings = [r for r in log_records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "5" in warnings[1].getMessage()  # the remainder, reported at shutdown


async def test_slow_disk_blocks_neither_record_nor_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 0.01, capacity=50)
    entered, gate = threading.Event(), threading.Event()
    writer_threads: list[str] = []
    real_write = alog._write

    def slow_write(data: bytes) -> None:
        writer_threads.append(threading.current_thread().name)
        entered.set()
        gate.wait(30.0)  # the safety valve: if this ran on the loop, the test fails below instead of hanging
        real_write(data)

    alog._write = slow_write  # type: ignore[method-assign]
    alog.start()
    for i in range(10):
        alog.record(make_entry(retries=i))
    await wait_until(entered.is_set)
    for i in range(100):  # the writer is stuck: 50 fit in the queue, 50 are dropped
        alog.record(make_entry(retries=10 + i))
    await asyncio.sleep(0.05)  # the loop still turns while the disk is stuck
    assert not gate.is_set()
    assert alog.dropped == 50
    assert writer_threads and all(name.startswith("a3s-access-log") for name in writer_threads)
    assert threading.current_thread().name not in writer_threads
    gate.set()
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == list(range(60))


async def test_reopen_after_rename_writes_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    alog = AccessLog(str(path), 0.02)
    alog.start()
    alog.record(make_entry(retries=1))
    await wait_until(lambda: len(read_lines(path)) == 1)
    path.rename(rotated)
    alog.record(make_entry(retries=2))  # before reopen(): still the old (renamed) file
    await wait_until(lambda: len(read_lines(rotated)) == 2)
    assert not path.exists()
    alog.reopen()
    alog.record(make_entry(retries=3))
    await wait_until(lambda: len(read_lines(path)) == 1)
    await alog.close()
    assert [line["retries"] for line in read_lines(rotated)] == [1, 2]
    assert [line["retries"] for line in read_lines(path)] == [3]


async def test_reopen_failure_keeps_the_old_file(tmp_path: Path, log_records: list[logging.LogRecord]) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "access.log"
    alog = AccessLog(str(path), 0.02)
    alog.start()
    moved = tmp_path / "moved"
    directory.rename(moved)  # the path's directory is gone: reopening fails
    alog.reopen()
    alog.record(make_entry(retries=5))
    await wait_until(lambda: len(read_lines(moved / "access.log")) == 1)
    await alog.close()
    assert any("reopen failed" in r.getMessage() for r in log_records)


async def test_close_flushes_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 3600.0)
    alog.start()
    for i in range(5):
        alog.record(make_entry(retries=i))
    await asyncio.sleep(0.05)
    assert path.read_bytes() == b""
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == list(range(5))
    await alog.close()  # idempotent
    alog.reopen()  # and harmless after close


async def test_close_writes_more_than_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 3600.0)
    count = 3 * BATCH + 7
    for i in range(count):  # queued before start, written at close
        alog.record(make_entry(retries=i))
    alog.start()
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == list(range(count))


async def test_stdout_mode(capfd: pytest.CaptureFixture[str]) -> None:
    alog = AccessLog("-", 0.01)
    alog.start()
    alog.record(make_entry(retries=1))
    alog.record(make_entry(retries=2, path=None))
    alog.reopen()  # no-op for stdout
    await alog.close()
    out = capfd.readouterr().out
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert lines == [format_entry(make_entry(retries=1)), format_entry(make_entry(retries=2, path=None))]
    os.fstat(1)  # stdout was not closed
    print("still open")
    assert capfd.readouterr().out == "still open\n"


async def test_start_raises_when_the_file_cannot_be_opened(tmp_path: Path) -> None:
    alog = AccessLog(str(tmp_path / "missing" / "access.log"), 1.0)
    with pytest.raises(OSError):
        alog.start()
    await alog.close()  # nothing started, nothing to do


async def test_file_is_appended_and_created_0644(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b'{"old":true}\n')
    fresh = tmp_path / "fresh.log"
    umask = os.umask(0o022)
    try:
        first, second = AccessLog(str(path), 0.01), AccessLog(str(fresh), 0.01)
        first.start()
        second.start()
    finally:
        os.umask(umask)
    first.record(make_entry())
    await first.close()
    await second.close()
    assert path.read_bytes().splitlines()[0] == b'{"old":true}'
    assert len(read_lines(path)) == 2
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


async def test_write_errors_are_logged_rate_limited_and_the_writer_goes_on(
    tmp_path: Path, log_records: list[logging.LogRecord]
) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 0.01)
    real_write = alog._write
    calls: list[int] = []

    def failing_write(data: bytes) -> None:
        calls.append(len(data))
        if len(calls) <= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(data)

    alog._write = failing_write  # type: ignore[method-assign]
    alog.start()
    alog.record(make_entry(retries=1))
    await wait_until(lambda: len(calls) == 1)
    alog.record(make_entry(retries=2))
    alog.record(make_entry(retries=3))
    await wait_until(lambda: len(calls) == 2)
    alog.record(make_entry(retries=4))
    await wait_until(lambda: len(read_lines(path)) == 1)
    errors = [r for r in log_records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "No space left" in errors[0].getMessage()
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == [4]
    errors = [r for r in log_records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and errors[1].fields["lost"] == 2  # type: ignore[attr-defined]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
async def test_disk_full_never_raises(log_records: list[logging.LogRecord]) -> None:
    alog = AccessLog("/dev/full", 0.01)
    alog.start()
    alog.record(make_entry())
    await wait_until(lambda: any(r.levelno == logging.ERROR for r in log_records))
    alog.record(make_entry())
    await alog.close()


async def test_malformed_entry_costs_one_line(tmp_path: Path, log_records: list[logging.LogRecord]) -> None:
    path = tmp_path / "access.log"
    alog = AccessLog(str(path), 3600.0)
    alog.start()
    alog.record(make_entry(retries=1))
    alog.record(("not", "an", "entry"))  # type: ignore[arg-type]
    alog.record(make_entry(retries=2))
    await alog.close()
    assert [line["retries"] for line in read_lines(path)] == [1, 2]
    assert any("malformed" in r.getMessage() for r in log_records)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        AccessLog("-", 0)
    with pytest.raises(ValueError):
        AccessLog("-", 1.0, capacity=0)
