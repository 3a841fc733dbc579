# Declarations only: events.pyx cimports TimestampExtractor to call c_extract() from C.

cdef class TimestampExtractor:
    cdef readonly str timezone
    cdef bint _utc
    cdef object _zone
    cdef dict _local_cache
    cdef dict _utc_cache
    cdef long long _last_local_hour
    cdef long long _last_local_offset
    cdef long long _last_utc_hour
    cdef long long _last_utc_offset
    # The last valid "YYYY-MM-DDTHH:MM:SS" read, and its seconds (LLONG_MIN: none yet)
    cdef unsigned char _rfc3339_prefix[19]
    cdef long long _rfc3339_seconds

    cdef long long c_extract(self, const unsigned char* data, Py_ssize_t length,
                             long long receive_ms) noexcept
    cdef long long _rfc3339(self, const unsigned char* p, Py_ssize_t n,
                            long long receive_ms) noexcept
    cdef long long _rfc3164(self, const unsigned char* p, Py_ssize_t n,
                            long long receive_ms) noexcept
    cdef long long _local_offset(self, long long local_s) noexcept
    cdef long long _utc_offset(self, long long utc_s) noexcept
