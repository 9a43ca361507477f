"""A tiny OpenAI-style LLM backend for demos and tests: chat completions with SSE streaming, token usage and
vLLM-style metrics.

    python examples/demo_backend.py --port 8001 [--name a] [--token-delay 0.05] [--startup-delay 0] [--max-running 4]

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (``"stream": true`` streams one SSE
event per token, then — with ``"stream_options": {"include_usage": true}`` — the usage-only chunk OpenAI and vLLM
send, then ``data: [DONE]``; without ``stream`` one JSON completion with ``usage``), ``GET /metrics`` (Prometheus
text with vLLM's names: requests running and waiting — at most ``--max-running`` run at once, the rest wait — and
KV-cache use), anything else echoes the request as JSON. ``--startup-delay`` seconds pass before the port opens
(a model loading: a cold start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

WORDS = "Streaming through a3s-gateway: every token reaches you the moment the model emits it.".split()


def _response(status: str, body: bytes, ctype: str = "application/json", keep_alive: bool = True) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        f"{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
    )
    return head.encode() + body


class Engine:
    """The model's load, shared by all connections: at most ``max_running`` generate at once, the rest wait."""

    def __init__(self, max_running: int) -> None:
        self.max_running = max_running
        self.slots = asyncio.Semaphore(max_running)
        self.running = 0
        self.waiting = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def metrics(self, name: str) -> bytes:
        label = f'{{model_name="{name}"}}'
        lines = [
            "# HELP vllm:num_requests_running Number of requests currently running on GPU.",
            "# TYPE vllm:num_requests_running gauge", f"vllm:num_requests_running{label} {float(self.running)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge", f"vllm:num_requests_waiting{label} {float(self.waiting)}",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{label} {self.running / self.max_running:.3f}",
            "# TYPE vllm:prompt_tokens_total counter", f"vllm:prompt_tokens_total{label} {float(self.prompt_tokens)}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(self.generation_tokens)}",
        ]
        return ("\n".join(lines) + "\n").encode()


def _prompt_tokens(req: dict) -> int:  # type: ignore[type-arg]
    """About one token per 4 bytes of the messages' text (the usual rule of thumb)."""
    text = "".join(str(m.get("content", "")) for m in req.get("messages", []) if isinstance(m, dict))
    return max(1, (len(text.encode()) + 3) // 4)


class DemoBackend(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, Content-Length request bodies only (enough for demos)."""

    def __init__(self, name: str, token_delay: float, engine: Engine) -> None:
        self.name = name
        self.token_delay = token_delay
        self.engine = engine
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.task: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0"))
        if len(self.buf) < end + 4 + length:
            return
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        keep_alive = headers.get("connection", "").lower() != "close"
        self.busy = True
        self.task = asyncio.ensure_future(self._handle(method, target, headers, body, keep_alive))

    async def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        tr = self.transport
        assert tr is not None
        path = target.split("?", 1)[0]
        if path == "/health":
            tr.write(_response("200 OK", b'{"status":"ok"}', keep_alive=keep_alive))
        elif path == "/metrics":
            tr.write(_response("200 OK", self.engine.metrics(self.name), "text/plain; version=0.0.4",
                               keep_alive=keep_alive))
        elif path == "/v1/models":
            tr.write(_response("200 OK", json.dumps({"object": "list", "data": [{"id": "demo", "object": "model"}]})
                               .encode(), keep_alive=keep_alive))
        elif path == "/v1/chat/completions" and method == "POST":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                tr.write(_response("400 Bad Request", b'{"error":"invalid JSON"}', keep_alive=keep_alive))
                req = None
            if req is not None and not isinstance(req, dict):
                tr.write(_response("400 Bad Request", b'{"error":"expected a JSON object"}', keep_alive=keep_alive))
            elif req is not None:
                engine = self.engine
                engine.waiting += 1
                async with engine.slots:  # a free slot of the batch: the request runs
                    engine.waiting -= 1
                    engine.running += 1
                    try:
                        await self._complete(tr, req, keep_alive)
                    finally:
                        engine.running -= 1
        else:
            echo = {"backend": self.name, "method": method, "target": target, "headers": headers,
                    "body_bytes": len(body)}
            tr.write(_response("200 OK", json.dumps(echo).encode(), keep_alive=keep_alive))
        self.busy = False
        if not keep_alive:
            tr.close()
        elif self.buf:
            self._next()

    async def _complete(self, tr: asyncio.Transport, req: dict, keep_alive: bool) -> None:  # type: ignore[type-arg]
        prompt = _prompt_tokens(req)
        self.engine.prompt_tokens += prompt
        model = str(req.get("model", "demo"))
        if req.get("stream"):
            options = req.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            await self._stream(tr, model, prompt, usage)
            return
        text = " ".join(WORDS)
        self.engine.generation_tokens += len(WORDS)
        out = {"id": "chatcmpl-demo", "object": "chat.completion", "created": int(time.time()),
               "model": model, "backend": self.name,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": prompt, "completion_tokens": len(WORDS),
                         "total_tokens": prompt + len(WORDS)}}
        tr.write(_response("200 OK", json.dumps(out).encode(), keep_alive=keep_alive))

    async def _stream(self, tr: asyncio.Transport, model: str, prompt: int, usage: bool) -> None:
        tr.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
        for i, word in enumerate(WORDS):
            if tr.is_closing():  # the client went away: stop generating
                return
            chunk = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model, "backend": self.name,
                     "choices": [{"index": 0, "delta": {"content": word + " "},
                                  "finish_reason": "stop" if i + 1 == len(WORDS) else None}]}
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            tr.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.engine.generation_tokens += 1
            if i + 1 < len(WORDS):
                await asyncio.sleep(self.token_delay)
        if usage:  # OpenAI's (and vLLM's) usage-only final chunk
            chunk = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "model": model, "choices": [],
                     "usage": {"prompt_tokens": prompt, "completion_tokens": len(WORDS),
                               "total_tokens": prompt + len(WORDS)}}
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            tr.write(b"%x\r\n%s\r\n" % (len(event), event))
        done = b"data: [DONE]\n\n"
        tr.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


async def serve(port: int, name: str, token_delay: float, host: str = "127.0.0.1",
                max_running: int = 4) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    engine = Engine(max_running)
    return await loop.create_server(lambda: DemoBackend(name, token_delay, engine), host, port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default=None)
    ap.add_argument("--token-delay", type=float, default=0.05)
    ap.add_argument("--startup-delay", type=float, default=0.0)
    ap.add_argument("--max-running", type=int, default=4)
    args = ap.parse_args()

    async def run() -> None:
        await asyncio.sleep(args.startup_delay)  # "loading the model": the port is not open yet
        server = await serve(args.port, args.name or f"backend-{args.port}", args.token_delay, args.host,
                             max(1, args.max_running))
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
