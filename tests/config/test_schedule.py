"""Backup schedules in an explicit zone fire at the right UTC instant, DST changes included."""

from __future__ import annotations

from markship.config.schedule import next_run
from tests.support.checks import utc


def test_daily_in_berlin_across_the_autumn_change() -> None:
    # 2026-10-25 03:00 CEST → 02:00 CET. 01:30 Berlin is 23:30Z in summer, 00:30Z in winter.
    first = next_run("daily", 1, 30, "sunday", "Europe/Berlin", utc("2026-10-23T12:00:00"))
    assert first == utc("2026-10-23T23:30:00")
    second = next_run("daily", 1, 30, "sunday", "Europe/Berlin", first)
    assert second == utc("2026-10-24T23:30:00")
    third = next_run("daily", 1, 30, "sunday", "Europe/Berlin", second)
    assert third == utc("2026-10-26T00:30:00")


def test_daily_in_berlin_across_the_spring_change() -> None:
    # 2026-03-29 02:00 CET → 03:00 CEST: 02:30 does not exist that day, it runs at 03:00 CEST.
    before = next_run("daily", 2, 30, "sunday", "Europe/Berlin", utc("2026-03-27T12:00:00"))
    assert before == utc("2026-03-28T01:30:00")
    gap_day = next_run("daily", 2, 30, "sunday", "Europe/Berlin", before)
    assert gap_day == utc("2026-03-29T01:00:00")
    after = next_run("daily", 2, 30, "sunday", "Europe/Berlin", gap_day)
    assert after == utc("2026-03-30T00:30:00")


def test_ambiguous_hour_runs_once_at_its_first_occurrence() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25: at 00:30Z (CEST) and 01:30Z (CET).
    run = next_run("daily", 2, 30, "sunday", "Europe/Berlin", utc("2026-10-24T12:00:00"))
    assert run == utc("2026-10-25T00:30:00")
    assert next_run("daily", 2, 30, "sunday", "Europe/Berlin", run) == utc("2026-10-26T01:30:00")


def test_weekly_and_hourly_and_utc() -> None:
    # 2026-11-25 is a Wednesday
    assert next_run("weekly", 4, 0, "sunday", "UTC", utc("2026-11-25T10:00:00")) == \
        utc("2026-11-29T04:00:00")
    assert next_run("hourly", 0, 15, "sunday", "UTC", utc("2026-11-25T10:20:00")) == \
        utc("2026-11-25T11:15:00")
    assert next_run("daily", 23, 0, "sunday", "America/New_York",
                    utc("2026-11-25T10:00:00")) == utc("2026-11-26T04:00:00")
