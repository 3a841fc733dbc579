# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Base64 (RFC 4648 §4: the standard alphabet, padded, no line breaks) written straight into
a buffer the caller owns: the uploader's request bodies (kinesyslog/sinks.py).

binascii.b2a_base64 encodes about 400 MB/s here and returns a new bytes object that the body
then copies: a quarter of the uploader's CPU. This encoder looks up two output characters per
12 input bits and writes them in place.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    static const char ksy_b64_alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    /* The two characters of every 12-bit value. */
    static unsigned char ksy_b64_pairs[4096][2];

    static void ksy_b64_init(void) {
        for (int i = 0; i < 4096; i++) {
            ksy_b64_pairs[i][0] = (unsigned char)ksy_b64_alphabet[i >> 6];
            ksy_b64_pairs[i][1] = (unsigned char)ksy_b64_alphabet[i & 63];
        }
    }

    /* Writes the base64 of src[0:n] to out, which has room for 4 * ((n + 2) / 3) bytes;
       returns that length. */
    static Py_ssize_t ksy_b64_encode(const unsigned char *src, Py_ssize_t n,
                                     unsigned char *out) {
        unsigned char *o = out;
        Py_ssize_t i = 0;
        uint32_t v;
        for (; n - i >= 3; i += 3, o += 4) {
            v = ((uint32_t)src[i] << 16) | ((uint32_t)src[i + 1] << 8) | src[i + 2];
            memcpy(o, ksy_b64_pairs[v >> 12], 2);
            memcpy(o + 2, ksy_b64_pairs[v & 0xFFF], 2);
        }
        if (n - i == 1) {
            v = (uint32_t)src[i] << 16;
            memcpy(o, ksy_b64_pairs[v >> 12], 2);
            o[2] = '=';
            o[3] = '=';
            o += 4;
        } else if (n - i == 2) {
            v = ((uint32_t)src[i] << 16) | ((uint32_t)src[i + 1] << 8);
            memcpy(o, ksy_b64_pairs[v >> 12], 2);
            o[2] = (unsigned char)ksy_b64_alphabet[(v >> 6) & 63];
            o[3] = '=';
            o += 4;
        }
        return o - out;
    }
    """
    void ksy_b64_init() noexcept
    Py_ssize_t ksy_b64_encode(const unsigned char* src, Py_ssize_t n,
                              unsigned char* out) noexcept nogil


ksy_b64_init()


def encoded_length(Py_ssize_t size) -> int:
    """The length of the base64 of size bytes."""
    if size < 0:
        raise ValueError("size must not be negative")
    return 4 * ((size + 2) // 3)


def encode_into(data, bytearray out, Py_ssize_t at) -> int:
    """Writes the base64 of data into out from position at on; returns the position after
    it. ValueError, with out unchanged, if it does not fit."""
    cdef Py_buffer view
    cdef Py_ssize_t written
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if at < 0 or PyByteArray_GET_SIZE(out) - at < 4 * ((view.len + 2) // 3):
            raise ValueError("the base64 does not fit in the buffer")
        written = ksy_b64_encode(<const unsigned char*>view.buf, view.len,
                                 <unsigned char*>PyByteArray_AS_STRING(out) + at)
    finally:
        PyBuffer_Release(&view)
    return at + written
