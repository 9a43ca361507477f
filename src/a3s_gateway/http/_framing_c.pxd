# Compiled types of a3s_gateway/http/_framing_py.py (Cython pure mode).
cimport cython

cdef int _NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE
cdef Py_ssize_t _SMALL_PIECE
cdef bytes _CRLF, _LAST_CHUNK, _CRLF_LAST_CHUNK
cdef frozenset _FORBIDDEN_TRAILERS

cdef class BodyReader:
    cdef public int mode
    cdef public long long remaining
    cdef public object decoder
    cdef public bint done
    cdef public long long received

    @cython.locals(n=Py_ssize_t, rem=cython.longlong, mode=cython.int)
    cpdef tuple feed(self, bytes data)
    @cython.locals(size=Py_ssize_t)
    cpdef list rechunk(self, list pieces)
    cpdef list trailers(self)

cpdef list chunk_frames(list pieces)
cpdef bytes last_chunk(list trailers)
cpdef list allowed_trailers(list trailers)
