"""How good or bad a figure is: the one set of thresholds and rules that `markship check`,
the status page's colours and the example alert rules (contrib/prometheus-alerts.yml) share.

Every threshold is a (warning, critical) pair: a figure above the first is a warning, above
the second critical. `[check]` in the config overrides each default below.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from markship.backup.status import ServerStatus
from markship.config.model import Config

Level = Literal["ok", "warning", "critical"]
Thresholds = tuple[float, float]

# Without [check] thresholds, the newest complete mark may be this many mark intervals old
# before it is a warning, and before it is critical.
RPO_WARNING_INTERVALS = 2.0
RPO_CRITICAL_INTERVALS = 5.0
# A finished WAL segment waiting this long for the archiver (seconds).
ARCHIVE_LAG_SECONDS: Thresholds = (300.0, 900.0)
# WAL written but not in the repository. The segment being written counts too, so a healthy
# server shows up to one segment (16 MiB) here.
ARCHIVE_LAG_BYTES: Thresholds = (256.0 * 2**20, 1024.0 * 2**20)
# The newest restorable base backup's age, in periods of [schedule] frequency: one backup
# missed is a warning, two critical.
BACKUP_AGE_PERIODS: Thresholds = (1.5, 2.5)
SCHEDULE_PERIOD_SECONDS = {"hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0}
# Archived WAL a DR standby has not replayed: what a failover would still have to replay.
STANDBY_LAG_BYTES: Thresholds = (1024.0 * 2**20, 4096.0 * 2**20)

# Findings without a figure. A production server that cannot be reached, an archiver whose
# last attempt failed and a WAL gap put the group's recoverability at risk; a standby or a
# repository copy that cannot be reached only weakens the DR site; so does a key without a
# backup.
SERVER_UNREACHABLE: Level = "critical"
ARCHIVER_FAILING: Level = "critical"
WAL_GAP_OPEN: Level = "critical"
NO_BACKUP: Level = "critical"
NO_COMPLETE_MARK: Level = "critical"
STANDBY_UNREACHABLE: Level = "warning"
KEY_BACKUP_MISSING: Level = "warning"  # the encryption key has no recorded backup
COPY_UNREACHABLE: Level = "warning"

_ORDER: dict[Level, int] = {"ok": 0, "warning": 1, "critical": 2}


def worst(levels: Iterable[Level]) -> Level:
    """The worst of the levels ("ok" for none)."""
    return max(levels, key=_ORDER.__getitem__, default="ok")


def level_of(value: float, thresholds: Thresholds) -> Level:
    """A figure's level against its (warning, critical) thresholds."""
    warning, critical = thresholds
    if value > critical:
        return "critical"
    return "warning" if value > warning else "ok"


def _pair(warning: float | None, critical: float | None, default: Thresholds) -> Thresholds:
    """The configured pair, a missing side taken from the default (never below the other)."""
    low = warning if warning is not None else default[0]
    high = critical if critical is not None else max(default[1], low)
    return float(min(low, high)), float(high)


def rpo_thresholds(config: Config) -> Thresholds:
    """(warning, critical) ages in seconds of the newest complete mark."""
    interval = config.marks.interval
    return _pair(config.check.rpo_warning, config.check.rpo_critical,
                 (RPO_WARNING_INTERVALS * interval, RPO_CRITICAL_INTERVALS * interval))


def rpo_level(age_seconds: float | None, config: Config) -> Level:
    """The level of the RPO now (the newest complete mark's age; None: no complete mark)."""
    if age_seconds is None:
        return NO_COMPLETE_MARK
    return level_of(age_seconds, rpo_thresholds(config))


def archive_lag_seconds_thresholds(config: Config) -> Thresholds:
    return _pair(config.check.archive_lag_warning, config.check.archive_lag_critical,
                 ARCHIVE_LAG_SECONDS)


def archive_lag_bytes_thresholds(config: Config) -> Thresholds:
    return _pair(config.check.archive_lag_bytes_warning,
                 config.check.archive_lag_bytes_critical, ARCHIVE_LAG_BYTES)


def backup_age_thresholds(config: Config) -> Thresholds:
    """(warning, critical) ages in seconds of a server's newest restorable base backup."""
    period = SCHEDULE_PERIOD_SECONDS[config.schedule.frequency]
    return _pair(config.check.backup_age_warning, config.check.backup_age_critical,
                 (BACKUP_AGE_PERIODS[0] * period, BACKUP_AGE_PERIODS[1] * period))


def standby_lag_bytes_thresholds(config: Config) -> Thresholds:
    return _pair(config.check.standby_lag_bytes_warning,
                 config.check.standby_lag_bytes_critical, STANDBY_LAG_BYTES)


def archive_lag_level(server: ServerStatus, config: Config) -> Level:
    """The worse of the archive lag in bytes and in seconds (unknown parts count as ok)."""
    levels: list[Level] = []
    if server.archive_lag_bytes is not None:
        levels.append(level_of(server.archive_lag_bytes, archive_lag_bytes_thresholds(config)))
    if server.archive_lag_seconds is not None:
        levels.append(level_of(server.archive_lag_seconds,
                               archive_lag_seconds_thresholds(config)))
    return worst(levels)


def backup_age_level(age_seconds: float | None, config: Config) -> Level:
    """The level of a server's newest restorable backup's age (None: there is none)."""
    if age_seconds is None:
        return NO_BACKUP
    return level_of(age_seconds, backup_age_thresholds(config))


def standby_lag_level(lag_bytes: int | None, config: Config) -> Level:
    """The level of a standby's replay lag in bytes (None: not known, counted as ok)."""
    if lag_bytes is None:
        return "ok"
    return level_of(lag_bytes, standby_lag_bytes_thresholds(config))
