"""What an LLM request says about itself (SPEC §16.1): its model, whether it streams, its output-token maximum.

Read from the held start of a JSON request body: with orjson when the body is complete, and by a scan of the
top-level members of the object when only its first ``ai_inspect_limit`` bytes were held (the first occurrence of a
member wins; a member whose value the prefix cuts is not read). Anything that is not a JSON object gives no model.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

import orjson

#: ``Content-Type`` of an inspected request (parameters ignored, case-insensitive)
JSON_TYPE: Final = b"application/json"
_MAX_TOKENS_KEYS: Final = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_WANTED: Final = frozenset({"model", "stream", "stream_options", "messages", "prompt", *_MAX_TOKENS_KEYS})
# a message's text in a prefix cut inside the messages array (prefix affinity, SPEC §16.5)
_CONTENT: Final = re.compile(rb'"(?:content|text)"\s*:\s*"((?:[^"\\]|\\.)*)("|\\?$)', re.DOTALL)
_WS: Final = b" \t\r\n"
# a JSON string (escapes included), or one bracket: what a nested value is skipped by, at C speed
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NESTED: Final = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_SCALAR_END: Final = re.compile(rb"[,}\]\s]")


class RequestInfo:
    """The members §16.1 takes from a request body; None (or False) where the body does not say."""

    __slots__ = ("body_bytes", "include_usage", "max_tokens", "members", "model", "prefix", "stream")

    def __init__(self) -> None:
        self.members: dict[str, object] = {}  # the body's top-level members (the wanted ones of a cut body)
        self.prefix = b""  # the held bytes of a body cut at ai_inspect_limit (b"" when complete)
        self.model: str | None = None
        self.stream = False
        self.max_tokens: int | None = None
        self.include_usage = False
        # request body bytes known when the request is routed: the whole body, its Content-Length, or (a chunked
        # body longer than the limit) the bytes held; the input estimate of §16.2/§16.4 is ceil(body_bytes / 4)
        self.body_bytes = 0

    def __repr__(self) -> str:
        return (f"RequestInfo(model={self.model!r}, stream={self.stream}, max_tokens={self.max_tokens}, "
                f"include_usage={self.include_usage})")


def is_json(content_type: bytes) -> bool:
    """Whether a ``Content-Type`` value is ``application/json`` (parameters ignored)."""
    return content_type.split(b";", 1)[0].strip(b" \t").lower() == JSON_TYPE


def read_request(body: bytes, complete: bool) -> RequestInfo:
    """The request's model and the other members of §16.1, from the whole body (``complete``) or its start."""
    members: dict[str, object] = {}
    if complete:
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            members = value
    else:
        members = _scan_members(body)
    info = RequestInfo()
    info.members = members
    if not complete:
        info.prefix = body
    model = members.get("model")
    if isinstance(model, str):
        info.model = model
    info.stream = members.get("stream") is True
    for key in _MAX_TOKENS_KEYS:
        limit = members.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            info.max_tokens = limit
            break
    options = members.get("stream_options")
    info.include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return info


def with_include_usage(body: bytes) -> bytes | None:
    """``body`` (a whole JSON object) with ``"stream_options": {"include_usage": true}`` added (other stream options
    kept), re-serialised by orjson (SPEC §16.2 ``stream_usage``); None when it is not a JSON object."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict):
        return None
    options = value.get("stream_options")
    merged: dict[str, object] = dict(options) if isinstance(options, dict) else {}
    merged["include_usage"] = True
    value["stream_options"] = merged
    return orjson.dumps(value)


def _skip_ws(data: bytes, i: int) -> int:
    n = len(data)
    while i < n and data[i] in _WS:
        i += 1
    return i


def _value_end(data: bytes, i: int) -> int:
    """Index just past the JSON value starting at ``i``; -1 when the data ends inside it or it is malformed."""
    n = len(data)
    if i >= n:
        return -1
    c = data[i]
    if c == 0x22:  # '"'
        m = _STRING.match(data, i)
        return m.end() if m is not None else -1
    if c == 0x7B or c == 0x5B:  # '{' '['
        depth = 0
        for m in _NESTED.finditer(data, i):
            token = m.group()
            if token[0] == 0x22:
                continue
            if token in (b"{", b"["):
                depth += 1
            else:
                depth -= 1
                if depth == 0:
                    return m.end()
        return -1
    m = _SCALAR_END.search(data, i)
    return m.start() if m is not None and m.start() > i else -1


def _scan_members(data: bytes) -> dict[str, object]:
    """The wanted top-level members of a JSON object's prefix, first occurrence each, until the prefix ends or is
    not JSON."""
    found: dict[str, object] = {}
    i = _skip_ws(data, 0)
    if i >= len(data) or data[i] != 0x7B:
        return found
    i += 1
    while True:
        i = _skip_ws(data, i)
        if i >= len(data) or data[i] != 0x22:
            return found
        end = _value_end(data, i)
        if end < 0:
            return found
        try:
            key = orjson.loads(data[i:end])
        except orjson.JSONDecodeError:
            return found
        i = _skip_ws(data, end)
        if i >= len(data) or data[i] != 0x3A:  # ':'
            return found
        i = _skip_ws(data, i + 1)
        end = _value_end(data, i)
        if end < 0:
            return found
        nested = data[i] == 0x7B or data[i] == 0x5B
        if not nested or (key in _WANTED and key not in found):  # (a nested value is only skipped otherwise)
            try:
                value = orjson.loads(data[i:end])
            except orjson.JSONDecodeError:
                return found
            if key in _WANTED and key not in found:
                found[key] = value
        i = _skip_ws(data, end)
        if i >= len(data) or data[i] != 0x2C:  # ','
            return found
        i += 1


def prompt_key(info: RequestInfo, limit: int) -> int:
    """The prompt-prefix hash of prefix affinity (SPEC §16.5): the first ``limit`` bytes (UTF-8) of the prompt text
    — the ``messages``' contents concatenated (string contents, and the ``text`` of content parts), or ``prompt`` —
    as a 64-bit integer; -1 when the request has no prompt text. In a body cut before its messages end, the
    contents found in the held prefix are used."""
    parts: list[bytes] = []
    size = 0
    messages = info.members.get("messages")
    prompt = info.members.get("prompt")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            texts: list[object] = [content] if isinstance(content, str) else []
            if isinstance(content, list):
                texts = [part.get("text") for part in content if isinstance(part, dict)]
            for text in texts:
                if isinstance(text, str):
                    data = text.encode()
                    parts.append(data)
                    size += len(data)
            if size >= limit:
                break
    elif isinstance(prompt, str):
        parts.append(prompt.encode())
    elif isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        parts.append(prompt[0].encode())
    elif info.prefix:
        start = info.prefix.find(b'"messages"')
        if start >= 0:
            for m in _CONTENT.finditer(info.prefix, start):
                text = _unquote(m.group(1))  # the last one may be cut by the limit
                if text is None:
                    break
                parts.append(text.encode())
                size += len(parts[-1])
                if size >= limit or not m.group(2):
                    break
    text = b"".join(parts)[:limit]
    if not text:
        return -1
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def _unquote(raw: bytes) -> str | None:
    """A JSON string's content; one cut inside an escape sequence loses that sequence."""
    for cut in range(min(len(raw), 6) + 1):
        try:
            value = orjson.loads(b'"' + raw[: len(raw) - cut] + b'"')
        except orjson.JSONDecodeError:
            continue
        return value if isinstance(value, str) else None
    return None
