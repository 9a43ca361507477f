"""Request-head vectors for both HTTP/1 parser implementations (SPEC §5.5, RFC 9112).

Each vector is a raw request head and either the fields it must parse to (a subset of ``RequestHead``; ``head_len``
defaults to ``len(raw)``) or the ``(status, message)`` of the ``ProtocolError`` it must raise. Error vectors may be
incomplete heads: the violation must be reported from the bytes given.
"""

from __future__ import annotations

from typing import NamedTuple


class Req(NamedTuple):
    name: str
    raw: bytes
    expect: dict[str, object] | tuple[int, str]
    limits: dict[str, int] | None = None  # keyword arguments of parse_request


URI_TOO_LONG = (414, "Request line too long")
BAD_LINE = (400, "Bad request: malformed request line")
BAD_TARGET = (400, "Bad request: invalid request target")
NOT_ALLOWED = (405, "Method not allowed")
BAD_VERSION = (505, "HTTP version not supported")
TOO_LARGE = (431, "Request header fields too large")
BAD_FIELD = (400, "Bad request: invalid header field")
OBS_FOLD = (400, "Bad request: obsolete line folding")
BAD_CHARS = (400, "Bad request: invalid characters")
BAD_HOST = (400, "Bad request: invalid Host header")
CL_AND_TE = (400, "Bad request: both Content-Length and Transfer-Encoding")
BAD_CL = (400, "Bad request: invalid Content-Length")
BAD_TE = (400, "Bad request: invalid Transfer-Encoding")
TE_NOT_IMPLEMENTED = (501, "Transfer coding not implemented")

BROWSER_GET = (
    b"GET /v1/models?limit=10&q=a%20b HTTP/1.1\r\n"
    b"Host: api.example.com:8443\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef; theme=dark\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"\r\n"
)

VALID: list[Req] = [
    Req("minimal", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", {
        "method": b"GET", "target": b"/", "path": b"/", "query": None, "authority": b"", "version": 1,
        "headers": [(b"Host", b"a")], "header_ids": b"\x01", "host": b"a", "content_length": -1, "chunked": False,
        "keep_alive": True, "expect_continue": False, "upgrade": False, "te_trailers": False,
        "connection_tokens": ()}),
    Req("browser get, raw case kept", BROWSER_GET, {
        "method": b"GET", "path": b"/v1/models", "query": b"limit=10&q=a%20b", "host": b"api.example.com:8443",
        "header_ids": b"\x01\x14\x00\x00\x00\x04\x00\x00", "keep_alive": True,
        "headers": [
            (b"Host", b"api.example.com:8443"),
            (b"User-Agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
            (b"Accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            (b"Accept-Language", b"en-US,en;q=0.5"), (b"Accept-Encoding", b"gzip, deflate, br, zstd"),
            (b"Connection", b"keep-alive"), (b"Cookie", b"session=0123456789abcdef; theme=dark"),
            (b"Upgrade-Insecure-Requests", b"1")]}),
    Req("post with content-length", b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 42\r\n\r\n",
        {"method": b"POST", "content_length": 42, "chunked": False, "header_ids": b"\x01\x02"}),
    Req("content-length zero", b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", {"content_length": 0}),
    Req("content-length list merged", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5,5\r\n\r\n",
        {"content_length": 5}),
    Req("content-length repeated lines merged",
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n", {"content_length": 7}),
    Req("content-length leading zeros", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 007, 7\r\n\r\n",
        {"content_length": 7}),
    Req("content-length 18 digits", b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 999999999999999999\r\n\r\n",
        {"content_length": 999999999999999999}),
    Req("chunked", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        {"chunked": True, "content_length": -1, "header_ids": b"\x01\x03"}),
    Req("chunked any case with OWS", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\t Chunked \r\n\r\n",
        {"chunked": True, "headers": [(b"Host", b"a"), (b"Transfer-Encoding", b"Chunked")]}),
    Req("chunked with empty list elements", b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked,\r\n\r\n",
        {"chunked": True}),
    Req("http/1.0 without host", b"GET /old HTTP/1.0\r\n\r\n",
        {"version": 0, "host": b"", "keep_alive": False, "headers": [], "header_ids": b""}),
    Req("http/1.0 keep-alive", b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", {"keep_alive": True}),
    Req("http/1.0 with host", b"GET / HTTP/1.0\r\nHost: h\r\n\r\n", {"host": b"h", "keep_alive": False}),
    Req("connection close", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", {"keep_alive": False}),
    Req("connection close wins over keep-alive", b"GET / HTTP/1.0\r\nConnection: keep-alive, CLOSE\r\n\r\n",
        {"keep_alive": False}),
    Req("connection tokens and upgrade",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Custom, Upgrade\r\nConnection: ,x-other\r\n"
        b"Upgrade: websocket\r\n\r\n",
        {"upgrade": True, "keep_alive": True, "connection_tokens": (b"x-custom", b"x-other")}),
    Req("connection upgrade without upgrade header", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
        {"upgrade": False, "connection_tokens": ()}),
    Req("upgrade header without connection upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n",
        {"upgrade": False}),
    Req("absolute-form", b"GET http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: other\r\n\r\n", {
        "target": b"http://Example.com:8080/a/b?c=d", "path": b"/a/b", "query": b"c=d",
        "authority": b"Example.com:8080", "host": b"Example.com:8080"}),
    Req("absolute-form https without path", b"GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
        {"path": b"/", "query": None, "authority": b"example.com", "host": b"example.com"}),
    Req("absolute-form scheme case, query only", b"GET HTTP://h?q=1 HTTP/1.1\r\nHost: h\r\n\r\n",
        {"path": b"/", "query": b"q=1", "authority": b"h"}),
    Req("absolute-form ipv6", b"GET http://[::1]:80/x HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        {"authority": b"[::1]:80", "path": b"/x"}),
    Req("options asterisk", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", {"path": b"*", "query": None, "target": b"*"}),
    Req("leading empty lines skipped", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", {"head_len": 31}),
    Req("empty host value", b"GET / HTTP/1.1\r\nHost:\r\n\r\n", {"host": b""}),
    Req("host ipv4 and port", b"GET / HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n", {"host": b"10.0.0.1:8080"}),
    Req("host ipv6", b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n", {"host": b"[2001:db8::1]:443"}),
    Req("host reg-name characters", b"GET / HTTP/1.1\r\nHost: a-b.c_d~e!$&'()*+,;=%41:\r\n\r\n",
        {"host": b"a-b.c_d~e!$&'()*+,;=%41:"}),
    Req("expect 100-continue", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        {"expect_continue": True, "content_length": 1}),
    Req("expect other", b"POST / HTTP/1.1\r\nHost: a\r\nExpect: foo\r\n\r\n", {"expect_continue": False}),
    Req("te trailers", b"GET / HTTP/1.1\r\nHost: a\r\nTE: deflate;q=0.5, Trailers\r\n\r\n", {"te_trailers": True}),
    Req("empty query", b"GET /p? HTTP/1.1\r\nHost: a\r\n\r\n", {"path": b"/p", "query": b""}),
    Req("query with second question mark", b"GET /p?a?b HTTP/1.1\r\nHost: a\r\n\r\n",
        {"path": b"/p", "query": b"a?b"}),
    Req("double slash path", b"GET //x/../y HTTP/1.1\r\nHost: a\r\n\r\n", {"path": b"//x/../y"}),
    Req("percent-encoding and sub-delims", b"GET /a%2Fb%7e/!$&'()*+,;=:@-._~\"|{} HTTP/1.1\r\nHost: a\r\n\r\n",
        {"path": b"/a%2Fb%7e/!$&'()*+,;=:@-._~\"|{}"}),
    Req("value OWS stripped, inner kept", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: \t a \t b \t\r\n\r\n",
        {"headers": [(b"Host", b"a"), (b"X-A", b"a \t b")]}),
    Req("obs-text value", b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9\xff\r\n\r\n",
        {"headers": [(b"Host", b"a"), (b"X-Name", b"caf\xc3\xa9\xff")]}),
    Req("empty values", b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Blank: \t \r\n\r\n",
        {"headers": [(b"Host", b"a"), (b"X-Empty", b""), (b"X-Blank", b"")]}),
    Req("colon in value", b"GET / HTTP/1.1\r\nHost: a\r\nX-T: a:b: c\r\n\r\n",
        {"headers": [(b"Host", b"a"), (b"X-T", b"a:b: c")]}),
    Req("token method", b"M-SEARCH /x HTTP/1.1\r\nHost: a\r\n\r\n", {"method": b"M-SEARCH"}),
    Req("lower-case connect is another method", b"connect /x HTTP/1.1\r\nHost: a\r\n\r\n", {"method": b"connect"}),
    Req("tchar header names", b"GET / HTTP/1.1\r\nHost: a\r\n!#$%&'*+-.^_`|~09az: v\r\n\r\n",
        {"headers": [(b"Host", b"a"), (b"!#$%&'*+-.^_`|~09az", b"v")]}),
    Req("hop-by-hop ids", b"GET / HTTP/1.1\r\nHOST: a\r\nkeep-alive: 5\r\nProxy-Connection: x\r\n"
        b"Proxy-Authorization: y\r\nTrailer: z\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: r\r\n\r\n",
        {"header_ids": bytes([1, 5, 6, 8, 10, 13, 18])}),
    Req("request line exactly max_line", b"GET /abcdef HTTP/1.1\r\nHost: a\r\n\r\n", {"path": b"/abcdef"},
        {"max_line": 20}),
    Req("header section exactly max_header_bytes", b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n",
        {"headers": [(b"Host", b"a"), (b"X", b"1")]}, {"max_header_bytes": 17}),
    Req("exactly max_headers", b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
        {"header_ids": b"\x01\x00\x00"}, {"max_headers": 3}),
]

# A CONNECT request is rejected before its target is looked at.
INVALID: list[Req] = [
    # 414
    Req("request line too long", b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: a\r\n\r\n", URI_TOO_LONG,
        {"max_line": 64}),
    Req("request line too long, incomplete", b"GET /" + b"a" * 70, URI_TOO_LONG, {"max_line": 64}),
    Req("request line one byte over", b"GET /abcdefg HTTP/1.1\r\nHost: a\r\n\r\n", URI_TOO_LONG, {"max_line": 20}),
    Req("leading empty lines count towards the line", b"\r\n\r\nGET /abcdef HTTP/1.1\r\nHost: a\r\n\r\n",
        URI_TOO_LONG, {"max_line": 20}),
    Req("default limit 8192", b"GET /" + b"a" * 8200, URI_TOO_LONG),
    # 400 malformed request line
    Req("two spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", BAD_LINE),
    Req("trailing space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", BAD_LINE),
    Req("leading space", b" GET / HTTP/1.1\r\n", BAD_LINE),
    Req("missing version", b"GET /\r\nHost: a\r\n\r\n", BAD_LINE),
    Req("missing target", b"GET HTTP/1.1\r\n", BAD_LINE),
    Req("non-token method", b"G(T / HTTP/1.1\r\n", BAD_LINE),
    Req("non-ascii method", b"G\xc3\x89T / HTTP/1.1\r\n", BAD_LINE),
    Req("lower-case protocol name", b"GET / http/1.1\r\n", BAD_LINE),
    Req("version without minor", b"GET / HTTP/1\r\n", BAD_LINE),
    Req("two-digit version", b"GET / HTTP/11.1\r\n", BAD_LINE),
    Req("space in target", b"GET /a b HTTP/1.1\r\n", BAD_LINE),
    Req("empty line only then garbage", b"\r\nfoo\r\n", BAD_LINE),
    # 400 invalid request target
    Req("authority-form without connect", b"GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
    Req("asterisk without options", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
    Req("non-ascii target", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", BAD_TARGET),
    Req("percent without digits", b"GET /a%zz HTTP/1.1\r\n", BAD_TARGET),
    Req("percent at end", b"GET /a%2 HTTP/1.1\r\n", BAD_TARGET),
    Req("fragment", b"GET /a#b HTTP/1.1\r\n", BAD_TARGET),
    Req("other scheme", b"GET ftp://h/x HTTP/1.1\r\n", BAD_TARGET),
    Req("empty authority", b"GET http:///x HTTP/1.1\r\n", BAD_TARGET),
    Req("userinfo", b"GET http://user@h/x HTTP/1.1\r\n", BAD_TARGET),
    Req("bad port", b"GET http://h:8o/x HTTP/1.1\r\n", BAD_TARGET),
    Req("relative path", b"GET a/b HTTP/1.1\r\n", BAD_TARGET),
    Req("asterisk with query", b"OPTIONS *? HTTP/1.1\r\n", BAD_TARGET),
    # 405
    Req("connect", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", NOT_ALLOWED),
    Req("connect detected on the line", b"CONNECT a:1 HTTP/1.1\r\n", NOT_ALLOWED),
    # 505
    Req("http/2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", BAD_VERSION),
    Req("http/0.9", b"GET / HTTP/0.9\r\n", BAD_VERSION),
    Req("http/1.2", b"GET / HTTP/1.2\r\n", BAD_VERSION),
    Req("version before connect", b"CONNECT a:1 HTTP/3.0\r\n", BAD_VERSION),
    # 431
    Req("header section too large", b"GET / HTTP/1.1\r\nHost: a\r\nX: 12\r\n\r\n", TOO_LARGE,
        {"max_header_bytes": 17}),
    Req("header section too large, incomplete", b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 40, TOO_LARGE,
        {"max_header_bytes": 32}),
    Req("too many headers", b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", TOO_LARGE, {"max_headers": 2}),
    Req("too many headers, incomplete", b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB", TOO_LARGE, {"max_headers": 2}),
    Req("no header allowed", b"GET / HTTP/1.0\r\nA: 1\r\n\r\n", TOO_LARGE, {"max_headers": 0}),
    Req("default max_headers 100", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", TOO_LARGE),
    # 400 invalid header field
    Req("space before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", BAD_FIELD),
    Req("tab before colon", b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n", BAD_FIELD),
    Req("empty name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", BAD_FIELD),
    Req("no colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", BAD_FIELD),
    Req("non-token name", b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n", BAD_FIELD),
    Req("non-ascii name", b"GET / HTTP/1.1\r\nHost: a\r\nX\xc3\xa9: b\r\n\r\n", BAD_FIELD),
    Req("invalid field before the end of the head", b"GET / HTTP/1.1\r\nBad Name: x\r\n", BAD_FIELD),
    # 400 obsolete line folding
    Req("folded value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n", OBS_FOLD),
    Req("folded with tab", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", OBS_FOLD),
    Req("first field line indented", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", OBS_FOLD),
    # 400 invalid characters
    Req("bare lf ends the request line", b"GET / HTTP/1.1\nHost: a\n\n", BAD_CHARS),
    Req("bare lf first byte", b"\n", BAD_CHARS),
    Req("bare lf ends a field line", b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", BAD_CHARS),
    Req("bare lf ends the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", BAD_CHARS),
    Req("bare cr in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", BAD_CHARS),
    Req("bare cr ends the head", b"GET / HTTP/1.1\r\nHost: a\r\n\rX", BAD_CHARS),
    Req("cr cr lf", b"GET / HTTP/1.1\r\r\n", BAD_CHARS),
    Req("nul in request line", b"G\x00", BAD_CHARS),
    Req("nul in target", b"GET /a\x00b HTTP/1.1\r\n", BAD_CHARS),
    Req("tab in request line", b"GET\t/ HTTP/1.1\r\n", BAD_CHARS),
    Req("nul in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", BAD_CHARS),
    Req("del in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", BAD_CHARS),
    Req("control in name", b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: b\r\n\r\n", BAD_CHARS),
    Req("escape in value, head incomplete", b"GET / HTTP/1.1\r\nX: \x1b[31m", BAD_CHARS),
    Req("bare cr in leading empty lines", b"\r\r\nGET / HTTP/1.1\r\n", BAD_CHARS),
    Req("vertical tab in value", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x0bb\r\n\r\n", BAD_CHARS),
    Req("control wins over a later limit", b"GET / HTTP/1.1\r\nX: \x01" + b"a" * 64, BAD_CHARS,
        {"max_header_bytes": 16}),
    # 400 invalid Host header
    Req("missing host", b"GET / HTTP/1.1\r\nX: a\r\n\r\n", BAD_HOST),
    Req("absolute-form still needs host", b"GET http://h/ HTTP/1.1\r\n\r\n", BAD_HOST),
    Req("two host lines", b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", BAD_HOST),
    Req("two host lines in http/1.0", b"GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", BAD_HOST),
    Req("host list", b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", BAD_HOST),
    Req("host with space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", BAD_HOST),
    Req("host with userinfo", b"GET / HTTP/1.1\r\nHost: u@h\r\n\r\n", BAD_HOST),
    Req("host with path", b"GET / HTTP/1.1\r\nHost: h/x\r\n\r\n", BAD_HOST),
    Req("host port not numeric", b"GET / HTTP/1.1\r\nHost: h:x\r\n\r\n", BAD_HOST),
    Req("host port without host", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", BAD_HOST),
    Req("host unclosed ipv6", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", BAD_HOST),
    Req("host ipv6 without colon", b"GET / HTTP/1.1\r\nHost: [abc]\r\n\r\n", BAD_HOST),
    Req("host bad percent", b"GET / HTTP/1.1\r\nHost: a%g1\r\n\r\n", BAD_HOST),
    Req("host non-ascii", b"GET / HTTP/1.1\r\nHost: b\xc3\xbccher.de\r\n\r\n", BAD_HOST),
    Req("host checked before framing", b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", BAD_HOST),
    # 400 both Content-Length and Transfer-Encoding
    Req("cl and te", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        CL_AND_TE),
    Req("te and cl", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        CL_AND_TE),
    Req("cl and te, both invalid", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\nTransfer-Encoding: y\r\n\r\n",
        CL_AND_TE),
    Req("cl and te in http/1.0", b"POST / HTTP/1.0\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        CL_AND_TE),
    # 400 invalid Content-Length
    Req("cl not decimal", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", BAD_CL),
    Req("cl hex", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", BAD_CL),
    Req("cl negative", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BAD_CL),
    Req("cl plus sign", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", BAD_CL),
    Req("cl empty", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", BAD_CL),
    Req("cl differing list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", BAD_CL),
    Req("cl differing lines", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", BAD_CL),
    Req("cl empty element", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5,\r\n\r\n", BAD_CL),
    Req("cl space inside", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", BAD_CL),
    Req("cl 19 digits", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000000000000\r\n\r\n", BAD_CL),
    # 400 invalid Transfer-Encoding
    Req("te final not chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_TE),
    Req("te chunked then gzip", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", BAD_TE),
    Req("te chunked then gzip across lines",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n", BAD_TE),
    Req("te chunked twice", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", BAD_TE),
    Req("te chunked twice after gzip",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked, chunked\r\n\r\n", BAD_TE),
    Req("te empty", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", BAD_TE),
    Req("te with parameters", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", BAD_TE),
    Req("te in http/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BAD_TE),
    Req("te unknown coding only", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", BAD_TE),
    # 501
    Req("gzip before chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        TE_NOT_IMPLEMENTED),
    Req("coding before chunked across lines",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n",
        TE_NOT_IMPLEMENTED),
]
