"""Type-check, apply defaults and validate a configuration (SPEC §2.3-§2.6, §3, §6, §7.6, §8.6, §8.7).

The positioned tree of :mod:`a3s_gateway.config.hcl` is decoded against declarative schemas (one
:class:`_Schema` per block, one per middleware type): unknown keys, duplicates, types, enums, ranges and
defaults are handled generically; each schema's ``build`` function adds the block's own rules and returns the
frozen model object. Cross-references (routers, failover cycles, revisions, rollout, protocols) are checked
last, on the whole configuration. Every diagnostic is collected; any error raises one ``ConfigError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

from a3s_gateway.config.hcl import Body, Entry, ListNode, Node, Pos, Scalar, Unsupported, from_python, parse
from a3s_gateway.config.model import (
    EMPTY_MAP,
    AccessLogConfig,
    AdminConfig,
    BoxExecutorConfig,
    CertificateConfig,
    DiscoveryProviderConfig,
    DnsProviderConfig,
    EntrypointConfig,
    FailoverConfig,
    FileProviderConfig,
    GatewayConfig,
    HealthCheckConfig,
    KubernetesExecutorConfig,
    KubernetesProviderConfig,
    LoadBalancerConfig,
    MiddlewareConfig,
    MirrorConfig,
    PassiveConfig,
    ProcessExecutorConfig,
    ProvidersConfig,
    RedirectConfig,
    RevisionConfig,
    RolloutConfig,
    RouterConfig,
    ScalingConfig,
    ServerConfig,
    ServiceConfig,
    StickyConfig,
    TlsConfig,
    TracingConfig,
    TransportConfig,
    format_duration,
)
from a3s_gateway.errors import ConfigError, Issue
from a3s_gateway.observability.redact import REDACTED as _REDACTED
from a3s_gateway.observability.redact import redact_url

__all__ = ["MIDDLEWARE_TYPES", "config_to_dict", "load_dict", "load_file", "load_text", "suggest"]

NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_NAME_SHOWN: Final = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_DURATION_RE: Final = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s|m|h))+\Z")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HELP: Final = 'use e.g. "250ms", "10s", "1.5s", "5m", "1h"'


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics context
# ---------------------------------------------------------------------------------------------------------------


def _loc(pos: Pos) -> str:
    return f"{pos.file}:{pos.line}:{pos.col}" if pos.line else pos.file


class _Ctx:
    """Collects diagnostics, key locations, failed keys and explicitly used features during one load."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.issues: list[Issue] = []
        self.locations: dict[str, Pos] = {}
        self.bad: set[str] = set()
        self.explicit: set[str] = set()

    def error(self, pos: Pos, path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(Issue(pos.file, pos.line, pos.col, path, "error", message, hint))

    def warn(self, pos: Pos, path: str, message: str, hint: str | None = None) -> None:
        self.issues.append(Issue(pos.file, pos.line, pos.col, path, "warning", message, hint))

    def at(self, path: str, fallback: Pos | None = None) -> Pos:
        """Location of ``path`` (or of its closest recorded parent)."""
        probe = path
        while probe:
            pos = self.locations.get(probe)
            if pos is not None:
                return pos
            cut = max(probe.rfind("."), probe.rfind("["))
            probe = probe[:cut] if cut > 0 else ""
        return fallback or Pos("<unknown>", 0, 0)

    def ok(self, *paths: str) -> bool:
        """True when none of ``paths`` failed to convert."""
        return not any(p in self.bad for p in paths)

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")


# ---------------------------------------------------------------------------------------------------------------
# Suggestions
# ---------------------------------------------------------------------------------------------------------------


def _distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent transpositions)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def suggest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``word`` by edit distance, if within 3 (ties: alphabetical)."""
    best: tuple[int, str] | None = None
    for cand in candidates:
        if cand == word:
            continue
        d = _distance(word, cand)
        if d <= 3 and (best is None or (d, cand) < best):
            best = (d, cand)
    return best[1] if best else None


# ---------------------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """A value failed conversion; the message is the diagnostic."""


class _Skip:
    """Marker for a value that was already reported (interpolation, unsupported expression)."""


SKIP: Final = _Skip()


@dataclass(frozen=True)
class _T:
    """A value type. ``lo``/``hi`` are range bounds (``*_open``: exclusive); ``check`` a further rule."""

    kind: str
    item: _T | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    schema: _Schema | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    min_len: int = 0
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class _K:
    """A key of a schema; ``field`` is the model attribute when it differs from the key."""

    name: str
    type: _T
    default: Any = None
    required: bool = False
    path: bool = False  # a file path: resolved against the directory of the file that names it
    secret: bool = False  # exported as "<redacted>"
    url: bool = False  # a URL that may carry credentials: exported through redact_url (SPEC §11.1)
    field: str | None = None


@dataclass(frozen=True)
class _Legacy:
    """A deprecated key: converted with ``type`` and stored as ``target`` (None: ignored)."""

    target: str | None
    type: _T
    message: Callable[[Any], str]


@dataclass
class _Decoded:
    """A decoded body: converted values (defaults applied) and the entries that were present."""

    path: str
    pos: Pos
    values: dict[str, Any]
    present: dict[str, Entry]

    def has(self, key: str) -> bool:
        return key in self.present


_Build = Callable[[_Decoded, _Ctx], Any]


@dataclass(frozen=True)
class _Schema:
    name: str
    keys: dict[str, _K]
    build: _Build | None = None
    legacy: dict[str, _Legacy] = field(default_factory=dict)
    repeatable: bool = False  # written as a repeated block: `servers { ... }` twice == a list


def _schema(name: str, keys: Iterable[_K], build: _Build | None = None, **kw: Any) -> _Schema:
    return _Schema(name, {k.name: k for k in keys}, build, **kw)


STR: Final = _T("str")
BOOL: Final = _T("bool")


def _int(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> _T:
    return _T("int", lo=lo, hi=hi, lo_open=lo_open)


def _num(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> _T:
    return _T("num", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def _dur(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> _T:
    return _T("duration", lo=lo, hi=hi, lo_open=lo_open)


def _secs(lo: float | None = None, *, lo_open: bool = False) -> _T:
    return _T("secs", lo=lo, lo_open=lo_open)


def _ms(lo: float | None = None) -> _T:
    return _T("ms", lo=lo)


def _enum(*choices: str, aliases: tuple[tuple[str, str], ...] = ()) -> _T:
    return _T("enum", choices=choices, aliases=aliases)


def _list(item: _T, min_len: int = 0) -> _T:
    return _T("list", item=item, min_len=min_len)


def _map(item: _T = STR) -> _T:
    return _T("map", item=item)


def _block(schema: _Schema) -> _T:
    return _T("block", schema=schema)


def _blocks(schema: _Schema) -> _T:
    return _T("blocks", schema=schema)


def _str(check: Callable[[Any], str | None]) -> _T:
    return _T("str", check=check)


def _q(text: str) -> str:
    """``text`` in double quotes, escaped, shortened."""
    if len(text) > 80:
        text = text[:77] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _fmt_num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _describe(node: Node) -> str:
    if isinstance(node, Scalar):
        v = node.value
        if isinstance(v, bool):
            return f"bool {'true' if v else 'false'}"
        if isinstance(v, str):
            return f"string {_q(v)}"
        if v is None:
            return "null"
        return f"number {_fmt_num(v)}"
    if isinstance(node, ListNode):
        return "list"
    if isinstance(node, Body):
        return "object" if node.is_object else "block"
    return f"expression {_q(node.text)}"


_TYPE_NAMES: Final = {
    "str": "string",
    "int": "integer",
    "num": "number",
    "bool": "bool",
    "duration": "duration",
    "secs": "number of seconds or a duration",
    "ms": "number of milliseconds or a duration",
    "list": "list",
    "map": "object",
    "block": "block",
    "blocks": "list of blocks",
    "int_or_auto": 'integer or "auto"',
    "int_or_str": "integer or string",
    "str_or_list": "string or list of strings",
}


def _parse_duration(text: str) -> float | None:
    s = text.strip() if text != text.strip() else text
    if s != text:
        return None
    if _NUMBER_RE.match(text) and not text.startswith(("+", "-")) and "e" not in text.lower():
        return float(text)
    if not _DURATION_RE.match(text):
        return None
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))


def _scalar(t: _T, node: Node) -> Any:
    """Convert one scalar node to type ``t`` (no range checks); raises ``_Invalid``."""
    kind = t.kind
    if not isinstance(node, Scalar):
        raise _Invalid(f"expected {_TYPE_NAMES.get(kind, kind)}, got {_describe(node)}")
    v = node.value
    if kind == "str":
        if isinstance(v, str):
            return v
    elif kind == "bool":
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
    elif kind == "int":
        if isinstance(v, bool):
            pass
        elif isinstance(v, int):
            return v
        elif isinstance(v, float) and v.is_integer():
            return int(v)
        elif isinstance(v, str) and _NUMBER_RE.match(v.strip()):
            f = float(v)
            if f.is_integer():
                return int(f)
    elif kind == "num":
        if isinstance(v, bool):
            pass
        elif isinstance(v, (int, float)):
            return float(v)
        elif isinstance(v, str) and _NUMBER_RE.match(v.strip()):
            return float(v)
    elif kind in ("duration", "secs", "ms"):
        scale = 1000.0 if kind == "ms" else 1.0
        if isinstance(v, bool) or v is None:
            pass
        elif isinstance(v, (int, float)):
            if v < 0 or not math.isfinite(v):
                raise _Invalid(f"invalid duration {_fmt_num(v)}; {_DURATION_HELP}")
            return float(v)
        elif isinstance(v, str):
            if kind != "duration" and _NUMBER_RE.match(v) and not v.startswith(("+", "-")):
                return float(v)
            secs = _parse_duration(v)
            if secs is None:
                raise _Invalid(f"invalid duration {_q(v)}; {_DURATION_HELP}")
            return secs * scale
    elif kind == "enum":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = _fmt_num(v) if not isinstance(v, float) else repr(v)
        if isinstance(v, str):
            norm = v.strip().lower().replace("_", "-")
            for choice in t.choices:
                if choice.lower().replace("_", "-") == norm:
                    return choice
            for alias, target in t.aliases:
                if alias == norm:
                    return target
        shown = _q(v) if isinstance(v, str) else _describe(node)
        raise _Invalid(f"invalid value {shown}; expected one of: {', '.join(t.choices)}")
    elif kind == "int_or_auto":
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            return _scalar(_T("int"), node)
        except _Invalid:
            pass
    elif kind == "int_or_str":
        if isinstance(v, str):
            return int(v) if v.isdigit() else v
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    raise _Invalid(f"expected {_TYPE_NAMES.get(kind, kind)}, got {_describe(node)}")


def _range_message(t: _T, value: Any) -> str | None:
    if t.lo is None and t.hi is None:
        return None
    if t.kind in ("duration", "secs"):
        show: Callable[[float], str] = format_duration
    elif t.kind == "ms":
        show = lambda x: format_duration(x / 1000)  # noqa: E731
    else:
        show = _fmt_num
    lo_bad = t.lo is not None and (value <= t.lo if t.lo_open else value < t.lo)
    hi_bad = t.hi is not None and (value >= t.hi if t.hi_open else value > t.hi)
    if not (lo_bad or hi_bad):
        return None
    got = show(value)
    if t.lo is not None and t.hi is not None:
        if t.lo_open or t.hi_open:
            left = "(" if t.lo_open else "["
            right = ")" if t.hi_open else "]"
            return f"must be in {left}{show(t.lo)}, {show(t.hi)}{right}, got {got}"
        return f"must be between {show(t.lo)} and {show(t.hi)}, got {got}"
    if t.lo is not None:
        if t.lo_open:
            return f"must be greater than {show(t.lo)}, got {got}"
        return f"must be at least {show(t.lo)}, got {got}"
    return f"must be at most {show(t.hi or 0)}, got {got}"


def _convert(t: _T, node: Node, ctx: _Ctx, path: str, pos: Pos) -> Any:
    """Convert ``node`` to ``t``, reporting problems at ``pos``; returns the value, ``SKIP`` or raises nothing."""
    if isinstance(node, Unsupported) or (isinstance(node, Scalar) and node.poisoned):
        ctx.bad.add(path)
        return SKIP  # reported by _report_expressions
    try:
        if t.kind == "list":
            return _convert_list(t, node, ctx, path, pos)
        if t.kind == "map":
            return _convert_map(t, node, ctx, path)
        if t.kind == "str_or_list":
            if isinstance(node, ListNode):
                return _convert_list(_list(STR), node, ctx, path, pos)
            value = _scalar(STR, node)
            return (value,) if value else ()
        value = _scalar(t, node)
        numeric = t.kind in ("int", "num", "duration", "secs", "ms") or (t.kind == "int_or_auto" and value != "auto")
        message = _range_message(t, value) if numeric else None
        if message is None and t.check is not None:
            message = t.check(value)
        if message is not None:
            raise _Invalid(message)
        if t.aliases and isinstance(node, Scalar) and isinstance(node.value, str):
            written = node.value.strip().lower().replace("_", "-")
            if any(alias == written for alias, _ in t.aliases):
                key = path.rsplit(".", 1)[-1]
                ctx.warn(pos, path, f"{key} {_q(node.value)} is deprecated; use {_q(value)}")
        return value
    except _Invalid as exc:
        ctx.error(pos, path, str(exc))
        ctx.bad.add(path)
        return SKIP


def _convert_list(t: _T, node: Node, ctx: _Ctx, path: str, pos: Pos) -> Any:
    if not isinstance(node, ListNode):
        raise _Invalid(f"expected list, got {_describe(node)}")
    assert t.item is not None
    out: list[Any] = []
    failed = False
    for i, item in enumerate(node.items):
        item_pos = item.pos if item.pos.line else pos
        ctx.locations[f"{path}[{i}]"] = item_pos
        value = _convert(t.item, item, ctx, f"{path}[{i}]", item_pos)
        if value is SKIP:
            failed = True
        else:
            out.append(value)
    if failed:
        ctx.bad.add(path)
        return SKIP
    if len(out) < t.min_len:
        raise _Invalid("must not be empty" if t.min_len == 1 else f"needs at least {t.min_len} items")
    if t.check is not None:
        message = t.check(tuple(out))
        if message:
            raise _Invalid(message)
    return tuple(out)


def _convert_map(t: _T, node: Node, ctx: _Ctx, path: str) -> Any:
    if not isinstance(node, Body):
        raise _Invalid(f"expected object, got {_describe(node)}")
    assert t.item is not None
    out: dict[str, Any] = {}
    seen: dict[str, Entry] = {}
    failed = False
    for entry in node.entries:
        sub = f"{path}.{entry.key}"
        if entry.key in seen:
            ctx.error(entry.pos, sub, f'duplicate key "{entry.key}" (also set at {_loc(seen[entry.key].pos)})')
            failed = True
            continue
        seen[entry.key] = entry
        ctx.locations[sub] = entry.pos
        if entry.is_block:
            ctx.error(entry.pos, sub, f"expected {_TYPE_NAMES[t.item.kind]}, got block")
            failed = True
            continue
        value = _convert(t.item, entry.value, ctx, sub, entry.pos)
        if value is SKIP:
            failed = True
        elif not (isinstance(entry.value, Scalar) and entry.value.value is None):
            out[entry.key] = value
    if failed:
        ctx.bad.add(path)
        return SKIP
    if t.check is not None:
        message = t.check(out)
        if message:
            raise _Invalid(message)
    return MappingProxyType(out)


def _is_null(entry: Entry) -> bool:
    return not entry.is_block and isinstance(entry.value, Scalar) and entry.value.value is None


def _resolve(pos: Pos, value: str) -> str:
    """A path written in ``pos.file``, resolved against that file's directory (cwd for strings and dicts)."""
    if not value or os.path.isabs(value) or pos.file.startswith("<"):
        return value
    return os.path.join(os.path.dirname(pos.file), value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _decode(body: Body, schema: _Schema, ctx: _Ctx, path: str, pos: Pos | None = None) -> _Decoded:
    """Decode ``body`` against ``schema``: unknown keys, duplicates, null, types, defaults, nested blocks."""
    groups: dict[str, list[Entry]] = {}
    for entry in body.entries:
        if entry.key in schema.keys or entry.key in schema.legacy:
            groups.setdefault(entry.key, []).append(entry)
        else:
            close = suggest(entry.key, schema.keys)
            hint = f' (did you mean "{close}"?)' if close else ""
            ctx.error(entry.pos, _join(path, entry.key), f'unknown key "{entry.key}"{hint}')
    decoded = _Decoded(path, pos or body.pos, {}, {})
    for key, spec in schema.keys.items():
        attr = spec.field or key
        entries = groups.get(key, [])
        sub = _join(path, key)
        value: Any = spec.default
        if entries:
            single = _single(entries, spec, ctx, sub)
            if single is not None:
                ctx.locations[sub] = single.pos
                decoded.present[key] = single
                value = _decode_entry(spec, entries if spec.type.kind == "blocks" else [single], ctx, sub)
                if value is SKIP:
                    value = spec.default
                elif spec.path and isinstance(value, str):
                    value = _resolve(single.pos, value)
            else:
                ctx.bad.add(sub)
        elif spec.required:
            if schema.name.startswith("middleware "):
                message = f'{schema.name.split(" ", 1)[1]} requires key "{key}"'
            else:
                message = f'missing required key "{key}"'
            ctx.error(decoded.pos, path, message)
            ctx.bad.add(sub)
        decoded.values[attr] = value
    for key, legacy in schema.legacy.items():
        for entry in groups.get(key, []):
            sub = _join(path, key)
            ctx.locations[sub] = entry.pos
            value = _convert(legacy.type, entry.value, ctx, sub, entry.pos) if not entry.is_block else SKIP
            if value is SKIP:
                continue
            if legacy.target is not None and legacy.target in decoded.present:
                ctx.error(entry.pos, sub, f'"{key}" and "{legacy.target}" are both set; keep "{legacy.target}"')
                continue
            ctx.warn(entry.pos, sub, legacy.message(value))
            if legacy.target is not None:
                target = schema.keys[legacy.target]
                decoded.values[target.field or target.name] = value
                decoded.present[legacy.target] = entry
    return decoded


def _single(entries: list[Entry], spec: _K, ctx: _Ctx, path: str) -> Entry | None:
    """The one entry of a key; duplicates are errors (repeated blocks are a list for ``blocks`` keys)."""
    live = [e for e in entries if not _is_null(e)]
    if spec.type.kind == "blocks" and all(e.is_block for e in entries):
        return live[0] if live else None
    first = entries[0]
    for dup in entries[1:]:
        what = "block" if dup.is_block and first.is_block else "key"
        verb = "defined" if what == "block" else "set"
        ctx.error(dup.pos, path, f'duplicate {what} "{spec.name}" (also {verb} at {_loc(first.pos)})')
    if len(entries) > 1:
        return None
    return live[0] if live else None


def _decode_entry(spec: _K, entries: list[Entry], ctx: _Ctx, path: str) -> Any:
    t = spec.type
    entry = entries[0]
    if t.kind in ("block", "blocks"):
        assert t.schema is not None
        if t.kind == "blocks":
            nodes: list[tuple[Node, Pos, str]] = []
            if entry.is_block:
                for i, e in enumerate(entries):
                    if not _no_labels(e, ctx, path):
                        return SKIP
                    nodes.append((e.value, e.pos, f"{path}[{i}]"))
            elif isinstance(entry.value, ListNode):
                for i, item in enumerate(entry.value.items):
                    nodes.append((item, item.pos if item.pos.line else entry.pos, f"{path}[{i}]"))
            elif (
                isinstance(entry.value, (Unsupported, Scalar))
                and _convert(STR, entry.value, ctx, path, entry.pos) is SKIP
            ):
                return SKIP
            else:
                ctx.error(entry.pos, path, f"expected list of objects, got {_describe(entry.value)}")
                return SKIP
            out: list[Any] = []
            for node, pos, sub in nodes:
                ctx.locations[sub] = pos
                if not isinstance(node, Body):
                    if _convert(STR, node, ctx, sub, pos) is not SKIP or not isinstance(node, (Scalar, Unsupported)):
                        ctx.error(pos, sub, f"expected object, got {_describe(node)}")
                    ctx.bad.add(path)
                    continue
                built = _build(t.schema, _decode(node, t.schema, ctx, sub, pos), ctx)
                if built is SKIP:
                    ctx.bad.add(path)
                else:
                    out.append(built)
            return tuple(out)
        if entry.is_block and not _no_labels(entry, ctx, path):
            return SKIP
        if not isinstance(entry.value, Body):
            if _convert(STR, entry.value, ctx, path, entry.pos) is not SKIP:
                ctx.error(entry.pos, path, f"expected block or object, got {_describe(entry.value)}")
            return SKIP
        return _build(t.schema, _decode(entry.value, t.schema, ctx, path, entry.pos), ctx)
    if entry.is_block and not (t.kind == "map" and not entry.labels):  # a map may be written as a block too
        ctx.error(entry.pos, path, f"expected {_TYPE_NAMES.get(t.kind, t.kind)}, got block")
        return SKIP
    return _convert(t, entry.value, ctx, path, entry.pos)


def _no_labels(entry: Entry, ctx: _Ctx, path: str) -> bool:
    if entry.labels:
        ctx.error(entry.labels[0][1], path, f'block "{entry.key}" takes no label')
        return False
    return True


def _build(schema: _Schema, decoded: _Decoded, ctx: _Ctx) -> Any:
    if schema.build is None:
        return decoded.values
    return schema.build(decoded, ctx)


# ---------------------------------------------------------------------------------------------------------------
# Value checks
# ---------------------------------------------------------------------------------------------------------------


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


def _check_address(value: Any) -> str | None:
    if parse_address(value) is None:
        _, sep, port = str(value).rpartition(":")
        if sep and port.isdigit() and int(port) > 65535:
            return f"invalid address {_q(value)}: port must be between 0 and 65535"
        return f'invalid address {_q(value)}; expected "host:port"'
    return None


def _check_ip(value: Any) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"invalid CIDR {_q(value)}" if "/" in value else f"invalid IP address {_q(value)}"
    return None


def _check_nonempty(value: Any) -> str | None:
    return "must not be empty" if value == "" else None


def _check_http_url(value: Any, *, empty_ok: bool = False) -> str | None:
    if empty_ok and value == "":
        return None
    parts = urlsplit(value)
    shown = _q(redact_url(value))  # diagnostics reach the process log (SPEC §11.1)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"invalid URL {shown}; expected an http:// or https:// URL"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"invalid URL {shown}: bad port"
    return None


def _check_abs_path(value: Any) -> str | None:
    return None if value.startswith("/") else f'must start with "/", got {_q(value)}'


def _check_token(value: Any) -> str | None:
    return None if _TOKEN_RE.match(value) else f"invalid header name {_q(value)}"


def _read_problem(path: str) -> str | None:
    """None when ``path`` is a readable file, else the diagnostic."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return f"cannot read {_q(path)}: {exc.strerror or exc}"
    return None


def _file_check(ctx: _Ctx, decoded: _Decoded, key: str) -> str | None:
    """Check that ``key`` of ``decoded`` names a readable file; returns the path when it does."""
    value = decoded.values.get(key)
    path = f"{decoded.path}.{key}"
    if not value or not ctx.ok(path):
        return None
    problem = _read_problem(value)
    if problem:
        ctx.error(ctx.at(path), path, problem)
        ctx.bad.add(path)
        return None
    return str(value)


# ---------------------------------------------------------------------------------------------------------------
# Schemas and builders: entrypoints (§3.1, §10.1)
# ---------------------------------------------------------------------------------------------------------------


def _build_cert(d: _Decoded, ctx: _Ctx) -> CertificateConfig:
    return CertificateConfig(d.values["cert_file"] or "", d.values["key_file"] or "")


CERT: Final = _schema(
    "certificate",
    [_K("cert_file", STR, required=True, path=True), _K("key_file", STR, required=True, path=True)],
    _build_cert,
)


def _build_tls(d: _Decoded, ctx: _Ctx) -> TlsConfig:
    v = d.values
    p = d.path
    if d.has("alpn"):
        v["alpn"] = tuple(v["alpn"])
    else:
        v["alpn"] = None  # filled by the entrypoint (depends on http2 and protocol)
    if d.has("cert_file") != d.has("key_file"):
        missing = "key_file" if d.has("cert_file") else "cert_file"
        ctx.error(d.pos, p, f'"cert_file" and "key_file" must be set together; "{missing}" is missing')
    elif not d.has("cert_file") and not v["certificates"] and not v["acme"]:
        ctx.error(d.pos, p, 'tls requires "cert_file" and "key_file", "certificates", or acme = true')
    pairs = [(f"{p}", v["cert_file"], v["key_file"])] if d.has("cert_file") and d.has("key_file") else []
    pairs += [(f"{p}.certificates[{i}]", c.cert_file, c.key_file) for i, c in enumerate(v["certificates"])]
    for where, cert, key in pairs:
        if not cert or not key or not ctx.ok(f"{where}.cert_file", f"{where}.key_file"):
            continue
        _check_pair(ctx, where, cert, key)
    if v["acme"]:
        ctx.explicit.add("acme")
        if not v["acme_email"]:
            ctx.error(d.pos, p, 'acme requires "acme_email"')
        if v["acme_staging"] and d.has("acme_ca_url"):
            ctx.error(
                ctx.at(f"{p}.acme_staging"), f"{p}.acme_staging", '"acme_staging" and "acme_ca_url" are exclusive'
            )
        if v["challenge"] == "dns-01":
            _check_dns_credentials(ctx, d)
        elif any(dom.startswith("*.") for dom in v["acme_domains"]):
            ctx.error(ctx.at(f"{p}.challenge"), f"{p}.challenge", 'wildcard domains require challenge = "dns-01"')
        if v["acme_ca_file"]:
            _file_check(ctx, d, "acme_ca_file")
        _check_writable(ctx, d, "acme_storage_path")
    return TlsConfig(**v)  # alpn None: filled by the entrypoint, which knows http2 and the protocol


def _check_pair(ctx: _Ctx, where: str, cert: str, key: str) -> None:
    unreadable = False
    for name, file in (("cert_file", cert), ("key_file", key)):
        problem = _read_problem(file)
        if problem:
            ctx.error(ctx.at(f"{where}.{name}"), f"{where}.{name}", problem)
            unreadable = True
    if unreadable:
        return
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            message = f"certificate {_q(cert)} does not match key {_q(key)}"
        else:
            message = f"cannot load certificate {_q(cert)} with key {_q(key)}: {reason}"
        ctx.error(ctx.at(f"{where}.cert_file"), f"{where}.cert_file", message)


def _check_dns_credentials(ctx: _Ctx, d: _Decoded) -> None:
    provider = d.values["dns_provider"]
    if provider is None:
        ctx.error(d.pos, d.path, 'challenge "dns-01" requires "dns_provider"')
        return
    env = ctx.env
    where = f"{d.path}.dns_provider"
    if provider == "cloudflare" and not (env.get("CF_DNS_API_TOKEN") or env.get("CLOUDFLARE_DNS_API_TOKEN")):
        ctx.error(ctx.at(where), where, "cloudflare credentials are missing", "export CF_DNS_API_TOKEN")
    if provider == "route53" and not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        ctx.error(
            ctx.at(where),
            where,
            "route53 credentials are missing",
            "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )


def _check_writable(ctx: _Ctx, d: _Decoded, key: str) -> None:
    value = d.values.get(key)
    path = f"{d.path}.{key}"
    if not value or not ctx.ok(path):
        return
    probe = os.path.abspath(value)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.access(probe, os.W_OK):
        ctx.error(ctx.at(path, d.pos), path, f"{_q(value)} is not writable")


TLS: Final = _schema(
    "tls",
    [
        _K("cert_file", STR, "", path=True),
        _K("key_file", STR, "", path=True),
        _K("certificates", _blocks(CERT), ()),
        _K("min_version", _enum("1.2", "1.3"), "1.2"),
        _K("alpn", _list(STR), None),
        _K("acme", BOOL, False),
        _K("acme_email", STR, ""),
        _K("acme_domains", _list(STR), ()),
        _K("acme_ca_url", _str(_check_http_url), "https://acme-v02.api.letsencrypt.org/directory", url=True),
        _K("acme_staging", BOOL, False),
        _K("acme_ca_file", STR, "", path=True),
        _K("acme_storage_path", STR, "/etc/gateway/acme", path=True),
        _K("challenge", _enum("http-01", "tls-alpn-01", "dns-01"), "http-01"),
        _K("dns_provider", _enum("cloudflare", "route53"), None),
    ],
    _build_tls,
)


def _build_redirect(d: _Decoded, ctx: _Ctx) -> RedirectConfig:
    return RedirectConfig(d.values["entrypoint"] or "", d.values["permanent"])


REDIRECT: Final = _schema(
    "redirect", [_K("entrypoint", STR, required=True), _K("permanent", BOOL, True)], _build_redirect
)


#: entrypoint keys that apply to some protocols only
_PROTOCOL_KEYS: Final = {
    "http2": ("http",),
    "tcp_allowed_ips": ("tcp",),
    "udp_session_timeout_secs": ("udp",),
    "udp_max_sessions": ("udp",),
    "redirect": ("http",),
    "tls": ("http", "tcp"),
}


def _build_entrypoint(d: _Decoded, ctx: _Ctx) -> EntrypointConfig:
    v = dict(d.values)
    p = d.path
    name = p.split(".", 1)[1]
    proto = v["protocol"]
    address = v["address"] or ""
    host, port = parse_address(address) or ("", 0)
    for key, allowed in _PROTOCOL_KEYS.items():
        if d.has(key) and proto not in allowed and not _is_null(d.present[key]):
            where = f"{p}.{key}"
            ctx.error(ctx.at(where), where, f'"{key}" is not allowed on {proto} entrypoints')
            ctx.bad.add(where)
    if v["tls"] is not None and v["tls"].alpn is None:
        alpn: tuple[str, ...] = () if proto == "tcp" else (("h2", "http/1.1") if v["http2"] else ("http/1.1",))
        v["tls"] = replace(v["tls"], alpn=alpn)
    if v["tls"] is not None and proto != "udp":
        ctx.explicit.add("tls")
    if v["redirect"] is not None and proto == "http":
        ctx.explicit.add("redirect")
    if d.has("http2") and v["http2"] is True and proto == "http":
        ctx.explicit.add("http2")
    if proto in ("tcp", "udp"):
        ctx.explicit.add(f"{proto} entrypoint")
    if v["trusted_ips"]:
        ctx.explicit.add("trusted_ips")
    if v["max_connections"]:
        ctx.explicit.add("max_connections")
    if v["tcp_allowed_ips"]:
        ctx.explicit.add("tcp_allowed_ips")
    return EntrypointConfig(name=name, host=host, port=port, **{**v, "address": address})


ENTRYPOINT: Final = _schema(
    "entrypoint",
    [
        _K("address", _str(_check_address), None, required=True),
        _K("protocol", _enum("http", "tcp", "udp"), "http"),
        _K("tls", _block(TLS), None),
        _K("http2", BOOL, True),
        _K("max_concurrent_streams", _int(1, 10000), 250),
        _K("header_read_timeout", _dur(0, lo_open=True), 30.0),
        _K("idle_timeout", _dur(0, lo_open=True), 90.0),
        _K("max_request_line_bytes", _int(256), 8192),
        _K("max_header_bytes", _int(1024), 65536),
        _K("max_headers", _int(1), 100),
        _K("trusted_ips", _list(_str(_check_ip)), ()),
        _K("redirect", _block(REDIRECT), None),
        _K("max_connections", _int(0), 0),
        _K("tcp_allowed_ips", _list(_str(_check_ip)), ()),
        _K("udp_session_timeout_secs", _secs(0, lo_open=True), 30.0),
        _K("udp_max_sessions", _int(1), 10000),
    ],
    _build_entrypoint,
)


# --- routers (§3.2) ---------------------------------------------------------------------------------------------


def _build_router(d: _Decoded, ctx: _Ctx) -> RouterConfig:
    v = d.values
    return RouterConfig(
        name=d.path.split(".", 1)[1],
        rule=v["rule"],
        service=v["service"] or "",
        entrypoints=v["entrypoints"],
        middlewares=v["middlewares"],
        priority=v["priority"],
    )


ROUTER: Final = _schema(
    "router",
    [
        _K("rule", STR, None),
        _K("service", STR, None, required=True),
        _K("entrypoints", _list(STR), ()),
        _K("middlewares", _list(STR), ()),
        _K("priority", _int(), 0),
    ],
    _build_router,
)


# --- services (§3.3, §7, §8) ------------------------------------------------------------------------------------

_DEFAULT_PORTS: Final = {"http": 80, "h2c": 80, "https": 443}


def parse_server_url(url: str) -> tuple[str, str, int, str] | str:
    """``url`` -> (scheme, host, port, base path), or the diagnostic."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"invalid URL {_q(url)}: bad port"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "h2c", "tcp", "udp") or not parts.hostname or "://" not in url:
        return (
            f'invalid URL {_q(url)}; expected "<scheme>://host[:port][/path]" with scheme http, https, h2c, tcp or udp'
        )
    if parts.query or parts.fragment or parts.username is not None:
        return f"invalid URL {_q(url)}: a backend URL has no user, query or fragment"
    if port is None:
        if scheme not in _DEFAULT_PORTS:
            return f"invalid URL {_q(url)}: {scheme}:// needs a port"
        port = _DEFAULT_PORTS[scheme]
    path = parts.path.rstrip("/")
    if scheme in ("tcp", "udp") and path:
        return f"invalid URL {_q(url)}: {scheme}:// takes no path"
    return scheme, parts.hostname, port, path


def _build_server(d: _Decoded, ctx: _Ctx) -> Any:
    url = d.values["url"]
    if url is None:
        return SKIP
    parsed = parse_server_url(url)
    if isinstance(parsed, str):
        where = f"{d.path}.url"
        ctx.error(ctx.at(where, d.pos), where, parsed)
        ctx.bad.add(where)
        return ServerConfig(url=url, weight=d.values["weight"])
    scheme, host, port, path = parsed
    return ServerConfig(url=url, weight=d.values["weight"], scheme=scheme, host=host, port=port, path=path)


SERVER: Final = _schema(
    "server", [_K("url", STR, None, required=True), _K("weight", _int(0, 1000000), 1)], _build_server
)

STRATEGY: Final = _enum("round-robin", "weighted", "least-connections", "random", "p2c")


def _build_health(d: _Decoded, ctx: _Ctx) -> HealthCheckConfig:
    v = d.values
    if v["path"] is not None and ctx.ok(f"{d.path}.path") and not v["path"].startswith("/"):
        ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", f'must start with "/", got {_q(v["path"])}')
    if ctx.ok(f"{d.path}.timeout", f"{d.path}.interval") and v["timeout"] > v["interval"]:
        where = f"{d.path}.timeout"
        ctx.error(
            ctx.at(where, d.pos),
            where,
            f"timeout ({format_duration(v['timeout'])}) must not exceed interval ({format_duration(v['interval'])})",
            None if d.has("timeout") else "the default timeout is 5s; set timeout to at most the interval",
        )
    ctx.explicit.add("health_check")
    return HealthCheckConfig(**v)


HEALTH: Final = _schema(
    "health_check",
    [
        _K("path", STR, None),
        _K("interval", _dur(0, lo_open=True), 10.0),
        _K("timeout", _dur(0, lo_open=True), 5.0),
        _K("unhealthy_threshold", _int(1), 3),
        _K("healthy_threshold", _int(1), 1),
        _K("expected_status", _list(_int(100, 599)), ()),
    ],
    _build_health,
)


def _build_passive(d: _Decoded, ctx: _Ctx) -> PassiveConfig:
    if d.values["enabled"]:
        ctx.explicit.add("passive health")
    return PassiveConfig(**d.values)


PASSIVE: Final = _schema(
    "passive",
    [
        _K("enabled", BOOL, True),
        _K("max_failures", _int(1), 5),
        _K("window", _dur(0, lo_open=True), 30.0),
        _K("ejection", _dur(0, lo_open=True), 30.0),
    ],
    _build_passive,
)


def _build_sticky(d: _Decoded, ctx: _Ctx) -> StickyConfig:
    v = d.values
    if v["same_site"] == "none" and not v["secure"] and ctx.ok(f"{d.path}.secure"):
        where = f"{d.path}.secure"
        ctx.error(ctx.at(where, d.pos), where, 'must be true when same_site = "none"')
    ctx.explicit.add("sticky")
    return StickyConfig(**{**v, "cookie": v["cookie"] or ""})


def _check_cookie(value: Any) -> str | None:
    return None if _TOKEN_RE.match(value) else f"invalid cookie name {_q(value)}; use an RFC 6265 token"


STICKY: Final = _schema(
    "sticky",
    [
        _K("cookie", _str(_check_cookie), None, required=True),
        _K("ttl", _dur(0, lo_open=True), 3600.0),
        _K("max_sessions", _int(1), 100000),
        _K("secure", BOOL, False),
        _K("http_only", BOOL, True),
        _K("same_site", _enum("lax", "strict", "none"), "lax"),
    ],
    _build_sticky,
)


def _build_lb(d: _Decoded, ctx: _Ctx) -> LoadBalancerConfig:
    v = d.values
    servers = v["servers"]
    if servers and all(s.weight == 0 for s in servers) and ctx.ok(f"{d.path}.servers"):
        where = f"{d.path}.servers"
        ctx.error(ctx.at(where), where, "the weights of servers must not all be 0")
    return LoadBalancerConfig(**v)


LB: Final = _schema(
    "load_balancer",
    [
        _K("strategy", STRATEGY, "round-robin"),
        _K("servers", _blocks(SERVER), ()),
        _K("pass_host_header", BOOL, True),
        _K("health_check", _block(HEALTH), None),
        _K("passive", _block(PASSIVE), PassiveConfig()),
        _K("sticky", _block(STICKY), None),
    ],
    _build_lb,
)


def _build_transport(d: _Decoded, ctx: _Ctx) -> TransportConfig:
    v = d.values
    if (
        (d.has("tls_insecure_skip_verify") and v["tls_insecure_skip_verify"])
        or v["tls_ca_file"]
        or v["tls_server_name"]
    ):
        ctx.explicit.add("transport tls")
    if v["tls_ca_file"]:
        _file_check(ctx, d, "tls_ca_file")
    return TransportConfig(**v)


TRANSPORT: Final = _schema(
    "transport",
    [
        _K("connect_timeout", _dur(0, lo_open=True), 5.0),
        _K("response_header_timeout", _dur(0, lo_open=True), 300.0),
        _K("stream_idle_timeout", _dur(0, lo_open=True), 300.0),
        _K("request_timeout", _dur(0), 0.0),
        _K("tunnel_idle_timeout", _dur(0, lo_open=True), 3600.0),
        _K("max_idle_connections_per_backend", _int(0), 256),
        _K("idle_connection_timeout", _dur(0, lo_open=True), 90.0),
        _K("tls_insecure_skip_verify", BOOL, False),
        _K("tls_ca_file", STR, "", path=True),
        _K("tls_server_name", STR, ""),
    ],
    _build_transport,
)


def _build_mirror(d: _Decoded, ctx: _Ctx) -> MirrorConfig:
    ctx.explicit.add("mirror")
    return MirrorConfig(**{**d.values, "service": d.values["service"] or ""})


MIRROR: Final = _schema(
    "mirror",
    [
        _K("service", STR, None, required=True),
        _K("percentage", _num(0, 100), 100.0),
        _K("max_body_bytes", _int(0), 1048576),
        _K("max_in_flight", _int(1), 128),
    ],
    _build_mirror,
)


def _build_failover(d: _Decoded, ctx: _Ctx) -> FailoverConfig:
    ctx.explicit.add("failover")
    return FailoverConfig(d.values["service"] or "")


FAILOVER: Final = _schema("failover", [_K("service", STR, None, required=True)], _build_failover)


def _build_box(d: _Decoded, ctx: _Ctx) -> BoxExecutorConfig:
    return BoxExecutorConfig(**d.values)


BOX: Final = _schema(
    "box",
    [
        _K("url", _str(_check_http_url), "http://127.0.0.1:9090", url=True),
        _K("token", STR, "", secret=True),
        _K("timeout", _dur(0, lo_open=True), 10.0),
    ],
    _build_box,
)


def _check_port_range(value: Any) -> str | None:
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", value)
    if m is None or not (1 <= int(m.group(1)) <= int(m.group(2)) <= 65535):
        return f'invalid port range {_q(value)}; expected "A-B" with 1 <= A <= B <= 65535'
    return None


def _build_process(d: _Decoded, ctx: _Ctx) -> ProcessExecutorConfig:
    v = dict(d.values)
    if not v["working_dir"]:
        v["working_dir"] = os.getcwd() if d.pos.file.startswith("<") else os.path.dirname(os.path.abspath(d.pos.file))
    if v["health_path"] and ctx.ok(f"{d.path}.health_path") and not v["health_path"].startswith("/"):
        where = f"{d.path}.health_path"
        ctx.error(ctx.at(where), where, f'must start with "/", got {_q(v["health_path"])}')
    return ProcessExecutorConfig(**{**v, "command": v["command"] or ()})


PROCESS: Final = _schema(
    "process",
    [
        _K("command", _list(_str(_check_nonempty), 1), None, required=True),
        _K("env", _map(), EMPTY_MAP),
        _K("working_dir", STR, "", path=True),
        _K("health_path", STR, ""),
        _K("port_range", _str(_check_port_range), "20000-20999"),
        _K("host", STR, "127.0.0.1"),
        _K("scheme", _enum("http", "h2c"), "http"),
        _K("startup_timeout", _dur(0, lo_open=True), 300.0),
        _K("drain_timeout", _dur(0), 60.0),
        _K("stop_timeout", _dur(0), 10.0),
    ],
    _build_process,
)


def _build_k8s_executor(d: _Decoded, ctx: _Ctx) -> KubernetesExecutorConfig:
    return KubernetesExecutorConfig(**d.values)


K8S_EXECUTOR: Final = _schema(
    "kubernetes",
    [
        _K("namespace", STR, ""),
        _K("deployment", STR, ""),
        _K("service_name", STR, ""),
        _K("port", _T("int_or_str"), None),
        _K("scheme", _enum("http", "https", "h2c"), "http"),
        _K("api_url", _str(lambda v: _check_http_url(v, empty_ok=True)), "", url=True),
        _K("token_file", STR, "/var/run/secrets/kubernetes.io/serviceaccount/token", path=True),
        _K("ca_file", STR, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", path=True),
    ],
    _build_k8s_executor,
)

_EXECUTOR_BLOCKS: Final = ("box", "process", "kubernetes")


def _build_scaling(d: _Decoded, ctx: _Ctx) -> ScalingConfig:
    v = dict(d.values)
    p = d.path
    ex = v["executor"]
    for block in _EXECUTOR_BLOCKS:
        if d.has(block) and block != ex and ctx.ok(f"{p}.executor"):
            where = f"{p}.{block}"
            ctx.error(ctx.at(where), where, f'a {block} block requires executor = "{block}", but executor is "{ex}"')
    if ex == "box" and v["box"] is None:
        v["box"] = BoxExecutorConfig()
    if ex == "kubernetes" and v["kubernetes"] is None:
        v["kubernetes"] = KubernetesExecutorConfig()
    if ex == "process" and v["process"] is None and not d.has("process"):
        ctx.error(d.pos, p, 'executor "process" requires a process block with "command"')
    if ctx.ok(f"{p}.min_replicas", f"{p}.max_replicas") and v["min_replicas"] > v["max_replicas"]:
        where = f"{p}.min_replicas"
        ctx.error(
            ctx.at(where, d.pos),
            where,
            f"min_replicas ({v['min_replicas']}) is greater than max_replicas ({v['max_replicas']})",
        )
    if ctx.ok(f"{p}.panic_window", f"{p}.stable_window") and v["panic_window"] > v["stable_window"]:
        where = f"{p}.panic_window"
        ctx.error(
            ctx.at(where, d.pos),
            where,
            f"panic_window ({format_duration(v['panic_window'])}) must not exceed stable_window "
            f"({format_duration(v['stable_window'])})",
        )
    ctx.explicit.add("scaling")
    ctx.explicit.add(f"executor {ex}")
    return ScalingConfig(**v)


def _check_utilization(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"target_utilization must be in (0, 1], got {_fmt_num(value)}"


SCALING: Final = _schema(
    "scaling",
    [
        _K("min_replicas", _int(0), 0),
        _K("max_replicas", _int(1), 10),
        _K("container_concurrency", _int(0), 0),
        _K("target_utilization", _T("num", check=_check_utilization), 0.7),
        _K("buffer_enabled", BOOL, False),
        _K("buffer_size", _int(1), 100),
        _K("buffer_timeout_secs", _secs(0, lo_open=True), 30.0),
        _K("scale_down_delay_secs", _secs(0), 300.0),
        _K("executor", _enum("box", "process", "kubernetes", "static", aliases=(("k8s", "kubernetes"),)), "box"),
        _K("stable_window", _dur(6, 3600), 60.0),
        _K("panic_window", _dur(1), 6.0),
        _K("panic_threshold", _num(1.0), 2.0),
        _K("max_scale_up_rate", _num(1.0, lo_open=True), 1000.0),
        _K("max_scale_down_rate", _num(1.0, lo_open=True), 2.0),
        _K("box", _block(BOX), None),
        _K("process", _block(PROCESS), None),
        _K("kubernetes", _block(K8S_EXECUTOR), None),
    ],
    _build_scaling,
    legacy={
        "scale_to_zero_grace": _Legacy(
            "scale_down_delay_secs",
            _dur(0),
            lambda v: f'"scale_to_zero_grace" is deprecated; use scale_down_delay_secs = {_fmt_num(v)}',
        )
    },
)


def _build_revision(d: _Decoded, ctx: _Ctx) -> Any:
    v = d.values
    name = v["name"]
    if name is None:
        return SKIP
    if not NAME_RE.match(name) and ctx.ok(f"{d.path}.name"):
        where = f"{d.path}.name"
        ctx.error(ctx.at(where, d.pos), where, f"invalid name {_q(name)}; names match {_NAME_SHOWN}")
    return RevisionConfig(
        name=name,
        traffic_percent=v["traffic_percent"],
        servers=v["servers"],
        strategy=v["strategy"] or "",  # "" = the load balancer's, filled by the service
    )


REVISION: Final = _schema(
    "revision",
    [
        _K("name", STR, None, required=True),
        _K("traffic_percent", _int(0, 100), 100),
        _K("servers", _blocks(SERVER), ()),
        _K("strategy", STRATEGY, None),
    ],
    _build_revision,
)


def _build_rollout(d: _Decoded, ctx: _Ctx) -> RolloutConfig:
    v = d.values
    ctx.explicit.add("rollout")
    return RolloutConfig(**{**v, "from_": v["from_"] or "", "to": v["to"] or ""})


ROLLOUT: Final = _schema(
    "rollout",
    [
        _K("from", STR, None, required=True, field="from_"),
        _K("to", STR, None, required=True),
        _K("step_percent", _int(1, 100), 10),
        _K("step_interval_secs", _secs(1), 60.0),
        _K("error_rate_threshold", _num(0, 1), 0.05),
        _K("latency_threshold_ms", _ms(1), 5000.0),
        _K("min_requests", _int(1), 10),
    ],
    _build_rollout,
)


def _build_service(d: _Decoded, ctx: _Ctx) -> ServiceConfig:
    v = dict(d.values)
    p = d.path
    name = p.split(".", 1)[1]
    lb: LoadBalancerConfig = v["load_balancer"]
    revisions = tuple(replace(r, strategy=r.strategy or lb.strategy) for r in v["revisions"])
    v["revisions"] = revisions
    if revisions:
        ctx.explicit.add("revisions")
        if lb.servers:
            where = f"{p}.load_balancer.servers"
            ctx.error(ctx.at(where), where, "load_balancer.servers must be empty when revisions are set")
        seen: dict[str, int] = {}
        for i, r in enumerate(revisions):
            if r.name in seen:
                where = f"{p}.revisions[{i}].name"
                ctx.error(ctx.at(where), where, f'duplicate revision "{r.name}" (also revisions[{seen[r.name]}])')
            seen.setdefault(r.name, i)
        if ctx.ok(f"{p}.revisions"):
            total = sum(r.traffic_percent for r in revisions)
            if total != 100:
                where = f"{p}.revisions"
                ctx.error(ctx.at(where), where, f"traffic_percent of revisions must sum to 100, got {total}")
        scaling: ScalingConfig | None = v["scaling"]
        supplies = scaling is not None and scaling.executor != "static"
        for i, r in enumerate(revisions):
            if not r.servers and not supplies:
                where = f"{p}.revisions[{i}]"
                ctx.error(
                    ctx.at(where),
                    where,
                    f'revision "{r.name}" has no servers',
                    "list servers, or add a scaling block whose executor supplies endpoints",
                )
        if scaling is not None and scaling.executor == "process":
            where = f"{p}.scaling.executor"
            ctx.error(ctx.at(where), where, 'executor "process" cannot be combined with revisions')
    rollout: RolloutConfig | None = v["rollout"]
    if rollout is not None:
        where = f"{p}.rollout"
        if not revisions and ctx.ok(f"{p}.revisions"):
            a = rollout.from_ or "v1"
            b = rollout.to or "v2"
            if a == b:
                b = "v2" if a != "v2" else "v1"
            ctx.error(
                ctx.at(where),
                where,
                f'rollout requires revisions, but service "{name}" defines none',
                "move load_balancer.servers into revisions = "
                f'[{{ name = "{a}", traffic_percent = 100, servers = [...] }}, '
                f'{{ name = "{b}", traffic_percent = 0, servers = [...] }}]',
            )
        elif revisions:
            names = [r.name for r in revisions]
            for key, value in (("from", rollout.from_), ("to", rollout.to)):
                if ctx.ok(f"{where}.{key}") and value not in names:
                    close = suggest(value, names)
                    ctx.error(
                        ctx.at(f"{where}.{key}"),
                        f"{where}.{key}",
                        f'rollout.{key} "{value}" is not a revision of service "{name}"',
                        f'did you mean "{close}"?' if close else f"revisions: {', '.join(names)}",
                    )
            if rollout.from_ == rollout.to and ctx.ok(f"{where}.to"):
                ctx.error(ctx.at(f"{where}.to"), f"{where}.to", "rollout.to must differ from rollout.from")
    return ServiceConfig(name=name, **v)


SERVICE: Final = _schema(
    "service",
    [
        _K("load_balancer", _block(LB), LoadBalancerConfig()),
        _K("transport", _block(TRANSPORT), TransportConfig()),
        _K("scaling", _block(SCALING), None),
        _K("revisions", _blocks(REVISION), ()),
        _K("rollout", _block(ROLLOUT), None),
        _K("mirror", _block(MIRROR), None),
        _K("failover", _block(FAILOVER), None),
    ],
    _build_service,
)


# ---------------------------------------------------------------------------------------------------------------
# Middlewares (§6)
# ---------------------------------------------------------------------------------------------------------------

MIDDLEWARE_TYPES: Final = (
    "jwt",
    "api-key",
    "basic-auth",
    "forward-auth",
    "rate-limit",
    "rate-limit-redis",
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


def _mw_error(ctx: _Ctx, d: _Decoded, key: str | None, message: str, hint: str | None = None) -> None:
    where = f"{d.path}.{key}" if key else d.path
    ctx.error(ctx.at(where, d.pos) if key else d.pos, where, message, hint)


def _check_pem_public_key(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError as exc:
        return f"cannot read {_q(path)}: {exc.strerror or exc}"
    m = _PEM_BLOCK.search(text)
    if m is None:
        return f"cannot parse {_q(path)}: expected a PEM public key or certificate"
    try:
        base64.b64decode("".join(m.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        return f"cannot parse {_q(path)}: invalid PEM data"
    return None


def _jwt(d: _Decoded, ctx: _Ctx) -> None:
    v = d.values
    sources = [k for k in ("value", "public_key_file", "jwks_url") if d.has(k) and not _is_null(d.present[k])]
    if len(sources) != 1:
        _mw_error(ctx, d, None, 'jwt requires exactly one of "value", "public_key_file", "jwks_url"')
    if v["value"] == "" and d.has("value") and ctx.ok(f"{d.path}.value"):
        _mw_error(ctx, d, "value", "must not be empty")
    if v["public_key_file"] and ctx.ok(f"{d.path}.public_key_file"):
        problem = _check_pem_public_key(v["public_key_file"])
        if problem:
            _mw_error(ctx, d, "public_key_file", problem)
    if v["jwks_url"] is not None and ctx.ok(f"{d.path}.jwks_url"):
        problem = _check_http_url(v["jwks_url"])
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
                    ctx, d, where, f"unknown algorithm {_q(alg)}" + (f' (did you mean "{close}"?)' if close else "")
                )
            elif sources and (alg in _HS) != hmac:
                need = "an HMAC secret (value)" if alg in _HS else "a public key (public_key_file or jwks_url)"
                _mw_error(ctx, d, where, f"algorithm {_q(alg)} needs {need}")
    if isinstance(v["forward_claims"], Mapping):
        for claim, header in v["forward_claims"].items():
            if not _TOKEN_RE.match(header):
                _mw_error(ctx, d, f"forward_claims.{claim}", f"invalid header name {_q(header)}")


def _htpasswd_problem(line: str) -> str | None:
    user, sep, digest = line.partition(":")
    if not sep or not user:
        return 'expected "user:hash"'
    if not _HTPASSWD_HASH.match(digest):
        return "unsupported hash; use bcrypt ($2a$, $2b$, $2y$), {SHA} or $apr1$"
    return None


def _basic_auth(d: _Decoded, ctx: _Ctx) -> None:
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
        path = _file_check(ctx, d, "users_file")
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                for n, raw in enumerate(f, 1):
                    line = raw.strip()
                    if not line or line.startswith("#"):
                        continue
                    users += 1
                    problem = _htpasswd_problem(line)
                    if problem:
                        _mw_error(ctx, d, "users_file", f"line {n} of {_q(path)}: invalid htpasswd entry: {problem}")
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
    if value.startswith("header:") and _TOKEN_RE.match(value[7:]):
        return None
    return f'invalid key {_q(value)}; expected "client_ip", "global" or "header:<Name>"'


def _rate_limit(d: _Decoded, ctx: _Ctx) -> None:
    v = d.values
    if v["burst"] is None:
        rate = v["rate"]
        v["burst"] = max(1, math.ceil(rate)) if isinstance(rate, float) else 1


def _check_origin(value: Any) -> str | None:
    if value == "*":
        return None
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(\*\.)?([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?", value)
    if m is None:
        return f'invalid origin {_q(value)}; expected "*", "scheme://host[:port]" or "scheme://*.domain"'
    return None


def _check_header_map(d: _Decoded, ctx: _Ctx, key: str) -> None:
    value = d.values[key]
    if not isinstance(value, Mapping):
        return
    for name, val in value.items():
        if not _TOKEN_RE.match(name):
            _mw_error(ctx, d, f"{key}.{name}", f"invalid header name {_q(name)}")
        elif any(c in val for c in "\r\n\x00"):
            _mw_error(ctx, d, f"{key}.{name}", "header values must not contain CR, LF or NUL")


def _headers(d: _Decoded, ctx: _Ctx) -> None:
    _check_header_map(d, ctx, "request_headers")
    _check_header_map(d, ctx, "response_headers")


def _retry(d: _Decoded, ctx: _Ctx) -> None:
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
            f"max_interval_ms ({_fmt_num(v['max_interval_ms'])}) must be at least retry_interval_ms "
            f"({_fmt_num(v['retry_interval_ms'])})",
        )


def _check_retry_status(value: Any) -> str | None:
    return None if value == 429 or 500 <= value <= 599 else f"must be 429 or between 500 and 599, got {value}"


def _ip_allow(d: _Decoded, ctx: _Ctx) -> None:
    v = d.values
    if v["depth"] and v["trusted_proxies"]:
        _mw_error(ctx, d, "depth", '"depth" and "trusted_proxies" are exclusive')


def _tcp_filter(d: _Decoded, ctx: _Ctx) -> None:
    v = d.values
    if (
        not v["allowed_ips"]
        and not v["max_connections"]
        and ctx.ok(f"{d.path}.allowed_ips", f"{d.path}.max_connections")
    ):
        _mw_error(ctx, d, None, 'tcp-filter requires "allowed_ips" or "max_connections"')


def _ws_mux(d: _Decoded, ctx: _Ctx) -> None:
    path = d.values["upstream_path"]
    if path and ctx.ok(f"{d.path}.upstream_path") and not path.startswith("/"):
        _mw_error(ctx, d, "upstream_path", f'must start with "/", got {_q(path)}')


def _noop(d: _Decoded, ctx: _Ctx) -> None:
    pass


_RATE_KEYS: Final = (
    _K("rate", _num(0, lo_open=True), None, required=True),
    _K("period", _dur(0, lo_open=True), 1.0),
    _K("burst", _int(1), None),
    _K("key", _str(_check_limit_key), "client_ip"),
)

MIDDLEWARE_KEYS: Final[dict[str, tuple[tuple[_K, ...], Callable[[_Decoded, _Ctx], None]]]] = {
    "jwt": (
        (
            _K("value", STR, None, secret=True),
            _K("public_key_file", STR, None, path=True),
            _K("jwks_url", STR, None, url=True),
            _K("jwks_refresh", _dur(0, lo_open=True), 600.0),
            _K("algorithms", _list(STR, 1), None),
            _K("header", _str(_check_token), "Authorization"),
            _K("issuer", STR, ""),
            _K("audience", _T("str_or_list"), ()),
            _K("leeway", _dur(0), 60.0),
            _K("require_exp", BOOL, True),
            _K("forward_claims", _map(), MappingProxyType({"sub": "X-JWT-Subject"})),
        ),
        _jwt,
    ),
    "api-key": (
        (
            _K("header", _str(_check_token), "X-API-Key"),
            _K("keys", _list(_str(_check_nonempty), 1), None, required=True, secret=True),
            _K("strip_header", BOOL, False),
        ),
        _noop,  # keys: required, non-empty list of non-empty strings (schema)
    ),
    "basic-auth": (
        (
            _K("username", _str(_check_nonempty), None),
            _K("password", STR, None, secret=True),
            _K("users", _list(STR), (), secret=True),
            _K("users_file", STR, "", path=True),
            _K("realm", STR, "a3s-gateway"),
            _K("remove_header", BOOL, False),
        ),
        _basic_auth,
    ),
    "forward-auth": (
        (
            _K("forward_auth_url", _str(_check_http_url), None, required=True, url=True),
            _K("forward_auth_method", _enum("GET", "POST", "HEAD"), "GET"),
            _K("forward_auth_timeout", _dur(0, lo_open=True), 5.0),
            _K("forward_auth_request_headers", _list(_str(_check_token)), ()),
            _K("forward_auth_response_headers", _list(_str(_check_token)), ()),
        ),
        _noop,
    ),
    "rate-limit": ((*_RATE_KEYS, _K("max_keys", _int(1), 65536)), _rate_limit),
    "rate-limit-redis": (
        (
            *_RATE_KEYS,
            _K("redis_url", _str(_check_redis_url), None, required=True, url=True),
            _K("failure_mode", _enum("open", "closed"), "open"),
            _K("redis_timeout", _dur(0, lo_open=True), 1.0),
            _K("key_prefix", STR, "a3s:ratelimit:"),
        ),
        _rate_limit,
    ),
    "cors": (
        (
            _K("allowed_origins", _list(_str(_check_origin)), ("*",)),
            _K("allowed_methods", _list(_str(_check_token)), ("GET", "POST", "PUT", "DELETE", "OPTIONS")),
            _K("allowed_headers", _list(STR), ("Content-Type", "Authorization")),
            _K("expose_headers", _list(_str(_check_token)), ()),
            _K("allow_credentials", BOOL, False),
            _K("max_age", _secs(0), 86400.0),
        ),
        _noop,
    ),
    "headers": ((_K("request_headers", _map(), EMPTY_MAP), _K("response_headers", _map(), EMPTY_MAP)), _headers),
    "strip-prefix": ((_K("prefixes", _list(_str(_check_abs_path), 1), None, required=True),), _noop),
    "body-limit": ((_K("max_body_bytes", _int(0, lo_open=True), None, required=True),), _noop),
    "retry": (
        (
            _K("max_retries", _int(1, 10), 3),
            _K("retry_interval_ms", _ms(0), 100.0),
            _K("max_interval_ms", _ms(0), None),
            _K("retry_on_status", _list(_T("int", check=_check_retry_status)), (502, 503, 504)),
            _K("retry_non_idempotent", BOOL, False),
            _K("max_replay_bytes", _int(0), 1048576),
            _K("max_retry_after", _dur(0), 10.0),
        ),
        _retry,
    ),
    "circuit-breaker": (
        (
            _K("failure_threshold", _int(1), 5),
            _K("cooldown_secs", _secs(0, lo_open=True), 30.0),
            _K("success_threshold", _int(1), 1),
        ),
        _noop,
    ),
    "ip-allow": (
        (
            _K("allowed_ips", _list(_str(_check_ip), 1), None, required=True),
            _K("trusted_proxies", _list(_str(_check_ip)), ()),
            _K("depth", _int(0), 0),
        ),
        _ip_allow,
    ),
    "compress": (
        (
            _K("min_size", _int(0), 1024),
            _K("encodings", _list(_enum("br", "gzip", "deflate"), 1), ("br", "gzip", "deflate")),
            _K(
                "content_types",
                _list(STR),
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
            _K("include_event_stream", BOOL, False),
        ),
        _noop,
    ),
    "tcp-filter": ((_K("allowed_ips", _list(_str(_check_ip)), ()), _K("max_connections", _int(0), 0)), _tcp_filter),
    "ws-mux": (
        (
            _K("max_channels", _int(1, 1024), 64),
            _K("upstream_path", STR, ""),
            _K("send_queue", _int(1), 256),
            _K("max_message_bytes", _int(1), 1048576),
        ),
        _ws_mux,
    ),
}

_TYPE_KEY: Final = _K("type", _enum(*MIDDLEWARE_TYPES), None, required=True)
MIDDLEWARE_SCHEMAS: Final = {
    t: _schema(f"middleware {t}", (_TYPE_KEY, *keys)) for t, (keys, _) in MIDDLEWARE_KEYS.items()
}


def _decode_middleware(body: Body, ctx: _Ctx, path: str, pos: Pos) -> MiddlewareConfig | None:
    name = path.split(".", 1)[1]
    type_entries = [e for e in body.entries if e.key == "type"]
    if not type_entries or _is_null(type_entries[0]):
        ctx.error(pos, path, 'missing required key "type"', f"one of: {', '.join(MIDDLEWARE_TYPES)}")
        return None
    entry = type_entries[0]
    ctx.locations[f"{path}.type"] = entry.pos
    mw_type = _convert(_TYPE_KEY.type, entry.value, ctx, f"{path}.type", entry.pos) if not entry.is_block else SKIP
    if mw_type is SKIP:
        if entry.is_block:
            ctx.error(entry.pos, f"{path}.type", "expected string, got block")
        return None
    assert isinstance(mw_type, str)
    schema = MIDDLEWARE_SCHEMAS[mw_type]
    decoded = _decode(body, schema, ctx, path, pos)
    decoded.values.pop("type", None)
    MIDDLEWARE_KEYS[mw_type][1](decoded, ctx)
    params = {k: v for k, v in decoded.values.items()}
    return MiddlewareConfig(name=name, type=mw_type, params=MappingProxyType(params))


# ---------------------------------------------------------------------------------------------------------------
# Providers, admin, access log, tracing, top level (§3.5-§3.10, §12)
# ---------------------------------------------------------------------------------------------------------------


def _build_file_provider(d: _Decoded, ctx: _Ctx) -> FileProviderConfig:
    v = d.values
    if v["watch"]:
        ctx.explicit.add("providers.file.watch")
    if v["directory"]:
        ctx.explicit.add("providers.file.directory")
    return FileProviderConfig(**v)


FILE_PROVIDER: Final = _schema(
    "file", [_K("watch", BOOL, True), _K("directory", STR, "", path=True)], _build_file_provider
)


def _build_seed(d: _Decoded, ctx: _Ctx) -> Any:
    return d.values["url"] if d.values["url"] is not None else SKIP


SEED: Final = _schema("seed", [_K("url", _str(_check_http_url), None, required=True, url=True)], _build_seed)


def _build_discovery(d: _Decoded, ctx: _Ctx) -> DiscoveryProviderConfig:
    if not d.values["seeds"] and ctx.ok(f"{d.path}.seeds"):
        ctx.error(d.pos, d.path, 'discovery requires at least one entry in "seeds"')
    ctx.explicit.add("providers.discovery")
    return DiscoveryProviderConfig(**d.values)


DISCOVERY: Final = _schema(
    "discovery",
    [
        _K("seeds", _blocks(SEED), ()),
        _K("poll_interval_secs", _secs(0, lo_open=True), 30.0),
        _K("timeout_secs", _secs(0, lo_open=True), 5.0),
    ],
    _build_discovery,
)


def _build_dns(d: _Decoded, ctx: _Ctx) -> Any:
    v = d.values
    ctx.explicit.add("providers.dns")
    if v["service"] is None or v["name"] is None:
        return SKIP
    return DnsProviderConfig(**v)


DNS: Final = _schema(
    "dns",
    [
        _K("service", STR, None, required=True),
        _K("name", _str(_check_nonempty), None, required=True),
        _K("type", _enum("A", "AAAA", "SRV"), "A"),
        _K("port", _int(1, 65535), 80),
        _K("scheme", _enum("http", "https", "h2c", "tcp", "udp"), "http"),
        _K("refresh", _dur(0, lo_open=True), 30.0),
        _K("honor_ttl", BOOL, True),
    ],
    _build_dns,
)


def _build_k8s_provider(d: _Decoded, ctx: _Ctx) -> KubernetesProviderConfig:
    ctx.explicit.add("providers.kubernetes")
    return KubernetesProviderConfig(**d.values)


K8S_PROVIDER: Final = _schema(
    "kubernetes",
    [
        _K("namespace", STR, ""),
        _K("label_selector", STR, ""),
        _K("ingress_class", STR, "a3s-gateway"),
        _K("ingress_route_crd", BOOL, False),
        _K("kubeconfig", STR, "", path=True),
    ],
    _build_k8s_provider,
    legacy={
        "watch_interval_secs": _Legacy(
            None, _secs(0), lambda v: '"watch_interval_secs" is deprecated and ignored: the provider watches'
        )
    },
)


def _build_providers(d: _Decoded, ctx: _Ctx) -> ProvidersConfig:
    return ProvidersConfig(**d.values)


PROVIDERS: Final = _schema(
    "providers",
    [
        _K("file", _block(FILE_PROVIDER), None),
        _K("discovery", _block(DISCOVERY), None),
        _K("dns", _blocks(DNS), ()),
        _K("kubernetes", _block(K8S_PROVIDER), None),
    ],
    _build_providers,
)


def _build_admin(d: _Decoded, ctx: _Ctx) -> AdminConfig:
    v = d.values
    host, port = parse_address(v["address"]) or ("", 0)
    ctx.explicit.add("admin")
    return AdminConfig(enabled=v["enabled"], address=v["address"], host=host, port=port, middlewares=v["middlewares"])


ADMIN: Final = _schema(
    "admin",
    [
        _K("enabled", BOOL, True),
        _K("address", _str(_check_address), "127.0.0.1:9901"),
        _K("middlewares", _list(STR), ()),
    ],
    _build_admin,
)


def _build_access_log(d: _Decoded, ctx: _Ctx) -> AccessLogConfig:
    v = d.values
    ctx.explicit.add("access_log")
    if v["path"] != "-" and ctx.ok(f"{d.path}.path"):
        if v["path"] == "":
            ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", 'must not be empty; use "-" for stdout')
        else:
            parent = os.path.dirname(os.path.abspath(v["path"]))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                ctx.error(ctx.at(f"{d.path}.path"), f"{d.path}.path", f"directory {_q(parent)} is not writable")
    return AccessLogConfig(**v)


ACCESS_LOG: Final = _schema(
    "access_log",
    [
        _K("path", STR, "-", path=True),
        _K("format", _enum("json"), "json"),
        _K("flush_interval", _dur(0, lo_open=True), 1.0),
    ],
    _build_access_log,
)


def _check_propagation(value: Any) -> str | None:
    dup = [x for i, x in enumerate(value) if x in value[:i]]
    return f'duplicate format "{dup[0]}"' if dup else None


def _build_tracing(d: _Decoded, ctx: _Ctx) -> TracingConfig:
    ctx.explicit.add("tracing")
    return TracingConfig(**d.values)


TRACING: Final = _schema(
    "tracing",
    [
        _K(
            "propagation",
            _T("list", item=_enum("w3c", "b3", "b3multi"), min_len=1, check=_check_propagation),
            ("w3c", "b3"),
        ),
        _K("sample_rate", _num(0, 1), 1.0),
        _K("otlp_endpoint", _str(lambda v: _check_http_url(v, empty_ok=True)), "", url=True),
        _K("otlp_headers", _map(), EMPTY_MAP, secret=True),
        _K("service_name", _str(_check_nonempty), "a3s-gateway"),
    ],
    _build_tracing,
)

TOP: Final = _schema(
    "gateway",
    [
        _K("providers", _block(PROVIDERS), ProvidersConfig()),
        _K("admin", _block(ADMIN), AdminConfig()),
        _K("access_log", _block(ACCESS_LOG), None),
        _K("tracing", _block(TRACING), TracingConfig()),
        _K("workers", _T("int_or_auto", lo=1), 1),
        _K("shutdown_timeout", _dur(0), 30.0),
    ],
    legacy={
        "shutdown_timeout_secs": _Legacy(
            "shutdown_timeout",
            _secs(0),
            lambda v: f'"shutdown_timeout_secs" is deprecated; use shutdown_timeout = "{format_duration(v)}"',
        )
    },
)

LABELLED: Final = {"entrypoints": ENTRYPOINT, "routers": ROUTER, "services": SERVICE, "middlewares": None}
_ALIASES: Final = {
    "entrypoint": "entrypoints",
    "router": "routers",
    "service": "services",
    "middleware": "middlewares",
    "provider": "providers",
}
_TOP_KEYS: Final = tuple(LABELLED) + tuple(TOP.keys) + tuple(TOP.legacy)


# ---------------------------------------------------------------------------------------------------------------
# Interpolation / expression diagnostics (located at the attribute that uses them)
# ---------------------------------------------------------------------------------------------------------------


def _report_expressions(body: Body, ctx: _Ctx, path: str, top: bool = False) -> None:
    for entry in body.entries:
        key = _ALIASES.get(entry.key, entry.key) if top else entry.key
        sub = f"{path}.{key}" if path else key
        if entry.is_block:
            for label, _ in entry.labels or ():
                sub += f".{label}"
        _report_value(entry.value, ctx, sub, entry.pos)


def _report_value(node: Node, ctx: _Ctx, path: str, at: Pos) -> None:
    if isinstance(node, Scalar):
        for message, hint in node.problems:
            ctx.error(at, path, message, hint)
    elif isinstance(node, Unsupported):
        ctx.error(at, path, f"unsupported expression {_q(node.text)}: only literal values are allowed")
    elif isinstance(node, ListNode):
        for i, item in enumerate(node.items):
            _report_value(item, ctx, f"{path}[{i}]", at)
    else:
        _report_expressions(node, ctx, path)


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One labelled top-level block, waiting for the whole configuration to be collected."""

    kind: str
    name: str
    pos: Pos
    body: Body


@dataclass
class _Collected:
    items: dict[str, dict[str, _Item]] = field(default_factory=lambda: {k: {} for k in LABELLED})
    singletons: list[Entry] = field(default_factory=list)


def _collect(body: Body, ctx: _Ctx, out: _Collected, main: bool) -> None:
    """Sort one file's top-level entries into labelled items and singletons; names are checked here."""
    _report_expressions(body, ctx, "", top=True)
    for entry in body.entries:
        key = _ALIASES.get(entry.key, entry.key)
        if key in LABELLED:
            if not entry.is_block:
                ctx.error(entry.pos, key, f'{key} must be a block with a name: {key} "<name>" {{ ... }}')
                continue
            labels = entry.labels or []
            if len(labels) != 1:
                ctx.error(entry.pos, key, f"{key} block needs exactly one label (its name), got {len(labels)}")
                continue
            name, label_pos = labels[0]
            path = f"{key}.{name}"
            if not NAME_RE.match(name):
                ctx.error(label_pos, path, f"invalid name {_q(name)}; names match {_NAME_SHOWN}")
                continue
            previous = out.items[key].get(name)
            if previous is not None:
                ctx.error(entry.pos, path, f'duplicate {key} "{name}" (also defined at {_loc(previous.pos)})')
                continue
            assert isinstance(entry.value, Body)
            out.items[key][name] = _Item(key, name, entry.pos, entry.value)
            ctx.locations[path] = entry.pos
        elif key in TOP.keys or key in TOP.legacy:
            if not main:
                ctx.error(entry.pos, key, f'"{key}" is allowed only in the main configuration file')
                continue
            out.singletons.append(replace(entry, key=key))
        else:
            close = suggest(entry.key, _TOP_KEYS)
            hint = f' (did you mean "{close}"?)' if close else ""
            ctx.error(entry.pos, entry.key, f'unknown key "{entry.key}"{hint}')


def _directory_files(ctx: _Ctx, providers: ProvidersConfig) -> list[str]:
    """The ``*.hcl`` files of ``providers.file.directory`` in byte-wise name order (§2.5)."""
    if providers.file is None or not providers.file.directory:
        return []
    directory = providers.file.directory
    where = "providers.file.directory"
    if not ctx.ok(where):
        return []
    try:
        return directory_files(directory)
    except OSError as exc:
        ctx.error(ctx.at(where), where, f"cannot read {_q(directory)}: {exc.strerror or exc}")
        return []


def directory_files(directory: str) -> list[str]:
    """The configuration files of ``directory`` (§2.5): ``*.hcl`` not starting with ``.``, in byte-wise name order;
    raises OSError when the directory cannot be listed."""
    files = []
    for name in sorted(os.listdir(directory), key=lambda n: n.encode("utf-8", "surrogateescape")):
        full = os.path.join(directory, name)
        if name.startswith(".") or not name.endswith(".hcl") or not os.path.isfile(full):
            continue
        files.append(full)
    return files


def source_digest(text: str) -> str:
    """What ``GatewayConfig.sources`` records of one file's text (its SHA-256)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def current_sources(main: str, directory: str) -> dict[str, str]:
    """What loading ``main`` with ``providers.file.directory = directory`` would read now, as path -> digest (the
    shape of ``GatewayConfig.sources``); a file that cannot be read, or a directory that cannot be listed, is ``""``."""
    paths = [main]
    sources: dict[str, str] = {}
    if directory:
        try:
            paths.extend(directory_files(directory))
        except OSError:
            sources[directory] = ""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                sources[path] = source_digest(f.read())
        except (OSError, UnicodeDecodeError):
            sources[path] = ""
    return sources


def _read(path: str, ctx: _Ctx, at: Pos | None) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        ctx.error(Pos(path, 1, 1), "", f"cannot read {_q(path)}: not UTF-8 ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        where = at or Pos(path, 0, 0)
        ctx.error(where, "", f"cannot read {_q(path)}: {exc.strerror or exc}")
    return None


def load_file(path: str, *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """``GatewayConfig.from_file``: the main file plus its directory files; raises ``ConfigError``."""
    ctx = _Ctx(os.environ if env is None else env)
    text = _read(path, ctx, None)
    if text is None:
        raise ConfigError(ctx.issues)
    return _load(ctx, text, path, load_directory=True)


def load_text(text: str, filename: str = "<string>", *, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """``GatewayConfig.from_hcl``."""
    ctx = _Ctx(os.environ if env is None else env)
    return _load(ctx, text, filename, load_directory=True, is_file=False)


def load_dict(data: Mapping[str, Any]) -> GatewayConfig:
    """``GatewayConfig.from_dict``: JSON-shaped data, diagnostics prefixed ``<dict>``."""
    ctx = _Ctx(os.environ)
    if not isinstance(data, Mapping):
        ctx.error(Pos("<dict>", 0, 0), "", f"expected an object, got {type(data).__name__}")
        raise ConfigError(ctx.issues)
    body = from_python(data, "<dict>", frozenset(LABELLED) | frozenset(_ALIASES))
    return _assemble(ctx, [body], "<dict>", main_path=None, load_directory=False)


def _load(ctx: _Ctx, text: str, filename: str, *, load_directory: bool, is_file: bool = True) -> GatewayConfig:
    body, issues = parse(text, filename, ctx.env)
    ctx.issues.extend(issues)
    sources = {filename: source_digest(text)} if is_file else {}
    return _assemble(ctx, [body], filename, main_path=filename if is_file else None, load_directory=load_directory,
                     sources=sources)


def _assemble(
    ctx: _Ctx, bodies: list[Body | None], main_name: str, *, main_path: str | None, load_directory: bool,
    sources: dict[str, str] | None = None,
) -> GatewayConfig:
    sources = {} if sources is None else sources
    collected = _Collected()
    files = [main_name]
    main = bodies[0]
    if main is not None:
        _collect(main, ctx, collected, main=True)
    top = _decode(Body(collected.singletons, Pos(main_name, 1, 1)), TOP, ctx, "")
    values = top.values
    for key in ("providers", "admin", "access_log", "tracing", "workers", "shutdown_timeout"):
        if values.get(key) is SKIP:
            values[key] = TOP.keys[key].default
    if top.has("workers") and (values["workers"] == "auto" or values["workers"] > 1):
        ctx.explicit.add("workers")
    providers: ProvidersConfig = values["providers"]
    directory_files = _directory_files(ctx, providers)
    if load_directory:
        for path in directory_files:
            text = _read(path, ctx, None)
            if text is None:
                continue
            files.append(path)
            sources[path] = source_digest(text)
            body, issues = parse(text, path, ctx.env)
            ctx.issues.extend(issues)
            if body is not None:
                _collect(body, ctx, collected, main=False)
    config = _build_all(ctx, collected, values, main_path, tuple(files))
    if ctx.errors:
        raise ConfigError(ctx.issues)
    return replace(config, sources=MappingProxyType(sources)) if sources else config


# ---------------------------------------------------------------------------------------------------------------
# The whole configuration: cross-references (§2.6, §3.2, §6.0, §7.6, §8.6, §8.7)
# ---------------------------------------------------------------------------------------------------------------

_TCP_MATCHERS: Final = frozenset({"HostSNI", "HostSNIRegexp", "ALPN"})
_LEGACY_RULE: Final = re.compile(r"\s*(?:PathPrefix\(\s*`/`\s*\)|Method\(\s*`(?:TCP|UDP)`\s*\))\s*\Z")
_CATCH_ALL: Final = re.compile(r"\s*HostSNI\(\s*`\*`\s*\)\s*\Z")


def rule_matchers(rule: str) -> set[str]:
    """Names of the matchers a rule uses (string arguments skipped); enough to infer a router's protocol."""
    names: set[str] = set()
    i = 0
    n = len(rule)
    while i < n:
        ch = rule[i]
        if ch == "`":
            end = rule.find("`", i + 1)
            i = n if end < 0 else end + 1
        elif ch == '"':
            i += 1
            while i < n and rule[i] != '"':
                i += 2 if rule[i] == "\\" else 1
            i += 1
        elif ch.isalpha():
            j = i
            while j < n and rule[j].isalnum():
                j += 1
            k = j
            while k < n and rule[k] in " \t\n":
                k += 1
            if k < n and rule[k] == "(":
                names.add(rule[i:j])
            i = j
        else:
            i += 1
    return names


def format_rule_error(rule: str, message: str, offset: int, hint: str | None) -> tuple[str, str | None]:
    """SPEC §2.6 rule diagnostic: message with the offset, then the rule and a caret (indented lines)."""
    text = f"invalid rule: {message} at offset {offset} of the rule"
    extra: str | None = None
    if hint and hint.startswith("did you mean"):
        text += f" ({hint})"
    else:
        extra = hint
    shown = rule.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    caret = " " * max(0, min(offset, len(shown))) + "^"
    return f"{text}\n    {shown}\n    {caret}", extra


def _check_rule(ctx: _Ctx, router: RouterConfig, written: str) -> None:
    """Rule grammar and matcher/protocol checks, by the routing module (imported lazily: it is optional here)."""
    try:
        from a3s_gateway.routing import rules
    except ImportError:
        return  # the rule engine is not part of this build yet; nothing else depends on it
    check = getattr(rules, "check_rule", None)
    error_type = getattr(rules, "RuleError", None)
    if check is None or error_type is None:
        return
    where = f"routers.{router.name}.rule"
    assert router.rule is not None
    try:
        check(router.rule, router.protocol)
    except error_type as exc:  # the exception class is found at run time
        message, hint = format_rule_error(
            router.rule,
            str(getattr(exc, "message", exc)),
            int(getattr(exc, "offset", 0) or 0),
            getattr(exc, "hint", None),
        )
        ctx.error(ctx.at(where), where, message, hint)


def _reference_hint(name: str, candidates: Iterable[str], define: str) -> str:
    close = suggest(name, candidates)
    return f'did you mean "{close}"?' if close else define


def _build_all(
    ctx: _Ctx, collected: _Collected, values: dict[str, Any], main_path: str | None, files: tuple[str, ...]
) -> GatewayConfig:
    entrypoints: dict[str, EntrypointConfig] = {}
    for name, item in collected.items["entrypoints"].items():
        ep = _build(ENTRYPOINT, _decode(item.body, ENTRYPOINT, ctx, f"entrypoints.{name}", item.pos), ctx)
        entrypoints[name] = ep
    middlewares: dict[str, MiddlewareConfig] = {}
    for name, item in collected.items["middlewares"].items():
        mw = _decode_middleware(item.body, ctx, f"middlewares.{name}", item.pos)
        if mw is not None:
            middlewares[name] = mw
    known_middlewares = set(collected.items["middlewares"])
    services: dict[str, ServiceConfig] = {}
    for name, item in collected.items["services"].items():
        services[name] = _build(SERVICE, _decode(item.body, SERVICE, ctx, f"services.{name}", item.pos), ctx)
    routers: dict[str, RouterConfig] = {}
    written_rules: dict[str, str] = {}
    for name, item in collected.items["routers"].items():
        router = _build(ROUTER, _decode(item.body, ROUTER, ctx, f"routers.{name}", item.pos), ctx)
        routers[name] = router
        if router.rule is not None:
            written_rules[name] = router.rule
    admin: AdminConfig = values["admin"]
    providers: ProvidersConfig = values["providers"]

    _check_entrypoints(ctx, entrypoints, admin)
    routers = _check_routers(ctx, routers, entrypoints, services, middlewares, known_middlewares)
    services = _check_services(ctx, services, routers, providers)
    _check_admin(ctx, admin, middlewares, known_middlewares)
    _warn_unused_entrypoints(ctx, entrypoints, routers)

    used_types = {middlewares[m].type for r in routers.values() for m in r.middlewares if m in middlewares}
    used_types |= {middlewares[m].type for m in admin.middlewares if m in middlewares}
    ctx.explicit.update(f"middleware {t}" for t in used_types)
    if admin.middlewares:
        ctx.explicit.add("admin.middlewares")

    locations = MappingProxyType({k: (p.file, p.line, p.col) for k, p in ctx.locations.items()})
    return GatewayConfig(
        entrypoints=entrypoints,
        routers=routers,
        services=services,
        middlewares=middlewares,
        providers=providers,
        admin=admin,
        access_log=values["access_log"],
        tracing=values["tracing"],
        workers=values["workers"],
        shutdown_timeout=values["shutdown_timeout"],
        warnings=sorted((i for i in ctx.issues if i.severity == "warning"), key=lambda i: (i.file, i.line, i.col)),
        path=main_path,
        files=files,
        explicit=frozenset(ctx.explicit),
        locations=locations,
    )


def _transport(protocol: str) -> str:
    return "udp" if protocol == "udp" else "tcp"


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    if a[1] != b[1] or a[1] == 0:
        return False
    wildcard = ("", "0.0.0.0", "::", "*")
    return a[0].lower() == b[0].lower() or a[0] in wildcard or b[0] in wildcard


def _check_entrypoints(ctx: _Ctx, entrypoints: dict[str, EntrypointConfig], admin: AdminConfig) -> None:
    seen: list[EntrypointConfig] = []
    for ep in entrypoints.values():
        p = f"entrypoints.{ep.name}"
        if not ctx.ok(f"{p}.address"):
            continue
        for other in seen:
            if _transport(other.protocol) == _transport(ep.protocol) and _same_socket(
                (ep.host, ep.port), (other.host, other.port)
            ):
                ctx.error(
                    ctx.at(f"{p}.address"),
                    f"{p}.address",
                    f'address {_q(ep.address)} is already used by entrypoint "{other.name}" '
                    f"(defined at {_loc(ctx.at('entrypoints.' + other.name))})",
                )
                break
        seen.append(ep)
        if (
            admin.enabled
            and ctx.ok("admin.address")
            and ep.protocol != "udp"
            and _same_socket((ep.host, ep.port), (admin.host, admin.port))
        ):
            ctx.error(
                ctx.at(f"{p}.address"),
                f"{p}.address",
                f"address {_q(ep.address)} is also the admin address {_q(admin.address)}",
                'move the admin listener with admin { address = "..." }',
            )
        if ep.redirect is not None and ctx.ok(f"{p}.redirect.entrypoint"):
            target_name = ep.redirect.entrypoint
            where = f"{p}.redirect.entrypoint"
            target = entrypoints.get(target_name)
            if target is None:
                ctx.error(
                    ctx.at(where),
                    where,
                    f'unknown entrypoint "{target_name}"',
                    _reference_hint(target_name, entrypoints, f'define entrypoints "{target_name}" {{ ... }}'),
                )
            elif target.protocol != "http" or target.tls is None or target_name == ep.name:
                ctx.error(
                    ctx.at(where), where, f'redirect target "{target_name}" must be another http entrypoint with tls'
                )


def _router_protocol(ctx: _Ctx, router: RouterConfig, entrypoints: dict[str, EntrypointConfig]) -> str:
    p = f"routers.{router.name}"
    protocols: dict[str, str] = {}
    for i, name in enumerate(router.entrypoints):
        ep = entrypoints.get(name)
        if ep is None:
            where = f"{p}.entrypoints[{i}]"
            ctx.error(
                ctx.at(where),
                where,
                f'unknown entrypoint "{name}"',
                _reference_hint(name, entrypoints, f'define entrypoints "{name}" {{ ... }}'),
            )
            ctx.bad.add(f"{p}.entrypoints")
        else:
            protocols.setdefault(ep.protocol, name)
    if len(protocols) > 1:
        kinds = sorted(protocols)
        ctx.error(
            ctx.at(f"{p}.entrypoints"),
            f"{p}.entrypoints",
            f'router "{router.name}" mixes entrypoints of protocols {", ".join(kinds[:-1])} and {kinds[-1]}',
        )
        ctx.bad.add(f"{p}.entrypoints")
    if protocols:
        return next(iter(protocols))
    if router.rule is not None and rule_matchers(router.rule) & _TCP_MATCHERS:
        return "tcp"
    return "http"


def _check_routers(
    ctx: _Ctx,
    routers: dict[str, RouterConfig],
    entrypoints: dict[str, EntrypointConfig],
    services: dict[str, ServiceConfig],
    middlewares: dict[str, MiddlewareConfig],
    known_middlewares: set[str],
) -> dict[str, RouterConfig]:
    out: dict[str, RouterConfig] = {}
    udp_owner: dict[str, str] = {}
    for router in routers.values():
        p = f"routers.{router.name}"
        protocol = _router_protocol(ctx, router, entrypoints)
        rule = router.rule
        written = rule
        if rule is not None and protocol in ("tcp", "udp") and _LEGACY_RULE.match(rule):
            ctx.warn(
                ctx.at(f"{p}.rule"),
                f"{p}.rule",
                f"rule {_q(rule.strip())} is deprecated for {protocol} routers; use HostSNI(`*`)",
            )
            rule = "HostSNI(`*`)"
        if rule is None and protocol != "udp" and ctx.ok(f"{p}.rule"):
            ctx.error(ctx.at(p), p, 'missing required key "rule"')
        priority = router.priority or (len(written) if written is not None else 0)
        router = replace(router, rule=rule, protocol=protocol, effective_priority=priority)
        if protocol == "udp":
            if rule is not None and not _CATCH_ALL.match(rule):
                ctx.error(ctx.at(f"{p}.rule"), f"{p}.rule", "udp routers take no rule, or HostSNI(`*`)")
            for name in router.entrypoints:
                if name in udp_owner and udp_owner[name] != router.name and name in entrypoints:
                    ctx.error(
                        ctx.at(f"{p}.entrypoints"),
                        f"{p}.entrypoints",
                        f'udp entrypoint "{name}" accepts exactly one router; '
                        f'router "{udp_owner[name]}" already uses it',
                    )
                udp_owner.setdefault(name, router.name)
        elif rule is not None and ctx.ok(f"{p}.rule", f"{p}.entrypoints"):
            _check_rule(ctx, router, written or rule)
        if ctx.ok(f"{p}.service") and router.service not in services:
            ctx.error(
                ctx.at(f"{p}.service"),
                f"{p}.service",
                f'unknown service "{router.service}"',
                _reference_hint(router.service, services, f'define services "{router.service}" {{ ... }}'),
            )
        _check_chain(ctx, router, middlewares, known_middlewares)
        out[router.name] = router
    return out


def _check_chain(ctx: _Ctx, router: RouterConfig, middlewares: dict[str, MiddlewareConfig], known: set[str]) -> None:
    p = f"routers.{router.name}.middlewares"
    if not ctx.ok(p):
        return
    if router.protocol == "udp" and router.middlewares:
        ctx.error(ctx.at(p), p, "udp routers take no middlewares")
        return
    last = len(router.middlewares) - 1
    for i, name in enumerate(router.middlewares):
        where = f"{p}[{i}]"
        if name not in known:
            ctx.error(
                ctx.at(where),
                where,
                f'unknown middleware "{name}"',
                _reference_hint(name, known, f'define middlewares "{name}" {{ type = "..." }}'),
            )
            continue
        mw = middlewares.get(name)
        if mw is None:
            continue  # invalid middleware, already reported
        if router.protocol == "tcp" and mw.type != "tcp-filter":
            ctx.error(ctx.at(where), where, f"{mw.type} cannot be used by TCP routers; only tcp-filter can")
        elif router.protocol == "http" and mw.type == "tcp-filter":
            ctx.error(ctx.at(where), where, "tcp-filter can only be used by TCP routers")
        elif mw.type == "ws-mux" and i != last:
            ctx.error(ctx.at(where), where, "ws-mux must be the last middleware of the router")


def _check_admin(ctx: _Ctx, admin: AdminConfig, middlewares: dict[str, MiddlewareConfig], known: set[str]) -> None:
    for i, name in enumerate(admin.middlewares):
        where = f"admin.middlewares[{i}]"
        if name not in known:
            ctx.error(
                ctx.at(where),
                where,
                f'unknown middleware "{name}"',
                _reference_hint(name, known, f'define middlewares "{name}" {{ type = "..." }}'),
            )
        elif name in middlewares and middlewares[name].type in ("tcp-filter", "ws-mux"):
            ctx.error(ctx.at(where), where, f"{middlewares[name].type} cannot be used by the admin API")


def _service_protocols(
    ctx: _Ctx, services: dict[str, ServiceConfig], routers: dict[str, RouterConfig]
) -> dict[str, str]:
    users: dict[str, dict[str, str]] = {}
    for router in routers.values():
        users.setdefault(router.service, {}).setdefault(router.protocol, router.name)
    protocols: dict[str, str] = {}
    for name, service in services.items():
        by = users.get(name, {})
        if len(by) > 1:
            kinds = sorted(by)
            ctx.error(
                ctx.at(f"services.{name}"),
                f"services.{name}",
                f'service "{name}" is used by routers of protocols {" and ".join(kinds)} '
                f"({', '.join(by[k] for k in kinds)})",
            )
        if by:
            protocols[name] = next(iter(by))
            continue
        schemes = {s.scheme for s in _all_servers(service)}
        protocols[name] = "udp" if schemes == {"udp"} else "tcp" if schemes == {"tcp"} else "http"
    return protocols


def _all_servers(service: ServiceConfig) -> tuple[ServerConfig, ...]:
    return service.load_balancer.servers + tuple(s for r in service.revisions for s in r.servers)


def _check_services(
    ctx: _Ctx, services: dict[str, ServiceConfig], routers: dict[str, RouterConfig], providers: ProvidersConfig
) -> dict[str, ServiceConfig]:
    protocols = _service_protocols(ctx, services, routers)
    fed_by_dns: dict[str, int] = {}
    for i, dns in enumerate(providers.dns):
        where = f"providers.dns[{i}].service"
        if dns.service not in services:
            ctx.error(
                ctx.at(where),
                where,
                f'unknown service "{dns.service}"',
                _reference_hint(dns.service, services, f'define services "{dns.service}" {{ ... }}'),
            )
        elif services[dns.service].load_balancer.servers or services[dns.service].revisions:
            ctx.error(ctx.at(where), where, f'service "{dns.service}" is fed by DNS and must not list servers')
        fed_by_dns.setdefault(dns.service, i)
    out: dict[str, ServiceConfig] = {}
    for name, service in services.items():
        p = f"services.{name}"
        protocol = protocols[name]
        service = replace(service, protocol=protocol)
        out[name] = service
        _check_schemes(ctx, service)
        lb = service.load_balancer
        if protocol != "http":
            for key, present in (
                ("load_balancer.sticky", lb.sticky is not None),
                ("scaling", service.scaling is not None),
                ("revisions", bool(service.revisions)),
                ("mirror", service.mirror is not None),
                ("failover", service.failover is not None),
            ):
                if present:
                    where = f"{p}.{key}"
                    ctx.error(ctx.at(where), where, f"{key.split('.')[-1]} is not available for {protocol} services")
        hc = lb.health_check
        if hc is not None and ctx.ok(f"{p}.load_balancer.health_check.path"):
            if protocol == "http" and hc.path is None:
                where = f"{p}.load_balancer.health_check"
                ctx.error(
                    ctx.at(where), where, 'missing required key "path"', "http services are probed with GET <path>"
                )
            elif protocol != "http" and hc.path is not None:
                where = f"{p}.load_balancer.health_check.path"
                ctx.error(ctx.at(where), where, f"{protocol} services are probed by a connect; remove path")
        has_backends = bool(lb.servers) or bool(service.revisions) or name in fed_by_dns
        has_backends = has_backends or (service.scaling is not None and service.scaling.executor != "static")
        if not has_backends and ctx.ok(f"{p}.load_balancer.servers", f"{p}.revisions", f"{p}.load_balancer"):
            ctx.error(
                ctx.at(p),
                p,
                f'service "{name}" has no backends: set load_balancer.servers, revisions, '
                'or a scaling executor other than "static"',
            )
        for server in _all_servers(service):
            if protocol == "http" and server.scheme == "https":
                ctx.explicit.add("https backend")
            if protocol == "http" and server.scheme == "h2c":
                ctx.explicit.add("h2c backend")
        _check_service_refs(ctx, service, services, protocols)
    _check_failover_cycles(ctx, out)
    return out


def _check_schemes(ctx: _Ctx, service: ServiceConfig) -> None:
    allowed = {"http": ("http", "https", "h2c"), "tcp": ("tcp", "http", "https", "h2c"), "udp": ("udp",)}[
        service.protocol
    ]
    p = f"services.{service.name}"
    groups = [(f"{p}.load_balancer.servers", service.load_balancer.servers)]
    groups += [(f"{p}.revisions[{i}].servers", r.servers) for i, r in enumerate(service.revisions)]
    for base, servers in groups:
        for i, server in enumerate(servers):
            where = f"{base}[{i}].url"
            if ctx.ok(where) and server.scheme not in allowed:
                ctx.error(
                    ctx.at(where),
                    where,
                    f"scheme {_q(server.scheme)} is not allowed for a {service.protocol} service; use "
                    + ", ".join(allowed[:-1])
                    + (" or " if len(allowed) > 1 else "")
                    + allowed[-1],
                )


def _check_service_refs(
    ctx: _Ctx, service: ServiceConfig, services: dict[str, ServiceConfig], protocols: dict[str, str]
) -> None:
    p = f"services.{service.name}"
    for kind, ref in (("mirror", service.mirror), ("failover", service.failover)):
        if ref is None:
            continue
        where = f"{p}.{kind}.service"
        if not ctx.ok(where):
            continue
        target = ref.service
        if target not in services:
            ctx.error(
                ctx.at(where),
                where,
                f'unknown service "{target}"',
                _reference_hint(target, services, f'define services "{target}" {{ ... }} or remove the {kind} block'),
            )
        elif target == service.name:
            ctx.error(ctx.at(where), where, f"a service cannot be its own {kind} target")
        elif kind == "mirror" and protocols.get(target) != "http":
            ctx.error(ctx.at(where), where, f'mirror target "{target}" must be an http service')


def _check_failover_cycles(ctx: _Ctx, services: dict[str, ServiceConfig]) -> None:
    reported: set[str] = set()
    for start in services:
        chain: list[str] = []
        current: str | None = start
        while current is not None and current in services and current not in chain:
            chain.append(current)
            nxt = services[current].failover
            current = nxt.service if nxt is not None else None
        if current is None or current not in chain:
            continue
        cycle = chain[chain.index(current) :]
        if set(cycle) & reported or len(cycle) < 2:
            continue  # self-failover is reported as such
        reported.update(cycle)
        first = min(cycle)
        k = cycle.index(first)
        ordered = cycle[k:] + cycle[:k]
        where = f"services.{first}.failover.service"
        ctx.error(ctx.at(where), where, "failover cycle: " + " → ".join([*ordered, first]))


def _warn_unused_entrypoints(
    ctx: _Ctx, entrypoints: dict[str, EntrypointConfig], routers: dict[str, RouterConfig]
) -> None:
    used: set[str] = set()
    for router in routers.values():
        if router.entrypoints:
            used.update(router.entrypoints)
        else:
            used.update(n for n, ep in entrypoints.items() if ep.protocol == router.protocol)
    acme_http01 = any(
        ep.tls is not None and ep.tls.acme and ep.tls.challenge == "http-01" for ep in entrypoints.values()
    )
    secure = [n for n, ep in entrypoints.items() if ep.protocol == "http" and ep.tls is not None]
    port80 = any(ep.protocol == "http" and ep.tls is None and ep.port == 80 for ep in entrypoints.values())
    for name, ep in entrypoints.items():
        if ep.tls is not None and ep.tls.acme and ep.tls.challenge == "http-01" and not port80:
            where = f"entrypoints.{name}.tls"
            ctx.warn(
                ctx.at(where),
                where,
                "acme http-01 challenges are answered on port 80, but no plain http entrypoint listens there",
                'add entrypoints "web" { address = ":80" }, or use challenge = "tls-alpn-01"',
            )
    for name, ep in entrypoints.items():
        if ep.protocol != "http" or name in used or ep.redirect is not None:
            continue
        if acme_http01 and ep.tls is None:
            continue
        hint = "attach a router"
        if ep.tls is None and secure:
            hint += f', or add redirect {{ entrypoint = "{secure[0]}" }}'
        ctx.warn(
            ctx.at(f"entrypoints.{name}"),
            f"entrypoints.{name}",
            "no router uses this entrypoint; every request on it gets 404",
            hint,
        )


# ---------------------------------------------------------------------------------------------------------------
# Export (``GatewayConfig.to_dict``)
# ---------------------------------------------------------------------------------------------------------------


def _export_value(t: _T, value: Any, redact: bool, secret: bool, url: bool = False) -> Any:
    if value is None:
        return None
    if url and redact and isinstance(value, str):
        return redact_url(value)
    kind = t.kind
    if kind == "duration":
        return format_duration(value)
    if kind in ("secs", "ms", "num"):
        return int(value) if float(value).is_integer() else value
    if kind in ("block",):
        assert t.schema is not None
        return _export_obj(t.schema, value, redact)
    if kind == "blocks":
        assert t.schema is not None
        if t.schema is SEED:  # stored as plain URLs
            return [_export_obj(SEED, {"url": v}, redact) for v in value]
        return [_export_obj(t.schema, v, redact) for v in value]
    if kind == "map":
        if secret and redact:
            return {k: _REDACTED for k in value}
        return dict(value)
    if secret and redact:
        if kind == "list":
            return [_REDACTED for _ in value]
        return _REDACTED
    if kind in ("list", "str_or_list"):
        assert t.item is not None or kind == "str_or_list"
        return [_export_value(t.item or STR, v, redact, False) for v in value]
    return value


def _export_obj(schema: _Schema, obj: Any, redact: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in schema.keys.items():
        value = getattr(obj, spec.field or key) if not isinstance(obj, Mapping) else obj.get(spec.field or key)
        out[key] = _export_value(spec.type, value, redact, spec.secret, spec.url)
    return out


def _export_entrypoint(ep: EntrypointConfig, redact: bool) -> dict[str, Any]:
    out = _export_obj(ENTRYPOINT, ep, redact)
    for key, protocols in _PROTOCOL_KEYS.items():
        if ep.protocol not in protocols:
            del out[key]
    return out


def config_to_dict(config: GatewayConfig, *, redact: bool = True) -> dict[str, Any]:
    """The JSON shape of a configuration (SPEC §11.1 ``/api/gateway/config``); loads back with ``from_dict``."""
    middlewares: dict[str, Any] = {}
    for name, mw in config.middlewares.items():
        schema = MIDDLEWARE_SCHEMAS[mw.type]
        body = _export_obj(schema, {**mw.params, "type": mw.type}, redact)
        middlewares[name] = {k: v for k, v in body.items() if v is not None}
    return {
        "entrypoints": {n: _export_entrypoint(e, redact) for n, e in config.entrypoints.items()},
        "routers": {n: _export_obj(ROUTER, r, redact) for n, r in config.routers.items()},
        "services": {n: _export_obj(SERVICE, s, redact) for n, s in config.services.items()},
        "middlewares": middlewares,
        "providers": _export_obj(PROVIDERS, config.providers, redact),
        "admin": _export_obj(ADMIN, config.admin, redact),
        "access_log": _export_obj(ACCESS_LOG, config.access_log, redact) if config.access_log else None,
        "tracing": _export_obj(TRACING, config.tracing, redact),
        "workers": config.workers,
        "shutdown_timeout": format_duration(config.shutdown_timeout),
    }
