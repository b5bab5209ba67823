"""Group marks with a two-phase-commit workload: both servers restored to one mark agree."""

from __future__ import annotations

import fnmatch
import json
import random
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from markship.client import barrier_key, commit_decided
from markship.pg.scratch import chown_to
from markship.repository import layout
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, OS_USER, GroupFactory
from tests.support.workloads import (
    ACCOUNTS,
    START_BALANCE,
    prepare_transfer,
    setup_accounts,
    transfer,
)


@ON_FS_AND_S3
def test_two_servers_restored_to_one_mark_agree(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    alpha, bravo = group.servers
    setup_accounts(group)
    group.ok("backup")

    stop = threading.Event()
    committed: list[str] = []
    errors: list[BaseException] = []

    def workload() -> None:
        try:
            with psycopg.connect(alpha.conninfo(), autocommit=True) as barrier, \
                    psycopg.connect(alpha.conninfo()) as a, psycopg.connect(bravo.conninfo()) as b:
                n = 0
                while not stop.is_set():
                    n += 1
                    gid = f"transfer-{n}"
                    transfer(barrier, a, b, gid, random.randint(1, 50))
                    committed.append(gid)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    group.add_config("\n[marks]\ninterval = 1\n")
    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = threading.Thread(target=workload)
    worker.start()
    began = time.monotonic()
    try:
        time.sleep(12)  # the agent marks every second while transfers run
        # Two in-doubt transactions at the next mark: one whose coordinator died after
        # recording its decision (must commit), one never decided (must roll back).
        with psycopg.connect(alpha.conninfo()) as a1, psycopg.connect(bravo.conninfo()) as b1, \
                psycopg.connect(alpha.conninfo()) as a2, psycopg.connect(bravo.conninfo()) as b2:
            prepare_transfer(a1, b1, "decided-then-crashed", 1)
            prepare_transfer(a2, b2, "never-decided", 2)
            with psycopg.connect(alpha.conninfo(), autocommit=True) as barrier:
                barrier.execute("SELECT pg_advisory_lock_shared(%s)",
                                (barrier_key("testgroup"),))
                barrier.execute("INSERT INTO markship.decisions (gid) "
                                "VALUES ('decided-then-crashed')")
            the_mark = json.loads(group.ok("mark", "--json"))["name"]
            commit_decided_later = (a2, b2)
            with psycopg.connect(alpha.conninfo(), autocommit=True) as barrier:
                commit_decided(barrier, "testgroup", "never-decided",
                               list(commit_decided_later))
            for conn in (a1, b1):
                conn.tpc_commit()
        time.sleep(max(0.0, 30 - (time.monotonic() - began)))
    finally:
        stop.set()
        worker.join()
        agent.send_signal(signal.SIGTERM)
        _out, log = agent.communicate(timeout=120)
    assert not errors, errors
    assert agent.returncode == 0, log
    marks = [line.split("name=")[1].split()[0] for line in log.splitlines() if " mark.ok " in line]
    assert len(marks) >= 20, f"expected a mark about every second for 30 s: {log}"
    assert "mark.failed" not in log
    assert len(committed) > 10, "the workload should have run during the marks"

    states = {m["name"]: m for m in json.loads(group.ok("marks", "--json"))}
    assert states[the_mark]["complete"], states[the_mark]
    assert all(states[m]["complete"] for m in marks)
    delivery = [json.loads(group.store.read(layout.mark_key(m)))["body"]["delivery"]
                for m in marks]
    archived = [k for k in group.store.stored_keys(layout.wal_prefix("alpha"))
                if fnmatch.fnmatch(k.rsplit("/", 1)[-1], "00000001*-*.zst")]

    restored = {s.name: group.restore(s.name, "--name", the_mark) for s in group.servers}
    proc = group.markship("resolve", "--decisions", "alpha", "--json",
                          *[f"--server={n}={s.conninfo()}" for n, s in restored.items()])
    assert proc.returncode == 0, proc.stderr
    actions = {(r["server"], r["gid"]): r["action"] for r in json.loads(proc.stdout)}
    # A workload transfer may have been prepared, but not yet decided, when the mark was
    # taken (prepare runs outside the barrier): it must roll back everywhere. It may be
    # prepared on bravo and not on alpha although alpha prepares first: the restore points
    # go out at once but land a moment apart, and both prepares can fall in between.
    in_flight = {key: action for key, action in actions.items()
                 if key[1].startswith("transfer-")}
    assert set(in_flight.values()) <= {"rollback"}, in_flight
    assert {key: action for key, action in actions.items() if key not in in_flight} == {
        ("alpha", "decided-then-crashed"): "commit",
        ("bravo", "decided-then-crashed"): "commit",
        ("alpha", "never-decided"): "rollback",
        ("bravo", "never-decided"): "rollback"}

    ra, rb = restored["alpha"], restored["bravo"]
    total = sum(int(s.psql("SELECT sum(balance) FROM accounts")) for s in (ra, rb))
    assert total == 2 * ACCOUNTS * START_BALANCE
    for server in (ra, rb):
        assert server.psql("SELECT count(*) FROM pg_prepared_xacts") == "0"
    decided = set(ra.psql("SELECT gid FROM markship.decisions").split())
    on_alpha = set(ra.psql("SELECT gid FROM transfers").split())
    on_bravo = set(rb.psql("SELECT gid FROM transfers").split())
    assert decided == on_alpha == on_bravo
    assert "decided-then-crashed" in decided and "never-decided" not in decided
    assert len(decided) > 3

    # The agent's WAL receivers delivered the marks: no 16 MB WAL switch per mark. (Checked
    # last: the restore above is what matters most, whatever the delivery.)
    streamed = [d for d in delivery if set(d.values()) == {"stream"}]
    assert len(streamed) >= len(marks) - 3, delivery
    assert len(archived) < len(marks) / 2, f"{len(archived)} segments for {len(marks)} marks"


def test_busy_barrier_skips_the_mark_instead_of_blocking(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.add_config("\n[marks]\nbarrier_timeout = 0.5\n")
    key = barrier_key("testgroup")
    with psycopg.connect(group.servers[0].conninfo(), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
        proc = group.markship("mark", timeout=60)
        assert proc.returncode == 3
        assert "mark skipped" in proc.stderr and "Traceback" not in proc.stderr
        # once the mark gave up, new commit phases are not queued behind it
        with psycopg.connect(group.servers[0].conninfo(), autocommit=True) as other:
            row = other.execute("SELECT pg_try_advisory_lock_shared(%s)", (key,)).fetchone()
            assert row is not None and row[0] is True
    assert json.loads(group.ok("marks", "--json")) == []
    # The record's temp object, opened before the barrier was asked for, is gone too.
    assert not [p.name for p in group.repo.rglob("*") if p.name.startswith(".tmp~")]


def test_mark_with_a_server_down_names_it(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.servers[1].stop()
    proc = group.markship("mark")
    assert proc.returncode != 0
    assert "bravo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert json.loads(group.ok("marks", "--json")) == []


@pytest.mark.parametrize("name", ["ms-custom-1"])
def test_mark_names_never_repeat(pg_group: GroupFactory, name: str) -> None:
    group = pg_group(1)
    group.ok("mark", "--name", name)
    again = group.markship("mark", "--name", name)
    assert again.returncode != 0 and "already exists" in again.stderr


@ON_FS_AND_S3
def test_restore_group_to_a_mark_from_backups(pg_group: GroupFactory) -> None:
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
    group.ok("mark")  # a later mark: the named one must still be used

    handles, where = group.group_targets()
    proc = group.markship("restore", "--group", "--mark", mark, "--json", *where)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["mark"] == mark
    assert {(r["server"], r["gid"], r["action"]) for r in report["resolutions"]} == {
        ("alpha", "in-doubt", "rollback"), ("bravo", "in-doubt", "rollback")}
    for handle in handles.values():
        assert handle.psql("SELECT sum(balance) FROM accounts") == str(ACCOUNTS * START_BALANCE)
        assert handle.psql("SELECT count(*) FROM pg_prepared_xacts") == "0"


def test_streamed_mark_restores_before_its_segment_is_archived(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE notes (id int)")
    group.ok("backup")
    group.add_config("\n[marks]\ninterval = 1\n")
    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list((group.repo / "stream" / "alpha").glob("*.partial")):
            assert time.monotonic() < deadline, "the WAL receiver never started"
            assert agent.poll() is None
            time.sleep(0.2)
        alpha.psql("INSERT INTO notes VALUES (1)")
        mark = json.loads(group.ok("mark", "--json"))
        alpha.psql("INSERT INTO notes VALUES (2)")
    finally:
        agent.send_signal(signal.SIGTERM)
        _out, log = agent.communicate(timeout=120)
    assert agent.returncode == 0, log
    assert mark["delivery"] == {"alpha": "stream"}, log
    segment = mark["points"]["alpha"]["wal_file"]
    assert not list((group.repo / "wal" / "alpha").rglob(f"{segment}-*")), \
        "the mark's segment should not be archived yet (no WAL switch)"
    assert (group.repo / "stream" / "alpha" / f"{segment}.partial").exists()
    states = {m["name"]: m for m in json.loads(group.ok("marks", "--json"))}
    assert states[mark["name"]]["complete"]

    # A standby never gets a partial segment; a restore to the mark does.
    dest = group.workdir / "fetched"
    standby = group.markship("wal-fetch", "--server", "alpha", "--standby", segment, str(dest))
    assert standby.returncode == 1 and not dest.exists()
    restored = group.restore("alpha", "--name", mark["name"])
    assert restored.psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1}"


def test_receiver_starts_over_when_its_folder_cannot_be_resumed(pg_group: GroupFactory) -> None:
    """A stream folder left from elsewhere (another timeline, a long outage) is cleared and
    the receiver streams again from the server's current segment."""
    group = pg_group(1)
    group.ok("backup")
    folder = group.repo / "stream" / "alpha"
    folder.mkdir(parents=True)
    stale = folder / "0000000100000000000000F0.partial"
    # Received WAL starts with a page header: a first page of zeros would be a segment the
    # agent laid out in advance and never used, which it simply removes.
    stale.write_bytes(b"\x10\xd1\x06\x00" + bytes((16 << 20) - 4))
    for path in (group.repo / "stream", folder, stale):
        chown_to(path, OS_USER)
    group.add_config("\n[marks]\ninterval = 1\n")
    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while stale.exists() or not list(folder.glob("*.partial")):
            assert time.monotonic() < deadline, "the stale folder was never cleared"
            assert agent.poll() is None, agent.communicate()
            time.sleep(0.2)
        mark = json.loads(group.ok("mark", "--json"))
    finally:
        agent.send_signal(signal.SIGTERM)
        _out, log = agent.communicate(timeout=120)
    assert "stream.exited" in log and "restarting from the server's current segment" in log
    assert mark["delivery"] == {"alpha": "stream"}, log


def test_fan_out_names_failing_and_silent_servers(pg_group: GroupFactory) -> None:
    """One round on several servers from one thread: answers per server, an error or a
    server that does not answer in time is named, and its connection is dropped."""
    from markship.errors import ServerError
    from markship.pg.fanout import fan_out

    group = pg_group(2)
    a, b = (psycopg.connect(s.conninfo(), autocommit=True) for s in group.servers)
    try:
        rows = fan_out({"a": (a, "SELECT $1::int + 1, NULL", ("41",)),
                        "b": (b, "SELECT pg_backend_pid()::text", ())})
        assert rows["a"] == [("42", None)]
        assert rows["b"] == [(str(b.info.backend_pid),)]

        with pytest.raises(ServerError) as failed:
            fan_out({"a": (a, "SELECT 1/0", ()), "b": (b, "SELECT 1", ())})
        assert "server(s) a failed" in failed.value.message
        assert "division by zero" in failed.value.message
        assert a.execute("SELECT 7").fetchone() == (7,), "a failed statement leaves it usable"

        began = time.monotonic()
        with pytest.raises(ServerError) as silent:
            fan_out({"a": (a, "SELECT 1", ()), "b": (b, "SELECT pg_sleep(30)", ())},
                    timeout=0.5)
        assert time.monotonic() - began < 10
        assert "server(s) b failed (b: no answer within 0.5 s)" in silent.value.message
        assert b.closed and not a.closed
    finally:
        a.close()
        b.close()
