"""Per-server state of the group: last backup, archive position, lag, archiver failures."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

from markship import perserver
from markship.config.model import Config, ServerSection
from markship.errors import MarkshipError, RepositoryError
from markship.pg import sql
from markship.pg.lsn import parse_segment_name
from markship.repository import catalog, restorable
from markship.repository.base import Repository
from markship.repository.copies import Copy
from markship.timefmt import utcnow


@dataclass(frozen=True)
class ServerStatus:
    server: str
    reachable: bool
    error: str | None
    last_backup_set: str | None
    last_backup_at: datetime | None
    last_archived_wal: str | None
    last_archived_at: datetime | None
    repository_newest_wal: str | None
    archive_lag_bytes: int | None
    archive_lag_seconds: float | None
    archiver_failed_count: int | None
    last_failed_wal: str | None
    last_failed_at: datetime | None
    repository_error: str | None = None  # this server's part of the repository is unreadable

    @property
    def archiver_failing(self) -> bool:
        """The archiver failed on its last attempt (a failure newer than the last success in
        pg_stat_archiver)."""
        failed, archived = self.last_failed_at, self.last_archived_at
        return failed is not None and (archived is None or failed > archived)

    @property
    def healthy(self) -> bool:
        return (self.reachable and self.last_backup_set is not None
                and not self.archiver_failing and self.repository_error is None)


def _last_backups(repo: Repository) -> dict[str, catalog.BackupRecord]:
    newest: dict[str, catalog.BackupRecord] = {}
    wal: dict[str, restorable.WalIndex] = {}
    try:
        sets = catalog.list_sets(repo)
    except RepositoryError:
        return newest  # the repository cannot be read: each server's status says so
    for record in sets:
        try:
            state = restorable.set_state(repo, record, wal)
        except RepositoryError:
            continue  # a server's WAL folder cannot be read: that server's status says so
        if state.restorable:
            newest.update(state.restorable)
    return newest


def server_status(repo: Repository, server: ServerSection,
                  last_backup: catalog.BackupRecord | None) -> ServerStatus:
    repository_error: str | None = None
    try:
        newest = restorable.WalIndex(repo, server.name).newest()
    except RepositoryError as exc:  # the rest of the report still stands
        newest, repository_error = None, exc.one_line()
    status = ServerStatus(
        server=server.name, reachable=False, error=None,
        last_backup_set=last_backup.set_id if last_backup else None,
        last_backup_at=last_backup.consistent_at if last_backup else None,
        last_archived_wal=None, last_archived_at=None,
        repository_newest_wal=newest.name() if newest else None,
        archive_lag_bytes=None, archive_lag_seconds=None, archiver_failed_count=None,
        last_failed_wal=None, last_failed_at=None, repository_error=repository_error,
    )
    try:
        with sql.connect(server.conninfo, server.name) as conn:
            stats = sql.archiver_stats(conn)
    except MarkshipError as exc:
        return replace(status, error=exc.message)
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    if newest is not None and newest.timeline == stats.timeline:
        lag_bytes = max(stats.current_lsn - newest.next().start_lsn(), 0)
        # Lag in seconds counts only when a finished segment is waiting to be archived.
        behind = parse_segment_name(stats.current_wal_file).number - newest.number > 1
        if stats.last_archived_time is not None:
            lag_seconds = (utcnow() - stats.last_archived_time).total_seconds() if behind else 0.0
    return replace(status, reachable=True, last_archived_wal=stats.last_archived_wal,
                   last_archived_at=stats.last_archived_time, archive_lag_bytes=lag_bytes,
                   archive_lag_seconds=lag_seconds, archiver_failed_count=stats.failed_count,
                   last_failed_wal=stats.last_failed_wal, last_failed_at=stats.last_failed_time)


def group_status(config: Config, repo: Repository) -> list[ServerStatus]:
    """Status of every server, queried in parallel; unreachable servers are reported, not fatal."""
    last = _last_backups(repo)
    return list(perserver.gather({s.name: partial(server_status, repo, s, last.get(s.name))
                                  for s in config.servers}).values())


@dataclass(frozen=True)
class RepositoryStatus:
    """The repository or one of its copies: reachable, and how far a copy is behind."""

    name: str  # "primary", or the copy's name
    location: str
    mode: str  # "primary", "async" or "sync"
    reachable: bool
    error: str | None  # why it cannot be reached (or listed)
    marked: bool  # holds markship.json (none yet: no backup taken; a copy not synced yet)
    lag_objects: int | None  # objects the copy lacks (or holds in an older version)
    lag_bytes: int | None
    lag_seconds: float | None  # age of the oldest of them (0: caught up)
    # keys written to the copy while the repository was gone, not brought back yet
    owed_objects: int | None = None


def repository_status(primary: Repository, copies: list[Copy]) -> list[RepositoryStatus]:
    """Each repository's reachability (its top folder listed, its marker object looked up)
    and each copy's lag; an unreachable one is reported, not fatal."""
    from markship.repository import layout
    from markship.repository.copies import lag
    from markship.repository.owed import owed

    def reach(repo: Repository) -> tuple[str | None, bool]:
        try:
            repo.children("")  # a lookup takes an unreadable directory for an empty one
            return None, repo.exists(layout.MARKER_KEY)
        except RepositoryError as exc:
            return exc.one_line(), False

    primary_error, primary_marked = reach(primary)
    reached = [(copy, *reach(copy.repo)) for copy in copies]
    marked_copy = next((c.name for c, error, marked in reached if marked), None)
    if primary_error is None and not primary_marked and marked_copy is not None:
        # A directory that is not mounted (or was moved) looks empty, not unreachable.
        primary_error = (f"no {layout.MARKER_KEY} in {primary.location}, while copy "
                         f"{marked_copy} holds one: the repository is not mounted, moved "
                         "or lost")
    found = [RepositoryStatus("primary", primary.location, "primary", primary_error is None,
                              primary_error, primary_marked, None, None, None)]
    for copy, error, marked in reached:
        behind = None
        owes = None
        if error is None:
            try:
                owes = len(owed(copy.repo))
                if primary_error is None:
                    behind = lag(primary, copy.repo)
            except RepositoryError as exc:
                error = exc.one_line()
        found.append(RepositoryStatus(
            copy.name, copy.repo.location, copy.mode, error is None, error, marked,
            behind.objects if behind else None, behind.bytes if behind else None,
            round(behind.oldest_seconds, 3) if behind else None, owes))
    return found
