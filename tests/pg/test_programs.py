"""pg_basebackup as markship runs it: the tar compressed by the server (PostgreSQL 15 and
later) or by markship while it streams (the path for 13 and 14, whose pg_basebackup has no
zstd) — both must be what a restore unpacks. Only PostgreSQL 15 is installed here, so the
second path runs against 15 with server compression turned off."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from markship.pg.programs import BaseBackupProcess
from markship.pg.scratch import chown_to
from tests.support.servers import OS_USER, PG_BIN, GroupFactory


def read_all(proc: BaseBackupProcess) -> dict[str, bytes]:
    """Every archive pg_basebackup wrote, read as markship stores them."""
    streams: dict[str, bytes] = {}
    for name, archive in proc.archives():
        streams[name] = b""
        while chunk := archive.read(1 << 20):
            streams[name] += chunk
    return streams


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
    streams = read_all(proc)
    proc.finish()

    assert list(streams) == ["base"]
    stream = streams["base"]

    assert ("--compress=server-zstd:level=3" in proc.argv) is server_zstd
    assert stream[:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame either way
    names, version = unpacked(stream)
    assert {"PG_VERSION", "global/pg_control", "backup_label"} <= set(names)
    assert version.strip() == b"15"


@pytest.mark.parametrize("server_zstd", [True, False], ids=["server-zstd", "markship-zstd"])
def test_a_server_with_tablespaces_gives_one_archive_each_through_the_spool(
        pg_group: GroupFactory, server_zstd: bool, tmp_path: Path) -> None:
    group = pg_group(1)
    server = group.servers[0]
    oids = []
    for name in ("one", "two"):
        location = group.workdir / f"ts-{name}"
        location.mkdir()
        chown_to(location, OS_USER)
        server.psql(f"CREATE TABLESPACE {name} LOCATION '{location}'")
        oids.append(server.psql(f"SELECT oid FROM pg_tablespace WHERE spcname = '{name}'"))
    server.psql("CREATE TABLE kept TABLESPACE one AS SELECT generate_series(1, 1000) AS id")
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    chown_to(spool, OS_USER)
    proc = BaseBackupProcess(str(PG_BIN / "pg_basebackup"), server.conninfo(), "spool-test",
                             level=3, workers=0, archive_wait_seconds=60,
                             server_zstd=server_zstd, spool_dir=spool)
    streams = read_all(proc)
    proc.finish()

    assert sorted(streams) == sorted(["base", *oids])
    assert not list(spool.iterdir())  # each archive removed once read
    names, _version = unpacked(streams["base"])
    assert {"PG_VERSION", "backup_label", "tablespace_map"} <= set(names)
    tar = subprocess.run(["zstd", "-dcq"], input=streams["base"], capture_output=True,
                         check=True).stdout
    mapping = subprocess.run(["tar", "-xO", "tablespace_map"], input=tar, capture_output=True,
                             check=True).stdout.decode()
    expected = [f"{oid} {group.workdir / f'ts-{name}'}"
                for oid, name in zip(oids, ("one", "two"), strict=True)]
    assert sorted(mapping.splitlines()) == sorted(expected)
    tablespace = subprocess.run(["zstd", "-dcq"], input=streams[oids[0]], capture_output=True,
                                check=True).stdout
    members = subprocess.run(["tar", "-t"], input=tablespace, capture_output=True,
                             check=True).stdout.decode().split()
    assert all(m.startswith("PG_15_") for m in members) and len(members) > 2
