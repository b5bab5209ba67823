"""The group's state gathered once: what `markship status` shows, and what the agent's web
page, `/metrics`, `/api/status` and `markship check` read.

Each piece is gathered on its own: a piece that cannot be read becomes a problem line (and
its part of the snapshot stays empty), it never hides the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from markship.backup.status import RepositoryStatus, ServerStatus
from markship.config.model import Config
from markship.dr.checklist import Step
from markship.dr.standby import StandbyStatus
from markship.errors import MarkshipError, RepositoryError
from markship.marks.choose import MarkState
from markship.repository.base import Repository
from markship.repository.catalog import MarkRecord
from markship.repository.copies import Copy
from markship.repository.journal import JournalEntry
from markship.repository.restorable import GapState, SetState
from markship.timefmt import utcnow

T = TypeVar("T")

# How far back the snapshot looks for marks, backups and journal entries (the page's timeline).
WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Problem:
    """One problem `markship status` lists. `kind` says which part of the status it comes
    from (markship check reports some of them through findings of their own); `untold`: a
    piece of the state could not be read, so nothing is known about it."""

    kind: Literal["server_repository", "gap", "gaps_untold", "dropped", "newest_untold",
                  "repository"]
    text: str
    untold: bool = False


@dataclass(frozen=True)
class GroupStatus:
    """What `markship status` shows: per server, per repository, the WAL gaps, the newest
    complete mark, the key-backup warning and every problem found on the way."""

    servers: list[ServerStatus]
    repositories: list[RepositoryStatus]
    gaps: list[GapState]
    newest: MarkState | None
    key_warning: str | None
    problems: list[Problem]

    @property
    def healthy(self) -> bool:
        return not self.problems and all(s.reachable for s in self.servers)


def group_status(config: Config, repo: Repository, copies: list[Copy]) -> GroupStatus:
    """Gather what `markship status` shows (servers and repositories are asked in parallel)."""
    from markship.backup.status import group_status as server_states
    from markship.backup.status import repository_status
    from markship.marks.choose import newest_complete
    from markship.repository.keys import backup_warning
    from markship.repository.restorable import Gaps
    from markship.wal import guard

    servers = server_states(config, repo)
    problems = [Problem("server_repository", f"{s.server}: {s.repository_error}")
                for s in servers if s.repository_error]
    try:
        gaps = Gaps(repo).states()
    except RepositoryError as exc:
        gaps = []
        problems.append(Problem("gaps_untold", f"WAL gaps cannot be told: {exc.one_line()}",
                                untold=True))
    problems += [Problem("gap", f"{g.text()} (markship backup; the agent takes one as soon "
                                "as the repository can be written)")
                 for g in gaps if g.healed_by is None]
    if config.source is not None:
        waiting = [gap for s in config.servers
                   for gap in guard.unrecorded(str(config.source), s.name)]
        problems += [Problem("dropped",
                             f"WAL of server {g['server']} dropped by pg_wal protection on "
                             f"this host: {g['first_segment']}..{g['last_segment']} "
                             f"({g['segments']} segments, written {g['wal_from']} to "
                             f"{g['wal_to']}), not in the repository yet: it cannot be "
                             "written") for g in waiting]
    try:
        newest = newest_complete(repo, config)
    except RepositoryError as exc:  # a server's WAL folder cannot be read
        newest = None
        problems.append(Problem("newest_untold", "the newest complete mark cannot be told: "
                                f"{exc.one_line()}", untold=True))
    try:
        key_warning = backup_warning(config, repo)
    except RepositoryError:  # the repository cannot be read: said below
        key_warning = None
    repositories = repository_status(repo, copies)
    problems += [Problem("repository", f"repository {r.name} ({r.location}): {r.error}")
                 for r in repositories if not r.reachable]
    return GroupStatus(servers, repositories, gaps, newest, key_warning, problems)


def status_json(status: GroupStatus) -> dict[str, Any]:
    """`markship status --json` (and the `status` part of `/api/status`); its times are
    datetimes, written by `timefmt.exact_times` where it is printed."""
    newest = status.newest
    return {"servers": [asdict(s) | {"healthy": s.healthy} for s in status.servers],
            "repositories": [asdict(r) for r in status.repositories],
            "wal_gaps": [g.record.model_dump() | {
                "restorable_again": g.healed_by is not None,
                "healed_by_set": g.healed_by.set_id if g.healed_by else None,
                "unrestorable_from": g.record.wal_from,
                "unrestorable_until": g.unrestorable_until,
                "text": g.text()} for g in status.gaps],
            "latest_complete_mark": None if newest is None else {
                "name": newest.record.name, "created_at": newest.record.created_at,
                "age_seconds": round(newest.age_seconds, 3)},
            "warnings": [status.key_warning] if status.key_warning else [],
            "problems": [p.text for p in status.problems]}


@dataclass(frozen=True)
class Snapshot:
    """Everything the page, the metrics and the check show, taken at `taken_at`."""

    taken_at: datetime
    seconds: float  # how long gathering it took
    status: GroupStatus
    marks: list[MarkState]  # created within WINDOW, oldest first
    sets: list[SetState]  # every backup set, oldest first
    standbys: list[StandbyStatus]
    checklist: list[Step]
    journal: list[JournalEntry]  # written within WINDOW, oldest first
    problems: list[str] = field(default_factory=list)  # pieces that could not be gathered


def _piece(problems: list[str], what: str, gather: Callable[[], list[T]]) -> list[T]:
    try:
        return gather()
    except MarkshipError as exc:
        problems.append(f"{what} cannot be told: {exc.one_line()}")
        return []


def take(config: Config, repo: Repository, copies: list[Copy],
         known_marks: dict[str, MarkRecord] | None = None) -> Snapshot:
    """Gather a snapshot (it asks every server and standby and lists the repository). For
    the agent's refresher thread, which passes the same `known_marks` every time so that
    only new mark records are read (see marks.choose.mark_states), and one-shot commands."""
    from markship.dr.checklist import checklist
    from markship.dr.standby import standby_status
    from markship.marks.choose import mark_states
    from markship.repository import catalog, journal, restorable

    start = utcnow()
    since = start - WINDOW
    problems: list[str] = []
    status = group_status(config, repo, copies)

    def marks() -> list[MarkState]:
        return [s for s in mark_states(repo, config, known=known_marks)
                if s.record.created_at >= since]

    def sets() -> list[SetState]:
        wal: dict[str, restorable.WalIndex] = {}
        return [restorable.set_state(repo, r, wal) for r in catalog.list_sets(repo)]

    def standbys() -> list[StandbyStatus]:
        return standby_status(config, repo) if config.dr_site else []

    found_marks = _piece(problems, "marks", marks)
    found_sets = _piece(problems, "backup sets", sets)
    found_standbys = _piece(problems, "standbys", standbys)
    steps = _piece(problems, "the checklist", lambda: checklist(config, repo))
    entries = _piece(problems, "the journal", lambda: journal.entries(repo, since))
    end = utcnow()
    return Snapshot(end, (end - start).total_seconds(), status, found_marks, found_sets,
                    found_standbys, steps, entries, problems)
