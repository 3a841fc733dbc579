"""Fuzz timestamp extraction against datetime/zoneinfo and a regex-based reference."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from kinesyslog._fast.syslog import TimestampExtractor

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TWO_DAYS_MS = 2 * 86_400_000
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
# Zones with half-hour DST (Lord Howe), odd offsets, negative DST (Dublin), skipped days
# (Apia), frequent changes (Casablanca).
ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "Pacific/Apia",
    "Europe/Dublin",
    "America/St_Johns",
    "Africa/Casablanca",
]
MIN_RECEIVE_MS = -2208988800000  # 1900
MAX_RECEIVE_MS = 4102444800000  # 2100

PRI = re.compile(rb"<[0-9]{1,3}>")
RFC3339 = re.compile(
    rb"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    rb"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))(?= |\Z)"
)
RFC3164 = re.compile(
    rb"([A-Za-z]{3}) (?: ([0-9])|([0-9]{2})|([0-9])(?= )) (?:([0-9]{4}) )?"
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    rb"(?: ([0-9]{4})(?=[ :]|\Z))?(?=[ :]|\Z)"
)


@cache
def extractor(zone: str) -> TimestampExtractor:
    return TimestampExtractor(zone)


def fraction_ms(digits: bytes | None) -> int:
    return int((digits or b"").ljust(3, b"0")[:3])


def days_since_epoch(year: int, month: int, day: int) -> int | None:
    """Proleptic Gregorian day number, year 0 included (400 years repeat exactly)."""
    try:
        if year < 400:
            return (date(year + 400, month, day) - date(1970, 1, 1)).days - 146097
        return (date(year, month, day) - date(1970, 1, 1)).days
    except ValueError:
        return None


def local_ms(fields: tuple[int, ...], ms: int, zone: ZoneInfo) -> int | None:
    year, month, day, hour, minute, second = fields
    if second == 60:
        second = 59
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        return None
    return (when - EPOCH) // timedelta(seconds=1) * 1000 + ms


def reference_rfc3339(text: bytes) -> int | None:
    match = RFC3339.match(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if hour > 23 or minute > 59 or second > 60:
        return None
    days = days_since_epoch(year, month, day)
    offset = 0
    if match[8]:
        off_hour, off_minute = int(match[9]), int(match[10])
        if off_hour > 23 or off_minute > 59:
            return None
        offset = (off_hour * 60 + off_minute) * (1 if match[8] == b"+" else -1)
    if days is None:
        return None
    seconds = days * 86400 + hour * 3600 + minute * 60 + min(second, 59) - offset * 60
    return seconds * 1000 + fraction_ms(match[7])


def reference_rfc3164(text: bytes, receive_ms: int, zone: ZoneInfo) -> int | None:
    match = RFC3164.match(text)
    if not match:
        return None
    name = match[1].decode().capitalize()
    if name not in MONTHS:
        return None
    month = MONTHS.index(name) + 1
    day = int(match[2] or match[3] or match[4])
    hour, minute, second = int(match[6]), int(match[7]), int(match[8])
    if second > 60:
        return None
    ms = fraction_ms(match[9])
    year = match[5] or match[10]
    if year:
        return local_ms((int(year), month, day, hour, minute, second), ms, zone)
    receive_year = datetime.fromtimestamp(receive_ms // 1000, zone).year
    for candidate in (receive_year + 1, receive_year, receive_year - 1):
        value = local_ms((candidate, month, day, hour, minute, second), ms, zone)
        if value is not None and value - receive_ms <= TWO_DAYS_MS:
            return value
    return None


def reference_extract(message: bytes, receive_ms: int, zone_name: str) -> int:
    pri = PRI.match(message)
    rest = message[pri.end() :] if pri else message
    if rest.startswith(b"1 "):
        value = reference_rfc3339(rest[2:])
    elif rest[:1].isdigit():
        value = reference_rfc3339(rest)
    else:
        value = reference_rfc3164(rest, receive_ms, ZoneInfo(zone_name))
    return receive_ms if value is None else value


zones = st.sampled_from(ZONES)
receive_times = st.integers(min_value=MIN_RECEIVE_MS, max_value=MAX_RECEIVE_MS)
recent_receive_times = st.integers(min_value=946684800000, max_value=1893456000000)  # 2000-30
fractions = st.one_of(
    st.just(""),
    st.integers(0, 10).flatmap(
        lambda n: st.text("0123456789", min_size=n, max_size=n).map(lambda d: "." + d)
    ),
)
two_digits = st.integers(0, 99).map(lambda v: f"{v:02d}")
near_two_digits = st.one_of(st.integers(0, 61).map(lambda v: f"{v:02d}"), two_digits)
pri = st.sampled_from(["", "<13>", "<0>", "<191>", "<999>", "<1234>", "<>", "<1x>", "13>"])
suffix = st.sampled_from(["", " host app - - - msg", ": %SYS-5", ":", "x", "\n", "  ", " 2024"])


@st.composite
def rfc3339_like(draw: st.DrawFn) -> str:
    year = draw(st.one_of(st.integers(1900, 2100), st.integers(0, 9999))) % 10000
    offset = draw(
        st.one_of(
            st.sampled_from(["Z", "z", "", "+0530", "+05:3", "Zx"]),
            st.tuples(st.sampled_from("+-"), near_two_digits, near_two_digits).map(
                lambda t: f"{t[0]}{t[1]}:{t[2]}"
            ),
        )
    )
    return (
        f"{year:04d}-{draw(st.integers(0, 13)):02d}-{draw(st.integers(0, 32)):02d}"
        f"{draw(st.sampled_from('TTt '))}{draw(near_two_digits)}:{draw(near_two_digits)}"
        f":{draw(near_two_digits)}{draw(fractions)}{offset}"
    )


@st.composite
def rfc3164_like(draw: st.DrawFn) -> str:
    month = draw(st.one_of(st.sampled_from(MONTHS), st.sampled_from(["jan", "DEC", "Foo", "Ma"])))
    day = draw(st.integers(0, 32))
    day_text = draw(st.sampled_from([f"{day:2d}", f"{day:02d}", f"{day}"]))
    year = f"{draw(st.integers(0, 9999)):04d}"
    cisco = draw(st.booleans()) and draw(st.booleans())
    trailing = not cisco and draw(st.booleans()) and draw(st.booleans())
    time = f"{draw(near_two_digits)}:{draw(near_two_digits)}:{draw(near_two_digits)}"
    return (
        f"{month} {day_text} {year + ' ' if cisco else ''}{time}{draw(fractions)}"
        f"{' ' + year if trailing else ''}"
    )


messages = st.builds(
    lambda p, v, body, s: (p + v + body + s).encode(),
    pri,
    st.sampled_from(["", "1 ", "1 ", "2 ", "1  "]),
    st.one_of(rfc3339_like(), rfc3164_like(), st.just("-"), st.text(max_size=20)),
    suffix,
)


@given(messages, receive_times, zones)
def test_matches_the_reference(message: bytes, receive_ms: int, zone: str) -> None:
    assert extractor(zone).extract(message, receive_ms) == reference_extract(
        message, receive_ms, zone
    )


@given(st.binary(max_size=60), st.integers(-(2**63), 2**63 - 1), zones)
def test_arbitrary_bytes_never_raise(message: bytes, receive_ms: int, zone: str) -> None:
    value = extractor(zone).extract(message, receive_ms)
    if MIN_RECEIVE_MS <= receive_ms <= MAX_RECEIVE_MS:
        assert value == reference_extract(message, receive_ms, zone)
    else:
        assert isinstance(value, int)


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.integers(0, 999_999_999),
    st.integers(0, 9),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    st.sampled_from(["<13>1 ", "<165>", "", "1 "]),
    receive_times,
)
def test_valid_rfc3339(
    when: datetime, nanos: int, digits: int, offset: int, prefix: str, receive_ms: int
) -> None:
    fraction = f"{nanos:09d}"[:digits]
    sign = "-" if offset < 0 else "+"
    text = (
        f"{prefix}{when.year:04d}-{when:%m-%dT%H:%M:%S}{'.' if digits else ''}{fraction}"
        f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d} host"
    )
    naive = (when.replace(microsecond=0) - datetime(1970, 1, 1)) // timedelta(seconds=1)
    expected = (naive - offset * 60) * 1000 + (int(fraction[:3].ljust(3, "0")) if digits else 0)
    assert extractor("UTC").extract(text.encode(), receive_ms) == expected


@given(
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 12, 31)),
    zones,
    st.integers(-TWO_DAYS_MS, 360 * 86_400_000),
    st.sampled_from(["{mon} {day:2d}", "{mon} {day:02d}"]),
    st.integers(0, 9),
    st.booleans(),
)
def test_valid_rfc3164_without_year(
    when: datetime, zone: str, delay: int, day_format: str, digits: int, upper: bool
) -> None:
    fraction = f"{when.microsecond:06d}000"[:digits]
    # docs/contract.md §4.9: fold=0
    aware = when.replace(microsecond=0, fold=0, tzinfo=ZoneInfo(zone))
    expected = (aware - EPOCH) // timedelta(seconds=1) * 1000 + fraction_ms(fraction.encode())
    month = MONTHS[when.month - 1].upper() if upper else MONTHS[when.month - 1]
    text = (
        f"<13>{day_format.format(mon=month, day=when.day)} {when:%H:%M:%S}"
        f"{'.' if digits else ''}{fraction} host app[12]: msg"
    )
    receive_ms = expected + delay
    assert extractor(zone).extract(text.encode(), receive_ms) == expected


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    zones,
    st.booleans(),
    recent_receive_times,
)
def test_valid_rfc3164_with_year(when: datetime, zone: str, cisco: bool, receive_ms: int) -> None:
    when = when.replace(microsecond=0, fold=0)  # docs/contract.md §4.9: fold=0 in gaps and folds
    expected = (when.replace(tzinfo=ZoneInfo(zone)) - EPOCH) // timedelta(milliseconds=1)
    month = MONTHS[when.month - 1]
    if cisco:
        text = f"<189>{month} {when.day:2d} {when.year:04d} {when:%H:%M:%S}: %SYS-5-CONFIG_I"
    else:
        text = f"<13>{month} {when.day:02d} {when:%H:%M:%S} {when.year:04d} host: msg"
    assert extractor(zone).extract(text.encode(), receive_ms) == expected
