"""A minimal asyncio HTTP/1.1 client for the control plane: forward-auth requests, JWKS fetches, active health
probes, the scaling executors' APIs.

One request per connection (``Connection: close``), no redirects, no pooling: these peers are called with small
bodies, and the caller bounds the whole exchange with one timeout. Responses are read with the proxy's own strict
parser (the compiled head scanner and chunked decoder, or their pure twins): the body may be framed by
``Content-Length``, chunked, or the end of the connection, and is bounded.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Final, Protocol
from urllib.parse import urlsplit

from ..errors import ProtocolError as WireError
from ..observability.redact import redact_url
from . import parser


class TlsSettings(Protocol):
    """The upstream TLS keys of a service's ``transport`` block (``config.model.TransportConfig`` has them)."""

    @property
    def tls_insecure_skip_verify(self) -> bool: ...

    @property
    def tls_ca_file(self) -> str: ...

MAX_HEAD: Final = 64 * 1024
MAX_BODY: Final = 1 << 20
_BODY_METHODS: Final = frozenset((b"POST", b"PUT", b"PATCH"))


class FetchError(Exception):
    """The exchange failed (not a timeout: the caller's ``wait_for`` reports those)."""


class ConnectError(FetchError):
    """TCP connect, DNS resolution or TLS handshake failed."""


class ProtocolError(FetchError):
    """The connection broke or the peer's response was malformed or too large."""


class Target:
    """An http(s) URL prepared at configuration time: address, TLS context, ``Host`` value and request target.

    ``url`` is the URL as logs and errors may show it: its password and credential query values are redacted
    (SPEC §11.1); the request itself is sent from the other attributes.
    """

    __slots__ = ("host", "host_header", "port", "server_name", "ssl", "target", "url")

    def __init__(self, url: str, ssl_context: ssl.SSLContext | None = None, server_name: str = "") -> None:
        parts = urlsplit(url)
        shown = redact_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid URL {shown!r}; expected an http:// or https:// URL")
        tls = parts.scheme == "https"
        default_port = 443 if tls else 80
        self.url = shown
        self.host = parts.hostname
        self.port = parts.port or default_port
        self.server_name = server_name or self.host  # TLS SNI and verified name
        self.ssl: ssl.SSLContext | None = (ssl_context or ssl.create_default_context()) if tls else None
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = (name if self.port == default_port else f"{name}:{self.port}").encode("idna")
        path = parts.path or "/"
        self.target = (path if not parts.query else f"{path}?{parts.query}").encode("ascii")


class Result:
    """A complete response: status, headers (raw-case names, in order) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def get(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or None."""
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


async def fetch(
    target: Target, method: bytes, headers: list[tuple[bytes, bytes]], max_body: int = MAX_BODY, *,
    body: bytes = b"",
) -> Result:
    """Send one request (``Host`` and ``Connection: close`` are added) and read the response.

    ``body`` is sent with a ``Content-Length`` (the caller supplies ``Content-Type``); POST, PUT and PATCH always
    carry one, ``0`` when ``body`` is empty, so servers neither wait for a body nor answer 411. A ``Content-Length``
    in ``headers`` is kept instead and must match ``body``.
    """
    try:
        reader, writer = await asyncio.open_connection(
            target.host, target.port, ssl=target.ssl, server_hostname=target.server_name if target.ssl else None,
            limit=MAX_HEAD,
        )
    except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
        raise ConnectError(f"{target.host}:{target.port}: {exc}") from exc
    try:
        head = [method, b" ", target.target, b" HTTP/1.1\r\nHost: ", target.host_header, b"\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        # a caller that frames its own (empty) body, like forward-auth's POST, keeps its header
        if (body or method in _BODY_METHODS) and not any(n.lower() == b"content-length" for n, _ in headers):
            head += (b"Content-Length: ", b"%d" % len(body), b"\r\n")
        head += (b"Connection: close\r\n\r\n", body)
        writer.write(b"".join(head))
        await writer.drain()
        return await _read_response(reader, method == b"HEAD", max_body)
    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise ProtocolError(f"{target.host}:{target.port}: {exc!r}") from exc
    finally:
        writer.close()


async def _read_response(reader: asyncio.StreamReader, head_request: bool, max_body: int) -> Result:
    buf = b""
    while True:
        resp = _parse(buf)
        if resp is None:
            if len(buf) > MAX_HEAD:
                raise ProtocolError("response head too large")
            data = await reader.read(65536)
            if not data:
                raise ProtocolError("connection closed before a complete response head")
            buf += data
            continue
        buf = buf[resp.head_len :]
        status = resp.status
        if status >= 200:
            break
        if status == 101:
            raise ProtocolError("unexpected 101 Switching Protocols")
        # other 1xx: interim responses, the final one follows
    headers = list(resp.headers)
    if head_request or status in (204, 304):
        return Result(status, headers, b"")
    if resp.chunked:
        return Result(status, headers, await _read_chunked(reader, buf, max_body))
    size = resp.content_length
    if size >= 0:
        if size > max_body:
            raise ProtocolError("response body too large")
        if len(buf) >= size:
            return Result(status, headers, buf[:size])
        return Result(status, headers, buf + await reader.readexactly(size - len(buf)))
    return Result(status, headers, await _read_to_eof(reader, buf, max_body))


def _parse(buf: bytes) -> parser.ResponseHead | None:
    try:
        return parser.parse_response(buf, MAX_HEAD) if buf else None
    except WireError as exc:
        raise ProtocolError("malformed response head") from exc


def parse_head(data: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Status and headers of one complete response head (as read up to its blank line); raises ProtocolError."""
    resp = _parse(data)
    if resp is None:
        raise ProtocolError("incomplete response head")
    return resp.status, list(resp.headers)


async def _read_chunked(reader: asyncio.StreamReader, buf: bytes, max_body: int) -> bytes:
    decoder = parser.new_chunked_decoder()
    body = bytearray()
    data = buf
    while True:
        if data:
            try:
                pieces, _ = decoder.feed(data)
            except WireError as exc:
                raise ProtocolError("invalid chunked encoding") from exc
            for piece in pieces:
                body += piece
            if len(body) > max_body:
                raise ProtocolError("response body too large")
            if decoder.done:  # trailers are read and dropped
                return bytes(body)
        data = await reader.read(65536)
        if not data:
            raise ProtocolError("connection closed inside a chunked body")


async def _read_to_eof(reader: asyncio.StreamReader, buf: bytes, max_body: int) -> bytes:
    body = bytearray(buf)
    while True:
        if len(body) > max_body:
            raise ProtocolError("response body too large")
        data = await reader.read(65536)
        if not data:
            return bytes(body)
        body += data


_contexts: dict[tuple[bool, str, tuple[str, ...]], ssl.SSLContext] = {}


def client_context(cfg: TlsSettings, alpn: list[str]) -> ssl.SSLContext:
    """Client TLS to https:// backends and their probes (SPEC §10.5): the system trust store or ``tls_ca_file``
    (the caller's server name is verified), no verification only with ``tls_insecure_skip_verify``; cached."""
    key = (cfg.tls_insecure_skip_verify, cfg.tls_ca_file, tuple(alpn))
    ctx = _contexts.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=cfg.tls_ca_file or None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if cfg.tls_insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(alpn)
        _contexts[key] = ctx
    return ctx
