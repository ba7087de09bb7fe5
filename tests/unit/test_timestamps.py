"""Every time on the wire is ISO-8601 UTC with milliseconds and a Z (docs/CONTRACT.md), whether it
was a datetime or, as Redis keeps times, milliseconds since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ledger.timestamps import timestamp, timestamp_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - EPOCH) // timedelta(
    milliseconds=1
)


def test_a_time_is_written_in_utc_to_the_millisecond():
    moment = datetime(2026, 11, 23, 5, 15, 30, 123999, tzinfo=timezone(timedelta(hours=-5)))
    assert timestamp(moment) == "2026-11-23T10:15:30.123Z"


def test_milliseconds_are_written_as_the_same_time_would_be():
    assert timestamp_ms(0) == "1970-01-01T00:00:00.000Z"
    assert timestamp_ms(1_795_428_930_123) == "2026-11-23T10:15:30.123Z"
    leap_day_last_ms = (datetime(2028, 3, 1, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1) - 1
    assert timestamp_ms(leap_day_last_ms) == "2028-02-29T23:59:59.999Z"


@given(st.integers(min_value=0, max_value=LAST_MS))
def test_milliseconds_and_datetimes_agree(ms):
    assert timestamp_ms(ms) == timestamp(EPOCH + timedelta(milliseconds=ms))
