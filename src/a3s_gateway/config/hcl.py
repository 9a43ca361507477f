"""HCL text -> positioned syntax tree (SPEC §2.1, §2.2).

One pre-pass over the source text does what python-hcl2 cannot: `;` as a newline, `${VAR}` /
`${VAR:-default}` interpolation, the `$${` / `%%{` escapes, heredocs (turned into plain strings). It keeps a
position map from the rewritten text back to the original, so every diagnostic points at the original
line and column. The rewritten text is parsed with python-hcl2's lark grammar and the raw lark tree is
turned into a small tree of :class:`Body` / :class:`Entry` / value nodes that carry their source positions
(python-hcl2's own dict output has none, and silently keeps the last of duplicate attributes).

Only literal values survive: anything else becomes an :class:`Unsupported` node for the validator to report.
"""

from __future__ import annotations

import bisect
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from a3s_gateway.errors import Issue

if TYPE_CHECKING:
    from lark import Lark

# lark trees are walked untyped: their children mix Tree and Token and lark's own hints do not narrow them
_Lark = Any

__all__ = [
    "Body",
    "Entry",
    "ListNode",
    "Node",
    "Pos",
    "Scalar",
    "Unsupported",
    "from_python",
    "parse",
]


# ---------------------------------------------------------------------------------------------------------------
# Positioned tree
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pos:
    """A source location: file, 1-based line and column (code points). ``line == 0``: no location (dicts)."""

    file: str
    line: int
    col: int


@dataclass(slots=True)
class Scalar:
    """A literal string, number, bool or null. ``problems`` are interpolation diagnostics (message, hint)."""

    value: str | int | float | bool | None
    pos: Pos
    problems: list[tuple[str, str | None]] = field(default_factory=list)

    @property
    def poisoned(self) -> bool:
        """True when interpolation failed: the value is a placeholder and must not be judged."""
        return bool(self.problems)


@dataclass(slots=True)
class Unsupported:
    """An expression that is not a literal (function call, reference, operator, ...)."""

    text: str
    pos: Pos


@dataclass(slots=True)
class ListNode:
    """A list literal."""

    items: list[Node]
    pos: Pos


@dataclass(slots=True)
class Entry:
    """One attribute (``labels is None``) or block of a body; ``pos`` is where its key starts."""

    key: str
    pos: Pos
    value: Node
    labels: list[tuple[str, Pos]] | None = None

    @property
    def is_block(self) -> bool:
        """True for ``key "label" { ... }`` blocks, False for ``key = value`` attributes."""
        return self.labels is not None


@dataclass(slots=True)
class Body:
    """A block body or an object literal: entries in source order (duplicates kept, for the validator)."""

    entries: list[Entry]
    pos: Pos
    is_object: bool = False


Node = Scalar | Unsupported | ListNode | Body


# ---------------------------------------------------------------------------------------------------------------
# Grammar cache (SPEC §13.3: start-up under 1 s, the grammar is never rebuilt on every start)
# ---------------------------------------------------------------------------------------------------------------

_parser_instance: Lark | None = None


def _parser() -> Lark:
    """The python-hcl2 parser, loaded from pre-built tables (config/grammar.py) instead of rebuilt per start."""
    global _parser_instance
    if _parser_instance is None:
        from .grammar import load_parser

        _parser_instance = load_parser()
    return _parser_instance


# ---------------------------------------------------------------------------------------------------------------
# Pre-pass
# ---------------------------------------------------------------------------------------------------------------

_VAR_REF: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?\Z", re.S)
_NORMAL_STOP: Final = re.compile(r'[#/"<;{}\[\],]')
_OBJECT_OPENERS: Final = frozenset("=:,[({")  # a "{" after one of these opens an object, otherwise a block body
_STRING_STOP: Final = re.compile(r'[\\"$%\n]')
_HEREDOC_STOP: Final = re.compile(r"[$%]")
_HEREDOC_START: Final = re.compile(r"<<(-?)([A-Za-z][A-Za-z0-9._-]*)\r?\n")


def _hcl_escape(text: str) -> str:
    """Escape ``text`` so that, inside an HCL quoted string, it reads back as ``text`` and is never a template."""
    out: list[str] = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "$":
            out.append("\\u0024")
        elif ch == "%":
            out.append("\\u0025")
        elif ord(ch) < 0x20 or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


class _Rewriter:
    """Builds the rewritten text plus a map from rewritten offsets to original offsets."""

    def __init__(self, text: str, env: Mapping[str, str]) -> None:
        self.text = text
        self.env = env
        self.parts: list[str] = []
        self.size = 0
        self.out_starts: list[int] = []
        self.orig_starts: list[int] = []
        self.copies: list[bool] = []
        # (rewritten offset, message, hint): attached to the string node that contains the offset
        self.problems: list[tuple[int, str, str | None]] = []
        # (original offset, message): syntax errors found by the pre-pass itself
        self.syntax: list[tuple[int, str]] = []

    def copy(self, start: int, end: int) -> None:
        if end <= start:
            return
        if self.copies and self.copies[-1] and self.orig_starts[-1] + (self.size - self.out_starts[-1]) == start:
            pass  # contiguous with the previous copied run
        else:
            self.out_starts.append(self.size)
            self.orig_starts.append(start)
            self.copies.append(True)
        self.parts.append(self.text[start:end])
        self.size += end - start

    def put(self, text: str, orig: int) -> None:
        """Append replacement ``text``; every offset inside it maps back to ``orig``."""
        if not text:
            return
        self.out_starts.append(self.size)
        self.orig_starts.append(orig)
        self.copies.append(False)
        self.parts.append(text)
        self.size += len(text)

    # -- the scanner ------------------------------------------------------------------------------------------

    def run(self) -> None:
        text = self.text
        i = 0
        n = len(text)
        nesting: list[str] = []  # "b" block body, "o" object, "l" list
        while i < n:
            m = _NORMAL_STOP.search(text, i)
            if m is None:
                self.copy(i, n)
                return
            j = m.start()
            self.copy(i, j)
            ch = text[j]
            if ch == "#" or text.startswith("//", j):
                end = text.find("\n", j)
                end = n if end < 0 else end
                self.copy(j, end)
                i = end
            elif text.startswith("/*", j):
                end = text.find("*/", j + 2)
                end = n if end < 0 else end + 2
                self.copy(j, end)
                i = end
            elif ch == '"':
                self.copy(j, j + 1)
                i = self.string(j + 1)
            elif ch == "<" and (h := _HEREDOC_START.match(text, j)) is not None:
                i = self.heredoc(j, h)
            elif ch == ";" or (ch == "," and (not nesting or nesting[-1] == "b")):
                # `;`, and `,` between the attributes of a block body (`file { watch = true, directory = "d" }`,
                # as SPEC and the issues write it), are newlines; commas of objects and lists stay
                self.put("\n", j)
                i = j + 1
            else:
                if ch == "{":
                    k = j - 1
                    while k >= 0 and text[k] in " \t\r\n":
                        k -= 1
                    nesting.append("o" if k >= 0 and text[k] in _OBJECT_OPENERS else "b")
                elif ch == "[":
                    nesting.append("l")
                elif ch in "}]" and nesting:
                    nesting.pop()
                self.copy(j, j + 1)
                i = j + 1

    def string(self, i: int) -> int:
        """Scan a quoted string's content from ``i``; returns the offset after the closing quote."""
        text = self.text
        n = len(text)
        start = i
        while i < n:
            m = _STRING_STOP.search(text, i)
            if m is None:
                self.syntax.append((start - 1, "syntax error: unterminated string (a string ends on its line)"))
                self.copy(i, n)
                return n
            j = m.start()
            self.copy(i, j)
            ch = text[j]
            if ch == "\\":
                self.copy(j, min(j + 2, n))
                i = j + 2
            elif ch == '"':
                self.copy(j, j + 1)
                return j + 1
            elif ch == "\n":
                self.syntax.append((start - 1, "syntax error: unterminated string (a string ends on its line)"))
                return j
            else:
                i = self.template(j, escape=True)
        return n

    def template(self, j: int, *, escape: bool) -> int:
        """Handle a ``$`` or ``%`` at ``j`` inside a string (``escape``) or heredoc; returns the next offset."""
        text = self.text
        ch = text[j]
        dollar = "\\u0024" if escape else "$"
        percent = "\\u0025" if escape else "%"
        if text.startswith("$${", j):
            self.put(dollar + "{", j)
            return j + 3
        if text.startswith("%%{", j):
            self.put(percent + "{", j)
            return j + 3
        if not text.startswith("{", j + 1):
            self.copy(j, j + 1)
            return j + 1
        end = text.find("}", j + 2)
        newline = text.find("\n", j + 2)
        if end < 0 or (escape and 0 <= newline < end):
            shown = text[j : newline if newline >= 0 else len(text)]
            if ch == "$":
                self.problem(f'unsupported interpolation {_quote(shown)}: the closing "}}" is missing', None)
            else:
                self.problem(f"unsupported expression {_quote(shown)}: only literal values are allowed", None)
            self.put(" ", j)
            return j + 2
        whole = text[j : end + 1]
        if ch == "%":
            self.problem(f"unsupported expression {_quote(whole)}: only literal values are allowed", None)
            self.put(" ", j)  # a placeholder, never judged: the node is poisoned
            return end + 1
        m = _VAR_REF.match(text[j + 2 : end])
        if m is None:
            self.problem(
                f"unsupported interpolation {_quote(whole)}: only ${{VAR}} and ${{VAR:-default}} are allowed",
                "write $${ for a literal ${",
            )
            self.put(" ", j)
            return end + 1
        name, default = m.group(1), m.group(2)
        value = self.env.get(name)
        if default is not None and not value:
            # the default is source text: in a quoted string it is already HCL-escaped
            if escape:
                self.put(default.replace("$", "\\u0024").replace("%", "\\u0025"), j)
            else:
                self.put(default, j)
        elif value is None:
            self.problem(f'environment variable "{name}" is not set', f"export it, or write ${{{name}:-default}}")
            self.put(" ", j)
        else:
            self.put(_hcl_escape(value) if escape else value, j)
        return end + 1

    def problem(self, message: str, hint: str | None) -> None:
        self.problems.append((self.size, message, hint))

    def heredoc(self, start: int, m: re.Match[str]) -> int:
        """Turn a heredoc into one quoted string; returns the offset after its closing marker line."""
        text = self.text
        marker = m.group(2)
        body_start = m.end()
        pos = body_start
        lines: list[str] = []
        close_end = -1
        while pos <= len(text):
            nl = text.find("\n", pos)
            line_end = len(text) if nl < 0 else nl
            line = text[pos:line_end]
            if line.strip() == marker:
                close_end = line_end
                break
            lines.append(line[:-1] if line.endswith("\r") else line)
            if nl < 0:
                break
            pos = nl + 1
        if close_end < 0:
            self.syntax.append((start, f"syntax error: heredoc <<{marker} is not closed by a {marker} line"))
            self.copy(start, len(text))
            return len(text)
        if m.group(1) == "-":
            indents = [len(x) - len(x.lstrip(" \t")) for x in lines if x.strip()]
            cut = min(indents, default=0)
            lines = [x[cut:] for x in lines]
        raw = "".join(x + "\n" for x in lines)
        # interpolate the body through a nested rewriter (raw mode), then quote the result
        inner = _Rewriter(raw, self.env)
        i = 0
        while i < len(raw):
            hm = _HEREDOC_STOP.search(raw, i)
            if hm is None:
                inner.copy(i, len(raw))
                break
            inner.copy(i, hm.start())
            i = inner.template(hm.start(), escape=False)
        for _, message, hint in inner.problems:
            self.problems.append((self.size, message, hint))
        self.put('"' + _hcl_escape("".join(inner.parts)) + '"', start)
        if close_end < len(text):
            self.copy(close_end, close_end + 1)  # the newline after the marker
            return close_end + 1
        self.put("\n", close_end)
        return close_end

    def to_orig(self, offset: int) -> int:
        """Original offset of rewritten ``offset``."""
        k = bisect.bisect_right(self.out_starts, offset) - 1
        if k < 0:
            return offset
        if self.copies[k]:
            return min(self.orig_starts[k] + (offset - self.out_starts[k]), len(self.text))
        return self.orig_starts[k]


def _quote(text: str) -> str:
    """``text`` in double quotes for a diagnostic, shortened."""
    if len(text) > 60:
        text = text[:57] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ---------------------------------------------------------------------------------------------------------------
# Lark tree -> positioned tree
# ---------------------------------------------------------------------------------------------------------------

_ESCAPE: Final = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.)|\Z)", re.S)
_SIMPLE_ESCAPES: Final = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}

_EXPECTED_NAMES: Final = {
    "RBRACE": '"}"',
    "LBRACE": '"{"',
    "RSQB": '"]"',
    "LSQB": '"["',
    "RPAR": '")"',
    "EQ": '"="',
    "COLON": '":"',
    "COMMA": '","',
    "NL_OR_COMMENT": "newline",
    "NAME": "a name",
    "DBLQUOTE": '"\\""',
}
_VALUE_STARTS: Final = frozenset(
    {
        "INT_LITERAL",
        "FLOAT_LITERAL",
        "TRUE",
        "FALSE",
        "NULL",
        "HEREDOC_TEMPLATE",
        "HEREDOC_TEMPLATE_TRIM",
        "MINUS",
        "NOT",
        "LPAR",
        "TEMPLATE_STRING",
    }
)


class _Builder:
    """Walks the raw lark tree of the rewritten text."""

    def __init__(self, rw: _Rewriter, filename: str, line_starts: list[int]) -> None:
        self.rw = rw
        self.out = "".join(rw.parts)
        self.filename = filename
        self.line_starts = line_starts
        self.issues: list[Issue] = []
        self.problem_offsets = [p[0] for p in rw.problems]

    def pos(self, out_offset: int) -> Pos:
        return _pos(self.filename, self.line_starts, self.rw.to_orig(out_offset))

    def body(self, tree: _Lark, is_object: bool = False) -> Body:
        entries: list[Entry] = []
        prev_end: int | None = None
        for child in tree.children:
            if not hasattr(child, "data"):
                continue
            data = child.data
            if data not in ("attribute", "block"):
                continue
            start = child.meta.start_pos
            if prev_end is not None and "\n" not in self.out[prev_end - 1 : start]:
                self.syntax(start, 'syntax error: expected newline or ";" between two items')
            prev_end = child.meta.end_pos
            entries.append(self.attribute(child) if data == "attribute" else self.block(child))
        start_pos = tree.meta.start_pos if not tree.meta.empty else 0
        return Body(entries, self.pos(start_pos), is_object)

    def syntax(self, out_offset: int, message: str) -> None:
        p = self.pos(out_offset)
        self.issues.append(Issue(p.file, p.line, p.col, "", "error", message))

    def name_of(self, tree: _Lark) -> tuple[str, int]:
        token = tree.children[0]
        return str(token), token.start_pos or 0

    def attribute(self, tree: _Lark) -> Entry:
        name, start = self.name_of(tree.children[0])
        value = self.value(tree.children[2])
        return Entry(name, self.pos(start), value)

    def block(self, tree: _Lark) -> Entry:
        children = [c for c in tree.children if hasattr(c, "data")]
        head = children[0]
        name, start = self.name_of(head)
        labels: list[tuple[str, Pos]] = []
        body: Body | None = None
        for c in children[1:]:
            data = c.data
            if data == "body":
                body = self.body(c)
            elif data == "string":
                label = self.string(c)
                labels.append((str(label.value), label.pos))
                self.attach_problems(label, c)
                for message, _ in label.problems:
                    self.issues.append(Issue(label.pos.file, label.pos.line, label.pos.col, "", "error", message))
            elif data in ("identifier", "keyword", "literal_value"):
                label_name, label_start = self.name_of(c)
                labels.append((label_name, self.pos(label_start)))
        if body is None:
            body = Body([], self.pos(start))
        return Entry(name, self.pos(start), body, labels)

    def attach_problems(self, node: Scalar, tree: _Lark) -> None:
        lo = bisect.bisect_left(self.problem_offsets, tree.meta.start_pos)
        hi = bisect.bisect_left(self.problem_offsets, tree.meta.end_pos)
        for k in range(lo, hi):
            _, message, hint = self.rw.problems[k]
            node.problems.append((message, hint))

    def unsupported(self, tree: _Lark) -> Unsupported:
        if hasattr(tree, "meta"):
            start, end = tree.meta.start_pos, tree.meta.end_pos
        else:
            start, end = tree.start_pos or 0, tree.end_pos or 0
        text = " ".join(self.out[start:end].split())
        return Unsupported(text, self.pos(start))

    def value(self, tree: _Lark) -> Node:
        data = tree.data
        if data != "expr_term":
            if data == "unary_op" and str(tree.children[0]) == "-":
                inner = self.value(tree.children[1])
                if (
                    isinstance(inner, Scalar)
                    and isinstance(inner.value, (int, float))
                    and not isinstance(inner.value, bool)
                ):
                    inner.value = -inner.value
                    inner.pos = self.pos(tree.meta.start_pos)
                    return inner
            return self.unsupported(tree)
        subtrees = [c for c in tree.children if hasattr(c, "data")]
        if len(subtrees) != 1 or len(tree.children) != 1:
            return self.unsupported(tree)  # parenthesised expression
        sub: _Lark = subtrees[0]
        kind = sub.data
        start = sub.meta.start_pos
        if kind == "string":
            node = self.string(sub)
            self.attach_problems(node, sub)
            return node
        if kind == "int_lit":
            return Scalar(int(str(sub.children[0])), self.pos(start))
        if kind == "float_lit":
            return Scalar(float(str(sub.children[0])), self.pos(start))
        if kind == "literal_value":
            word = str(sub.children[0])
            return Scalar({"true": True, "false": False}.get(word), self.pos(start))
        if kind == "tuple":
            items = [self.value(c) for c in sub.children if hasattr(c, "data") and c.data != "new_line_or_comment"]
            return ListNode(items, self.pos(start))
        if kind == "object":
            return self.object(sub)
        return self.unsupported(sub)

    def object(self, tree: _Lark) -> Body:
        entries: list[Entry] = []
        separated = True
        for c in tree.children:
            if hasattr(c, "data"):
                if c.data == "object_elem":
                    if not separated:
                        self.syntax(c.meta.start_pos, 'syntax error: expected "," or newline between two items')
                    entries.append(self.object_elem(c))
                    separated = False
                elif c.data == "new_line_or_comment" and "\n" in self.out[c.meta.start_pos : c.meta.end_pos]:
                    separated = True
            elif c.type == "COMMA":
                separated = True
        return Body(entries, self.pos(tree.meta.start_pos), True)

    def object_elem(self, tree: _Lark) -> Entry:
        key_tree: _Lark = tree.children[0]
        inner: _Lark = key_tree.children[0]
        value = self.value(tree.children[2])
        start = key_tree.meta.start_pos
        if inner.data == "keyword":
            return Entry(str(inner.children[0]), self.pos(start), value)
        key = self.value(inner)
        if isinstance(key, Scalar) and isinstance(key.value, str) and not key.poisoned:
            return Entry(key.value, self.pos(start), value)
        if inner.data == "expr_term" and len(inner.children) == 1:
            sub = inner.children[0]
            if hasattr(sub, "data") and sub.data in ("identifier", "literal_value"):
                return Entry(str(sub.children[0]), self.pos(start), value)
        # a computed key: keep the entry (for positions) but make its value unsupported
        return Entry(
            " ".join(self.out[start : key_tree.meta.end_pos].split()),
            self.pos(start),
            Unsupported(" ".join(self.out[start : key_tree.meta.end_pos].split()), self.pos(start)),
        )

    def string(self, tree: _Lark) -> Scalar:
        parts: list[str] = []
        for c in tree.children:
            if not hasattr(c, "data"):
                continue
            token = c.children[0]
            if getattr(token, "type", "") == "STRING_CHARS":
                parts.append(self.unescape(str(token), token.start_pos or 0))
            else:  # templates cannot reach here: the pre-pass removed every ${ and %{ from strings
                parts.append(str(token))
        return Scalar("".join(parts), self.pos(tree.meta.start_pos))

    def unescape(self, raw: str, start: int) -> str:
        if "\\" not in raw:
            return raw

        def repl(m: re.Match[str]) -> str:
            if m.group(1) or m.group(2):
                code = int(m.group(1) or m.group(2), 16)
                if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                    self.syntax(start + m.start(), f"syntax error: invalid escape sequence {m.group(0)}")
                    return ""
                return chr(code)
            simple = _SIMPLE_ESCAPES.get(m.group(3) or "")
            if simple is None:
                self.syntax(start + m.start(), f"syntax error: invalid escape sequence {m.group(0)!r}")
                return ""
            return simple

        return _ESCAPE.sub(repl, raw)


def _line_starts(text: str) -> list[int]:
    starts = [0]
    i = text.find("\n")
    while i >= 0:
        starts.append(i + 1)
        i = text.find("\n", i + 1)
    return starts


def _pos(filename: str, line_starts: list[int], offset: int) -> Pos:
    line = bisect.bisect_right(line_starts, offset) - 1
    return Pos(filename, line + 1, offset - line_starts[line] + 1)


def _describe_expected(names: set[str] | frozenset[str]) -> str:
    described: list[str] = []
    value = False
    for name in sorted(names):
        if name in _VALUE_STARTS:
            value = True
            continue
        shown = _EXPECTED_NAMES.get(name)
        if shown is None:
            continue
        if shown == '"\\""':
            value = True
            continue
        if shown not in described:
            described.append(shown)
    if value:
        described = [d for d in described if d not in ('"{"', '"["', "a name")]
        described.append("a value")
    order = ['"}"', '"]"', '")"', '"="', '"{"', '","', '":"', "a name", "newline", "a value"]
    described.sort(key=lambda s: order.index(s) if s in order else len(order))
    if not described:
        return ""
    if len(described) == 1:
        return described[0]
    return ", ".join(described[:-1]) + " or " + described[-1]


def _token_text(value: str) -> str:
    if value.startswith("\n") or value == "":
        return "end of line" if value else "end of file"
    return _quote(value.strip() or value)


def parse(text: str, filename: str, env: Mapping[str, str] | None = None) -> tuple[Body | None, list[Issue]]:
    """Parse HCL ``text``; returns the body (None after a syntax error) and the syntax diagnostics."""
    from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

    if text.startswith("\ufeff"):
        text = text[1:]
    rw = _Rewriter(text, os.environ if env is None else env)
    rw.run()
    line_starts = _line_starts(text)
    if rw.syntax:
        offset, message = rw.syntax[0]
        p = _pos(filename, line_starts, offset)
        return None, [Issue(p.file, p.line, p.col, "", "error", message)]
    builder = _Builder(rw, filename, line_starts)
    out = builder.out
    try:
        tree = _parser().parse(out + "\n")
    except UnexpectedInput as exc:
        if isinstance(exc, UnexpectedEOF):
            offset = len(out)
            message = "syntax error: unexpected end of file"
            expected = _describe_expected(set(exc.expected))
        elif isinstance(exc, UnexpectedCharacters):
            offset = exc.pos_in_stream or 0
            message = f"syntax error: unexpected character {_quote(out[offset : offset + 1])}"
            expected = _describe_expected(set(exc.allowed or ()))
        else:
            assert isinstance(exc, UnexpectedToken)
            offset = exc.pos_in_stream if exc.pos_in_stream is not None else len(out)
            value = str(exc.token)
            if exc.token.type == "$END" or offset >= len(out):
                got = "end of file"
                offset = min(offset, len(out))
            else:
                got = _token_text(value)
                if value.strip():
                    offset += len(value) - len(value.lstrip("\n \t"))  # a newline merged into an operator
            expected = _describe_expected(set(exc.accepts or exc.expected))
            message = "syntax error: " + (f"expected {expected}, got {got}" if expected else f"unexpected {got}")
            expected = ""
        if expected:
            message += f"; expected {expected}"
        p = _pos(filename, line_starts, rw.to_orig(offset))
        return None, [Issue(p.file, p.line, p.col, "", "error", message)]
    body = builder.body(tree.children[0])
    body.pos = Pos(filename, 1, 1)
    return body, builder.issues


# ---------------------------------------------------------------------------------------------------------------
# Python data (``GatewayConfig.from_dict``) -> the same tree, without positions
# ---------------------------------------------------------------------------------------------------------------


def from_python(data: Any, source: str, labelled: frozenset[str] = frozenset()) -> Body:
    """Convert JSON-shaped ``data`` into a body; top-level keys in ``labelled`` map names to labelled blocks."""
    where = Pos(source, 0, 0)
    if not isinstance(data, Mapping):
        return Body([Entry("", where, _value(data, where))], where)
    entries: list[Entry] = []
    for key, value in data.items():
        if key in labelled and isinstance(value, Mapping):
            for name, body in value.items():
                entries.append(Entry(str(key), where, _value(body, where), [(str(name), where)]))
        else:
            entries.append(Entry(str(key), where, _value(value, where)))
    return Body(entries, where)


def _value(value: Any, where: Pos) -> Node:
    if isinstance(value, Mapping):
        return Body([Entry(str(k), where, _value(v, where)) for k, v in value.items()], where, True)
    if isinstance(value, (list, tuple)):
        return ListNode([_value(v, where) for v in value], where)
    if value is None or isinstance(value, (str, bool, int, float)):
        return Scalar(value, where)
    return Unsupported(repr(value), where)
