from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service.times import parse_duration, parse_timestamp, time_window, timestamp


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


@pytest.mark.parametrize(("raw", "seconds"), [("45", 45.0), ("2.5", 2.5), (" 1h30m ", 5400.0)])
def test_a_duration_as_text_may_be_plain_seconds(raw: str, seconds: float) -> None:
    # environment overrides and query strings are text: "45" means 45 seconds, as 45 does in YAML
    assert parse_duration(raw) == seconds


def test_every_model_that_takes_a_duration_takes_the_same_forms() -> None:
    from service.playbooks.playbook import Playbook
    from service.settings import Settings
    from service.steps import exec as exec_step
    from service.steps import promql
    from service.web.api_models import PauseRequest

    step = exec_step.Spec.model_validate({"type": "exec", "argv": ["true"], "timeout": "1m", "backoff": "2s"})
    assert (step.timeout, step.backoff) == (60.0, 2.0)
    query = {"type": "promql", "query": "up", "timeout": "30s", "range": {"duration": "1h", "step": "1m"}}
    assert promql.Spec.model_validate(query).range == promql.RangeEvidence(duration=3600.0, step=60.0)
    playbook = Playbook.model_validate(
        {"name": "p", "timeout": "1h30m", "steps": [{"type": "tcp", "port": 1, "timeout": "5s"}]}
    )
    assert (playbook.timeout, playbook.steps[0].timeout) == (5400.0, 5.0)
    settings = Settings.model_validate(
        {
            "store": {"prune_interval_seconds": "10m"},
            "limits": {"storm_window_seconds": "2m", "shutdown_grace_seconds": "5s"},
        }
    )
    assert (settings.store.prune_interval_seconds, settings.limits.storm_window_seconds) == (600.0, 120.0)
    assert PauseRequest.model_validate({"reason": "r", "duration": "2h"}).duration_seconds == 7200.0
    assert PauseRequest.model_validate({"reason": "r", "duration_seconds": 60}).duration_seconds == 60.0
    with pytest.raises(ValueError, match="not both"):
        PauseRequest.model_validate({"reason": "r", "duration": "2h", "duration_seconds": 60})


@pytest.mark.parametrize(
    ("window", "at", "inside"),
    [
        (("08:00", "18:00", "mon-fri"), datetime(2026, 12, 2, 8, 0, tzinfo=UTC), True),  # after is inclusive
        (("08:00", "18:00", "mon-fri"), datetime(2026, 12, 2, 18, 0, tzinfo=UTC), False),  # before is not
        (("08:00", "18:00", "mon-fri"), datetime(2026, 12, 5, 12, 0, tzinfo=UTC), False),  # a Saturday
        (("22:00", "06:00", None), datetime(2026, 12, 2, 23, 0, tzinfo=UTC), True),  # spans midnight
        (("22:00", "06:00", None), datetime(2026, 12, 2, 5, 59, tzinfo=UTC), True),
        (("22:00", "06:00", None), datetime(2026, 12, 2, 12, 0, tzinfo=UTC), False),
        ((None, None, ["sat", "sun"]), datetime(2026, 12, 6, 12, 0, tzinfo=UTC), True),
        ((None, None, "fri-mon"), datetime(2026, 12, 7, 12, 0, tzinfo=UTC), True),  # a range that wraps
        ((None, None, "fri-mon"), datetime(2026, 12, 8, 12, 0, tzinfo=UTC), False),
    ],
)
def test_time_window_is_home_assistants_time_condition(
    window: tuple[str | None, str | None, str | list[str] | None], at: datetime, inside: bool
) -> None:
    after, before, weekday = window
    assert time_window(after, before, weekday).contains(at) is inside


def test_time_window_reads_the_clock_in_its_zone() -> None:
    berlin_office = time_window("08:00", "18:00", "mon-fri", tz="Europe/Berlin")
    assert berlin_office.contains(datetime(2026, 12, 2, 7, 30, tzinfo=UTC))  # 08:30 in Berlin
    assert not berlin_office.contains(datetime(2026, 12, 2, 17, 30, tzinfo=UTC))  # 18:30 in Berlin
