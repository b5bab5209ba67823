"""A restore paused at its target is read-only there; --advance-to moves it on without
restoring again, --resume promotes it; a whole group pauses at one mark and settles its
prepared transactions on resume. The single-server restore runs as on a DR host that lacks
production's paths: its own directory tree, socket directory and port, no TCP at all."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import psycopg

from markship.pg.datadir import recovery_end, stop_reason
from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port, wait_archived
from tests.support.servers import OS_USER, PG_BIN, GroupFactory, new_mark, stop_postmaster
from tests.support.workloads import ACCOUNTS, START_BALANCE, prepare_transfer, setup_accounts


def _sql(socket_dir: Path, port: int, sql: str) -> subprocess.CompletedProcess[str]:
    """psql through the restored server's socket (it listens on no TCP address)."""
    argv = as_user([str(PG_BIN / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                    "-h", str(socket_dir), "-p", str(port), "-U", "postgres", "-d", "postgres",
                    "-c", sql], OS_USER)
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _value(socket_dir: Path, port: int, sql: str) -> str:
    proc = _sql(socket_dir, port, sql)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_paused_restore_advances_and_resumes(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE orders (id int)")
    group.ok("backup")
    alpha.psql("INSERT INTO orders SELECT generate_series(1, 10)")
    first = new_mark(group)
    alpha.psql("INSERT INTO orders SELECT generate_series(11, 20)")
    lsn = alpha.psql("SELECT pg_current_wal_insert_lsn()")
    alpha.psql("INSERT INTO orders SELECT generate_series(21, 30)")
    second = new_mark(group)
    alpha.psql("INSERT INTO orders SELECT generate_series(31, 40)")
    wait_archived(alpha)

    # A DR host's own tree: data, socket directory and port of its own, no TCP address.
    tree = group.workdir / "dr-host"
    (tree / "run").mkdir(parents=True)
    chown_to(tree, OS_USER)
    chown_to(tree / "run", OS_USER)
    data, sockets, port = tree / "pgdata", tree / "run", free_port()
    group.extra.append(ScratchServer("alpha", tree, port, os_user=OS_USER))  # stopped at teardown
    try:
        restore = group.markship("restore", "--server", "alpha", "--target-dir", str(data),
                                 "--name", first, "--action", "pause", "--start",
                                 "--port", str(port), "--setting", "listen_addresses=",
                                 "--setting", f"unix_socket_directories={sockets}")
        assert restore.returncode == 0, restore.stderr
        assert "paused there" in restore.stdout, restore.stdout
        assert _value(sockets, port, "SELECT count(*) FROM orders") == "10"
        assert _value(sockets, port, "SELECT pg_is_in_recovery()") == "t"
        refused = _sql(sockets, port, "INSERT INTO orders VALUES (0)")
        assert refused.returncode != 0 and "read-only" in refused.stderr
        assert not (alpha.socket_dir / f".s.PGSQL.{port}").exists()

        # On to an LSN, then to a later mark: more rows each time, still paused, read-only.
        moved = group.markship("restore", "--advance-to", "--lsn", lsn, "--target-dir",
                               str(data), "--json")
        assert moved.returncode == 0, moved.stderr
        assert json.loads(moved.stdout)["done"] == "paused"
        assert _value(sockets, port, "SELECT count(*) FROM orders") == "20"
        back = group.markship("restore", "--advance-to", "--mark", first, "--target-dir",
                              str(data))
        assert back.returncode != 0 and "lies before where the restore stands" in back.stderr
        assert back.stderr.count("\n") == 1, back.stderr
        group.ok("restore", "--advance-to", "--mark", second, "--target-dir", str(data))
        assert _value(sockets, port, "SELECT count(*) FROM orders") == "30"
        assert _value(sockets, port, "SELECT pg_is_in_recovery()") == "t"

        # --resume promotes it where it stands: writable, a new timeline, no later rows.
        resumed = group.markship("restore", "--resume", "--target-dir", str(data))
        assert resumed.returncode == 0, resumed.stderr
        assert _value(sockets, port, "SELECT pg_is_in_recovery()") == "f"
        _value(sockets, port, "INSERT INTO orders VALUES (0)")
        assert _value(sockets, port, "SELECT count(*) FROM orders") == "31"
        end = recovery_end(data)
        assert end is not None and f'at restore point "{second}"' in end.reason
        again = group.markship("restore", "--resume", "--target-dir", str(data))
        assert again.returncode != 0 and "promoted already" in again.stderr
    finally:
        stop_postmaster(data)


def test_group_paused_at_a_mark_settles_on_resume(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    alpha, bravo = group.servers
    setup_accounts(group)
    group.ok("backup")
    with psycopg.connect(alpha.conninfo()) as a, psycopg.connect(bravo.conninfo()) as b:
        prepare_transfer(a, b, "in-doubt", 3)
        mark = json.loads(group.ok("mark", "--json"))["name"]
        a.tpc_rollback()
        b.tpc_rollback()
    for server in group.servers:
        server.psql("UPDATE accounts SET balance = 0")  # after the mark: must not come back

    handles, where = group.group_targets()
    template = where[-1]
    proc = group.markship("restore", "--group", "--mark", mark, "--action", "pause", "--json",
                          *where)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["action"] == "pause" and report["resolutions"] == []
    for name, handle in handles.items():  # every server paused at the same mark, read-only
        assert handle.psql("SELECT pg_is_in_recovery()") == "t"
        assert handle.psql("SELECT sum(balance) FROM accounts") != "0"
        stopped = stop_reason(Path(template.format(server=name)))
        assert stopped is not None and stopped.startswith(f'at restore point "{mark}"'), stopped

    resumed = group.markship("restore", "--group", "--resume", "--json", "--target-dir",
                             template)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert {(r["server"], r["gid"], r["action"]) for r in report["resolutions"]} == {
        ("alpha", "in-doubt", "rollback"), ("bravo", "in-doubt", "rollback")}
    for name, handle in handles.items():
        assert handle.psql("SELECT pg_is_in_recovery()") == "f"
        assert handle.psql("SELECT sum(balance) FROM accounts") == str(ACCOUNTS * START_BALANCE)
        assert handle.psql("SELECT count(*) FROM pg_prepared_xacts") == "0"
        end = recovery_end(Path(template.format(server=name)))
        assert end is not None and f'at restore point "{mark}"' in end.reason
    # Run again (as after a resume that failed on one server): the promoted ones count as
    # done, and nothing is left to settle.
    again = group.markship("restore", "--group", "--resume", "--json", "--target-dir",
                           template)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resolutions"] == []


def test_shutdown_at_the_target_then_resume(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE orders (id int)")
    group.ok("backup")
    alpha.psql("INSERT INTO orders SELECT generate_series(1, 10)")
    wait_archived(alpha)

    handle = group.restored("alpha")
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(handle.data_dir),
                          "--immediate", "--action", "shutdown", "--start", "--port",
                          str(handle.port), "--setting",
                          f"unix_socket_directories={handle.base_dir}")
    assert proc.returncode == 0, proc.stderr
    assert "shut down there" in proc.stdout
    assert not (handle.data_dir / "postmaster.pid").exists()
    assert recovery_end(handle.data_dir) is None  # not promoted
    # --resume starts it with promote as the action: the backup's state, open for writes.
    group.ok("restore", "--resume", "--target-dir", str(handle.data_dir))
    assert handle.psql("SELECT count(*) FROM orders") == "0"
    handle.psql("INSERT INTO orders VALUES (0)")


def test_advance_by_time_and_never_back(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE orders (id int)")
    group.ok("backup")
    times = []
    for first in (1, 11, 21):
        alpha.psql(f"INSERT INTO orders SELECT generate_series({first}, {first + 9})")
        times.append(alpha.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', "
                                "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"))
    # Recovery to a time stops at the first commit after it: one more, archived.
    alpha.psql("INSERT INTO orders SELECT generate_series(31, 40)")
    wait_archived(alpha)

    paused = group.restore("alpha", "--time", times[1], "--action", "pause")
    assert paused.psql("SELECT count(*) FROM orders") == "20"
    back = group.markship("restore", "--advance-to", "--time", times[0], "--target-dir",
                          str(paused.data_dir))
    assert back.returncode != 0 and "lies before the last transaction" in back.stderr
    assert back.stderr.count("\n") == 1, back.stderr
    assert paused.psql("SELECT count(*) FROM orders") == "20"  # untouched, still paused
    group.ok("restore", "--advance-to", "--time", times[2], "--target-dir",
             str(paused.data_dir))
    assert paused.psql("SELECT count(*) FROM orders") == "30"
    assert paused.psql("SELECT pg_is_in_recovery()") == "t"
