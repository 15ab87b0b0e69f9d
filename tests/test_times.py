from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from service.times import parse_timestamp, timestamp


def test_equal_instants_are_equal_text_in_utc_with_microseconds() -> None:
    berlin = datetime(2026, 11, 27, 20, 30, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp(berlin) == "2026-11-27T19:30:00.000000+00:00"
    assert timestamp(berlin) == timestamp(datetime(2026, 11, 27, 19, 30, tzinfo=UTC))


def test_a_timestamp_reads_back_as_the_same_instant() -> None:
    when = datetime(2026, 11, 27, 19, 30, 5, 123456, tzinfo=UTC)
    assert parse_timestamp(timestamp(when)) == when


def test_unset_is_none_and_a_time_without_a_zone_is_utc() -> None:
    assert parse_timestamp(None) is None
    assert parse_timestamp("") is None
    assert parse_timestamp("2026-11-27T19:30") == datetime(2026, 11, 27, 19, 30, tzinfo=UTC)
    assert parse_timestamp("2026-11-27T20:30:00+01:00") == datetime(2026, 11, 27, 19, 30, tzinfo=UTC)
