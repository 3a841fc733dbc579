# Declarations of the ring (ring.pyx), cimported by events.pyx: the worker encodes events
# straight from the mapped entries, without a Python object per entry; and by udp.pyx: the
# listener appends datagrams straight from its receive buffers.

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>

    typedef struct {
        char magic[8];
        uint32_t version;
        uint32_t header_size;
        uint64_t capacity;
        uint32_t producer_closed;
        char pad0[64 - 28];
        uint64_t write_pos;
        char pad1[64 - 8];
        uint64_t commit_pos;
    } ksy_header;

    _Static_assert(offsetof(ksy_header, capacity) == 16, "capacity offset");
    _Static_assert(offsetof(ksy_header, producer_closed) == 24, "producer_closed offset");
    _Static_assert(offsetof(ksy_header, write_pos) == 64, "write_pos offset");
    _Static_assert(offsetof(ksy_header, commit_pos) == 128, "commit_pos offset");

    static inline uint64_t ksy_load64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void ksy_store64(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    static inline uint32_t ksy_load32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void ksy_store32(uint32_t *p, uint32_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }

    #define KSY_ENTRY_HEADER 20
    #define KSY_WRAP 0xFFFFFFFFu

    static inline uint64_t ksy_entry_size(uint64_t message_length, uint64_t source_length) {
        return (KSY_ENTRY_HEADER + message_length + source_length + 7) & ~(uint64_t)7;
    }

    static inline void ksy_put_entry(char *at, uint32_t length, int64_t receive_ms, uint16_t port,
                                     uint8_t kind, const char *source, uint8_t source_length,
                                     const char *message, uint32_t message_length) {
        size_t used = KSY_ENTRY_HEADER + (size_t)source_length + message_length;
        memcpy(at, &length, 4);
        memcpy(at + 4, &message_length, 4);
        memcpy(at + 8, &receive_ms, 8);
        memcpy(at + 16, &port, 2);
        at[18] = (char)kind;
        at[19] = (char)source_length;
        /* gcc turns a memcpy whose length it knows to be under 256 into `rep movsq`, whose
           start-up (tens of cycles) outweighs the whole entry's other stores; hiding the
           bound makes it call libc's memcpy, a few cycles for such sizes. */
        size_t source_bytes = source_length;
        __asm__("" : "+r"(source_bytes));
        memcpy(at + KSY_ENTRY_HEADER, source, source_bytes);
        memcpy(at + KSY_ENTRY_HEADER + source_length, message, message_length);
        memset(at + used, 0, length - used);
    }

    static inline void ksy_put_wrap(char *at) { uint32_t w = KSY_WRAP; memcpy(at, &w, 4); }
    static inline uint32_t ksy_u32(const char *at) { uint32_t v; memcpy(&v, at, 4); return v; }
    static inline int64_t ksy_i64(const char *at) { int64_t v; memcpy(&v, at, 8); return v; }
    static inline uint16_t ksy_u16(const char *at) { uint16_t v; memcpy(&v, at, 2); return v; }
    static inline uint8_t ksy_u8(const char *at) { return (uint8_t)*at; }
    """
    ctypedef struct ksy_header:
        char magic[8]
        uint32_t version
        uint32_t header_size
        uint64_t capacity
        uint32_t producer_closed
        uint64_t write_pos
        uint64_t commit_pos

    uint64_t ksy_load64(uint64_t *p)
    void ksy_store64(uint64_t *p, uint64_t v)
    uint32_t ksy_load32(uint32_t *p)
    void ksy_store32(uint32_t *p, uint32_t v)
    uint64_t ksy_entry_size(uint64_t message_length, uint64_t source_length)
    void ksy_put_entry(char *at, uint32_t length, int64_t receive_ms, uint16_t port, uint8_t kind,
                       const char *source, uint8_t source_length,
                       const char *message, uint32_t message_length)
    void ksy_put_wrap(char *at)
    uint32_t ksy_u32(const char *at)
    int64_t ksy_i64(const char *at)
    uint16_t ksy_u16(const char *at)
    uint8_t ksy_u8(const char *at)
    uint32_t KSY_ENTRY_HEADER
    uint32_t KSY_WRAP


# One entry as next_entry() finds it; source and message point into the mapping.
cdef struct RingEntry:
    const char *source
    const char *message
    uint32_t message_length
    int64_t receive_ms
    uint16_t port
    uint8_t kind
    uint8_t source_length


cdef class Ring:
    cdef readonly str path
    cdef readonly Py_ssize_t capacity
    cdef char *_map
    cdef size_t _map_size
    cdef ksy_header *_header
    cdef char *_data
    cdef uint64_t _cap
    cdef uint64_t _max_entry
    cdef uint64_t _read_pos  # the consumer's private cursor
    cdef readonly Py_ssize_t last_written_bytes  # message bytes of the last write_batch
    cdef uint64_t _append_pos  # end of the entries append_entry wrote but did not publish
    cdef bint _appended  # whether there are such entries
    cdef uint64_t _released_write  # pages before these positions are unmapped here
    cdef uint64_t _released_read

    cdef int _map_file(self, int fd) except -1
    cdef int _validate(self) except -1
    cdef int _check_open(self) except -1
    cdef int next_entry(self, uint64_t write_pos, RingEntry *entry) noexcept
    cdef uint64_t published(self) noexcept
    cdef int append_entry(self, const char *source, uint8_t source_length,
                          const char *message, uint32_t message_length,
                          int64_t receive_ms, uint16_t port, uint8_t kind) noexcept
    cdef void publish(self) noexcept
    cdef void release_read(self) noexcept
    cdef void _release(self, uint64_t *released, uint64_t cursor) noexcept
