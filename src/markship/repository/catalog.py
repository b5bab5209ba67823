"""The catalog: the records of backup sets, base backups, marks and WAL gaps, and finding them.

Records are stored and read as repository.records describes; a damaged one is reported and left
out of every list.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from markship import names
from markship.errors import CorruptObject, ObjectMissing, RepositoryError
from markship.pg.lsn import (
    DEFAULT_SEGMENT_SIZE,
    Segment,
    parse_segment_name,
    segment_holding_end,
)
from markship.repository import layout
from markship.repository.base import Repository
from markship.repository.records import (
    FORMAT,
    Damaged,
    Name,
    ObjectRef,
    Record,
    good_folders,
    read_folder,
    read_record,
    report_damage,
    write_record,
)

# A tablespace's OID as a key of BackupRecord.tablespaces: digits only (it becomes part of a
# repository key and a line of tablespace_map).
Oid = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,9}$")]


class TablespaceRef(Record):
    """One tablespace outside the data directory, as it was when backed up, and its archive."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=63,
                                           pattern=r"^[^\x00-\x1f\x7f]+$")]
    location: Annotated[str, StringConstraints(pattern=r"^/[^\x00-\x1f\x7f]*$")]
    archive: ObjectRef


class BackupRecord(Record):
    """One server's base backup inside a set; written only once it finished."""

    set_id: Name
    server: Name
    label: str
    started_at: datetime
    finished_at: datetime
    consistent_at: datetime
    timeline: int
    start_lsn: int
    stop_lsn: int
    wal_segment_size: int = DEFAULT_SEGMENT_SIZE
    pg_version: str
    pg_version_num: int
    system_identifier: int
    raw_size: int
    archive: ObjectRef
    # file name in the data directory → object
    config_files: dict[Name, ObjectRef] = Field(default_factory=dict)
    markship_version: str
    # tablespaces outside the data directory: OID → name, original location, archive
    tablespaces: dict[Oid, TablespaceRef] = Field(default_factory=dict)

    @property
    def archives(self) -> list[ObjectRef]:
        """The base archive, then each tablespace's (by OID)."""
        return [self.archive, *(self.tablespaces[oid].archive
                                for oid in sorted(self.tablespaces, key=int))]

    @property
    def stored_size(self) -> int:
        """Stored bytes of this backup's archives (base and tablespaces; config files are
        not counted)."""
        return sum(ref.size for ref in self.archives)

    @property
    def start_segment(self) -> Segment:
        return Segment(self.timeline, self.start_lsn // self.wal_segment_size)

    @property
    def stop_segment(self) -> Segment:
        return segment_holding_end(self.timeline, self.stop_lsn, self.wal_segment_size)


class SetRecord(Record):
    """One invocation of `markship backup`: one backup per server."""

    id: Name
    group: str
    servers: list[Name]
    created_at: datetime
    status: Literal["running", "done", "failed"]
    finished_at: datetime | None = None
    pid: int
    host: str
    errors: dict[str, str] = Field(default_factory=dict)
    config_file: ObjectRef | None = None  # the markship config file at backup time


class MarkPoint(Record):
    """Where a mark's restore point lies in one server's WAL."""

    lsn: int
    timeline: int
    wal_file: Name


class MarkRecord(Record):
    """A group mark: a restore point of the same name on every server, made under the barrier.

    Written only after every server has its restore point, so a mark interrupted half-way
    leaves no record (its restore point names are never reused).
    """

    name: Name
    group: str
    created_at: datetime
    barrier_server: str
    barrier_wait_ms: float
    barrier_hold_ms: float
    points: dict[Name, MarkPoint]
    # server → "stream" (its receiver had flushed past the point when the record was
    # written) or "switch" (pg_switch_wal: complete once the segment is archived).
    delivery: dict[Name, Literal["stream", "switch"]] = Field(default_factory=dict)


class RepositoryMarker(Record):
    group: str
    created_at: datetime
    format: int = FORMAT


def ensure_marker(repo: Repository, group: str, now: datetime) -> None:
    """Create the repository marker, or check it belongs to this group."""
    if repo.exists(layout.MARKER_KEY):
        marker = read_record(repo, layout.MARKER_KEY, RepositoryMarker)
        if marker.group != group:
            raise RepositoryError(
                f"repository {repo.location} belongs to group {marker.group!r}, not {group!r}",
                "give each group its own repository path",
            )
        return
    write_record(repo, layout.MARKER_KEY, RepositoryMarker(group=group, created_at=now))


# -- backup sets ---------------------------------------------------------------------------------


def list_sets(repo: Repository, found: list[Damaged] | None = None) -> list[SetRecord]:
    """Every good set record, by id (oldest first); damaged ones are reported (to `found`
    when given) and left out."""
    sets = read_folder(repo, layout.SETS, SetRecord, lambda s: s.id, found)
    return sorted(sets, key=lambda s: s.id)


def backup_of(repo: Repository, server: str, set_id: str) -> BackupRecord | None:
    """The server's backup record of a set, None when it has none. Raises CorruptObject when
    it is damaged or belongs to another server or set."""
    key = layout.backup_record_key(names.check(server, "server name"),
                                   names.check(set_id, "backup set id"))
    try:
        record = read_record(repo, key, BackupRecord)
    except ObjectMissing:
        return None
    if (record.server, record.set_id) != (server, set_id):
        raise CorruptObject(f"record {key} holds the backup of {record.server} in set "
                            f"{record.set_id}", "the repository object was altered")
    return record


def writer_gone(record: SetRecord) -> bool:
    """True when a 'running' set's writer is known to have died (same host, dead pid)."""
    if record.status != "running" or record.host != socket.gethostname():
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# -- marks ----------------------------------------------------------------------------------------


def list_marks(repo: Repository, found: list[Damaged] | None = None) -> list[MarkRecord]:
    """Every good mark record, oldest first (names sort by time); damaged ones are reported
    (to `found` when given) and left out."""
    return read_folder(repo, layout.MARKS, MarkRecord, lambda m: m.name, found)


def read_mark(repo: Repository, name: str) -> MarkRecord | None:
    """The mark called `name`, None when there is none. Raises BadName (markship.names) for
    a name no mark can have, CorruptObject when its record is damaged."""
    key = layout.mark_key(names.check(name, "mark name"))
    try:
        record = read_record(repo, key, MarkRecord)
    except ObjectMissing:
        return None
    if record.name != name:
        raise CorruptObject(f"record {key} holds mark {record.name}",
                            "the repository object was altered")
    return record


# -- WAL gaps -------------------------------------------------------------------------------------


class GapRecord(Record):
    """WAL of one server that wal-push let PostgreSQL recycle without storing it (pg_wal
    protection: the repository was unreachable and more than `[repository] archive_queue_max`
    waited). No point from `wal_from` on can be reached from a backup taken before the gap.

    `wal_from`: when the WAL before the gap was complete (the last write of the segment before
    it when PostgreSQL still had that file, else of the first dropped one: WAL written shortly
    before is then lost too); `wal_to`: the last write of the last dropped segment.
    """

    server: Name
    timeline: int
    first_segment: Name
    last_segment: Name
    segments: int
    segment_size: int = DEFAULT_SEGMENT_SIZE
    wal_from: datetime
    wal_to: datetime
    dropped_at: datetime  # when wal-push dropped the first segment
    last_dropped_at: datetime
    queue_max_bytes: int
    backlog_bytes: int  # the largest backlog seen when dropping
    host: str
    reason: str  # why the repository could not be written, one line

    @model_validator(mode="after")
    def _segments(self) -> GapRecord:
        # Repository data is untrusted: a record naming no real range is damaged.
        if self.segment_size & (self.segment_size - 1) or not \
                1 << 20 <= self.segment_size <= 1 << 30:
            raise ValueError(f"segment_size {self.segment_size} is not a WAL segment size")
        first, last = self.first, self.last
        if not first.timeline == last.timeline == self.timeline or first > last:
            raise ValueError(f"{self.first_segment}..{self.last_segment} is no range of "
                             f"timeline {self.timeline}")
        return self

    @property
    def first(self) -> Segment:
        return parse_segment_name(self.first_segment, self.segment_size)

    @property
    def last(self) -> Segment:
        return parse_segment_name(self.last_segment, self.segment_size)


def list_gaps(repo: Repository, found: list[Damaged] | None = None) -> list[GapRecord]:
    """Every good gap record, by server then first segment; damaged ones are reported (to
    `found` when given) and left out."""
    gaps: list[GapRecord] = []
    for server in good_folders(repo, layout.GAPS, found):
        for record in read_folder(repo, layout.gaps_prefix(server), GapRecord,
                                  lambda g: g.first_segment, found):
            if record.server != server:
                report_damage(layout.gap_key(server, record.first_segment),
                              f"record {layout.gap_key(server, record.first_segment)} holds a "
                              f"gap of server {record.server}", found)
                continue
            gaps.append(record)
    return gaps
