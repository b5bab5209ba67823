"""The arithmetic of standby lag and of max_replay_delay's switch, without servers: what a
failover reaches from the WAL held, and when the agent switches WAL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from markship.agent.replaypace import due
from markship.dr.lag import ahead
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE as SEG
from markship.pg.lsn import Segment
from markship.pg.sql import ArchiverStats
from markship.repository.fs import FsRepository
from markship.repository.restorable import WalIndex


def _index(tmp_path: Path, archived: list[int], streamed: tuple[int, ...] = ()) -> WalIndex:
    index = WalIndex(FsRepository(tmp_path), "alpha")
    index.segments[1].update(archived)
    index.streamed.update(Segment(1, n).name() for n in streamed)
    return index


def test_failover_reaches_the_newest_mark_with_every_segment_held(tmp_path: Path) -> None:
    index = _index(tmp_path, [3, 4, 5], streamed=(6,))
    replayed = 4 * SEG + 100
    marks = [3 * SEG + 10, 5 * SEG + 10, 6 * SEG + 10]
    found = ahead(index, 1, replayed, marks)
    assert found.mark_index == 2
    assert found.to_mark_bytes == 6 * SEG + 10 - replayed
    assert found.to_newest_bytes == 6 * SEG + 10 - replayed  # streamed reaches past segment 5


def test_a_missing_segment_stops_the_failover_before_it(tmp_path: Path) -> None:
    index = _index(tmp_path, [3, 4, 6, 7])
    replayed = 3 * SEG + 100
    found = ahead(index, 1, replayed, [4 * SEG + 10, 7 * SEG + 10])
    assert found.mark_index == 0 and found.to_mark_bytes == 4 * SEG + 10 - replayed
    assert found.to_newest_bytes == 8 * SEG - replayed


def test_a_standby_past_every_mark_has_nothing_to_replay(tmp_path: Path) -> None:
    index = _index(tmp_path, [3])
    found = ahead(index, 1, 3 * SEG + 500, [3 * SEG + 10])
    assert found.mark_index == 0 and found.to_mark_bytes == 0
    assert ahead(index, 1, 3 * SEG, []).mark_index is None


def _stats(current_lsn: int, archived: int | None, archived_at: datetime | None) -> ArchiverStats:
    return ArchiverStats(archived_count=0, last_archived_wal=None if archived is None
                         else Segment(1, archived).name(), last_archived_time=archived_at,
                         failed_count=0, last_failed_wal=None, last_failed_time=None,
                         current_lsn=current_lsn,
                         current_wal_file=Segment(1, current_lsn // SEG).name(), timeline=1)


def test_switch_when_archived_long_ago_and_wal_written_since() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    old, recent = now - timedelta(seconds=400), now - timedelta(seconds=10)
    assert due(_stats(5 * SEG + 200, 4, old), 300, now, now)
    assert not due(_stats(5 * SEG + 200, 4, recent), 300, now, now)  # archived lately
    assert not due(_stats(5 * SEG, 4, old), 300, now, now)  # nothing written since
    assert not due(_stats(7 * SEG + 200, 4, old), 300, now, now)  # the archiver is behind
    assert due(_stats(5 * SEG + 200, None, None), 300, old, now)  # never archived: since start
