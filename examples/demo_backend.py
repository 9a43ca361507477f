"""A tiny OpenAI-style LLM backend for demos and tests: chat completions with SSE streaming.

    python examples/demo_backend.py --port 8001 [--name a] [--token-delay 0.05]

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions`` (``"stream": true`` streams one SSE
event per token, then ``data: [DONE]``), anything else echoes the request as JSON.
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


class DemoBackend(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, Content-Length request bodies only (enough for demos)."""

    def __init__(self, name: str, token_delay: float) -> None:
        self.name = name
        self.token_delay = token_delay
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
        elif path == "/v1/models":
            tr.write(_response("200 OK", json.dumps({"object": "list", "data": [{"id": "demo", "object": "model"}]})
                               .encode(), keep_alive=keep_alive))
        elif path == "/v1/chat/completions" and method == "POST":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                tr.write(_response("400 Bad Request", b'{"error":"invalid JSON"}', keep_alive=keep_alive))
                req = None
            if req is not None and req.get("stream"):
                await self._stream(tr, keep_alive)
            elif req is not None:
                text = " ".join(WORDS)
                out = {"id": "chatcmpl-demo", "object": "chat.completion", "created": int(time.time()),
                       "model": req.get("model", "demo"), "backend": self.name,
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]}
                tr.write(_response("200 OK", json.dumps(out).encode(), keep_alive=keep_alive))
        else:
            echo = {"backend": self.name, "method": method, "target": target, "headers": headers,
                    "body_bytes": len(body)}
            tr.write(_response("200 OK", json.dumps(echo).encode(), keep_alive=keep_alive))
        self.busy = False
        if not keep_alive:
            tr.close()
        elif self.buf:
            self._next()

    async def _stream(self, tr: asyncio.Transport, keep_alive: bool) -> None:
        tr.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
        for i, word in enumerate(WORDS):
            if tr.is_closing():  # the client went away: stop generating
                return
            chunk = {"id": "chatcmpl-demo", "object": "chat.completion.chunk", "backend": self.name,
                     "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}]}
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            tr.write(b"%x\r\n%s\r\n" % (len(event), event))
            if i + 1 < len(WORDS):
                await asyncio.sleep(self.token_delay)
        done = b"data: [DONE]\n\n"
        tr.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))


async def serve(port: int, name: str, token_delay: float, host: str = "127.0.0.1") -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: DemoBackend(name, token_delay), host, port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8001)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--name", default=None)
    ap.add_argument("--token-delay", type=float, default=0.05)
    args = ap.parse_args()

    async def run() -> None:
        server = await serve(args.port, args.name or f"backend-{args.port}", args.token_delay, args.host)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
