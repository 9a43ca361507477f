"""Fuzz targets (issue 25): each takes one input of bytes and raises only on a finding.

- ``http1``: the compiled HTTP/1 head scanner (csrc/http1.c through the Cython wrapper ``_parser_c``) against the
  pure parser ``_parser_py``, for requests and responses: the same verdict (head, incomplete, or the same
  ProtocolError) and the same fields; a head must also parse the same when more bytes follow it.
- ``chunked``: the chunked decoder (both twins when compiled; their outputs compared): a body that decodes is
  re-encoded (``chunk_frames`` + ``last_chunk``, what the gateway sends upstream) and must decode to the same payload
  and trailers, consuming exactly the re-encoded bytes; only ProtocolError is allowed.
- ``config``: the HCL loader and validator (``GatewayConfig.from_hcl``): only ConfigError, never another exception
  (libFuzzer's ``-timeout`` catches a hang).
- ``rules``: the routing-rule parser: only RuleError; a parsed rule's canonical text (``format_rule``) parses back
  to an equal tree.

Run by fuzz/run.py (``make fuzz``); seeds come from tests/vectors (``seeds``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from a3s_gateway import _compat  # noqa: E402
from a3s_gateway.errors import ConfigError, ProtocolError  # noqa: E402

COMPILED_PARSER, PURE_PARSER = _compat.CYTHON_MODULES["http parser"]
COMPILED_FRAMING, PURE_FRAMING = _compat.CYTHON_MODULES["body relay"]
REQUEST_FIELDS = ("method", "target", "path", "query", "authority", "version", "headers", "header_ids", "host",
                  "content_length", "chunked", "keep_alive", "expect_continue", "upgrade", "te_trailers",
                  "connection_tokens", "head_len")
RESPONSE_FIELDS = ("status", "reason", "version", "headers", "header_ids", "content_length", "chunked",
                   "keep_alive", "upgrade", "event_stream", "connection_tokens", "head_len")
# small limits, so that the limit checks are reached by short inputs too
LIMITS = ({}, {"max_line": 64, "max_header_bytes": 128, "max_headers": 4})


class Finding(AssertionError):
    """A fuzz finding: the message says which property broke and for which input."""


def compiled_available() -> bool:
    return importlib.util.find_spec(COMPILED_PARSER) is not None


def _outcome(parse: Any, buf: bytes, fields: tuple[str, ...], limits: dict[str, int]) -> Any:
    try:
        head = parse(buf, **limits)
    except ProtocolError as e:
        return ("error", e.status, e.message)
    if head is None:
        return None
    return tuple(getattr(head, f) for f in fields)


class Http1:
    """Differential: compiled scanner vs pure parser."""

    def __init__(self) -> None:
        self.compiled = importlib.import_module(COMPILED_PARSER)
        self.pure = importlib.import_module(PURE_PARSER)

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        response = data[0] & 1  # the first byte picks the kind and the limits, the rest is the message
        limits = LIMITS[(data[0] >> 1) & 1]
        buf = data[1:]
        if response:
            limits = {k: v for k, v in limits.items() if k != "max_line"}
            pairs = ((self.compiled.parse_response, self.pure.parse_response, RESPONSE_FIELDS),)
        else:
            pairs = ((self.compiled.parse_request, self.pure.parse_request, REQUEST_FIELDS),)
        for compiled, pure, fields in pairs:
            a = _outcome(compiled, buf, fields, limits)
            b = _outcome(pure, buf, fields, limits)
            if a != b:
                raise Finding(f"compiled {a!r} != pure {b!r} for {buf!r} {limits}")
            if a is not None and a[0] != "error":  # a complete head: the bytes after it change nothing
                more = _outcome(pure, buf + b"GET / HTTP/1.1\r\n", fields, limits)
                if more != b:
                    raise Finding(f"{buf!r} parses as {b!r} alone, {more!r} followed by more bytes")


def _decode(decoder: Any, data: bytes) -> tuple[str, bytes, list[tuple[bytes, bytes]], int]:
    """Feed ``data`` at once: ("done", payload, trailers, consumed), ("incomplete", ...) or ("error", ...)."""
    try:
        pieces, consumed = decoder.feed(data)
    except ProtocolError as e:
        return ("error", str(e.status).encode(), [], 0)
    payload = b"".join(pieces)
    if decoder.done:
        return ("done", payload, list(decoder.trailers), consumed)
    return ("incomplete", payload, [], consumed)


class Chunked:
    """Decode, re-encode, decode again: identity; the compiled decoder agrees when present."""

    def __init__(self) -> None:
        self.pure = importlib.import_module(PURE_PARSER)
        self.framing = importlib.import_module(PURE_FRAMING)
        self.compiled = importlib.import_module(COMPILED_PARSER) if compiled_available() else None

    def __call__(self, data: bytes) -> None:
        first = _decode(self.pure.ChunkedDecoder(), data)
        if self.compiled is not None:
            other = _decode(self.compiled.ChunkedDecoder(), data)
            if other != first:
                raise Finding(f"compiled {other!r} != pure {first!r} for {data!r}")
        if first[0] != "done":
            return
        _, payload, trailers, _ = first
        encoded = b"".join(self.framing.chunk_frames([payload])) + self.framing.last_chunk(trailers)
        again = _decode(self.pure.ChunkedDecoder(), encoded)
        if again != ("done", payload, trailers, len(encoded)):
            raise Finding(f"{data!r} decodes to {first!r}; its re-encoding {encoded!r} to {again!r}")


class Config:
    """HCL text → GatewayConfig: a config or a ConfigError, nothing else."""

    def __init__(self) -> None:
        from a3s_gateway import GatewayConfig

        self.load = GatewayConfig.from_hcl

    def __call__(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        try:
            self.load(text, filename="fuzz.hcl", env={"A": "1", "PORT": "8080"})
        except ConfigError:
            pass


class Rules:
    """Rule text → tree or RuleError; the canonical text of a tree parses back to it."""

    def __init__(self) -> None:
        from a3s_gateway.routing import rules

        self.rules = rules

    def __call__(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        try:
            node = self.rules.parse_rule(text)
        except self.rules.RuleError:
            return
        canonical = self.rules.format_rule(node)
        if self.rules.parse_rule(canonical) != node:
            raise Finding(f"{text!r} -> {node!r}; its canonical text {canonical!r} parses differently")


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "http1": Http1, "chunked": Chunked, "config": Config, "rules": Rules,
}


# --- seeds ----------------------------------------------------------------------------------------------------------


def seeds(name: str) -> Iterator[bytes]:
    """The seed corpus of a target, from the test vectors and example configurations."""
    if name == "http1":
        from vectors import http1_requests, http1_responses, smuggling

        for v in [*http1_requests.VALID, *http1_requests.INVALID]:
            yield b"\x00" + v.raw
        for r in [*http1_responses.VALID, *http1_responses.INVALID]:
            yield b"\x01" + r.raw
        for s in smuggling.VECTORS:
            if isinstance(s.send, bytes):
                yield b"\x00" + s.send
            elif isinstance(s.send, smuggling.Hostile):
                yield b"\x01" + s.send.response
    elif name == "chunked":
        from vectors import chunked, smuggling

        for c in [*chunked.VALID, *chunked.INVALID]:
            yield c.raw
        for s in smuggling.VECTORS:
            if isinstance(s.send, bytes) and b"chunked" in s.send.lower():
                yield s.send.partition(b"\r\n\r\n")[2]
    elif name == "config":
        for path in sorted([*(REPO / "examples").glob("*.hcl"), *(REPO / "tests" / "fixtures").glob("*.hcl")]):
            yield path.read_bytes()
    elif name == "rules":
        for rule in ("Host(`a.example`)", "PathPrefix(`/v1`) && Method(`GET`, `POST`)",
                     "Host(`a`) || (PathRegexp(`^/x/[0-9]+$`) && !Header(`X-A`, `1`))",
                     "HostRegexp(`^.+\\.example$`) && Query(`q`, `1`)", "ClientIP(`10.0.0.0/8`)",
                     'Path("/a`b") || HostSNI(`*`)', "HeaderRegexp(`X`, `^a$`)"):
            yield rule.encode()


def load(name: str) -> Callable[[bytes], None]:
    return TARGETS[name]()
