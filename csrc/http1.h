/* http1.h - strict HTTP/1.x scanner for a3s-gateway (RFC 9112, SPEC §5.5).
 *
 * Written for this project; the Cython wrapper is src/a3s_gateway/http/_parser_c.pyx and its pure-Python twin is
 * src/a3s_gateway/http/_parser_py.py (both must behave identically; tests/unit/test_parser_differential.py checks).
 *
 * Nothing here allocates: every function fills caller-provided structs with offsets into the caller's buffer.
 * Return convention of every parse function: > 0 bytes consumed, H1_INCOMPLETE (0) when more bytes are needed,
 * < 0 an h1_error. Violations are reported at the earliest byte that proves them (a bare LF or a control character
 * is rejected as soon as it is seen); a limit error is reported only when the bytes inside the limit hold no
 * earlier violation, so feeding a message byte by byte gives the same outcome as feeding it whole.
 */
#ifndef A3S_HTTP1_H
#define A3S_HTTP1_H

#include <stddef.h>
#include <stdint.h>

#define H1_INCOMPLETE 0

/* Size-line limit of the chunked decoder: chunk size, extensions and CRLF. */
#define H1_MAX_CHUNK_LINE 4096

typedef enum {
    H1_ERR_LINE_TOO_LONG = -1,        /* 414 Request line too long */
    H1_ERR_REQUEST_LINE = -2,         /* 400 malformed request line */
    H1_ERR_TARGET = -3,               /* 400 invalid request target */
    H1_ERR_CONNECT = -4,              /* 405 Method not allowed */
    H1_ERR_VERSION = -5,              /* 505 HTTP version not supported */
    H1_ERR_TOO_LARGE = -6,            /* 431 header section or field count over the limit */
    H1_ERR_FIELD = -7,                /* 400 invalid header field */
    H1_ERR_OBS_FOLD = -8,             /* 400 obsolete line folding */
    H1_ERR_CHAR = -9,                 /* 400 invalid characters (bare CR/LF, controls) */
    H1_ERR_HOST = -10,                /* 400 invalid Host header */
    H1_ERR_CL_AND_TE = -11,           /* 400 both Content-Length and Transfer-Encoding */
    H1_ERR_CONTENT_LENGTH = -12,      /* 400 invalid Content-Length */
    H1_ERR_TRANSFER_ENCODING = -13,   /* 400 invalid Transfer-Encoding */
    H1_ERR_TE_NOT_IMPLEMENTED = -14,  /* 501 codings before chunked */
    H1_ERR_CHUNK = -15,               /* 400 invalid chunked encoding */
    H1_ERR_STATUS_LINE = -16          /* response: malformed status line (the wrapper answers 502) */
} h1_error;

/* Header ids: the same numbers as src/a3s_gateway/http/hdrs.py (tests/unit/test_parser.py compares them). */
typedef enum {
    H1_HDR_OTHER = 0,
    H1_HDR_HOST = 1,
    H1_HDR_CONTENT_LENGTH = 2,
    H1_HDR_TRANSFER_ENCODING = 3,
    H1_HDR_CONNECTION = 4,
    H1_HDR_KEEP_ALIVE = 5,
    H1_HDR_PROXY_CONNECTION = 6,
    H1_HDR_PROXY_AUTHENTICATE = 7,
    H1_HDR_PROXY_AUTHORIZATION = 8,
    H1_HDR_TE = 9,
    H1_HDR_TRAILER = 10,
    H1_HDR_UPGRADE = 11,
    H1_HDR_EXPECT = 12,
    H1_HDR_X_FORWARDED_FOR = 13,
    H1_HDR_X_FORWARDED_PROTO = 14,
    H1_HDR_X_FORWARDED_HOST = 15,
    H1_HDR_X_FORWARDED_PORT = 16,
    H1_HDR_X_REAL_IP = 17,
    H1_HDR_X_REQUEST_ID = 18,
    H1_HDR_CONTENT_TYPE = 19,
    H1_HDR_USER_AGENT = 20,
    H1_HDR_TRACEPARENT = 21,
    H1_HDR_TRACESTATE = 22,
    H1_HDR_B3 = 23,
    H1_HDR_X_B3_TRACEID = 24,
    H1_HDR_X_B3_SPANID = 25,
    H1_HDR_X_B3_PARENTSPANID = 26,
    H1_HDR_X_B3_SAMPLED = 27,
    H1_HDR_X_B3_FLAGS = 28
} h1_hdr_id;

/* Flags of h1_request.flags / h1_response.flags. */
enum {
    H1_F_CHUNKED = 1u << 0,
    H1_F_KEEP_ALIVE = 1u << 1,
    H1_F_EXPECT_CONTINUE = 1u << 2,
    H1_F_UPGRADE = 1u << 3,
    H1_F_TE_TRAILERS = 1u << 4,
    H1_F_EVENT_STREAM = 1u << 5,
    H1_F_HAS_QUERY = 1u << 6,         /* the target has a '?' (query may still be empty) */
    H1_F_ROOT_PATH = 1u << 7          /* absolute-form without a path: the path to forward is "/" */
};

/* Kinds returned by h1_connection_token(). */
enum { H1_CONN_OTHER = 0, H1_CONN_CLOSE = 1, H1_CONN_KEEP_ALIVE = 2, H1_CONN_UPGRADE = 3 };

typedef struct {
    size_t off;
    size_t len;
} h1_span;

typedef struct {
    h1_span name;   /* raw case */
    h1_span value;  /* leading and trailing OWS removed */
    int id;         /* h1_hdr_id */
} h1_field;

typedef struct {
    h1_span method;
    h1_span target;
    h1_span path;        /* len 0 with H1_F_ROOT_PATH: "/" */
    h1_span query;       /* meaningful with H1_F_HAS_QUERY */
    h1_span authority;   /* absolute-form only */
    int minor_version;
    int host_index;      /* index of the Host field, -1 when absent; the host is the authority when it is set */
    unsigned flags;
    int64_t content_length;  /* -1 when absent */
    size_t num_fields;
    size_t num_conn_tokens;  /* Connection list elements other than close / keep-alive / upgrade */
    size_t head_len;
} h1_request;

typedef struct {
    int status;
    int minor_version;
    h1_span reason;
    unsigned flags;
    int64_t content_length;  /* -1 when absent or overridden by Transfer-Encoding */
    size_t num_fields;
    size_t num_conn_tokens;
    size_t head_len;
} h1_response;

/* Request head. fields must hold max_headers entries. Leading empty lines count towards max_line. */
ptrdiff_t h1_parse_request(const char *buf, size_t len, size_t max_line, size_t max_header_bytes,
                           size_t max_headers, h1_request *req, h1_field *fields);

/* Response head; the status line is limited to max_header_bytes too. Every error means "502". */
ptrdiff_t h1_parse_response(const char *buf, size_t len, size_t max_header_bytes, size_t max_headers,
                            h1_response *resp, h1_field *fields);

/* One chunk-size line at buf: 1*16HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF,
 * the size at most 2^63-1 (SPEC §5.5: what another parser reads as a negative int64 is refused here).
 * Returns the bytes of the line including CRLF; H1_ERR_CHUNK on any violation or when H1_MAX_CHUNK_LINE bytes
 * hold no complete line. */
ptrdiff_t h1_parse_chunk_size(const char *buf, size_t len, uint64_t *size);

/* One field line (header or trailer) or the empty line ending the section. Returns its bytes including CRLF
 * (2 for the empty line, which leaves field->name.len == 0), or H1_ERR_CHAR / H1_ERR_OBS_FOLD / H1_ERR_FIELD. */
ptrdiff_t h1_parse_field_line(const char *buf, size_t len, h1_field *field);

/* h1_hdr_id of a field name, case-insensitively. */
int h1_header_id(const char *name, size_t len);

/* Next non-empty element of a comma-separated list value (OWS trimmed). Start with *pos = 0; returns 0 at end. */
int h1_list_next(const char *buf, size_t len, size_t *pos, h1_span *elem);

/* H1_CONN_* kind of one Connection list element. */
int h1_connection_token(const char *tok, size_t len);

#endif /* A3S_HTTP1_H */
