"""Process log (SPEC §11.5): text and JSON lines, level filter, key/value fields, tracebacks."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator

import orjson
import pytest

from a3s_gateway.observability.process_log import JsonFormatter, TextFormatter, rfc3339_ms, setup

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_logger() -> Iterator[None]:
    """setup() reconfigures the shared ``a3s_gateway`` logger: give it back as it was."""
    logger = logging.getLogger("a3s_gateway")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


def configured(level: str, fmt: str) -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    setup(level, fmt, stream)
    return stream, logging.getLogger("a3s_gateway.test")


def record_at(created: float, msg: str = "hello", fields: dict[str, object] | None = None) -> logging.LogRecord:
    record = logging.LogRecord("a3s_gateway.x", logging.WARNING, __file__, 1, msg, None, None)
    record.created = created
    if fields is not None:
        record.fields = fields
    return record


def test_text_line() -> None:
    stream, log = configured("info", "text")
    log.info("reloaded", extra={"fields": {"generation": 3, "path": "/x"}})
    line = stream.getvalue()
    assert re.fullmatch(TIMESTAMP + r" INFO a3s_gateway\.test reloaded generation=3 path=/x\n", line), line


def test_text_timestamp_and_level_name() -> None:
    line = TextFormatter().format(record_at(1767607200.123, "x"))
    assert line == "2026-01-05T10:00:00.123Z WARNING a3s_gateway.x x"
    assert rfc3339_ms(1767607200.0) == "2026-01-05T10:00:00.000Z"


def test_text_quotes_values_that_need_it() -> None:
    fields: dict[str, object] = {
        "a": "x y",
        "b": 'say "hi"',
        "c": "k=v",
        "d": "",
        "e": None,
        "f": True,
        "g": "line\nbreak",
        "h": "back\\slash",
        "i": "plain-value_1.2:3/4",
        "j": 1.5,
        "k": b"bytes",
    }
    line = TextFormatter().format(record_at(0.0, "m", fields))
    assert line.endswith(
        ' m a="x y" b="say \\"hi\\"" c="k=v" d="" e=null f=true g="line\\nbreak" h="back\\\\slash"'
        " i=plain-value_1.2:3/4 j=1.5 k=bytes"
    ), line
    assert "\n" not in line


def test_text_exception_follows_on_next_lines() -> None:
    stream, log = configured("info", "text")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("health check crashed", extra={"fields": {"backend": "http://b:1"}})
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    assert re.fullmatch(TIMESTAMP + r" ERROR a3s_gateway\.test health check crashed backend=http://b:1", first)
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ZeroDivisionError: division by zero"


def test_json_line() -> None:
    stream, log = configured("info", "json")
    log.warning("reloaded", extra={"fields": {"generation": 3, "path": "/x", "ok": True, "gone": None}})
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    entry = orjson.loads(text)
    assert list(entry) == ["timestamp", "level", "logger", "message", "generation", "path", "ok", "gone"]
    assert re.fullmatch(TIMESTAMP, entry["timestamp"])
    assert entry["level"] == "warning"
    assert entry["logger"] == "a3s_gateway.test"
    assert entry["message"] == "reloaded"
    assert (entry["generation"], entry["path"], entry["ok"], entry["gone"]) == (3, "/x", True, None)


def test_json_timestamp_args_and_multiline_message() -> None:
    record = logging.LogRecord("a3s_gateway.x", logging.INFO, __file__, 1, "a %s\nb", ("one",), None)
    record.created = 1767607200.123
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["timestamp"] == "2026-01-05T10:00:00.123Z"
    assert entry["message"] == "a one\nb"
    assert entry["level"] == "info"


def test_json_exception_member() -> None:
    stream, log = configured("debug", "json")
    try:
        raise KeyError("k")
    except KeyError:
        log.error("failed", exc_info=True)
    text = stream.getvalue()
    assert text.count("\n") == 1
    entry = orjson.loads(text)
    assert entry["level"] == "error"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert "KeyError: 'k'" in entry["exception"]


def test_json_odd_field_values_and_reserved_names() -> None:
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    fields: dict[str, object] = {"obj": Thing(), "raw": b"\xffx", "huge": 2**70, "message": "mine", "n": [1, 2]}
    entry = orjson.loads(JsonFormatter().format(record_at(0.0, "the message", fields)))
    assert entry["message"] == "the message"
    assert entry["fields.message"] == "mine"
    assert entry["obj"] == "thing!"
    assert entry["raw"] == "\ufffdx"
    assert entry["huge"] == str(2**70)


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
        ("WARNING", ["warning", "error"]),
    ],
)
def test_levels_filter(level: str, shown: list[str]) -> None:
    stream, log = configured(level, "json")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [orjson.loads(line)["level"] for line in stream.getvalue().splitlines()] == shown


def test_setup_replaces_handlers_and_stops_propagation(caplog: pytest.LogCaptureFixture) -> None:
    first = io.StringIO()
    setup("info", "text", first)
    stream, log = configured("info", "text")
    caplog.set_level(logging.INFO)
    log.info("once")
    assert first.getvalue() == ""
    assert stream.getvalue().count("once") == 1
    assert len(logging.getLogger("a3s_gateway").handlers) == 1
    assert not caplog.records  # not propagated to the root logger


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup("info", "text")
    logging.getLogger("a3s_gateway").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.endswith(" INFO a3s_gateway to stderr\n")
    assert sys.stderr is not None


def test_invalid_level_or_format() -> None:
    with pytest.raises(ValueError, match="log level"):
        setup("verbose", "text", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        setup("info", "xml", io.StringIO())
