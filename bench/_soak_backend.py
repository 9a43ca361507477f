"""Backend of the soak (bench/soak.py): a small asyncio HTTP/1.1 server, run as a subprocess.

    GET|POST /plain                  200, body "ok <request body length>" (Content-Length), keep-alive
    GET /sse?n=N&interval_ms=I       N events I ms apart, chunked text/event-stream, then the last chunk
    GET /ws (Upgrade: websocket)     101, then every data frame is echoed back (unmasked); close is answered

Anything else is 404; a malformed request gets 400 and the connection closes.
Usage: python _soak_backend.py PORT
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import sys
from urllib.parse import parse_qs, urlsplit

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 65536


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


async def websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes) -> None:
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        b0, b1 = await reader.readexactly(2)
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(await reader.readexactly(length)))
        if length < 126:
            header = bytes([b0, length])
        elif length < 65536:
            header = bytes([b0, 126]) + struct.pack("!H", length)
        else:
            header = bytes([b0, 127]) + struct.pack("!Q", length)
        writer.write(header + data)
        await writer.drain()
        if b0 & 0x0F == 8:  # close: answered, then done
            return


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                raise ValueError("head too large")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = b""
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":
                            pass
                        break
                    body += (await reader.readexactly(size + 2))[:-2]
            url = urlsplit(target)
            if url.path == "/plain":
                payload = b"ok %d" % len(body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(payload), payload))
            elif url.path == "/sse" and method == "GET":
                q = parse_qs(url.query)
                n, interval = int(q.get("n", ["10"])[0]), int(q.get("interval_ms", ["0"])[0]) / 1000
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(n):
                    writer.write(chunk(b'data: {"i":%d}\n\n' % i))
                    await writer.drain()
                    if interval:
                        await asyncio.sleep(interval)
                writer.write(b"0\r\n\r\n")
            elif url.path == "/ws" and headers.get("upgrade", "").lower() == "websocket":
                await websocket(reader, writer, headers.get("sec-websocket-key", "").encode())
                return
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    except (ValueError, asyncio.LimitOverrunError):
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024, limit=MAX_HEAD + 1)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
