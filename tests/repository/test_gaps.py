"""WAL gap records (pg_wal protection) and what they put out of reach: which marks can still be
restored, which backup heals a gap, and damaged gap records named and skipped. Records are
written into a directory repository by hand; no server needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, Segment
from markship.repository import catalog, layout, records
from markship.repository.backends import open_repository
from markship.repository.base import Repository
from markship.repository.catalog import (
    BackupRecord,
    GapRecord,
    MarkPoint,
    MarkRecord,
    SetRecord,
)
from markship.repository.records import ObjectRef
from markship.repository.restorable import Gaps
from tests.support.checks import forge_record

T0 = datetime(2026, 12, 5, 4, 0, tzinfo=UTC)
SIZE = DEFAULT_SEGMENT_SIZE


def _name(number: int) -> str:
    return Segment(1, number).name()


def _backup(repo: Repository, set_id: str, start: int, stop: int, minute: int) -> None:
    """A complete one-server set whose backup runs from segment `start` to `stop`, with
    that WAL archived."""
    archive = f"backups/alpha/{set_id}/base.tar.zst"
    repo.write_bytes(archive, b"base")
    for number in range(start, stop + 1):
        repo.write_bytes(layout.wal_key("alpha", _name(number), "b3." + "0" * 64), b"")
    at = T0 + timedelta(minutes=minute)
    records.write_record(repo, layout.backup_record_key("alpha", set_id), BackupRecord(
        set_id=set_id, server="alpha", label=set_id, started_at=at, finished_at=at,
        consistent_at=at, timeline=1, start_lsn=start * SIZE, stop_lsn=stop * SIZE + 100,
        pg_version="15.10", pg_version_num=150010, system_identifier=1, raw_size=4,
        archive=ObjectRef(key=archive, size=4, sha256="0" * 64), markship_version="0.1.0"))
    records.write_record(repo, layout.set_key(set_id), SetRecord(
        id=set_id, group="g", servers=["alpha"], created_at=at, status="done",
        finished_at=at, pid=1, host="h"))


def _gap(repo: Repository, first: int, last: int) -> GapRecord:
    gap = GapRecord(server="alpha", timeline=1, first_segment=_name(first),
                    last_segment=_name(last), segments=last - first + 1,
                    wal_from=T0 + timedelta(minutes=10), wal_to=T0 + timedelta(minutes=11),
                    dropped_at=T0 + timedelta(minutes=11),
                    last_dropped_at=T0 + timedelta(minutes=12), queue_max_bytes=64 << 20,
                    backlog_bytes=80 << 20, host="h", reason="repository not writable")
    records.write_record(repo, layout.gap_key("alpha", gap.first_segment), gap)
    return gap


def _mark(segment: int) -> MarkRecord:
    return MarkRecord(name=f"m{segment}", group="g", created_at=T0, barrier_server="alpha",
                      barrier_wait_ms=0, barrier_hold_ms=0, points={"alpha": MarkPoint(
                          lsn=segment * SIZE + 40, timeline=1, wal_file=_name(segment))})


def test_marks_in_or_behind_a_gap_are_out_of_reach_until_a_backup_follows(
        tmp_path: Path) -> None:
    repo = open_repository(tmp_path)
    _backup(repo, "S1", 2, 3, minute=0)
    _gap(repo, 10, 12)
    gaps = Gaps(repo)
    assert gaps.unrestorable(_mark(5)) == {}  # before the gap
    assert gaps.unrestorable(_mark(9)) == {}  # its segment ends where the gap begins
    inside = gaps.unrestorable(_mark(11))["alpha"]
    assert inside.startswith("its point on alpha lies in WAL of server alpha dropped by "
                             f"pg_wal protection: {_name(10)}..{_name(12)} (3 segments, "
                             "written 2026-12-05T04:10:00Z to 2026-12-05T04:11:00Z)"), inside
    assert "crosses" in gaps.unrestorable(_mark(25))["alpha"]
    [state] = gaps.states()
    assert state.healed_by is None and "no point from 2026-12-05T04:10:00Z on" in state.text()

    _backup(repo, "S2", 20, 21, minute=30)  # the full backup after the gap
    gaps = Gaps(repo)
    assert gaps.unrestorable(_mark(25)) == {}
    assert "crosses" in gaps.unrestorable(_mark(15))["alpha"]  # between gap and backup
    assert "lies in" in gaps.unrestorable(_mark(12))["alpha"]
    [state] = gaps.states()
    assert state.healed_by is not None and state.healed_by.set_id == "S2"
    assert state.unrestorable_until == T0 + timedelta(minutes=30)


def test_a_damaged_gap_record_is_named_and_skipped(tmp_path: Path) -> None:
    repo = open_repository(tmp_path)
    good = _gap(repo, 10, 12)
    bad = _gap(repo, 20, 22)
    path = tmp_path / layout.gap_key("alpha", bad.first_segment)
    forge_record(path, bad.model_dump(mode="json") | {"last_segment": _name(19)}, "GapRecord")
    found: list[records.Damaged] = []
    assert catalog.list_gaps(repo, found) == [good]
    assert [d.key for d in found] == [layout.gap_key("alpha", bad.first_segment)]
    assert "is no range of timeline 1" in found[0].problem
