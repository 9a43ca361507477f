"""Token usage of an inspected request's response (SPEC §16.2), read from the body bytes as they are relayed.

A :class:`UsageMeter` is fed the decoded body pieces (chunk framing removed, before any response filter) in the
order the client gets them; it never changes or holds a byte. JSON responses are kept (up to ``MAX_JSON`` bytes)
and parsed at the end. SSE responses are split into lines and events across piece boundaries (an event may arrive
one byte at a time, a ``\\r\\n`` may straddle two pieces); a piece that is one whole ``data:`` event (what a model
server writes per token) is taken as it is. An event's JSON is parsed only when it may carry usage; content events
are told apart by bytes where the JSON is compact (``UsageMeter._data``), and a stream's repeated content event by
its learned template (the bytes around the text), so a token costs a few compares (bench/README.md).

Usage members, the last reported value of each winning: ``usage.prompt_tokens`` / ``usage.completion_tokens``
(OpenAI), ``usage.input_tokens`` / ``usage.output_tokens`` (Responses API, Anthropic), the ``usage`` object being
top-level, or under ``response`` (Responses API ``response.completed``) or ``message`` (Anthropic
``message_start``). A stream without usage is estimated: one output token per content event, input
``ceil(request body bytes / 4)``.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

from ..observability.stats import ModelStats

MAX_JSON: Final = 4 * 1024 * 1024  # a larger JSON response is not parsed: usage unknown
MAX_EVENT: Final = 1024 * 1024  # an SSE event's data beyond this is dropped (never parsed)
_JSON_TYPE: Final = b"application/json"
_SSE_TYPE: Final = b"text/event-stream"
# byte patterns of an event's data (JSON as servers write it: compact, keys unescaped)
_USAGE: Final = b'"usage"'
_DELTA_CONTENT: Final = b'"delta":{"content":"'
_DELTA_EMPTY: Final = b'"delta":{"content":""'
_CONTENT: Final = b'"content"'
_TEXT: Final = b'"text"'

_NONE: Final = 0
_JSON: Final = 1
_SSE: Final = 2

REPORTED: Final = "reported"
ESTIMATED: Final = "estimated"


def media_type(content_type: bytes) -> bytes:
    """``Content-Type`` without parameters, lower-case."""
    return content_type.split(b";", 1)[0].strip(b" \t").lower()


def _count(value: object) -> int:
    """A token count member: a non-negative int (not a bool), else -1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return -1


def _has_text(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _object(text: bytes) -> dict[str, Any] | None:
    """An event's data as a JSON object, else None."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _string_end(buf: bytes, i: int, end: int) -> int:
    """Where the JSON string body starting at ``buf[i]`` ends before ``end``: the index of its first unescaped ``"``
    or raw control character, ``end`` if none; -1 when an escape runs past ``end``."""
    while i < end:
        b = buf[i]
        if b == 0x5C:  # backslash: the next byte is escaped
            i += 2
        elif b == 0x22 or b < 0x20:
            return i
        else:
            i += 1
    return end if i == end else -1


def _is_content(event: dict[str, Any]) -> bool:
    """An event carrying generated text: a choice's non-empty ``delta.content`` / ``delta.text`` (or ``text``, the
    completions API), or a top-level ``delta.text`` (Anthropic ``content_block_delta``)."""
    choices = event.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                delta = choice.get("delta")
                if isinstance(delta, dict) and (_has_text(delta.get("content")) or _has_text(delta.get("text"))):
                    return True
                if _has_text(choice.get("text")):
                    return True
    delta = event.get("delta")
    return isinstance(delta, dict) and _has_text(delta.get("text"))


class UsageMeter:
    """The usage of one response of an inspected request, and the timing of its content events.

    ``begin`` at the response head, ``feed`` for every relayed body piece, ``finish`` once at the end; then
    ``input_tokens`` / ``output_tokens`` (None: unknown) and ``source`` (``reported`` | ``estimated`` | None)."""

    __slots__ = (
        "cr", "data", "data_bytes", "events", "first_at", "head", "input_tokens", "json", "json_bytes", "last_at",
        "learn", "line", "line_bytes", "mode", "model_stats", "output_tokens", "reported_in", "reported_out",
        "responded", "sent", "sent_at", "source", "strip_usage", "tail",
    )

    def __init__(self, model_stats: ModelStats | None) -> None:
        self.model_stats = model_stats
        self.mode = _NONE
        self.responded = False  # a backend response head arrived (``begin``)
        self.sent = False  # the request went to a backend (set by the exchange at its end, for token-limit)
        # the gateway added ``stream_options.include_usage`` (§16.2 ``stream_usage``): the usage-only event is taken
        # out of the stream the client gets (:class:`UsageEventFilter`)
        self.strip_usage = False
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.source: str | None = None
        self._reset(0.0)

    def _reset(self, sent_at: float) -> None:
        self.sent_at = sent_at
        self.json: list[bytes] = []
        self.json_bytes = 0
        self.line: list[bytes] = []  # the current line's pieces (no line end seen yet)
        self.line_bytes = 0
        self.cr = False  # the last piece ended with "\r": a "\n" starting the next one belongs to it
        self.data: list[bytes] = []  # the current event's data lines
        self.data_bytes = 0
        self.events = 0  # content events (the estimate of output tokens)
        # the bytes around the text of the stream's last content event told apart by bytes (``_learn``): a read of
        # ``head`` + a JSON string body + ``tail`` is the same event with other text
        self.head = b""
        self.tail = b""
        self.learn = True  # a template may be learned: none yet, or the last one matched (False: it never did)
        self.reported_in = -1
        self.reported_out = -1
        self.first_at = 0.0
        self.last_at = 0.0

    def begin(self, content_type: bytes, sent_at: float) -> None:
        """A response head from the backend (``sent_at``: loop time its request was sent): what its body is."""
        kind = media_type(content_type)
        self.responded = True
        self.mode = _SSE if kind == _SSE_TYPE else _JSON if kind == _JSON_TYPE else _NONE
        self._reset(sent_at)

    def feed(self, pieces: list[bytes], now: float) -> None:
        """Body pieces relayed to the client at loop time ``now``."""
        mode = self.mode
        if mode == _SSE:
            for piece in pieces:
                if self.data_bytes == 0 and not self.line and not self.cr and piece.endswith(b"\n\n"):
                    # no line or event held, and the piece ends an event: the read a model server streams
                    head = self.head
                    if head and piece.startswith(head) and piece.endswith(self.tail):
                        # the last content event with other text (or none): no JSON to look at
                        start = len(head)
                        end = len(piece) - len(self.tail)
                        if end >= start and end - start < MAX_EVENT and _string_end(piece, start, end) == end:
                            self.learn = True
                            if end > start:
                                self._content(now)
                            continue
                    if piece.startswith(b"data:") and self._one_event(piece, now):
                        continue
                self._feed_sse(piece, now)
        elif mode == _JSON:
            for piece in pieces:
                self.json_bytes += len(piece)
                if self.json_bytes > MAX_JSON:
                    self.mode = _NONE
                    self.json = []
                    return
                self.json.append(piece)

    # -- SSE -----------------------------------------------------------------------------------------------------
    def _feed_sse(self, piece: bytes, now: float) -> None:
        """Any piece: its lines, the partial line and the current event's data lines held across pieces."""
        if self.cr:
            self.cr = False
            if piece[:1] == b"\n":
                piece = piece[1:]
        if not piece:
            return
        if b"\n" not in piece and b"\r" not in piece:  # inside a line
            self.line_bytes += len(piece)
            if self.line_bytes <= MAX_EVENT:
                self.line.append(piece)
            return
        if self.line:
            self.line.append(piece)
            piece = b"".join(self.line)
            self.line = []
        overlong = self.line_bytes > MAX_EVENT
        self.line_bytes = 0
        lines = piece.splitlines()  # bytes: "\r\n", "\n" and "\r" only
        last = piece[-1]
        if last == 0x0D:
            self.cr = True
        elif last != 0x0A:  # the last line goes on in the next piece
            rest = lines.pop()
            self.line = [rest]
            self.line_bytes = len(rest)
        for line in lines:
            if overlong:  # the first line's start was dropped: not parsed
                overlong = False
                self.data_bytes = MAX_EVENT + 1
                continue
            if not line:
                self._event(now)
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                self.data_bytes += len(value) + 1
                if self.data_bytes <= MAX_EVENT:
                    self.data.append(value)

    def _event(self, now: float) -> None:
        """A blank line: the event ends."""
        data = self.data
        size = self.data_bytes
        if not data and size == 0:
            return
        self.data = []
        self.data_bytes = 0
        if size > MAX_EVENT:
            return
        text = data[0] if len(data) == 1 else b"\n".join(data)
        self._data(text, 0, len(text), now)

    def _one_event(self, piece: bytes, now: float) -> bool:
        """A piece ``data:...\\n\\n`` that is one event of one data line: accounted (True), else left to the line
        reader. A content event told apart by bytes becomes the stream's template (``head``, ``tail``)."""
        end = len(piece) - 2
        if piece.find(b"\n") != end or piece.find(b"\r") >= 0 or end >= MAX_EVENT:
            return False
        start = 6 if piece[5] == 0x20 else 5
        at = self._data(piece, start, end, now)
        if at >= 0 and self.learn:  # not again and again for a server whose events differ outside their text
            self._learn(piece, at)
        return True

    def _learn(self, piece: bytes, at: int) -> None:
        """Keep the bytes around the text of a content event (its string starts at ``at``) as the template of the
        next ones, when nothing else in them could make an event a content event."""
        close = _string_end(piece, at, len(piece))
        if close < 0 or piece[close] != 0x22:
            return
        head = piece[:at]
        tail = piece[close:]
        # the only "content" member is the one before the text (head ends with it), and no "text" member
        if (head.find(_CONTENT) == at - 11 and head.find(_TEXT) < 0 and tail.find(_CONTENT) < 0
                and tail.find(_TEXT) < 0):
            self.head = head
            self.tail = tail
            self.learn = False

    def _data(self, buf: bytes, start: int, end: int, now: float) -> int:
        """An event's data ``buf[start:end]`` (``buf`` holds nothing else that looks like JSON): the usage it
        reports, and whether it carries generated text. Returns where that text starts when bytes told it (a
        compact ``"delta":{"content":"`` with a non-empty string), else -1.

        Only an event that can hold usage is parsed: one with a ``"usage"`` member other than the ``"usage":null``
        OpenAI puts in every chunk of an ``include_usage`` stream. The others are told apart by bytes: the compact
        content delta above is a content event; without a ``"content"`` or ``"text"`` member none is (``[DONE]``,
        role and finish chunks, ``reasoning_content``); any other form is parsed."""
        u = buf.find(_USAGE)
        if u >= 0 and (buf[u + 7 : u + 12] != b":null" or buf.find(_USAGE, u + 12) >= 0):
            event = _object(buf if start == 0 and end == len(buf) else buf[start:end])
            if event is not None:
                self._usage(event)
                if _is_content(event):
                    self._content(now)
            return -1
        c = buf.find(_DELTA_CONTENT)
        if c >= 0:
            c += len(_DELTA_CONTENT)
            if c < end and buf[c] != 0x22:
                self._content(now)
                return c
        elif buf.find(_CONTENT) < 0 and buf.find(_TEXT) < 0:
            return -1
        event = _object(buf if start == 0 and end == len(buf) else buf[start:end])
        if event is not None and _is_content(event):
            self._content(now)
        return -1

    def _content(self, now: float) -> None:
        """A content event at ``now``: the estimate counts it; time to first token, or the gap since the last."""
        self.events += 1
        stats = self.model_stats
        if self.first_at == 0.0:
            self.first_at = now
            if stats is not None:
                stats.ttft.observe(now - self.sent_at if now > self.sent_at else 0.0)
        elif stats is not None:
            stats.inter_token.observe(now - self.last_at if now > self.last_at else 0.0)
        self.last_at = now

    def _usage(self, obj: dict[str, Any]) -> None:
        """The usage members of a response object or event (top level, ``response``, ``message``)."""
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            for outer in ("response", "message"):
                inner = obj.get(outer)
                if isinstance(inner, dict):
                    usage = inner.get("usage")
                    if isinstance(usage, dict):
                        break
            if not isinstance(usage, dict):
                return
        n = _count(usage.get("prompt_tokens"))
        if n < 0:
            n = _count(usage.get("input_tokens"))
        if n >= 0:
            self.reported_in = n
        n = _count(usage.get("completion_tokens"))
        if n < 0:
            n = _count(usage.get("output_tokens"))
        if n >= 0:
            self.reported_out = n

    # -- end -----------------------------------------------------------------------------------------------------
    def finish(self, request_bytes: int) -> None:
        """The response ended (or failed, or the client left): the accounted usage (§16.2), and the stream's output
        rate into the model's metrics. ``request_bytes``: request body bytes received (the input estimate)."""
        mode = self.mode
        self.mode = _NONE
        if mode == _SSE:
            # the stream's end ends its last line and event, as the usage-event filter takes them (its ``finish``):
            # an unfinished usage event the client does not get is counted
            if self.line_bytes:
                self._feed_sse(b"\n", self.last_at)
            self._event(self.last_at)
        elif mode == _JSON and self.json:
            body = b"".join(self.json)
            self.json = []
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                self._usage(value)
        if self.reported_in >= 0 or self.reported_out >= 0:
            self.source = REPORTED
            self.input_tokens = self.reported_in if self.reported_in >= 0 else None
            self.output_tokens = self.reported_out if self.reported_out >= 0 else None
        elif mode == _SSE:
            self.source = ESTIMATED
            self.input_tokens = (request_bytes + 3) // 4
            self.output_tokens = self.events
        stats = self.model_stats
        if stats is None or self.source is None:
            return
        stats.add_tokens(self.source == REPORTED, self.input_tokens or 0, self.output_tokens or 0)
        span = self.last_at - self.first_at
        if mode == _SSE and span > 0.0 and self.output_tokens:
            stats.tokens_per_second.observe(self.output_tokens / span)


# the end of an SSE event (WHATWG): a line end, then a blank line; a line ends at CRLF, LF or CR (a CR before LF is
# not a line end by itself). The blank line's CR is taken when a byte follows (not LF): one ending a read may be a
# CRLF's start, so the event is held until the next byte
_EVENT_END: Final = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?=[^\n]))")


def _usage_only(event: bytes) -> bool:
    """Whether an SSE event is the usage-only chunk ``stream_options.include_usage`` adds: ``choices`` empty and a
    ``usage`` object."""
    if b'"usage"' not in event:
        return False
    data = [line[6:] if line[5:6] == b" " else line[5:] for line in event.splitlines() if line[:5] == b"data:"]
    if not data:
        return False
    try:
        value = orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return False
    return isinstance(value, dict) and value.get("choices") == [] and isinstance(value.get("usage"), dict)


def _blank_start(event: bytes) -> bytes:
    """The blank line a usage-only event's bytes start with, if any: an event of its own, which the client gets (one
    line end: a second would have ended the event before)."""
    return event[: len(event) - len(event.lstrip(b"\r\n"))]


class UsageEventFilter:
    """A response body filter (``chain.BodyFilter``) for ``stream_usage`` (SPEC §16.2): relays an SSE stream event by
    event, unchanged, except the usage-only events the gateway asked for. An event is held until its blank line (a CR
    ending a read: until the next byte, which may make it a CRLF); a blank line where an event starts is relayed as an
    event of its own."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        buf = self.held + data if self.held else data
        start = 0
        out: list[bytes] = []
        while True:
            m = _EVENT_END.search(buf, start)
            if m is None:
                break
            end = m.end()
            event = buf[start:end]
            if not _usage_only(event):
                out.append(event)
            elif event[0] == 0x0A or event[0] == 0x0D:
                out.append(_blank_start(event))
            start = end
        self.held = buf[start:]
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        """The bytes of an event the stream did not end: relayed as they came, unless they are a usage-only event (the
        stream's end ending its last line), which ``UsageMeter.finish`` counts the same way."""
        held = self.held
        self.held = b""
        return held if not _usage_only(held) else _blank_start(held)


class ThenFilter:
    """The usage-event filter, then another body filter (compress of an event stream)."""

    __slots__ = ("first", "then")

    def __init__(self, first: UsageEventFilter, then: Any) -> None:
        self.first = first
        self.then = then

    def feed(self, data: bytes) -> bytes:
        out: bytes = self.then.feed(self.first.feed(data))
        return out

    def finish(self) -> bytes:
        tail = self.first.finish()
        out: bytes = (self.then.feed(tail) if tail else b"") + self.then.finish()
        return out
