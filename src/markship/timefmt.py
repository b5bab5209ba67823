"""Times as markship shows and accepts them: always with an explicit zone."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def show(moment: datetime | None) -> str:
    """`2026-11-25T19:02:11Z` (UTC, second precision); '-' for None."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def show_exact(moment: datetime) -> str:
    """`2026-11-25T19:02:11.123456Z` (UTC, microseconds): for machines, where two times a
    second apart must not read the same."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def exact_times(value: object) -> object:
    """`value` with every time inside it (in dicts, lists and tuples) as `show_exact` writes
    it: what every JSON document markship prints or serves goes through."""
    if isinstance(value, datetime):
        return show_exact(value)
    if isinstance(value, dict):
        return {key: exact_times(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [exact_times(item) for item in value]
    return value


def parse_aware(text: str) -> datetime:
    """Parse an ISO 8601 time that states its zone (`Z` or `+01:00`); raise ValueError else."""
    cleaned = text.strip()
    if cleaned.endswith(("Z", "z")):
        cleaned = cleaned[:-1] + "+00:00"
    moment = datetime.fromisoformat(cleaned)
    if moment.tzinfo is None:
        raise ValueError(
            f"time {text!r} has no time zone: add one, e.g. {text}Z for UTC or {text}+01:00"
        )
    return moment


def age_seconds(moment: datetime | None, now: datetime | None = None) -> float | None:
    if moment is None:
        return None
    return ((now or utcnow()) - moment).total_seconds()


def as_json(moment: datetime) -> str:
    """A UTC time as records store it in JSON (pydantic's form: `2026-11-25T19:02:11.123456Z`,
    without the fraction when it is zero), for records written without the model."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
