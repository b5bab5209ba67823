"""Typed records kept in the repository, and what can be restored from them.

Every record is a JSON envelope carrying the sha256 of its body, so a damaged record is
detected like any other damaged object.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from markship import names
from markship.errors import CorruptObject, ObjectMissing, RepositoryError
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, Segment, parse_segment_name, segment_holding_end
from markship.repository import layout
from markship.repository.base import Repository, StagedObject, Writable
from markship.repository.objects import StoredObject

FORMAT = 1

# Fields that become repository keys or recovery settings: a record carrying anything else
# fails its model, and is damaged (markship.names).
Name = Annotated[str, AfterValidator(names.validated)]
Key = Annotated[str, AfterValidator(names.validated_key)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObjectRef(Record):
    key: Key
    size: int
    sha256: str


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
    config_files: dict[Name, ObjectRef] = {}  # file name in the data directory → object
    markship_version: str

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
    errors: dict[str, str] = {}
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
    delivery: dict[Name, Literal["stream", "switch"]] = {}


class RepositoryMarker(Record):
    group: str
    created_at: datetime
    format: int = FORMAT


R = TypeVar("R", bound=Record)


def encode(record: Record) -> bytes:
    """A record as stored: its JSON body in an envelope carrying the body's checksum."""
    body = record.model_dump(mode="json")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    envelope = {"kind": type(record).__name__, "format": FORMAT,
                "sha256": hashlib.sha256(canonical).hexdigest(), "body": body}
    return json.dumps(envelope, indent=1, sort_keys=True).encode() + b"\n"


def decode(data: bytes, cls: type[R], key: str) -> R:
    """Check a record envelope's checksum and parse its body; raise CorruptObject if bad."""
    try:
        envelope = json.loads(data)
        body = envelope["body"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(canonical).hexdigest() != envelope["sha256"]:
            raise CorruptObject(f"record {key} fails its checksum",
                                "the repository object was altered or damaged")
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(body)"
        raise CorruptObject(names.printable(f"record {key} is not a valid {cls.__name__} "
                                            f"({where[:80]}: {first['msg']})"),
                            "the repository object was altered or damaged") from None
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if isinstance(exc, CorruptObject):
            raise
        raise CorruptObject(f"record {key} is not a valid {cls.__name__} (not a record "
                            "envelope in JSON)",
                            "the repository object was altered or damaged") from None


def write_record(repo: Repository, key: str, record: Record, *,
                 overwrite: bool = False) -> StoredObject:
    return repo.write_bytes(key, encode(record), overwrite=overwrite, metadata=True)


def stage_record(repo: Repository, key: str, content: Callable[[], bytes]) -> StagedObject:
    """Store a record (`encode()`d) under a temp name, flushed to disk; publish(lambda: name)
    names it. `content()` is called once the temp object is open: it may wait for the record
    to be known, or raise to give up (the temp object then goes)."""
    folder = key.rpartition("/")[0]
    return repo.stage(folder + "/" if folder else "", lambda sink: _write_all(sink, content()),
                      metadata=True)


def _write_all(sink: Writable, data: bytes) -> None:
    sink.write(data)


def read_record(repo: Repository, key: str, cls: type[R]) -> R:
    return decode(repo.read_bytes(key), cls, key)


# -- damaged records: named and skipped, never hiding the good ones --------------------------------


@dataclass(frozen=True)
class Damaged:
    """A record no command may use: unreadable, failing its checksum or its model (a name
    that fails markship.names included), or stored under another name than it carries."""

    key: str
    problem: str  # one line naming the key

    FIX = ("inspect it, then move it out of the repository; if it recorded a backup set or "
           "a mark, that one is lost: take a new backup or mark")

    def warning(self) -> str:
        return f"{self.problem}; it was skipped: run markship verify"


def _warn_on_stderr(damaged: Damaged) -> None:
    print(f"markship: warning: {damaged.warning()}", file=sys.stderr)


class _Notices:
    """Damaged records heard of in this process, and who is told (once per key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.listener: Callable[[Damaged], None] = _warn_on_stderr


_notices = _Notices()


def on_damage(listener: Callable[[Damaged], None]) -> None:
    """Who hears of damaged records (once per key and process): stderr by default; the
    agent logs them."""
    _notices.listener = listener


def report_damage(key: str, problem: str, found: list[Damaged] | None = None) -> None:
    """A damaged record: into `found` when given (verify), else to the listener once."""
    damaged = Damaged(key, names.printable(problem))
    if found is not None:
        found.append(damaged)
        return
    with _notices.lock:
        if key in _notices.seen:
            return
        _notices.seen.add(key)
    _notices.listener(damaged)


def read_good(repo: Repository, key: str, cls: type[R], stem: Callable[[R], str] | None = None,
              found: list[Damaged] | None = None) -> R | None:
    """The record at `key`; None when it is gone (removed since it was listed) or damaged
    (reported). `stem`: the file name (without .json) the record must be stored under."""
    try:
        record = read_record(repo, key, cls)
    except ObjectMissing:
        return None
    except CorruptObject as exc:
        report_damage(key, exc.message, found)
        return None
    if stem is not None and f"{stem(record)}.json" != key.rpartition("/")[2]:
        report_damage(key, f"record {key} holds {stem(record)!r}, not what its name says",
                      found)
        return None
    return record


def read_folder(repo: Repository, prefix: str, cls: type[R],
                stem: Callable[[R], str] | None = None,
                found: list[Damaged] | None = None) -> list[R]:
    """The good records stored directly in folder `prefix` (ending in '/'), in name order;
    damaged ones are left out and reported."""
    records = []
    for name in sorted(repo.children(prefix)):
        if name.endswith(".json"):
            record = read_good(repo, prefix + name, cls, stem, found)
            if record is not None:
                records.append(record)
    return records


def good_folders(repo: Repository, prefix: str, found: list[Damaged] | None = None,
                 ) -> list[str]:
    """The sub-folders of `prefix` whose names can name objects (markship.names); any other
    is reported as damaged, never read."""
    good = []
    for name in sorted(repo.children(prefix)):
        if names.is_name(name):
            good.append(name)
        else:
            report_damage(f"{prefix}{name}", f"folder {prefix}{name!r} has a name markship "
                          "never writes", found)
    return good


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


# -- the WAL archive ------------------------------------------------------------------------------


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
            name.removesuffix(layout.STREAM_PARTIAL)
            for name in repo.children(layout.stream_prefix(server))
            if len(name.removesuffix(layout.STREAM_PARTIAL)) == 24}

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
        if not repo.exists(backup.archive.key):
            problems.append(f"{server}: object {backup.archive.key} missing")
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
