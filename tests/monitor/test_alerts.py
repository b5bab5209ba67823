"""contrib/prometheus-alerts.yml: valid rules, only metric names markship exports
(markship.monitor.names), and the thresholds `markship check` uses by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # PyYAML comes with moto; no stubs pinned

from markship.config.model import Config
from markship.monitor import health
from markship.monitor.names import HISTOGRAMS, METRIC_NAMES

RULES = Path(__file__).parents[2] / "contrib" / "prometheus-alerts.yml"
DEFAULTS = Config.model_validate({"group": {"name": "g"}, "repository": {"path": "/srv/r"},
                                  "server": [{"name": "a", "conninfo": "host=x"}]})


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    rules: list[dict[str, Any]] = []
    for group in document["groups"]:
        assert group["name"] and group["rules"]
        rules += group["rules"]
    return rules


def test_every_rule_is_complete_and_named_once() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and len(names) >= 10
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_every_metric_a_rule_names_is_one_markship_exports() -> None:
    series = set(METRIC_NAMES) | {f"{h}_{part}" for h in HISTOGRAMS
                                  for part in ("bucket", "sum", "count")}
    used = {name for rule in _rules() for name in re.findall(r"\bmarkship_\w+", rule["expr"])}
    assert used, "the rules name no markship metric"
    assert used <= series, f"not exported by markship: {sorted(used - series)}"


def test_thresholds_are_those_of_markship_check() -> None:
    expected = {
        "MarkshipRPOWarning": health.rpo_thresholds(DEFAULTS)[0],
        "MarkshipRPOCritical": health.rpo_thresholds(DEFAULTS)[1],
        "MarkshipArchiveLagBytesWarning": health.archive_lag_bytes_thresholds(DEFAULTS)[0],
        "MarkshipArchiveLagBytesCritical": health.archive_lag_bytes_thresholds(DEFAULTS)[1],
        "MarkshipArchiveLagSecondsWarning": health.archive_lag_seconds_thresholds(DEFAULTS)[0],
        "MarkshipArchiveLagSecondsCritical":
            health.archive_lag_seconds_thresholds(DEFAULTS)[1],
        "MarkshipBackupAgeWarning": health.backup_age_thresholds(DEFAULTS)[0],
        "MarkshipBackupAgeCritical": health.backup_age_thresholds(DEFAULTS)[1],
        "MarkshipStandbyLagWarning": health.standby_lag_bytes_thresholds(DEFAULTS)[0],
        "MarkshipStandbyLagCritical": health.standby_lag_bytes_thresholds(DEFAULTS)[1],
    }
    found = {r["alert"]: r["expr"] for r in _rules()}
    for alert, threshold in expected.items():
        number = re.fullmatch(r"markship_\w+ > (\d+)", found[alert])
        assert number, f"{alert}: {found[alert]}"
        assert float(number[1]) == threshold, f"{alert}: {number[1]} != {threshold:g}"
