"""A small OpenAI-style model server for the scaling tests, run as a child process by the ``process`` executor.

    python tests/support/model_standin.py --port 20001 [--startup-delay 0.5] [--tokens 5] [--token-gap 0.01]
                                  [--status 200] [--ttfb 0] [--name v1] [--never-ready]

``GET /health`` answers 200 once started (503 forever with --never-ready); ``POST /v1/chat/completions`` streams
``--tokens`` SSE chunks (``data: {...}``) then ``data: [DONE]``, after ``--ttfb`` seconds, or answers ``--status``
with a JSON error when it is not 200; any other path answers ``{"model": <name>, "pid": <pid>}``. Every response
carries ``X-Replica: <pid>``. SIGTERM stops it at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "0")))
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--tokens", type=int, default=5)
    p.add_argument("--token-gap", type=float, default=0.01)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--ttfb", type=float, default=0.0)
    p.add_argument("--name", default="standin")
    p.add_argument("--never-ready", action="store_true")
    a = p.parse_args()
    pid = os.getpid()
    await asyncio.sleep(a.startup_delay)  # "loading the model": the port is not open yet

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                if length:
                    await reader.readexactly(length)
                if path == "/health":
                    code = 503 if a.never_ready else 200
                    body = b'{"ok":%s}' % (b"false" if a.never_ready else b"true")
                    head = b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nX-Replica: %d\r\n\r\n" % (code, len(body), pid)
                    writer.write(head + body)
                elif path.startswith("/v1/chat/completions") and method == "POST":
                    await asyncio.sleep(a.ttfb)
                    if a.status != 200:
                        body = json.dumps({"error": f"status {a.status}"}).encode()
                        writer.write(b"HTTP/1.1 %d E\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                     b"X-Replica: %d\r\n\r\n" % (a.status, len(body), pid) + body)
                    else:
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                     b"Transfer-Encoding: chunked\r\nX-Replica: %d\r\n\r\n" % pid)
                        for i in range(a.tokens):
                            event = b"data: " + json.dumps({"model": a.name, "token": i}).encode() + b"\n\n"
                            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                            await writer.drain()
                            await asyncio.sleep(a.token_gap)
                        done = b"data: [DONE]\n\n"
                        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                else:
                    body = json.dumps({"model": a.name, "pid": pid}).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                                 b"X-Replica: %d\r\n\r\n" % (len(body), pid) + body)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    await asyncio.start_server(serve, "127.0.0.1", a.port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    os._exit(0)  # at once: open streams are simply cut, as a killed model server's would be


if __name__ == "__main__":
    asyncio.run(main())
