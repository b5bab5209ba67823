"""Base backups and restores of real servers, driven through markship's command line."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from markship.pg.scratch import wait_archived
from tests.support.fingerprints import load_pgbench, pgbench_fingerprint
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, GroupFactory


@ON_FS_AND_S3
def test_backup_then_restore_every_server_to_latest(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    for server in group.servers:
        load_pgbench(server)
    group.ok("backup")
    sets = json.loads(group.ok("list", "--json"))
    assert [s["state"] for s in sets] == ["complete"]
    assert set(sets[0]["backups"]) == {"alpha", "bravo"}
    expected = {}
    for server in group.servers:
        server.run("pgbench", "-n", "-c", "2", "-t", "200", "-d", server.conninfo())
        wait_archived(server)
        expected[server.name] = pgbench_fingerprint(server)
    for server in group.servers:
        restored = group.restore(server.name, "--latest")
        assert pgbench_fingerprint(restored) == expected[server.name]
        assert restored.psql("SELECT pg_is_in_recovery()") == "f"

    status = json.loads(group.ok("status", "--json"))["servers"]
    assert {s["server"]: s["last_backup_set"] for s in status} == {
        "alpha": sets[0]["id"], "bravo": sets[0]["id"]}
    assert all(s["reachable"] and s["last_archived_wal"] for s in status)


def test_restore_to_named_point_and_to_time(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    server = group.servers[0]
    server.psql("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
    group.ok("backup")
    server.psql("INSERT INTO ledger SELECT g, 'before the point' FROM generate_series(1, 10) g")
    server.psql("SELECT pg_create_restore_point('before-batch-2')")
    server.psql("INSERT INTO ledger SELECT g, 'before the time' FROM generate_series(11, 20) g")
    time.sleep(0.2)
    moment = server.psql("SELECT to_char(now() AT TIME ZONE 'UTC', "
                         "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    time.sleep(0.2)
    server.psql("INSERT INTO ledger SELECT g, 'after' FROM generate_series(21, 30) g")
    wait_archived(server)

    at_point = group.restore("alpha", "--name", "before-batch-2")
    assert at_point.psql("SELECT count(*), max(id) FROM ledger") == "10|10"
    at_time = group.restore("alpha", "--time", moment)
    assert at_time.psql("SELECT count(*), max(id) FROM ledger") == "20|20"
    latest = group.restore("alpha")
    assert latest.psql("SELECT count(*) FROM ledger") == "30"


def test_restore_refuses_time_before_backup_and_non_empty_dir(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    group.ok("backup")
    # The markship config file itself travels with the set.
    (set_id,) = [s["id"] for s in json.loads(group.ok("list", "--json"))]
    stored = group.repo / "backups" / "_group" / set_id / "markship.toml"
    assert stored.read_bytes() == group.config_path.read_bytes()
    target = group.restored("alpha")
    early = group.markship("restore", "--server", "alpha", "--target-dir", str(target.data_dir),
                           "--time", "2001-01-01T00:00:00Z")
    assert early.returncode != 0
    assert "before the consistency point" in early.stderr
    naive = group.markship("restore", "--server", "alpha", "--target-dir", str(target.data_dir),
                           "--time", "2030-01-01T00:00:00")
    assert naive.returncode != 0 and "has no time zone" in naive.stderr
    unknown = group.markship("restore", "--server", "alpha", "--target-dir", str(target.data_dir),
                             "--name", "no-such-point", "--start", "--port", str(target.port),
                             "--setting", f"unix_socket_directories={target.base_dir}")
    assert unknown.returncode != 0
    assert "the recovery target was not reached" in unknown.stderr
    target = group.restored("alpha")
    target.data_dir.mkdir()
    (target.data_dir / "precious").write_text("keep me")
    busy = group.markship("restore", "--server", "alpha", "--target-dir", str(target.data_dir))
    assert busy.returncode != 0 and "is not empty" in busy.stderr
    assert (target.data_dir / "precious").read_text() == "keep me"


def test_killed_backup_leaves_no_complete_set(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    server = group.servers[0]
    load_pgbench(server, scale=5)
    proc = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "backup"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(group.repo.glob("backups/alpha/*/.tmp~*")):
        assert time.monotonic() < deadline, "backup never started writing"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(["pkill", "-KILL", "-f", f"markship:.*:{server.name}"], check=False)

    sets = json.loads(group.ok("list", "--json"))
    assert len(sets) == 1 and not sets[0]["complete"]
    assert sets[0]["state"] == "incomplete"
    assert "abandoned" in sets[0]["problems"][0]

    report = json.loads(group.markship("verify", "--json").stdout)
    assert report["temp_objects"], "the partly written backup must be reported"
    assert report["ok"], "an abandoned set is not a damaged repository"
    cleaned = json.loads(group.markship("verify", "--json", "--clean-temp").stdout)
    removed = set(cleaned["removed_temp"])
    assert set(report["temp_objects"]) <= removed
    # Besides: only a WAL push's temp object whose writer died between the two runs (the
    # live archiver is never stopped in this test).
    assert all(key.startswith("wal/") for key in removed - set(report["temp_objects"])), removed
    # The backup's partial objects are gone. (The live archiver may be mid-push of a WAL
    # segment right now; verify leaves temp objects of living writers alone on purpose.)
    assert not list(group.repo.glob("backups/**/.tmp~*"))
    for key in report["temp_objects"]:
        assert not (group.repo / key).exists(), key

    group.ok("backup")
    sets = json.loads(group.ok("list", "--json"))
    assert [s["complete"] for s in sets] == [False, True]
    restored = group.restore("alpha")
    assert restored.psql("SELECT count(*) FROM pgbench_accounts") == "500000"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_damaged_objects_are_named_and_never_restored(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    server = group.servers[0]
    load_pgbench(server)
    group.ok("backup")
    server.run("pgbench", "-n", "-t", "100", "-d", server.conninfo())
    wait_archived(server)
    assert group.markship("verify").returncode == 0

    # A WAL segment written after the backup: verify names it, recovery refuses it.
    segments = sorted(group.repo.glob("wal/alpha/0000000100000000/000000010000000000000*-*.zst"))
    wal_victim = segments[-1]
    _flip_byte(wal_victim)
    proc = group.markship("verify")
    assert proc.returncode != 0
    assert wal_victim.name.split("-")[0] in proc.stdout
    handle = group.restored("alpha")
    failed = group.markship("restore", "--server", "alpha", "--target-dir", str(handle.data_dir),
                            "--start", "--port", str(handle.port),
                            "--setting", f"unix_socket_directories={handle.base_dir}")
    assert failed.returncode != 0
    assert "did not start" in failed.stderr and "Traceback" not in failed.stderr
    _flip_byte(wal_victim)  # repair

    # The base backup itself.
    archive = next(group.repo.glob("backups/alpha/*/base.tar.zst"))
    _flip_byte(archive)
    proc = group.markship("verify")
    assert proc.returncode != 0
    assert str(archive.relative_to(group.repo)) in proc.stdout
    handle = group.restored("alpha")
    refused = group.markship("restore", "--server", "alpha", "--target-dir", str(handle.data_dir))
    assert refused.returncode != 0
    assert "fails its checksum" in refused.stderr or "cannot be" in refused.stderr
    assert list(handle.data_dir.iterdir()) == []
    _flip_byte(archive)

    # A catalog record.
    record = next(group.repo.glob("backups/alpha/*/backup.json"))
    record.write_text(record.read_text().replace('"raw_size": ', '"raw_size": 1'))
    proc = group.markship("verify")
    assert proc.returncode != 0
    assert "backup.json fails its checksum" in proc.stdout


def test_backup_refuses_server_without_archiving(pg_group: GroupFactory) -> None:
    group = pg_group(1, settings={"archive_mode": "off"})
    proc = group.markship("backup")
    assert proc.returncode != 0
    assert "archive_mode is off on server alpha" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_wal_gap_makes_sets_unrestorable(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    server = group.servers[0]
    group.ok("backup")
    for _ in range(3):
        server.psql("CREATE TABLE IF NOT EXISTS t (x int); INSERT INTO t VALUES (1)")
        wait_archived(server)
    segments = sorted(group.repo.glob("wal/alpha/0000000100000000/0000000100000000000000??-*"))
    missing = segments[-2]
    missing.unlink()
    name = missing.name.split("-")[0]

    proc = group.markship("verify")
    assert proc.returncode != 0
    assert f"WAL gap on server alpha: {name} missing" in proc.stdout
    assert "is not restorable" in proc.stdout

    handle = group.restored("alpha")
    refused = group.markship("restore", "--server", "alpha", "--target-dir", str(handle.data_dir))
    assert refused.returncode != 0
    assert f"{name} is missing from the archive" in refused.stderr
    assert not handle.data_dir.exists()


def test_backup_refuses_when_wal_goes_elsewhere(pg_group: GroupFactory) -> None:
    group = pg_group(1, settings={"archive_command": "true"})
    proc = group.markship("backup")
    assert proc.returncode != 0
    assert "did not reach the repository" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    sets = json.loads(group.ok("list", "--json"))
    assert [s["complete"] for s in sets] == [False]
    assert not list(group.repo.glob("backups/alpha/*/base.tar.zst"))
