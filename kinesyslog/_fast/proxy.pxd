# Declarations of proxy.pyx for other modules: udp.pyx writes IPv4 source addresses the
# way address_text() does.

from libc.stdint cimport uint8_t


cdef Py_ssize_t format_ipv4(const uint8_t* a, char* out) noexcept
