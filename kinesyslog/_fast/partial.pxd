# cython: language_level=3
"""The buffer a stream framer keeps an unfinished message in, between two feeds.

It grows only as far as the unfinished message needs (up to a limit) and a large one is
freed once the message is complete: thousands of connections that once carried a long line
must not each pin --max-message-size bytes for the rest of their life.
"""

from libc.stdlib cimport free, realloc


cdef enum:
    PARTIAL_MIN_CAPACITY = 256
    PARTIAL_KEEP_CAPACITY = 4096  # kept between messages; larger buffers are freed


cdef struct PartialBuffer:
    unsigned char* data
    Py_ssize_t capacity


cdef inline int partial_reserve(PartialBuffer* buffer, Py_ssize_t size,
                                Py_ssize_t limit) except -1:
    """Makes room for size bytes (size <= limit), keeping the bytes held."""
    cdef Py_ssize_t capacity
    cdef unsigned char* grown
    if size <= buffer.capacity:
        return 0
    capacity = 2 * buffer.capacity
    if capacity < size:
        capacity = size
    if capacity < PARTIAL_MIN_CAPACITY:
        capacity = PARTIAL_MIN_CAPACITY
    if capacity > limit:
        capacity = limit
    grown = <unsigned char*>realloc(buffer.data, capacity)
    if grown == NULL:
        raise MemoryError()
    buffer.data = grown
    buffer.capacity = capacity
    return 0


cdef inline void partial_release(PartialBuffer* buffer, bint everything) noexcept:
    """Frees the memory of an empty buffer when it is large (or always, when everything)."""
    if everything or buffer.capacity > PARTIAL_KEEP_CAPACITY:
        free(buffer.data)
        buffer.data = NULL
        buffer.capacity = 0
