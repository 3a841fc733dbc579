# Declarations only: events.pyx cimports c_gelf_timestamp() to call it from C.

cdef long long c_gelf_timestamp(const unsigned char* data, Py_ssize_t length,
                                long long receive_ms, bint* is_object) noexcept
