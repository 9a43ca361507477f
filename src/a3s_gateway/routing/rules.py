"""Routing rule language (SPEC §4.1): tokenizer, recursive-descent parser, validation, compilation, priority.

Control plane, plain Python: a rule is parsed and validated once when the configuration loads, then compiled into
the native matcher tree of :mod:`a3s_gateway.routing.matchers`. Every error is a :class:`RuleError` carrying the
0-based character offset into the rule and, where one helps, a fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from a3s_gateway.errors import GatewayError
from a3s_gateway.netaddr import parse_network
from a3s_gateway.routing import matchers as m

HTTP: Final = "http"
TCP: Final = "tcp"
UDP: Final = "udp"

#: matcher name -> (minimum args, maximum args or None for unbounded, protocols it is allowed in)
MATCHERS: Final[dict[str, tuple[int, int | None, frozenset[str]]]] = {
    "Host": (1, None, frozenset({HTTP})),
    "HostRegexp": (1, None, frozenset({HTTP})),
    "Path": (1, None, frozenset({HTTP})),
    "PathPrefix": (1, None, frozenset({HTTP})),
    "PathRegexp": (1, None, frozenset({HTTP})),
    "Method": (1, None, frozenset({HTTP})),
    "Header": (2, 2, frozenset({HTTP})),
    "Headers": (2, 2, frozenset({HTTP})),
    "HeaderRegexp": (2, 2, frozenset({HTTP})),
    "Query": (1, 2, frozenset({HTTP})),
    "QueryRegexp": (2, 2, frozenset({HTTP})),
    "HostSNI": (1, None, frozenset({TCP})),
    "HostSNIRegexp": (1, None, frozenset({TCP})),
    "ALPN": (1, None, frozenset({TCP})),
    "ClientIP": (1, None, frozenset({HTTP, TCP})),
    "Model": (1, None, frozenset({HTTP})),
    "ModelRegexp": (1, None, frozenset({HTTP})),
}
HTTP_MATCHERS: Final = tuple(name for name, spec in MATCHERS.items() if HTTP in spec[2])
TCP_MATCHERS: Final = tuple(name for name, spec in MATCHERS.items() if TCP in spec[2])
#: (matcher name, index of the argument that is a regular expression, or -1 for every argument)
_REGEX_ARGS: Final[dict[str, int]] = {
    "HostRegexp": -1,
    "PathRegexp": -1,
    "HeaderRegexp": 1,
    "QueryRegexp": 1,
    "HostSNIRegexp": -1,
    "ModelRegexp": -1,
}
_USAGE: Final[dict[str, str]] = {
    "Host": "Host(`example.com`, ...)",
    "HostRegexp": "HostRegexp(`^[a-z]+\\.example\\.com$`, ...)",
    "Path": "Path(`/health`, ...)",
    "PathPrefix": "PathPrefix(`/api`, ...)",
    "PathRegexp": "PathRegexp(`^/v[0-9]+/`, ...)",
    "Method": "Method(`GET`, ...)",
    "Header": "Header(`name`, `value`)",
    "Headers": "Headers(`name`, `value`)",
    "HeaderRegexp": "HeaderRegexp(`name`, `regexp`)",
    "Query": "Query(`key`) or Query(`key`, `value`)",
    "QueryRegexp": "QueryRegexp(`key`, `regexp`)",
    "ClientIP": "ClientIP(`10.0.0.0/8`, `2001:db8::1`, ...)",
    "HostSNI": "HostSNI(`example.com`, ...) or HostSNI(`*`)",
    "HostSNIRegexp": "HostSNIRegexp(`^[a-z]+\\.example\\.com$`, ...)",
    "ALPN": "ALPN(`h2`, ...)",
    "Model": "Model(`llama-3-8b`, ...)",
    "ModelRegexp": "ModelRegexp(`^llama-3-`, ...)",
}
_HEADER_MATCHERS: Final = frozenset({"Header", "Headers", "HeaderRegexp"})
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field-name
_MAX_DEPTH: Final = 100
_SPACE: Final = frozenset(" \t\r\n")
_QUOTE_HINT: Final = 'quote arguments with backticks (`/api`) or double quotes ("/api")'


class RuleError(GatewayError):
    """An invalid rule: ``message``, 0-based ``offset`` into the rule text, optional ``hint`` (a fix)."""

    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.message} (at offset {self.offset})"
        return f"{text}; {self.hint}" if self.hint else text

    def __repr__(self) -> str:
        return f"RuleError({self.message!r}, {self.offset}, {self.hint!r})"


# --- AST ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """A matcher call ``Name(arg, ...)``; offsets (not part of equality) point into the rule text."""

    name: str
    args: tuple[str, ...]
    offset: int = field(default=0, compare=False)
    arg_offsets: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class And:
    """``a && b && ...`` (two or more items, evaluated left to right)."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    """``a || b || ...`` (two or more items, evaluated left to right)."""

    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    """``!a``."""

    item: Node


Node = Call | And | Or | Not


# --- tokenizer ---------------------------------------------------------------------------------------------------

_NAME: Final = "name"
_STRING: Final = "string"
_LPAREN: Final = "("
_RPAREN: Final = ")"
_COMMA: Final = ","
_AND: Final = "&&"
_OR: Final = "||"
_NOT: Final = "!"
_EOF: Final = "end of rule"


@dataclass(frozen=True)
class _Token:
    kind: str
    value: str
    offset: int


def _read_backtick(text: str, start: int) -> tuple[str, int]:
    end = text.find("`", start + 1)
    if end < 0:
        raise RuleError("unterminated backtick argument", start, "close it with a backtick (`)")
    return text[start + 1 : end], end + 1


def _read_double_quoted(text: str, start: int) -> tuple[str, int]:
    out: list[str] = []
    i = start + 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            if i + 1 < n and text[i + 1] in '"\\':
                out.append(text[i + 1])
                i += 2
                continue
            raise RuleError(
                'invalid escape in double-quoted argument: only \\" and \\\\ are allowed',
                i,
                "write regular expressions in backticks, where a backslash is literal",
            )
        out.append(ch)
        i += 1
    raise RuleError("unterminated double-quoted argument", start, 'close it with a double quote (")')


def _lex(text: str, i: int) -> tuple[_Token, int]:
    """The token at or after position ``i`` and the position after it (tokens are read on demand, so errors come
    in reading order)."""
    n = len(text)
    while i < n and text[i] in _SPACE:
        i += 1
    if i == n:
        return _Token(_EOF, "", n), n
    ch = text[i]
    if ch.isascii() and ch.isalpha():
        j = i + 1
        while j < n and text[j].isascii() and text[j].isalnum():
            j += 1
        return _Token(_NAME, text[i:j], i), j
    if ch == "`":
        value, j = _read_backtick(text, i)
        return _Token(_STRING, value, i), j
    if ch == '"':
        value, j = _read_double_quoted(text, i)
        return _Token(_STRING, value, i), j
    if ch in "(),!":
        return _Token(ch, ch, i), i + 1
    if ch in "&|":
        if text.startswith(ch * 2, i):
            return _Token(ch * 2, ch * 2, i), i + 2
        raise RuleError(f"unexpected {ch!r}", i, f"the operator is {ch * 2!r}")
    hint = _QUOTE_HINT if ch == "'" else None
    raise RuleError(f"unexpected character {ch!r}", i, hint)


# --- parser ------------------------------------------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between ``a`` and ``b``."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _did_you_mean(name: str) -> str:
    best = ""
    best_distance = 4
    for known in MATCHERS:
        distance = 0 if known.lower() == name.lower() else edit_distance(name, known)
        if distance < best_distance:
            best, best_distance = known, distance
    if best:
        return f'did you mean "{best}"?'
    return "known matchers: " + ", ".join(MATCHERS)


def _describe(token: _Token) -> str:
    if token.kind == _EOF:
        return "end of rule"
    if token.kind == _STRING:
        return "a quoted argument"
    return repr(token.value)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0  # position in text after the lookahead token
        self.lookahead: _Token | None = None
        self.depth = 0

    def peek(self) -> _Token:
        token = self.lookahead
        if token is None:
            token, self.pos = _lex(self.text, self.pos)
            self.lookahead = token
        return token

    def advance(self) -> _Token:
        token = self.peek()
        self.lookahead = None
        return token

    def parse(self) -> Node:
        if self.peek().kind == _EOF:
            raise RuleError("empty rule", 0, "for example: Host(`example.com`) && PathPrefix(`/api`)")
        node = self.or_expr()
        token = self.peek()
        if token.kind != _EOF:
            hint = "combine matchers with && or ||" if token.kind in (_NAME, _LPAREN, _NOT) else None
            if token.kind == _RPAREN:
                hint = "remove the unmatched ')'"
            raise RuleError(f"unexpected {_describe(token)} after a complete expression", token.offset, hint)
        return node

    def or_expr(self) -> Node:
        items = [self.and_expr()]
        while self.peek().kind == _OR:
            self.advance()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Node:
        items = [self.unary()]
        while self.peek().kind == _AND:
            self.advance()
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise RuleError(f"rule nested deeper than {_MAX_DEPTH} levels", token.offset)

    def unary(self) -> Node:
        token = self.peek()
        if token.kind == _NOT:
            self.advance()
            self.enter(token)
            item = self.unary()
            self.depth -= 1
            return Not(item)
        return self.primary()

    def primary(self) -> Node:
        token = self.advance()
        if token.kind == _LPAREN:
            self.enter(token)
            node = self.or_expr()
            self.depth -= 1
            close = self.advance()
            if close.kind != _RPAREN:
                raise RuleError(
                    f"expected ')' to close the '(' at offset {token.offset}, found {_describe(close)}",
                    close.offset,
                )
            return node
        if token.kind == _NAME:
            return self.matcher(token)
        if token.kind == _STRING:
            raise RuleError("an argument must follow a matcher name", token.offset, "for example: Path(`/health`)")
        raise RuleError(f"expected a matcher, '(' or '!', found {_describe(token)}", token.offset)

    def matcher(self, name: _Token) -> Call:
        spec = MATCHERS.get(name.value)
        if spec is None:
            raise RuleError(f'unknown matcher "{name.value}"', name.offset, _did_you_mean(name.value))
        opening = self.advance()
        if opening.kind != _LPAREN:
            raise RuleError(
                f"expected '(' after {name.value}, found {_describe(opening)}",
                opening.offset,
                "usage: " + _USAGE[name.value],
            )
        args: list[str] = []
        offsets: list[int] = []
        if self.peek().kind != _RPAREN:
            while True:
                arg = self.advance()
                if arg.kind != _STRING:
                    raise RuleError(f"expected a quoted argument, found {_describe(arg)}", arg.offset, _QUOTE_HINT)
                args.append(arg.value)
                offsets.append(arg.offset)
                if self.peek().kind != _COMMA:
                    break
                self.advance()
        closing = self.advance()
        if closing.kind != _RPAREN:
            raise RuleError(f"expected ',' or ')' in {name.value}(...), found {_describe(closing)}", closing.offset)
        call = Call(name.value, tuple(args), name.offset, tuple(offsets))
        _validate_call(self.text, call, spec[0], spec[1])
        return call


def _arity_text(low: int, high: int | None) -> str:
    if high is None:
        return f"at least {low} argument" + ("s" if low != 1 else "")
    if low == high:
        return f"exactly {low} argument" + ("s" if low != 1 else "")
    return f"{low} or {high} arguments" if high == low + 1 else f"{low} to {high} arguments"


def _arg_char_offset(text: str, arg_offset: int, index: int) -> int:
    """Offset in the rule of character ``index`` of the (unescaped) argument starting at ``arg_offset``."""
    pos = arg_offset + 1
    if text[arg_offset] == "`":
        return pos + index
    for _ in range(index):
        pos += 2 if text[pos] == "\\" else 1
    return pos


def _validate_call(text: str, call: Call, low: int, high: int | None) -> None:
    count = len(call.args)
    if count < low or (high is not None and count > high):
        raise RuleError(
            f"{call.name} takes {_arity_text(low, high)}, got {count}", call.offset, "usage: " + _USAGE[call.name]
        )
    regex_arg = _REGEX_ARGS.get(call.name)
    if regex_arg is not None:
        indexes = range(count) if regex_arg < 0 else (regex_arg,)
        for index in indexes:
            try:
                re.compile(call.args[index])
            except re.error as exc:
                where = call.arg_offsets[index]
                if exc.pos is not None:
                    where = _arg_char_offset(text, where, min(exc.pos, len(call.args[index])))
                raise RuleError(f"invalid regular expression in {call.name}: {exc.msg}", where) from None
    if call.name in _HEADER_MATCHERS and _TOKEN.fullmatch(call.args[0]) is None:
        raise RuleError(
            f"invalid header name {call.args[0]!r} in {call.name}",
            call.arg_offsets[0],
            "a header name is a token: letters, digits and !#$%&'*+-.^_`|~",
        )
    if call.name == "ClientIP":
        for index, arg in enumerate(call.args):
            try:
                parse_network(arg)
            except ValueError:
                raise RuleError(
                    f"invalid IP address or CIDR {arg!r} in ClientIP",
                    call.arg_offsets[index],
                    "usage: " + _USAGE["ClientIP"],
                ) from None


def parse_rule(text: str) -> Node:
    """Parse and validate a rule (any protocol); raises :class:`RuleError`."""
    return _Parser(text).parse()


# --- protocols ---------------------------------------------------------------------------------------------------


def calls(node: Node) -> list[Call]:
    """Every matcher call of ``node``, left to right."""
    out: list[Call] = []
    stack: list[Node] = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, Call):
            out.append(item)
        elif isinstance(item, Not):
            stack.append(item.item)
        else:
            stack.extend(reversed(item.items))
    return out


def rule_protocols(node: Node) -> set[str]:
    """Protocols whose routers may use ``node``: {"http"}, {"tcp"}, both (ClientIP only), or none (mixed)."""
    allowed = {HTTP, TCP}
    for call in calls(node):
        allowed &= MATCHERS[call.name][2]
    return allowed


def legacy_l4_rule(node: Node) -> bool:
    """True for the legacy TCP/UDP spellings ``PathPrefix(`/`)``, ``Method(`TCP`)``, ``Method(`UDP`)`` (SPEC §1.3)."""
    return node in (Call("PathPrefix", ("/",)), Call("Method", ("TCP",)), Call("Method", ("UDP",)))


_CATCH_ALL_SNI: Final = Call("HostSNI", ("*",))


def check_rule(text: str, protocol: str) -> Node:
    """Parse ``text`` and check every matcher is allowed for ``protocol`` ("http", "tcp" or "udp").

    For "tcp" and "udp" a legacy rule (see :func:`legacy_l4_rule`) is returned as ``HostSNI(`*`)``; the caller
    emits the deprecation warning.
    """
    if protocol not in (HTTP, TCP, UDP):
        raise ValueError(f"unknown protocol {protocol!r}")
    node = parse_rule(text)
    if protocol != HTTP and legacy_l4_rule(node):
        first = calls(node)[0]
        return Call("HostSNI", ("*",), first.offset, first.arg_offsets)
    if protocol == UDP:
        if node != _CATCH_ALL_SNI:
            raise RuleError("a UDP router takes no rule or HostSNI(`*`)", 0, "remove the rule or use HostSNI(`*`)")
        return node
    for call in calls(node):
        if protocol not in MATCHERS[call.name][2]:
            if protocol == HTTP:
                message = f"{call.name} is a TCP matcher and cannot be used in an HTTP router"
                hint = "HTTP routers use " + ", ".join(HTTP_MATCHERS)
            else:
                message = f"{call.name} is an HTTP matcher and cannot be used in a TCP router"
                hint = "TCP routers use " + ", ".join(TCP_MATCHERS)
            raise RuleError(message, call.offset, hint)
    return node


# --- compilation, formatting, priority ---------------------------------------------------------------------------


def _compile_call(call: Call) -> m.Matcher:
    name = call.name
    args = list(call.args)
    if name == "Host":
        return m.HostMatcher(args)
    if name == "HostRegexp":
        return m.HostRegexpMatcher([re.compile(a) for a in args])
    if name == "Path":
        return m.PathMatcher(args)
    if name == "PathPrefix":
        return m.PathPrefixMatcher(args)
    if name == "PathRegexp":
        return m.PathRegexpMatcher([re.compile(a) for a in args])
    if name == "Method":
        return m.MethodMatcher(args)
    if name in ("Header", "Headers"):
        return m.HeaderMatcher(args[0], args[1])
    if name == "HeaderRegexp":
        return m.HeaderRegexpMatcher(args[0], re.compile(args[1]))
    if name == "Query":
        return m.QueryMatcher(args[0], args[1] if len(args) == 2 else None)
    if name == "QueryRegexp":
        return m.QueryRegexpMatcher(args[0], re.compile(args[1]))
    if name == "ClientIP":
        return m.ClientIPMatcher(args)
    if name == "Model":
        return m.ModelMatcher(args)
    if name == "ModelRegexp":
        return m.ModelRegexpMatcher([re.compile(a) for a in args])
    raise RuleError(f"{name} is a TCP matcher; only HTTP rules compile to request matchers", call.offset)


def _reads_model(matcher: m.Matcher) -> bool:
    return matcher.needs_model()


def compile_rule(node: Node) -> m.Matcher:
    """Compile a parsed HTTP rule into its native matcher tree (nested ``&&``/``||`` flattened, order kept)."""
    if isinstance(node, Call):
        return _compile_call(node)
    if isinstance(node, Not):
        return m.NotMatcher(compile_rule(node.item))
    kind = type(node)
    children: list[m.Matcher] = []
    stack: list[Node] = list(reversed(node.items))
    while stack:
        item = stack.pop()
        if type(item) is kind:
            assert isinstance(item, (And, Or))
            stack.extend(reversed(item.items))
        else:
            children.append(compile_rule(item))
    # children that read the model go last (``&&``/``||`` of matchers without side effects commute): a request
    # whose other conditions already decide the rule is routed without reading its body (SPEC §16.1)
    children.sort(key=_reads_model)
    return m.AndMatcher(children) if kind is And else m.OrMatcher(children)


def _quote(arg: str) -> str:
    if "`" not in arg:
        return f"`{arg}`"
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_rule(node: Node) -> str:
    """Canonical text of ``node``: parses back to an equal tree."""
    if isinstance(node, Call):
        return f"{node.name}({', '.join(_quote(a) for a in node.args)})"
    if isinstance(node, Not):
        inner = format_rule(node.item)
        return f"!{inner}" if isinstance(node.item, (Call, Not)) else f"!({inner})"
    if isinstance(node, And):
        parts = [format_rule(i) if isinstance(i, (Call, Not)) else f"({format_rule(i)})" for i in node.items]
        return " && ".join(parts)
    parts = [format_rule(i) if not isinstance(i, Or) else f"({format_rule(i)})" for i in node.items]
    return " || ".join(parts)


def effective_priority(rule: str, priority: int) -> int:
    """``priority`` if non-zero, else the rule's length in characters (SPEC §4.3)."""
    return priority if priority != 0 else len(rule)
