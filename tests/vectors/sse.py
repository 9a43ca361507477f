"""SSE streams of LLM servers (SPEC §16.2): the seeds of the ``sse`` fuzz target (fuzz/targets.py) — the shapes of
tests/unit/http/test_usage.py (OpenAI with ``include_usage``, vLLM continuous usage, Anthropic, Responses API,
comments and other fields) and of tests/unit/middleware/test_mw_tokenlimit.py (the usage-only event among events
that look like it), in the three line ends."""

from __future__ import annotations

import json


def event(doc: object, eol: str = "\n", name: str | None = None) -> bytes:
    data = doc if isinstance(doc, str) else json.dumps(doc)
    head = f"event: {name}{eol}" if name else ""
    return f"{head}data: {data}{eol}{eol}".encode()


def chunk(text: str) -> dict[str, object]:
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


USAGE = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}}

OPENAI: list[object] = [
    {"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    chunk("Hel"), chunk("lo"), chunk(" wor"), chunk("ld"),
    {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    USAGE, "[DONE]",
]

VLLM: list[object] = [
    *(dict(chunk(t), usage={"prompt_tokens": 9, "completion_tokens": n}) for n, t in enumerate("abc", 1)),
    {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
    {"choices": [{"delta": {"content": "z"}}], "usage": None}, "[DONE]",
]

ANTHROPIC: list[tuple[str, object]] = [
    ("message_start", {"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 25,
                                                                                   "output_tokens": 1}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                                                  "text": "Hi"}}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                       "usage": {"output_tokens": 15}}),
    ("message_stop", {"type": "message_stop"}),
]

RESPONSES: list[object] = [
    {"type": "response.output_text.delta", "delta": "Hi"},
    {"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 2}}},
]

# events that look like the usage-only one and must be kept (test_mw_tokenlimit.py)
LOOKALIKES: list[bytes] = [
    b": keep-alive comment\n\n", event({"choices": [{"delta": {"content": "hi"}}]}),
    b"event: ping\ndata: {\"usage\": 1}\n\n", event({"choices": [], "usage": None}),
]


def streams() -> list[bytes]:
    out: list[bytes] = []
    for eol in ("\n", "\r\n", "\r"):
        out.append(b"".join(event(e, eol) for e in OPENAI))
        out.append(b"".join(event(e, eol) for e in VLLM))
        out.append(b"".join(event(e, eol, name) for name, e in ANTHROPIC))
        out.append(b"".join(event(e, eol) for e in RESPONSES))
        lookalikes = b"".join(LOOKALIKES) + event(USAGE) + b"data: [DONE]\n\n"
        out.append(lookalikes.replace(b"\n", eol.encode()))
        lines = [b": keep-alive", b"", b"event: message", b"id: 1", b'data: {"choices": [{"delta":',
                 b'data: {"content": "x"}}]}', b"", b"retry: 10", b"data:" + json.dumps(chunk("y")).encode(), b"", b""]
        out.append(eol.encode().join(lines))
    out.append(event(chunk("a")) + b'data: {"cho')  # an unfinished event at the end
    out.append(event(chunk("a")) + event(USAGE)[:-1])  # the usage event without its blank line
    usage = b"data: " + json.dumps(USAGE).encode()
    # line ends mixing styles, a blank line where an event starts (RELIABILITY.md §6)
    out.append(event(chunk("a")) + b"\r\n" + usage + b"\n\r\ndata: x\r\r\n" + usage + b"\n\rdata: [DONE]\r\r")
    out.append(event(chunk("a")) + usage + b"\nda")  # the stream ends in the line after the usage event's data
    return out
