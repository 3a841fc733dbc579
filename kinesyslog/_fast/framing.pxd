# Declarations of framing.pyx for other modules: udp.pyx frames datagrams by the same rule.

cdef Py_ssize_t datagram_length(const unsigned char* p, Py_ssize_t n) noexcept
