"""Event timestamps from syslog headers, the reference (docs/contract.md §4.9).

The public API of kinesyslog/_fast/syslog.pyi (TimestampExtractor), written from the RFCs
and docs/contract.md §4.9 with regular expressions, datetime and zoneinfo, for clarity rather
than speed.

An optional PRI comes first (RFC 5424 §6.2.1: PRI = "<" PRIVAL ">", PRIVAL = 1*3DIGIT, its
value not checked), then one of:

* RFC 5424 §6 (VERSION "1" SP TIMESTAMP ...), §6.2.3:

      TIMESTAMP      = NILVALUE / FULL-DATE "T" FULL-TIME
      FULL-DATE      = DATE-FULLYEAR "-" DATE-MONTH "-" DATE-MDAY
      FULL-TIME      = PARTIAL-TIME TIME-OFFSET
      PARTIAL-TIME   = TIME-HOUR ":" TIME-MINUTE ":" TIME-SECOND [TIME-SECFRAC]
      TIME-SECFRAC   = "." 1*6DIGIT
      TIME-OFFSET    = "Z" / TIME-NUMOFFSET
      TIME-NUMOFFSET = ("+" / "-") TIME-HOUR ":" TIME-MINUTE

  read as widely as RFC 3339 §5.6 allows: 1-9 fraction digits (truncated to milliseconds),
  second 60 (read as 59), "t" and "z" in lower case. The date must exist; the timestamp
  must be followed by SP or the end of the message.
* The same date-time right after PRI, without VERSION (rsyslog's forwarding format).
* RFC 3164 §4.1.2, "Mmm dd hh:mm:ss" in local time: the month in any letter case, the day
  as SP DIGIT, 2DIGIT or DIGIT; a fraction of 1-9 digits after the seconds; a year
  " YYYY" after the time or before it (Cisco's "Mmm dd YYYY hh:mm:ss"); the time followed by
  SP, ":" or the end. Read in the extractor's IANA zone with fold=0. Without a year: the
  latest of receive year + 1, receive year and receive year - 1 (receive year in that zone)
  in which the date exists and that puts the message at most 2 days after the receive time.
"""

from __future__ import annotations

import operator
import re
from datetime import date, datetime, timedelta
from typing import Union
from zoneinfo import ZoneInfo

from kinesyslog.constants import RFC3164_MAX_FUTURE_MS

Buffer = Union[bytes, bytearray, memoryview]

PRI = re.compile(rb"<[0-9]{1,3}>")
RFC3339 = re.compile(
    rb"""
    ([0-9]{4}) - ([0-9]{2}) - ([0-9]{2})            # FULL-DATE
    [Tt]
    ([0-9]{2}) : ([0-9]{2}) : ([0-9]{2})            # PARTIAL-TIME
    (?: \. ([0-9]{1,9}) )?                          # TIME-SECFRAC
    (?: [Zz] | ([+-]) ([0-9]{2}) : ([0-9]{2}) )     # TIME-OFFSET
    (?= [ ] | \Z )
    """,
    re.VERBOSE,
)
RFC3164 = re.compile(
    rb"""
    ([A-Za-z]{3}) [ ]                               # MONTH SP
    (?: [ ]([0-9]) | ([0-9]{2}) | ([0-9])(?=[ ]) )  # DAY: SP DIGIT, 2DIGIT or DIGIT
    [ ]
    (?: ([0-9]{4}) [ ] )?                           # Cisco's year before the time
    ([0-9]{2}) : ([0-9]{2}) : ([0-9]{2})            # HH:MM:SS
    (?: \. ([0-9]{1,9}) )?                          # a fraction
    (?: [ ] ([0-9]{4}) (?=[ :]|\Z) )?               # a year after the time
    (?= [ :] | \Z )
    """,
    re.VERBOSE,
)
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")

# IANA names of UTC (tzdata's "backward" aliases): these need no zone database, so their
# local times are read for any year, as RFC 3339 times with their own offset are.
UTC_ZONES = frozenset({
    "UTC", "Etc/UTC", "UCT", "Etc/UCT", "Universal", "Etc/Universal", "Zulu", "Etc/Zulu",
    "GMT", "Etc/GMT", "GMT0", "Etc/GMT0", "GMT+0", "Etc/GMT+0", "GMT-0", "Etc/GMT-0",
    "Greenwich", "Etc/Greenwich",
})
# Receive times in the years datetime and zoneinfo know (1 to 9999); for others the year of
# the receive time is unknown and an RFC 3164 time without a year is not read.
MIN_RECEIVE_MS = (datetime(1, 1, 1) - datetime(1970, 1, 1)) // timedelta(milliseconds=1)
MAX_RECEIVE_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000) - datetime(1970, 1, 1)) // (
    timedelta(milliseconds=1))
INT64 = range(-(2**63), 2**63)
EPOCH = date(1970, 1, 1)
DAYS_PER_400_YEARS = 146_097


def days_from_civil(year: int, month: int, day: int) -> int | None:
    """Days since 1970-01-01 of a date of the proleptic Gregorian calendar, any year; None
    if the date does not exist. The calendar repeats every 400 years."""
    cycles, year_of_cycle = divmod(year, 400)
    try:
        same_day = date(2000 + year_of_cycle, month, day)
    except ValueError:
        return None
    return (same_day - EPOCH).days + (cycles - 5) * DAYS_PER_400_YEARS


def fraction_ms(digits: bytes | None) -> int:
    """Milliseconds of the digits after the decimal point, the rest truncated."""
    return int((digits or b"").ljust(3, b"0")[:3])


def rfc3339_ms(text: bytes) -> int | None:
    """The RFC 3339 date-time at the start of text, followed by SP or the end, in ms since
    the epoch; None if there is none or it is not a valid time."""
    match = RFC3339.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    days = days_from_civil(year, month, day)
    if days is None or hour > 23 or minute > 59 or second > 60:
        return None
    offset = 0
    if match[8]:
        offset_hours, offset_minutes = int(match[9]), int(match[10])
        if offset_hours > 23 or offset_minutes > 59:
            return None
        offset = (offset_hours * 3600 + offset_minutes * 60) * (-1 if match[8] == b"-" else 1)
    seconds = days * 86400 + hour * 3600 + minute * 60 + min(second, 59) - offset
    return seconds * 1000 + fraction_ms(match[7])


class TimestampExtractor:
    """Reads event timestamps; RFC 3164 local times are read in `timezone` (IANA name)."""

    def __init__(self, timezone: str = "UTC") -> None:
        if not isinstance(timezone, str):
            raise TypeError(f"timezone must be a str, not {type(timezone).__name__}")
        self._timezone = timezone
        self._zone = ZoneInfo(timezone)  # ZoneInfoNotFoundError (a KeyError) if unknown
        self._utc = timezone in UTC_ZONES

    @property
    def timezone(self) -> str:
        return self._timezone

    def extract(self, message: Buffer, receive_ms: int) -> int:
        """The timestamp of message in ms since the epoch, or receive_ms if it has none."""
        data = message if isinstance(message, bytes) else memoryview(message).tobytes()
        receive_ms = operator.index(receive_ms)
        if receive_ms not in INT64:
            raise OverflowError("receive_ms does not fit in 64 bits")
        pri = PRI.match(data)
        rest = data[pri.end() :] if pri else data
        if rest.startswith(b"1 "):  # RFC 5424 VERSION SP
            value = rfc3339_ms(rest[2:])
        elif rest[:1].isdigit():
            value = rfc3339_ms(rest)
        else:
            value = self._rfc3164_ms(rest, receive_ms)
        return receive_ms if value is None else value

    def _local_ms(self, year: int, month: int, day: int, hour: int, minute: int,
                  second: int, ms: int) -> int | None:
        """A local time of the zone (fold=0 in gaps and folds) in ms since the epoch; None
        if the date does not exist or the zone cannot read that year."""
        days = days_from_civil(year, month, day)
        if days is None:
            return None
        offset = 0
        if not self._utc:
            try:
                when = datetime(year, month, day, hour, minute, second, tzinfo=self._zone)
                offset = when.utcoffset() // timedelta(seconds=1)  # type: ignore[operator]
            except (ValueError, OverflowError):
                return None
        return (days * 86400 + hour * 3600 + minute * 60 + second - offset) * 1000 + ms

    def _receive_year(self, receive_ms: int) -> int | None:
        """The year of the receive time in the zone, if datetime knows it."""
        if not MIN_RECEIVE_MS <= receive_ms <= MAX_RECEIVE_MS:
            return None
        receive_s = receive_ms // 1000
        if self._utc:
            return (EPOCH + timedelta(seconds=receive_s)).year
        try:
            return datetime.fromtimestamp(receive_s, self._zone).year
        except (ValueError, OverflowError, OSError):
            return None

    def _rfc3164_ms(self, text: bytes, receive_ms: int) -> int | None:
        match = RFC3164.match(text)
        if not match or match[1].lower().decode() not in MONTHS:
            return None
        month = MONTHS.index(match[1].lower().decode()) + 1
        day = int(match[2] or match[3] or match[4])
        hour, minute, second = int(match[6]), int(match[7]), int(match[8])
        if hour > 23 or minute > 59 or second > 60:
            return None
        fields = (month, day, hour, minute, min(second, 59), fraction_ms(match[9]))
        year = match[5] or match[10]
        if year is not None:
            if int(year) == 0:  # a year field reads 0001 to 9999
                return None
            return self._local_ms(int(year), *fields)
        receive_year = self._receive_year(receive_ms)
        if receive_year is None:
            return None
        for candidate in (receive_year + 1, receive_year, receive_year - 1):
            value = self._local_ms(candidate, *fields)
            if value is not None and value - receive_ms <= RFC3164_MAX_FUTURE_MS:
                return value
        return None
