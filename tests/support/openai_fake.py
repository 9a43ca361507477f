"""A fake OpenAI-style model server for in-process tests (a ``support.start_backend`` handler).

``POST /v1/chat/completions`` with a JSON body: ``"stream": true`` answers SSE (chunked) with one
``chat.completion.chunk`` per word of ``REPLY``, then — when ``stream_options.include_usage`` is set — the usage-only
final chunk (``choices: []``), then ``data: [DONE]``. Every byte of the stream leaves in its own chunk of the chunked
encoding (``piece`` bytes per chunk), so a reader decoding it gets events split over many tiny pieces. Without
``stream`` it answers one ``chat.completion`` JSON with ``usage``. Reported usage: ``PROMPT_TOKENS`` input and one
output token per word.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

REPLY = ["Hello", " there", ",", " how", " can", " I", " help", "?"]
PROMPT_TOKENS = 13


def stream_body(model: str, include_usage: bool) -> bytes:
    events: list[Any] = [{"id": "c", "object": "chat.completion.chunk", "model": model,
                          "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"id": "c", "object": "chat.completion.chunk", "model": model,
                "choices": [{"index": 0, "delta": {"content": word}}]} for word in REPLY]
    events.append({"id": "c", "object": "chat.completion.chunk", "model": model,
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        events.append({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [],
                       "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(REPLY),
                                 "total_tokens": PROMPT_TOKENS + len(REPLY)}})
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def json_body(model: str) -> bytes:
    return json.dumps({
        "id": "c", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(REPLY)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(REPLY),
                  "total_tokens": PROMPT_TOKENS + len(REPLY)},
    }).encode()


def openai_handler(piece: int = 1, gap: float = 0.0) -> Any:
    """A ``start_backend`` handler; ``piece``: stream bytes per chunk, ``gap``: seconds between two events."""

    async def handle(req: Any, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        try:
            doc = json.loads(req.body)
        except ValueError:
            doc = {}
        model = str(doc.get("model", ""))
        if not doc.get("stream"):
            body = json_body(model)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body)
            return True
        include = bool((doc.get("stream_options") or {}).get("include_usage"))
        body = stream_body(model, include)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), piece):
            part = body[i : i + piece]
            w.write(b"%x\r\n%s\r\n" % (len(part), part))
            if gap and body[: i + piece].endswith(b"\n\n"):  # an event is out: a pause before the next one
                await w.drain()
                await asyncio.sleep(gap)
        w.write(b"0\r\n\r\n")
        return True

    return handle
