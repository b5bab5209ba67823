"""How good or bad a figure is: the one set of thresholds that `markship check`, the status
page's colours and the metrics' example alert rules share."""

from __future__ import annotations

from typing import Literal

from markship.config.model import Config

Level = Literal["ok", "warning", "critical"]

# Without [check] thresholds, the newest complete mark may be this many mark intervals old
# before it is a warning, and before it is critical.
RPO_WARNING_INTERVALS = 2.0
RPO_CRITICAL_INTERVALS = 5.0


def rpo_thresholds(config: Config) -> tuple[float, float]:
    """(warning, critical) ages in seconds of the newest complete mark."""
    interval = config.marks.interval
    warning = config.check.rpo_warning or RPO_WARNING_INTERVALS * interval
    critical = config.check.rpo_critical or max(RPO_CRITICAL_INTERVALS * interval, warning)
    return warning, critical


def rpo_level(age_seconds: float | None, config: Config) -> Level:
    """The level of the RPO now (the newest complete mark's age; None: no complete mark)."""
    if age_seconds is None:
        return "critical"
    warning, critical = rpo_thresholds(config)
    if age_seconds > critical:
        return "critical"
    return "warning" if age_seconds > warning else "ok"
