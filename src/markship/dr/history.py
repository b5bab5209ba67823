"""The failovers the repository records: which mark each used, whether it finished, which site
it made production and the role-swapped config it wrote (and on which host).

A record is written when a failover starts and rewritten as it goes; a damaged one is reported
and skipped, never hiding the others.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from markship.repository import layout, records
from markship.repository.base import Repository


class FailoverRecord(records.Record):
    id: str
    mark: str
    started_at: datetime
    status: Literal["running", "done", "failed"]
    finished_at: datetime | None = None
    promoted: list[str] = Field(default_factory=list)
    report: dict[str, Any] = Field(default_factory=dict)
    # Written since the failover writes the role-swapped config itself (absent in older ones).
    from_site: str | None = None  # the site that was production
    to_site: str | None = None  # the site it made production
    new_config: str | None = None  # the role-swapped config, a path on `host`
    host: str | None = None


def failovers(repo: Repository) -> list[FailoverRecord]:
    """Every readable failover record, oldest first."""
    return records.read_folder(repo, layout.FAILOVERS, FailoverRecord, stem=lambda r: r.id)


def unfinished(repo: Repository) -> FailoverRecord | None:
    """The newest failover when it did not finish (a failover run again resumes it)."""
    found = failovers(repo)
    return found[-1] if found and found[-1].status == "running" else None


def newest_done(repo: Repository) -> FailoverRecord | None:
    """The newest failover that finished: marks made before it started are history."""
    done = [r for r in failovers(repo) if r.status == "done"]
    return max(done, key=lambda r: r.started_at, default=None)
