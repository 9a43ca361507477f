# distutils: sources = csrc/http1.c
# distutils: include_dirs = csrc
# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Strict HTTP/1.x head parser and chunked decoder: thin Cython wrapper over ``csrc/http1.c``.

The C scanner does all the checking and the head semantics; this module only turns its offsets into Python
objects (one ``bytes`` per name and value, one tuple per header, the list) and its error codes into
:class:`~a3s_gateway.errors.ProtocolError`. Twin: ``_parser_py.py`` (same API and results; the tests run both).
Plain Cython (not pure-Python mode) because it wraps C structs.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy

from a3s_gateway.errors import ProtocolError


cdef extern from "http1.h" nogil:
    enum:
        H1_MAX_CHUNK_LINE
        H1_ERR_LINE_TOO_LONG
        H1_ERR_REQUEST_LINE
        H1_ERR_TARGET
        H1_ERR_CONNECT
        H1_ERR_VERSION
        H1_ERR_TOO_LARGE
        H1_ERR_FIELD
        H1_ERR_OBS_FOLD
        H1_ERR_CHAR
        H1_ERR_HOST
        H1_ERR_CL_AND_TE
        H1_ERR_CONTENT_LENGTH
        H1_ERR_TRANSFER_ENCODING
        H1_ERR_TE_NOT_IMPLEMENTED
        H1_ERR_CHUNK
        H1_HDR_CONNECTION
        H1_F_CHUNKED
        H1_F_KEEP_ALIVE
        H1_F_EXPECT_CONTINUE
        H1_F_UPGRADE
        H1_F_TE_TRAILERS
        H1_F_EVENT_STREAM
        H1_F_HAS_QUERY
        H1_F_ROOT_PATH
        H1_CONN_OTHER

    ctypedef struct h1_span:
        size_t off
        size_t len

    ctypedef struct h1_field:
        h1_span name
        h1_span value
        int id

    ctypedef struct h1_request:
        h1_span method
        h1_span target
        h1_span path
        h1_span query
        h1_span authority
        int minor_version
        int host_index
        unsigned flags
        int64_t content_length
        size_t num_fields
        size_t num_conn_tokens
        size_t head_len

    ctypedef struct h1_response:
        int status
        int minor_version
        h1_span reason
        unsigned flags
        int64_t content_length
        size_t num_fields
        size_t num_conn_tokens
        size_t head_len

    ptrdiff_t h1_parse_request(const char *buf, size_t len, size_t max_line, size_t max_header_bytes,
                               size_t max_headers, h1_request *req, h1_field *fields)
    ptrdiff_t h1_parse_response(const char *buf, size_t len, size_t max_header_bytes, size_t max_headers,
                                h1_response *resp, h1_field *fields)
    ptrdiff_t h1_parse_chunk_size(const char *buf, size_t len, uint64_t *size)
    ptrdiff_t h1_parse_field_line(const char *buf, size_t len, h1_field *field)
    int h1_list_next(const char *buf, size_t len, size_t *pos, h1_span *elem)
    int h1_connection_token(const char *tok, size_t len)


# Fields of a head live on the C stack up to this many lines (the SPEC default max_headers is 100).
cdef enum:
    STACK_FIELDS = 128

cdef dict REQUEST_ERRORS = {
    H1_ERR_LINE_TOO_LONG: (414, "Request line too long"),
    H1_ERR_REQUEST_LINE: (400, "Bad request: malformed request line"),
    H1_ERR_TARGET: (400, "Bad request: invalid request target"),
    H1_ERR_CONNECT: (405, "Method not allowed"),
    H1_ERR_VERSION: (505, "HTTP version not supported"),
    H1_ERR_TOO_LARGE: (431, "Request header fields too large"),
    H1_ERR_FIELD: (400, "Bad request: invalid header field"),
    H1_ERR_OBS_FOLD: (400, "Bad request: obsolete line folding"),
    H1_ERR_CHAR: (400, "Bad request: invalid characters"),
    H1_ERR_HOST: (400, "Bad request: invalid Host header"),
    H1_ERR_CL_AND_TE: (400, "Bad request: both Content-Length and Transfer-Encoding"),
    H1_ERR_CONTENT_LENGTH: (400, "Bad request: invalid Content-Length"),
    H1_ERR_TRANSFER_ENCODING: (400, "Bad request: invalid Transfer-Encoding"),
    H1_ERR_TE_NOT_IMPLEMENTED: (501, "Transfer coding not implemented"),
}
cdef str UPSTREAM_ERROR = "Upstream protocol error"
cdef str CHUNK_ERROR = "Bad request: invalid chunked encoding"

cdef bytes EMPTY = b""
cdef bytes ROOT = b"/"
cdef tuple NO_TOKENS = ()


cdef class RequestHead:
    """A parsed request head; the attributes are those of ``_parser_py.RequestHead``."""

    cdef readonly bytes method
    cdef readonly bytes target
    cdef readonly bytes path
    cdef readonly object query
    cdef readonly bytes authority
    cdef readonly int version
    cdef readonly list headers
    cdef readonly bytes header_ids
    cdef readonly bytes host
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bint expect_continue
    cdef readonly bint upgrade
    cdef readonly bint te_trailers
    cdef readonly tuple connection_tokens
    cdef readonly Py_ssize_t head_len

    def __init__(self, bytes method, bytes target, bytes path, query, bytes authority, int version, list headers,
                 bytes header_ids, bytes host, long long content_length, bint chunked, bint keep_alive,
                 bint expect_continue, bint upgrade, bint te_trailers, tuple connection_tokens, Py_ssize_t head_len):
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.authority = authority
        self.version = version
        self.headers = headers
        self.header_ids = header_ids
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.te_trailers = te_trailers
        self.connection_tokens = connection_tokens
        self.head_len = head_len

    def request_fields(self):
        """``(method, path, query, host, headers, body_length)`` in one call, for the middleware chain's Request
        (``body_length``: Content-Length, -1 chunked, 0 no body)."""
        cdef long long body_length = -1 if self.chunked else (self.content_length if self.content_length > 0 else 0)
        return (self.method, self.path, self.query, self.host, self.headers, body_length)

    def __repr__(self):
        return (f"RequestHead(method={self.method!r}, target={self.target!r}, version={self.version}, "
                f"headers={len(self.headers)}, content_length={self.content_length}, chunked={self.chunked}, "
                f"keep_alive={self.keep_alive}, head_len={self.head_len})")


cdef class ResponseHead:
    """A parsed response head; the attributes are those of ``_parser_py.ResponseHead``."""

    cdef readonly int status
    cdef readonly bytes reason
    cdef readonly int version
    cdef readonly list headers
    cdef readonly bytes header_ids
    cdef readonly long long content_length
    cdef readonly bint chunked
    cdef readonly bint keep_alive
    cdef readonly bint upgrade
    cdef readonly bint event_stream
    cdef readonly tuple connection_tokens
    cdef readonly Py_ssize_t head_len

    def __init__(self, int status, bytes reason, int version, list headers, bytes header_ids,
                 long long content_length, bint chunked, bint keep_alive, bint upgrade, bint event_stream,
                 tuple connection_tokens, Py_ssize_t head_len):
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers
        self.header_ids = header_ids
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.event_stream = event_stream
        self.connection_tokens = connection_tokens
        self.head_len = head_len

    def __repr__(self):
        return (f"ResponseHead(status={self.status}, reason={self.reason!r}, version={self.version}, "
                f"headers={len(self.headers)}, content_length={self.content_length}, chunked={self.chunked}, "
                f"keep_alive={self.keep_alive}, head_len={self.head_len})")


cdef inline bytes span_bytes(const char *b, h1_span s):
    return PyBytes_FromStringAndSize(b + s.off, <Py_ssize_t>s.len)


cdef bytes method_bytes(const char *b, h1_span s):
    """The common methods as shared constants: one allocation less per request."""
    cdef const char *m = b + s.off
    if s.len == 3 and m[0] == b'G' and m[1] == b'E' and m[2] == b'T':
        return b"GET"
    if s.len == 4 and m[0] == b'P' and m[1] == b'O' and m[2] == b'S' and m[3] == b'T':
        return b"POST"
    return span_bytes(b, s)


cdef bytes collect_fields(const char *b, const h1_field *f, size_t n, list headers):
    """Append (name, value) of each field to ``headers``; return the id string."""
    cdef bytes ids = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>n)
    cdef char *ip = PyBytes_AS_STRING(ids)
    cdef size_t i
    for i in range(n):
        headers.append((span_bytes(b, f[i].name), span_bytes(b, f[i].value)))
        ip[i] = <char>f[i].id
    return ids


cdef tuple connection_tokens(const char *b, const h1_field *f, size_t n):
    """Lower-cased Connection list elements other than close / keep-alive / upgrade (rare: only when C counted some)."""
    cdef list out = []
    cdef size_t i, pos
    cdef h1_span el
    cdef const char *v
    for i in range(n):
        if f[i].id != H1_HDR_CONNECTION:
            continue
        v = b + f[i].value.off
        pos = 0
        while h1_list_next(v, f[i].value.len, &pos, &el):
            if h1_connection_token(v + el.off, el.len) == H1_CONN_OTHER:
                out.append(span_bytes(v, el).lower())
    return tuple(out)


cdef h1_field *field_buffer(Py_ssize_t max_headers, h1_field *stack_fields) except NULL:
    cdef h1_field *fields
    if max_headers <= STACK_FIELDS:
        return stack_fields
    fields = <h1_field *>PyMem_Malloc(<size_t>max_headers * sizeof(h1_field))
    if fields == NULL:
        raise MemoryError()
    return fields


cdef inline bytes as_bytes(object buf):
    return <bytes>buf if type(buf) is bytes else bytes(buf)


def parse_request(buf, Py_ssize_t max_line=8192, Py_ssize_t max_header_bytes=65536, Py_ssize_t max_headers=100):
    """Parse a request head at the start of ``buf``: a :class:`RequestHead`, ``None`` when incomplete.

    Raises :class:`ProtocolError` with the status and message of SPEC §5.5 on any violation.
    """
    cdef bytes data = as_bytes(buf)
    cdef const char *b = PyBytes_AS_STRING(data)
    cdef h1_request rq
    cdef h1_field stack_fields[STACK_FIELDS]
    cdef h1_field *fields
    cdef ptrdiff_t r
    if max_line < 0 or max_header_bytes < 0 or max_headers < 0:
        raise ValueError("limits must be >= 0")
    fields = field_buffer(max_headers, stack_fields)
    try:
        r = h1_parse_request(b, <size_t>PyBytes_GET_SIZE(data), <size_t>max_line, <size_t>max_header_bytes,
                             <size_t>max_headers, &rq, fields)
        if r == 0:
            return None
        if r < 0:
            status, message = REQUEST_ERRORS[r]
            raise ProtocolError(status, message)
        return request_head(b, &rq, fields)
    finally:
        if fields != stack_fields:
            PyMem_Free(fields)


cdef RequestHead request_head(const char *b, const h1_request *rq, const h1_field *fields):
    cdef RequestHead h = RequestHead.__new__(RequestHead)
    cdef list headers = []
    h.header_ids = collect_fields(b, fields, rq.num_fields, headers)
    h.headers = headers
    h.method = method_bytes(b, rq.method)
    h.target = span_bytes(b, rq.target)
    if rq.flags & H1_F_ROOT_PATH:
        h.path = ROOT
    elif rq.path.off == rq.target.off and rq.path.len == rq.target.len:
        h.path = h.target
    else:
        h.path = span_bytes(b, rq.path)
    if rq.flags & H1_F_HAS_QUERY:
        h.query = span_bytes(b, rq.query) if rq.query.len else EMPTY
    else:
        h.query = None
    if rq.authority.len:
        h.authority = span_bytes(b, rq.authority)
        h.host = h.authority
    else:
        h.authority = EMPTY
        h.host = <bytes>(<tuple>headers[rq.host_index])[1] if rq.host_index >= 0 else EMPTY
    h.version = rq.minor_version
    h.content_length = rq.content_length
    h.chunked = (rq.flags & H1_F_CHUNKED) != 0
    h.keep_alive = (rq.flags & H1_F_KEEP_ALIVE) != 0
    h.expect_continue = (rq.flags & H1_F_EXPECT_CONTINUE) != 0
    h.upgrade = (rq.flags & H1_F_UPGRADE) != 0
    h.te_trailers = (rq.flags & H1_F_TE_TRAILERS) != 0
    h.connection_tokens = connection_tokens(b, fields, rq.num_fields) if rq.num_conn_tokens else NO_TOKENS
    h.head_len = <Py_ssize_t>rq.head_len
    return h


def parse_response(buf, Py_ssize_t max_header_bytes=65536, Py_ssize_t max_headers=100):
    """Parse a response head at the start of ``buf``: a :class:`ResponseHead`, ``None`` when incomplete.

    Raises ``ProtocolError(502, "Upstream protocol error")`` on any violation.
    """
    cdef bytes data = as_bytes(buf)
    cdef const char *b = PyBytes_AS_STRING(data)
    cdef h1_response rs
    cdef h1_field stack_fields[STACK_FIELDS]
    cdef h1_field *fields
    cdef ptrdiff_t r
    cdef ResponseHead h
    cdef list headers
    if max_header_bytes < 0 or max_headers < 0:
        raise ValueError("limits must be >= 0")
    fields = field_buffer(max_headers, stack_fields)
    try:
        r = h1_parse_response(b, <size_t>PyBytes_GET_SIZE(data), <size_t>max_header_bytes, <size_t>max_headers,
                              &rs, fields)
        if r == 0:
            return None
        if r < 0:
            raise ProtocolError(502, UPSTREAM_ERROR)
        h = ResponseHead.__new__(ResponseHead)
        headers = []
        h.header_ids = collect_fields(b, fields, rs.num_fields, headers)
        h.headers = headers
        h.status = rs.status
        h.reason = span_bytes(b, rs.reason) if rs.reason.len else EMPTY
        h.version = rs.minor_version
        h.content_length = rs.content_length
        h.chunked = (rs.flags & H1_F_CHUNKED) != 0
        h.keep_alive = (rs.flags & H1_F_KEEP_ALIVE) != 0
        h.upgrade = (rs.flags & H1_F_UPGRADE) != 0
        h.event_stream = (rs.flags & H1_F_EVENT_STREAM) != 0
        h.connection_tokens = connection_tokens(b, fields, rs.num_fields) if rs.num_conn_tokens else NO_TOKENS
        h.head_len = <Py_ssize_t>rs.head_len
        return h
    finally:
        if fields != stack_fields:
            PyMem_Free(fields)


cdef enum State:
    SIZE_LINE
    DATA
    DATA_CR
    DATA_LF
    TRAILERS
    DONE
    FAILED


cdef class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 §7.1): ``feed`` returns payload pieces and bytes consumed."""

    cdef readonly bint done
    cdef readonly list trailers
    cdef State state
    cdef uint64_t remaining
    cdef Py_ssize_t max_trailer_bytes
    cdef char line[H1_MAX_CHUNK_LINE]   # a size line split across feeds
    cdef Py_ssize_t line_len
    cdef bytearray tbuf                 # the trailer section so far, at most max_trailer_bytes
    cdef Py_ssize_t tpos                # start of its first unparsed line

    def __init__(self, Py_ssize_t max_trailer_bytes=65536):
        if max_trailer_bytes < 0:
            raise ValueError("max_trailer_bytes must be >= 0")
        self.done = False
        self.trailers = []
        self.state = SIZE_LINE
        self.remaining = 0
        self.max_trailer_bytes = max_trailer_bytes
        self.line_len = 0
        self.tbuf = bytearray()
        self.tpos = 0

    cdef fail(self):
        self.state = FAILED
        raise ProtocolError(400, CHUNK_ERROR)

    def feed(self, data):
        """Decode ``data``: (payload pieces, bytes of ``data`` consumed); fewer than all only once done."""
        cdef bytes d = as_bytes(data)
        cdef const char *p = PyBytes_AS_STRING(d)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(d)
        cdef Py_ssize_t pos = 0, take
        cdef list pieces = []
        if self.state == FAILED:
            self.fail()
        while pos < n:
            if self.state == DATA:
                take = n - pos
                if <uint64_t>take > self.remaining:
                    take = <Py_ssize_t>self.remaining
                pieces.append(d if take == n else d[pos:pos + take])
                pos += take
                self.remaining -= <uint64_t>take
                if self.remaining == 0:
                    self.state = DATA_CR
            elif self.state == DATA_CR:
                if p[pos] != b'\r':
                    self.fail()
                pos += 1
                self.state = DATA_LF
            elif self.state == DATA_LF:
                if p[pos] != b'\n':
                    self.fail()
                pos += 1
                self.state = SIZE_LINE
            elif self.state == SIZE_LINE:
                pos = self.size_line(p, n, pos)
            elif self.state == TRAILERS:
                pos = self.trailer_section(p, d, n, pos)
            else:  # DONE
                break
        return pieces, pos

    cdef Py_ssize_t size_line(self, const char *p, Py_ssize_t n, Py_ssize_t pos) except -1:
        cdef uint64_t size = 0
        cdef ptrdiff_t r
        cdef Py_ssize_t old = self.line_len, take
        if old == 0:
            r = h1_parse_chunk_size(p + pos, <size_t>(n - pos), &size)
            if r == 0:  # shorter than H1_MAX_CHUNK_LINE, or it would have failed
                memcpy(self.line, p + pos, <size_t>(n - pos))
                self.line_len = n - pos
                return n
        else:
            take = min(n - pos, H1_MAX_CHUNK_LINE - old)
            memcpy(self.line + old, p + pos, <size_t>take)
            r = h1_parse_chunk_size(self.line, <size_t>(old + take), &size)
            if r == 0:
                self.line_len = old + take
                return pos + take
            if r > 0:
                self.line_len = 0
                r -= old
        if r < 0:
            self.fail()
        if size == 0:
            self.state = TRAILERS
        else:
            self.state = DATA
            self.remaining = size
        return pos + r

    cdef Py_ssize_t trailer_section(self, const char *p, bytes d, Py_ssize_t n, Py_ssize_t pos) except -1:
        cdef Py_ssize_t old = PyByteArray_GET_SIZE(self.tbuf), take, size
        cdef ptrdiff_t r
        cdef h1_field f
        cdef const char *t
        if old == 0 and self.max_trailer_bytes >= 2 and n - pos >= 2 and p[pos] == b'\r' and p[pos + 1] == b'\n':
            self.done = True  # no trailers: the usual case, no copy
            self.state = DONE
            return pos + 2
        take = min(n - pos, self.max_trailer_bytes - old)
        self.tbuf += d[pos:pos + take]
        size = old + take
        t = PyByteArray_AS_STRING(self.tbuf)
        while True:
            r = h1_parse_field_line(t + self.tpos, <size_t>(size - self.tpos), &f)
            if r < 0:
                self.fail()
            if r == 0:
                if size >= self.max_trailer_bytes:
                    self.fail()
                return pos + take
            if f.name.len == 0:
                self.done = True
                self.state = DONE
                self.tbuf = None
                return pos + (self.tpos + r - old)
            self.trailers.append((span_bytes(t + self.tpos, f.name), span_bytes(t + self.tpos, f.value)))
            self.tpos += r
