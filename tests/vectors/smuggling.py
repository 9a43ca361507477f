"""The request-smuggling corpus (issue 25; SPEC §5.3, §5.5, §5.7, §9.1): hostile HTTP/1.1 requests, HTTP/2 requests
bound for an HTTP/1.1 backend, and hostile backend responses. tests/integration/test_smuggling.py runs each one
through a gateway in-process against a raw-socket backend that records every byte.

A vector says what the gateway must do:

- ``Reject(status, messages)``: the client gets that status with ``Connection: close`` and one of the SPEC messages
  (several when more than one rule of §5.5 applies), the connection closes, and the backend receives no byte
  (``partial=True``: a body violation found after forwarding started — the backend may receive the start of the
  request but never a request that a strict or a lenient parser would see complete).
- ``Forward(...)``: the backend receives exactly one request; the strict (h11) and the lenient parser agree on its
  framing and fields, its bytes are the canonical serialisation of those fields (nothing else on the wire), and
  method, target, body, trailers and the client headers that pass (all those not hop-by-hop, ``Expect`` or named
  in ``Connection``, unless ``headers`` lists them) are what the gateway means to send. ``then`` is the status of a
  pipelined follow-up the gateway must reject (and close) without forwarding it.
- ``H2(...)``: an HTTP/2 request on an h2c prior-knowledge connection; ``Reset()`` = ``RST_STREAM(PROTOCOL_ERROR)``
  (or a 400 response), the backend receives no complete request; or a ``Forward``.
- ``Hostile(response, ...)``: the backend answers the client's first request with these bytes; the client sees
  ``status`` and ``body`` (``truncated``: the head, then the connection ends before the message does) and its next
  request is answered by the backend's next response, never by bytes smuggled after the first.
"""

from __future__ import annotations

from typing import NamedTuple


class Reject(NamedTuple):
    status: int
    messages: tuple[str, ...]
    partial: bool = False


class Forward(NamedTuple):
    method: str = "GET"
    target: str = "/"
    body: bytes = b""
    chunked: bool = False  # the body goes upstream re-encoded in chunks (else with Content-Length when any)
    headers: tuple[tuple[str, str], ...] | None = None  # the client headers expected upstream (None: derived)
    absent: tuple[str, ...] = ()  # names that must not reach the backend (checked in any case)
    trailers: tuple[tuple[str, str], ...] = ()
    then: int | None = None  # a pipelined follow-up rejected with this status


class H2(NamedTuple):
    fields: tuple[tuple[str, str], ...]
    data: tuple[bytes, ...] = ()
    trailers: tuple[tuple[str, str], ...] = ()


class Reset(NamedTuple):
    statuses: tuple[int, ...] = (400,)  # the answers accepted instead of RST_STREAM(PROTOCOL_ERROR)


class Hostile(NamedTuple):
    response: bytes
    status: int
    body: bytes = b""
    truncated: bool = False
    close: bool = False  # the backend closes its connection after writing the response
    method: str = "GET"
    absent: tuple[str, ...] = ()  # response header names that must not reach the client


class Vector(NamedTuple):
    name: str
    send: bytes | H2 | Hostile
    expect: Reject | Forward | Reset | None = None  # None for Hostile vectors


def req(*lines: str, body: bytes = b"", version: str = "HTTP/1.1", start: str = "POST / ") -> bytes:
    """A request: ``start`` + version, each header line, CRLF line ends, then ``body`` as given."""
    return "".join([start + version + "\r\n", *(line + "\r\n" for line in lines), "\r\n"]).encode("latin-1") + body


LINE = "Bad request: malformed request line"
TARGET = "Bad request: invalid request target"
FIELD = "Bad request: invalid header field"
FOLD = "Bad request: obsolete line folding"
CHARS = "Bad request: invalid characters"
HOST = "Bad request: invalid Host header"
CLTE = "Bad request: both Content-Length and Transfer-Encoding"
CL = "Bad request: invalid Content-Length"
TE = "Bad request: invalid Transfer-Encoding"
CHUNK = "Bad request: invalid chunked encoding"
NOT_IMPL = "Transfer coding not implemented"


def bad(*messages: str, partial: bool = False) -> Reject:
    return Reject(400, messages, partial)


def chunk_bad() -> Reject:
    return Reject(400, (CHUNK,), partial=True)


H = "Host: a"
TE_CHUNKED = "Transfer-Encoding: chunked"
HELLO = b"5\r\nhello\r\n0\r\n\r\n"
INNER = b"GET /admin HTTP/1.1\r\nHost: a\r\n\r\n"  # a whole request as body bytes
POST_HELLO = Forward("POST", "/", b"hello", chunked=True)

# --- CL.TE / TE.CL: both framings present ------------------------------------------------------------------------
CLTE_VECTORS = [
    Vector("cl.te classic", req(H, "Content-Length: 6", TE_CHUNKED, body=b"0\r\n\r\nG"), bad(CLTE)),
    Vector("te.cl classic", req(H, TE_CHUNKED, "Content-Length: 3", body=b"8\r\nSMUGGLED\r\n0\r\n\r\n"), bad(CLTE)),
    Vector("cl.te, te lowercase", req(H, "content-length: 4", "transfer-encoding: chunked", body=HELLO), bad(CLTE)),
    Vector("cl.te, te upper case", req(H, "CONTENT-LENGTH: 4", "TRANSFER-ENCODING: CHUNKED", body=HELLO), bad(CLTE)),
    Vector("cl.te, te with htab", req(H, "Content-Length: 4", "Transfer-Encoding:\tchunked", body=HELLO), bad(CLTE)),
    Vector("cl.te, te no space", req(H, "Content-Length: 4", "Transfer-Encoding:chunked", body=HELLO), bad(CLTE)),
    Vector("cl.te, te xchunked", req(H, "Content-Length: 4", "Transfer-Encoding: xchunked", body=HELLO),
           bad(CLTE, TE)),
    Vector("cl.te, te identity", req(H, "Content-Length: 4", "Transfer-Encoding: identity", body=HELLO),
           bad(CLTE, TE)),
    Vector("cl.te, te gzip chunked", req(H, "Content-Length: 4", "Transfer-Encoding: gzip, chunked", body=HELLO),
           Reject(400, (CLTE,))),
    Vector("cl.te, te empty", req(H, "Content-Length: 4", "Transfer-Encoding:", body=HELLO), bad(CLTE, TE)),
    Vector("cl.te, cl zero", req(H, "Content-Length: 0", TE_CHUNKED, body=HELLO), bad(CLTE)),
    Vector("cl.te, te between two cl", req(H, "Content-Length: 4", TE_CHUNKED, "Content-Length: 4", body=HELLO),
           bad(CLTE)),
    Vector("cl.te, http/1.0", req(H, "Content-Length: 4", TE_CHUNKED, body=HELLO, version="HTTP/1.0"), bad(CLTE, TE)),
    Vector("te.te cow + cl", req(H, TE_CHUNKED, "Transfer-encoding: cow", "Content-Length: 4", body=HELLO),
           bad(CLTE, TE)),
    Vector("cl.te, te space before colon", req(H, "Content-Length: 4", "Transfer-Encoding : chunked", body=HELLO),
           bad(FIELD)),
    Vector("cl.te, te vertical tab", req(H, "Content-Length: 4", "Transfer-Encoding:\x0bchunked", body=HELLO),
           bad(CHARS, CLTE)),
    Vector("cl.te, te obs-folded", req(H, "Content-Length: 4", "Transfer-Encoding:", " chunked", body=HELLO),
           bad(FOLD)),
    Vector("cl.te, te on a line with a bare lf", req(H, "Content-Length: 4\nTransfer-Encoding: chunked", body=HELLO),
           bad(CHARS)),
    Vector("cl.te, cl after te with a bare cr", req(H, "Transfer-Encoding: chunked\rContent-Length: 4", body=HELLO),
           bad(CHARS)),
]

# --- TE.TE: Transfer-Encoding obfuscations -------------------------------------------------------------------------
TE_VECTORS = [
    Vector("te chunked", req(H, TE_CHUNKED, body=HELLO), POST_HELLO),
    Vector("te chunked upper case", req(H, "Transfer-Encoding: CHUNKED", body=HELLO), POST_HELLO),
    Vector("te chunked trailing space", req(H, "Transfer-Encoding: chunked  ", body=HELLO), POST_HELLO),
    Vector("te chunked leading htab", req(H, "Transfer-Encoding:\tchunked", body=HELLO), POST_HELLO),
    Vector("te identity", req(H, "Transfer-Encoding: identity", body=HELLO), bad(TE)),
    Vector("te xchunked", req(H, "Transfer-Encoding: xchunked", body=HELLO), bad(TE)),
    Vector("te chunk", req(H, "Transfer-Encoding: chunk", body=HELLO), bad(TE)),
    Vector("te quoted chunked", req(H, 'Transfer-Encoding: "chunked"', body=HELLO), bad(TE)),
    Vector("te chunked then identity", req(H, "Transfer-Encoding: chunked, identity", body=HELLO), bad(TE)),
    Vector("te two lines chunked then cow", req(H, TE_CHUNKED, "Transfer-Encoding: cow", body=HELLO), bad(TE)),
    Vector("te two lines cow then chunked", req(H, "Transfer-Encoding: cow", TE_CHUNKED, body=HELLO),
           Reject(501, (NOT_IMPL,))),
    Vector("te gzip, chunked", req(H, "Transfer-Encoding: gzip, chunked", body=HELLO), Reject(501, (NOT_IMPL,))),
    Vector("te deflate, chunked", req(H, "Transfer-Encoding: deflate, chunked", body=HELLO),
           Reject(501, (NOT_IMPL,))),
    # chunked applied twice is no unimplemented coding but an invalid one (RFC 9112 §6.1: at most once)
    Vector("te chunked twice one line", req(H, "Transfer-Encoding: chunked, chunked", body=HELLO), bad(TE)),
    Vector("te chunked on two lines", req(H, TE_CHUNKED, TE_CHUNKED, body=HELLO), bad(TE)),
    Vector("te gzip alone", req(H, "Transfer-Encoding: gzip", body=HELLO), bad(TE)),
    Vector("te empty", req(H, "Transfer-Encoding:", body=HELLO), bad(TE)),
    Vector("te chunked with a parameter", req(H, "Transfer-Encoding: chunked;q=1", body=HELLO), bad(TE)),
    Vector("te in http/1.0", req(H, TE_CHUNKED, body=HELLO, version="HTTP/1.0"), bad(TE)),
    Vector("te with nul", req(H, "Transfer-Encoding: chunked\x00", body=HELLO), bad(CHARS)),
    Vector("te with vertical tab", req(H, "Transfer-Encoding: \x0bchunked", body=HELLO), bad(CHARS)),
    Vector("te with form feed", req(H, "Transfer-Encoding: \x0cchunked", body=HELLO), bad(CHARS)),
    Vector("te name with space before colon", req(H, "Transfer-Encoding : chunked", body=HELLO), bad(FIELD)),
    Vector("te name with htab before colon", req(H, "Transfer-Encoding\t: chunked", body=HELLO), bad(FIELD)),
    Vector("te obs-folded value", req(H, "Transfer-Encoding: gzip,", "\tchunked", body=HELLO), bad(FOLD)),
    Vector("te folded line first after the request line", req(" Transfer-Encoding: chunked", H, body=HELLO),
           bad(FOLD, FIELD)),
    Vector("te underscore is just a header", req(H, "Transfer_Encoding: chunked", start="GET / "),
           Forward("GET", "/")),
    Vector("te named in connection keeps chunked framing", req(H, "Connection: Transfer-Encoding", TE_CHUNKED,
                                                              body=HELLO), POST_HELLO),
]

# --- Content-Length: duplicates, signs, bases, overflow ------------------------------------------------------------
CL_VECTORS = [
    Vector("cl plain", req(H, "Content-Length: 5", body=b"hello"), Forward("POST", "/", b"hello")),
    Vector("cl identical repeats merged", req(H, "Content-Length: 5", "Content-Length: 5", body=b"hello"),
           Forward("POST", "/", b"hello")),
    Vector("cl identical list merged", req(H, "Content-Length: 5, 5", body=b"hello"), Forward("POST", "/", b"hello")),
    Vector("cl leading zeros", req(H, "Content-Length: 005", body=b"hello"), Forward("POST", "/", b"hello")),
    Vector("cl ows around", req(H, "Content-Length: \t5 ", body=b"hello"), Forward("POST", "/", b"hello")),
    Vector("cl zero", req(H, "Content-Length: 0"), Forward("POST", "/", b"")),
    Vector("cl differing repeats", req(H, "Content-Length: 5", "Content-Length: 6", body=b"hello!"), bad(CL)),
    Vector("cl differing list", req(H, "Content-Length: 5, 6", body=b"hello!"), bad(CL)),
    Vector("cl plus sign", req(H, "Content-Length: +5", body=b"hello"), bad(CL)),
    Vector("cl minus sign", req(H, "Content-Length: -5", body=b"hello"), bad(CL)),
    Vector("cl minus zero", req(H, "Content-Length: -0"), bad(CL)),
    Vector("cl hex", req(H, "Content-Length: 0x5", body=b"hello"), bad(CL)),
    Vector("cl decimal point", req(H, "Content-Length: 5.0", body=b"hello"), bad(CL)),
    Vector("cl exponent", req(H, "Content-Length: 5e0", body=b"hello"), bad(CL)),
    Vector("cl underscore", req(H, "Content-Length: 1_0", body=b"helloworld"), bad(CL)),
    Vector("cl space inside", req(H, "Content-Length: 1 0", body=b"helloworld"), bad(CL)),
    Vector("cl empty", req(H, "Content-Length:", body=b"hello"), bad(CL)),
    Vector("cl empty list element", req(H, "Content-Length: 5,", body=b"hello"), bad(CL)),
    Vector("cl overflow 2^64", req(H, "Content-Length: 18446744073709551616", body=b"x"), bad(CL)),
    Vector("cl overflow 20 nines", req(H, "Content-Length: 99999999999999999999", body=b"x"), bad(CL)),
    Vector("cl non-ascii digit", req(H, "Content-Length: \xd9\xa5", body=b"hello"), bad(CL)),
    Vector("cl with nul", req(H, "Content-Length: 5\x00", body=b"hello"), bad(CHARS)),
    Vector("cl space before colon", req(H, "Content-Length : 5", body=b"hello"), bad(FIELD)),
    Vector("cl obs-folded", req(H, "Content-Length:", " 5", body=b"hello"), bad(FOLD)),
    Vector("cl named in connection keeps the length", req(H, "Connection: Content-Length", "Content-Length: 5",
                                                         body=b"hello"), Forward("POST", "/", b"hello")),
    Vector("cl body holding a request is a body", req(H, f"Content-Length: {len(INNER)}", body=INNER),
           Forward("POST", "/", INNER)),
    Vector("cl shorter than the bytes sent: the rest is the next request", req(H, "Content-Length: 2",
                                                                               body=b"hiGARBAGE\r\n\r\n"),
           Forward("POST", "/", b"hi", then=400)),
    Vector("cl on get is a body", req(H, "Content-Length: 3", body=b"abc", start="GET / "),
           Forward("GET", "/", b"abc")),
    Vector("cl in http/1.0", req(H, "Content-Length: 3", body=b"abc", version="HTTP/1.0"),
           Forward("POST", "/", b"abc")),
]

# --- chunk sizes, extensions, trailers ----------------------------------------------------------------------------


def chunked(body: bytes, *extra: str) -> bytes:
    return req(H, *extra, TE_CHUNKED, body=body)


CHUNK_VECTORS = [
    Vector("chunk several sizes", chunked(b"3\r\nabc\r\na\r\n0123456789\r\n0\r\n\r\n"),
           Forward("POST", "/", b"abc0123456789", chunked=True)),
    Vector("chunk upper-case hex", chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
           Forward("POST", "/", b"0123456789", chunked=True)),
    Vector("chunk sixteen digits", chunked(b"0000000000000005\r\nhello\r\n0\r\n\r\n"), POST_HELLO),
    Vector("chunk empty body", chunked(b"0\r\n\r\n"), Forward("POST", "/", b"", chunked=True)),
    Vector("chunk extension dropped", chunked(b"5;name=value\r\nhello\r\n0;last\r\n\r\n"), POST_HELLO),
    Vector("chunk quoted extension dropped", chunked(b'5;a="x;y\\"z"\r\nhello\r\n0\r\n\r\n'), POST_HELLO),
    Vector("chunk extension with bws", chunked(b"5 ;a = b\r\nhello\r\n0\r\n\r\n"), POST_HELLO),
    Vector("chunk data holding a request", chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (len(INNER), INNER)),
           Forward("POST", "/", INNER, chunked=True)),
    Vector("chunk trailers kept", chunked(b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
           Forward("POST", "/", b"hello", chunked=True, trailers=(("X-Sum", "1"),))),
    Vector("chunk framing trailers dropped", chunked(b"5\r\nhello\r\n0\r\nContent-Length: 50\r\n"
                                                     b"Transfer-Encoding: chunked\r\nHost: evil\r\n"
                                                     b"Authorization: x\r\nX-Ok: 1\r\n\r\n"),
           Forward("POST", "/", b"hello", chunked=True, trailers=(("X-Ok", "1"),))),
    Vector("chunk size 17 digits", chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size 2^63", chunked(b"8000000000000000\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size 2^64-1", chunked(b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size 2^64+5 wraps to 5", chunked(b"10000000000000005\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size 0x prefix", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size leading space", chunked(b" 5\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size trailing space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size non-hex", chunked(b"5g\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size empty", chunked(b"\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size bare lf", chunked(b"5\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size bare cr", chunked(b"5\rhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk size nul", chunked(b"5\x00\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk data longer than size", chunked(b"3\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk data lf only", chunked(b"5\r\nhello\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk last chunk lf only", chunked(b"5\r\nhello\r\n0\n\r\n"), chunk_bad()),
    Vector("chunk end of trailers lf only", chunked(b"5\r\nhello\r\n0\r\n\n"), chunk_bad()),
    Vector("chunk empty extension", chunked(b"5;\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk extension without name", chunked(b"5;=x\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk extension bare lf inside quotes", chunked(b'5;a="x\ny"\r\nhello\r\n0\r\n\r\n'), chunk_bad()),
    Vector("chunk extension unterminated quote", chunked(b'5;a="x\r\nhello\r\n0\r\n\r\n'), chunk_bad()),
    Vector("chunk extension 5000 bytes", chunked(b"5;x=" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n"), chunk_bad()),
    Vector("chunk trailer obs-fold", chunked(b"5\r\nhello\r\n0\r\nX-A: 1\r\n 2\r\n\r\n"), chunk_bad()),
    Vector("chunk trailer bare lf", chunked(b"5\r\nhello\r\n0\r\nX-A: 1\n\r\n"), chunk_bad()),
    Vector("chunk trailer space before colon", chunked(b"5\r\nhello\r\n0\r\nX-A : 1\r\n\r\n"), chunk_bad()),
    Vector("chunk trailer nul", chunked(b"5\r\nhello\r\n0\r\nX-A: \x00\r\n\r\n"), chunk_bad()),
    Vector("chunk last chunk then a smuggled request line", chunked(b"0\r\n\r\nGPOST / HTTP/1.1\r\n\r\n"),
           Forward("POST", "/", b"", chunked=True, then=400)),
]

# --- request line and target ---------------------------------------------------------------------------------------
LINE_VECTORS = [
    Vector("line double space", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", bad(LINE)),
    Vector("line trailing space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", bad(LINE)),
    Vector("line tabs", b"GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n", bad(LINE, CHARS)),
    Vector("line leading space", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", bad(LINE)),
    Vector("line non-token method", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", bad(LINE)),
    Vector("line http/0.9", b"GET /\r\n\r\n", bad(LINE)),
    Vector("line bare lf", b"GET / HTTP/1.1\nHost: a\r\n\r\n", bad(CHARS, LINE)),
    Vector("line bare cr", b"GET / HTTP/1.1\rHost: a\r\n\r\n", bad(CHARS, LINE)),
    Vector("line nul in target", b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", bad(CHARS, TARGET)),
    Vector("line space in target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", bad(LINE)),
    Vector("line http/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", Reject(505, ("HTTP version not supported",))),
    Vector("line http/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", Reject(505, ("HTTP version not supported",))),
    Vector("line lower-case version", b"GET / http/1.1\r\nHost: a\r\n\r\n",
           Reject(400, (LINE,))),
    Vector("line connect", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", Reject(405, ("Method not allowed",))),
    Vector("line over max_request_line_bytes", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n",
           Reject(414, ("Request line too long",))),
    Vector("target invalid percent", b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n", bad(TARGET)),
    Vector("target non-ascii", b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", bad(TARGET, CHARS)),
    Vector("target fragment", b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n", bad(TARGET)),
    Vector("target relative", b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n", bad(TARGET)),
    Vector("target asterisk on get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", bad(TARGET)),
    Vector("target asterisk on options", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", Forward("OPTIONS", "*")),
    Vector("target double slash kept", b"GET //evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
           Forward("GET", "//evil.example/x")),
    Vector("target dot segments kept", b"GET /a/../admin?x=%2F HTTP/1.1\r\nHost: a\r\n\r\n",
           Forward("GET", "/a/../admin?x=%2F")),
    Vector("method lower-case kept", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", Forward("get", "/")),
]

# --- header section: bare LF / CR, NUL, obs-fold, names -------------------------------------------------------------
HEAD_VECTORS = [
    Vector("head ends with bare lf lf", b"GET / HTTP/1.1\r\nHost: a\n\n", bad(CHARS)),
    Vector("header bare lf", b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", bad(CHARS)),
    Vector("header bare cr inside value", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r2\r\n\r\n", bad(CHARS)),
    Vector("header bare cr ending line", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\r\n\r\n", bad(CHARS)),
    Vector("header nul in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", bad(CHARS)),
    Vector("header nul in name", b"GET / HTTP/1.1\r\nHost: a\r\nX\x00Y: 1\r\n\r\n", bad(CHARS, FIELD)),
    Vector("header del in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", bad(CHARS)),
    Vector("header escape in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x1bb\r\n\r\n", bad(CHARS)),
    Vector("header htab in value kept", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n",
           Forward("GET", "/", headers=(("Host", "a"), ("X", "a\tb")))),
    Vector("header obs-text in value kept", b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n",
           Forward("GET", "/", headers=(("Host", "a"), ("X", "caf\xe9")))),
    Vector("header obs-fold space", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", bad(FOLD)),
    Vector("header obs-fold htab", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", bad(FOLD)),
    Vector("header fold of host", b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", bad(FOLD)),
    Vector("header without colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-No-Colon\r\n\r\n", bad(FIELD)),
    Vector("header empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", bad(FIELD)),
    Vector("header name with slash", b"GET / HTTP/1.1\r\nHost: a\r\nX/Y: 1\r\n\r\n", bad(FIELD)),
    Vector("header name with non-ascii", b"GET / HTTP/1.1\r\nHost: a\r\nX\xe9: 1\r\n\r\n", bad(FIELD, CHARS)),
    Vector("header too many lines", b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: 1\r\n" * 101 + b"\r\n",
           Reject(431, ("Request header fields too large",))),
    Vector("header section too large", b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 70000 + b"\r\n\r\n",
           Reject(431, ("Request header fields too large",))),
]

# --- Host and absolute-form ----------------------------------------------------------------------------------------
HOST_VECTORS = [
    Vector("host missing", b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", bad(HOST)),
    Vector("host twice same", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", bad(HOST)),
    Vector("host twice differing", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", bad(HOST)),
    Vector("host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", bad(HOST)),
    Vector("host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", bad(HOST)),
    Vector("host with userinfo", b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", bad(HOST)),
    Vector("host with path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", bad(HOST)),
    Vector("host bad port", b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", bad(HOST)),
    Vector("host ipv6 literal", b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
           Forward("GET", "/", headers=(("Host", "[::1]:80"),))),
    Vector("host name with port", b"GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
           Forward("GET", "/", headers=(("Host", "a.example:8080"),))),
    Vector("absolute-form replaces host", b"GET http://a.example/x?y HTTP/1.1\r\nHost: admin.local\r\n\r\n",
           Forward("GET", "/x?y", headers=(("Host", "a.example"),))),
    Vector("absolute-form without path", b"GET http://a.example HTTP/1.1\r\nHost: b\r\n\r\n",
           Forward("GET", "/", headers=(("Host", "a.example"),))),
    Vector("absolute-form with port", b"GET http://a.example:81/p HTTP/1.1\r\nHost: b\r\n\r\n",
           Forward("GET", "/p", headers=(("Host", "a.example:81"),))),
    Vector("absolute-form upper-case scheme", b"GET HTTP://a.example/p HTTP/1.1\r\nHost: b\r\n\r\n",
           Forward("GET", "/p", headers=(("Host", "a.example"),))),
    Vector("absolute-form with userinfo", b"GET http://u:p@a.example/ HTTP/1.1\r\nHost: b\r\n\r\n", bad(TARGET)),
    Vector("absolute-form empty authority", b"GET http:///x HTTP/1.1\r\nHost: b\r\n\r\n", bad(TARGET, HOST)),
    Vector("absolute-form other scheme", b"GET ftp://a.example/x HTTP/1.1\r\nHost: b\r\n\r\n", bad(TARGET)),
    Vector("absolute-form two hosts", b"GET http://a.example/ HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n", bad(HOST)),
    Vector("http/1.0 without host", b"GET /ten HTTP/1.0\r\n\r\n",
           Forward("GET", "/ten", headers=(("Host", "{backend}"),))),  # the backend URL's host:port
]

# --- Connection-named and hop-by-hop stripping ---------------------------------------------------------------------
HOP_VECTORS = [
    Vector("connection names a custom header", req(H, "Connection: X-Secret", "X-Secret: 1", start="GET / "),
           Forward("GET", "/", absent=("x-secret", "connection"))),
    Vector("connection names several", req(H, "Connection: close, X-A,X-B", "X-A: 1", "X-B: 2", "X-C: 3",
                                          start="GET / "), Forward("GET", "/", absent=("x-a", "x-b"))),
    Vector("connection names authorization", req(H, "Connection: Authorization", "Authorization: Bearer t",
                                                start="GET / "), Forward("GET", "/", absent=("authorization",))),
    Vector("connection names a header on two lines", req(H, "Connection: keep-alive", "Connection: X-Drop",
                                                        "X-Drop: 1", start="GET / "),
           Forward("GET", "/", absent=("x-drop",))),
    Vector("connection upper-case token", req(H, "Connection: X-SECRET", "x-secret: 1", start="GET / "),
           Forward("GET", "/", absent=("x-secret",))),
    Vector("keep-alive stripped", req(H, "Connection: keep-alive", "Keep-Alive: timeout=5", start="GET / "),
           Forward("GET", "/", absent=("keep-alive",))),
    Vector("proxy-connection stripped", req(H, "Proxy-Connection: keep-alive", start="GET / "),
           Forward("GET", "/", absent=("proxy-connection",))),
    Vector("proxy-authorization stripped", req(H, "Proxy-Authorization: Basic eDp5", start="GET / "),
           Forward("GET", "/", absent=("proxy-authorization",))),
    Vector("te trailers stripped for http/1.1", req(H, "TE: trailers", start="GET / "),
           Forward("GET", "/", absent=("te",))),
    Vector("te gzip stripped", req(H, "TE: gzip", start="GET / "), Forward("GET", "/", absent=("te",))),
    Vector("trailer stripped", req(H, "Trailer: X-Sum", TE_CHUNKED, body=b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
           Forward("POST", "/", b"hello", chunked=True, absent=("trailer",), trailers=(("X-Sum", "1"),))),
    Vector("connection names host: host stays", req(H, "Connection: Host", start="GET / "),
           Forward("GET", "/", headers=(("Host", "a"),))),
    Vector("client x-forwarded-for extended", req(H, "X-Forwarded-For: 10.0.0.9", start="GET / "),
           Forward("GET", "/", headers=(("Host", "a"),))),
]

# --- Expect, Upgrade, h2c -----------------------------------------------------------------------------------------
UPGRADE_VECTORS = [
    Vector("expect 100-continue body sent at once", req(H, "Expect: 100-continue", "Content-Length: 5",
                                                        body=b"hello"), Forward("POST", "/", b"hello",
                                                                                absent=("expect",))),
    Vector("expect 100-continue on get", req(H, "Expect: 100-continue", start="GET / "),
           Forward("GET", "/", absent=("expect",))),
    Vector("expect 100-continue in http/1.0", req(H, "Expect: 100-continue", "Content-Length: 5", body=b"hello",
                                                 version="HTTP/1.0"), Forward("POST", "/", b"hello",
                                                                              absent=("expect",))),
    Vector("expect 100-continue chunked", req(H, "Expect: 100-continue", TE_CHUNKED, body=HELLO),
           Forward("POST", "/", b"hello", chunked=True, absent=("expect",))),
    Vector("expect unknown", req(H, "Expect: x-y", start="GET / "), Forward("GET", "/", absent=("expect",))),
    Vector("upgrade h2c served as http/1.1", req(H, "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
                                                "HTTP2-Settings: AAMAAABkAAQAAP__", start="GET / "),
           Forward("GET", "/", absent=("upgrade", "http2-settings", "connection"))),
    Vector("upgrade h2c without connection", req(H, "Upgrade: h2c", start="GET / "),
           Forward("GET", "/", absent=("upgrade",))),
    Vector("upgrade h2c on post with body", req(H, "Connection: Upgrade", "Upgrade: h2c", "Content-Length: 5",
                                               body=b"hello"), Forward("POST", "/", b"hello",
                                                                       absent=("upgrade",))),
    Vector("upgrade websocket without connection token", req(H, "Upgrade: websocket", start="GET / "),
           Forward("GET", "/", absent=("upgrade",))),
    Vector("upgrade foo-websocket", req(H, "Connection: Upgrade", "Upgrade: foo-websocket", start="GET / "),
           Forward("GET", "/", absent=("upgrade", "connection"))),
    Vector("upgrade websocket forwarded", req(H, "Connection: Upgrade", "Upgrade: websocket",
                                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                             "Sec-WebSocket-Version: 13", start="GET / "),
           Forward("GET", "/", headers=(("Host", "a"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                                        ("Sec-WebSocket-Version", "13"), ("Connection", "upgrade"),
                                        ("Upgrade", "websocket")))),
    Vector("h2 preface after a request", req(H, start="GET / ") + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
           Forward("GET", "/", then=400)),
]

# --- pipelining after errors ---------------------------------------------------------------------------------------
PIPELINE_VECTORS = [
    Vector("pipeline good then bare lf", req(H, start="GET / ") + b"GET /2 HTTP/1.1\nHost: a\r\n\r\n",
           Forward("GET", "/", then=400)),
    Vector("pipeline good then cl.te", req(H, start="GET / ") + req(H, "Content-Length: 4", TE_CHUNKED, body=HELLO),
           Forward("GET", "/", then=400)),
    Vector("pipeline good then 501", req(H, start="GET / ") + req(H, "Transfer-Encoding: gzip, chunked", body=HELLO),
           Forward("GET", "/", then=501)),
    Vector("pipeline bad then good", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x00\r\n\r\n" + req(H, start="GET /2 "),
           bad(CHARS)),
    Vector("pipeline 505 then good", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" + req(H, start="GET /2 "),
           Reject(505, ("HTTP version not supported",))),
    Vector("pipeline bad chunk then good", chunked(b"zz\r\n") + req(H, start="GET /2 "), chunk_bad()),
    Vector("pipeline bad cl then good", req(H, "Content-Length: 1, 2", body=b"ab") + req(H, start="GET /2 "),
           bad(CL)),
    Vector("pipeline bad host then good", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + req(H, start="GET /2 "),
           bad(HOST)),
    Vector("pipeline chunked then a folded request", chunked(HELLO) + b"GET /2 HTTP/1.1\r\nHost: a\r\n x\r\n\r\n",
           Forward("POST", "/", b"hello", chunked=True, then=400)),
]

# --- HTTP/2 → HTTP/1.1 --------------------------------------------------------------------------------------------


def h2(*fields: tuple[str, str], data: tuple[bytes, ...] = (), trailers: tuple[tuple[str, str], ...] = (),
       base: bool = True) -> H2:
    pseudo = ((":method", "POST" if data else "GET"), (":scheme", "http"), (":path", "/"),
              (":authority", "a")) if base else ()
    return H2((*pseudo, *fields), data, trailers)


H2_VECTORS = [
    Vector("h2 plain get", h2(), Forward("GET", "/", headers=(("host", "a"),))),
    Vector("h2 post with content-length", h2(("content-length", "5"), data=(b"hello",)),
           Forward("POST", "/", b"hello", headers=(("host", "a"),))),
    Vector("h2 post without content-length goes chunked", h2(data=(b"hel", b"lo")),
           Forward("POST", "/", b"hello", chunked=True, headers=(("host", "a"),))),
    Vector("h2 cookies joined", h2(("cookie", "a=1"), ("cookie", "b=2")),
           Forward("GET", "/", headers=(("host", "a"), ("cookie", "a=1; b=2")))),
    Vector("h2 host equal to authority", h2(("host", "a")), Forward("GET", "/", headers=(("host", "a"),))),
    Vector("h2 host without authority", H2(((":method", "GET"), (":scheme", "http"), (":path", "/x"), ("host", "a"))),
           Forward("GET", "/x", headers=(("host", "a"),))),
    Vector("h2 options asterisk", H2(((":method", "OPTIONS"), (":scheme", "http"), (":path", "*"),
                                      (":authority", "a"))), Forward("OPTIONS", "*", headers=(("host", "a"),))),
    Vector("h2 te trailers dropped for http/1.1", h2(("te", "trailers")),
           Forward("GET", "/", headers=(("host", "a"),), absent=("te",))),
    Vector("h2 content-length mismatch short", h2(("content-length", "10"), data=(b"hello",)), Reset()),
    Vector("h2 content-length mismatch long", h2(("content-length", "2"), data=(b"hello",)), Reset()),
    Vector("h2 content-length two values", h2(("content-length", "5"), ("content-length", "6"), data=(b"hello",)),
           Reset()),
    Vector("h2 content-length non-decimal", h2(("content-length", "0x5"), data=(b"hello",)), Reset()),
    Vector("h2 content-length negative", h2(("content-length", "-1"), data=(b"hello",)), Reset()),
    Vector("h2 host differs from authority", h2(("host", "admin.local")), Reset()),
    Vector("h2 connection header", h2(("connection", "keep-alive")), Reset()),
    Vector("h2 transfer-encoding chunked", h2(("transfer-encoding", "chunked"), data=(b"0\r\n\r\n",)), Reset()),
    Vector("h2 keep-alive header", h2(("keep-alive", "timeout=5")), Reset()),
    Vector("h2 proxy-connection header", h2(("proxy-connection", "keep-alive")), Reset()),
    Vector("h2 upgrade header", h2(("upgrade", "websocket")), Reset()),
    Vector("h2 te gzip", h2(("te", "gzip")), Reset()),
    Vector("h2 upper-case name", h2(("X-Upper", "1")), Reset()),
    Vector("h2 crlf in value smuggles a header", h2(("x-a", "1\r\nTransfer-Encoding: chunked")), Reset()),
    Vector("h2 lf in value", h2(("x-a", "1\nx-b: 2")), Reset()),
    Vector("h2 nul in value", h2(("x-a", "1\x00")), Reset()),
    Vector("h2 colon in name", h2(("x:a", "1")), Reset()),
    Vector("h2 space in name", h2(("x a", "1")), Reset()),
    Vector("h2 crlf in path smuggles a request", H2(((":method", "GET"), (":scheme", "http"),
                                                     (":path", "/ HTTP/1.1\r\nHost: b\r\n\r\nGET /x"),
                                                     (":authority", "a"))), Reset()),
    Vector("h2 space in path", H2(((":method", "GET"), (":scheme", "http"), (":path", "/a b"), (":authority", "a"))),
           Reset()),
    Vector("h2 space in method", H2(((":method", "GET /x"), (":scheme", "http"), (":path", "/"), (":authority", "a"))),
           Reset()),
    Vector("h2 missing method", H2(((":scheme", "http"), (":path", "/"), (":authority", "a"))), Reset()),
    Vector("h2 missing path", H2(((":method", "GET"), (":scheme", "http"), (":authority", "a"))), Reset()),
    Vector("h2 missing scheme", H2(((":method", "GET"), (":path", "/"), (":authority", "a"))), Reset()),
    Vector("h2 empty path", H2(((":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "a"))), Reset()),
    Vector("h2 relative path", H2(((":method", "GET"), (":scheme", "http"), (":path", "x"), (":authority", "a"))),
           Reset()),
    Vector("h2 absolute path", H2(((":method", "GET"), (":scheme", "http"), (":path", "http://b/x"),
                                   (":authority", "a"))), Reset()),
    Vector("h2 asterisk on get", H2(((":method", "GET"), (":scheme", "http"), (":path", "*"), (":authority", "a"))),
           Reset()),
    Vector("h2 duplicate path", h2((":path", "/admin"),), Reset()),
    Vector("h2 duplicate authority", h2((":authority", "admin.local"),), Reset()),
    Vector("h2 unknown pseudo-header", h2((":foo", "bar"),), Reset()),
    Vector("h2 pseudo-header after a field", H2(((":method", "GET"), (":scheme", "http"), ("x-a", "1"),
                                                 (":path", "/"), (":authority", "a"))), Reset()),
    Vector("h2 response pseudo-header in a request", h2((":status", "200"),), Reset()),
    Vector("h2 connect", H2(((":method", "CONNECT"), (":authority", "a:443"))), Reset((405,))),
    Vector("h2 pseudo-header in trailers", h2(data=(b"hello",), trailers=((":path", "/admin"),)), Reset()),
    Vector("h2 authority with userinfo", H2(((":method", "GET"), (":scheme", "http"), (":path", "/"),
                                             (":authority", "u@a"))), Reset()),
]



def h2_pseudo(**pseudo: str) -> H2:
    """A request whose pseudo-headers are the defaults (GET, http, /, a) with ``pseudo`` replaced (``_`` for ``:``)."""
    fields = {":method": "GET", ":scheme": "http", ":path": "/", ":authority": "a"}
    fields.update({":" + k: v for k, v in pseudo.items()})
    return H2(tuple(fields.items()))


# issue 25's HTTP/2 → HTTP/1.1 families, more of each: content-length against DATA, connection-specific fields
# (in the head and in trailers), TE other than trailers, :authority against Host, CR/LF/NUL and controls in every
# place a field can be, pseudo-header errors. RFC 9113 §8.1.1, §8.2.1-2, §8.3.1; SPEC §9.1.
H2_MORE_VECTORS = [
    Vector("h2 content-length short over frames", h2(("content-length", "10"), data=(b"hel", b"lo")), Reset()),
    Vector("h2 content-length long over frames", h2(("content-length", "3"), data=(b"he", b"llo")), Reset()),
    Vector("h2 content-length with no data", h2(("content-length", "5")), Reset()),
    Vector("h2 content-length zero with data", h2(("content-length", "0"), data=(b"x",)), Reset()),
    Vector("h2 content-length plus sign", h2(("content-length", "+5"), data=(b"hello",)), Reset()),
    Vector("h2 content-length overflow", h2(("content-length", "99999999999999999999"), data=(b"hello",)), Reset()),
    Vector("h2 content-length space inside", h2(("content-length", "5 5"), data=(b"hello",)), Reset()),
    # HTTP/1.1 merges an identical list ("cl identical list merged"); over HTTP/2 the field is one number
    Vector("h2 content-length list of one value", h2(("content-length", "5, 5"), data=(b"hello",)), Reset()),
    Vector("h2 content-length leading zeros", h2(("content-length", "005"), data=(b"hello",)),
           Forward("POST", "/", b"hello", headers=(("host", "a"),))),
    Vector("h2 content-length in trailers", h2(data=(b"hello",), trailers=(("content-length", "999"),)),
           Forward("POST", "/", b"hello", chunked=True, headers=(("host", "a"),))),
    Vector("h2 transfer-encoding in trailers", h2(data=(b"hello",), trailers=(("transfer-encoding", "chunked"),)),
           Reset()),
    Vector("h2 connection in trailers", h2(data=(b"hello",), trailers=(("connection", "close"),)), Reset()),
    Vector("h2 connection close", h2(("connection", "close")), Reset()),
    Vector("h2 connection naming a field", h2(("connection", "x-a"), ("x-a", "1")), Reset()),
    Vector("h2 transfer-encoding identity", h2(("transfer-encoding", "identity")), Reset()),
    Vector("h2 transfer-encoding with content-length", h2(("content-length", "5"), ("transfer-encoding", "chunked"),
                                                          data=(b"hello",)), Reset()),
    Vector("h2 upgrade h2c", h2(("upgrade", "h2c")), Reset()),
    Vector("h2 keep-alive empty", h2(("keep-alive", "")), Reset()),
    Vector("h2 te trailers and gzip", h2(("te", "trailers, gzip")), Reset()),
    Vector("h2 te chunked", h2(("te", "chunked")), Reset()),
    Vector("h2 te empty", h2(("te", "")), Reset()),
    Vector("h2 host differs by port", h2(("host", "a:80")), Reset()),
    Vector("h2 two host fields", h2(("host", "a"), ("host", "b")), Reset()),
    Vector("h2 host with crlf", h2(("host", "a\r\nx-injected: 1")), Reset()),
    Vector("h2 invalid host without authority", H2(((":method", "GET"), (":scheme", "http"),
                                                                 (":path", "/"), ("host", "a b"))), Reset()),
    Vector("h2 authority with a path", h2_pseudo(authority="a/x"), Reset()),
    Vector("h2 authority with a space", h2_pseudo(authority="a b"), Reset()),
    Vector("h2 crlf in authority", h2_pseudo(authority="a\r\nx-injected: 1"), Reset()),
    Vector("h2 cr in value", h2(("x-a", "1\rx-b: 2")), Reset()),
    Vector("h2 nul in name", h2(("x-a\x00", "1")), Reset()),
    Vector("h2 lf in name", h2(("x\na", "1")), Reset()),
    Vector("h2 crlf in cookie", h2(("cookie", "a=1\r\nx-injected: 1")), Reset()),
    Vector("h2 crlf in trailer value", h2(data=(b"hello",), trailers=(("x-t", "1\r\nx-b: 2"),)), Reset()),
    Vector("h2 nul in trailer value", h2(data=(b"hello",), trailers=(("x-t", "1\x00"),)), Reset()),
    Vector("h2 control character in value", h2(("x-a", "1\x01")), Reset()),
    Vector("h2 del in value", h2(("x-a", "1\x7f")), Reset()),
    Vector("h2 leading space in value", h2(("x-a", " 1")), Reset()),
    Vector("h2 tab inside a value", h2(("x-a", "1\t2")),
           Forward("GET", "/", headers=(("host", "a"), ("x-a", "1\t2")))),
    Vector("h2 crlf in method", h2_pseudo(method="GET\r\nx: y"), Reset()),
    Vector("h2 nul in path", h2_pseudo(path="/a\x00"), Reset()),
    Vector("h2 lf in path", h2_pseudo(path="/a\nb"), Reset()),
    Vector("h2 empty method", h2_pseudo(method=""), Reset()),
    Vector("h2 duplicate method", h2((":method", "POST"),), Reset()),
    Vector("h2 duplicate scheme", h2((":scheme", "https"),), Reset()),
    Vector("h2 empty pseudo-header name", h2((":", "x"),), Reset()),
    Vector("h2 pseudo-header between fields", h2(("x-a", "1"), (":scheme", "http")), Reset()),
]

# --- a hostile backend: response splitting and framing tricks ------------------------------------------------------
OK2 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhacked"
BAD_GATEWAY = 502

RESPONSE_VECTORS = [
    Vector("response extra response after the body", Hostile(OK2 + SMUGGLED, 200, b"ok")),
    Vector("response extra bytes after chunked end", Hostile(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                             b"2\r\nok\r\n0\r\n\r\n" + SMUGGLED, 200, b"ok")),
    # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; the connection is not reused after
    Vector("response cl and te", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n"
                                         b"2\r\nok\r\n0\r\n\r\n" + SMUGGLED, 200, b"ok")),
    Vector("response differing content-lengths", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                                                         b"Content-Length: 40\r\n\r\nok" + SMUGGLED, BAD_GATEWAY)),
    Vector("response negative content-length", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
                                                       BAD_GATEWAY)),
    Vector("response content-length plus", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", BAD_GATEWAY)),
    # RFC 9112 §6.3: a final coding other than chunked makes the body close-delimited: all of it is one body
    Vector("response te identity", Hostile(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok" + SMUGGLED,
                                           200, b"ok" + SMUGGLED, close=True)),
    Vector("response te xchunked", Hostile(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\nok", 200, b"ok",
                                           close=True)),
    Vector("response bare lf", Hostile(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", BAD_GATEWAY)),
    Vector("response bare cr in a header", Hostile(b"HTTP/1.1 200 OK\r\nX: a\rContent-Length: 0\r\n"
                                                   b"Content-Length: 2\r\n\r\nok", BAD_GATEWAY)),
    Vector("response obs-fold", Hostile(b"HTTP/1.1 200 OK\r\nX: a\r\n Content-Length: 0\r\nContent-Length: 2\r\n\r\nok",
                                        BAD_GATEWAY)),
    Vector("response nul in a header", Hostile(b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 2\r\n\r\nok",
                                               BAD_GATEWAY)),
    Vector("response space before colon", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length : 40\r\nContent-Length: 2\r\n"
                                                  b"\r\nok", BAD_GATEWAY)),
    Vector("response four-digit status", Hostile(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", BAD_GATEWAY)),
    Vector("response http/0.9 body", Hostile(b"hacked\r\n\r\n", BAD_GATEWAY, close=True)),
    Vector("response 101 to a plain request", Hostile(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                                      b"Connection: Upgrade\r\n\r\n" + SMUGGLED, BAD_GATEWAY)),
    Vector("response bad chunk size after the head", Hostile(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                             b"2\r\nok\r\nzz\r\n" + SMUGGLED, 200, truncated=True)),
    Vector("response chunk size overflow", Hostile(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                   b"10000000000000002\r\nok\r\n0\r\n\r\n", 200, truncated=True)),
    Vector("response 204 with a body", Hostile(b"HTTP/1.1 204 No Content\r\nContent-Length: 6\r\n\r\nhacked", 204)),
    Vector("response 304 with a body", Hostile(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 6\r\n\r\nhacked", 304)),
    Vector("response to head with a body", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhacked" + OK2, 200,
                                                   method="HEAD")),
    Vector("response 100 continue then final", Hostile(b"HTTP/1.1 100 Continue\r\n\r\n" + OK2, 200, b"ok")),
    Vector("response http/1.0 close-delimited", Hostile(b"HTTP/1.0 200 OK\r\n\r\nall of it", 200, b"all of it",
                                                        close=True)),
    Vector("response connection-named header stripped", Hostile(b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\n"
                                                                b"X-Internal: secret\r\nContent-Length: 2\r\n\r\nok",
                                                                200, b"ok", absent=("x-internal", "connection"))),
    Vector("response short of content-length", Hostile(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", 200,
                                                       truncated=True, close=True)),
]

VECTORS: list[Vector] = [
    *CLTE_VECTORS, *TE_VECTORS, *CL_VECTORS, *CHUNK_VECTORS, *LINE_VECTORS, *HEAD_VECTORS, *HOST_VECTORS,
    *HOP_VECTORS, *UPGRADE_VECTORS, *PIPELINE_VECTORS, *H2_VECTORS, *H2_MORE_VECTORS, *RESPONSE_VECTORS,
]
