"""pg_wal protection in wal-push (markship.wal.guard), PostgreSQL's side played by files: a
pg_wal folder with segments and their `.ready` status files, a repository the archiving user
cannot write. The end-to-end case under pgbench load is tests/faults/test_wal_protection.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

from markship.pg.scratch import chown_to
from tests.support.netcut import Knocks
from tests.support.s3 import write_credentials
from tests.support.servers import OS_USER, run_markship, write_offline_config

SEGMENTS = [f"0000000100000000000000{n:02X}" for n in range(7, 13)]  # 07 … 0C


def _pg_wal(workdir: Path, count: int = 5) -> Path:
    """Finished 16 MiB segments waiting to be archived (5: 80 MiB)."""
    wal = workdir / "pg_wal"
    (wal / "archive_status").mkdir(parents=True, exist_ok=True)
    _add(wal, SEGMENTS[:count])
    return wal


def _add(wal: Path, names: list[str]) -> None:
    """PostgreSQL finished these segments: files and their `.ready` status files."""
    for name in names:
        with open(wal / name, "wb") as segment:
            segment.truncate(16 << 20)
        (wal / "archive_status" / f"{name}.ready").touch()
    for path in [wal, *wal.rglob("*")]:
        chown_to(path, OS_USER)


def _config(workdir: Path, queue_max: str | None) -> Path:
    config = workdir / "markship.toml"
    write_offline_config(config, workdir / "repo")
    line = f'archive_queue_max = "{queue_max}"\n' if queue_max else ""
    config.write_text(config.read_text().replace(
        f'os_user = "{OS_USER}"\n', f'os_user = "{OS_USER}"\npush_ahead = 0\n{line}', 1))
    return config


def _push(config: Path, wal: Path, name: str) -> tuple[int, str]:
    proc = run_markship(config, "wal-push", "--server", "orders", str(wal / name),
                        user=OS_USER)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:  # what PostgreSQL does with an archived file
        os.replace(wal / "archive_status" / f"{name}.ready",
                   wal / "archive_status" / f"{name}.done")
    return proc.returncode, proc.stderr


def _unwritable_repository(workdir: Path) -> Path:
    repo = workdir / "repo"
    repo.mkdir(mode=0o755)  # root's: the archiving user cannot write it
    return repo


def test_without_archive_queue_max_no_wal_is_ever_dropped(workdir: Path) -> None:
    wal = _pg_wal(workdir)
    _unwritable_repository(workdir)
    config = _config(workdir, None)
    code, stderr = _push(config, wal, SEGMENTS[0])
    assert code == 1 and "repository not writable" in stderr, stderr
    assert (wal / "archive_status" / f"{SEGMENTS[0]}.ready").exists()


def test_the_oldest_wal_beyond_the_limit_is_given_up_and_recorded(workdir: Path) -> None:
    wal = _pg_wal(workdir, count=2)
    repo = _unwritable_repository(workdir)
    config = _config(workdir, "32MiB")

    # 32 MiB wait, 32 MiB allowed: within the limit the failure stands, as without it.
    code, stderr = _push(config, wal, SEGMENTS[0])
    assert code == 1 and "repository not writable" in stderr, stderr
    _add(wal, SEGMENTS[2:5])
    # Only the oldest waiting segment is ever given up, never one in the middle.
    code, stderr = _push(config, wal, SEGMENTS[1])
    assert code == 1 and "repository not writable" in stderr, stderr
    # 80 MiB wait, 32 MiB allowed: the oldest three go, the first answered now.
    code, stderr = _push(config, wal, SEGMENTS[0])
    assert code == 0, stderr
    assert "3 segments from 000000010000000000000007 on given up" in stderr, stderr
    for name in SEGMENTS[1:3]:  # answered at once from their spool markers
        assert _push(config, wal, name)[0] == 0
    # Within the limit again, but the gap is open: what waits can no longer be restored
    # before the next full backup, so it goes too (pg_wal stays as small as it can).
    code, stderr = _push(config, wal, SEGMENTS[3])
    assert code == 0 and "2 segments from 00000001000000000000000A on given up" in stderr
    assert _push(config, wal, SEGMENTS[4])[0] == 0
    assert not (repo / "gaps").exists()  # it could not be written there yet

    chown_to(repo, OS_USER)  # the repository is back: the next push records the gap
    _add(wal, SEGMENTS[5:])
    code, stderr = _push(config, wal, SEGMENTS[5])
    assert code == 0 and not stderr, stderr
    [record] = (repo / "gaps" / "orders").glob("*.json")
    gap = json.loads(record.read_text())["body"]
    assert (gap["first_segment"], gap["last_segment"], gap["segments"]) == (
        SEGMENTS[0], SEGMENTS[4], 5)
    assert gap["queue_max_bytes"] == 32 << 20 and gap["backlog_bytes"] == 80 << 20
    assert gap["wal_from"].endswith("Z") and "not writable" in gap["reason"]
    journal = json.loads(run_markship(config, "journal", "--json").stdout)
    assert [e["objects"] for e in journal if e["command"] == "wal-push"] == [
        {"gap": f"gaps/orders/{SEGMENTS[0]}.json"}]
    # The spool keeps nothing once a later segment is stored: the next push pays one stat().
    spool = [p for p in Path("/var/tmp").glob("markship-spool-*/*/~gaps/orders")
             if str(workdir).replace("/", "%2F") in str(p)]
    assert spool == []


def test_while_a_gap_is_open_an_s3_push_is_tried_once(workdir: Path) -> None:
    """Retries only keep WAL waiting in pg_wal once a gap is open (the WAL after it cannot
    be restored before the next full backup): the push fails at its first try."""
    wal = _pg_wal(workdir)
    config = _config(workdir, "32MiB")
    with Knocks() as s3:
        credentials = write_credentials(workdir / "s3.env")
        config.write_text(config.read_text().replace(
            f'path = "{workdir / "repo"}"\n',
            f'url = "s3://walprot-test/markship"\nendpoint = "{s3.endpoint}"\n'
            f'region = "us-east-1"\ncredentials_file = "{credentials}"\n', 1))
        # No gap yet: the failing request is retried (up to 4 retries, as obstore's backoff
        # allows) before WAL is given up.
        code, stderr = _push(config, wal, SEGMENTS[0])
        assert code == 0 and "3 segments from 000000010000000000000007 on given up" in stderr
        tried = s3.count
        assert 2 <= tried <= 5 and "(retried)" in stderr, (tried, stderr)
        for name in SEGMENTS[1:3]:  # answered from their spool markers, S3 not asked
            assert _push(config, wal, name)[0] == 0
        assert s3.count == tried
        _add(wal, SEGMENTS[5:6])
        code, stderr = _push(config, wal, SEGMENTS[3])
        assert code == 0 and "3 segments from 00000001000000000000000A on given up" in stderr
        assert s3.count == tried + 1 and "(retried)" not in stderr, stderr
