"""HTTP/2 downstream (SPEC §9.1): h2c prior knowledge on a plain entrypoint and ALPN h2 over TLS, with curl and an
h2 client: concurrent streams, request bodies with and without content-length, streamed (SSE) responses, trailers,
flow control on a large body, a stream reset cancelling its upstream request, and :authority matching Host rules."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from certs import make_san_cert
from external import require_tool

from support import Request, gateway_port, ok, start_backend

pytestmark = pytest.mark.timeout(60)


class H2Client:
    """A small asyncio h2 client: ``await client.request(...)`` -> (headers, body, trailers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self.streams: dict[int, dict] = {}
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, port: int, ssl_ctx=None) -> H2Client:  # type: ignore[no-untyped-def]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_ctx,
                                                      server_hostname="api.example.com" if ssl_ctx else None)
        return cls(reader, writer)

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                for s in self.streams.values():
                    s["done"].set()
                return
            for e in self.conn.receive_data(data):
                s = self.streams.get(getattr(e, "stream_id", 0) or 0)
                if isinstance(e, h2.events.ResponseReceived) and s is not None:
                    s["headers"] = dict(e.headers)
                elif isinstance(e, h2.events.DataReceived) and s is not None:
                    s["body"] += e.data
                    s["chunks"].append(e.data)
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                elif isinstance(e, h2.events.TrailersReceived) and s is not None:
                    s["trailers"] = dict(e.headers)
                elif isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and s is not None:
                    s["reset"] = isinstance(e, h2.events.StreamReset)
                    s["done"].set()
            self.writer.write(self.conn.data_to_send())

    def start(self, method: str, path: str, body: bytes | None = None, headers=(), authority: str = "a",
              length: bool = True) -> int:  # type: ignore[no-untyped-def]
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority), *headers]
        if body is not None and length:
            fields.append(("content-length", str(len(body))))
        self.streams[sid] = {"headers": {}, "body": b"", "chunks": [], "trailers": {}, "done": asyncio.Event(),
                             "reset": False}
        self.conn.send_headers(sid, fields, end_stream=body is None)
        if body is not None:  # the gateway's windows (1 MiB) cover the test bodies; frames of at most 16 KiB
            for i in range(0, max(len(body), 1), 16384):
                self.conn.send_data(sid, body[i : i + 16384], end_stream=i + 16384 >= len(body))
        self.writer.write(self.conn.data_to_send())
        return sid

    async def wait(self, sid: int) -> dict:
        await asyncio.wait_for(self.streams[sid]["done"].wait(), 10)
        return self.streams[sid]

    async def request(self, method: str, path: str, body: bytes | None = None, **kw) -> dict:  # type: ignore[no-untyped-def]
        return await self.wait(self.start(method, path, body, **kw))

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self.writer.write(self.conn.data_to_send())

    def close(self) -> None:
        self.task.cancel()
        self.writer.close()


def config(backend: str, entry: str = "") -> str:
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {entry}
}}
routers "api" {{
  rule    = "Host(`api.example.com`)"
  service = "s"
}}
routers "other" {{
  rule    = "PathPrefix(`/`)"
  service = "s2"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
services "s2" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


async def echo(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    if req.target == "/sse":
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(3):
            event = b"data: %d\n\n" % i
            w.write(b"%x\r\n%s\r\n" % (len(event), event))
            await w.drain()
            await asyncio.sleep(0.05)
        w.write(b"0\r\nx-checksum: abc\r\n\r\n")
    elif req.target == "/big":
        body = b"z" * 3_000_000
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    elif req.target == "/slow":
        await asyncio.wait_for(r.read(1), 30)  # returns at once when the gateway closes the connection
        return False
    else:
        w.write(ok(b"%s %s host=%s body=%d" % (req.method.encode(), req.target.encode(),
                                                (req.header("host") or "").encode(), len(req.body))))
    return True


async def test_h2c_prior_knowledge_streams_bodies_trailers_and_authority(start_gateway) -> None:
    backend = await start_backend(echo)
    gw = await start_gateway(config(backend.url))
    client = await H2Client.connect(gateway_port(gw))
    try:
        # concurrent streams on one connection
        sids = [client.start("GET", f"/n/{i}") for i in range(10)]
        results = [await client.wait(sid) for sid in sids]
        assert [r["headers"][b":status"] for r in results] == [b"200"] * 10
        assert {r["body"] for r in results} == {b"GET /n/%d host=a body=0" % i for i in range(10)}
        # :authority is the Host the routers see
        r = await client.request("GET", "/x", authority="api.example.com")
        assert r["body"] == b"GET /x host=api.example.com body=0"
        assert gw.runtime.route_stats[("api", "s")].ttfb.count() == 1
        # request bodies with and without content-length (the latter is forwarded chunked)
        r = await client.request("POST", "/p", b"q" * 100_000)
        assert r["body"] == b"POST /p host=a body=100000"
        r = await client.request("POST", "/p", b"hello", length=False)
        assert r["body"] == b"POST /p host=a body=5" and backend.requests[-1].header("transfer-encoding") == "chunked"
        # a streamed response arrives event by event, and its trailers come through
        r = await client.request("GET", "/sse", headers=[("te", "trailers")])
        assert r["body"] == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and len(r["chunks"]) >= 3
        assert r["trailers"] == {b"x-checksum": b"abc"}
        # a large body respects flow control (the client's 64 KiB default window is refilled as it reads)
        r = await client.request("GET", "/big")
        assert len(r["body"]) == 3_000_000
        # a gateway-generated answer goes out as HTTP/2 too
        r = await client.request("GET", "/nothing", authority="api.example.com", headers=[])
        assert r["headers"][b":status"] == b"200"
    finally:
        client.close()


async def test_a_reset_stream_cancels_its_upstream_request(start_gateway) -> None:
    backend = await start_backend(echo)
    gw = await start_gateway(config(backend.url))
    client = await H2Client.connect(gateway_port(gw))
    try:
        sid = client.start("GET", "/slow")
        for _ in range(100):
            if backend.open_connections:
                break
            await asyncio.sleep(0.02)
        client.reset(sid)
        for _ in range(100):
            if backend.open_connections == 0:
                break
            await asyncio.sleep(0.02)
        assert backend.open_connections == 0  # the upstream connection was closed at once
        assert gw.runtime.route_stats[("other", "s2")].gone_waiting_head == 1
        r = await client.request("GET", "/after")  # the connection itself goes on
        assert r["headers"][b":status"] == b"200"
    finally:
        client.close()


async def test_curl_http2_over_tls_and_prior_knowledge(start_gateway, tmp_path: Path) -> None:
    require_tool("curl", "curl")
    backend = await start_backend(echo)
    cert, key = make_san_cert(tmp_path, "", ["api.example.com"])
    hcl = config(backend.url, f'tls {{\n    cert_file = "{cert}"\n    key_file = "{key}"\n  }}')
    hcl += config(backend.url).replace('entrypoints "web"', 'entrypoints "plain"').split("routers")[0]
    gw = await start_gateway(hcl)
    tls_port, plain_port = gateway_port(gw, "web"), gateway_port(gw, "plain")

    def curl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["curl", "-sS", *args], capture_output=True, text=True, timeout=20)

    out = await asyncio.to_thread(curl, "--http2", "--cacert", str(cert), "--resolve",
                                  f"api.example.com:{tls_port}:127.0.0.1", "-w", "\n%{http_version}",
                                  f"https://api.example.com:{tls_port}/tls")
    assert out.returncode == 0 and out.stdout == f"GET /tls host=api.example.com:{tls_port} body=0\n2", out.stderr
    out = await asyncio.to_thread(curl, "--http2-prior-knowledge", "-w", "\n%{http_version}",
                                  f"http://127.0.0.1:{plain_port}/h2c")
    assert out.returncode == 0 and out.stdout.endswith("\n2") and "GET /h2c" in out.stdout, out.stderr
    out = await asyncio.to_thread(curl, "--http1.1", "-w", "\n%{http_version}", f"http://127.0.0.1:{plain_port}/h1")
    assert out.stdout.endswith("\n1.1")  # the same entrypoint still speaks HTTP/1.1


async def test_fields_that_would_split_the_forwarded_head_are_refused(start_gateway) -> None:
    backend = await start_backend(echo)
    gw = await start_gateway(config(backend.url))
    client = await H2Client.connect(gateway_port(gw))
    client.conn.config.validate_outbound_headers = False  # send what a hostile client would
    client.conn.config.normalize_outbound_headers = False
    try:
        r = await client.request("GET", "/x", headers=[("x-a", "1\r\nx-injected: yes")])
        assert (r["headers"], backend.requests) == ({}, [])  # refused (h2 closes the connection), never forwarded
    finally:
        client.close()
    client = await H2Client.connect(gateway_port(gw))
    try:
        r = await client.request("GET", "/y")
        assert r["body"] == b"GET /y host=a body=0"  # the gateway goes on
    finally:
        client.close()


async def test_an_http2_connection_survives_a_reload(start_gateway) -> None:
    from a3s_gateway import GatewayConfig

    backend = await start_backend(echo)
    hcl = config(backend.url)
    gw = await start_gateway(hcl)
    client = await H2Client.connect(gateway_port(gw))
    try:
        assert (await client.request("GET", "/before"))["body"] == b"GET /before host=a body=0"
        sid = client.start("GET", "/sse", headers=[("te", "trailers")])  # a stream open across the reload
        for _ in range(100):
            if client.streams[sid]["headers"]:
                break
            await asyncio.sleep(0.01)
        assert client.streams[sid]["headers"] and not client.streams[sid]["done"].is_set()
        await gw.reload(GatewayConfig.from_hcl(hcl.replace('service = "s2"', 'service = "s"'), filename="t.hcl"))
        r = await client.wait(sid)
        assert r["body"] == b"data: 0\n\ndata: 1\n\ndata: 2\n\n" and r["trailers"] == {b"x-checksum": b"abc"}
        r = await client.request("GET", "/after")  # same connection, the new generation's routes
        assert r["body"] == b"GET /after host=a body=0"
        assert gw.runtime.route_stats[("other", "s")].ttfb.count() == 1
    finally:
        client.close()


async def test_h2_requests_reach_the_exchange_as_fields_never_as_http1_text(start_gateway, monkeypatch) -> None:
    """Issue 17: a stream's request is no HTTP/1.1 head parsed again, nor a body re-chunked and decoded again;
    what the backend receives is unchanged (Host from :authority, cookies joined, chunked body of unannounced
    length, content-length body as is)."""
    from a3s_gateway.proxy import http1

    heads: list[bytes] = []
    decoders: list[object] = []
    real_parse, real_decoder = http1.parse_request, http1.new_chunked_decoder

    def parse_request(buf: bytes, *limits: int) -> object:
        if not buf.startswith(b"PRI * HTTP/2.0\r\n"):  # the connection's preface, parsed once to see h2c
            heads.append(buf)
        return real_parse(buf, *limits)

    def chunked_decoder() -> object:
        decoders.append(None)
        return real_decoder()

    monkeypatch.setattr(http1, "parse_request", parse_request)
    monkeypatch.setattr(http1, "new_chunked_decoder", chunked_decoder)
    backend = await start_backend(echo)
    gw = await start_gateway(config(backend.url))
    client = await H2Client.connect(gateway_port(gw))
    try:
        r = await client.request("GET", "/q?x=1", authority="api.example.com",
                                 headers=[("cookie", "a=1"), ("cookie", "b=2")])
        assert r["body"] == b"GET /q?x=1 host=api.example.com body=0"
        assert backend.requests[-1].header("cookie") == "a=1; b=2"
        r = await client.request("POST", "/p", b"hello", length=False)
        assert r["body"] == b"POST /p host=a body=5" and backend.requests[-1].header("transfer-encoding") == "chunked"
        r = await client.request("POST", "/p", b"w" * 70_000)
        assert r["body"] == b"POST /p host=a body=70000"
        assert backend.requests[-1].header("content-length") == "70000"
    finally:
        client.close()
    assert heads == [] and decoders == []


async def fields_backend(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
    if req.target == "/many":  # 99 fields and Content-Length: the most the HTTP/1.1 parser takes (100)
        fields = b"".join(b"X-F%d: v%d\r\n" % (i, i) for i in range(99))
        w.write(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 4\r\n\r\nmany")
    elif req.target == "/204":
        w.write(b"HTTP/1.1 204 No Content\r\nX-Kind: none\r\n\r\n")
    elif req.target == "/zero":
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    elif req.target == "/hints":
        w.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                b"Keep-Alive: timeout=5\r\nX-Kept: yes\r\n\r\n4\r\nbody\r\n0\r\nx-sum: 7\r\n\r\n")
    else:
        w.write(ok(b"plain"))
    return True


def fields_config(backend: str, entry: str = "") -> str:
    return f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  {entry}
}}
middlewares "hdr" {{
  type = "headers"
  response_headers = {{ "X-Served-By" = "a3s" }}
}}
routers "r" {{
  rule        = "PathPrefix(`/`)"
  service     = "s"
  middlewares = ["hdr"]
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend}" }}] }}
}}
'''


async def test_a_response_head_larger_than_an_http1_head_reaches_the_h2_client(start_gateway) -> None:
    """Issue 17: the response reaches the stream as fields. A backend head at the parser's limit (100 fields), with
    the field a middleware adds, is one field more than an HTTP/1.1 head the gateway parses may hold: rendered as
    text and parsed back, that stream was reset (INTERNAL_ERROR)."""
    backend = await start_backend(fields_backend)
    gw = await start_gateway(fields_config(backend.url))
    client = await H2Client.connect(gateway_port(gw))
    try:
        r = await client.request("GET", "/many")
        assert not r["reset"] and r["body"] == b"many"
        headers = r["headers"]
        assert headers[b":status"] == b"200" and headers[b"x-served-by"] == b"a3s"
        assert [headers[b"x-f%d" % i] for i in range(99)] == [b"v%d" % i for i in range(99)]
        assert headers[b"content-length"] == b"4"
    finally:
        client.close()


async def test_bodiless_responses_free_their_stream_at_once(start_gateway) -> None:
    """A response that ends with its HEADERS (204, HEAD, Content-Length: 0) ends its stream's exchange at once: the
    stream no longer counts against ``max_concurrent_streams`` (it did until ``idle_timeout``: more sequential
    requests than the limit on one connection were refused)."""
    backend = await start_backend(fields_backend)
    gw = await start_gateway(fields_config(backend.url, "max_concurrent_streams = 2"))
    client = await H2Client.connect(gateway_port(gw))
    try:
        for method, path, status in [("GET", "/204", b"204"), ("HEAD", "/x", b"200"), ("GET", "/zero", b"200")] * 2:
            r = await client.request(method, path)
            assert not r["reset"] and r["headers"][b":status"] == status and r["body"] == b"", (method, path)
            assert r["headers"][b"x-served-by"] == b"a3s"
        assert r["headers"][b"content-length"] == b"0"
        r = await client.request("GET", "/204")
        assert b"content-length" not in r["headers"] and r["headers"][b"x-kind"] == b"none"
    finally:
        client.close()


async def test_h2_responses_leave_the_exchange_as_fields_never_as_http1_text(start_gateway, monkeypatch) -> None:
    """Issue 17: no response head, chunk framing or gateway answer is written as HTTP/1.1 text for a stream; what
    the client gets is what it got before: 103 relayed (100 not), hop-by-hop fields and those Connection names
    out, trailers, the gateway's JSON errors."""
    from a3s_gateway.proxy import http2, responses, upstream

    rendered: list[str] = []

    def spy(module: object, name: str) -> None:
        real = getattr(module, name)

        def wrapper(*args: object, **kwargs: object) -> object:
            rendered.append(name)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("response_head", "interim_head", "chunk_frames", "last_chunk"):
        spy(upstream, name)
    for name in ("error_response", "grpc_error_response", "redirect_response"):
        spy(responses, name)
    if hasattr(http2, "_parser"):  # the old response side parsed the text back
        spy(http2._parser, "parse_response")
    backend = await start_backend(fields_backend)
    hcl = fields_config(backend.url).replace('rule        = "PathPrefix(`/`)"', 'rule        = "PathPrefix(`/h`)"')
    gw = await start_gateway(hcl)
    client = await H2Client.connect(gateway_port(gw))
    interim: list[list[tuple[bytes, bytes]]] = []
    real_receive = client.conn.receive_data

    def receive(data: bytes) -> list[object]:
        events = real_receive(data)
        interim.extend(e.headers for e in events if isinstance(e, h2.events.InformationalResponseReceived))
        return events

    client.conn.receive_data = receive  # type: ignore[method-assign]
    try:
        r = await client.request("GET", "/hints", headers=[("te", "trailers")])
        assert r["body"] == b"body" and r["trailers"] == {b"x-sum": b"7"}
        assert interim == [[(b":status", b"103"), (b"link", b"</a.css>; rel=preload")]]
        headers = r["headers"]
        assert headers[b"x-kept"] == b"yes" and headers[b"x-served-by"] == b"a3s"
        assert not {b"x-hop", b"keep-alive", b"connection", b"transfer-encoding"} & set(headers)
        r = await client.request("GET", "/nowhere")  # no route: the gateway's own 404
        assert r["headers"][b":status"] == b"404" and r["body"] == b'{"error":"No route matched"}'
        assert r["headers"][b"content-type"] == b"application/json" and r["headers"][b"content-length"] == b"28"
        assert b"date" in r["headers"]
    finally:
        client.close()
    assert rendered == []


async def test_a_stream_with_a_closed_window_pauses_its_upstream_only(start_gateway) -> None:
    """Flow control with the response as fields: a client that stops reading one stream (its window closed) stops
    the gateway reading that stream's backend response; its other streams are answered meanwhile."""
    sent = [0]
    total = 64 << 20

    async def huge(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        if req.target != "/huge":
            w.write(ok(b"other"))
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        piece = b"h" * 65536
        try:
            while sent[0] < total:
                w.write(piece)
                await w.drain()
                sent[0] += len(piece)
        except (ConnectionError, OSError):
            pass
        return False

    backend = await start_backend(huge)
    gw = await start_gateway(config(backend.url))
    client = await H2Client.connect(gateway_port(gw))
    client.conn.increment_flow_control_window(1 << 30)  # the connection's window stays open: the stream's closes
    held: set[int] = set()
    real_ack = client.conn.acknowledge_received_data

    def ack(length: int, sid: int) -> None:
        if sid not in held:
            real_ack(length, sid)

    client.conn.acknowledge_received_data = ack  # type: ignore[method-assign]
    try:
        sid = client.start("GET", "/huge")
        held.add(sid)
        for _ in range(200):
            if len(client.streams[sid]["body"]) >= 65535:
                break
            await asyncio.sleep(0.01)
        assert len(client.streams[sid]["body"]) == 65535  # the stream's window (not acknowledged)
        for i in range(3):  # other streams of the connection go on
            r = await client.request("GET", f"/o{i}")
            assert r["body"] == b"other"
        await asyncio.sleep(0.5)
        before = sent[0]
        await asyncio.sleep(0.5)
        assert sent[0] == before < total // 2  # the backend is not read: it cannot send more
        assert not client.streams[sid]["done"].is_set()
        client.reset(sid)
    finally:
        client.close()


async def test_gateway_answers_and_transformed_bodies_on_h2_streams(start_gateway) -> None:
    """The exchange's own answers reach a stream as fields with the values an HTTP/1.1 client gets: a middleware's
    403 (and to HEAD without body), 413 for a streamed body over the limit, 431 for a refused head; a compressed
    body goes out without content-length and ends with the stream."""
    import gzip

    async def text(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        body = b"word " * 1000
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

    backend = await start_backend(text)
    hcl = f'''
entrypoints "web" {{
  address = "127.0.0.1:0"
  max_headers = 20
}}
middlewares "deny" {{
  type = "ip-allow"
  allowed_ips = ["10.0.0.0/8"]
}}
middlewares "limit" {{
  type = "body-limit"
  max_body_bytes = 1000
}}
middlewares "zip" {{
  type = "compress"
}}
routers "deny" {{
  rule        = "PathPrefix(`/deny`)"
  service     = "s"
  middlewares = ["deny"]
}}
routers "rest" {{
  rule        = "PathPrefix(`/`)"
  service     = "s"
  middlewares = ["limit", "zip"]
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend.url}" }}] }}
}}
'''
    gw = await start_gateway(hcl)
    client = await H2Client.connect(gateway_port(gw))
    try:
        r = await client.request("GET", "/deny")
        assert r["headers"][b":status"] == b"403" and r["body"] == b'{"error":"Forbidden"}'
        assert r["headers"][b"content-length"] == b"21" and r["headers"][b"content-type"] == b"application/json"
        r = await client.request("HEAD", "/deny")
        assert r["headers"][b":status"] == b"403" and r["body"] == b"" and not r["reset"]
        r = await client.request("POST", "/up", b"x" * 5000, length=False)
        assert r["headers"][b":status"] == b"413" and b"Request body too large" in r["body"]
        r = await client.request("GET", "/many", headers=[(f"x-{i}", "1") for i in range(30)])
        assert r["headers"][b":status"] == b"431" and r["body"] == b'{"error":"Request header fields too large"}'
        r = await client.request("GET", "/zip", headers=[("accept-encoding", "gzip")])
        assert r["headers"][b":status"] == b"200" and r["headers"][b"content-encoding"] == b"gzip"
        assert b"content-length" not in r["headers"] and gzip.decompress(r["body"]) == b"word " * 1000
    finally:
        client.close()
