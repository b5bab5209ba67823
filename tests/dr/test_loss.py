"""What a failover discards, from names alone (no servers): a repository directory holding WAL
objects, stream-folder files and mark records, as markship writes them."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from markship.config.model import Config
from markship.dr.loss import discarded
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE as SEG
from markship.pg.lsn import Segment
from markship.repository import layout, records
from markship.repository.catalog import MarkPoint, MarkRecord
from markship.repository.fs import FsRepository

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def tmp_path_of(repo: FsRepository) -> Path:
    return Path(repo.root)


def _config() -> Config:
    return Config.model_validate({
        "group": {"name": "g"}, "repository": {"path": "/srv/repo"},
        "server": [{"name": "alpha", "conninfo": "host=10.0.0.5 port=5433 password=s3cret"}]})


def _mark(repo: FsRepository, name: str, at: datetime, lsn: int,
          delivery: str = "switch") -> MarkRecord:
    record = MarkRecord(name=name, group="g", created_at=at, barrier_server="alpha",
                        barrier_wait_ms=1, barrier_hold_ms=1,
                        points={"alpha": MarkPoint(lsn=lsn, timeline=1,
                                                   wal_file=Segment(1, lsn // SEG).name())},
                        delivery={"alpha": delivery})  # type: ignore[dict-item]
    records.write_record(repo, layout.mark_key(name), record)
    return record


def _archive(repo: FsRepository, number: int, stored: datetime, timeline: int = 1) -> None:
    name = Segment(timeline, number).name()
    key = layout.wal_key("alpha", name, "0" * 64)
    repo.write_bytes(key, b"wal")
    os.utime(tmp_path_of(repo) / key, (stored.timestamp(), stored.timestamp()))


def test_whole_segments_after_the_mark_are_lost_up_to_a_later_marks_switch(
        tmp_path: Path) -> None:
    repo = FsRepository(tmp_path)
    first = _mark(repo, "ms-g-20261205T120000.000Z", T0, 2 * SEG + 100)
    for number in (2, 3):
        _archive(repo, number, T0 + timedelta(seconds=5))
    _archive(repo, 4, T0 + timedelta(seconds=9))
    _archive(repo, 9, T0 + timedelta(seconds=9), timeline=2)  # a newer timeline: not counted
    _mark(repo, "ms-g-20261205T120008.000Z", T0 + timedelta(seconds=8), 4 * SEG + 500)

    loss = discarded(repo, _config(), first)["alpha"]
    # Segment 4 was closed by the later mark's switch: it counts up to that mark's point.
    assert loss.lost_bytes == 4 * SEG + 500 - (2 * SEG + 100)
    assert loss.address == "10.0.0.5:5433"
    assert loss.later_marks == 1 and loss.newest_wal == Segment(1, 4).name()
    assert loss.newest_wal_stored_at == T0 + timedelta(seconds=9)
    assert loss.lost_until == T0 + timedelta(seconds=9) and loss.lost_seconds == 9


def test_nothing_after_the_newest_mark_and_named_marks_are_read_too(tmp_path: Path) -> None:
    repo = FsRepository(tmp_path)
    newest = _mark(repo, "ms-g-20261205T120000.000Z", T0, 2 * SEG + 100)
    _archive(repo, 2, T0 + timedelta(seconds=1))  # the mark's own segment
    assert discarded(repo, _config(), newest)["alpha"].lost_bytes == 0
    assert discarded(repo, _config(), newest)["alpha"].lost_until is None

    # A mark named by hand sorts before the default names, yet is later.
    _mark(repo, "before-upgrade", T0 + timedelta(seconds=3), 2 * SEG + 900, "stream")
    loss = discarded(repo, _config(), newest)["alpha"]
    assert loss.later_marks == 1 and loss.lost_bytes == 800
    assert loss.lost_until == T0 + timedelta(seconds=3)


def test_streamed_pieces_count_to_their_end(tmp_path: Path) -> None:
    repo = FsRepository(tmp_path)
    mark = _mark(repo, "ms-g-20261205T120000.000Z", T0, 2 * SEG + 100, "stream")
    piece = layout.stream_prefix("alpha") + layout.stream_piece_name(
        Segment(1, 3).name(), 0, 4096)
    repo.write_bytes(piece, b"piece")
    os.utime(tmp_path_of(repo) / piece, ((T0 + timedelta(seconds=4)).timestamp(),) * 2)

    loss = discarded(repo, _config(), mark)["alpha"]
    assert loss.lost_bytes == 3 * SEG + 4096 - (2 * SEG + 100)
    assert loss.newest_wal_stored_at == T0 + timedelta(seconds=4)
