"""Copies of the repository ([[repository.copy]]): sync (copy what is missing, copy rewritten
records again, mirror what expire deleted, never empty a copy from a broken primary), the
fallback reads, and the copy through the command line: wal-push to a sync copy, the agent and
`repository sync` catching an async copy up, status and verify of a copy."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from markship.errors import ObjectMissing, RepositoryError
from markship.pg.scratch import chown_to
from markship.repository import catalog, layout
from markship.repository.copies import Copy, expired, lag, sync
from markship.repository.fallback import Fallback
from markship.repository.fs import FsRepository
from tests.support.checks import one_error_line, wait_for
from tests.support.servers import OS_USER, GroupFactory, run_markship, running_agent, stop_agent

WAL_A = "wal/alpha/0000000100000000/000000010000000000000003-b3." + "a" * 64 + ".zst"
WAL_B = "wal/alpha/0000000100000000/000000010000000000000004-b3." + "b" * 64 + ".zst"
WAL_C = "wal/alpha/0000000100000000/000000010000000000000005-b3." + "c" * 64 + ".zst"
HISTORY = "wal/alpha/history/00000002.history-b3." + "d" * 64 + ".zst"


def _repo(path: Path) -> FsRepository:
    repo = FsRepository(path)
    catalog.ensure_marker(repo, "testgroup", datetime.now(UTC))
    return repo


def _put(repo: FsRepository, key: str, data: bytes, overwrite: bool = False) -> None:
    repo.write(key, io.BytesIO(data), overwrite=overwrite)


def _keys(repo: FsRepository) -> set[str]:
    return {o.key for o in repo.iter_objects("")}


# -- sync, on two directories -------------------------------------------------------------------


def test_sync_copies_what_is_missing_byte_for_byte(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    for key in (WAL_A, WAL_B, "sets/S1.json", "marks/m1.json"):
        _put(primary, key, os.urandom(5000))
    _put(primary, "locks/backup.lock", b"held")  # never copied
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))

    assert lag(primary, copy.repo).objects == 5  # the marker too
    result = sync(primary, copy)
    assert result.copied_objects == 5
    assert _keys(copy.repo) == _keys(primary) - {"locks/backup.lock"}
    for key in _keys(copy.repo):
        assert copy.repo.open_stored(key).read() == primary.open_stored(key).read()
    assert lag(primary, copy.repo).objects == 0
    assert sync(primary, copy).copied_objects == 0  # nothing twice


def test_records_rewritten_in_the_primary_are_copied_again(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    _put(primary, "sets/S1.json", b'{"status": "running"}')
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    time.sleep(0.01)  # the rewrite is newer than the copy made above
    _put(primary, "sets/S1.json", b'{"status": "complete", "more": 1}', overwrite=True)
    assert lag(primary, copy.repo).objects == 1
    result = sync(primary, copy)
    assert result.refreshed_objects == 1
    assert copy.repo.read_bytes("sets/S1.json") == b'{"status": "complete", "more": 1}'


def test_what_expire_deleted_is_deleted_from_the_copy(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    for key in (WAL_A, WAL_B, WAL_C, HISTORY, "sets/S1.json", "sets/S2.json",
                "backups/alpha/S1/base.tar.zst", "backups/alpha/S2/base.tar.zst",
                "failovers/F1.json"):
        _put(primary, key, b"x")
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    # expire: the oldest set, its backup and the WAL only it needed
    for key in ("sets/S1.json", "backups/alpha/S1/base.tar.zst", WAL_A):
        primary.delete(key)
    result = sync(primary, copy)
    assert result.deleted_objects == 3
    assert _keys(copy.repo) == _keys(primary)


def test_a_broken_primary_never_empties_its_copy(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    for key in (WAL_A, WAL_B, "sets/S1.json"):
        _put(primary, key, b"x")
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    held = _keys(copy.repo)

    # A WAL folder emptied (by hand, a damaged disk): nothing in it is taken as expired.
    primary.delete(WAL_A)
    primary.delete(WAL_B)
    assert sync(primary, copy).deleted_objects == 0
    # Unmounted (the directory answers like an empty one): refused before anything happens.
    (tmp_path / "primary").rename(tmp_path / "elsewhere")
    with pytest.raises(RepositoryError, match="no markship.json"):
        sync(primary, copy)
    assert _keys(copy.repo) == held


@pytest.mark.parametrize(("primary", "copy", "gone"), [
    ([WAL_B, WAL_C], [WAL_A, WAL_B, WAL_C], [WAL_A]),
    ([], [WAL_A], []),  # the primary lists nothing there: nothing is taken as expired
    ([WAL_A], [WAL_A, WAL_B, WAL_C], []),  # newer than the primary's: written there meanwhile
    ([WAL_C], [HISTORY, WAL_A], [WAL_A]),  # timeline history files are kept for ever
    (["marks/m2.json"], ["marks/m1.json", "failovers/F.json", "journal/HEAD.json"],
     ["marks/m1.json"]),
    (["wal/bravo/0000000100000000/x"], [WAL_A], []),  # another server's WAL says nothing
])
def test_expired_keys(primary: list[str], copy: list[str], gone: list[str]) -> None:
    assert expired(set(primary), copy) == gone


# -- reading through the copies -----------------------------------------------------------------


def test_reads_fall_back_to_a_copy_when_the_primary_is_gone(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    _put(primary, WAL_A, b"first")
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    _put(copy.repo, WAL_B, b"only in the copy")
    reading = Fallback(primary, [copy.repo])
    assert reading.read_bytes(WAL_B) == b"only in the copy"
    assert reading.children("wal/alpha/0000000100000000/") == sorted(
        [WAL_A.rsplit("/", 1)[1], WAL_B.rsplit("/", 1)[1]])

    (tmp_path / "primary").rename(tmp_path / "gone")
    reading = Fallback(FsRepository(tmp_path / "primary"), [copy.repo])
    assert reading.read_bytes(WAL_A) == b"first"
    assert reading.exists(layout.MARKER_KEY)
    with pytest.raises(ObjectMissing):
        reading.read_bytes(WAL_C)
    # Writes go to the copy now (never into a directory re-created where the primary was).
    reading.write_bytes("failovers/F1.json", b"{}")
    assert copy.repo.exists("failovers/F1.json")
    assert not (tmp_path / "primary").exists()
