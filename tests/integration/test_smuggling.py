"""The smuggling corpus (tests/vectors/smuggling.py) through a gateway in-process and a raw-socket backend that
records every byte (issue 25; SPEC §5.3, §5.5, §5.7, §9.1).

For each vector: either the gateway answers the SPEC status (``Connection: close``, then EOF) and the backend
receives nothing, or the backend receives exactly one request that h11 (strict) and a lenient parser (the habits
of forgiving backends: bare LF, obs-fold, first Content-Length, "chunked" anywhere in Transfer-Encoding) read the
same way, whose bytes are the canonical serialisation of what both parsed — and whose method, target, body,
trailers and headers are what the gateway means to send. Hostile-backend vectors check what the client receives.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h11
import pytest

from support import gateway_port
from vectors.smuggling import H2, VECTORS, Forward, Hostile, Reject, Reset, Vector

HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer",
       "transfer-encoding", "content-length", "upgrade", "expect"}
ADDED = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-real-ip", "x-request-id",
         "traceparent", "b3"}  # the trace context of the default tracing propagation (w3c, b3)
WAIT = 5.0


# --- the lenient parser ---------------------------------------------------------------------------------------------


class Lenient(Exception):
    pass


@dataclass
class Message:
    start: str
    headers: list[tuple[str, str]]
    body: bytes
    chunks: list[bytes] | None  # chunk payloads as framed (None: Content-Length or no body)
    trailers: list[tuple[str, str]]
    length: int  # bytes of the wire this message took


def _lines(data: bytes, pos: int) -> tuple[list[str], int]:
    """Header-section lines from ``pos``: LF ends a line, a CR before it is dropped, a fold joins the last line."""
    out: list[str] = []
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise Lenient("incomplete head")
        line = data[pos:end].rstrip(b"\r").decode("latin-1")
        pos = end + 1
        if not line:
            return out, pos
        if line[0] in " \t" and out:
            out[-1] += " " + line.strip()
        else:
            out.append(line)


def lenient_parse(data: bytes, response: bool = False, bodiless: bool = False) -> Message:
    """One message from the start of ``data`` the way a forgiving peer reads it; Lenient when incomplete."""
    lines, pos = _lines(data, 0)
    if not lines:
        raise Lenient("empty")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    get = {k.lower(): v for k, v in reversed(headers)}  # the first occurrence wins
    if bodiless:
        return Message(lines[0], headers, b"", None, [], pos)
    if "chunked" in get.get("transfer-encoding", "").lower():
        body, chunks, trailers = b"", [], []
        while True:
            end = data.find(b"\n", pos)
            if end < 0:
                raise Lenient("incomplete chunk size")
            size = int(data[pos:end].split(b";")[0].strip() or b"x", 16)
            pos = end + 1
            if size == 0:
                tl, pos = _lines(data, pos)
                trailers = [(k.strip(), v.strip()) for k, _, v in (t.partition(":") for t in tl)]
                return Message(lines[0], headers, body, chunks, trailers, pos)
            if len(data) < pos + size + 1:
                raise Lenient("incomplete chunk")
            chunks.append(data[pos : pos + size])
            body += data[pos : pos + size]
            pos += size
            pos += 2 if data[pos : pos + 2] == b"\r\n" else 1
    if "content-length" in get:
        n = int(get["content-length"].split(",")[0])
        if len(data) < pos + n:
            raise Lenient("incomplete body")
        return Message(lines[0], headers, data[pos : pos + n], None, [], pos + n)
    if response:
        return Message(lines[0], headers, data[pos:], None, [], len(data))
    return Message(lines[0], headers, b"", None, [], pos)


def canonical(m: Message) -> bytes:
    """The message's bytes as a strict sender writes them: CRLF, ``name: value``, minimal chunk sizes."""
    out = [m.start.encode("latin-1"), b"\r\n"]
    out += [k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for k, v in m.headers]
    out.append(b"\r\n")
    if m.chunks is None:
        out.append(m.body)
    else:
        out += [b"%x\r\n%s\r\n" % (len(c), c) for c in m.chunks]
        out.append(b"0\r\n")
        out += [k.encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n" for k, v in m.trailers]
        out.append(b"\r\n")
    return b"".join(out)


# --- the strict parser ----------------------------------------------------------------------------------------------


@dataclass
class Strict:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]
    complete: bool
    trailing: bytes


def strict_parse(data: bytes) -> Strict | None:
    """h11's reading of the bytes a backend received: one request and what follows it (None: no request head)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")  # EOF: the gateway closed the connection
    req: h11.Request | None = None
    body, trailers = b"", []
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None if req is None else Strict(*_fields(req), body, trailers, False, b"")
        if isinstance(event, h11.Request):
            req = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert req is not None
            trailers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
            return Strict(*_fields(req), body, trailers, True, conn.trailing_data[0])
        elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
            return None if req is None else Strict(*_fields(req), body, trailers, False, b"")


def _fields(req: h11.Request) -> tuple[str, str, list[tuple[str, str]]]:
    return (req.method.decode("latin-1"), req.target.decode("latin-1"),
            [(k.decode("latin-1"), v.decode("latin-1")) for k, v in req.headers.raw_items()])


# --- the recording backend ------------------------------------------------------------------------------------------

CLEAN = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"


@dataclass
class Recorder:
    """A raw-socket backend: records the bytes of every connection, answers each request the lenient parser
    completes (the first one with ``first`` when set, later ones with ``second``)."""

    first: bytes | None = None
    close_after_first: bool = False
    received: list[bytearray] = field(default_factory=list)
    answered: int = 0
    server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self) -> Recorder:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        self.received.append(buf)
        pos = 0
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buf += data
                while True:
                    try:
                        m = lenient_parse(bytes(buf[pos:]), bodiless=buf[pos:].startswith(b"HEAD "))
                    except (Lenient, ValueError):
                        break
                    pos += m.length
                    self.answered += 1
                    if self.answered == 1 and self.first is not None:
                        writer.write(self.first)
                        if self.close_after_first:
                            await writer.drain()
                            writer.close()
                            return
                    else:
                        body = b"second" if self.first is not None else b"ok"
                        writer.write(CLEAN % (len(body), body))
        except ConnectionError:
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def all_bytes(self) -> bytes:
        return b"".join(bytes(b) for b in self.received)


def config(backend_url: str) -> str:
    return f'''
entrypoints "web" {{
  address             = "127.0.0.1:0"
  header_read_timeout = "2s"
  idle_timeout        = "3s"
}}
routers "r" {{
  rule    = "PathPrefix(`/`) || Path(`*`)"
  service = "s"
}}
services "s" {{
  load_balancer {{ servers = [{{ url = "{backend_url}" }}] }}
  transport {{ response_header_timeout = "3s" }}
}}
'''


# --- the client side ------------------------------------------------------------------------------------------------


async def read_all(reader: asyncio.StreamReader, timeout: float = WAIT) -> bytes:
    """Everything until EOF (the gateway closes after an error) or ``timeout`` of silence."""
    out = b""
    while True:
        try:
            data = await asyncio.wait_for(reader.read(65536), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            return out
        except ConnectionError:
            return out
        if not data:
            return out
        out += data


def responses(data: bytes, head_request: bool = False) -> list[h11.Response | h11.InformationalResponse | bytes]:
    """The client's reading (h11) of the bytes it received: each response head, then its body as bytes."""
    conn = h11.Connection(h11.CLIENT)
    out: list[h11.Response | h11.InformationalResponse | bytes] = []
    method = b"HEAD" if head_request else b"GET"
    for _ in range(3):
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        body = b""
        while True:
            event = conn.next_event()
            if isinstance(event, (h11.Response, h11.InformationalResponse)):
                out.append(event)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                out.append(body)
                break
            else:
                raise AssertionError(f"incomplete response: {event!r} after {out!r}")
        data = conn.trailing_data[0]
        if not data or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            return out
        conn.start_next_cycle()
    return out


def finals(parsed: list[h11.Response | h11.InformationalResponse | bytes]) -> list[tuple[h11.Response, bytes]]:
    out = []
    for i, item in enumerate(parsed):
        if isinstance(item, h11.Response):
            body = parsed[i + 1]
            assert isinstance(body, bytes)
            out.append((item, body))
    return out


def header(resp: h11.Response, name: str) -> str | None:
    for k, v in resp.headers:
        if k.decode() == name:
            return v.decode("latin-1")
    return None


def check_reject(expect: Reject, got: tuple[h11.Response, bytes]) -> None:
    resp, body = got
    assert resp.status_code == expect.status, (resp, body)
    assert header(resp, "connection") == "close"
    assert json.loads(body)["error"] in expect.messages, body


def check_backend_got_nothing(backend: Recorder, partial: bool) -> None:
    data = backend.all_bytes()
    if not partial:
        assert data == b"", data
        return
    for conn_bytes in backend.received:  # an aborted request: never complete for either reader
        strict = strict_parse(bytes(conn_bytes))
        assert strict is None or not strict.complete, conn_bytes
        with pytest.raises((Lenient, ValueError)):
            lenient_parse(bytes(conn_bytes))


def expected_headers(raw: bytes) -> list[tuple[str, str]]:
    """The client's header lines that pass to the backend: all but hop-by-hop, Expect, Connection-named and the
    forwarding headers the gateway sets itself (used only for the well-formed requests of Forward vectors)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    fields = [(k, v.strip(" \t")) for k, _, v in (line.partition(":") for line in head)]
    named = {t.strip().lower() for k, v in fields if k.lower() == "connection" for t in v.split(",")}
    return [(k, v) for k, v in fields if k.lower() not in HOP | ADDED and k.lower() not in named - {"host"}]


def check_forward(v: Vector, expect: Forward, backend: Recorder, port: int) -> None:
    assert len(backend.received) == 1, backend.received
    data = bytes(backend.received[0])
    strict = strict_parse(data)
    assert strict is not None and strict.complete, data
    assert strict.trailing == b"", f"bytes after the request: {strict.trailing!r}"
    lenient = lenient_parse(data)
    assert lenient.length == len(data), "the lenient reader sees more than one request"
    # both readers agree on the framing and the fields
    assert lenient.start == f"{strict.method} {strict.target} HTTP/1.1"
    assert lenient.headers == strict.headers
    assert lenient.body == strict.body
    assert lenient.trailers == strict.trailers
    # and the bytes are their canonical serialisation: nothing on the wire that either reader glossed over
    assert canonical(lenient) == data
    # what the gateway means to send
    assert (strict.method, strict.target, strict.body) == (expect.method, expect.target, expect.body)
    names = [k.lower() for k, _ in strict.headers]
    if expect.chunked:
        assert lenient.chunks is not None and "content-length" not in names
        assert [v for k, v in strict.headers if k.lower() == "transfer-encoding"] == ["chunked"]
    else:
        assert "transfer-encoding" not in names
        lengths = [v for k, v in strict.headers if k.lower() == "content-length"]
        assert lengths == ([str(len(expect.body))] if expect.body or expect.method == "POST" else [])
    assert strict.trailers == list(expect.trailers)
    for name in expect.absent:
        if expect.headers is None or name not in {k.lower() for k, _ in expect.headers}:
            assert name not in names, (name, strict.headers)
    passed = [(k, v) for k, v in strict.headers if k.lower() not in ADDED | {"content-length", "transfer-encoding"}]
    if expect.headers is not None:
        backend_host = f"127.0.0.1:{backend.port}"
        assert passed == [(k, val.replace("{backend}", backend_host)) for k, val in expect.headers]
    else:
        assert isinstance(v.send, bytes)
        assert passed == expected_headers(v.send)
    added = {k.lower(): val for k, val in strict.headers if k.lower() in ADDED}
    assert added["x-forwarded-for"].split(", ")[-1] == "127.0.0.1" and added["x-real-ip"] == "127.0.0.1"
    assert added["x-forwarded-proto"] == "http" and added["x-forwarded-port"] == str(port)
    assert re.fullmatch(r"[0-9a-f]{32}", added["x-request-id"])
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", added["traceparent"])
    assert re.fullmatch(r"[0-9a-f]{32}-[0-9a-f]{16}-1", added["b3"])
    assert len(strict.headers) == len(passed) + len(added) + (expect.chunked or "content-length" in names)


async def read_finals(reader: asyncio.StreamReader, n: int, head_request: bool = False) -> tuple[
        list[tuple[h11.Response, bytes]], bytes]:
    """Read until ``n`` complete final responses (as h11 reads them) or EOF; returns them and the bytes."""
    data = b""
    while True:
        try:
            got = finals(responses(data, head_request))
            if len(got) >= n:
                return got, data
        except (AssertionError, h11.RemoteProtocolError):
            pass
        try:
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
        except ConnectionError:
            chunk = b""
        if not chunk:
            return finals(responses(data, head_request)), data
        data += chunk


async def run_h1(v: Vector, port: int, backend: Recorder) -> None:
    assert isinstance(v.send, bytes)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(v.send)
    closes = isinstance(v.expect, Reject) or (isinstance(v.expect, Forward) and v.expect.then is not None)
    if closes:  # an error answer: then the gateway closes the connection
        data = await read_all(reader)
        got = finals(responses(data))
    else:
        got, data = await read_finals(reader, 1)
    writer.close()
    if isinstance(v.expect, Reject):
        assert len(got) == 1, got
        check_reject(v.expect, got[0])
        check_backend_got_nothing(backend, v.expect.partial)
        return
    assert isinstance(v.expect, Forward)
    assert got[0][0].status_code == 200 and got[0][1] == b"ok", got
    if v.expect.then is not None:
        assert len(got) == 2, got
        assert got[1][0].status_code == v.expect.then and header(got[1][0], "connection") == "close"
    else:
        assert len(got) == 1, got
    check_forward(v, v.expect, backend, port)


async def run_h2(v: Vector, port: int, backend: Recorder) -> None:
    assert isinstance(v.send, H2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False,
        split_outbound_cookies=False, validate_inbound_headers=False))
    conn.initiate_connection()
    sid = 1
    fields = [(k.encode("latin-1"), val.encode("latin-1")) for k, val in v.send.fields]
    conn.send_headers(sid, fields, end_stream=not v.send.data and not v.send.trailers)
    for i, chunk in enumerate(v.send.data):
        conn.send_data(sid, chunk, end_stream=i == len(v.send.data) - 1 and not v.send.trailers)
    if v.send.trailers:
        conn.send_headers(sid, [(k.encode(), val.encode()) for k, val in v.send.trailers], end_stream=True)
    writer.write(conn.data_to_send())
    status, body, reset = None, b"", None
    done = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not done and loop.time() < deadline:
        try:
            data = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
        except (asyncio.TimeoutError, TimeoutError):
            break
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                reset, done = event.error_code, True
            elif isinstance(event, (h2.events.StreamEnded, h2.events.ConnectionTerminated)):
                done = True
        writer.write(conn.data_to_send())
    writer.close()
    if isinstance(v.expect, Reset):
        assert reset == h2.errors.ErrorCodes.PROTOCOL_ERROR or status in v.expect.statuses, (status, reset, body)
        check_backend_got_nothing(backend, partial=True)
        return
    assert isinstance(v.expect, Forward)
    assert (status, body, reset) == (200, b"ok", None)
    check_forward(v, v.expect, backend, port)


async def run_hostile(v: Vector, port: int) -> None:
    hostile = v.send
    assert isinstance(hostile, Hostile)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{hostile.method} /1 HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    if hostile.truncated:
        data = await read_all(reader)
        head = data.partition(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 %d " % hostile.status), data
        with pytest.raises((AssertionError, h11.RemoteProtocolError)):
            responses(data)  # the connection ended before the message did
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    else:
        got, data = await read_finals(reader, 1, head_request=hostile.method == "HEAD")
        assert len(got) == 1, (got, data)
        resp, body = got[0]
        assert resp.status_code == hostile.status, data
        assert body == (hostile.body if hostile.status != 502 else body)
        lenient = lenient_parse(data, response=True, bodiless=hostile.method == "HEAD" or hostile.status in (204, 304))
        assert lenient.length == len(data) or (lenient.length < len(data) and data[lenient.length:].startswith(
            b"HTTP/1.1 ")), data  # the lenient reader sees the same response first
        if b"hacked" not in hostile.body:
            assert b"hacked" not in data
        for name in hostile.absent:
            assert header(resp, name) is None, resp
        if header(resp, "connection") == "close":
            assert await read_all(reader, 2) == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # the next request gets the backend's next response, never bytes smuggled after the first
    writer.write(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    got, data = await read_finals(reader, 1)
    writer.close()
    assert [(r.status_code, b) for r, b in got] == [(200, b"second")], data


@pytest.mark.parametrize("v", VECTORS, ids=[v.name for v in VECTORS])
async def test_vector(v: Vector, start_gateway) -> None:
    hostile = v.send if isinstance(v.send, Hostile) else None
    backend = await Recorder(first=hostile.response if hostile else None,
                             close_after_first=bool(hostile and hostile.close)).start()
    gw = await start_gateway(config(backend.url))
    port = gateway_port(gw)
    try:
        if hostile is not None:
            await run_hostile(v, port)
        elif isinstance(v.send, H2):
            await run_h2(v, port, backend)
        else:
            await run_h1(v, port, backend)
    finally:
        await gw.shutdown(0.2)
        assert backend.server is not None
        backend.server.close()
