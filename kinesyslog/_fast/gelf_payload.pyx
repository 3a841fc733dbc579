# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""GELF 1.1 UDP payloads: plain, zlib or gzip, decompressed with a hard cap on the output
(docs/contract.md §4.5). Sans-IO."""

import zlib

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_CheckExact, PyBytes_FromStringAndSize


def decode_payload(payload, Py_ssize_t max_size) -> tuple:
    """(message, status) of a UDP payload: gzip (1f 8b), zlib (78, valid header check) or
    plain. Decompression stops after max_size + 1 output bytes, whatever the input claims.

    status is "ok"; "truncated" when the message was cut to max_size bytes (it is still
    delivered); or "corrupt" with message None when compressed data is invalid or ends
    early. Bytes after the end of a compressed stream are ignored.
    """
    cdef Py_buffer view
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef int wbits = 0
    if max_size < 1:
        raise ValueError("max_size must be at least 1")
    PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>view.buf
        n = view.len
        if n >= 2 and p[0] == 0x1F and p[1] == 0x8B:
            wbits = 16 + 15
        elif n >= 2 and p[0] == 0x78 and (p[0] * 256 + p[1]) % 31 == 0:
            wbits = 15
        if wbits == 0:
            if n > max_size:
                return PyBytes_FromStringAndSize(<const char*>p, max_size), "truncated"
            if PyBytes_CheckExact(payload):
                return payload, "ok"
            return PyBytes_FromStringAndSize(<const char*>p, n), "ok"
    finally:
        PyBuffer_Release(&view)
    decompressor = zlib.decompressobj(wbits)
    try:
        message = decompressor.decompress(payload, max_size + 1)
    except zlib.error:
        return None, "corrupt"
    if len(message) > max_size:
        return message[:max_size], "truncated"
    if not decompressor.eof:
        return None, "corrupt"
    return message, "ok"
