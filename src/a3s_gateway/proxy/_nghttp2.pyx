# cython: language_level=3, boundscheck=False, wraparound=False
"""The server side of an HTTP/2 connection in libnghttp2 (SPEC §9.1): frames, HPACK, stream states, flow control
and the RFC 9113 error codes in C; the gateway sees compact events and submits responses.

An :class:`NgServerSession` owns no socket: ``receive(data)`` processes the client's bytes and returns the events
they produced, ``data_to_send()`` returns the bytes to write (and ``sent_events()`` the events sending produced:
streams closed by what went out). Events are 4-tuples ``(kind, stream_id, a, b)``:

========== ============================================================================================
REQUEST    ``a``: the request's fields, ``[(name, value), ...]`` bytes with the pseudo-headers first;
           ``b``: True when END_STREAM came with them (no body)
DATA       ``a``: body bytes (padding excluded); each must be given back with ``consume(sid, len(a))``
END        the client's END_STREAM after DATA
TRAILERS   ``a``: the trailer fields (END_STREAM included)
RESET      ``a``: the client's RST_STREAM error code
CLOSED     ``a``: the error code the stream closed with (0: both sides ended it); the last event of a stream
GOAWAY     the client's GOAWAY: ``stream_id`` its last stream id, ``a`` the error code, ``b`` its debug data
ACKED      the client acknowledged our SETTINGS
ABUSE      GOAWAY(ENHANCE_YOUR_CALM) was queued: ``a`` the kind (``rapid_reset``, ``reset_ratio``,
           ``settings_flood``, ``ping_flood``, ``empty_data_flood``, ``header_block``), ``b`` the code
========== ============================================================================================

Requests nghttp2 finds malformed (RFC 9113 §8.1.1: uppercase or connection-specific fields, missing or repeated
pseudo-headers, a ``:path`` not in origin form, a content-length the DATA contradicts, ...) are reset with
PROTOCOL_ERROR by nghttp2 and never reach REQUEST. A HEADERS frame beyond ``max_concurrent_streams`` gets
RST_STREAM(REFUSED_STREAM) on that stream alone (nghttp2 itself would answer a settled limit with a connection
error, so it is told no limit and the one in our SETTINGS frame is enforced here). Abuse limits are those of
SPEC §9.1 (see ``_calm``); nghttp2's own reset rate limit is raised above them, and its CONTINUATION cap is
``MAX_CONTINUATIONS``.

Received DATA counts against the windows until ``consume()`` gives it back (no automatic WINDOW_UPDATE): a
stream whose consumer is slow closes its window. A response body is queued per stream with ``send_data()`` and
framed by nghttp2 as the client's windows allow; ``queued(sid)`` is what waits, and ``drained()`` lists the
streams whose queue fell from above ``high_water`` to ``low_water`` or less since the last call.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from collections import deque

REQUEST = 1
DATA = 2
END = 3
TRAILERS = 4
RESET = 5
CLOSED = 6
GOAWAY = 7
ACKED = 8
ABUSE = 9

NO_ERROR = NGHTTP2_NO_ERROR
PROTOCOL_ERROR = NGHTTP2_PROTOCOL_ERROR
INTERNAL_ERROR = NGHTTP2_INTERNAL_ERROR
REFUSED_STREAM = NGHTTP2_REFUSED_STREAM
ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM

# abuse limits (SPEC §9.1), the same as the h2 implementation's (proxy/http2.py)
RESET_BURST = 200  # client resets within RESET_WINDOW seconds (rapid reset, CVE-2023-44487)
RESET_WINDOW = 1.0
FLOOD_LIMIT = 1000  # SETTINGS, PING or empty DATA frames within FLOOD_WINDOW seconds
FLOOD_WINDOW = 10.0
MAX_CONTINUATIONS = 32  # CONTINUATION frames after one HEADERS (CVE-2024-28182)

cdef int _RESET_BURST = RESET_BURST
cdef double _RESET_WINDOW = RESET_WINDOW
cdef int _FLOOD_LIMIT = FLOOD_LIMIT
cdef double _FLOOD_WINDOW = FLOOD_WINDOW
cdef tuple _FLOODS = ("settings_flood", "ping_flood", "empty_data_flood")


class NgError(Exception):
    """An nghttp2 call failed in a way the caller cannot recover from (out of memory, a broken invariant)."""


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class _Stream:
    """One request stream: what waits to be sent on it."""

    cdef int32_t sid
    cdef object queue  # deque of bytes
    cdef Py_ssize_t offset  # bytes of queue[0] already sent
    cdef Py_ssize_t queued
    cdef bint responding  # the response HEADERS went out with a data provider
    cdef bint ended  # the body is complete once the queue is sent
    cdef bint deferred  # the provider returned NGHTTP2_ERR_DEFERRED: resume it when data arrives
    cdef bint high  # queued went over high_water
    cdef object trailers  # list of fields sent after the body, or None

    def __cinit__(self, int32_t sid):
        self.sid = sid
        self.queue = deque()
        self.trailers = None


cdef class NgServerSession:
    """One downstream HTTP/2 connection, server side (see the module docstring for the events)."""

    cdef nghttp2_session *session
    cdef list events
    cdef dict streams  # sid -> _Stream, the request streams open in nghttp2 and known to the caller
    cdef list block  # the fields of the header block being received
    cdef Py_ssize_t block_bytes  # its decoded size (RFC 9113 §6.5.2: name + value + 32 per field)
    cdef bint block_known  # it belongs to a stream of self.streams
    cdef object out  # bytes to send before nghttp2's (our SETTINGS, a GOAWAY nghttp2 could not send)
    cdef bint settings_patched
    cdef bint dead  # nghttp2 failed fatally: nothing more is read or sent (but self.out)
    cdef bint goaway_sent
    cdef int32_t highest  # the highest stream id the client opened (or tried to, after our GOAWAY)
    cdef list late  # streams opened after our GOAWAY, to refuse
    # input framing (see _scan)
    cdef Py_ssize_t magic  # bytes of the client preface not read yet
    cdef Py_ssize_t skip  # payload bytes of the current frame still to pass
    cdef Py_ssize_t need  # bytes held back (a split frame header, or a whole candidate frame) once complete
    cdef bytearray hold
    cdef bint in_block
    cdef int fatal  # nghttp2's fatal error code, 0: none
    cdef int32_t poison  # the stream whose HEADERS depended on itself: reset, never a request
    cdef object error  # an exception raised inside a callback, re-raised by receive()
    cdef list _drained
    cdef readonly int max_streams
    cdef readonly Py_ssize_t max_header_bytes
    cdef readonly Py_ssize_t high_water
    cdef readonly Py_ssize_t low_water
    cdef readonly object abuse  # the kind of abuse the connection was closed for, or None
    # abuse accounting (SPEC §9.1)
    cdef readonly long opened  # request streams the client opened
    cdef readonly long early_resets  # of those, reset by the client before our END_STREAM
    cdef double reset_window
    cdef int reset_count
    cdef double flood_window
    cdef int floods[3]

    def __cinit__(self, int max_concurrent_streams=100, Py_ssize_t max_header_bytes=65536,
                  int initial_window=1 << 20, int connection_window=16 << 20, int max_frame_size=16384,
                  Py_ssize_t high_water=256 * 1024, Py_ssize_t low_water=64 * 1024):
        cdef nghttp2_session_callbacks *cbs
        cdef nghttp2_option *opt
        cdef nghttp2_settings_entry iv[4]
        cdef int rv, niv
        if max_concurrent_streams < 1 or max_header_bytes < 1 or not 65535 <= connection_window < 2**31 \
                or not 0 <= initial_window < 2**31 or not 16384 <= max_frame_size < 2**24:
            raise ValueError("HTTP/2 settings out of range")
        self.events = []
        self.streams = {}
        self.block = []
        self._drained = []
        self.late = []
        self.magic = 24
        self.hold = bytearray()
        self.out = b""
        self.max_streams = max_concurrent_streams
        self.max_header_bytes = max_header_bytes
        self.high_water = high_water
        self.low_water = low_water
        self.floods[0] = self.floods[1] = self.floods[2] = 0
        if nghttp2_session_callbacks_new(&cbs) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, _on_begin_frame)
        nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(cbs, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _on_stream_close)
        if nghttp2_option_new(&opt) != 0:
            nghttp2_session_callbacks_del(cbs)
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(opt, 1)  # consume(): backpressure to the client
        nghttp2_option_set_no_closed_streams(opt, 1)  # no RFC 7540 priority tree to keep closed streams for
        nghttp2_option_set_max_continuations(opt, MAX_CONTINUATIONS)
        # SETTINGS / PING answers queued while the client does not read: bounded above our flood limit, which
        # closes the connection first
        nghttp2_option_set_max_outbound_ack(opt, 2 * _FLOOD_LIMIT + 64)
        # our rapid-reset rule (SPEC §9.1, ENHANCE_YOUR_CALM) applies first; nghttp2's bucket is a backstop
        nghttp2_option_set_stream_reset_rate_limit(opt, 4 * _RESET_BURST, 2 * _RESET_BURST)
        rv = nghttp2_session_server_new2(&self.session, cbs, <void *>self, opt)
        nghttp2_option_del(opt)
        nghttp2_session_callbacks_del(cbs)
        if rv != 0:
            raise MemoryError()
        # SETTINGS (§9.1): no push, the header list limit, the stream window; MAX_CONCURRENT_STREAMS is added to
        # the frame's bytes in data_to_send (see the module docstring); ENABLE_CONNECT_PROTOCOL is not sent
        iv[0].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[0].value = 0
        iv[1].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[1].value = <uint32_t>max_header_bytes
        iv[2].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[2].value = <uint32_t>initial_window
        niv = 3
        if max_frame_size != 16384:
            iv[3].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
            iv[3].value = <uint32_t>max_frame_size
            niv = 4
        _check(nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, niv))
        if connection_window != 65535:
            _check(nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0, connection_window))

    def __dealloc__(self):
        if self.session is not NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    # -- in ---------------------------------------------------------------------------------------------------
    def receive(self, data):
        """Process bytes received from the client; the events they produced, in order."""
        cdef const uint8_t[::1] view
        cdef list events
        if self.dead:
            return []
        if type(data) is bytes:
            self._scan(<const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        else:
            view = data
            if view.shape[0]:
                self._scan(&view[0], view.shape[0])
        if self.late and not self.dead:
            for sid in self.late:
                nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_REFUSED_STREAM)
            self.late = []
        events = self.events
        self.events = []
        if self.error is not None:
            error, self.error = self.error, None
            self.dead = True
            raise error
        if self.fatal:
            self._fatal(self.fatal, events)
        return events

    # Frames whose error RFC 9113 makes a stream error where nghttp2 makes it a connection error: a stream's
    # WINDOW_UPDATE with a 0 increment (§6.9), a PRIORITY frame of the wrong length (§6.3), a PRIORITY or HEADERS
    # frame making a stream depend on itself (§5.3.1). _scan follows the frame boundaries of the input (cheaply: headers only, payloads
    # skipped) and takes those frames out, answering them with RST_STREAM; everything else goes to nghttp2
    # unchanged. Inside a header block they stay (a connection error there).
    cdef void _scan(self, const uint8_t *p, Py_ssize_t n):
        cdef Py_ssize_t i = 0, start = 0, take, length
        cdef const uint8_t *h
        cdef bytearray hold
        while i < n and not self.dead and not self.fatal:
            if self.magic or self.skip:  # the client preface (nghttp2 checks it), a frame's payload
                take = min(self.magic + self.skip, n - i)
                i += take
                if self.magic:
                    self.magic -= take
                else:
                    self.skip -= take
                continue
            if self.need:  # a frame header, or a whole candidate frame, split across reads
                hold = self.hold
                take = min(self.need - len(hold), n - i)
                hold += (<const char *>p)[i : i + take]
                i += take
                start = i
                if len(hold) < self.need:
                    continue
                h = <const uint8_t *>(<char *>hold)
                length = (h[0] << 16) | (h[1] << 8) | h[2]
                if len(hold) == 9 and length and _candidate(h, length, self.in_block):
                    self.need = 9 + length  # now its payload
                    continue
                self.need = 0
                self.hold = bytearray()
                if not _candidate(h, length, self.in_block):
                    self._track(h)
                    self.skip = length
                    self._feed(h, 9)
                elif self._decide(h, length):
                    self._cut(h, length)
                else:
                    self._feed(h, 9 + length)
                self._track(h)
                continue
            if n - i < 9:
                self._feed(p + start, i - start)
                self.hold = bytearray((<const char *>p)[i:n])
                self.need = 9
                start = n
                break
            h = p + i
            length = (h[0] << 16) | (h[1] << 8) | h[2]
            if not _candidate(h, length, self.in_block):
                self._track(h)
                i += 9
                self.skip = length
                continue
            self._feed(p + start, i - start)  # what precedes it is processed first (the streams it opened)
            start = i
            if n - i < 9 + length:
                self.hold = bytearray((<const char *>p)[i:n])
                self.need = 9 + length
                start = n
                break
            if self._decide(h, length):
                self._cut(h, length)
                start = i + 9 + length
            self._track(h)
            i += 9 + length
        if start < n:
            self._feed(p + start, n - start)

    cdef inline void _track(self, const uint8_t *h):
        """Whether the frames that follow are inside a header block (HEADERS / PUSH_PROMISE without END_HEADERS,
        until a CONTINUATION with it)."""
        if h[3] == NGHTTP2_HEADERS or h[3] == NGHTTP2_PUSH_PROMISE or h[3] == NGHTTP2_CONTINUATION:
            self.in_block = not (h[4] & NGHTTP2_FLAG_END_HEADERS)

    cdef void _feed(self, const uint8_t *p, Py_ssize_t n):
        cdef Py_ssize_t rv
        if n <= 0 or self.dead or self.fatal:
            return
        rv = nghttp2_session_mem_recv(self.session, p, <size_t>n)
        if rv < 0:
            self.fatal = <int>rv

    cdef bint _decide(self, const uint8_t *h, Py_ssize_t length):
        """True when this candidate frame (whole at ``h``) is one to take out."""
        cdef int32_t sid = ((h[5] & 0x7F) << 24) | (h[6] << 16) | (h[7] << 8) | h[8]
        cdef uint32_t word
        cdef Py_ssize_t at
        if h[3] == NGHTTP2_HEADERS:
            at = 10 if h[4] & NGHTTP2_FLAG_PADDED else 9
            if length < at - 9 + 5:
                return False  # nghttp2 finds it too short
            word = ((h[at] & 0x7F) << 24) | (h[at + 1] << 16) | (h[at + 2] << 8) | h[at + 3]
            return <int32_t>word == sid
        if h[3] == NGHTTP2_PRIORITY:
            if length != 5:
                return True
            word = ((h[9] & 0x7F) << 24) | (h[10] << 16) | (h[11] << 8) | h[12]
            return <int32_t>word == sid
        word = ((h[9] & 0x7F) << 24) | (h[10] << 16) | (h[11] << 8) | h[12]
        # an idle stream's WINDOW_UPDATE stays a connection error (§5.1): nghttp2 says so
        return word == 0 and sid <= self.highest

    cdef void _cut(self, const uint8_t *h, Py_ssize_t length):
        """Answer the candidate frame at ``h`` that _decide took out."""
        cdef int32_t sid = ((h[5] & 0x7F) << 24) | (h[6] << 16) | (h[7] << 8) | h[8]
        cdef uint32_t code
        cdef bytearray copy
        cdef Py_ssize_t at
        if h[3] == NGHTTP2_HEADERS:
            # its header block must still be decoded (the HPACK context is shared): nghttp2 gets it without the
            # dependency, and _on_begin_headers resets the stream
            copy = bytearray((<const char *>h)[: 9 + length])
            at = 10 if h[4] & NGHTTP2_FLAG_PADDED else 9
            copy[at] = copy[at + 1] = copy[at + 2] = copy[at + 3] = 0
            self.poison = sid
            self._feed(<const uint8_t *>(<char *>copy), 9 + length)
            self.poison = 0
            return
        code = NGHTTP2_PROTOCOL_ERROR if h[3] != NGHTTP2_PRIORITY or length == 5 else NGHTTP2_FRAME_SIZE_ERROR
        if nghttp2_session_get_stream_local_close(self.session, sid) >= 0:
            nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, sid, code)  # an open stream
        elif sid > self.highest and h[3] == NGHTTP2_PRIORITY:
            # a PRIORITY frame may name an idle stream (nghttp2 would not reset a stream it thinks idle)
            self.out += _rst_frame(sid, code)
        # a closed stream: the frame is ignored

    cdef void _fatal(self, int rv, list events):
        """nghttp2 gave up on the connection without queueing a GOAWAY: send ours (RFC 9113 §5.4.1)."""
        cdef uint32_t code = NGHTTP2_PROTOCOL_ERROR
        cdef int32_t last
        if rv == NGHTTP2_ERR_FLOODED or rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
            code = NGHTTP2_ENHANCE_YOUR_CALM
            if self.abuse is None:
                self.abuse = "header_block" if rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS else "outbound_flood"
                events.append((ABUSE, 0, self.abuse, code))
        elif rv != NGHTTP2_ERR_BAD_CLIENT_MAGIC:
            code = NGHTTP2_INTERNAL_ERROR
        last = 0 if rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC else nghttp2_session_get_last_proc_stream_id(self.session)
        self.out = self._pending() + _goaway_frame(last, code)
        self.dead = True

    cdef bytes _pending(self):
        """What nghttp2 has queued, serialized (before a GOAWAY of ours)."""
        cdef const uint8_t *ptr
        cdef Py_ssize_t n
        chunks = [self.out]
        while True:
            n = nghttp2_session_mem_send(self.session, &ptr)
            if n <= 0:
                break
            chunks.append(PyBytes_FromStringAndSize(<const char *>ptr, n))
        return b"".join(chunks)

    # -- out --------------------------------------------------------------------------------------------------
    def want_read(self):
        return not self.dead and nghttp2_session_want_read(self.session) != 0

    def want_write(self):
        if self.out:
            return True
        return not self.dead and nghttp2_session_want_write(self.session) != 0

    def data_to_send(self):
        """Every byte ready to be written (frames as the client's windows allow)."""
        cdef const uint8_t *ptr
        cdef Py_ssize_t n
        cdef bytes first, out
        cdef list chunks
        if self.dead:
            out, self.out = self.out, b""
            return out
        n = nghttp2_session_mem_send(self.session, &ptr)
        if n < 0:
            raise NgError(nghttp2_strerror(<int>n).decode())
        first = PyBytes_FromStringAndSize(<const char *>ptr, n) if n else b""
        if not self.settings_patched:
            first = self._patch_settings(first)
        chunks = None
        while n > 0:
            n = nghttp2_session_mem_send(self.session, &ptr)
            if n < 0:
                raise NgError(nghttp2_strerror(<int>n).decode())
            if n:
                if chunks is None:
                    chunks = [first]
                chunks.append(PyBytes_FromStringAndSize(<const char *>ptr, n))
        if chunks is not None:
            first = b"".join(chunks)
        if self.out:
            first = self.out + first
            self.out = b""
        return first

    cdef bytes _patch_settings(self, bytes data):
        """Our first SETTINGS frame with SETTINGS_MAX_CONCURRENT_STREAMS added (nghttp2 was given none)."""
        cdef Py_ssize_t length
        if PyBytes_GET_SIZE(data) < 9 or data[3] != NGHTTP2_SETTINGS:
            return data
        self.settings_patched = True
        length = (data[0] << 16) | (data[1] << 8) | data[2]
        entry = (NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS).to_bytes(2, "big") + self.max_streams.to_bytes(4, "big")
        return (length + 6).to_bytes(3, "big") + data[3:9] + entry + data[9:]

    def sent_events(self):
        """Events produced while sending (CLOSED once a stream's END_STREAM or RST_STREAM went out); receive()
        returns them too when called first."""
        events = self.events
        if events:
            self.events = []
        return events

    def drained(self):
        """Streams whose queue went from above high_water to low_water or less since the last call."""
        out = self._drained
        if out:
            self._drained = []
        return out

    # -- responses --------------------------------------------------------------------------------------------
    def submit_response(self, int32_t sid, list fields, bint end=False):
        """Response HEADERS on ``sid`` (a 1xx is sent as an interim response). ``end``: no body. False when the
        stream is gone (closed, reset)."""
        cdef _Stream st = self.streams.get(sid)
        cdef nghttp2_data_provider prd
        cdef nghttp2_nv *nva
        cdef Py_ssize_t n
        cdef int rv
        if st is None or st.responding:
            return False
        n = len(fields)
        nva = _nv_array(fields)
        try:
            status = fields[0][1] if n and fields[0][0] == b":status" else b""
            if status[:1] == b"1":
                rv = nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, sid, NULL, nva, n, NULL)
            elif end:
                st.responding = st.ended = True
                rv = nghttp2_submit_response(self.session, sid, nva, n, NULL)
            else:
                st.responding = True
                prd.source.ptr = <void *>st
                prd.read_callback = _read_body
                rv = nghttp2_submit_response(self.session, sid, nva, n, &prd)
        finally:
            free(nva)
        _check(rv)
        return True

    def send_data(self, int32_t sid, data, bint end=False):
        """Queue response body bytes on ``sid`` (after submit_response(..., end=False)); ``end``: the body is
        complete. The bytes now waiting on the stream, -1 when the stream is gone."""
        cdef _Stream st = self.streams.get(sid)
        cdef Py_ssize_t n
        if st is None or not st.responding or st.ended:
            return -1
        if type(data) is not bytes:
            data = bytes(data)
        n = PyBytes_GET_SIZE(data)
        if n:
            st.queue.append(data)
            st.queued += n
            if st.queued > self.high_water:
                st.high = True
        if end:
            st.ended = True
        if st.deferred and (n or end):
            st.deferred = False
            _check(nghttp2_session_resume_data(self.session, sid))
        return st.queued

    def submit_trailers(self, int32_t sid, list fields):
        """End the response body on ``sid`` with these trailer fields (after what is queued)."""
        cdef _Stream st = self.streams.get(sid)
        if st is None or not st.responding or st.ended:
            return False
        st.trailers = fields
        st.ended = True
        if st.deferred:
            st.deferred = False
            _check(nghttp2_session_resume_data(self.session, sid))
        return True

    def queued(self, int32_t sid):
        cdef _Stream st = self.streams.get(sid)
        return -1 if st is None else st.queued

    def reset(self, int32_t sid, uint32_t code=NGHTTP2_INTERNAL_ERROR):
        """RST_STREAM(code) on ``sid``; what was queued on it is dropped."""
        cdef _Stream st = self.streams.get(sid)
        if st is not None:
            st.queue.clear()
            st.queued = 0
            st.ended = True
            st.trailers = None
        rv = nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, sid, code)
        return rv == 0

    def consume(self, int32_t sid, Py_ssize_t n):
        """Give ``n`` received DATA bytes of ``sid`` back to the client's windows (WINDOW_UPDATE when due)."""
        if n > 0 and not self.dead:
            _check(nghttp2_session_consume(self.session, sid, <size_t>n))

    def remote_window(self, int32_t sid):
        """The bytes the client lets us send on ``sid`` now (its stream and connection windows); -1: no stream."""
        cdef int32_t stream_window = nghttp2_session_get_stream_remote_window_size(self.session, sid)
        cdef int32_t conn_window = nghttp2_session_get_remote_window_size(self.session)
        if stream_window < 0:
            return -1
        return min(stream_window, conn_window)

    def goaway(self, uint32_t code=NGHTTP2_NO_ERROR, last_sid=None):
        """GOAWAY naming ``last_sid`` (default: the last stream processed): no new streams; open ones finish
        (graceful shutdown, idle timeout). With an error code the connection ends once it is sent."""
        cdef int32_t last = nghttp2_session_get_last_proc_stream_id(self.session) if last_sid is None else last_sid
        if self.dead:
            return
        self.goaway_sent = True
        if code == NGHTTP2_NO_ERROR:
            _check(nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, last, code, NULL, 0))
        else:
            _check(nghttp2_session_terminate_session(self.session, code))

    def shutdown_notice(self):
        """The first GOAWAY of a two-step shutdown (last stream 2^31-1: streams in flight are still accepted)."""
        if not self.dead:
            _check(nghttp2_submit_shutdown_notice(self.session))

    @property
    def open_streams(self):
        return len(self.streams)

    @property
    def last_stream_id(self):
        return nghttp2_session_get_last_proc_stream_id(self.session)

    @property
    def remote_max_frame_size(self):
        return nghttp2_session_get_remote_settings(self.session, NGHTTP2_SETTINGS_MAX_FRAME_SIZE)

    # -- abuse (SPEC §9.1) ------------------------------------------------------------------------------------
    cdef void _calm(self, str kind):
        """GOAWAY(ENHANCE_YOUR_CALM); nghttp2 reads nothing more and stops sending once it is out."""
        if self.abuse is not None:
            return
        self.abuse = kind
        nghttp2_session_terminate_session(self.session, NGHTTP2_ENHANCE_YOUR_CALM)
        self.events.append((ABUSE, 0, kind, NGHTTP2_ENHANCE_YOUR_CALM))

    cdef bint _flood(self, int kind):
        """Count a SETTINGS (0), PING (1) or empty DATA (2) frame; True when the connection is closed for it."""
        cdef double now = _now()
        if now - self.flood_window > _FLOOD_WINDOW:
            self.flood_window = now
            self.floods[0] = self.floods[1] = self.floods[2] = 0
        self.floods[kind] += 1
        if self.floods[kind] > _FLOOD_LIMIT:
            self._calm(_FLOODS[kind])
            return True
        return False

    cdef void _client_reset(self, int32_t sid):
        """A client RST_STREAM on an open request stream whose response did not end: rapid reset accounting."""
        cdef double now
        if sid not in self.streams or nghttp2_session_get_stream_local_close(self.session, sid) == 1:
            return  # a reset after the response ended costs us nothing
        self.early_resets += 1
        now = _now()
        if now - self.reset_window > _RESET_WINDOW:
            self.reset_window = now
            self.reset_count = 0
        self.reset_count += 1
        if self.reset_count > _RESET_BURST:
            self._calm("rapid_reset")
        elif self.early_resets > 2 * self.max_streams and 2 * self.early_resets > self.opened:
            self._calm("reset_ratio")


# -- helpers ----------------------------------------------------------------------------------------------------
cdef inline int _check(int rv) except -1:
    if rv < 0:
        raise NgError(nghttp2_strerror(rv).decode())
    return 0


cdef nghttp2_nv *_nv_array(list fields) except NULL:
    """The fields as nghttp2_nv pointing into the bytes objects (nghttp2 copies them when submitted)."""
    cdef Py_ssize_t n = len(fields), i
    cdef nghttp2_nv *nva = <nghttp2_nv *>malloc((n if n else 1) * sizeof(nghttp2_nv))
    cdef bytes name, value
    if nva is NULL:
        raise MemoryError()
    try:
        for i in range(n):
            name, value = fields[i]
            nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
            nva[i].namelen = PyBytes_GET_SIZE(name)
            nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
            nva[i].valuelen = PyBytes_GET_SIZE(value)
            nva[i].flags = NGHTTP2_NV_FLAG_NONE
    except BaseException:
        free(nva)
        raise
    return nva


cdef inline bint _candidate(const uint8_t *h, Py_ssize_t length, bint in_block) noexcept:
    """Outside a header block: a stream's PRIORITY (of a readable size), 4-byte WINDOW_UPDATE, or HEADERS with a
    priority."""
    if in_block or not (h[5] & 0x7F or h[6] or h[7] or h[8]) or length > 16384:
        return False
    return ((h[3] == NGHTTP2_WINDOW_UPDATE and length == 4) or h[3] == NGHTTP2_PRIORITY
            or (h[3] == NGHTTP2_HEADERS and h[4] & NGHTTP2_FLAG_PRIORITY))


cdef bytes _rst_frame(int32_t sid, uint32_t code):
    return b"\x00\x00\x04\x03\x00" + (sid & 0x7FFFFFFF).to_bytes(4, "big") + (<object>code).to_bytes(4, "big")


cdef bytes _goaway_frame(int32_t last, uint32_t code):
    return (b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + (last & 0x7FFFFFFF).to_bytes(4, "big")
            + (<object>code).to_bytes(4, "big"))


# -- nghttp2 callbacks (the GIL is held: nghttp2 is only entered from the methods above) --------------------------
cdef int _on_begin_frame(nghttp2_session *session, const nghttp2_frame_hd *hd, void *user_data) noexcept:
    cdef NgServerSession self = <NgServerSession>user_data
    cdef int32_t sid = hd.stream_id
    if hd.type == NGHTTP2_HEADERS and sid & 1 and sid > self.highest:
        self.highest = sid
        if self.goaway_sent and sid > nghttp2_session_get_last_proc_stream_id(session):
            # a stream opened after our GOAWAY, beyond its last stream id: nghttp2 ignores it; the client learns at
            # once that it was not processed (RFC 9113 §6.8) and may retry it elsewhere. Reset once nghttp2 has
            # seen the frame (it drops a reset of a stream it thinks idle).
            try:
                self.late.append(sid)
            except BaseException as e:
                self.error = e
                return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef NgServerSession self = <NgServerSession>user_data
    cdef int32_t sid = frame.hd.stream_id
    try:
        self.block = []
        self.block_bytes = 0
        if frame.hd.type != NGHTTP2_HEADERS:
            self.block_known = False
            return 0
        if sid == self.poison:  # RFC 9113 §5.3.1: a stream depending on itself is a stream error
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_PROTOCOL_ERROR)
            self.block_known = False
            return 0
        if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
            self.opened += 1
            if len(self.streams) >= self.max_streams:
                # §9.1: this stream only (its block is still decoded: the HPACK context is shared)
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_REFUSED_STREAM)
                self.block_known = False
                return 0
            self.streams[sid] = _Stream(sid)
        self.block_known = sid in self.streams
        return 0
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                    const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data) noexcept:
    cdef NgServerSession self = <NgServerSession>user_data
    if self.abuse is not None:
        return 0  # nghttp2 ignores the rest of the input
    self.block_bytes += <Py_ssize_t>(namelen + valuelen + 32)
    try:
        if self.block_bytes > self.max_header_bytes:
            # the decoded list is bounded by max_header_bytes, whatever the block's size on the wire (HPACK bomb)
            self._calm("header_block")
            return 0
        if self.block_known:
            self.block.append((PyBytes_FromStringAndSize(<const char *>name, namelen),
                               PyBytes_FromStringAndSize(<const char *>value, valuelen)))
        return 0
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data) noexcept:
    cdef NgServerSession self = <NgServerSession>user_data
    cdef int32_t sid = frame.hd.stream_id
    cdef uint8_t kind = frame.hd.type
    cdef uint8_t flags = frame.hd.flags
    try:
        if kind == NGHTTP2_DATA:
            if flags & NGHTTP2_FLAG_END_STREAM:
                if sid in self.streams:
                    self.events.append((END, sid, None, None))
            elif frame.hd.length == 0:
                self._flood(2)
        elif kind == NGHTTP2_HEADERS:
            if self.block_known and self.abuse is None:
                if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
                    self.events.append((REQUEST, sid, self.block, bool(flags & NGHTTP2_FLAG_END_STREAM)))
                else:
                    self.events.append((TRAILERS, sid, self.block, None))
            self.block = []
        elif kind == NGHTTP2_RST_STREAM:
            if sid in self.streams:
                self.events.append((RESET, sid, frame.rst_stream.error_code, None))
                self._client_reset(sid)
        elif kind == NGHTTP2_SETTINGS:
            if flags & NGHTTP2_FLAG_ACK:
                self.events.append((ACKED, 0, None, None))
            else:
                self._flood(0)
        elif kind == NGHTTP2_PING:
            if not flags & NGHTTP2_FLAG_ACK:
                self._flood(1)
        elif kind == NGHTTP2_GOAWAY:
            self.events.append((GOAWAY, frame.goaway.last_stream_id, frame.goaway.error_code,
                                PyBytes_FromStringAndSize(<const char *>frame.goaway.opaque_data,
                                                          frame.goaway.opaque_data_len)))
        return 0
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t n,
                        void *user_data) noexcept:
    cdef NgServerSession self = <NgServerSession>user_data
    try:
        if sid in self.streams:
            self.events.append((DATA, sid, PyBytes_FromStringAndSize(<const char *>data, n), None))
        else:
            nghttp2_session_consume(session, sid, n)  # a refused stream's: nobody will consume it
        return 0
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _on_stream_close(nghttp2_session *session, int32_t sid, uint32_t code, void *user_data) noexcept:
    cdef NgServerSession self = <NgServerSession>user_data
    try:
        if self.streams.pop(sid, None) is not None:
            self.events.append((CLOSED, sid, code, None))
        return 0
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE


cdef ssize_t _read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *data_flags,
                        nghttp2_data_source *source, void *user_data) noexcept:
    """The data provider of a response: what is queued, up to ``length``; DEFERRED when nothing is yet."""
    cdef _Stream st = <_Stream>source.ptr
    cdef NgServerSession self = <NgServerSession>user_data
    cdef Py_ssize_t n = 0, avail, take
    cdef bytes piece
    cdef nghttp2_nv *nva
    cdef int rv
    try:
        queue = st.queue
        while n < <Py_ssize_t>length and queue:
            piece = queue[0]
            avail = PyBytes_GET_SIZE(piece) - st.offset
            take = min(avail, <Py_ssize_t>length - n)
            memcpy(buf + n, PyBytes_AS_STRING(piece) + st.offset, take)
            n += take
            if take == avail:
                queue.popleft()
                st.offset = 0
            else:
                st.offset += take
        st.queued -= n
        if st.high and st.queued <= self.low_water:
            st.high = False
            self._drained.append(sid)
        if st.queued == 0:
            if st.ended:
                data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
                if st.trailers is not None:
                    data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                    nva = _nv_array(st.trailers)
                    rv = nghttp2_submit_trailer(session, sid, nva, len(st.trailers))
                    free(nva)
                    if rv != 0:
                        return NGHTTP2_ERR_CALLBACK_FAILURE
            elif n == 0:
                st.deferred = True
                return NGHTTP2_ERR_DEFERRED
        return n
    except BaseException as e:
        self.error = e
        return NGHTTP2_ERR_CALLBACK_FAILURE
