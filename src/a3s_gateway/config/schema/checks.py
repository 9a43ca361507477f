"""Value checks shared by the block schemas: names, addresses, IPs/CIDRs, URLs, header tokens, readable files."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Final
from urllib.parse import urlsplit

from a3s_gateway.config.schema.engine import Ctx, Decoded, quote
from a3s_gateway.observability.redact import redact_url

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
NAME_SHOWN: Final = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def parse_address(text: str) -> tuple[str, int] | None:
    """``"host:port"``, ``"[v6]:port"`` or ``":port"`` -> (host, port); None when malformed."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text.startswith(":", end + 1):
            return None
        host, port = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            return None
        if host and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?\.?|\*", host):
            return None
    if not port.isdigit() or int(port) > 65535:
        return None
    return host, int(port)


def check_address(value: Any) -> str | None:
    if parse_address(value) is None:
        _, sep, port = str(value).rpartition(":")
        if sep and port.isdigit() and int(port) > 65535:
            return f"invalid address {quote(value)}: port must be between 0 and 65535"
        return f'invalid address {quote(value)}; expected "host:port"'
    return None


def check_ip(value: Any) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"invalid CIDR {quote(value)}" if "/" in value else f"invalid IP address {quote(value)}"
    return None


def parse_nameserver(text: str) -> tuple[str, int] | None:
    """A DNS resolver address ``ip``, ``ip:port``, ``[v6]:port`` (§12.4) -> (ip, port, 53 when absent); None when
    malformed."""
    host, port = text, 53
    if text.startswith("["):
        parsed = parse_address(text)
        if parsed is None:
            return None
        host, port = parsed
    elif text.count(":") == 1:
        host, _, digits = text.partition(":")
        if not digits.isdigit():
            return None
        port = int(digits)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return (host, port) if 0 < port <= 65535 else None


def check_nameserver(value: Any) -> str | None:
    if parse_nameserver(value) is None:
        return f'invalid nameserver {quote(value)}; expected an IP address with an optional port, e.g. "127.0.0.1:8600"'
    return None


def check_nonempty(value: Any) -> str | None:
    return "must not be empty" if value == "" else None


def check_http_url(value: Any, *, empty_ok: bool = False) -> str | None:
    if empty_ok and value == "":
        return None
    parts = urlsplit(value)
    shown = quote(redact_url(value))  # diagnostics reach the process log (SPEC §11.1)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"invalid URL {shown}; expected an http:// or https:// URL"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"invalid URL {shown}: bad port"
    return None


def check_abs_path(value: Any) -> str | None:
    return None if value.startswith("/") else f'must start with "/", got {quote(value)}'


def check_token(value: Any) -> str | None:
    return None if TOKEN_RE.match(value) else f"invalid header name {quote(value)}"


def read_problem(path: str) -> str | None:
    """None when ``path`` is a readable file, else the diagnostic."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"cannot read {quote(path)}: {getattr(exc, 'strerror', None) or exc}"
    return None


def file_check(ctx: Ctx, decoded: Decoded, key: str) -> str | None:
    """Check that ``key`` of ``decoded`` names a readable file; returns the path when it does."""
    value = decoded.values.get(key)
    path = f"{decoded.path}.{key}"
    if not value or not ctx.ok(path):
        return None
    problem = read_problem(value)
    if problem:
        ctx.error(ctx.at(path), path, problem)
        ctx.bad.add(path)
        return None
    return str(value)
