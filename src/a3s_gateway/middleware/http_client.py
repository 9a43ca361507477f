"""A minimal asyncio HTTP/1.1 client for the auth middlewares (forward-auth requests, JWKS fetches).

One request per connection (``Connection: close``), no redirects, no pooling: auth services and JWKS endpoints are
called with small bodies, and the caller bounds the whole exchange with one timeout. The response head is parsed
strictly; the body may be framed by ``Content-Length``, chunked, or the end of the connection, and is bounded.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from ..observability.redact import redact_url

if TYPE_CHECKING:
    from ..config.model import TransportConfig

MAX_HEAD: Final = 64 * 1024
MAX_BODY: Final = 1 << 20
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([1-9][0-9]{2})(?: [\t !-~\x80-\xff]*)?\Z")
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
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
    while True:
        status, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
        if status >= 200:
            break
        if status == 101:
            raise ProtocolError("unexpected 101 Switching Protocols")
        # other 1xx: interim responses, the final one follows
    if head_request or status in (204, 304):
        return Result(status, headers, b"")
    te = [v for n, v in headers if n.lower() == b"transfer-encoding"]
    if te:
        if b",".join(te).rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            return Result(status, headers, await _read_chunked(reader, max_body))
        return Result(status, headers, await _read_to_eof(reader, max_body))
    lengths = {v.strip() for n, v in headers if n.lower() == b"content-length"}
    if lengths:
        if len(lengths) != 1:
            raise ProtocolError("conflicting Content-Length")
        text = lengths.pop()
        if not text.isdigit() or len(text) > 18:
            raise ProtocolError("invalid Content-Length")
        size = int(text)
        if size > max_body:
            raise ProtocolError("response body too large")
        return Result(status, headers, await reader.readexactly(size))
    return Result(status, headers, await _read_to_eof(reader, max_body))


def _parse_head(data: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = data[:-4].split(b"\r\n")
    m = _STATUS_LINE.match(lines[0])
    if m is None:
        raise ProtocolError("malformed status line")
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise ProtocolError("malformed header line")
        value = value.strip(b" \t")
        if _BAD_VALUE.search(value):  # bare CR/LF or control characters could split the head we forward
            raise ProtocolError("invalid characters in header value")
        headers.append((name, value))
    return int(m.group(1)), headers


async def _read_chunked(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        line = (await reader.readuntil(b"\r\n"))[:-2]
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if not _HEX.match(size_text):
            raise ProtocolError("invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers are read and dropped
                pass
            return bytes(body)
        if len(body) + size > max_body:
            raise ProtocolError("response body too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError("missing CRLF after chunk data")


async def _read_to_eof(reader: asyncio.StreamReader, max_body: int) -> bytes:
    body = bytearray()
    while True:
        data = await reader.read(65536)
        if not data:
            return bytes(body)
        body += data
        if len(body) > max_body:
            raise ProtocolError("response body too large")


_contexts: dict[tuple[bool, str, tuple[str, ...]], ssl.SSLContext] = {}


def client_context(cfg: TransportConfig, alpn: list[str]) -> ssl.SSLContext:
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
