"""Schemas of ``middlewares "<name>"`` (SPEC §6): one key table and one rule function per middleware type. Their
defaults are written only here: the middleware implementations read every key from the validated params."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from a3s_gateway.config.hcl import Body, Pos
from a3s_gateway.config.model import EMPTY_MAP, MiddlewareConfig
from a3s_gateway.config.schema.checks import (
    TOKEN_RE,
    check_abs_path,
    check_http_url,
    check_ip,
    check_nonempty,
    check_token,
    file_check,
)
from a3s_gateway.config.schema.engine import (
    BOOL,
    SKIP,
    STR,
    Ctx,
    Decoded,
    K,
    T,
    convert,
    decode,
    fmt_num,
    is_null,
    quote,
    schema,
    suggest,
)

MIDDLEWARE_TYPES: Final = (
    "jwt",
    "api-key",
    "basic-auth",
    "forward-auth",
    "rate-limit",
    "rate-limit-redis",
    "token-limit",
    "cors",
    "headers",
    "strip-prefix",
    "body-limit",
    "retry",
    "circuit-breaker",
    "ip-allow",
    "compress",
    "tcp-filter",
    "ws-mux",
)
_HS: Final = ("HS256", "HS384", "HS512")
_ASYMMETRIC: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_DEFAULT_KEY_ALGS: Final = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384")
_HTPASSWD_HASH: Final = re.compile(
    r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}\Z|\{SHA\}[A-Za-z0-9+/=]{28}\Z|\$apr1\$[^$]{1,8}\$[./A-Za-z0-9]{22}\Z"
)
_PEM_BLOCK: Final = re.compile(
    r"-----BEGIN (PUBLIC KEY|RSA PUBLIC KEY|EC PUBLIC KEY|CERTIFICATE)-----\s*([A-Za-z0-9+/=\s]+?)-----END \1-----"
)


def _mw_error(ctx: Ctx, d: Decoded, key: str | None, message: str, hint: str | None = None) -> None:
    where = f"{d.path}.{key}" if key else d.path
    ctx.error(ctx.at(where, d.pos) if key else d.pos, where, message, hint)


def _check_pem_public_key(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1 << 20)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"cannot read {quote(path)}: {getattr(exc, 'strerror', None) or exc}"
    m = _PEM_BLOCK.search(text)
    if m is None:
        return f"cannot parse {quote(path)}: expected a PEM public key or certificate"
    try:
        base64.b64decode("".join(m.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        return f"cannot parse {quote(path)}: invalid PEM data"
    return None


def _jwt(d: Decoded, ctx: Ctx) -> None:
    v = d.values
    sources = [k for k in ("value", "public_key_file", "jwks_url") if d.has(k) and not is_null(d.present[k])]
    if len(sources) != 1:
        _mw_error(ctx, d, None, 'jwt requires exactly one of "value", "public_key_file", "jwks_url"')
    if v["value"] == "" and d.has("value") and ctx.ok(f"{d.path}.value"):
        _mw_error(ctx, d, "value", "must not be empty")
    if v["public_key_file"] and ctx.ok(f"{d.path}.public_key_file"):
        problem = _check_pem_public_key(v["public_key_file"])
        if problem:
            _mw_error(ctx, d, "public_key_file", problem)
    if v["jwks_url"] is not None and ctx.ok(f"{d.path}.jwks_url"):
        problem = check_http_url(v["jwks_url"])
        if problem:
            _mw_error(ctx, d, "jwks_url", problem)
    hmac = "value" in sources
    if v["algorithms"] is None:
        v["algorithms"] = _HS if hmac else _DEFAULT_KEY_ALGS
    elif ctx.ok(f"{d.path}.algorithms"):
        for i, alg in enumerate(v["algorithms"]):
            where = f"algorithms[{i}]"
            if alg.lower() == "none":
                _mw_error(ctx, d, where, 'algorithm "none" is never accepted')
            elif alg not in _HS + _ASYMMETRIC:
                close = suggest(alg, _HS + _ASYMMETRIC)
                _mw_error(
                    ctx, d, where, f"unknown algorithm {quote(alg)}" + (f' (did you mean "{close}"?)' if close else "")
                )
            elif sources and (alg in _HS) != hmac:
                need = "an HMAC secret (value)" if alg in _HS else "a public key (public_key_file or jwks_url)"
                _mw_error(ctx, d, where, f"algorithm {quote(alg)} needs {need}")
    if isinstance(v["forward_claims"], Mapping):
        for claim, header in v["forward_claims"].items():
            if not TOKEN_RE.match(header):
                _mw_error(ctx, d, f"forward_claims.{claim}", f"invalid header name {quote(header)}")


def _htpasswd_problem(line: str) -> str | None:
    user, sep, digest = line.partition(":")
    if not sep or not user:
        return 'expected "user:hash"'
    if not _HTPASSWD_HASH.match(digest):
        return "unsupported hash; use bcrypt ($2a$, $2b$, $2y$), {SHA} or $apr1$"
    return None


def _basic_auth(d: Decoded, ctx: Ctx) -> None:
    v = d.values
    if d.has("username") != d.has("password"):
        _mw_error(ctx, d, None, '"username" and "password" must be set together')
    users = 1 if d.has("username") and d.has("password") else 0
    if isinstance(v["users"], tuple):
        users += len(v["users"])
        for i, line in enumerate(v["users"]):
            problem = _htpasswd_problem(line)
            if problem:
                _mw_error(ctx, d, f"users[{i}]", f"invalid htpasswd entry: {problem}")
    if v["users_file"]:
        path = file_check(ctx, d, "users_file")
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, raw in enumerate(f, 1):
                    line = raw.strip()
                    if not line or line.startswith("#"):
                        continue
                    users += 1
                    problem = _htpasswd_problem(line)
                    if problem:
                        _mw_error(ctx, d, "users_file", f"line {n} of {quote(path)}: invalid htpasswd entry: {problem}")
        else:
            users += 1  # already reported
    if users == 0 and ctx.ok(f"{d.path}.users"):
        _mw_error(
            ctx,
            d,
            None,
            'basic-auth requires at least one user: set "username" and "password", "users" or "users_file"',
        )


def _check_redis_url(value: Any) -> str | None:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018
    except ValueError:
        return "invalid redis URL: bad port"
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return "invalid URL; expected redis://[user:password@]host[:port][/db] or rediss://..."
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        return "invalid redis URL: the path must be a database number"
    return None


def _check_limit_key(value: Any) -> str | None:
    if value in ("client_ip", "global"):
        return None
    if value.startswith("header:") and TOKEN_RE.match(value[7:]):
        return None
    return f'invalid key {quote(value)}; expected "client_ip", "global" or "header:<Name>"'


def _check_token_key(value: Any) -> str | None:
    if value in ("client_ip", "api_key"):
        return None
    if value.startswith("header:") and TOKEN_RE.match(value[7:]):
        return None
    if value.startswith("jwt:") and value[4:]:
        return None
    return f'invalid key {quote(value)}; expected "client_ip", "header:<Name>", "jwt:<claim>" or "api_key"'


def _check_optional_redis_url(value: Any) -> str | None:
    return None if value == "" else _check_redis_url(value)


def _rate_limit(d: Decoded, ctx: Ctx) -> None:
    v = d.values
    if v["burst"] is None:
        rate = v["rate"]
        v["burst"] = max(1, math.ceil(rate)) if isinstance(rate, float) else 1


def _check_origin(value: Any) -> str | None:
    if value == "*":
        return None
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(\*\.)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?", value)
    if m is None:
        return f'invalid origin {quote(value)}; expected "*", "scheme://host[:port]" or "scheme://*.domain"'
    return None


def _check_header_map(d: Decoded, ctx: Ctx, key: str) -> None:
    value = d.values[key]
    if not isinstance(value, Mapping):
        return
    for name, val in value.items():
        if not TOKEN_RE.match(name):
            _mw_error(ctx, d, f"{key}.{name}", f"invalid header name {quote(name)}")
        elif any(c in val for c in "\r\n\x00"):
            _mw_error(ctx, d, f"{key}.{name}", "header values must not contain CR, LF or NUL")


def _headers(d: Decoded, ctx: Ctx) -> None:
    _check_header_map(d, ctx, "request_headers")
    _check_header_map(d, ctx, "response_headers")


def _retry(d: Decoded, ctx: Ctx) -> None:
    v = d.values
    if v["max_interval_ms"] is None:
        v["max_interval_ms"] = 10 * v["retry_interval_ms"]
    elif (
        ctx.ok(f"{d.path}.max_interval_ms", f"{d.path}.retry_interval_ms")
        and v["max_interval_ms"] < v["retry_interval_ms"]
    ):
        _mw_error(
            ctx,
            d,
            "max_interval_ms",
            f"max_interval_ms ({fmt_num(v['max_interval_ms'])}) must be at least retry_interval_ms "
            f"({fmt_num(v['retry_interval_ms'])})",
        )


def _check_retry_status(value: Any) -> str | None:
    return None if value == 429 or 500 <= value <= 599 else f"must be 429 or between 500 and 599, got {value}"


def _ip_allow(d: Decoded, ctx: Ctx) -> None:
    v = d.values
    if v["depth"] and v["trusted_proxies"]:
        _mw_error(ctx, d, "depth", '"depth" and "trusted_proxies" are exclusive')


def _tcp_filter(d: Decoded, ctx: Ctx) -> None:
    v = d.values
    if (
        not v["allowed_ips"]
        and not v["max_connections"]
        and ctx.ok(f"{d.path}.allowed_ips", f"{d.path}.max_connections")
    ):
        _mw_error(ctx, d, None, 'tcp-filter requires "allowed_ips" or "max_connections"')


def _ws_mux(d: Decoded, ctx: Ctx) -> None:
    path = d.values["upstream_path"]
    if path and ctx.ok(f"{d.path}.upstream_path") and not path.startswith("/"):
        _mw_error(ctx, d, "upstream_path", f'must start with "/", got {quote(path)}')


def _noop(d: Decoded, ctx: Ctx) -> None:
    pass


_RATE_KEYS: Final = (
    K("rate", T.number(0, lo_open=True), None, required=True),
    K("period", T.duration(0, lo_open=True), 1.0),
    K("burst", T.integer(1), None),
    K("key", T.string(_check_limit_key), "client_ip"),
)

MIDDLEWARE_KEYS: Final[dict[str, tuple[tuple[K, ...], Callable[[Decoded, Ctx], None]]]] = {
    "jwt": (
        (
            K("value", STR, None, secret=True),
            K("public_key_file", STR, None, path=True),
            K("jwks_url", STR, None, url=True),
            K("jwks_refresh", T.duration(0, lo_open=True), 600.0),
            K("algorithms", T.list_of(STR, 1), None),
            K("header", T.string(check_token), "Authorization"),
            K("issuer", STR, ""),
            K("audience", T("str_or_list"), ()),
            K("leeway", T.duration(0), 60.0),
            K("require_exp", BOOL, True),
            K("forward_claims", T.map_of(), MappingProxyType({"sub": "X-JWT-Subject"})),
        ),
        _jwt,
    ),
    "api-key": (
        (
            K("header", T.string(check_token), "X-API-Key"),
            K("keys", T.list_of(T.string(check_nonempty), 1), None, required=True, secret=True),
            K("strip_header", BOOL, False),
        ),
        _noop,  # keys: required, non-empty list of non-empty strings (schema)
    ),
    "basic-auth": (
        (
            K("username", T.string(check_nonempty), None),
            K("password", STR, None, secret=True),
            K("users", T.list_of(STR), (), secret=True),
            K("users_file", STR, "", path=True),
            K("realm", STR, "a3s-gateway"),
            K("remove_header", BOOL, False),
        ),
        _basic_auth,
    ),
    "forward-auth": (
        (
            K("forward_auth_url", T.string(check_http_url), None, required=True, url=True),
            K("forward_auth_method", T.enum("GET", "POST", "HEAD"), "GET"),
            K("forward_auth_timeout", T.duration(0, lo_open=True), 5.0),
            K("forward_auth_request_headers", T.list_of(T.string(check_token)), ()),
            K("forward_auth_response_headers", T.list_of(T.string(check_token)), ()),
        ),
        _noop,
    ),
    "rate-limit": ((*_RATE_KEYS, K("max_keys", T.integer(1), 65536)), _rate_limit),
    "rate-limit-redis": (
        (
            *_RATE_KEYS,
            K("redis_url", T.string(_check_redis_url), None, required=True, url=True),
            K("failure_mode", T.enum("open", "closed"), "open"),
            K("redis_timeout", T.duration(0, lo_open=True), 1.0),
            K("key_prefix", STR, "a3s:ratelimit:"),
        ),
        _rate_limit,
    ),
    "token-limit": (
        (
            K("limit", T.integer(1, 10_000_000_000), None, required=True),
            K("window", T.duration(1, 86400), 60.0),
            K("count", T.enum("total", "output", "input"), "total"),
            K("key", T.string(_check_token_key), "client_ip"),
            K("per_model", T.map_of(T.integer(1, 10_000_000_000)), EMPTY_MAP),
            K("reserve", T.enum("max_tokens", "none"), "max_tokens"),
            K("default_reserve", T.integer(0, 10_000_000_000), 256),
            K("redis_url", T.string(_check_optional_redis_url), "", url=True),
            K("failure_mode", T.enum("open", "closed"), "open"),
            K("redis_timeout", T.duration(0, lo_open=True), 1.0),
            K("key_prefix", STR, "a3s:tokens:"),
        ),
        _noop,
    ),
    "cors": (
        (
            K("allowed_origins", T.list_of(T.string(_check_origin)), ("*",)),
            K("allowed_methods", T.list_of(T.string(check_token)), ("GET", "POST", "PUT", "DELETE", "OPTIONS")),
            K("allowed_headers", T.list_of(STR), ("Content-Type", "Authorization")),
            K("expose_headers", T.list_of(T.string(check_token)), ()),
            K("allow_credentials", BOOL, False),
            K("max_age", T.seconds(0), 86400.0),
        ),
        _noop,
    ),
    "headers": ((K("request_headers", T.map_of(), EMPTY_MAP), K("response_headers", T.map_of(), EMPTY_MAP)), _headers),
    "strip-prefix": ((K("prefixes", T.list_of(T.string(check_abs_path), 1), None, required=True),), _noop),
    "body-limit": ((K("max_body_bytes", T.integer(0, lo_open=True), None, required=True),), _noop),
    "retry": (
        (
            K("max_retries", T.integer(1, 10), 3),
            K("retry_interval_ms", T.millis(0), 100.0),
            K("max_interval_ms", T.millis(0), None),
            K("retry_on_status", T.list_of(T("int", check=_check_retry_status)), (502, 503, 504)),
            K("retry_non_idempotent", BOOL, False),
            K("max_replay_bytes", T.integer(0), 1048576),
            K("max_retry_after", T.duration(0), 10.0),
        ),
        _retry,
    ),
    "circuit-breaker": (
        (
            K("failure_threshold", T.integer(1), 5),
            K("cooldown_secs", T.seconds(0, lo_open=True), 30.0),
            K("success_threshold", T.integer(1), 1),
        ),
        _noop,
    ),
    "ip-allow": (
        (
            K("allowed_ips", T.list_of(T.string(check_ip), 1), None, required=True),
            K("trusted_proxies", T.list_of(T.string(check_ip)), ()),
            K("depth", T.integer(0), 0),
        ),
        _ip_allow,
    ),
    "compress": (
        (
            K("min_size", T.integer(0), 1024),
            K("encodings", T.list_of(T.enum("br", "gzip", "deflate"), 1), ("br", "gzip", "deflate")),
            K(
                "content_types",
                T.list_of(STR),
                (
                    "text/*",
                    "application/json",
                    "application/*+json",
                    "application/x-ndjson",
                    "application/javascript",
                    "application/xml",
                    "application/*+xml",
                    "image/svg+xml",
                ),
            ),
            K("include_event_stream", BOOL, False),
        ),
        _noop,
    ),
    "tcp-filter": (
        (K("allowed_ips", T.list_of(T.string(check_ip)), ()), K("max_connections", T.integer(0), 0)),
        _tcp_filter,
    ),
    "ws-mux": (
        (
            K("max_channels", T.integer(1, 1024), 64),
            K("upstream_path", STR, ""),
            K("send_queue", T.integer(1), 256),
            K("max_message_bytes", T.integer(1), 1048576),
        ),
        _ws_mux,
    ),
}

_TYPE_KEY: Final = K("type", T.enum(*MIDDLEWARE_TYPES), None, required=True)
MIDDLEWARE_SCHEMAS: Final = {
    t: schema(f"middleware {t}", (_TYPE_KEY, *keys), subject=t) for t, (keys, _) in MIDDLEWARE_KEYS.items()
}


def decode_middleware(body: Body, ctx: Ctx, path: str, pos: Pos) -> MiddlewareConfig | None:
    name = path.split(".", 1)[1]
    type_entries = [e for e in body.entries if e.key == "type"]
    if not type_entries or is_null(type_entries[0]):
        ctx.error(pos, path, 'missing required key "type"', f"one of: {', '.join(MIDDLEWARE_TYPES)}")
        return None
    entry = type_entries[0]
    ctx.locations[f"{path}.type"] = entry.pos
    mw_type = convert(_TYPE_KEY.type, entry.value, ctx, f"{path}.type", entry.pos) if not entry.is_block else SKIP
    if mw_type is SKIP:
        if entry.is_block:
            ctx.error(entry.pos, f"{path}.type", "expected string, got block")
        return None
    assert isinstance(mw_type, str)
    decoded = decode(body, MIDDLEWARE_SCHEMAS[mw_type], ctx, path, pos)
    decoded.values.pop("type", None)
    MIDDLEWARE_KEYS[mw_type][1](decoded, ctx)
    params = {k: v for k, v in decoded.values.items()}
    return MiddlewareConfig(name=name, type=mw_type, params=MappingProxyType(params))
