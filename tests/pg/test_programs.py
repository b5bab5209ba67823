"""pg_basebackup as markship runs it: the tar compressed by the server (PostgreSQL 15 and
later) or by markship while it streams (the path for 13 and 14, whose pg_basebackup has no
zstd) — both must be what a restore unpacks. Only PostgreSQL 15 is installed here, so the
second path runs against 15 with server compression turned off."""

from __future__ import annotations

import subprocess

import pytest

from markship.pg.programs import BaseBackupProcess
from tests.support.servers import PG_BIN, GroupFactory


def unpacked(stream: bytes) -> tuple[list[str], bytes]:
    """The file names in `stream` and its PG_VERSION, read with `zstd -dc | tar` as a restore
    reads a backup."""
    tar = subprocess.run(["zstd", "-dcq"], input=stream, capture_output=True, check=True).stdout
    names = subprocess.run(["tar", "-t"], input=tar, capture_output=True, check=True).stdout
    version = subprocess.run(["tar", "-xO", "PG_VERSION"], input=tar, capture_output=True,
                             check=True).stdout
    return names.decode().split(), version


@pytest.mark.parametrize("server_zstd", [True, False], ids=["server-zstd", "markship-zstd"])
def test_either_compression_gives_the_tar_a_restore_unpacks(
        pg_group: GroupFactory, server_zstd: bool) -> None:
    group = pg_group(1)
    server = group.servers[0]
    server.psql("CREATE TABLE kept AS SELECT generate_series(1, 1000) AS id")
    proc = BaseBackupProcess(str(PG_BIN / "pg_basebackup"), server.conninfo(), "compress-test",
                             level=3, workers=0, archive_wait_seconds=60,
                             server_zstd=server_zstd)
    stream = b""
    while chunk := proc.stdout.read(1 << 20):
        stream += chunk
    proc.finish()

    assert ("--compress=server-zstd:level=3" in proc.argv) is server_zstd
    assert stream[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame either way
    names, version = unpacked(stream)
    assert {"PG_VERSION", "global/pg_control", "backup_label"} <= set(names)
    assert version.strip() == b"15"
