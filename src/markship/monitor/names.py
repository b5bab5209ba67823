"""The names of markship's Prometheus metrics: the agent's /metrics (monitor.metrics) exports
these, the example alert rules (contrib/prometheus-alerts.yml) use them, and a test holds
both to this list. Labels: `server`, `repository`, `check`."""

from __future__ import annotations

# Histograms: Prometheus adds the series NAME_bucket, NAME_sum and NAME_count.
HISTOGRAMS = (
    "markship_mark_duration_seconds",
    "markship_mark_barrier_hold_seconds",
)

METRIC_NAMES = (
    # the agent's snapshot
    "markship_up",
    "markship_snapshot_age_seconds",
    "markship_snapshot_duration_seconds",
    # the group: the RPO now (absent or NaN without a complete mark) and the marks
    "markship_newest_complete_mark_age_seconds",
    *HISTOGRAMS,
    "markship_marks_skipped_total",
    "markship_marks_failed_total",
    # per server
    "markship_server_up",
    "markship_archive_lag_bytes",
    "markship_archive_lag_seconds",
    "markship_archive_lag_segments",
    "markship_archiver_failed_total",
    "markship_last_backup_age_seconds",
    "markship_last_backup_size_bytes",
    "markship_last_backup_duration_seconds",
    "markship_standby_replay_lag_bytes",
    "markship_standby_marks_behind",
    # per repository (the primary and each [[repository.copy]])
    "markship_repository_size_bytes",
    "markship_repository_up",
    "markship_copy_lag_seconds",
    # verification, drills, the key backup, the checklist, WAL gaps
    "markship_verify_age_seconds",
    "markship_verify_ok",
    "markship_drill_age_seconds",
    "markship_drill_ok",
    "markship_key_backup_ok",
    "markship_checklist_missing_steps",
    "markship_wal_gaps_open",
)
