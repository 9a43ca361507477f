"""Rate-limited repeated log lines (SPEC §11.5): one line per key per interval, the next one with suppressed=N."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from a3s_gateway.observability.log_limit import RateLimitedLog
from a3s_gateway.observability.process_log import TextFormatter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, Records]]:
    logger = logging.getLogger("a3s_gateway.test.log_limit")
    handler = Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


def fields(record: logging.LogRecord) -> dict[str, object]:
    return dict(getattr(record, "fields", None) or {})


def test_repeats_within_the_interval_give_one_line_then_the_count(captured: tuple[logging.Logger, Records]) -> None:
    logger, handler = captured
    clock = Clock()
    limited = RateLimitedLog(logger, 10.0, clock=clock)
    written = [limited.warning("k", "auth service unavailable", fields={"middleware": "fa", "request_id": f"r{i}"})
               for i in range(202)]
    assert written == [True] + [False] * 201
    assert len(handler.records) == 1 and fields(handler.records[0]) == {"middleware": "fa", "request_id": "r0"}
    assert limited.suppressed("k") == 201
    clock.now += 9.999
    assert not limited.warning("k", "auth service unavailable")
    clock.now += 0.001
    assert limited.warning("k", "auth service unavailable", fields={"request_id": "last"})
    [_, second] = handler.records
    assert second.levelno == logging.WARNING and second.getMessage() == "auth service unavailable"
    assert fields(second) == {"request_id": "last", "suppressed": 202}
    assert limited.suppressed("k") == 0
    clock.now += 10
    assert limited.warning("k", "auth service unavailable")
    assert "suppressed" not in fields(handler.records[-1])  # nothing was dropped since the last line


def test_keys_are_independent(captured: tuple[logging.Logger, Records]) -> None:
    logger, handler = captured
    limited = RateLimitedLog(logger, 10.0, clock=Clock())
    assert limited.warning(("svc-a", "connect"), "x")
    assert limited.warning(("svc-b", "connect"), "x")
    assert limited.warning(("svc-a", "timeout"), "x")
    assert not limited.warning(("svc-a", "connect"), "x")
    assert len(handler.records) == 3


def test_message_arguments_and_level(captured: tuple[logging.Logger, Records]) -> None:
    logger, handler = captured
    limited = RateLimitedLog(logger, 10.0, clock=Clock())
    limited.error("e", "entrypoint %s: %d connection(s) rejected", "web", 3)
    [record] = handler.records
    assert record.levelno == logging.ERROR and record.getMessage() == "entrypoint web: 3 connection(s) rejected"


def test_text_line_carries_suppressed_count(captured: tuple[logging.Logger, Records]) -> None:
    logger, _ = captured
    stream = io.StringIO()
    text = logging.StreamHandler(stream)
    text.setFormatter(TextFormatter())
    logger.addHandler(text)
    try:
        clock = Clock()
        limited = RateLimitedLog(logger, 10.0, clock=clock)
        for _ in range(5):
            limited.warning("k", "upstream connection failed", fields={"service": "s"})
        clock.now += 10
        limited.warning("k", "upstream connection failed", fields={"service": "s"})
    finally:
        logger.removeHandler(text)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(" upstream connection failed service=s")
    assert lines[1].endswith(" upstream connection failed service=s suppressed=4")


def test_disabled_level_writes_and_counts_nothing(captured: tuple[logging.Logger, Records]) -> None:
    logger, handler = captured
    logger.setLevel(logging.ERROR)
    limited = RateLimitedLog(logger, 10.0, clock=Clock())
    assert not limited.warning("k", "x")
    assert handler.records == [] and limited.suppressed("k") == 0


def test_zero_interval_logs_every_line(captured: tuple[logging.Logger, Records]) -> None:
    logger, handler = captured
    limited = RateLimitedLog(logger, 0.0, clock=Clock())
    for _ in range(3):
        assert limited.warning("k", "x")
    assert len(handler.records) == 3
    with pytest.raises(ValueError, match="interval"):
        RateLimitedLog(logger, -1.0)


def test_key_table_stays_bounded(captured: tuple[logging.Logger, Records]) -> None:
    logger, handler = captured
    clock = Clock()
    limited = RateLimitedLog(logger, 10.0, clock=clock, max_keys=4)
    for i in range(4):
        limited.warning(i, "x")
    clock.now += 10  # every window is over: they make room for new keys
    for i in range(4, 8):
        assert limited.warning(i, "x")
    for i in range(8, 100):  # all windows current: the table is reset rather than grown
        assert limited.warning(i, "x")
    assert len(limited._state) <= 4
    assert len(handler.records) == 100


def test_error_lines_keep_the_traceback_and_repeats_are_counted(caplog) -> None:  # type: ignore[no-untyped-def]
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("t.exc"), 10.0, clock=lambda: now[0])
    try:
        raise OSError(24, "Too many open files")
    except OSError as e:
        err = e
    with caplog.at_level(logging.ERROR, logger="t.exc"):
        for _ in range(5):
            limited.error("accept", "socket.accept() out of system resource", exc_info=err)
        now[0] = 11.0
        limited.error("accept", "socket.accept() out of system resource", exc_info=err)
    assert len(caplog.records) == 2
    assert caplog.records[0].exc_info is not None and caplog.records[0].exc_info[1] is err
    assert caplog.records[1].fields == {"suppressed": 4}  # type: ignore[attr-defined]
