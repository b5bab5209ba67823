"""What users cause around jobs: a second job, a full disk, a server that is down."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from markship.pg.scratch import chown_to
from tests.support.servers import OS_USER, GroupFactory, run_markship, write_config


@pytest.mark.reliability("second backup job while one runs",
                         fault="the backup lock is held by another process",
                         expected="one line naming the holder's command and pid; the note in "
                                  "the (unencrypted) lock file names no group and no host")
def test_second_backup_job_is_refused(pg_group: GroupFactory) -> None:
    import socket

    from markship.repository.fs import FsRepository

    group = pg_group(1)
    group.ok("backup")
    with FsRepository(group.repo).lock("backup", "markship backup of group testgroup"):
        note = (group.repo / "locks" / "backup.lock").read_text()
        proc = group.markship("backup")
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert "another job is running: markship backup" in line
    assert f"pid {os.getpid()} on this host" in line
    assert len(line.splitlines()) == 1
    assert "testgroup" not in note and socket.gethostname() not in note
    assert len(json.loads(group.ok("list", "--json"))) == 1


def test_backup_with_a_server_down_keeps_the_others(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    alpha, bravo = group.servers
    alpha.psql("CREATE TABLE kept AS SELECT 42 AS answer")
    bravo.stop()
    proc = group.markship("backup")
    assert proc.returncode != 0
    assert "bravo: cannot connect to server bravo" in proc.stderr
    sets = json.loads(group.ok("list", "--json"))
    assert len(sets) == 1 and not sets[0]["complete"]
    assert list(sets[0]["backups"]) == ["alpha"]
    restored = group.restore("alpha")
    assert restored.psql("SELECT answer FROM kept") == "42"


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    mount = workdir / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    chown_to(mount, OS_USER)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_repository_disk_is_one_clear_line(workdir: Path, small_disk: Path) -> None:
    config = workdir / "markship.toml"
    write_config(config, small_disk / "repo", [])
    config.write_text(config.read_text() + '\n[[server]]\nname = "orders"\nconninfo = "x"\n')
    segment = workdir / "000000010000000000000001"
    segment.write_bytes(os.urandom(16 << 20))  # incompressible: cannot fit in 4 MB
    chown_to(segment, OS_USER)
    proc = run_markship(config, "wal-push", "--server", "orders", str(segment), user=OS_USER)
    assert proc.returncode == 1
    assert "repository disk full" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    leftovers = [p for p in (small_disk / "repo").rglob("*") if p.is_file()]
    assert leftovers == [], "a partly written object must not stay behind"
