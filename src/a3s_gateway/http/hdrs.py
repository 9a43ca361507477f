"""Header identifiers shared by both HTTP/1 parser implementations.

The parsers classify every header line by name (case-insensitively) into one of these small integers, so the
proxy never lower-cases header names on the request path. ``RequestHead.header_ids`` / ``ResponseHead.header_ids``
hold one id byte per header line, in order.
"""

from typing import Final

OTHER: Final = 0
HOST: Final = 1
CONTENT_LENGTH: Final = 2
TRANSFER_ENCODING: Final = 3
CONNECTION: Final = 4
KEEP_ALIVE: Final = 5
PROXY_CONNECTION: Final = 6
PROXY_AUTHENTICATE: Final = 7
PROXY_AUTHORIZATION: Final = 8
TE: Final = 9
TRAILER: Final = 10
UPGRADE: Final = 11
EXPECT: Final = 12
X_FORWARDED_FOR: Final = 13
X_FORWARDED_PROTO: Final = 14
X_FORWARDED_HOST: Final = 15
X_FORWARDED_PORT: Final = 16
X_REAL_IP: Final = 17
X_REQUEST_ID: Final = 18
CONTENT_TYPE: Final = 19
USER_AGENT: Final = 20
# tracing context (SPEC §11.4): W3C trace context, B3 single header, B3 multi header
TRACEPARENT: Final = 21
TRACESTATE: Final = 22
B3: Final = 23
X_B3_TRACEID: Final = 24
X_B3_SPANID: Final = 25
X_B3_PARENTSPANID: Final = 26
X_B3_SAMPLED: Final = 27
X_B3_FLAGS: Final = 28

#: lower-case name -> id, the single source of truth both parsers are tested against.
NAMES: Final[dict[bytes, int]] = {
    b"host": HOST,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"connection": CONNECTION,
    b"keep-alive": KEEP_ALIVE,
    b"proxy-connection": PROXY_CONNECTION,
    b"proxy-authenticate": PROXY_AUTHENTICATE,
    b"proxy-authorization": PROXY_AUTHORIZATION,
    b"te": TE,
    b"trailer": TRAILER,
    b"upgrade": UPGRADE,
    b"expect": EXPECT,
    b"x-forwarded-for": X_FORWARDED_FOR,
    b"x-forwarded-proto": X_FORWARDED_PROTO,
    b"x-forwarded-host": X_FORWARDED_HOST,
    b"x-forwarded-port": X_FORWARDED_PORT,
    b"x-real-ip": X_REAL_IP,
    b"x-request-id": X_REQUEST_ID,
    b"content-type": CONTENT_TYPE,
    b"user-agent": USER_AGENT,
    b"traceparent": TRACEPARENT,
    b"tracestate": TRACESTATE,
    b"b3": B3,
    b"x-b3-traceid": X_B3_TRACEID,
    b"x-b3-spanid": X_B3_SPANID,
    b"x-b3-parentspanid": X_B3_PARENTSPANID,
    b"x-b3-sampled": X_B3_SAMPLED,
    b"x-b3-flags": X_B3_FLAGS,
}

#: ids of hop-by-hop headers, removed in both directions (SPEC §5.3).
HOP_BY_HOP: Final[frozenset[int]] = frozenset(
    {CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
     TRANSFER_ENCODING, UPGRADE}
)
