"""What can be restored: which WAL files of a server are archived, whether a backup set is
complete, which WAL a mark still lacks, and which marks WAL dropped by pg_wal protection (the
gap records) put out of reach.

Only names (and the small catalog records) are read to answer: no WAL or backup content.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from markship.errors import CorruptObject
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, Segment, parse_segment_name
from markship.repository import layout
from markship.repository.base import Repository
from markship.repository.catalog import (
    BackupRecord,
    GapRecord,
    MarkRecord,
    SetRecord,
    backup_of,
    list_gaps,
    list_sets,
    writer_gone,
)
from markship.repository.records import Damaged, report_damage
from markship.timefmt import show


class WalIndex:
    """Which WAL files of one server are in the archive (names only, no content read)."""

    def __init__(self, repo: Repository, server: str, segment_size: int = DEFAULT_SEGMENT_SIZE):
        self.server = server
        self.segments: dict[int, set[int]] = defaultdict(set)
        self.histories: set[int] = set()
        self.keys: dict[str, str] = {}
        prefix = layout.wal_prefix(server)
        for folder in repo.children(prefix):
            for child in repo.children(f"{prefix}{folder}/"):
                parsed = layout.split_wal_key(child)
                if parsed is None:
                    continue
                name = parsed[0]
                self.keys[name] = f"{prefix}{folder}/{child}"
                if name.endswith(".history"):
                    self.histories.add(int(name[:8], 16))
                elif len(name) == 24:
                    seg = parse_segment_name(name, segment_size)
                    self.segments[seg.timeline].add(seg.number)
        # Segments the agent's receiver holds, whole or partial, not archived yet.
        self.streamed: set[str] = {
            streamed[0] for name in repo.children(layout.stream_prefix(server))
            if (streamed := layout.split_stream_name(name)) is not None}

    def has(self, segment: Segment) -> bool:
        return segment.number in self.segments.get(segment.timeline, set())

    def newest(self) -> Segment | None:
        best: Segment | None = None
        for timeline, numbers in self.segments.items():
            if numbers:
                candidate = Segment(timeline, max(numbers))
                if best is None or candidate > best:
                    best = candidate
        return best

    def missing_between(self, first: Segment, last: Segment) -> list[Segment]:
        """Segments of `first`'s timeline from `first` to `last` (inclusive) not archived."""
        have = self.segments.get(first.timeline, set())
        return [Segment(first.timeline, n) for n in range(first.number, last.number + 1)
                if n not in have]

    def gaps_after(self, start: Segment) -> list[Segment]:
        """Missing segments between `start` and the newest archived one of its timeline."""
        have = self.segments.get(start.timeline, set())
        if not have:
            return [start]
        top = max(have)
        return [Segment(start.timeline, n) for n in range(start.number, top + 1) if n not in have]


class SetState(BaseModel):
    """Whether a backup set can be restored, and why not."""

    model_config = ConfigDict(frozen=True)

    record: SetRecord
    backups: dict[str, BackupRecord]
    complete: bool
    problems: list[str]
    restorable: dict[str, BackupRecord]
    """Servers whose own backup finished with its WAL archived, even in an incomplete set."""
    damaged: list[str] = []
    """Keys of its damaged backup records: the set may be whole once they are repaired."""

    @property
    def label(self) -> str:
        if self.complete:
            return "complete"
        if self.record.status == "running" and not writer_gone(self.record):
            return "running"
        return "incomplete"


def set_state(repo: Repository, record: SetRecord,
              wal: dict[str, WalIndex] | None = None,
              found: list[Damaged] | None = None) -> SetState:
    """Check a set: every server's backup finished and its WAL up to stop LSN is archived.
    A damaged backup record is a problem of the set, and reported (to `found` when given)."""
    problems: list[str] = []
    damaged: list[str] = []
    backups: dict[str, BackupRecord] = {}
    restorable: dict[str, BackupRecord] = {}
    if record.status == "running":
        problems.append("abandoned: its backup process died" if writer_gone(record)
                        else "still running")
    elif record.status == "failed":
        problems.append("failed: " + "; ".join(f"{s}: {e}" for s, e in record.errors.items()))
    for server in record.servers:
        try:
            backup = backup_of(repo, server, record.id)
        except CorruptObject as exc:
            problems.append(exc.message)
            damaged.append(layout.backup_record_key(server, record.id))
            report_damage(damaged[-1], exc.message, found)
            continue
        if backup is None:
            if record.status == "done":
                problems.append(f"{server}: backup record missing")
            continue
        backups[server] = backup
        usable = True
        for archive in backup.archives:
            if not repo.exists(archive.key):
                problems.append(f"{server}: object {archive.key} missing")
                usable = False
        index = (wal or {}).get(server) or WalIndex(repo, server, backup.wal_segment_size)
        if wal is not None:
            wal[server] = index
        missing = index.missing_between(backup.start_segment, backup.stop_segment)
        if missing:
            names = ", ".join(s.name(backup.wal_segment_size) for s in missing[:3])
            problems.append(f"{server}: WAL needed for consistency not archived: {names}")
            usable = False
        if usable:
            restorable[server] = backup
    complete = record.status == "done" and not problems and len(backups) == len(record.servers)
    return SetState(record=record, backups=backups, complete=complete, problems=problems,
                    restorable=restorable, damaged=damaged)


def mark_missing_wal(record: MarkRecord, wal: dict[str, WalIndex]) -> dict[str, str]:
    """Servers (of those in `wal`) whose WAL holding the mark is not in the repository → that
    file. A point delivered by stream also counts while its segment is in the stream folder."""
    missing = {}
    for server, point in record.points.items():
        index = wal.get(server)
        if index is None or point.wal_file in index.keys:
            continue
        if record.delivery.get(server) == "stream" and point.wal_file in index.streamed:
            continue
        missing[server] = point.wal_file
    return missing


def wal_indexes(repo: Repository, servers: list[str]) -> dict[str, WalIndex]:
    return {server: WalIndex(repo, server) for server in servers}


# -- WAL gaps (pg_wal protection) -----------------------------------------------------------------


def gap_text(gap: GapRecord) -> str:
    """One phrase naming a gap: its segments and the time its WAL was written."""
    count = f"{gap.segments} segment{'s' if gap.segments != 1 else ''}"
    return (f"WAL of server {gap.server} dropped by pg_wal protection: {gap.first_segment}.."
            f"{gap.last_segment} ({count}, written {show(gap.wal_from)} to {show(gap.wal_to)})")


@dataclass(frozen=True)
class GapState:
    """A gap, and the first backup of its server that starts after it (from which points are
    restorable again), None while there is none."""

    record: GapRecord
    healed_by: BackupRecord | None

    @property
    def unrestorable_until(self) -> datetime | None:
        """The end of the time that cannot be restored; None: up to now (no backup yet)."""
        return self.healed_by.consistent_at if self.healed_by is not None else None

    def text(self) -> str:
        if self.healed_by is None:
            return (f"{gap_text(self.record)}: no point from {show(self.record.wal_from)} on "
                    "can be restored until a full backup is taken")
        return (f"{gap_text(self.record)}: points from {show(self.record.wal_from)} to "
                f"{show(self.healed_by.consistent_at)} cannot be restored (restorable again "
                f"from backup set {self.healed_by.set_id})")


class Gaps:
    """The recorded WAL gaps of the group, and what they put out of reach. Backups are read
    only when a gap lies before the point asked about."""

    def __init__(self, repo: Repository, wal: dict[str, WalIndex] | None = None,
                 records: list[GapRecord] | None = None) -> None:
        self.repo = repo
        self.wal = wal if wal is not None else {}
        self.by_server: dict[str, list[GapRecord]] = defaultdict(list)
        for gap in list_gaps(repo) if records is None else records:
            self.by_server[gap.server].append(gap)
        self._backups: dict[str, list[BackupRecord]] | None = None

    def __bool__(self) -> bool:
        return bool(self.by_server)

    def backups(self, server: str) -> list[BackupRecord]:
        """The server's restorable backups (finished, WAL to consistency archived), oldest
        first."""
        if self._backups is None:
            found: dict[str, list[BackupRecord]] = defaultdict(list)
            for record in list_sets(self.repo):
                for name, backup in set_state(self.repo, record, self.wal).restorable.items():
                    found[name].append(backup)
            self._backups = {k: sorted(v, key=lambda b: b.consistent_at)
                             for k, v in found.items()}
        return self._backups.get(server, [])

    def states(self) -> list[GapState]:
        """Every gap, oldest first per server, with the backup that heals it."""
        result = []
        for server, gaps in sorted(self.by_server.items()):
            for gap in sorted(gaps, key=lambda g: g.first):
                healer = next((b for b in self.backups(server) if b.start_segment > gap.last),
                              None)
                result.append(GapState(gap, healer))
        return result

    def unrestorable(self, record: MarkRecord) -> dict[str, str]:
        """Servers whose restore point of this mark cannot be reached → why: the point lies
        in dropped WAL, or the WAL from the newest backup before it crosses dropped WAL."""
        lost = {}
        for server, point in record.points.items():
            gaps = self.by_server.get(server)
            if not gaps:
                continue
            before = []
            for gap in gaps:
                at = Segment(point.timeline, point.lsn // gap.segment_size)
                if gap.first <= at <= gap.last:
                    lost[server] = f"its point on {server} lies in {gap_text(gap)}"
                    break
                if gap.first <= at:
                    before.append(gap)
            if server in lost or not before:
                continue
            newest = max(before, key=lambda g: g.last)
            if not any(b.start_segment > newest.last and b.timeline == point.timeline
                       and b.stop_lsn <= point.lsn for b in self.backups(server)):
                lost[server] = (f"the WAL from its newest backup of {server} crosses "
                                f"{gap_text(newest)}")
        return lost
