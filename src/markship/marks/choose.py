"""Which mark: the state of each mark (complete once every server's WAL holding it is in the
repository, and no WAL dropped by pg_wal protection stands between it and a backup) and the
choice of one for a restore or a failover."""

from __future__ import annotations

from dataclasses import dataclass, field

from markship.config.model import Config
from markship.errors import MarkshipError, ObjectMissing
from markship.repository import catalog, layout, records, restorable
from markship.repository.base import Repository
from markship.repository.catalog import MarkRecord
from markship.timefmt import age_seconds


@dataclass(frozen=True)
class MarkState:
    record: MarkRecord
    complete: bool
    waiting_for: dict[str, str]
    age_seconds: float
    # server → why its point cannot be restored (restorable.Gaps): never complete again
    unrestorable: dict[str, str] = field(default_factory=dict)


def mark_states(repo: Repository, config: Config, newest: int | None = None,
                known: dict[str, MarkRecord] | None = None) -> list[MarkState]:
    """Marks with their completeness, oldest first: all of them, or the `newest` N (damaged
    records are reported and left out: records.Damaged). `known` keeps the records read, by
    file name, for the next call (a mark record is written once): a caller asking again and
    again (the agent's snapshot) reads only the new ones; it forgets marks no longer listed."""
    files = sorted(n for n in repo.children(layout.MARKS) if n.endswith(".json"))
    if newest is not None:
        files = files[-newest:] if newest > 0 else []
    wal = restorable.wal_indexes(repo, [s.name for s in config.servers])
    gaps = restorable.Gaps(repo, wal)
    cache: dict[str, MarkRecord] = {} if known is None else known
    for gone in set(cache).difference(files):
        del cache[gone]
    found = []
    for file in files:
        record = cache.get(file) or _record(repo, file)
        if record is not None:
            cache[file] = record
            found.append(_state_of(repo, record, wal, gaps))
    return found


def _record(repo: Repository, file_name: str) -> MarkRecord | None:
    return records.read_good(repo, layout.MARKS + file_name, MarkRecord, lambda m: m.name)


def _state_of(repo: Repository, record: MarkRecord, wal: dict[str, restorable.WalIndex],
              gaps: restorable.Gaps) -> MarkState:
    for server in record.points:
        if server not in wal:
            wal[server] = restorable.WalIndex(repo, server)
    missing = restorable.mark_missing_wal(record, wal)
    lost = gaps.unrestorable(record) if gaps else {}
    return MarkState(record, not missing and not lost, missing,
                     age_seconds(record.created_at) or 0.0, lost)


def mark_state(repo: Repository, config: Config, name: str) -> MarkState:
    """The state of mark `name`. Raises BadName for a name no mark can have, ObjectMissing
    when there is no such mark, CorruptObject when its record is damaged."""
    record = catalog.read_mark(repo, name)
    if record is None:
        raise ObjectMissing(f"mark {name} not found", "markship marks lists the marks")
    wal = restorable.wal_indexes(repo, [s.name for s in config.servers])
    return _state_of(repo, record, wal, restorable.Gaps(repo, wal))


def newest_complete(repo: Repository, config: Config) -> MarkState | None:
    """The newest complete mark, reading records from the newest back (marks complete in
    order, so this stops after a few records however long the history is, unless WAL was
    dropped: then it goes back to the newest mark before the gap). Damaged records are
    reported and passed over."""
    files = sorted((n for n in repo.children(layout.MARKS) if n.endswith(".json")), reverse=True)
    wal = restorable.wal_indexes(repo, [s.name for s in config.servers])
    gaps = restorable.Gaps(repo, wal)
    for file in files:
        record = _record(repo, file)
        if record is not None and (state := _state_of(repo, record, wal, gaps)).complete:
            return state
    return None


def latest_complete(states: list[MarkState]) -> MarkState | None:
    complete = [s for s in states if s.complete]
    return complete[-1] if complete else None


def choose_mark(config: Config, repo: Repository, name: str | None) -> MarkState:
    """The named mark or the newest complete one; MarkshipError when unusable."""
    if not name:
        newest = newest_complete(repo, config)
        if newest is None:
            raise MarkshipError("no complete group mark in the repository",
                                "marks are laid by markship run (or markship mark)")
        return newest
    if catalog.read_mark(repo, name) is None:
        raise MarkshipError(f"mark {name} not found", "markship marks lists the marks")
    state = mark_state(repo, config, name)
    if state.unrestorable:
        why = sorted(state.unrestorable.items())[0][1]
        raise MarkshipError(f"mark {name} cannot be restored: {why}",
                            "choose a mark before the gap, or one after the full backup that "
                            "follows it (markship marks; markship status shows the gap)")
    if not state.complete:
        raise MarkshipError(f"mark {name} is not complete (waiting for "
                            f"{', '.join(state.waiting_for)})",
                            "choose a complete mark: markship marks")
    return state
