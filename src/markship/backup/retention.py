"""Retention: a pure policy (catalog → deletion plan) and a separate step that executes it.

Rules, in order of strength:
- never delete the newest complete set, nor the newest `min_sets` complete sets;
- never delete a set a restore in progress holds, nor a set whose backup is still running;
- delete sets created before the window (`days`), with the WAL only they needed;
- WAL older than the start of the oldest retained backup of a server is deleted; timeline
  history files are always kept (they are tiny and recovery needs them to follow timelines);
- marks older than the window, or older than the oldest retained complete set, are deleted;
- a WAL gap record (pg_wal protection) goes with the WAL around it: once the oldest retained
  backup of its server starts after the gap;
- file set captures and logical dumps older than the window are deleted, but never the
  newest of each;
- never delete the newest set from which a server can be restored (even an incomplete one);
- nothing is deleted on the strength of a damaged record (records.Damaged): it is left in
  place, a set with a damaged backup record is kept, and while any set or backup record is
  damaged no WAL is deleted (that set may need it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from markship.backup import holds
from markship.pg.lsn import Segment, parse_segment_name, wal_file_kind
from markship.repository import catalog, layout, records, restorable
from markship.repository.base import Repository
from markship.repository.catalog import MarkRecord
from markship.repository.fs import FsRepository
from markship.repository.restorable import SetState


@dataclass
class Plan:
    cutoff: datetime
    keep_sets: dict[str, str] = field(default_factory=dict)  # set id → why kept
    delete_sets: dict[str, str] = field(default_factory=dict)  # set id → why deleted
    delete_keys: list[str] = field(default_factory=list)
    delete_wal: dict[str, int] = field(default_factory=dict)  # server → WAL files deleted
    delete_marks: list[str] = field(default_factory=list)
    delete_gaps: list[str] = field(default_factory=list)  # gap records, "server/first segment"
    delete_captures: list[str] = field(default_factory=list)  # file set captures, "name/id"
    delete_dumps: list[str] = field(default_factory=list)  # logical dumps, "name/id"
    freed_bytes: int = 0
    damaged: list[str] = field(default_factory=list)  # keys of damaged records, left alone
    wal_kept: str | None = None  # why no WAL is deleted at all


def _wal_segment(name: str) -> Segment | None:
    kind = wal_file_kind(name)
    if kind == "history":
        return None
    return parse_segment_name(name[:24])


def plan(states: list[SetState], marks: list[MarkRecord],
         wal_objects: dict[str, list[tuple[str, str, int]]], sizes: dict[str, int],
         now: datetime, days: float, min_sets: int, held: set[str],
         damaged_sets: list[str] | None = None,
         gaps: list[catalog.GapRecord] | None = None) -> Plan:
    """Decide what to delete. `wal_objects`: server → (file name, key, size) of each WAL
    object; `sizes`: object key → size for backup objects (to report freed space);
    `damaged_sets`: keys of set records that could not be read; `gaps`: the WAL gap
    records."""
    cutoff = now - timedelta(days=days)
    result = Plan(cutoff=cutoff)
    complete = sorted((s for s in states if s.complete), key=lambda s: s.record.created_at,
                      reverse=True)
    for state in complete[:min_sets]:
        result.keep_sets[state.record.id] = f"one of the newest {min_sets} complete set(s)"
    for state in states:
        sid = state.record.id
        if sid in result.keep_sets:
            continue
        if sid in held:
            result.keep_sets[sid] = "in use by a restore"
        elif state.label == "running":
            result.keep_sets[sid] = "backup still running"
        elif state.damaged:
            result.keep_sets[sid] = "a backup record is damaged: run markship verify"
        elif state.record.created_at >= cutoff:
            result.keep_sets[sid] = "inside the retention window"
        else:
            result.delete_sets[sid] = ("older than the window" if state.complete
                                       else f"older than the window and {state.label}")
    _keep_last_restorable(states, result)
    by_id = {s.record.id: s for s in states}
    for sid in result.delete_sets:
        for key in sorted(k for k in sizes if k.startswith(layout.BACKUPS)
                          and k.split("/")[2] == sid):
            result.delete_keys.append(key)
            result.freed_bytes += sizes[key]
        result.delete_keys.append(layout.set_key(sid))

    result.damaged = [*(damaged_sets or []), *(k for s in states for k in s.damaged)]
    if result.damaged:
        result.wal_kept = (f"{len(result.damaged)} damaged set or backup record(s): a set "
                           "behind them may need any WAL (run markship verify)")
        wal_objects = {}
    # WAL: keep everything from the oldest retained backup of each server onwards.
    oldest: dict[str, Segment] = {}
    for sid in result.keep_sets:
        for server, backup in by_id[sid].restorable.items():
            start = backup.start_segment
            if server not in oldest or start < oldest[server]:
                oldest[server] = start
    for server, objects in wal_objects.items():
        if server not in oldest:
            continue  # no retained backup of this server: nothing can be judged safely
        for name, key, size in objects:
            segment = _wal_segment(name)
            if segment is not None and segment < oldest[server]:
                result.delete_keys.append(key)
                result.freed_bytes += size
                result.delete_wal[server] = result.delete_wal.get(server, 0) + 1
    for gap in gaps or []:
        if not result.wal_kept and gap.server in oldest and gap.last < oldest[gap.server]:
            result.delete_gaps.append(f"{gap.server}/{gap.first_segment}")
            result.delete_keys.append(layout.gap_key(gap.server, gap.first_segment))

    kept_complete = [by_id[sid] for sid in result.keep_sets if by_id[sid].complete]
    oldest_kept = min((s.record.created_at for s in kept_complete), default=None)
    for mark in marks:
        if mark.created_at < cutoff or (oldest_kept and mark.created_at < oldest_kept):
            result.delete_marks.append(mark.name)
            result.delete_keys.append(layout.mark_key(mark.name))
    return result


def _keep_last_restorable(states: list[SetState], result: Plan) -> None:
    """Per server: if no kept set can restore it, keep the newest set that can."""
    kept = [s for s in states if s.record.id in result.keep_sets]
    for server in sorted({name for s in states for name in s.restorable}):
        if any(server in s.restorable for s in kept):
            continue
        newest = max((s for s in states if server in s.restorable),
                     key=lambda s: s.record.created_at)
        result.delete_sets.pop(newest.record.id, None)
        result.keep_sets[newest.record.id] = f"the newest set that can restore {server}"
        kept.append(newest)


def make_plan(repo: Repository, now: datetime, days: float, min_sets: int) -> Plan:
    """Read the catalog and the WAL listing, and plan. Damaged records are reported, left
    alone, and keep all WAL while any set record is damaged."""
    wal: dict[str, restorable.WalIndex] = {}
    damaged: list[records.Damaged] = []
    sets = catalog.list_sets(repo, damaged)
    for each in damaged:
        records.report_damage(each.key, each.problem)  # still warned about, as everywhere
    states = [restorable.set_state(repo, r, wal) for r in sets]
    sizes = {o.key: o.size for o in repo.iter_objects(layout.BACKUPS)}
    wal_objects: dict[str, list[tuple[str, str, int]]] = {}
    for server in repo.children(layout.WAL):
        wal_objects[server] = []
        for info in repo.iter_objects(layout.wal_prefix(server)):
            parsed = layout.split_wal_key(info.key)
            if parsed is not None:
                wal_objects[server].append((parsed[0], info.key, info.size))
    held = holds.active_holds(repo)
    result = plan(states, catalog.list_marks(repo), wal_objects, sizes, now, days, min_sets,
                  held, [d.key for d in damaged], catalog.list_gaps(repo))
    _plan_side_objects(repo, result)
    return result


def _plan_side_objects(repo: Repository, result: Plan) -> None:
    """File set captures and logical dumps older than the window go too, except the newest
    of each (a config tree that never changes keeps its one capture)."""
    from markship.backup import dumps, filesets

    captures = filesets.list_records(repo)
    for capture in _expired_but_newest(captures, result.cutoff):
        result.delete_captures.append(f"{capture.name}/{capture.id}")
        result.delete_keys += [filesets.record_key(capture.name, capture.id),
                               capture.archive.key]
        result.freed_bytes += capture.archive.size
    for dump in _expired_but_newest(dumps.list_dumps(repo), result.cutoff):
        result.delete_dumps.append(f"{dump.name}/{dump.id}")
        result.delete_keys += [dumps.record_key(dump.name, dump.id), dump.archive.key]
        result.freed_bytes += dump.archive.size


class _Dated(Protocol):
    name: str
    created_at: datetime


_D = TypeVar("_D", bound=_Dated)


def _expired_but_newest(found: list[_D], cutoff: datetime) -> list[_D]:
    """Records made before `cutoff`, except the newest of each name."""
    by_name: dict[str, list[_D]] = {}
    for record in found:
        by_name.setdefault(record.name, []).append(record)
    return [record for same in by_name.values()
            for record in sorted(same, key=lambda r: r.created_at)[:-1]
            if record.created_at < cutoff]


def apply(repo: Repository, result: Plan) -> None:
    """Delete what the plan lists: backup records first, so a crash mid-way never leaves a set
    that looks complete without its data."""
    ordered = sorted(result.delete_keys, key=lambda k: (not k.endswith("/backup.json"),
                                                         k.startswith(layout.SETS)))
    for key in ordered:
        repo.delete(key)
    if isinstance(repo, FsRepository):
        repo.remove_empty_dirs(layout.BACKUPS)
