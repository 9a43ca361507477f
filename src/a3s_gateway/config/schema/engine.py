"""The schema engine (SPEC §2.3-§2.6): decodes a positioned HCL body against a key table given as a parameter —
value types and conversion, defaults (from the model), unknown/duplicate/deprecated keys with suggestions, and the
diagnostics context of one load. It knows no block."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Final

from a3s_gateway.config.hcl import Body, Entry, ListNode, Node, Pos, Scalar, Unsupported
from a3s_gateway.config.model import format_duration
from a3s_gateway.errors import Issue

_DURATION_RE: Final = re.compile(r"(?:(?:\d+(?:\.\d+)?|\.\d+)(?:ms|s|m|h))+\Z")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_NUMBER_RE: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HELP: Final = 'use e.g. "250ms", "10s", "1.5s", "5m", "1h"'


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics context
# ---------------------------------------------------------------------------------------------------------------


def loc(pos: Pos) -> str:
    return f"{pos.file}:{pos.line}:{pos.col}" if pos.line else pos.file


class Ctx:
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
class T:
    """A value type. ``lo``/``hi`` are range bounds (``*_open``: exclusive); ``check`` a further rule."""

    kind: str
    item: T | None = None
    choices: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    schema: Schema | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    min_len: int = 0
    check: Callable[[Any], str | None] | None = None

    # the constructors the key tables are written with

    @staticmethod
    def integer(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> T:
        return T("int", lo=lo, hi=hi, lo_open=lo_open)

    @staticmethod
    def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> T:
        return T("num", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)

    @staticmethod
    def duration(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> T:
        return T("duration", lo=lo, hi=hi, lo_open=lo_open)

    @staticmethod
    def seconds(lo: float | None = None, *, lo_open: bool = False) -> T:
        return T("secs", lo=lo, lo_open=lo_open)

    @staticmethod
    def millis(lo: float | None = None) -> T:
        return T("ms", lo=lo)

    @staticmethod
    def enum(*choices: str, aliases: tuple[tuple[str, str], ...] = ()) -> T:
        return T("enum", choices=choices, aliases=aliases)

    @staticmethod
    def list_of(item: T, min_len: int = 0) -> T:
        return T("list", item=item, min_len=min_len)

    @staticmethod
    def map_of(item: T | None = None) -> T:
        """An object whose values are ``item`` (strings when None)."""
        return T("map", item=item if item is not None else STR)

    @staticmethod
    def block(schema: Schema) -> T:
        return T("block", schema=schema)

    @staticmethod
    def blocks(schema: Schema) -> T:
        return T("blocks", schema=schema)

    @staticmethod
    def string(check: Callable[[Any], str | None]) -> T:
        return T("str", check=check)


class _ModelDefault:
    """Marker: the key's default is that of the model field (see :func:`schema`)."""


MODEL_DEFAULT: Final = _ModelDefault()


@dataclass(frozen=True)
class K:
    """A key of a schema; ``field`` is the model attribute when it differs from the key.

    ``default`` is written only where the model has no field for the key (middleware parameters) or where the
    schema's default differs from the model's; otherwise the model's default applies (:func:`schema`).
    """

    name: str
    type: T
    default: Any = MODEL_DEFAULT
    required: bool = False
    path: bool = False  # a file path: resolved against the directory of the file that names it
    secret: bool = False  # exported as "<redacted>"
    url: bool = False  # a URL that may carry credentials: exported through redact_url (SPEC §11.1)
    field: str | None = None


@dataclass(frozen=True)
class Legacy:
    """A deprecated key: converted with ``type`` and stored as ``target`` (None: ignored)."""

    target: str | None
    type: T
    message: Callable[[Any], str]


@dataclass
class Decoded:
    """A decoded body: converted values (defaults applied) and the entries that were present."""

    path: str
    pos: Pos
    values: dict[str, Any]
    present: dict[str, Entry]

    def has(self, key: str) -> bool:
        return key in self.present


Build = Callable[[Decoded, Ctx], Any]


@dataclass(frozen=True)
class Schema:
    """The key table of one block; ``build`` turns the decoded values into the block's model object."""

    name: str
    keys: dict[str, K]
    build: Build | None = None
    legacy: dict[str, Legacy] = field(default_factory=dict)
    repeatable: bool = False  # written as a repeated block: `servers { ... }` twice == a list
    subject: str = ""  # when set, a missing required key reads '<subject> requires key "k"' (middleware types)


def schema(name: str, keys: Iterable[K], build: Build | None = None, *, model: type | None = None, **kw: Any) -> Schema:
    """A schema of ``keys``. A key without a written default takes the default of the field of dataclass ``model``
    it fills (None for a field without default, or without ``model``): each default is written once, in the model.
    """
    defaults = _field_defaults(model) if model is not None else {}
    table: dict[str, K] = {}
    for key in keys:
        if key.default is MODEL_DEFAULT:
            attr = key.field or key.name
            if model is not None and attr not in defaults:
                raise KeyError(f"schema {name!r}: {model.__name__} has no field {attr!r}")
            key = replace(key, default=defaults.get(attr))
        table[key.name] = key
    return Schema(name, table, build, **kw)


def _field_defaults(model: type) -> dict[str, Any]:
    """Field name -> default of dataclass ``model`` (None when the field has none)."""
    out: dict[str, Any] = {}
    for f in fields(model):
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


STR: Final = T("str")
BOOL: Final = T("bool")


def quote(text: str) -> str:
    """``text`` in double quotes, escaped, shortened."""
    if len(text) > 80:
        text = text[:77] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def fmt_num(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _describe(node: Node) -> str:
    if isinstance(node, Scalar):
        v = node.value
        if isinstance(v, bool):
            return f"bool {'true' if v else 'false'}"
        if isinstance(v, str):
            return f"string {quote(v)}"
        if v is None:
            return "null"
        return f"number {fmt_num(v)}"
    if isinstance(node, ListNode):
        return "list"
    if isinstance(node, Body):
        return "object" if node.is_object else "block"
    return f"expression {quote(node.text)}"


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


def _scalar(t: T, node: Node) -> Any:
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
                raise _Invalid(f"invalid duration {fmt_num(v)}; {_DURATION_HELP}")
            return float(v)
        elif isinstance(v, str):
            if kind != "duration" and _NUMBER_RE.match(v) and not v.startswith(("+", "-")):
                return float(v)
            secs = _parse_duration(v)
            if secs is None:
                raise _Invalid(f"invalid duration {quote(v)}; {_DURATION_HELP}")
            return secs * scale
    elif kind == "enum":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = fmt_num(v) if not isinstance(v, float) else repr(v)
        if isinstance(v, str):
            norm = v.strip().lower().replace("_", "-")
            for choice in t.choices:
                if choice.lower().replace("_", "-") == norm:
                    return choice
            for alias, target in t.aliases:
                if alias == norm:
                    return target
        shown = quote(v) if isinstance(v, str) else _describe(node)
        raise _Invalid(f"invalid value {shown}; expected one of: {', '.join(t.choices)}")
    elif kind == "int_or_auto":
        if isinstance(v, str) and v.strip().lower() == "auto":
            return "auto"
        try:
            return _scalar(T("int"), node)
        except _Invalid:
            pass
    elif kind == "int_or_str":
        if isinstance(v, str):
            return int(v) if v.isdigit() else v
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    raise _Invalid(f"expected {_TYPE_NAMES.get(kind, kind)}, got {_describe(node)}")


def _range_message(t: T, value: Any) -> str | None:
    if t.lo is None and t.hi is None:
        return None
    if t.kind in ("duration", "secs"):
        show: Callable[[float], str] = format_duration
    elif t.kind == "ms":
        show = lambda x: format_duration(x / 1000)  # noqa: E731
    else:
        show = fmt_num
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


def convert(t: T, node: Node, ctx: Ctx, path: str, pos: Pos) -> Any:
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
                return _convert_list(T.list_of(STR), node, ctx, path, pos)
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
                ctx.warn(pos, path, f"{key} {quote(node.value)} is deprecated; use {quote(value)}")
        return value
    except _Invalid as exc:
        ctx.error(pos, path, str(exc))
        ctx.bad.add(path)
        return SKIP


def _convert_list(t: T, node: Node, ctx: Ctx, path: str, pos: Pos) -> Any:
    if not isinstance(node, ListNode):
        raise _Invalid(f"expected list, got {_describe(node)}")
    assert t.item is not None
    out: list[Any] = []
    failed = False
    for i, item in enumerate(node.items):
        item_pos = item.pos if item.pos.line else pos
        ctx.locations[f"{path}[{i}]"] = item_pos
        value = convert(t.item, item, ctx, f"{path}[{i}]", item_pos)
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


def _convert_map(t: T, node: Node, ctx: Ctx, path: str) -> Any:
    if not isinstance(node, Body):
        raise _Invalid(f"expected object, got {_describe(node)}")
    assert t.item is not None
    out: dict[str, Any] = {}
    seen: dict[str, Entry] = {}
    failed = False
    for entry in node.entries:
        sub = f"{path}.{entry.key}"
        if entry.key in seen:
            ctx.error(entry.pos, sub, f'duplicate key "{entry.key}" (also set at {loc(seen[entry.key].pos)})')
            failed = True
            continue
        seen[entry.key] = entry
        ctx.locations[sub] = entry.pos
        if entry.is_block:
            ctx.error(entry.pos, sub, f"expected {_TYPE_NAMES[t.item.kind]}, got block")
            failed = True
            continue
        value = convert(t.item, entry.value, ctx, sub, entry.pos)
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


def is_null(entry: Entry) -> bool:
    return not entry.is_block and isinstance(entry.value, Scalar) and entry.value.value is None


def _resolve(pos: Pos, value: str) -> str:
    """A path written in ``pos.file``, resolved against that file's directory (cwd for strings and dicts)."""
    if not value or os.path.isabs(value) or pos.file.startswith("<"):
        return value
    return os.path.join(os.path.dirname(pos.file), value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def decode(body: Body, schema: Schema, ctx: Ctx, path: str, pos: Pos | None = None) -> Decoded:
    """Decode ``body`` against ``schema``: unknown keys, duplicates, null, types, defaults, nested blocks."""
    groups: dict[str, list[Entry]] = {}
    for entry in body.entries:
        if entry.key in schema.keys or entry.key in schema.legacy:
            groups.setdefault(entry.key, []).append(entry)
        else:
            close = suggest(entry.key, schema.keys)
            hint = f' (did you mean "{close}"?)' if close else ""
            ctx.error(entry.pos, _join(path, entry.key), f'unknown key "{entry.key}"{hint}')
    decoded = Decoded(path, pos or body.pos, {}, {})
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
            message = f'{schema.subject} requires key "{key}"' if schema.subject else f'missing required key "{key}"'
            ctx.error(decoded.pos, path, message)
            ctx.bad.add(sub)
        decoded.values[attr] = value
    for key, legacy in schema.legacy.items():
        for entry in groups.get(key, []):
            sub = _join(path, key)
            ctx.locations[sub] = entry.pos
            value = convert(legacy.type, entry.value, ctx, sub, entry.pos) if not entry.is_block else SKIP
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


def _single(entries: list[Entry], spec: K, ctx: Ctx, path: str) -> Entry | None:
    """The one entry of a key; duplicates are errors (repeated blocks are a list for ``blocks`` keys)."""
    live = [e for e in entries if not is_null(e)]
    if spec.type.kind == "blocks" and all(e.is_block for e in entries):
        return live[0] if live else None
    first = entries[0]
    for dup in entries[1:]:
        what = "block" if dup.is_block and first.is_block else "key"
        verb = "defined" if what == "block" else "set"
        ctx.error(dup.pos, path, f'duplicate {what} "{spec.name}" (also {verb} at {loc(first.pos)})')
    if len(entries) > 1:
        return None
    return live[0] if live else None


def _decode_entry(spec: K, entries: list[Entry], ctx: Ctx, path: str) -> Any:
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
                and convert(STR, entry.value, ctx, path, entry.pos) is SKIP
            ):
                return SKIP
            else:
                ctx.error(entry.pos, path, f"expected list of objects, got {_describe(entry.value)}")
                return SKIP
            out: list[Any] = []
            for node, pos, sub in nodes:
                ctx.locations[sub] = pos
                if not isinstance(node, Body):
                    if convert(STR, node, ctx, sub, pos) is not SKIP or not isinstance(node, (Scalar, Unsupported)):
                        ctx.error(pos, sub, f"expected object, got {_describe(node)}")
                    ctx.bad.add(path)
                    continue
                built = build(t.schema, decode(node, t.schema, ctx, sub, pos), ctx)
                if built is SKIP:
                    ctx.bad.add(path)
                else:
                    out.append(built)
            return tuple(out)
        if entry.is_block and not _no_labels(entry, ctx, path):
            return SKIP
        if not isinstance(entry.value, Body):
            if convert(STR, entry.value, ctx, path, entry.pos) is not SKIP:
                ctx.error(entry.pos, path, f"expected block or object, got {_describe(entry.value)}")
            return SKIP
        return build(t.schema, decode(entry.value, t.schema, ctx, path, entry.pos), ctx)
    if entry.is_block and not (t.kind == "map" and not entry.labels):  # a map may be written as a block too
        ctx.error(entry.pos, path, f"expected {_TYPE_NAMES.get(t.kind, t.kind)}, got block")
        return SKIP
    return convert(t, entry.value, ctx, path, entry.pos)


def _no_labels(entry: Entry, ctx: Ctx, path: str) -> bool:
    if entry.labels:
        ctx.error(entry.labels[0][1], path, f'block "{entry.key}" takes no label')
        return False
    return True


def build(schema: Schema, decoded: Decoded, ctx: Ctx) -> Any:
    if schema.build is None:
        return decoded.values
    return schema.build(decoded, ctx)
