"""Schedules: parsing "daily 03:00 Europe/Berlin" and when the next run is due, as pure
functions over aware datetimes.

A schedule is stated in an explicit time zone ("daily at 01:30 Europe/Berlin"); the wall-clock
time is kept across daylight-saving changes, so the UTC instant moves with them. A wall-clock
time that does not exist on a spring-forward day runs at the first instant after the gap; one
that occurs twice on a fall-back day runs at its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from markship.errors import ConfigError

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


_FORMS = ('write "hourly :MM", "daily HH:MM ZONE" or "weekly DAY HH:MM ZONE", e.g. '
          '"daily 03:00 Europe/Berlin"')


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule ("daily 03:00 Europe/Berlin"), in the terms next_run() takes."""

    frequency: Frequency
    hour: int
    minute: int
    weekday: str
    zone: str

    def next_after(self, moment: datetime) -> datetime:
        """The first scheduled instant strictly after `moment` (in UTC)."""
        return next_run(self.frequency, self.hour, self.minute, self.weekday, self.zone, moment)


def parse_schedule(text: str, where: str = "[[dump]] schedule") -> Schedule:
    """Parse "hourly :MM", "daily HH:MM ZONE" or "weekly DAY HH:MM ZONE" (ZONE: an IANA name
    such as UTC or Europe/Berlin). Raises ConfigError saying what is wrong with `text`."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{where} {text!r} is not valid: {why}", _FORMS)

    words = text.split()
    if not words:
        raise bad("it is empty")
    kind, rest = words[0].lower(), words[1:]
    if kind == "hourly":
        match = re.fullmatch(r":(\d{2})", rest[0]) if len(rest) == 1 else None
        if match is None or int(match.group(1)) > 59:
            raise bad('an hourly schedule names only the minute past each hour, e.g. '
                      '"hourly :15"')
        return Schedule("hourly", 0, int(match.group(1)), WEEKDAYS[0], "UTC")
    weekday = WEEKDAYS[0]
    if kind == "weekly":
        if not rest or rest[0].lower() not in WEEKDAYS:
            found = f" (found {rest[0]!r})" if rest else ""
            raise bad(f"a weekly schedule needs a day, monday … sunday{found}")
        weekday, rest = rest[0].lower(), rest[1:]
    elif kind != "daily":
        raise bad(f"it must start with hourly, daily or weekly (found {words[0]!r})")
    if not rest:
        raise bad("the time of day HH:MM is missing")
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", rest[0])
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise bad(f"{rest[0]!r} is not a time of day HH:MM (00:00 to 23:59)")
    if len(rest) < 2:
        raise bad("the time zone is missing: add one, e.g. UTC or Europe/Berlin")
    if len(rest) > 2:
        raise bad(f"unexpected {' '.join(rest[2:])!r} after the time zone")
    zone = rest[1]
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise bad(f"unknown time zone {zone!r}: use an IANA name such as UTC or "
                  "Europe/Berlin") from None
    frequency: Frequency = "daily" if kind == "daily" else "weekly"
    return Schedule(frequency, int(match.group(1)), int(match.group(2)), weekday, zone)
