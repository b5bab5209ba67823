"""Prove restorability: re-read every object against its checksum, check WAL continuity.

WAL missing where pg_wal protection recorded a gap (repository.catalog.GapRecord) is a known
loss, listed apart (`known_gaps`); any other missing WAL is a problem."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from markship.backup.basebackup import ProgressFn
from markship.errors import CorruptObject, ObjectMissing
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, Segment, wal_header_problem
from markship.repository import catalog, layout, records, restorable
from markship.repository.base import Repository
from markship.repository.catalog import SetRecord
from markship.repository.fs import FsRepository
from markship.repository.walsum import ContentHash
from markship.timefmt import show
from markship.wal.fetch import Head
from markship.wal.stored import CHUNK, open_archived


@dataclass
class Report:
    """What verify found: one line per bad object, and which sets are not restorable."""

    objects_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    unrestorable_sets: dict[str, list[str]] = field(default_factory=dict)
    incomplete_sets: dict[str, list[str]] = field(default_factory=dict)
    temp_objects: list[str] = field(default_factory=list)
    removed_temp: list[str] = field(default_factory=list)
    damaged_records: dict[str, str] = field(default_factory=dict)  # key → what is wrong
    damaged_fix: str = records.Damaged.FIX
    known_gaps: list[str] = field(default_factory=list)  # WAL dropped by pg_wal protection

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unrestorable_sets and not self.damaged_records


class Meter:
    """Bytes read so far against an estimate of the whole, told to an `on_progress` callback
    as ("repository", done, total)."""

    def __init__(self, on_progress: ProgressFn | None, total: int = 0) -> None:
        self.on_progress = on_progress
        self.total = total
        self.done = 0

    def add(self, count: int) -> None:
        self.done += count
        if self.on_progress is not None:
            self.on_progress("repository", self.done, max(self.total, self.done))


def _sha256_of(repo: Repository, key: str, meter: Meter | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with repo.open_stored(key) as handle:  # stored bytes: no key needed to verify
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if meter is not None:
                meter.add(len(chunk))
    return digest.hexdigest(), size


def check_object(repo: Repository, ref: records.ObjectRef, report: Report,
                 meter: Meter | None = None) -> bool:
    try:
        digest, size = _sha256_of(repo, ref.key, meter)
    except ObjectMissing:
        report.problems.append(f"missing object: {ref.key}")
        return False
    report.objects_checked += 1
    report.bytes_checked += size
    if digest != ref.sha256 or size != ref.size:
        report.problems.append(f"corrupt object: {ref.key} (checksum mismatch)")
        return False
    return True


def check_wal_object(repo: Repository, server: str, name: str, report: Report,
                     meter: Meter | None = None) -> bool:
    import zstandard

    head = Head()
    try:
        reader, expected = open_archived(repo, server, name)
        digest = ContentHash(expected)
        with reader:
            while chunk := reader.read(CHUNK):
                head.take(chunk)
                digest.update(chunk)
                report.bytes_checked += len(chunk)
                if meter is not None:
                    meter.add(len(chunk))
    except (ObjectMissing, CorruptObject) as exc:
        report.problems.append(exc.message)
        return False
    except zstandard.ZstdError:
        report.problems.append(f"corrupt WAL object of server {server}: {name} (cannot decompress)")
        return False
    report.objects_checked += 1
    if digest.result() != expected:
        report.problems.append(f"corrupt WAL object of server {server}: {name} (checksum mismatch)")
        return False
    problem = wal_header_problem(head.data, name)
    if problem is not None:
        report.problems.append(f"WAL object of server {server} stored as {name} is not that "
                               f"file: {problem}")
        return False
    return True


def verify(repo: Repository, set_id: str | None = None, clean_temp: bool = False,
           on_progress: ProgressFn | None = None) -> Report:
    """Check every object (or those of one set and the WAL it needs) and WAL continuity, and
    list every damaged record (of sets and their backups; with no `set_id` also of marks,
    file sets and dumps). `on_progress` hears ("repository", bytes read, estimated total):
    the backups' stored sizes plus a whole segment per WAL file (WAL is checked
    decompressed)."""
    report = Report()
    damaged: list[records.Damaged] = []
    sets: list[SetRecord] = catalog.list_sets(repo, damaged)
    if set_id is not None:
        sets = [s for s in sets if s.id == set_id]
        if not sets:
            for each in damaged:  # it may be one of them: say so
                records.report_damage(each.key, each.problem)
            raise ObjectMissing(f"backup set {set_id} not found", "markship list shows the sets")
    recorded = catalog.list_gaps(repo, damaged)
    wal: dict[str, restorable.WalIndex] = {}
    bad_wal: dict[str, set[str]] = {}
    checked_wal: set[tuple[str, str]] = set()
    states = [(record, restorable.set_state(repo, record, wal, damaged)) for record in sets]
    meter = Meter(on_progress, _estimate(repo, states, wal, set_id is None)
                  if on_progress is not None else 0)
    for record, state in states:
        reasons = list(state.problems)
        checked = state.backups
        if record.status != "done":
            # Not a complete set: reported, not a failure. Its finished server backups may
            # still be used to restore those servers alone, so they are checked.
            report.incomplete_sets[record.id] = state.problems
            checked = state.restorable
        if record.config_file is not None and not check_object(repo, record.config_file, report,
                                                                  meter):
            reasons.append(f"bad object {record.config_file.key}")
        for server, backup in checked.items():
            refs = [*backup.archives, *backup.config_files.values()]
            for ref in refs:
                if not check_object(repo, ref, report, meter):
                    reasons.append(f"{server}: bad object {ref.key}")
            index = wal[server]
            gaps = _unrecorded(index.gaps_after(backup.start_segment), server, recorded,
                               report)
            for gap in gaps:
                line = f"WAL gap on server {server}: {gap.name(backup.wal_segment_size)} missing"
                if line not in report.problems:
                    report.problems.append(line)
            if gaps:
                reasons.append(f"{server}: WAL gap after the backup "
                               f"({gaps[0].name(backup.wal_segment_size)} missing)")
            first = backup.start_segment
            for number in sorted(n for n in index.segments.get(first.timeline, set())
                                 if n >= first.number):
                name = Segment(first.timeline, number).name(backup.wal_segment_size)
                if (server, name) not in checked_wal:
                    checked_wal.add((server, name))
                    if not check_wal_object(repo, server, name, report, meter):
                        bad_wal.setdefault(server, set()).add(name)
                if name in bad_wal.get(server, set()):
                    reasons.append(f"{server}: bad WAL {name}")
        if record.status != "done":
            bad = [r for r in reasons if r not in state.problems]
            if bad:
                report.problems.extend(f"backup set {record.id}: {r}" for r in bad)
        elif reasons:
            report.unrestorable_sets[record.id] = sorted(set(reasons))
    if set_id is None:
        _check_remaining_wal(repo, wal, checked_wal, report, meter)
        _check_side_records(repo, damaged)
    _list_damaged(damaged, report)
    _temp(repo, report, clean_temp)
    return report


def _estimate(repo: Repository, states: list[tuple[SetRecord, restorable.SetState]],
              wal: dict[str, restorable.WalIndex], every_wal: bool) -> int:
    """What verify will read, roughly: the stored size of each backup object it checks, and a
    whole segment per WAL file (all of them, or those from each checked backup's start)."""
    total = 0
    first: dict[str, Segment] = {}
    for record, state in states:
        if record.config_file is not None:
            total += record.config_file.size
        checked = state.backups if record.status == "done" else state.restorable
        for server, backup in checked.items():
            total += backup.stored_size + sum(r.size for r in backup.config_files.values())
            if server not in first or backup.start_segment < first[server]:
                first[server] = backup.start_segment
    if every_wal:
        for server in repo.children(layout.WAL):
            index = wal.get(server) or restorable.WalIndex(repo, server)
            wal[server] = index
            total += sum(len(n) for n in index.segments.values()) * DEFAULT_SEGMENT_SIZE
    else:
        for server, start in first.items():
            numbers = wal[server].segments.get(start.timeline, set())
            total += sum(1 for n in numbers if n >= start.number) * DEFAULT_SEGMENT_SIZE
    return total


def _unrecorded(missing: list[Segment], server: str, recorded: list[catalog.GapRecord],
                report: Report) -> list[Segment]:
    """The missing segments no gap record of `server` explains; the records that explain the
    others are listed in the report (once each)."""
    unexplained = []
    for segment in missing:
        gap = next((g for g in recorded if g.server == server and g.first <= segment <= g.last),
                   None)
        if gap is None:
            unexplained.append(segment)
            continue
        line = (f"{restorable.gap_text(gap)}: backups before it restore only to points before "
                f"{show(gap.wal_from)}")
        if line not in report.known_gaps:
            report.known_gaps.append(line)
    return unexplained


def _check_side_records(repo: Repository, damaged: list[records.Damaged]) -> None:
    """Mark, file set and dump records are read too: each damaged one is listed."""
    from markship.backup import dumps, filesets

    catalog.list_marks(repo, damaged)
    filesets.list_records(repo, None, damaged)
    dumps.list_dumps(repo, None, damaged)


def _list_damaged(damaged: list[records.Damaged], report: Report) -> None:
    for each in damaged:
        report.damaged_records.setdefault(each.key, each.problem)


def _check_remaining_wal(repo: Repository, wal: dict[str, restorable.WalIndex],
                         checked: set[tuple[str, str]], report: Report,
                         meter: Meter | None = None) -> None:
    """Objects no set needs are still checked: a damaged archive is worth knowing about."""
    for server in repo.children(layout.WAL):
        index = wal.get(server) or restorable.WalIndex(repo, server)
        for name in sorted(index.keys):
            if (server, name) not in checked:
                check_wal_object(repo, server, name, report, meter)


def _temp(repo: Repository, report: Report, clean: bool) -> None:
    for temp in repo.temp_objects():
        if temp.writer_alive:
            continue  # a write in progress
        report.temp_objects.append(temp.key)
        if clean and temp.writer_alive is False and isinstance(repo, FsRepository):
            repo.delete_temp(temp.key)
            report.removed_temp.append(temp.key)
