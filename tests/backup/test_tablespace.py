"""Servers with a tablespace outside their data directory: backed up with one archive per
tablespace, restored to a mark into new tablespace directories (`--tablespace-map`) while the
original servers keep running, one server alone and the whole group; a tablespace directory
that is not empty and a damaged tablespace archive are refused before anything is left
behind, and verify reads the tablespace archives. Each on a directory and on S3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from markship.pg.scratch import ScratchServer, chown_to, wait_archived
from markship.repository.catalog import BackupRecord
from markship.repository.records import decode, encode
from tests.support.checks import refused_line, wait_for
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import (
    OS_USER,
    Group,
    GroupFactory,
    add_dr_site,
    new_mark,
    run_markship,
)


def _with_tablespace(group: Group) -> dict[str, str]:
    """A tablespace `fast` on every server (in workdir/ts-<server>) holding table orders with
    rows 1..100; server → the tablespace's OID."""
    oids = {}
    for server in group.servers:
        location = group.workdir / f"ts-{server.name}"
        location.mkdir()
        chown_to(location, OS_USER)
        server.psql(f"CREATE TABLESPACE fast LOCATION '{location}'")
        server.psql("CREATE TABLE orders (id int) TABLESPACE fast")
        server.psql("INSERT INTO orders SELECT generate_series(1, 100)")
        oids[server.name] = server.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'fast'")
    return oids


def _new_dir(group: Group, name: str) -> Path:
    """A directory the repository's OS user may create tablespace directories in."""
    path = group.workdir / name
    path.mkdir()
    chown_to(path, OS_USER)
    return path


def _orders_in(server: ScratchServer) -> tuple[str, str]:
    """Rows of orders, and where its tablespace lies."""
    return (server.psql("SELECT count(*) FROM orders"),
            server.psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace "
                        "WHERE spcname = 'fast'"))


@ON_FS_AND_S3
def test_tablespaces_back_up_and_restore_to_a_mark_in_new_directories(
        pg_group: GroupFactory) -> None:
    group = pg_group(2)
    oids = _with_tablespace(group)
    group.ok("backup")
    sets = json.loads(group.ok("list", "--json"))
    assert [s["complete"] for s in sets] == [True]
    for name, oid in oids.items():
        backup = sets[0]["backups"][name]
        assert backup["tablespaces"][oid]["name"] == "fast"
        assert backup["tablespaces"][oid]["location"] == str(group.workdir / f"ts-{name}")
        assert group.store.stored_keys(f"backups/{name}/{sets[0]['id']}/tablespace-{oid}.tar.zst")
    assert sets[0]["stored_bytes"] == sum(
        b["archive"]["size"] + sum(t["archive"]["size"] for t in b["tablespaces"].values())
        for b in sets[0]["backups"].values())
    for server in group.servers:
        server.psql("INSERT INTO orders SELECT generate_series(101, 150)")
    mark = new_mark(group)
    for server in group.servers:
        server.psql("INSERT INTO orders SELECT generate_series(151, 200)")  # after the mark
        wait_archived(server)

    # One server, its tablespace mapped by name to a new directory; the original runs on.
    moved = _new_dir(group, "moved") / "fast"
    alone = group.restored("alpha")
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(alone.data_dir),
                          "--name", mark, "--tablespace-map", f"fast={moved}", "--start",
                          "--port", str(alone.port), "--json",
                          "--setting", f"unix_socket_directories={alone.base_dir}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tablespaces"] == {"fast": str(moved)}
    assert _orders_in(alone) == ("150", str(moved))
    (version_dir,) = moved.iterdir()
    assert version_dir.name.startswith("PG_15_") and any(version_dir.rglob("*"))
    assert (moved.stat().st_mode & 0o777, moved.owner()) == (0o700, OS_USER)
    assert _orders_in(group.servers[0]) == ("200", str(group.workdir / "ts-alpha"))

    # The whole group to the same mark, each server's tablespace (mapped by its original
    # location for alpha, by name for bravo: one entry each) into a directory of its own.
    handles, where = group.group_targets()
    spaces = _new_dir(group, "group-spaces")
    proc = group.markship("restore", "--group", "--mark", mark, "--json", *where,
                          "--tablespace-map", f"fast={spaces}/{{server}}-fast")
    assert proc.returncode == 0, proc.stderr
    for name, handle in handles.items():
        assert _orders_in(handle) == ("150", str(spaces / f"{name}-fast"))
    # An entry naming no tablespace of any server is refused before anything is written.
    typo = group.markship("restore", "--group", "--mark", mark, *where,
                          "--tablespace-map", f"fsat={spaces}/{{server}}-x")
    assert "--tablespace-map 'fsat' names no tablespace of any server's backups" in \
        refused_line(typo)
    assert sorted(p.name for p in spaces.iterdir()) == ["alpha-fast", "bravo-fast"]


@ON_FS_AND_S3
def test_a_busy_tablespace_directory_or_a_damaged_archive_is_refused(
        pg_group: GroupFactory) -> None:
    group = pg_group(1)
    oid = _with_tablespace(group)["alpha"]
    group.ok("backup")
    wait_archived(group.servers[0])
    set_id = json.loads(group.ok("list", "--json"))[0]["id"]
    new = _new_dir(group, "new")

    # Unmapped, the tablespace would go back to its original location, which the running
    # server still uses; mapped into a directory holding a file, the same.
    target = new / "data"
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(target))
    line = refused_line(proc)
    assert f"tablespace fast would go to {group.workdir / 'ts-alpha'}, which is not empty" \
        in line, line
    busy = _new_dir(group, "busy")
    (busy / "keep.txt").write_text("someone's file\n")
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(target),
                          "--tablespace-map", f"{group.workdir / 'ts-alpha'}={busy}")
    assert f"tablespace fast would go to {busy}, which is not empty" in refused_line(proc)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not target.exists()

    # A record whose tablespace_map names a tablespace it has no archive of.
    record_key = f"backups/alpha/{set_id}/backup.json"
    original = group.store.read(record_key)
    record = decode(original, BackupRecord, record_key)
    group.store.write(record_key, encode(record.model_copy(update={"tablespaces": {}})))
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(target))
    line = refused_line(proc)
    assert f"lists tablespace {oid} in its tablespace_map, but the repository holds no " \
        "archive of it" in line, line
    assert not any(target.iterdir())
    group.store.write(record_key, original)

    # A damaged tablespace archive: verify names it, restore leaves nothing behind.
    key = f"backups/alpha/{set_id}/tablespace-{oid}.tar.zst"
    data = bytearray(group.store.read(key))
    data[len(data) // 2] ^= 0xFF
    group.store.write(key, bytes(data))
    proc = group.markship("verify")
    assert proc.returncode != 0 and key in proc.stdout + proc.stderr, proc.stdout
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(target),
                          "--tablespace-map", f"fast={new / 'fast'}")
    line = refused_line(proc)
    assert f"tablespace fast archive {key}" in line and "nothing was restored" in line, line
    assert not any(target.iterdir()) and not (new / "fast").exists()


def test_a_backup_failing_in_a_later_tablespace_leaves_no_archive(
        pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    for name in ("early", "late"):
        location = group.workdir / f"ts-{name}"
        location.mkdir()
        chown_to(location, OS_USER)
        alpha.psql(f"CREATE TABLESPACE {name} LOCATION '{location}'")
        alpha.psql(f"CREATE TABLE t_{name} TABLESPACE {name} AS SELECT generate_series(1, 10)")
    # pg_basebackup sends the tablespaces by OID, the data directory last: a file the server
    # cannot read in the later tablespace fails the backup after the first one was stored.
    unreadable = alpha.data_dir / alpha.psql("SELECT pg_relation_filepath('t_late')")
    alpha.psql("CHECKPOINT")  # nothing left for the backup's checkpoint to write there
    unreadable.chmod(0)

    proc = group.markship("backup")
    line = refused_line(proc)
    assert f'could not open file "{group.workdir / "ts-late"}/' in line, line
    assert group.store.stored_keys("backups/alpha/") == []
    assert not any(s["complete"] for s in json.loads(group.ok("list", "--json")))

    unreadable.chmod(0o600)
    group.ok("backup")
    assert len([k for k in group.store.stored_keys("backups/alpha/")
                if k.endswith(".tar.zst")]) == 3


def test_a_drill_and_every_tablespace_mapped_at_once_beside_the_originals(
        pg_group: GroupFactory) -> None:
    group = pg_group(2)
    oids = _with_tablespace(group)
    group.ok("backup")
    for server in group.servers:
        server.psql("INSERT INTO orders SELECT generate_series(101, 150)")
    mark = new_mark(group, complete=True)
    for server in group.servers:
        server.psql("INSERT INTO orders SELECT generate_series(151, 200)")  # after the mark

    # A drill on this very host: the scratch servers' tablespaces go into its scratch
    # directory, never to the original places the running servers use.
    parent = _new_dir(group, "drills")
    checks = group.workdir / "orders.sql"
    checks.write_text("[*] SELECT count(*) = 150 FROM orders\n")
    drill = group.markship("drill", "--mark", mark, "--check-sql", str(checks), "--work-dir",
                           str(parent), "--json")
    assert drill.returncode == 0, drill.stderr
    report = json.loads(drill.stdout)
    assert report["ok"] and report["checks"] and all(c["ok"] for c in report["checks"]), report
    assert not any(parent.iterdir())  # the scratch directory, tablespaces included, is gone
    for server in group.servers:
        assert _orders_in(server) == ("200", str(group.workdir / f"ts-{server.name}"))

    # `*=NEW` places every tablespace not named otherwise, each by its OID.
    every = _new_dir(group, "every")
    alone = group.restored("alpha")
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(alone.data_dir),
                          "--name", mark, "--tablespace-map", f"*={every}/{{oid}}", "--start",
                          "--port", str(alone.port),
                          "--setting", f"unix_socket_directories={alone.base_dir}")
    assert proc.returncode == 0, proc.stderr
    assert _orders_in(alone) == ("150", str(every / oids["alpha"]))
    proc = group.markship("restore", "--server", "alpha", "--target-dir",
                          str(group.workdir / "unused"), "--tablespace-map", f"*={every}/x")
    assert "--tablespace-map '*=" in refused_line(proc) and "no {oid} placeholder" in \
        refused_line(proc)


def test_a_dr_standby_puts_its_tablespaces_where_its_config_says(
        pg_group: GroupFactory) -> None:
    group = pg_group(1)
    oid = _with_tablespace(group)["alpha"]
    group.ok("backup")
    spaces = _new_dir(group, "dr-spaces")
    standbys = add_dr_site(group, standby_lines={
        "alpha": f'tablespace_map = ["*={spaces}/{{oid}}"]\n'})
    group.ok("standby", "create")  # on this very host: the original place is in use
    group.servers[0].psql("INSERT INTO orders SELECT generate_series(101, 150)")
    new_mark(group, complete=True)
    new_mark(group, complete=True)  # the standby replays up to the segment before it
    standby = standbys["alpha"]
    wait_for(lambda: standby.psql("SELECT count(*) FROM orders") == "150",
             "the standby replaying the rows written in its tablespace", timeout=60,
             interval=0.5)
    assert _orders_in(standby) == ("150", str(spaces / oid))

    # A map entry that is no OLD=NEW: the config is refused when read, in one line.
    good = group.config_path.read_text()
    group.config_path.write_text(good.replace(f'"*={spaces}/{{oid}}"', '"*=relative/{oid}"'))
    line = refused_line(group.markship("standby", "status"))
    assert "tablespace_map entry '*=relative/{oid}'" in line and "absolute path" in line, line


def test_failback_puts_the_tablespaces_back_where_the_old_site_had_them(
        pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    oid = _with_tablespace(group)["alpha"]
    home = group.workdir / "ts-alpha"
    group.ok("backup")
    spaces = _new_dir(group, "dr-spaces")
    standby = add_dr_site(group, standby_lines={
        "alpha": f'tablespace_map = ["*={spaces}/{{oid}}"]\n'})["alpha"]
    group.ok("standby", "create")
    alpha.psql("INSERT INTO orders SELECT generate_series(101, 150)")
    new_mark(group, complete=True)
    new_mark(group, complete=True)
    wait_for(lambda: standby.psql("SELECT count(*) FROM orders") == "150",
             "the standby at the first mark", timeout=60, interval=0.5)

    # The disaster: the old site's server and data directory are gone, its tablespace
    # directory is left behind (another disk).
    alpha.kill9()
    shutil.rmtree(alpha.data_dir)
    report = json.loads(group.ok("failover", "--json"))
    new_config = Path(report["new_config"])
    standby.psql("INSERT INTO orders SELECT generate_series(151, 170)")  # the DR site's work

    # Rebuilding the old site puts the tablespace back at its old place: refused while that
    # still holds the old timeline, before anything is written.
    proc = run_markship(new_config, "failback", "prepare", timeout=240)
    line = refused_line(proc)
    assert f"old site tablespace directory {home} (tablespace fast of alpha) is not empty" \
        in line, line
    shutil.rmtree(home)
    proc = run_markship(new_config, "failback", "prepare", timeout=240)
    assert proc.returncode == 0, proc.stderr
    rebuilt = ScratchServer("alpha", alpha.base_dir, alpha.port, os_user=OS_USER)
    for _ in range(2):  # the standby replays up to the segment before the newest mark
        marked = run_markship(new_config, "mark", "--wait", "120")
        assert marked.returncode == 0, marked.stderr
    wait_for(lambda: rebuilt.psql("SELECT count(*) FROM orders") == "170",
             "the old site's standby replaying the DR site's rows", timeout=90, interval=0.5)
    assert _orders_in(rebuilt) == ("170", str(home))
    assert _orders_in(standby) == ("170", str(spaces / oid))
