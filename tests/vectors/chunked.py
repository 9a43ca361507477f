"""Chunked-body vectors for both ``ChunkedDecoder`` implementations (SPEC §5.5, RFC 9112 §7.1).

Each vector is a complete chunked body (last chunk and trailer section included) and either the payload and
trailers it decodes to — the decoder is then done having consumed exactly ``raw`` — or the ``(status, message)``
of the ``ProtocolError`` it must raise. Error vectors may stop right after the violation.
"""

from __future__ import annotations

from typing import NamedTuple


class Chunked(NamedTuple):
    name: str
    raw: bytes
    expect: tuple[bytes, list[tuple[bytes, bytes]]] | tuple[int, str]
    max_trailer_bytes: int | None = None


BAD_CHUNK = (400, "Bad request: invalid chunked encoding")

VALID: list[Chunked] = [
    Chunked("one chunk", b"5\r\nhello\r\n0\r\n\r\n", (b"hello", [])),
    Chunked("empty body", b"0\r\n\r\n", (b"", [])),
    Chunked("several chunks, hex sizes", b"3\r\nabc\r\na\r\n0123456789\r\nA\r\nABCDEFGHIJ\r\n0\r\n\r\n",
            (b"abc0123456789ABCDEFGHIJ", [])),
    Chunked("data holding crlf and digits", b"7\r\n\r\n0\r\n\r\n\r\n0\r\n\r\n", (b"\r\n0\r\n\r\n", [])),
    Chunked("sixteen hex digits", b"0000000000000003\r\nxyz\r\n0000000000000000\r\n\r\n", (b"xyz", [])),
    Chunked("extension token", b"3;name=value\r\nabc\r\n0;last\r\n\r\n", (b"abc", [])),
    Chunked("extension quoted", b'3;a="q \\" \\\\ ;=,"\r\nabc\r\n0\r\n\r\n', (b"abc", [])),
    Chunked("extensions with bws", b"3 ; a = b\t;c\r\nabc\r\n0\r\n\r\n", (b"abc", [])),
    Chunked("extension obs-text in quotes", b'1;a="\xff"\r\nz\r\n0\r\n\r\n', (b"z", [])),
    Chunked("trailers", b"2\r\nhi\r\n0\r\nX-Checksum: abc\r\nGrpc-Status:\t0 \r\n\r\n",
            (b"hi", [(b"X-Checksum", b"abc"), (b"Grpc-Status", b"0")])),
    Chunked("empty trailer value", b"0\r\nX-Empty:\r\n\r\n", (b"", [(b"X-Empty", b"")])),
    Chunked("trailers exactly at the limit", b"0\r\nA: 1\r\n\r\n", (b"", [(b"A", b"1")]), 8),
    Chunked("no trailers at the smallest limit", b"0\r\n\r\n", (b"", []), 2),
    Chunked("binary payload", b"4\r\n\x00\xff\r\n\r\n0\r\n\r\n", (b"\x00\xff\r\n", [])),
]

INVALID: list[Chunked] = [
    Chunked("non-hex size", b"g\r\n", BAD_CHUNK),
    Chunked("hex prefix", b"0x5\r\nhello\r\n0\r\n\r\n", BAD_CHUNK),
    Chunked("negative size", b"-5\r\n", BAD_CHUNK),
    Chunked("plus sign", b"+5\r\n", BAD_CHUNK),
    Chunked("empty size line", b"\r\n", BAD_CHUNK),
    Chunked("seventeen hex digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n", BAD_CHUNK),
    Chunked("seventeen hex digits, large", b"10000000000000000\r\n", BAD_CHUNK),
    Chunked("size above 2^63-1", b"8000000000000000\r\n", BAD_CHUNK),
    Chunked("size all ones", b"FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", BAD_CHUNK),
    Chunked("size all ones, extension", b"ffffffffffffffff;a=b\r\n", BAD_CHUNK),
    Chunked("space before size", b" 5\r\nhello\r\n", BAD_CHUNK),
    Chunked("space after size", b"5 \r\nhello\r\n", BAD_CHUNK),
    Chunked("bare lf after size", b"5\nhello\r\n", BAD_CHUNK),
    Chunked("bare cr after size", b"5\rhello\r\n", BAD_CHUNK),
    Chunked("nul in size line", b"5\x00\r\n", BAD_CHUNK),
    Chunked("missing crlf after data", b"5\r\nhelloX\r\n0\r\n\r\n", BAD_CHUNK),
    Chunked("lf only after data", b"5\r\nhello\n0\r\n\r\n", BAD_CHUNK),
    Chunked("cr only after data", b"5\r\nhello\rx", BAD_CHUNK),
    Chunked("data longer than size", b"3\r\nabcd\r\n", BAD_CHUNK),
    Chunked("empty extension", b"3;\r\nabc\r\n", BAD_CHUNK),
    Chunked("extension without name", b"3;=x\r\nabc\r\n", BAD_CHUNK),
    Chunked("extension without value", b"3;a=\r\nabc\r\n", BAD_CHUNK),
    Chunked("extension unterminated quote", b'3;a="x\r\nabc\r\n', BAD_CHUNK),
    Chunked("extension text after quote", b'3;a="x"y\r\nabc\r\n', BAD_CHUNK),
    Chunked("extension non-token name", b"3;a(b)\r\nabc\r\n", BAD_CHUNK),
    Chunked("extension space in name", b"3;a b\r\nabc\r\n", BAD_CHUNK),
    Chunked("extension separator missing", b"3;a=b c=d\r\nabc\r\n", BAD_CHUNK),
    Chunked("extension trailing whitespace", b"3;a=b \r\nabc\r\n", BAD_CHUNK),
    Chunked("size line too long", b"1;x=" + b"a" * 5000 + b"\r\nz\r\n0\r\n\r\n", BAD_CHUNK),
    Chunked("size line too long, incomplete", b"1" + b"0" * 4200, BAD_CHUNK),
    Chunked("trailer space before colon", b"0\r\nX-A : 1\r\n\r\n", BAD_CHUNK),
    Chunked("trailer without colon", b"0\r\nX-A\r\n\r\n", BAD_CHUNK),
    Chunked("trailer obs-fold", b"0\r\nX-A: 1\r\n 2\r\n\r\n", BAD_CHUNK),
    Chunked("trailer bare lf", b"0\r\nX-A: 1\n\r\n", BAD_CHUNK),
    Chunked("trailer section ends with bare lf", b"0\r\n\n", BAD_CHUNK),
    Chunked("trailer section ends with bare cr", b"0\r\n\rX", BAD_CHUNK),
    Chunked("trailer control character", b"0\r\nX-A: \x07\r\n\r\n", BAD_CHUNK),
    Chunked("trailers over the limit", b"0\r\nA: 12\r\n\r\n", BAD_CHUNK, 8),
    Chunked("trailers over the limit, incomplete", b"0\r\nX-Long: " + b"v" * 20, BAD_CHUNK, 16),
    Chunked("no trailer section allowed", b"0\r\n\r\n", BAD_CHUNK, 1),
]
