"""Fuzz timestamp extraction: the Cython module against the pure-Python reference written
with regular expressions, datetime and zoneinfo (tests/reference/syslog.py), and both against
times built with datetime and zoneinfo."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import cache
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from kinesyslog._fast import syslog as cython
from tests.reference import syslog as reference
from tests.reference.syslog import fraction_ms

IMPLEMENTATIONS = (cython, reference)
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


@cache
def extractor(implementation: ModuleType, zone: str) -> Any:
    return implementation.TimestampExtractor(zone)


def extract(message: bytes, receive_ms: int, zone: str) -> int:
    """The timestamp both implementations give (asserting that they agree)."""
    results = [extractor(implementation, zone).extract(message, receive_ms)
               for implementation in IMPLEMENTATIONS]
    assert results[0] == results[1], results
    return results[0]


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
    extract(message, receive_ms, zone)


@given(st.binary(max_size=60), st.integers(-(2**63), 2**63 - 1), zones)
def test_arbitrary_bytes_never_raise(message: bytes, receive_ms: int, zone: str) -> None:
    assert isinstance(extract(message, receive_ms, zone), int)


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
    assert extract(text.encode(), receive_ms, "UTC") == expected


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
    assert extract(text.encode(), receive_ms, zone) == expected


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
    assert extract(text.encode(), receive_ms, zone) == expected
