"""The gateway's own log (SPEC §11.5): text or JSON lines on stderr from the ``a3s_gateway`` logger tree.

Key/value fields travel in ``extra={"fields": {...}}``; the message stays a short, fixed sentence so lines can be
grepped and the values are machine-readable::

    log = logging.getLogger("a3s_gateway.gateway")
    log.info("reloaded", extra={"fields": {"generation": 3, "path": "/x"}})

text::

    2026-01-05T10:00:00.123Z INFO a3s_gateway.gateway reloaded generation=3 path=/x

json::

    {"timestamp":"2026-01-05T10:00:00.123Z","level":"info","logger":"a3s_gateway.gateway","message":"reloaded","generation":3,"path":"/x"}

In text, a value that is empty or contains white space, a quote, ``=``, a backslash or a control character is written
as a double-quoted JSON string (``path="/a b"``); ``None`` is ``null`` and booleans are ``true``/``false``. In JSON the
fields become members after the four standard ones; a field named like a standard member (``timestamp``, ``level``,
``logger``, ``message``, ``exception``) is written as ``fields.<name>`` so it never hides one. A traceback follows
the text line on its own lines, or is the ``exception`` member in JSON, where every entry stays on one line.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Final, TextIO

import orjson

LOGGER: Final = "a3s_gateway"
LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS: Final = ("text", "json")
_RESERVED: Final = frozenset(("timestamp", "level", "logger", "message", "exception"))
# white space, quote, '=', backslash or a control character: the value must be quoted to be read back
_NEEDS_QUOTES: Final = re.compile(r'[\s"=\\\x00-\x1f\x7f]')

# (second, "YYYY-MM-DDTHH:MM:SS") of the last timestamp: log lines come in bursts within one second, and strftime
# costs more than the rest of an access-log entry. One tuple, replaced whole, so threads may share it.
_last_second: tuple[int, str] = (-1, "")


def rfc3339_ms(t: float) -> str:
    """Format a POSIX time as RFC 3339 UTC with milliseconds, e.g. ``2026-01-05T10:00:00.123Z``."""
    global _last_second
    second, ms = divmod(round(t * 1000), 1000)
    cached = _last_second
    if cached[0] != second:
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _last_second = cached
    return f"{cached[1]}.{ms:03d}Z"


def _fields(record: logging.LogRecord) -> Mapping[object, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _logfmt_value(value: object) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    if not text or _NEEDS_QUOTES.search(text):
        quoted: bytes = orjson.dumps(text)
        return quoted.decode()
    return text


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _Formatter(logging.Formatter):
    """Shared part of both formats: the traceback text of a record, computed once."""

    def _exception_text(self, record: logging.LogRecord) -> str:
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        text = record.exc_text or ""
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}" if text else self.formatStack(record.stack_info)
        return text


class TextFormatter(_Formatter):
    """``<timestamp> <LEVEL> <logger> <message> key=value …``, then the traceback lines if any."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{rfc3339_ms(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        exception = self._exception_text(record)
        return f"{line}\n{exception}" if exception else line


class JsonFormatter(_Formatter):
    """One JSON object per record: ``timestamp``, ``level``, ``logger``, ``message``, the fields, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": rfc3339_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            name = str(key)
            entry[f"fields.{name}" if name in _RESERVED else name] = value
        exception = self._exception_text(record)
        if exception:
            entry["exception"] = exception
        try:
            line: bytes = orjson.dumps(entry, default=_json_default)
        except orjson.JSONEncodeError:
            # e.g. an integer beyond 64 bits, which orjson refuses without asking ``default``: keep the line, as text
            safe = {key: value if isinstance(value, str) else _json_default(value) for key, value in entry.items()}
            line = orjson.dumps(safe)
        return line.decode()


def setup(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Send the ``a3s_gateway`` logger tree to ``stream`` (default stderr) at ``level`` in format ``fmt``.

    ``level`` is ``debug``, ``info``, ``warning`` or ``error``; ``fmt`` is ``text`` or ``json``. Handlers already on
    the logger are closed and replaced; records do not propagate to the root logger. Raises ``ValueError`` for an
    unknown level or format.
    """
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"unknown log level {level!r} (expected one of: {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (expected one of: {', '.join(FORMATS)})")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(LOGGER)
    for old in logger.handlers[:]:
        logger.removeHandler(old)
        old.close()
    logger.addHandler(handler)
    logger.setLevel(number)
    logger.propagate = False
