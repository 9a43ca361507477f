"""The admin listener: the dashboard API of SPEC §11.1, one ``asyncio.Protocol`` per connection.

Control plane, plain Python (not compiled: it serves a dashboard, not traffic). Every endpoint is synchronous, so a
connection answers pipelined requests in order straight from ``data_received``: no task per request, one write per
response, reading paused while the client does not read its answers. The request parser is the data plane's
(``http.parser``), so the admin port is exactly as strict as the proxy ports.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast
from urllib.parse import unquote_to_bytes

import orjson

from ..errors import ProtocolError
from ..http.parser import parse_request
from ..middleware.chain import Chain, Reply, Request, Response
from ..proxy import responses

__all__ = ["AdminServer", "AdminSource"]

log = logging.getLogger("a3s_gateway.admin")


MAX_REQUEST_LINE_BYTES: Final = 8 * 1024
MAX_HEADER_BYTES: Final = 32 * 1024
MAX_HEADERS: Final = 100
#: a request body up to this size is read and dropped; a larger or chunked one ends the connection after the answer
MAX_DISCARD_BYTES: Final = 64 * 1024
HEAD_TIMEOUT: Final = 10.0
IDLE_TIMEOUT: Final = 60.0
#: after the last response of a connection that may still be sending: how long to drain before closing
LINGER_TIMEOUT: Final = 2.0


class AdminSource(Protocol):
    """What the admin API shows; implemented by the Gateway. Every dict is JSON-serialisable by orjson."""

    def health(self) -> dict[str, Any]:
        """Health body (SPEC §11.1); ``state`` decides 200 or 503."""
        ...

    def metrics_text(self) -> bytes:
        """Prometheus text exposition."""
        ...

    def config_dict(self) -> dict[str, Any]:
        """Effective configuration, secrets already redacted."""
        ...

    def routes(self) -> list[dict[str, Any]]:
        """Routes in matching order; each has ``name``."""
        ...

    def services(self) -> list[dict[str, Any]]:
        """Services sorted by name; each has ``name``."""
        ...

    def backends(self) -> list[dict[str, Any]]:
        """All backends, sorted by service then URL."""
        ...

    def version(self) -> dict[str, Any]:
        """Name, version, Python version, compiled flag."""
        ...


# ---- responses --------------------------------------------------------------------------------------------------

_JSON: Final = b"application/json"
_TEXT: Final = b"text/plain; version=0.0.4; charset=utf-8"
_ALLOW: Final = b"Allow: GET, HEAD\r\n"
_NO_STORE: Final = b"Cache-Control: no-store\r\n"
_CLOSE: Final = b"Connection: close\r\n"
_KEEP_ALIVE: Final = b"Connection: keep-alive\r\n"  # told to HTTP/1.0 clients, for which it is not the default
_HEALTHY_STATES: Final = frozenset(("running", "reloading"))
_STATUS_LINES: Final = {
    s: b"HTTP/1.1 %d %s\r\n" % (s, b"OK" if s == 200 else responses.reason(s))
    for s in (200, 400, 404, 405, 408, 413, 414, 431, 500, 501, 503, 505)
}

#: (status, content type, body, extra header lines)
Result = tuple[int, bytes, bytes, bytes]


def _error(status: int, message: str, extra: bytes = b"") -> Result:
    return status, _JSON, orjson.dumps({"error": message}), extra


_NOT_FOUND: Final = _error(404, "Not found")
_ROUTE_NOT_FOUND: Final = _error(404, "Route not found")
_SERVICE_NOT_FOUND: Final = _error(404, "Service not found")
_METHOD_NOT_ALLOWED: Final = _error(405, "Method not allowed", _ALLOW)
_INTERNAL_ERROR: Final = _error(500, "Internal error")


def _serialize(result: Result, *, head_only: bool, keep_alive: bool, http10: bool) -> bytes:
    """The bytes of one response: head and body in one buffer."""
    status, ctype, body, extra = result
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, responses.reason(status))
    head = b"%sContent-Type: %s\r\nContent-Length: %d\r\n%s%s%s%s\r\n" % (
        line,
        ctype,
        len(body),
        _NO_STORE,
        extra,
        _CLOSE if not keep_alive else _KEEP_ALIVE if http10 else b"",
        responses.date_line(),
    )
    return head if head_only else head + body


# ---- endpoints --------------------------------------------------------------------------------------------------

Handler = Callable[[AdminSource], Result]


def _ok(value: object) -> Result:
    return 200, _JSON, orjson.dumps(value), b""


def _health(source: AdminSource) -> Result:
    health = source.health()
    return 200 if health.get("state") in _HEALTHY_STATES else 503, _JSON, orjson.dumps(health), b""


def _metrics(source: AdminSource) -> Result:
    return 200, _TEXT, source.metrics_text(), b""


def _named(items: Callable[[AdminSource], list[dict[str, Any]]], raw: bytes, missing: Result) -> Handler:
    """Handler for one item of a collection by its percent-encoded ``raw`` name."""

    def handler(source: AdminSource) -> Result:
        try:
            name = unquote_to_bytes(raw).decode()
        except UnicodeDecodeError:  # names are text: invalid UTF-8 names nothing
            return missing
        for item in items(source):
            if item.get("name") == name:
                return _ok(item)
        return missing

    return handler


_EXACT: Final[dict[bytes, Handler]] = {
    b"/api/gateway/health": _health,
    b"/api/gateway/metrics": _metrics,
    b"/metrics": _metrics,
    b"/api/gateway/config": lambda s: _ok(s.config_dict()),
    b"/api/gateway/routes": lambda s: _ok(s.routes()),
    b"/api/gateway/services": lambda s: _ok(s.services()),
    b"/api/gateway/backends": lambda s: _ok(s.backends()),
    b"/api/gateway/version": lambda s: _ok(s.version()),
}
_COLLECTIONS: Final[tuple[tuple[bytes, Callable[[AdminSource], list[dict[str, Any]]], Result], ...]] = (
    (b"/api/gateway/routes/", lambda s: s.routes(), _ROUTE_NOT_FOUND),
    (b"/api/gateway/services/", lambda s: s.services(), _SERVICE_NOT_FOUND),
)


def resolve(path: bytes) -> Handler | None:
    """The handler of a request path (query already removed; one trailing ``/`` ignored), None when unknown."""
    if len(path) > 1 and path[-1] == 0x2F:
        path = path[:-1]
    handler = _EXACT.get(path)
    if handler is not None:
        return handler
    for prefix, items, missing in _COLLECTIONS:
        if path.startswith(prefix):
            raw = path[len(prefix) :]
            if not raw or b"/" in raw:  # a name is one segment; an encoded "/" is %2F
                return None
            return _named(items, raw, missing)
    return None


# ---- connections ------------------------------------------------------------------------------------------------

_READING: Final = 0  # parsing heads and answering them
_LINGER: Final = 1  # last response written, write side shut: dropping input until the peer closes
_CLOSED: Final = 2
_BUSY: Final = 3  # a request is in the admin middlewares' async request phase: later ones wait (order kept)

_T_NONE: Final = 0
_T_HEAD: Final = 1
_T_IDLE: Final = 2
_T_LINGER: Final = 3


class _AdminConnection(asyncio.Protocol):
    """One client connection of the admin listener."""

    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._state = _READING
        self._buf = b""
        self._discard = 0  # bytes of the current request body still to drop
        self._write_paused = False
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._tkind = _T_NONE
        self._peer = ""

    # -- asyncio.Protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if self._server.closed:
            self._transport.abort()
            return
        self._server.connections.add(self)
        peer = self._transport.get_extra_info("peername")
        if peer:
            host = str(peer[0])
            self._peer = host[7:] if host.startswith("::ffff:") and "." in host else host
        self._arm(_T_HEAD, self._server.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._transport = None
        self._arm(_T_NONE, 0.0)
        self._server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self._state != _READING and self._state != _BUSY:
            return  # lingering: input after the last response is dropped
        self._buf = self._buf + data if self._buf else data
        if self._state == _READING:
            self._process()  # while _BUSY, later requests wait for the one in the middlewares

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._state == _READING and self._write_paused and self._buf:
            return True  # answer what was already received once the client reads again; _process closes
        return None  # close (buffered responses are flushed first)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        transport = self._transport
        if transport is None or self._state == _CLOSED:
            return
        if not self._eof:
            transport.resume_reading()
        if self._state == _READING:
            self._process()

    # -- requests -------------------------------------------------------------------------------------------
    def _process(self) -> None:
        """Answer every complete request in the buffer, in order, while the client reads its answers."""
        answered = False
        while self._state == _READING and not self._write_paused:
            if self._discard:
                take = min(self._discard, len(self._buf))
                self._discard -= take
                self._buf = self._buf[take:]
                if self._discard:
                    break
            if not self._buf:
                break
            try:
                head = parse_request(self._buf, MAX_REQUEST_LINE_BYTES, MAX_HEADER_BYTES, MAX_HEADERS)
            except ProtocolError as e:
                self._reject(e)
                return
            if head is None:
                break
            self._buf = self._buf[head.head_len :]
            answered = True
            self._answer(head)
        if self._state != _READING:
            return
        if self._eof and (not self._buf or not self._write_paused):
            self._close()
        elif self._buf or self._discard:
            if answered or self._tkind != _T_HEAD:  # a head (or body) has begun: it must finish in time
                self._arm(_T_HEAD, self._server.head_timeout)
        elif answered or self._tkind != _T_IDLE:
            self._arm(_T_IDLE, self._server.idle_timeout)

    def _answer(self, head: Any) -> None:
        chain = self._server.chain
        if chain is None and self._server.refresh is None:
            self._answer_with(head, self._endpoint(head))
            return
        # admin { middlewares = [...] } (SPEC §3.6): the same request and response phases as a router's chain
        req = None
        if chain is not None:
            req = Request(head.method, head.path, head.query, head.host, list(head.headers), self._peer, "@admin",
                          b"http", -1 if head.chunked else max(head.content_length, 0), len(chain.middlewares))
        if self._server.refresh is not None or (chain is not None and chain.has_async):
            self._state = _BUSY
            task = self._server.loop.create_task(self._answer_async(head, chain, req))
            self._server.tasks.add(task)
            task.add_done_callback(self._server.tasks.discard)
            return
        assert chain is not None and req is not None
        now = self._server.loop.time()
        for i, mw in enumerate(chain.middlewares):
            if mw.has_request:
                reply = mw.request(req, now)
                if reply is not None:
                    self._answer_with(head, self._phase(chain, req, _from_reply(reply), i))
                    return
        self._answer_with(head, self._phase(chain, req, self._endpoint(head), len(chain.middlewares)))

    async def _answer_async(self, head: Any, chain: Chain | None, req: Request | None) -> None:
        result: Result | None = None
        try:
            refresh = self._server.refresh
            if refresh is not None:
                await refresh()  # a supervisor gathers its workers' numbers first (SPEC §13.4)
            if chain is None or req is None:
                result = self._endpoint(head)
            for i, mw in enumerate(chain.middlewares if chain is not None and req is not None else ()):
                assert chain is not None and req is not None
                if mw.has_request or mw.is_async:
                    now = self._server.loop.time()
                    reply = await mw.request_async(req, now) if mw.is_async else mw.request(req, now)
                    if reply is not None:
                        result = self._phase(chain, req, _from_reply(reply), i)
                        break
            if result is None and chain is not None and req is not None:
                result = self._phase(chain, req, self._endpoint(head), len(chain.middlewares))
        except Exception:
            log.exception("admin: middleware failed")
            result = _INTERNAL_ERROR
        if self._state != _BUSY or self._transport is None:
            return
        self._state = _READING
        self._answer_with(head, result if result is not None else _INTERNAL_ERROR)
        if self._state == _READING:
            self._process()

    def _phase(self, chain: Chain, req: Request, result: Result, upto: int) -> Result:
        """``result`` after the response phase of the middlewares before ``upto``."""
        status, ctype, body, extra = result
        headers = [(b"Content-Type", ctype)]
        for line in extra.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                headers.append((name, value))
        resp = Response(status, headers, True)
        chain.run_response(req, resp, upto, self._server.loop.time())
        ctype = b""
        lines = []
        for name, value in resp.headers:
            low = name.lower()
            if low == b"content-type":
                ctype = value
            elif low not in (b"content-length", b"connection", b"date", b"cache-control"):
                lines.append(name + b": " + value + b"\r\n")
        return status, ctype or _JSON, body, b"".join(lines)

    def _endpoint(self, head: Any) -> Result:
        method = head.method
        handler = resolve(head.path)
        if handler is None:
            return _NOT_FOUND
        if method != b"GET" and method != b"HEAD":
            return _METHOD_NOT_ALLOWED
        try:
            return handler(self._server.source)
        except Exception:  # the source's failure is answered and logged here, once; the listener keeps serving
            log.exception("admin: %s %s failed", method.decode("latin-1"), head.path.decode("latin-1"))
            return _INTERNAL_ERROR

    def _answer_with(self, head: Any, result: Result) -> None:
        # A body is dropped only when its end is known and near; with Expect: 100-continue the client may or may
        # not send it after a final answer, so the connection cannot be reused either.
        length = head.content_length
        reusable = not head.chunked and length <= MAX_DISCARD_BYTES and not (length > 0 and head.expect_continue)
        keep_alive = head.keep_alive and reusable
        method = head.method
        assert self._transport is not None
        self._transport.write(
            _serialize(result, head_only=method == b"HEAD", keep_alive=keep_alive, http10=head.version == 0)
        )
        if not keep_alive:
            self._finish(drain_input=not reusable or length > 0)
        elif length > 0:
            self._discard = length

    def _reject(self, e: ProtocolError) -> None:
        """Answer a malformed request and close: the framing of what follows is unknown."""
        result = _error(e.status, e.message, _ALLOW if e.status == 405 else b"")
        assert self._transport is not None
        self._transport.write(_serialize(result, head_only=False, keep_alive=False, http10=False))
        self._finish(drain_input=True)

    def _finish(self, *, drain_input: bool) -> None:
        """Close after the last response.

        When the client may still be sending (a body not read, a bad head), closing at once would reset the
        connection and could destroy the response before it is read: shut the write side instead, drop input until
        the client closes or ``LINGER_TIMEOUT`` passes.
        """
        self._buf = b""
        self._discard = 0
        transport = self._transport
        if transport is None:
            return
        if drain_input and not self._eof and transport.can_write_eof():
            self._state = _LINGER
            transport.write_eof()
            self._arm(_T_LINGER, LINGER_TIMEOUT)
        else:
            self._close()

    def _close(self) -> None:
        self._state = _CLOSED
        self._arm(_T_NONE, 0.0)
        if self._transport is not None:
            self._transport.close()

    def shutdown(self) -> None:
        """Close now: flush what is buffered unless the client stopped reading."""
        self._state = _CLOSED
        self._arm(_T_NONE, 0.0)
        transport = self._transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    # -- timer ----------------------------------------------------------------------------------------------
    def _arm(self, kind: int, delay: float) -> None:
        """One timer per connection: replace the current one by ``kind`` after ``delay`` s (``_T_NONE`` cancels)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._tkind = kind
        if kind != _T_NONE:
            self._timer = self._server.loop.call_later(delay, self._expired)

    def _expired(self) -> None:
        # head not complete in time, idle keep-alive, or a peer that never closes while lingering: nothing to answer
        self._timer = None
        self._tkind = _T_NONE
        self._state = _CLOSED
        if self._transport is not None:
            self._transport.abort()


def _from_reply(reply: Reply) -> Result:
    """A middleware's reply as an admin result (content type split out, other headers as lines)."""
    ctype = b""
    lines = []
    for name, value in reply.headers:
        if name.lower() == b"content-type":
            ctype = value
        else:
            lines.append(name + b": " + value + b"\r\n")
    return reply.status, ctype or _JSON, reply.body, b"".join(lines)


# ---- listener ---------------------------------------------------------------------------------------------------


class AdminServer:
    """The admin listener (SPEC §11.1) over an :class:`AdminSource`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        source: AdminSource,
        *,
        head_timeout: float = HEAD_TIMEOUT,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.source = source
        self.head_timeout = head_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[_AdminConnection] = set()
        self.closed = False
        #: admin { middlewares } compiled (None: none); the gateway replaces it on reload
        self.chain: Chain | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        #: awaited before each request is answered (a supervisor collects its workers' counters), or None
        self.refresh: Callable[[], Awaitable[None]] | None = None
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and start accepting (raises OSError); port 0 picks a free port."""
        self._server = await self.loop.create_server(lambda: _AdminConnection(self), self.host or None, self.port)

    def bound_address(self) -> tuple[str, int]:
        """The actual (host, port) of the first listening socket."""
        server = self._server
        if server is None:
            raise RuntimeError("admin server not started")
        addr = server.sockets[0].getsockname()
        return (self.host or str(addr[0]), int(addr[1]))

    def exposed(self) -> bool:
        """Whether a listening socket accepts connections from other hosts (bound to a non-loopback address)."""
        server = self._server
        if server is None:
            return False
        for sock in server.sockets:
            host = str(sock.getsockname()[0]).partition("%")[0]  # an IPv6 scope id is not part of the address
            try:
                if not ipaddress.ip_address(host).is_loopback:
                    return True
            except ValueError:  # not an IP (a Unix socket path): reachable from this host only
                continue
        return False

    async def close(self) -> None:
        """Stop accepting and close every connection."""
        self.closed = True
        server = self._server
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        self.connections.clear()
        if server is not None:
            await server.wait_closed()
