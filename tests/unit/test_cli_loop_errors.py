"""Errors the event loop reports itself (the stdlib loop's accept() EMFILE, once a second per listener while
descriptors are exhausted) are logged once per message every 10 s, with the traceback kept (issue 24, D1)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from a3s_gateway.cli import _limit_loop_errors


def test_repeated_loop_errors_are_one_line_with_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        _limit_loop_errors(loop)
        err = OSError(24, "Too many open files")
        with caplog.at_level(logging.ERROR, logger="a3s_gateway.loop"):
            for _ in range(50):
                loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": err})
            loop.call_exception_handler({"message": "another problem"})
    finally:
        loop.close()
    records = [r for r in caplog.records if r.name == "a3s_gateway.loop"]
    assert [r.getMessage() for r in records] == ["socket.accept() out of system resource", "another problem"]
    assert records[0].exc_info is not None and records[0].exc_info[1] is err
