# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Syslog datagrams from a UDP socket straight into the ring, a batch per system call.

DatagramReceiver.receive() makes one recvmmsg(2) call on a UDP socket and, for each datagram,
with no Python object per datagram:

* frames it as framing.frame_datagram does (RFC 5426 §3.1, contract §4.1): one trailing LF,
  CR LF or NUL removed, then cut at max_message_size; empty ones are only counted;
* takes the text of its source address as proxy.address_text gives it for the address
  Python's recvfrom would report (IPv4 and IPv4-mapped IPv6 as dotted quads, formatted here;
  other IPv6 through address_text itself, cached);
* appends it to the ring (Ring.append_entry), and publishes the batch once at the end.

Each receive buffer holds max_message_size + 2 bytes, or UDP_RECV_SIZE when that is less.
A datagram that fits is framed whole, so a line end just past the limit is still removed
before the cut, as frame_datagram does. A longer one (MSG_TRUNC) is cut at max_message_size
whatever it ends with: removing two bytes at most would have left it too long anyway. With
UDP_RECV_SIZE buffers the kernel cuts as it did for recvfrom_into(UDP_RECV_SIZE), and what
was received is framed as before.

Apart from that one system call this module is sans-IO: the receive time is passed in.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy
from posix.time cimport timespec
from posix.uio cimport iovec

from kinesyslog._fast.framing cimport datagram_length
from kinesyslog._fast.proxy cimport format_ipv4
from kinesyslog._fast.ring cimport Ring, ksy_entry_size

from kinesyslog._fast.proxy import address_text
from kinesyslog.constants import MAX_SOURCE_LENGTH, UDP_RECV_SIZE


cdef extern from "<errno.h>" nogil:
    int EWOULDBLOCK  # EAGAIN on Linux; POSIX allows either for an empty non-blocking socket


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)
    int AF_INET
    int AF_INET6
    int MSG_TRUNC
    int MSG_DONTWAIT


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        in6_addr sin6_addr


cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, socklen_t size)


cdef Py_ssize_t MAX_SOURCE = MAX_SOURCE_LENGTH
cdef Py_ssize_t RECV_SIZE = UDP_RECV_SIZE

# ::ffff:0:0/96 (RFC 4291 §2.5.5.2): the kernel's form of an IPv4 peer on a dual-stack socket.
cdef const char *V4_MAPPED_PREFIX = b"\0\0\0\0\0\0\0\0\0\0\xff\xff"


cdef class DatagramReceiver:
    """Receive buffers for recvmmsg and the text of the last source, shared by the listener's
    UDP sockets (their datagrams are copied into the ring before receive() returns)."""

    cdef readonly Py_ssize_t max_message_size
    cdef readonly Py_ssize_t batch
    cdef readonly Py_ssize_t buffer_size
    cdef char *_buffers
    cdef iovec *_iovecs
    cdef sockaddr_in6 *_names  # big enough for sockaddr_in as well
    cdef mmsghdr *_headers
    cdef dict _ipv6_sources  # 16 address bytes -> source text
    cdef Py_ssize_t _source_cache_size
    cdef uint8_t _last_address[16]
    cdef Py_ssize_t _last_address_length  # 4 or 16; 0 until the first datagram
    cdef char _source[256]
    cdef uint8_t _source_length

    def __cinit__(self):
        self._buffers = NULL
        self._iovecs = NULL
        self._names = NULL
        self._headers = NULL

    def __init__(self, Py_ssize_t max_message_size, Py_ssize_t batch,
                 Py_ssize_t source_cache_size):
        cdef Py_ssize_t i
        if self._buffers != NULL:
            raise RuntimeError("DatagramReceiver is already initialised")
        if max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        if not 1 <= batch <= 1024:  # UIO_MAXIOV: the kernel takes at most 1024 per call
            raise ValueError(f"batch must be 1..1024, not {batch}")
        if source_cache_size < 1:
            raise ValueError("source_cache_size must be at least 1")
        self.max_message_size = max_message_size
        self.batch = batch
        self.buffer_size = min(max_message_size + 2, RECV_SIZE)
        self._source_cache_size = source_cache_size
        self._ipv6_sources = {}
        self._last_address_length = 0
        # Pages the kernel never writes into are never touched: a batch of short datagrams
        # costs one page per buffer, not batch * buffer_size.
        self._buffers = <char *>malloc(<size_t>(batch * self.buffer_size))
        self._iovecs = <iovec *>calloc(batch, sizeof(iovec))
        self._names = <sockaddr_in6 *>calloc(batch, sizeof(sockaddr_in6))
        self._headers = <mmsghdr *>calloc(batch, sizeof(mmsghdr))
        if (self._buffers == NULL or self._iovecs == NULL or self._names == NULL
                or self._headers == NULL):
            raise MemoryError()
        for i in range(batch):
            self._iovecs[i].iov_base = self._buffers + i * self.buffer_size
            self._iovecs[i].iov_len = <size_t>self.buffer_size
            self._headers[i].msg_hdr.msg_iov = &self._iovecs[i]
            self._headers[i].msg_hdr.msg_iovlen = 1
            self._headers[i].msg_hdr.msg_name = &self._names[i]

    def __dealloc__(self):
        free(self._buffers)
        free(self._iovecs)
        free(self._names)
        free(self._headers)

    def receive(self, int fd, Ring ring not None, int port, int kind,
                long long receive_ms) -> tuple:
        """One recvmmsg call on fd (never blocks); its syslog datagrams framed into the ring.

        Returns (datagrams, messages, message_bytes, empty, truncated, ring_full, drained):
        datagrams read; messages written to the ring and their bytes; datagrams empty after
        framing (not written); messages cut at max_message_size (written or not); messages
        dropped because the ring had no room; and whether the socket had no more datagrams
        (EAGAIN, or fewer than batch). EINTR returns zeros, not drained. Any other error
        raises OSError, with nothing read.
        """
        cdef int received, i, appended, err
        cdef Py_ssize_t messages = 0, message_bytes = 0, empty = 0, truncated = 0
        cdef Py_ssize_t ring_full = 0
        cdef Py_ssize_t max_size = self.max_message_size
        cdef const unsigned char *data
        cdef Py_ssize_t length
        cdef mmsghdr *header
        ring._check_open()
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} out of range 0..65535")
        if not 0 <= kind <= 0xFF:
            raise ValueError(f"kind {kind} out of range 0..255")
        if ksy_entry_size(max_size, MAX_SOURCE) > ring._max_entry:
            # Checked here so that append_entry never answers "never fits" mid-batch.
            raise ValueError(f"{max_size}-byte messages do not fit in this ring "
                             f"(entries up to {ring._max_entry} bytes)")
        for i in range(self.batch):
            self._headers[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
        received = recvmmsg(fd, self._headers, <unsigned int>self.batch, MSG_DONTWAIT, NULL)
        if received < 0:
            err = errno
            if err == EAGAIN or err == EWOULDBLOCK:
                return 0, 0, 0, 0, 0, 0, True
            if err == EINTR:
                return 0, 0, 0, 0, 0, 0, False
            raise OSError(err, os.strerror(err))
        try:
            for i in range(received):
                header = &self._headers[i]
                data = <const unsigned char *>self._iovecs[i].iov_base
                length = datagram_length(data, header.msg_len)
                # MSG_TRUNC: longer than the buffer (never with a RECV_SIZE buffer, which
                # holds the largest datagram), so longer than the limit.
                if length > max_size or header.msg_hdr.msg_flags & MSG_TRUNC:
                    length = max_size
                    truncated += 1
                elif length == 0:
                    empty += 1
                    continue
                self._find_source(&self._names[i])
                appended = ring.append_entry(
                    self._source, self._source_length, <const char *>data, <uint32_t>length,
                    receive_ms, <uint16_t>port, <uint8_t>kind)
                if appended == 1:
                    messages += 1
                    message_bytes += length
                else:  # 0: no room; -1 (never fits) was ruled out above
                    ring_full += 1
        finally:
            ring.publish()
        return (received, messages, message_bytes, empty, truncated, ring_full,
                received < self.batch)

    cdef int _find_source(self, sockaddr_in6 *name) except -1:
        """Sets _source to the text of the sender's address; the last one is remembered."""
        cdef const uint8_t *address
        cdef Py_ssize_t length
        if name.sin6_family == AF_INET6:
            address = name.sin6_addr.s6_addr
            length = 16
        else:
            address = <const uint8_t *>&(<sockaddr_in *>name).sin_addr.s_addr
            length = 4
        if (length == self._last_address_length
                and memcmp(address, self._last_address, length) == 0):
            return 0
        if length == 4:
            self._source_length = <uint8_t>format_ipv4(address, self._source)
        elif memcmp(address, V4_MAPPED_PREFIX, 12) == 0:
            self._source_length = <uint8_t>format_ipv4(address + 12, self._source)
        else:
            self._ipv6_source(address)
        memcpy(self._last_address, address, length)
        self._last_address_length = length
        return 0

    cdef int _ipv6_source(self, const uint8_t *address) except -1:
        """The text address_text gives for the address Python's recvfrom reports (inet_ntop,
        without the scope: bpo-32221), cached by address bytes: RFC 5952 is its business."""
        cdef bytes key = PyBytes_FromStringAndSize(<const char *>address, 16)
        cdef object cached = self._ipv6_sources.get(key)
        cdef bytes source
        cdef char text[64]  # INET6_ADDRSTRLEN is 46
        cdef Py_ssize_t length
        if cached is None:
            if inet_ntop(AF_INET6, address, text, sizeof(text)) == NULL:
                raise OSError(errno, os.strerror(errno))
            source = address_text(text.decode("ascii")).encode()[:MAX_SOURCE]
            if len(self._ipv6_sources) >= self._source_cache_size:
                self._ipv6_sources.clear()
            self._ipv6_sources[key] = source
        else:
            source = <bytes>cached
        length = PyBytes_GET_SIZE(source)
        memcpy(self._source, PyBytes_AS_STRING(source), length)
        self._source_length = <uint8_t>length
        return 0
