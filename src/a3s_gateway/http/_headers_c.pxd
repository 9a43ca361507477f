# Compiled signatures of a3s_gateway/http/_headers_py.py (Cython pure mode).
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy

cdef bint _COMPILED

@cython.locals(total=Py_ssize_t, n=Py_ssize_t, part=bytes, out=bytes, p="char *")
cdef bytes _join(list parts)

cdef bytes _CRLF, _COLON
cdef int _OTHER, _HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _KEEP_ALIVE, _PROXY_CONNECTION, _PROXY_AUTHENTICATE, _PROXY_AUTHORIZATION, _TE, _TRAILER, _UPGRADE, _EXPECT, _X_FORWARDED_FOR, _X_FORWARDED_PROTO, _X_FORWARDED_HOST, _X_FORWARDED_PORT, _X_REAL_IP, _X_REQUEST_ID, _CONTENT_TYPE, _USER_AGENT, _TRACEPARENT, _TRACESTATE, _B3, _DROP_W3C, _DROP_B3, _DROP_B3MULTI

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, hid=cython.int, seen_host=bint, seen_proto=bint, seen_fhost=bint,
               seen_port=bint, set_xff=bint, set_real_ip=bint, set_request_id=bint)
cpdef tuple request_head(bytes method, bytes target, list headers, bytes header_ids, tuple connection_tokens,
                         object host_value, bytes orig_host, bytes peer_ip, bytes real_ip, bytes proto, bytes port, bint trusted, bytes framing,
                         int trace_drop=*, int edited=*)

cdef bytes _id_pool
cdef Py_ssize_t _id_pos, _ID_POOL_BYTES

@cython.locals(start=Py_ssize_t)
cdef bytes _new_request_id()

@cython.locals(c=cython.uchar)
cdef bint _visible(bytes value)

cdef bint _listed(bytes name, tuple tokens)

cdef inline bint _passes(int hid)

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, hid=cython.int, total=Py_ssize_t, size=Py_ssize_t, name=bytes, value=bytes,
               out=bytes, p="char *")
cdef bytes _response_head_direct(bytes status_line, list headers, bytes header_ids, bytes framing, bytes extra)

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, hid=cython.int)
cpdef bytes response_head(bytes status_line, list headers, bytes header_ids, tuple connection_tokens,
                          bytes framing, bytes extra)

cpdef bytes interim_head(bytes status_line, list headers, bytes header_ids)
