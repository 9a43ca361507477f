"""Findings of the ``sse`` fuzz target (fuzz/targets.py; issue 25) in the usage accounting (http/usage.py, SPEC
§16.2), each fixed and kept as its regression test. RELIABILITY.md §6 lists them."""

from __future__ import annotations

import orjson
import pytest

from a3s_gateway.http.usage import REPORTED, UsageEventFilter, UsageMeter

USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
CONTENT = b'data: {"choices":[{"delta":{"content":"hi"}}]}'


def filtered(pieces: list[bytes]) -> bytes:
    f = UsageEventFilter()
    return b"".join([f.feed(p) for p in pieces]) + f.finish()


@pytest.mark.parametrize("end", [b"\n\r\n", b"\r\r\n", b"\n\r"])
def test_an_event_ended_by_mixed_line_ends_is_cut_where_sse_cuts_it(end: bytes) -> None:
    # WHATWG SSE: a line ends at CRLF, LF or CR; a blank line ends the event. "\n\r\n" = LF, then a blank line
    # (CRLF); "\r\r\n" = CR, then CRLF; "\n\r" = LF, then CR. The usage-only event is taken out, the rest kept.
    stream = CONTENT + b"\n\n" + USAGE + end + b"data: [DONE]\n\n"
    assert filtered([stream]) == CONTENT + b"\n\ndata: [DONE]\n\n"


def test_the_filter_output_does_not_depend_on_the_cut_points() -> None:
    stream = CONTENT + b"\r\r\n" + USAGE + b"\n\n"
    outs = {i: filtered([stream[:i], stream[i:]]) for i in range(len(stream) + 1)}
    assert set(outs.values()) == {CONTENT + b"\r\r\n"}, outs


@pytest.mark.parametrize("end", [b"\n\r\n", b"\r\r\n", b"\n\r", b"\r\r", b"\r\n\r", b"\r\n\n"])
def test_mixed_line_ends_give_one_output_at_any_two_cut_points(end: bytes) -> None:
    # a CR ending a read is one line end whatever comes next, but the event's bytes end after a CRLF's LF
    stream = CONTENT + end + USAGE + end + b"data: [DONE]" + end
    want = CONTENT + end + b"data: [DONE]" + end
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1, 7):
            assert filtered([stream[:i], stream[i:j], stream[j:]]) == want, (i, j)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_a_blank_line_where_an_event_starts_is_not_taken_out_with_the_usage_event(eol: bytes) -> None:
    # found with the fixes above: "\n\n\n" is an event end, then a blank line (an event of its own, dispatching
    # nothing); the usage-only event after it was taken out with that blank line
    stream = CONTENT + eol * 3 + USAGE + eol * 2 + b"data: [DONE]" + eol * 2
    want = CONTENT + eol * 3 + b"data: [DONE]" + eol * 2
    assert {filtered([stream[:i], stream[i:]]) for i in range(len(stream) + 1)} == {want}
    assert filtered([eol + USAGE + eol * 2]) == eol
    assert filtered([CONTENT + eol * 3 + USAGE]) == CONTENT + eol * 3  # the stream ends in the usage event


@pytest.mark.parametrize("after", [b"\nda", b"", b"\r\nid: 1", b"\r"])
def test_a_usage_event_the_client_does_not_get_is_counted(after: bytes) -> None:
    # the stream ends (the backend closed) inside the line after the usage event's data line, or inside that line
    stream = CONTENT + b"\n\n" + USAGE + after
    for pieces in ([stream], [stream[:-1], stream[-1:]], [stream[:-5], stream[-5:]]):
        meter = UsageMeter(None)
        meter.begin(b"text/event-stream", 0.0)
        meter.feed(pieces, 1.0)
        meter.finish(0)
        assert filtered(pieces) == CONTENT + b"\n\n"
        assert (meter.source, meter.input_tokens, meter.output_tokens) == (REPORTED, 3, 1), pieces


def test_an_unfinished_event_the_client_gets_is_read_as_it_ended() -> None:
    # not usage-only (its data is cut): relayed, and the meter, which reads the same data, finds no usage in it
    stream = CONTENT + b"\n\n" + USAGE[:-3]
    meter = UsageMeter(None)
    meter.begin(b"text/event-stream", 0.0)
    meter.feed([stream], 1.0)
    meter.finish(8)
    assert filtered([stream]) == stream
    assert (meter.source, meter.input_tokens, meter.output_tokens) == ("estimated", 2, 1)


def test_the_well_formed_streams_of_the_findings_are_handled() -> None:
    """The same events with one line-end style: the filter takes the usage event out and the meter reads it (the
    findings above fail for the reason they name, not for another)."""
    for eol in (b"\n", b"\r\n", b"\r"):
        stream = (CONTENT + b"\n\n" + USAGE + b"\n\ndata: [DONE]\n\n").replace(b"\n", eol)
        assert filtered([stream]) == (CONTENT + b"\n\ndata: [DONE]\n\n").replace(b"\n", eol)
        meter = UsageMeter(None)
        meter.begin(b"text/event-stream", 0.0)
        meter.feed([stream], 1.0)
        meter.finish(0)
        assert (meter.source, meter.input_tokens, meter.output_tokens) == (REPORTED, 3, 1)
    assert orjson.loads(USAGE[6:])["choices"] == []
