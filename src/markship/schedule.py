"""When the next full backup is due: pure functions over aware datetimes.

A schedule is stated in an explicit time zone ("daily at 01:30 Europe/Berlin"); the wall-clock
time is kept across daylight-saving changes, so the UTC instant moves with them. A wall-clock
time that does not exist on a spring-forward day runs at the first instant after the gap; one
that occurs twice on a fall-back day runs at its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Frequency = Literal["hourly", "daily", "weekly"]
WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock `at` on `day` in `zone`, resolving DST gaps and folds."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=zone, fold=0)
    round_trip = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if round_trip == naive:
        return first.astimezone(UTC)
    # Inside a spring-forward gap: run at the transition, the first instant after the gap.
    # The two readings of the missing wall time bracket it; bisect on the UTC offset.
    low = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = first.astimezone(UTC)
    low, high = min(low, high), max(low, high)
    before = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)


def next_run(frequency: Frequency, hour: int, minute: int, weekday: str, zone_name: str,
             after: datetime) -> datetime:
    """The first scheduled instant strictly after `after` (returned in UTC)."""
    zone = ZoneInfo(zone_name)
    if frequency == "hourly":
        base = after.astimezone(UTC).replace(minute=minute, second=0, microsecond=0)
        return base if base > after else base + timedelta(hours=1)
    local_day = after.astimezone(zone).date() - timedelta(days=1)
    for offset in range(0, 16):
        day = local_day + timedelta(days=offset)
        if frequency == "weekly" and day.weekday() != WEEKDAYS.index(weekday):
            continue
        candidate = _local_instant(day, time(hour, minute), zone)
        if candidate > after:
            return candidate
    raise AssertionError("no scheduled instant within 16 days")  # unreachable for valid input
