# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Event timestamps from syslog headers, in milliseconds since the epoch.

Sans-IO: the receive time is passed in and returned whenever the message carries no valid
timestamp. Nothing here raises on any input bytes.

An optional PRI comes first (RFC 5424 §6.2.1: PRI = "<" PRIVAL ">", PRIVAL = 1*3DIGIT);
then one of:

* RFC 5424 §6: HEADER = PRI VERSION SP TIMESTAMP SP HOSTNAME ..., VERSION "1":

      TIMESTAMP       = NILVALUE / FULL-DATE "T" FULL-TIME
      FULL-DATE       = DATE-FULLYEAR "-" DATE-MONTH "-" DATE-MDAY
      DATE-FULLYEAR   = 4DIGIT
      DATE-MONTH      = 2DIGIT  ; 01-12
      DATE-MDAY       = 2DIGIT  ; 01-28, 01-29, 01-30, 01-31 based on month/year
      FULL-TIME       = PARTIAL-TIME TIME-OFFSET
      PARTIAL-TIME    = TIME-HOUR ":" TIME-MINUTE ":" TIME-SECOND [TIME-SECFRAC]
      TIME-HOUR       = 2DIGIT  ; 00-23
      TIME-MINUTE     = 2DIGIT  ; 00-59
      TIME-SECOND     = 2DIGIT  ; 00-59
      TIME-SECFRAC    = "." 1*6DIGIT
      TIME-OFFSET     = "Z" / TIME-NUMOFFSET
      TIME-NUMOFFSET  = ("+" / "-") TIME-HOUR ":" TIME-MINUTE

  Accepted more widely, as RFC 3339 §5.6 allows: time-secfrac = "." 1*DIGIT (up to 9 digits
  here, truncated to ms), time-second up to 60 (a leap second, read as 59), and lowercase
  "t" and "z". The timestamp must be followed by SP or the end of the message.
* The same date-time right after PRI without VERSION (rsyslog's forwarding format).
* RFC 3164 §4.1.2, local time without a zone or year:

      TIMESTAMP = MONTH SP DAY SP HH ":" MM ":" SS   ; "Mmm dd hh:mm:ss"
      MONTH     = "Jan" / "Feb" / ... / "Dec"        ; any letter case accepted
      DAY       = SP DIGIT / 2DIGIT                  ; "Nov  1" (also "Nov 01", "Nov 1")

  extended with what devices send: a fraction ".1*9DIGIT" after the seconds, a year
  " YYYY" after the time (followed by SP, ":" or the end), or Cisco's "Mmm dd YYYY hh:mm:ss".
  The time must be followed by SP, ":" or the end of the message. It is read in the
  extractor's IANA time zone (fold=0 in DST gaps and folds).

  Year inference, when no year is given: among receive_year + 1, receive_year and
  receive_year - 1 (receive_year being the year of the receive time in that zone), the
  latest whose date exists (Feb 29 only in leap years) and whose instant is at most 2 days
  after the receive time (docs/contract.md §4.9): "the receive year, or the previous one if
  more than 2 days in the future", extended so that a sender whose clock is slightly ahead
  at New Year gets the next year. When none qualifies the receive time is used.

UTC offsets of the zone are cached per hour (local hours for RFC 3164 times, UTC hours for
the receive year) in bounded dicts; an hour holding a transition is never cached as one
offset but computed exactly for each message. The UTC zone never leaves C.
"""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.limits cimport LLONG_MIN
from libc.string cimport memcmp, memcpy

from kinesyslog.constants import RFC3164_MAX_FUTURE_MS, TIMEZONE_CACHE_SIZE

cdef long long MAX_FUTURE_MS = RFC3164_MAX_FUTURE_MS
cdef Py_ssize_t CACHE_SIZE = TIMEZONE_CACHE_SIZE
cdef long long NO_OFFSET = LLONG_MIN  # the zone cannot convert this time
cdef long long DAY = 86400
cdef long long HOUR = 3600
# tzinfo offsets are strictly less than one day (datetime's rule).
cdef long long MAX_ABS_OFFSET = 86400
# Receive times from year 1 to 9999, the years datetime and zoneinfo know.
cdef long long MIN_RECEIVE_MS = -62135596800000
cdef long long MAX_RECEIVE_MS = 253402300799999

cdef object EPOCH = datetime(1970, 1, 1)
cdef object ONE_SECOND = timedelta(seconds=1)
cdef object MIXED = object()    # cache value: the hour holds a transition
cdef object INVALID = object()  # cache value: outside datetime's range

UTC_NAMES = frozenset({
    "UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu",
    "GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "Etc/GMT+0", "GMT-0", "Etc/GMT-0",
    "Greenwich", "Etc/Greenwich",
})

# Month abbreviations, lowercase, index + 1 = month number.
cdef const char* MONTHS = b"janfebmaraprmayjunjulaugsepoctnovdec"


cdef inline long long floordiv(long long a, long long b) noexcept:
    cdef long long q = a / b
    if (a % b != 0) and ((a < 0) != (b < 0)):
        q -= 1
    return q


cdef inline bint is_leap(long long y) noexcept:
    return (y % 4 == 0 and y % 100 != 0) or y % 400 == 0


cdef inline int days_in_month(long long y, int m) noexcept:
    if m == 2:
        return 29 if is_leap(y) else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


cdef inline long long days_from_civil(long long y, int m, int d) noexcept:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    cdef long long era, yoe, doy, doe
    if m <= 2:
        y -= 1
    era = floordiv(y, 400)
    yoe = y - era * 400
    doy = (153 * (m - 3 if m > 2 else m + 9) + 2) / 5 + d - 1
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
    return era * 146097 + doe - 719468


cdef inline long long year_from_days(long long z) noexcept:
    cdef long long era, doe, yoe, doy, mp
    z += 719468
    era = floordiv(z, 146097)
    doe = z - era * 146097
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    mp = (5 * doy + 2) / 153
    return yoe + era * 400 + (1 if mp >= 10 else 0)


cdef inline int digits(const unsigned char* p, int count) noexcept:
    """Value of count decimal digits at p, or -1."""
    cdef int value = 0, k, d
    for k in range(count):
        d = p[k] - 0x30
        if d < 0 or d > 9:
            return -1
        value = value * 10 + d
    return value


cdef inline Py_ssize_t fraction_ms(const unsigned char* p, Py_ssize_t k, Py_ssize_t n,
                                   int* ms) noexcept:
    """Parse "." 1*9DIGIT at p[k] if there is a "."; the new position, or -1 if invalid."""
    cdef Py_ssize_t start
    cdef int value = 0, used = 0
    if k >= n or p[k] != 0x2E:
        ms[0] = 0
        return k
    k += 1
    start = k
    while k < n and 0x30 <= p[k] <= 0x39:
        if k - start == 9:
            return -1
        if used < 3:
            value = value * 10 + (p[k] - 0x30)
            used += 1
        k += 1
    if k == start:
        return -1
    while used < 3:
        value *= 10
        used += 1
    ms[0] = value
    return k


cdef inline bint valid_time(int hour, int minute, int second) noexcept:
    return 0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 60


cdef long long rfc3339_prefix_seconds(const unsigned char* p) noexcept:
    """Seconds since the epoch of the 19 bytes "YYYY-MM-DDTHH:MM:SS" at p (a leap second
    read as 59), or LLONG_MIN if they are not one."""
    cdef int year, month, day, hour, minute, second
    if p[4] != 0x2D or p[7] != 0x2D or (p[10] | 0x20) != 0x74 or p[13] != 0x3A \
            or p[16] != 0x3A:
        return LLONG_MIN
    year = digits(p, 4)
    month = digits(p + 5, 2)
    day = digits(p + 8, 2)
    hour = digits(p + 11, 2)
    minute = digits(p + 14, 2)
    second = digits(p + 17, 2)
    if year < 0 or month < 1 or month > 12 or day < 1 or day > days_in_month(year, month) \
            or not valid_time(hour, minute, second):
        return LLONG_MIN
    if second == 60:
        second = 59
    return days_from_civil(year, month, day) * DAY + hour * HOUR + minute * 60 + second


cdef long long rfc3339_rest(const unsigned char* p, Py_ssize_t n, long long seconds,
                            long long receive_ms) noexcept:
    """The timestamp whose first 19 bytes at p are ``seconds`` (rfc3339_prefix_seconds):
    TIME-SECFRAC and TIME-OFFSET follow, then SP or the end; else receive_ms."""
    cdef int ms, off_hour, off_minute
    cdef long long offset = 0
    cdef Py_ssize_t k = fraction_ms(p, 19, n, &ms)
    if k < 0 or k >= n:
        return receive_ms
    if (p[k] | 0x20) == 0x7A:
        k += 1
    elif p[k] == 0x2B or p[k] == 0x2D:
        if n - k < 6 or p[k + 3] != 0x3A:
            return receive_ms
        off_hour = digits(p + k + 1, 2)
        off_minute = digits(p + k + 4, 2)
        if off_hour < 0 or off_hour > 23 or off_minute < 0 or off_minute > 59:
            return receive_ms
        offset = off_hour * 3600 + off_minute * 60
        if p[k] == 0x2D:
            offset = -offset
        k += 6
    else:
        return receive_ms
    if k < n and p[k] != 0x20:
        return receive_ms
    return (seconds - offset) * 1000 + ms


cdef inline int month_number(const unsigned char* p) noexcept:
    cdef int m
    cdef unsigned char a = p[0] | 0x20, b = p[1] | 0x20, c = p[2] | 0x20
    for m in range(12):
        if MONTHS[3 * m] == a and MONTHS[3 * m + 1] == b and MONTHS[3 * m + 2] == c:
            return m + 1
    return 0


cdef inline bint ends_field(const unsigned char* p, Py_ssize_t k, Py_ssize_t n) noexcept:
    return k == n or p[k] == 0x20 or p[k] == 0x3A


cdef object hour_offset(object zone, long long hour, bint local):
    """The zone's offset in seconds through one hour (local or UTC), MIXED or INVALID."""
    try:
        if local:
            start = EPOCH + timedelta(hours=hour)
            first = start.replace(tzinfo=zone).utcoffset()
            last = (start + timedelta(seconds=HOUR - 1)).replace(tzinfo=zone).utcoffset()
        else:
            first = datetime.fromtimestamp(hour * HOUR, zone).utcoffset()
            last = datetime.fromtimestamp(hour * HOUR + HOUR - 1, zone).utcoffset()
    except (OverflowError, ValueError, OSError):
        return INVALID
    return first // ONE_SECOND if first == last else MIXED


cdef int remember(dict cache, long long hour, object value) except -1:
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[hour] = value
    return 0


cdef class TimestampExtractor:
    """Reads event timestamps; RFC 3164 local times are read in `timezone` (IANA name)."""

    def __init__(self, str timezone not None="UTC"):
        self.timezone = timezone
        self._zone = ZoneInfo(timezone)
        self._utc = timezone in UTC_NAMES
        self._local_cache = {}
        self._utc_cache = {}
        self._last_local_hour = LLONG_MIN
        self._last_local_offset = 0
        self._last_utc_hour = LLONG_MIN
        self._last_utc_offset = 0
        self._rfc3339_seconds = LLONG_MIN  # nothing in _rfc3339_prefix yet

    def extract(self, message, long long receive_ms) -> int:
        """Timestamp of message in ms since the epoch, or receive_ms if it has none."""
        cdef Py_buffer view
        cdef long long result
        PyObject_GetBuffer(message, &view, PyBUF_SIMPLE)
        result = self.c_extract(<const unsigned char*>view.buf, view.len, receive_ms)
        PyBuffer_Release(&view)
        return result

    cdef long long c_extract(self, const unsigned char* data, Py_ssize_t length,
                             long long receive_ms) noexcept:
        cdef Py_ssize_t i = 0, j
        cdef unsigned char c
        if length > 0 and data[0] == 0x3C:
            j = 1
            while j < length and j <= 3 and 0x30 <= data[j] <= 0x39:
                j += 1
            if 1 < j < length and data[j] == 0x3E:
                i = j + 1
        if length - i < 2:
            return receive_ms
        c = data[i]
        if c == 0x31 and data[i + 1] == 0x20:
            return self._rfc3339(data + i + 2, length - i - 2, receive_ms)
        if 0x30 <= c <= 0x39:
            return self._rfc3339(data + i, length - i, receive_ms)
        return self._rfc3164(data + i, length - i, receive_ms)

    cdef long long _rfc3339(self, const unsigned char* p, Py_ssize_t n,
                            long long receive_ms) noexcept:
        """FULL-DATE "T" FULL-TIME at p, followed by SP or the end; else receive_ms. The
        date and time to the second are read once for a run of messages that share them."""
        cdef long long seconds
        if n < 20:
            return receive_ms
        if self._rfc3339_seconds != LLONG_MIN and memcmp(p, self._rfc3339_prefix, 19) == 0:
            seconds = self._rfc3339_seconds
        else:
            seconds = rfc3339_prefix_seconds(p)
            if seconds == LLONG_MIN:
                return receive_ms
            memcpy(self._rfc3339_prefix, p, 19)
            self._rfc3339_seconds = seconds
        return rfc3339_rest(p, n, seconds, receive_ms)

    cdef long long _rfc3164(self, const unsigned char* p, Py_ssize_t n,
                            long long receive_ms) noexcept:
        cdef int month, day, hour, minute, second, ms, year = 0
        cdef long long receive_year, y, local_s, offset, result
        cdef Py_ssize_t k
        # Shortest form: "Mmm d hh:mm:ss" (14 bytes).
        if n < 14 or p[3] != 0x20:
            return receive_ms
        month = month_number(p)
        if month == 0:
            return receive_ms
        if p[4] == 0x20:
            day = digits(p + 5, 1)
            k = 6
        elif p[5] == 0x20:
            day = digits(p + 4, 1)
            k = 5
        else:
            day = digits(p + 4, 2)
            k = 6
        if day < 1 or day > days_in_month(2000, month) or p[k] != 0x20:
            return receive_ms
        k += 1
        if n - k >= 5 and p[k + 4] == 0x20 and digits(p + k, 4) >= 0:  # Cisco's year
            year = digits(p + k, 4)
            if year == 0:
                return receive_ms
            k += 5
        if n - k < 8 or p[k + 2] != 0x3A or p[k + 5] != 0x3A:
            return receive_ms
        hour = digits(p + k, 2)
        minute = digits(p + k + 3, 2)
        second = digits(p + k + 6, 2)
        if not valid_time(hour, minute, second):
            return receive_ms
        if second == 60:
            second = 59
        k = fraction_ms(p, k + 8, n, &ms)
        if k < 0:
            return receive_ms
        if year == 0 and n - k >= 5 and p[k] == 0x20 and ends_field(p, k + 5, n) \
                and digits(p + k + 1, 4) >= 0:
            year = digits(p + k + 1, 4)
            if year == 0:
                return receive_ms
            k += 5
        if not ends_field(p, k, n):
            return receive_ms

        if year != 0:
            if day > days_in_month(year, month):
                return receive_ms
            local_s = days_from_civil(year, month, day) * DAY + hour * HOUR + minute * 60 \
                + second
            offset = self._local_offset(local_s)
            if offset == NO_OFFSET:
                return receive_ms
            return (local_s - offset) * 1000 + ms

        if receive_ms < MIN_RECEIVE_MS or receive_ms > MAX_RECEIVE_MS:
            return receive_ms
        offset = self._utc_offset(floordiv(receive_ms, 1000))
        if offset == NO_OFFSET:
            return receive_ms
        receive_year = year_from_days(floordiv(floordiv(receive_ms, 1000) + offset, DAY))
        for y in range(receive_year + 1, receive_year - 2, -1):
            if day > days_in_month(y, month):
                continue
            local_s = days_from_civil(y, month, day) * DAY + hour * HOUR + minute * 60 + second
            # Skip the zone lookup when no offset could bring the time close enough.
            if (local_s - MAX_ABS_OFFSET) * 1000 + ms - receive_ms > MAX_FUTURE_MS:
                continue
            offset = self._local_offset(local_s)
            if offset == NO_OFFSET:
                continue
            result = (local_s - offset) * 1000 + ms
            if result - receive_ms <= MAX_FUTURE_MS:
                return result
        return receive_ms

    cdef long long _local_offset(self, long long local_s) noexcept:
        """UTC offset in seconds of the zone at local time local_s (fold=0), or NO_OFFSET."""
        cdef long long hour
        if self._utc:
            return 0
        hour = floordiv(local_s, HOUR)
        if hour == self._last_local_hour:
            return self._last_local_offset
        try:
            cached = self._local_cache.get(hour)
            if cached is None:
                cached = hour_offset(self._zone, hour, True)
                remember(self._local_cache, hour, cached)
            if cached is INVALID:
                return NO_OFFSET
            if cached is MIXED:
                return (EPOCH + timedelta(seconds=local_s)).replace(
                    tzinfo=self._zone).utcoffset() // ONE_SECOND
            self._last_local_hour = hour
            self._last_local_offset = cached
            return cached
        except Exception:
            return NO_OFFSET

    cdef long long _utc_offset(self, long long utc_s) noexcept:
        """UTC offset in seconds of the zone at the instant utc_s, or NO_OFFSET."""
        cdef long long hour
        if self._utc:
            return 0
        hour = floordiv(utc_s, HOUR)
        if hour == self._last_utc_hour:
            return self._last_utc_offset
        try:
            cached = self._utc_cache.get(hour)
            if cached is None:
                cached = hour_offset(self._zone, hour, False)
                remember(self._utc_cache, hour, cached)
            if cached is INVALID:
                return NO_OFFSET
            if cached is MIXED:
                return datetime.fromtimestamp(utc_s, self._zone).utcoffset() // ONE_SECOND
            self._last_utc_hour = hour
            self._last_utc_offset = cached
            return cached
        except Exception:
            return NO_OFFSET
