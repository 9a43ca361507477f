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
- ``jwt``: the ``jwt`` middleware's token checks (HMAC secret, RSA and EC public keys) and the JWKS document parser:
  a token is accepted (and then PyJWT verifies its signature with the same key) or answered 401 with one of the
  SPEC §6.1 errors; a JWKS document gives a key set or ValueError; never another exception.
- ``h2head``: the HTTP/2 request head builder (``http/h2_head.request_head``): a head or a ProtocolError whose status
  and message are among SPEC §5.5's; differential: the equivalent HTTP/1.1 request text gets the same verdict and
  the same fields from the pure HTTP/1 parser.
- ``sse``: the SSE event reassembler of the usage accounting (``http/usage.py``): ``UsageMeter`` gives the same
  usage and counters for a stream fed whole and cut anywhere; ``UsageEventFilter``'s output is the stream without
  exactly its usage-only events, wherever it is cut; a usage event taken out of the stream was read by the meter.

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


JWT_NOW = 1_700_000_000.0
JWT_SECRET = "fuzz-secret-" + "0123456789abcdef" * 4
JWT_ERRORS = frozenset(
    [b'{"error":"Missing token"}']
    + [b'{"error":"Invalid token: %s"}' % d.encode() for d in (
        "malformed token", "algorithm not allowed", "unknown key", "invalid signature", "token expired",
        "token not yet valid", "missing exp", "invalid issuer", "invalid audience")]
)
ASYMMETRIC = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384"]
_jwt_keys: dict[str, Any] = {}


def jwt_keys() -> dict[str, Any]:
    """One RSA and one EC P-256 key pair for the process (the target and its seeds share them)."""
    if not _jwt_keys:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        _jwt_keys["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _jwt_keys["ec"] = ec.generate_private_key(ec.SECP256R1())
    return _jwt_keys


def _middleware_params(kind: str, body: str) -> Any:
    from a3s_gateway import GatewayConfig

    config = GatewayConfig.from_hcl(
        'entrypoints "web" { address = ":8080" }\nrouters "r" { rule = "PathPrefix(`/`)"; service = "s" }\n'
        'services "s" { load_balancer { servers = [{ url = "http://127.0.0.1:9000" }] } }\n'
        f'middlewares "m" {{\n  type = "{kind}"\n{body}\n}}\n', "fuzz.hcl", env={})
    return config.middlewares["m"].params


class Jwt:
    """The first byte picks the JWKS parser (0) or one of three verifiers; the rest is the document or the header."""

    def __init__(self) -> None:
        import tempfile

        import jwt as pyjwt
        from cryptography.hazmat.primitives import serialization

        from a3s_gateway.middleware import jwt as mw
        from a3s_gateway.middleware.chain import Request

        self.pyjwt, self.mw, self.request = pyjwt, mw, Request
        claims = '  issuer = "fuzz-issuer"\n  audience = ["a", "b"]\n  forward_claims = { sub = "X-Sub", n = "X-N" }'
        self.verifiers: list[tuple[Any, dict[str, Any]]] = []
        hs = mw.Jwt("m", "r", _middleware_params("jwt", f'  value = "{JWT_SECRET}"\n{claims}'), clock=lambda: JWT_NOW)
        self.verifiers.append((hs, {a: JWT_SECRET.encode() for a in ("HS256", "HS384", "HS512")}))
        with tempfile.TemporaryDirectory(prefix="a3s-fuzz-jwt-") as tmp:
            for kind, algs in (("rsa", ["RS256", "RS384", "RS512", "PS256"]), ("ec", ["ES256"])):
                public = jwt_keys()[kind].public_key()
                pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                path = Path(tmp) / f"{kind}.pem"
                path.write_bytes(pem)
                params = _middleware_params("jwt", f'  public_key_file = "{path}"\n{claims}')
                self.verifiers.append((mw.Jwt("m", "r", params, clock=lambda: JWT_NOW), {a: public for a in algs}))

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        if data[0] == 0:
            try:
                self.mw.parse_jwks(data[1:], ASYMMETRIC)
            except ValueError:  # orjson.JSONDecodeError is one; what _kick() reports as a failed fetch
                pass
            return
        verifier, keys = self.verifiers[(data[0] - 1) % len(self.verifiers)]
        req = self.request(b"GET", b"/", None, b"example.com", [(b"Authorization", data[1:])], "10.0.0.1", "r",
                           b"http", 0, 1, False, "")
        reply = verifier.request(req, 0.0)
        if reply is not None:
            if reply.status != 401 or reply.body not in JWT_ERRORS:
                raise Finding(f"{data!r}: {reply.status} {reply.body!r}")
            return
        token = data[1:].strip(b" \t")
        if token[:7].lower() == b"bearer ":
            token = token[7:].strip(b" \t")
        alg = self.pyjwt.get_unverified_header(token)["alg"]
        try:
            self.pyjwt.PyJWS().decode(token, keys[alg], algorithms=[alg])
        except (self.pyjwt.PyJWTError, KeyError) as e:
            raise Finding(f"{data!r} accepted; PyJWT with the same key: {e!r}") from e


class H2Head:
    """HTTP/2 request fields → head or ProtocolError, as the HTTP/1.1 parser reads the equivalent text.

    Input: a flags byte (bit 0: body follows HEADERS; bit 1: small limits), then length-prefixed pieces (one byte of
    length each): method, path, authority, then name/value pairs. Names are lower-cased and connection-specific
    fields left out, as the h2 library guarantees before ``request_head`` is called; ``cookie`` fields are the
    cookies, ``host`` is dropped (the authority is ``:authority``).
    """

    # what h2 rejects before the head is built (RFC 9113 §8.2.2), and what HTTP/1.1 frames differently
    H2_REJECTS = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
    FIELDS = ("method", "target", "path", "query", "authority", "version", "headers", "header_ids", "host",
              "content_length", "chunked", "keep_alive", "upgrade", "te_trailers", "connection_tokens", "head_len")

    def __init__(self) -> None:
        from a3s_gateway.http import h2_head

        self.request_head = h2_head.request_head
        self.pure = importlib.import_module(PURE_PARSER)

    @staticmethod
    def pieces(data: bytes) -> list[bytes]:
        out, i = [], 0
        while i < len(data):
            n = data[i]
            out.append(data[i + 1 : i + 1 + n])
            i += 1 + n
        return out

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        body_follows = bool(data[0] & 1)
        limits = LIMITS[(data[0] >> 1) & 1]
        parts = [*self.pieces(data[1:]), b"", b"", b""]
        method, path, authority = parts[0], parts[1], parts[2]
        fields: list[tuple[bytes, bytes]] = []
        cookies: list[bytes] = []
        if method == b"CONNECT" or b" " in path or b" " in method or \
                not (path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")):
            return  # proxy/http2.py answers these itself (405, or a stream reset) before building a head
        rest = parts[3:]
        for name, value in zip(rest[0::2], rest[1::2], strict=False):
            name = name.lower()
            if name == b"cookie":
                cookies.append(value)
            elif name in self.H2_REJECTS or name.startswith(b":") or name == b"host" or \
                    (name == b"te" and value != b"trailers"):
                continue
            else:
                fields.append((name, value))
        try:
            head = self.request_head(method, path, authority, fields, cookies, body_follows, **limits)
        except ProtocolError as e:
            got: Any = ("error", e.status, e.message)
        else:
            got = tuple(getattr(head, f) for f in self.FIELDS)
        want = self.http1(method, path, authority, fields, cookies, body_follows, limits)
        if want is not None and self.same_answer(got) != self.same_answer(want):
            raise Finding(f"h2 {got!r} != HTTP/1.1 {want!r} for {(method, path, authority, fields, cookies)!r}")
        if got[0] == "error" and (got[1], got[2]) not in H2_ERRORS:
            raise Finding(f"unexpected error {got!r}")

    @staticmethod
    def same_answer(outcome: Any) -> Any:
        """What must agree: a rejection, or the head's fields. When both reject, which violation is named may differ
        (RELIABILITY.md §2): request_head checks the request line, then each field, then the limits, where the
        HTTP/1 parser reports the first violation in byte order (a count limit reached before a bad name is 431
        there, RST_STREAM here)."""
        return ("rejected",) if outcome[0] == "error" else outcome

    def http1(self, method: bytes, path: bytes, authority: bytes, fields: list[tuple[bytes, bytes]],
              cookies: list[bytes], body_follows: bool, limits: dict[str, int]) -> Any:
        """The HTTP/1.1 parser's verdict on the equivalent text; None where the text is not equivalent (a CR or
        LF in a piece, or a method the request line cannot carry)."""
        pieces = [method, path, authority, *(x for f in fields for x in f), *cookies]
        if any(b"\r" in p or b"\n" in p for p in pieces):
            return None
        lines = [n + b": " + v + b"\r\n" for n, v in fields]
        if cookies:
            lines.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
        chunked = body_follows and not any(n == b"content-length" for n, _ in fields)
        te = b"transfer-encoding: chunked\r\n"
        if chunked:
            lines.append(te)
        text = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, path, authority, b"".join(lines))
        try:
            head = self.pure.parse_request(text, **limits)
        except ProtocolError as e:
            return ("error", e.status, e.message)
        if head is None:
            return None
        if head.chunked:  # said with a header in the text, with END_STREAM on the stream
            i = head.headers.index((b"transfer-encoding", b"chunked"))
            head.headers = head.headers[:i] + head.headers[i + 1 :]
            head.header_ids = head.header_ids[:i] + head.header_ids[i + 1 :]
            head.head_len -= len(te)
        return tuple(getattr(head, f) for f in self.FIELDS)


H2_ERRORS = frozenset((
    (414, "Request line too long"), (400, "Bad request: malformed request line"),
    (400, "Bad request: invalid request target"), (431, "Request header fields too large"),
    (400, "Bad request: invalid header field"), (400, "Bad request: invalid characters"),
    (400, "Bad request: invalid Host header"), (400, "Bad request: invalid Content-Length"),
))

def sse_events(stream: bytes) -> tuple[list[bytes], bytes]:
    """The events of an SSE stream as the WHATWG rules cut it (a line ends at CRLF, LF or CR; a blank line ends an
    event), each with its line ends, and the bytes after the last one: written independently of http/usage.py."""
    events: list[bytes] = []
    start = line_start = i = 0
    n = len(stream)
    while i < n:
        c = stream[i]
        if c != 0x0A and c != 0x0D:
            i += 1
            continue
        end = i + 2 if c == 0x0D and stream[i + 1 : i + 2] == b"\n" else i + 1
        if i == line_start:  # a blank line
            events.append(stream[start:end])
            start = end
        i = line_start = end
    return events, stream[start:]


def sse_usage_only(event: bytes) -> bool:
    """SPEC §16.2's usage-only event: its data (the ``data`` field lines, one leading space dropped, joined with LF)
    is a JSON object with empty ``choices`` and a ``usage`` object."""
    import orjson

    data = []
    for line in event.splitlines():
        name, colon, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if colon and value[:1] == b" " else value)
    if not data:
        return False
    try:
        doc = orjson.loads(b"\n".join(data))
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and doc.get("choices") == [] and isinstance(doc.get("usage"), dict)


def sse_counts(event: bytes) -> bool:
    """A usage-only event with a token count the meter reads (a non-negative integer member of SPEC §16.2)."""
    import orjson

    data = [v[1:] if v[:1] == b" " else v for n, c, v in (ln.partition(b":") for ln in event.splitlines())
            if n == b"data"]
    usage = orjson.loads(b"\n".join(data))["usage"]
    return any(isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool) and usage[k] >= 0
               for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens"))


class Sse:
    """The SSE event reassembler of the usage accounting (``http/usage.py``, SPEC §16.2).

    Input: a flags byte (the cut points' random seed; the request body size of the estimate), then the stream.
    ``UsageMeter``: the same stream fed whole, in one-byte pieces (streams up to 64 bytes), at 1-8 random cut
    points (one piece per ``feed`` call, and all pieces in one call) gives the same tokens, source, content-event
    count and model counters. ``UsageEventFilter``: fed at any cut points, its output is the stream without exactly
    its usage-only events (cut as ``sse_events``); a usage-only event with token counts means the meter reports
    usage (what the filter hides from the client, the gateway has read). Neither raises.
    """

    def __init__(self) -> None:
        from a3s_gateway.http import usage
        from a3s_gateway.observability.stats import ModelStats

        self.usage, self.stats = usage, ModelStats

    def meter(self, pieces: list[bytes], request_bytes: int, one_call: bool) -> tuple[Any, ...]:
        stats = self.stats("m")
        m = self.usage.UsageMeter(stats)
        m.begin(b"text/event-stream; charset=utf-8", 0.0)
        if one_call:
            m.feed(pieces, 1.0)
        else:
            for i, piece in enumerate(pieces):
                m.feed([piece], 1.0 + i)
        m.finish(request_bytes)
        return (m.input_tokens, m.output_tokens, m.source, m.events, stats.input_reported, stats.output_reported,
                stats.input_estimated, stats.output_estimated, stats.ttft.count(), stats.inter_token.count())

    def filtered(self, pieces: list[bytes]) -> bytes:
        f = self.usage.UsageEventFilter()
        return b"".join([f.feed(p) for p in pieces]) + f.finish()

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        import random

        stream = data[1:]
        rng = random.Random(data[0])
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(1, 8))))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        splits = [pieces]
        if len(stream) <= 64:  # every cut at once (longer streams: the random cuts move at each input)
            splits.append([stream[i : i + 1] for i in range(len(stream))])
        request_bytes = data[0] * 7
        whole = self.meter([stream], request_bytes, False)
        for split in splits:
            for one_call in (False, True):
                got = self.meter(split, request_bytes, one_call)
                if got != whole:
                    raise Finding(f"meter: {stream!r} whole {whole!r}, in pieces {split!r} {got!r}")
        events, rest = sse_events(stream)
        expected = b"".join(e for e in events if not sse_usage_only(e)) + (b"" if sse_usage_only(rest) else rest)
        for split in [[stream], *splits]:
            out = self.filtered(split)
            if out != expected:
                raise Finding(f"filter: {stream!r} in pieces {split!r} gives {out!r}, expected {expected!r}")
        counted = any(sse_counts(e) for e in [*events, rest] if sse_usage_only(e))
        if counted and whole[2] != self.usage.REPORTED:
            raise Finding(f"filter took a usage event with token counts out of {stream!r}; the meter has {whole!r}")


TARGETS: dict[str, Callable[[], Callable[[bytes], None]]] = {
    "http1": Http1, "chunked": Chunked, "config": Config, "rules": Rules, "jwt": Jwt, "h2head": H2Head, "sse": Sse,
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
    elif name == "jwt":
        yield from _jwt_seeds()
    elif name == "h2head":
        yield from _h2head_seeds()
    elif name == "sse":
        from vectors import sse

        for i, stream in enumerate(sse.streams()):
            yield bytes([i * 37 % 256]) + stream


def _jwt_seeds() -> Iterator[bytes]:
    import jwt as pyjwt
    from cryptography.hazmat.primitives import serialization
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    keys = jwt_keys()
    rsa_pem = keys["rsa"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    ec_pem = keys["ec"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    now = int(JWT_NOW)
    good = {"sub": "user-1", "n": 7, "iss": "fuzz-issuer", "aud": ["b", "c"], "exp": now + 300, "nbf": now - 10}
    variants = [good, {**good, "exp": now - 3600}, {**good, "nbf": now + 3600}, {**good, "iss": "x"},
                {**good, "aud": "z"}, {k: v for k, v in good.items() if k != "exp"}, {**good, "exp": "soon"},
                {**good, "sub": "a\r\nb"}, {**good, "n": {"deep": [1, 2.5, None]}}]
    for i, claims in enumerate(variants):
        for verifier, key, alg in ((1, JWT_SECRET, "HS256"), (1, JWT_SECRET, "HS512"), (2, rsa_pem, "RS256"),
                                   (2, rsa_pem, "PS256"), (3, ec_pem, "ES256")):
            if i and alg not in ("HS256", "ES256"):
                continue
            token = pyjwt.encode(claims, key, algorithm=alg, headers={"kid": "k1"} if i == 1 else None)
            yield bytes([verifier]) + b"Bearer " + token.encode()
    tok = pyjwt.encode(good, JWT_SECRET, algorithm="HS256")
    yield b"\x01" + tok.encode()  # bare token
    yield b"\x01Bearer " + tok[:-3].encode() + b"AAA"  # bad signature
    yield b"\x02Bearer " + tok.encode()  # HS token to an RSA verifier
    yield b"\x01Bearer " + pyjwt.encode(good, None, algorithm="none").encode()
    yield b"\x01Bearer e30.e30.e30"
    yield b"\x01bearer"
    yield b"\x01"
    public = [json_jwk(RSAAlgorithm.to_jwk(keys["rsa"].public_key()), "rsa-1", "RS256"),
              json_jwk(ECAlgorithm.to_jwk(keys["ec"].public_key()), "ec-1", None)]
    yield b'\x00{"keys":[' + b",".join(public) + b"]}"
    yield b'\x00{"keys":[{"kty":"oct","k":"c2VjcmV0"},{"kty":"RSA","n":"AQAB","e":"AQAB"},{"kty":"EC","crv":"P-256"}]}'
    yield b'\x00{"keys":{}}'
    yield b"\x00[]"


def json_jwk(jwk: str, kid: str, alg: str | None) -> bytes:
    import json

    doc = json.loads(jwk)
    doc["kid"] = kid
    if alg:
        doc["alg"] = alg
    return json.dumps(doc).encode()


def _h2head_input(flags: int, method: bytes, path: bytes, authority: bytes,
                  fields: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray([flags])
    for piece in [method, path, authority, *(x for f in fields for x in f)]:
        out.append(len(piece[:255]))
        out += piece[:255]
    return bytes(out)


def _h2head_seeds() -> Iterator[bytes]:
    cases = [
        (0, b"GET", b"/", b"example.com", []),
        (0, b"GET", b"/a/b?x=1&y=%20z", b"api.example.com:8443", [(b"accept", b"*/*"), (b"user-agent", b"curl/8")]),
        (1, b"POST", b"/v1/chat", b"h", [(b"content-type", b"application/json"), (b"content-length", b"12")]),
        (1, b"POST", b"/upload", b"h", [(b"content-type", b"text/plain")]),
        (0, b"GET", b"/c", b"h", [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"a")]),
        (0, b"GET", b"/f", b"h", [(b"te", b"trailers"), (b"x-request-id", b"r1"), (b"expect", b"100-continue")]),
        (0, b"OPTIONS", b"*", b"h", []),
        (0, b"PUT", b"/p", b"", [(b"content-length", b"0")]),
        (1, b"POST", b"/", b"h", [(b"content-length", b"1, 1"), (b"content-length", b"1")]),
        (1, b"POST", b"/", b"h", [(b"content-length", b"1"), (b"content-length", b"2")]),
        (1, b"POST", b"/", b"h", [(b"content-length", b"+1")]),
        (0, b"G@T", b"/", b"h", []),
        (0, b"GET", b"/a#frag", b"h", []),
        (0, b"GET", b"/a%zz", b"h", []),
        (0, b"GET", b"/", b"h", [(b"x-a", b"one\x01two"), (b"x-b", b" \tpadded\t ")]),
        (0, b"GET", b"/", b"bad host!", []),
        (0, b"GET", b"/", b"[::1]:80", []),
        (0, b"GET", b"/", b"h", [(b"x-\xff", b"v"), (b"x a", b"v")]),
        (2, b"GET", b"/" + b"a" * 60, b"h", [(b"x-%d" % i, b"v" * 10) for i in range(5)]),
    ]
    for flags, method, path, authority, fields in cases:
        yield _h2head_input(flags, method, path, authority, fields)


def load(name: str) -> Callable[[bytes], None]:
    return TARGETS[name]()
