/* http1.c - strict HTTP/1.x scanner for a3s-gateway; see http1.h for the contract.
 *
 * Shape: every line is scanned once by scan_line() (control characters, bare CR / LF), then checked for its
 * grammar; the semantics of the whole head (Host, Content-Length, Transfer-Encoding, Connection, ...) are
 * decided once the empty line has been seen, in a fixed order, so both implementations report the same error
 * when a head has several.
 */
#include "http1.h"

#include <string.h>

/* Character classes; the table is generated, one bit per class. */
#define C_TCHAR 0x01u   /* RFC 9110 token character */
#define C_CTL 0x02u     /* 0x00-0x1f, 0x7f */
#define C_HEX 0x04u
#define C_DIGIT 0x08u
#define C_TARGET 0x10u  /* allowed as such in a request-target: 0x21-0x7e except '#' and '%' */
#define C_REGNAME 0x20u /* unreserved / sub-delims (RFC 3986 reg-name without pct-encoded) */
#define C_OWS 0x40u     /* SP, HTAB */
#define C_QDTEXT 0x80u  /* quoted-string text: HTAB, SP, 0x21, 0x23-0x5b, 0x5d-0x7e, obs-text */

static const unsigned char cls[256] = {
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0xc2, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,  /* 0x00 */
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,  /* 0x10 */
    0xc0, 0xb1, 0x10, 0x81, 0xb1, 0x81, 0xb1, 0xb1, 0xb0, 0xb0, 0xb1, 0xb1, 0xb0, 0xb1, 0xb1, 0x90,  /* 0x20 */
    0xbd, 0xbd, 0xbd, 0xbd, 0xbd, 0xbd, 0xbd, 0xbd, 0xbd, 0xbd, 0x90, 0xb0, 0x90, 0xb0, 0x90, 0x90,  /* 0x30 */
    0x90, 0xb5, 0xb5, 0xb5, 0xb5, 0xb5, 0xb5, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1,  /* 0x40 */
    0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0x90, 0x10, 0x90, 0x91, 0xb1,  /* 0x50 */
    0x91, 0xb5, 0xb5, 0xb5, 0xb5, 0xb5, 0xb5, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1,  /* 0x60 */
    0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0xb1, 0x90, 0x91, 0x90, 0xb1, 0x02,  /* 0x70 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0x80 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0x90 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0xa0 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0xb0 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0xc0 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0xd0 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0xe0 */
    0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,  /* 0xf0 */
};

#define IS(c, k) (cls[(unsigned char)(c)] & (k))

typedef const unsigned char u8;

static size_t sat_add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static unsigned char lower(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c; }

/* Case-insensitive equality of s[0:n] with the lower-case literal lit (of length n). */
static int ieq(u8 *s, size_t n, const char *lit, size_t litn)
{
    size_t i;
    if (n != litn) return 0;
    for (i = 0; i < n; i++)
        if (lower(s[i]) != (unsigned char)lit[i]) return 0;
    return 1;
}

#define IEQ(s, n, lit) ieq((s), (n), lit, sizeof(lit) - 1)

/* ---- lines ------------------------------------------------------------------------------------------------ */

/* Scan one line in b[p:end]. Returns the offset just past its CRLF, H1_INCOMPLETE when b[p:end] ends before the
 * CRLF (a CR as the very last byte included), or H1_ERR_CHAR at the first control character that is not allowed:
 * every CTL but HTAB (HTAB too unless allow_tab), a CR not followed by LF, a LF not preceded by CR. */
static ptrdiff_t scan_line(u8 *b, size_t p, size_t end, int allow_tab)
{
    while (p < end) {
        unsigned char c;
        if (end - p >= 8) {
            /* 8 bytes at a time while none is a control character (< 0x20 or 0x7f): the usual case */
            uint64_t w, d;
            memcpy(&w, b + p, 8);
            d = w ^ 0x7f7f7f7f7f7f7f7full;
            if (!((((w - 0x2020202020202020ull) & ~w) | ((d - 0x0101010101010101ull) & ~d))
                  & 0x8080808080808080ull)) {
                p += 8;
                continue;
            }
        }
        c = b[p];
        if (!(cls[c] & C_CTL) || (c == '\t' && allow_tab)) {
            p++;
            continue;
        }
        if (c == '\r') {
            if (p + 1 >= end) return H1_INCOMPLETE;
            if (b[p + 1] == '\n') return (ptrdiff_t)(p + 2);
        }
        return H1_ERR_CHAR;
    }
    return H1_INCOMPLETE;
}

/* One field line at b[p:end] whose first byte is not CR; returns the offset past its CRLF (see scan_line). */
static ptrdiff_t field_line(u8 *b, size_t p, size_t end, h1_field *f)
{
    ptrdiff_t r = scan_line(b, p, end, 1);
    size_t e, i, v;
    if (r <= 0) return r;
    e = (size_t)r - 2;
    if (IS(b[p], C_OWS)) return H1_ERR_OBS_FOLD;
    for (i = p; i < e && b[i] != ':'; i++)
        if (!IS(b[i], C_TCHAR)) return H1_ERR_FIELD;
    if (i == p || i == e) return H1_ERR_FIELD;
    f->name.off = p;
    f->name.len = i - p;
    f->id = h1_header_id((const char *)b + p, i - p);
    for (v = i + 1; v < e && IS(b[v], C_OWS); v++) {}
    while (e > v && IS(b[e - 1], C_OWS)) e--;
    f->value.off = v;
    f->value.len = e - v;
    return r;
}

/* The field section starting at hs: at most max_bytes bytes (final CRLF included) and max_fields lines.
 * Returns the offset past the empty line. */
static ptrdiff_t field_section(u8 *b, size_t len, size_t hs, size_t max_bytes, size_t max_fields, h1_field *fields,
                               size_t *nfields)
{
    size_t limit = sat_add(hs, max_bytes);
    size_t end = len < limit ? len : limit;
    size_t p = hs, n = 0;
    ptrdiff_t r;
    for (;;) {
        if (p >= end) break;
        if (b[p] == '\r') {
            if (p + 1 >= end) break;
            if (b[p + 1] != '\n') return H1_ERR_CHAR;
            *nfields = n;
            return (ptrdiff_t)(p + 2);
        }
        if (n == max_fields) return H1_ERR_TOO_LARGE;
        r = field_line(b, p, end, &fields[n]);
        if (r == H1_INCOMPLETE) break;
        if (r < 0) return r;
        n++;
        p = (size_t)r;
    }
    return len >= limit ? H1_ERR_TOO_LARGE : H1_INCOMPLETE;
}

/* ---- values ----------------------------------------------------------------------------------------------- */

static int all_class(u8 *s, size_t n, unsigned k)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (!IS(s[i], k)) return 0;
    return 1;
}

int h1_list_next(const char *buf, size_t len, size_t *pos, h1_span *elem)
{
    u8 *b = (u8 *)buf;
    while (*pos <= len) {
        size_t s = *pos, e = s;
        while (e < len && b[e] != ',') e++;
        *pos = e + 1;
        while (s < e && IS(b[s], C_OWS)) s++;
        while (e > s && IS(b[e - 1], C_OWS)) e--;
        if (e > s) {
            elem->off = s;
            elem->len = e - s;
            return 1;
        }
    }
    return 0;
}

int h1_connection_token(const char *tok, size_t len)
{
    u8 *t = (u8 *)tok;
    if (IEQ(t, len, "close")) return H1_CONN_CLOSE;
    if (IEQ(t, len, "keep-alive")) return H1_CONN_KEEP_ALIVE;
    if (IEQ(t, len, "upgrade")) return H1_CONN_UPGRADE;
    return H1_CONN_OTHER;
}

/* uri-host [ ":" port ] with uri-host = "[" IPv6 "]" / reg-name (IPv4 is a reg-name); the host must not be
 * empty. IPv6 is checked loosely: hex digits, ':' and '.', at least one ':'. */
static int valid_authority(u8 *b, size_t p, size_t e)
{
    size_t i = p;
    if (p == e) return 0;
    if (b[p] == '[') {
        int colon = 0;
        for (i = p + 1; i < e && b[i] != ']'; i++) {
            if (b[i] == ':') colon = 1;
            else if (!IS(b[i], C_HEX) && b[i] != '.') return 0;
        }
        if (i == e || !colon) return 0;
        i++;
    } else {
        while (i < e && b[i] != ':') {
            if (b[i] == '%') {
                if (e - i < 3 || !IS(b[i + 1], C_HEX) || !IS(b[i + 2], C_HEX)) return 0;
                i += 3;
            } else if (IS(b[i], C_REGNAME)) {
                i++;
            } else {
                return 0;
            }
        }
        if (i == p) return 0;
    }
    if (i == e) return 1;
    if (b[i] != ':') return 0;
    return all_class(b + i + 1, e - i - 1, C_DIGIT);
}

/* Content-Length state across lines: 1*DIGIT list elements (at most 18 digits, so no overflow), all equal. */
typedef struct {
    int present, invalid, have_value;
    int64_t value;
} cl_state;

static void content_length(u8 *b, h1_span v, cl_state *st)
{
    size_t p = v.off, end = v.off + v.len;
    st->present = 1;
    if (v.len == 0) st->invalid = 1;
    while (!st->invalid && p <= end) {
        size_t s = p, e = p;
        int64_t n = 0;
        while (e < end && b[e] != ',') e++;
        p = e + 1;
        while (s < e && IS(b[s], C_OWS)) s++;
        while (e > s && IS(b[e - 1], C_OWS)) e--;
        if (e == s || e - s > 18 || !all_class(b + s, e - s, C_DIGIT)) {
            st->invalid = 1;
            return;
        }
        for (; s < e; s++) n = n * 10 + (b[s] - '0');
        if (st->have_value && n != st->value) st->invalid = 1;
        st->have_value = 1;
        st->value = n;
    }
}

/* Transfer-Encoding: one list across all its lines. */
typedef struct {
    int present, invalid;
    size_t codings, chunked;
    int last_chunked;
} te_state;

static void transfer_encoding(u8 *b, h1_span v, te_state *st)
{
    size_t pos = 0;
    h1_span el;
    st->present = 1;
    while (h1_list_next((const char *)b + v.off, v.len, &pos, &el)) {
        u8 *s = b + v.off + el.off;
        if (!all_class(s, el.len, C_TCHAR)) st->invalid = 1;
        st->codings++;
        st->last_chunked = IEQ(s, el.len, "chunked");
        if (st->last_chunked) st->chunked++;
    }
}

/* Connection tokens: sets H1_F_* bits in *conn (close -> 1, keep-alive -> 2, upgrade -> 4), counts the others. */
static void connection(u8 *b, h1_span v, unsigned *conn, size_t *others)
{
    size_t pos = 0;
    h1_span el;
    while (h1_list_next((const char *)b + v.off, v.len, &pos, &el)) {
        switch (h1_connection_token((const char *)b + v.off + el.off, el.len)) {
        case H1_CONN_CLOSE: *conn |= 1u; break;
        case H1_CONN_KEEP_ALIVE: *conn |= 2u; break;
        case H1_CONN_UPGRADE: *conn |= 4u; break;
        default: (*others)++;
        }
    }
}

static int list_has(u8 *b, h1_span v, const char *lit, size_t litn)
{
    size_t pos = 0;
    h1_span el;
    while (h1_list_next((const char *)b + v.off, v.len, &pos, &el))
        if (ieq(b + v.off + el.off, el.len, lit, litn)) return 1;
    return 0;
}

/* Everything the head's fields say, gathered in one pass. */
typedef struct {
    size_t hosts;
    int host_index;
    cl_state cl;
    te_state te;
    unsigned conn;
    size_t conn_others;
    int upgrade_field, expect_continue, te_trailers, event_stream, content_type_seen;
} head_facts;

static void gather(u8 *b, const h1_field *fields, size_t n, head_facts *h)
{
    size_t i;
    memset(h, 0, sizeof *h);
    h->host_index = -1;
    for (i = 0; i < n; i++) {
        h1_span v = fields[i].value;
        switch (fields[i].id) {
        case H1_HDR_HOST:
            if (h->hosts++ == 0) h->host_index = (int)i;
            break;
        case H1_HDR_CONTENT_LENGTH: content_length(b, v, &h->cl); break;
        case H1_HDR_TRANSFER_ENCODING: transfer_encoding(b, v, &h->te); break;
        case H1_HDR_CONNECTION: connection(b, v, &h->conn, &h->conn_others); break;
        case H1_HDR_UPGRADE: h->upgrade_field = 1; break;
        case H1_HDR_EXPECT:
            if (IEQ(b + v.off, v.len, "100-continue")) h->expect_continue = 1;
            break;
        case H1_HDR_TE:
            if (list_has(b, v, "trailers", 8)) h->te_trailers = 1;
            break;
        case H1_HDR_CONTENT_TYPE:
            if (!h->content_type_seen) {
                /* media type = the value before ';', OWS trimmed; parameters ignored */
                size_t s = v.off, e = v.off;
                h->content_type_seen = 1;
                while (e < v.off + v.len && b[e] != ';') e++;
                while (e > s && IS(b[e - 1], C_OWS)) e--;
                h->event_stream = IEQ(b + s, e - s, "text/event-stream");
            }
            break;
        default: break;
        }
    }
}

/* ---- request ---------------------------------------------------------------------------------------------- */

/* request-target in b[p:e] (no SP, no CTL: scan_line and the request line split ensure it). */
static ptrdiff_t request_target(u8 *b, size_t p, size_t e, int is_options, h1_request *rq)
{
    size_t i, a, ae;
    for (i = p; i < e; i++) {
        if (b[i] == '%') {
            if (e - i < 3 || !IS(b[i + 1], C_HEX) || !IS(b[i + 2], C_HEX)) return H1_ERR_TARGET;
            i += 2;
        } else if (!IS(b[i], C_TARGET)) {
            return H1_ERR_TARGET;
        }
    }
    if (b[p] == '/') {
        a = p;
    } else if (e - p == 1 && b[p] == '*') {
        if (!is_options) return H1_ERR_TARGET;
        rq->path.off = p;
        rq->path.len = 1;
        return 0;
    } else {
        if (e - p >= 7 && IEQ(b + p, 7, "http://")) a = p + 7;
        else if (e - p >= 8 && IEQ(b + p, 8, "https://")) a = p + 8;
        else return H1_ERR_TARGET;
        for (ae = a; ae < e && b[ae] != '/' && b[ae] != '?'; ae++) {}
        if (!valid_authority(b, a, ae)) return H1_ERR_TARGET;
        rq->authority.off = a;
        rq->authority.len = ae - a;
        a = ae;
    }
    /* b[a:e] is the path and query ("" for an absolute-form target without either) */
    for (i = a; i < e && b[i] != '?'; i++) {}
    rq->path.off = a;
    rq->path.len = i - a;
    if (i == a) rq->flags |= H1_F_ROOT_PATH;
    if (i < e) {
        rq->flags |= H1_F_HAS_QUERY;
        rq->query.off = i + 1;
        rq->query.len = e - i - 1;
    }
    return 0;
}

/* request-line in b[p:e]: method SP request-target SP HTTP-version. */
static ptrdiff_t request_line(u8 *b, size_t p, size_t e, h1_request *rq)
{
    size_t sp1, sp2;
    u8 *v;
    for (sp1 = p; sp1 < e && b[sp1] != ' '; sp1++)
        if (!IS(b[sp1], C_TCHAR)) return H1_ERR_REQUEST_LINE;
    if (sp1 == p || sp1 == e) return H1_ERR_REQUEST_LINE;
    for (sp2 = sp1 + 1; sp2 < e && b[sp2] != ' '; sp2++) {}
    if (sp2 == sp1 + 1 || sp2 == e) return H1_ERR_REQUEST_LINE;
    v = b + sp2 + 1;
    if (e - sp2 - 1 != 8 || memcmp(v, "HTTP/", 5) != 0 || !IS(v[5], C_DIGIT) || v[6] != '.' || !IS(v[7], C_DIGIT))
        return H1_ERR_REQUEST_LINE;
    if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) return H1_ERR_VERSION;
    rq->minor_version = v[7] - '0';
    rq->method.off = p;
    rq->method.len = sp1 - p;
    if (sp1 - p == 7 && memcmp(b + p, "CONNECT", 7) == 0) return H1_ERR_CONNECT;
    rq->target.off = sp1 + 1;
    rq->target.len = sp2 - sp1 - 1;
    return request_target(b, sp1 + 1, sp2, sp1 - p == 7 && memcmp(b + p, "OPTIONS", 7) == 0, rq);
}

/* Head semantics, in the order of SPEC §5.5's table: Host, CL+TE, Content-Length, Transfer-Encoding. */
static ptrdiff_t request_semantics(u8 *b, h1_request *rq, const h1_field *fields)
{
    head_facts h;
    gather(b, fields, rq->num_fields, &h);
    if (rq->minor_version == 1 ? h.hosts != 1 : h.hosts > 1) return H1_ERR_HOST;
    if (h.hosts == 1) {
        h1_span v = fields[h.host_index].value;
        if (v.len && !valid_authority(b, v.off, v.off + v.len)) return H1_ERR_HOST;
    }
    if (h.cl.present && h.te.present) return H1_ERR_CL_AND_TE;
    if (h.cl.invalid) return H1_ERR_CONTENT_LENGTH;
    if (h.te.present) {
        if (rq->minor_version == 0 || h.te.invalid || h.te.codings == 0 || !h.te.last_chunked || h.te.chunked > 1)
            return H1_ERR_TRANSFER_ENCODING;
        if (h.te.codings > 1) return H1_ERR_TE_NOT_IMPLEMENTED;
        rq->flags |= H1_F_CHUNKED;
    }
    rq->content_length = h.cl.present ? h.cl.value : -1;
    rq->host_index = h.host_index;
    rq->num_conn_tokens = h.conn_others;
    if (rq->minor_version == 1 ? !(h.conn & 1u) : (h.conn & 2u) && !(h.conn & 1u)) rq->flags |= H1_F_KEEP_ALIVE;
    if ((h.conn & 4u) && h.upgrade_field) rq->flags |= H1_F_UPGRADE;
    if (h.expect_continue) rq->flags |= H1_F_EXPECT_CONTINUE;
    if (h.te_trailers) rq->flags |= H1_F_TE_TRAILERS;
    return 0;
}

ptrdiff_t h1_parse_request(const char *buf, size_t len, size_t max_line, size_t max_header_bytes,
                           size_t max_headers, h1_request *rq, h1_field *fields)
{
    u8 *b = (u8 *)buf;
    size_t limit = sat_add(max_line, 2); /* line + CRLF, leading empty lines included */
    size_t end = len < limit ? len : limit;
    size_t p = 0;
    ptrdiff_t r, eol;

    memset(rq, 0, sizeof *rq);
    rq->host_index = -1;
    rq->content_length = -1;
    while (p + 1 < end && b[p] == '\r' && b[p + 1] == '\n') p += 2;
    eol = scan_line(b, p, end, 0);
    if (eol == H1_INCOMPLETE) return len >= limit ? H1_ERR_LINE_TOO_LONG : H1_INCOMPLETE;
    if (eol < 0) return eol;
    r = request_line(b, p, (size_t)eol - 2, rq);
    if (r < 0) return r;
    r = field_section(b, len, (size_t)eol, max_header_bytes, max_headers, fields, &rq->num_fields);
    if (r <= 0) return r;
    rq->head_len = (size_t)r;
    eol = request_semantics(b, rq, fields);
    return eol < 0 ? eol : r;
}

/* ---- response --------------------------------------------------------------------------------------------- */

/* status-line in b[0:e]: HTTP/1.x SP 3DIGIT [ SP reason ] (a missing " reason" is accepted). */
static ptrdiff_t status_line(u8 *b, size_t e, h1_response *rs)
{
    if (e < 12 || memcmp(b, "HTTP/1.", 7) != 0 || (b[7] != '0' && b[7] != '1') || b[8] != ' ') return H1_ERR_STATUS_LINE;
    if (b[9] < '1' || b[9] > '5' || !IS(b[10], C_DIGIT) || !IS(b[11], C_DIGIT)) return H1_ERR_STATUS_LINE;
    rs->minor_version = b[7] - '0';
    rs->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    if (e == 12) {
        rs->reason.off = 12;
        return 0;
    }
    if (b[12] != ' ') return H1_ERR_STATUS_LINE;
    rs->reason.off = 13;
    rs->reason.len = e - 13;
    return 0;
}

static ptrdiff_t response_semantics(u8 *b, h1_response *rs, const h1_field *fields)
{
    head_facts h;
    int keep;
    gather(b, fields, rs->num_fields, &h);
    if (h.cl.invalid) return H1_ERR_CONTENT_LENGTH;
    keep = rs->minor_version == 1 ? !(h.conn & 1u) : (h.conn & 2u) && !(h.conn & 1u);
    rs->content_length = h.cl.present ? h.cl.value : -1;
    if (h.te.present) {
        /* TE in HTTP/1.0 means faulty framing; chunked twice is never valid */
        if (rs->minor_version == 0 || h.te.invalid || h.te.codings == 0 || h.te.chunked > 1)
            return H1_ERR_TRANSFER_ENCODING;
        if (h.te.last_chunked) rs->flags |= H1_F_CHUNKED;
        else keep = 0; /* close-delimited */
        if (h.cl.present) keep = 0;
        rs->content_length = -1;
    }
    if (keep) rs->flags |= H1_F_KEEP_ALIVE;
    if (h.conn & 4u) rs->flags |= H1_F_UPGRADE;
    if (h.event_stream) rs->flags |= H1_F_EVENT_STREAM;
    rs->num_conn_tokens = h.conn_others;
    return 0;
}

ptrdiff_t h1_parse_response(const char *buf, size_t len, size_t max_header_bytes, size_t max_headers,
                            h1_response *rs, h1_field *fields)
{
    u8 *b = (u8 *)buf;
    size_t end = len < max_header_bytes ? len : max_header_bytes;
    ptrdiff_t r, eol;

    memset(rs, 0, sizeof *rs);
    rs->content_length = -1;
    eol = scan_line(b, 0, end, 1);
    if (eol == H1_INCOMPLETE) return len >= max_header_bytes ? H1_ERR_TOO_LARGE : H1_INCOMPLETE;
    if (eol < 0) return eol;
    r = status_line(b, (size_t)eol - 2, rs);
    if (r < 0) return r;
    r = field_section(b, len, (size_t)eol, max_header_bytes, max_headers, fields, &rs->num_fields);
    if (r <= 0) return r;
    rs->head_len = (size_t)r;
    eol = response_semantics(b, rs, fields);
    return eol < 0 ? eol : r;
}

/* ---- chunked ---------------------------------------------------------------------------------------------- */

static size_t skip_ows(u8 *b, size_t i, size_t e)
{
    while (i < e && IS(b[i], C_OWS)) i++;
    return i;
}

static size_t skip_token(u8 *b, size_t i, size_t e)
{
    while (i < e && IS(b[i], C_TCHAR)) i++;
    return i;
}

/* quoted-string starting at the DQUOTE b[i]; returns the offset past the closing DQUOTE, 0 when invalid. */
static size_t skip_quoted(u8 *b, size_t i, size_t e)
{
    for (i++; i < e; i++) {
        unsigned char c = b[i];
        if (c == '"') return i + 1;
        if (c == '\\') {
            /* quoted-pair: HTAB / SP / VCHAR / obs-text (scan_line already refused the other controls) */
            if (++i == e) return 0;
        } else if (!IS(c, C_QDTEXT)) {
            return 0;
        }
    }
    return 0;
}

ptrdiff_t h1_parse_chunk_size(const char *buf, size_t len, uint64_t *size)
{
    u8 *b = (u8 *)buf;
    size_t end = len < H1_MAX_CHUNK_LINE ? len : H1_MAX_CHUNK_LINE;
    ptrdiff_t r = scan_line(b, 0, end, 1);
    size_t i = 0, e, j;
    uint64_t n = 0;

    if (r == H1_INCOMPLETE) return len >= H1_MAX_CHUNK_LINE ? H1_ERR_CHUNK : H1_INCOMPLETE;
    if (r < 0) return H1_ERR_CHUNK;
    e = (size_t)r - 2;
    for (; i < e && IS(b[i], C_HEX); i++) {
        unsigned char c = b[i];
        if (i == 16) return H1_ERR_CHUNK;
        n = (n << 4) | (uint64_t)(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    if (i == 0 || n > (uint64_t)INT64_MAX) return H1_ERR_CHUNK;
    while (i < e) { /* chunk-ext */
        i = skip_ows(b, i, e);
        if (i == e || b[i] != ';') return H1_ERR_CHUNK;
        i = skip_ows(b, i + 1, e);
        j = skip_token(b, i, e);
        if (j == i) return H1_ERR_CHUNK;
        i = j;
        j = skip_ows(b, i, e);
        if (j < e && b[j] == '=') {
            i = skip_ows(b, j + 1, e);
            if (i < e && b[i] == '"') {
                j = skip_quoted(b, i, e);
                if (j == 0) return H1_ERR_CHUNK;
            } else {
                j = skip_token(b, i, e);
                if (j == i) return H1_ERR_CHUNK;
            }
            i = j;
        }
    }
    *size = n;
    return r;
}

ptrdiff_t h1_parse_field_line(const char *buf, size_t len, h1_field *f)
{
    u8 *b = (u8 *)buf;
    if (len == 0) return H1_INCOMPLETE;
    if (b[0] == '\r') {
        if (len < 2) return H1_INCOMPLETE;
        if (b[1] != '\n') return H1_ERR_CHAR;
        f->name.off = f->name.len = f->value.off = f->value.len = 0;
        f->id = H1_HDR_OTHER;
        return 2;
    }
    return field_line(b, 0, len, f);
}

/* ---- header ids ------------------------------------------------------------------------------------------- */

int h1_header_id(const char *name, size_t len)
{
    u8 *s = (u8 *)name;
    switch (len) {
    case 2:
        if (IEQ(s, len, "te")) return H1_HDR_TE;
        if (IEQ(s, len, "b3")) return H1_HDR_B3;
        return H1_HDR_OTHER;
    case 4: return IEQ(s, len, "host") ? H1_HDR_HOST : H1_HDR_OTHER;
    case 6: return IEQ(s, len, "expect") ? H1_HDR_EXPECT : H1_HDR_OTHER;
    case 7:
        if (IEQ(s, len, "upgrade")) return H1_HDR_UPGRADE;
        if (IEQ(s, len, "trailer")) return H1_HDR_TRAILER;
        return H1_HDR_OTHER;
    case 9: return IEQ(s, len, "x-real-ip") ? H1_HDR_X_REAL_IP : H1_HDR_OTHER;
    case 10:
        if (IEQ(s, len, "connection")) return H1_HDR_CONNECTION;
        if (IEQ(s, len, "keep-alive")) return H1_HDR_KEEP_ALIVE;
        if (IEQ(s, len, "user-agent")) return H1_HDR_USER_AGENT;
        if (IEQ(s, len, "tracestate")) return H1_HDR_TRACESTATE;
        if (IEQ(s, len, "x-b3-flags")) return H1_HDR_X_B3_FLAGS;
        return H1_HDR_OTHER;
    case 11:
        if (IEQ(s, len, "traceparent")) return H1_HDR_TRACEPARENT;
        if (IEQ(s, len, "x-b3-spanid")) return H1_HDR_X_B3_SPANID;
        return H1_HDR_OTHER;
    case 12:
        if (IEQ(s, len, "content-type")) return H1_HDR_CONTENT_TYPE;
        if (IEQ(s, len, "x-request-id")) return H1_HDR_X_REQUEST_ID;
        if (IEQ(s, len, "x-b3-traceid")) return H1_HDR_X_B3_TRACEID;
        if (IEQ(s, len, "x-b3-sampled")) return H1_HDR_X_B3_SAMPLED;
        return H1_HDR_OTHER;
    case 14: return IEQ(s, len, "content-length") ? H1_HDR_CONTENT_LENGTH : H1_HDR_OTHER;
    case 15: return IEQ(s, len, "x-forwarded-for") ? H1_HDR_X_FORWARDED_FOR : H1_HDR_OTHER;
    case 16:
        if (IEQ(s, len, "x-forwarded-host")) return H1_HDR_X_FORWARDED_HOST;
        if (IEQ(s, len, "x-forwarded-port")) return H1_HDR_X_FORWARDED_PORT;
        if (IEQ(s, len, "proxy-connection")) return H1_HDR_PROXY_CONNECTION;
        return H1_HDR_OTHER;
    case 17:
        if (IEQ(s, len, "transfer-encoding")) return H1_HDR_TRANSFER_ENCODING;
        if (IEQ(s, len, "x-forwarded-proto")) return H1_HDR_X_FORWARDED_PROTO;
        if (IEQ(s, len, "x-b3-parentspanid")) return H1_HDR_X_B3_PARENTSPANID;
        return H1_HDR_OTHER;
    case 18: return IEQ(s, len, "proxy-authenticate") ? H1_HDR_PROXY_AUTHENTICATE : H1_HDR_OTHER;
    case 19: return IEQ(s, len, "proxy-authorization") ? H1_HDR_PROXY_AUTHORIZATION : H1_HDR_OTHER;
    default: return H1_HDR_OTHER;
    }
}
