"""kill -9 of markship commands at chosen points (issue #12): a backup, a WAL push, a mark, a
group restore. After each the command is run again and must succeed, the repository must
verify, nothing partly written may be taken for data, and every row committed before the
last complete mark must come back from a restore to it."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest

from markship.backup.restore import UNFINISHED
from markship.client import barrier_key
from tests.support.checks import (
    assert_repository_sound,
    complete_marks,
    ready_files,
    stored_wal,
    switch_wal,
    temp_objects,
    wait_for,
)
from tests.support.fingerprints import Ledger, load_pgbench
from tests.support.processes import alive, command_name, kill9_after, kill9_at, reap
from tests.support.servers import OS_USER, Group, GroupFactory, new_mark, run_markship

SEED = 12  # the seeded kill delays: the same points on every run


def _restores_to_mark(group: Group, mark: str, rows: int) -> None:
    """Every server restored to `mark` holds exactly the rows committed before it."""
    for server in group.servers:
        restored = group.restore(server.name, "--name", mark)
        assert Ledger.count_on(restored) == rows, f"{server.name} restored to {mark}"


# -- backup ---------------------------------------------------------------------------------------


BACKUP_POINTS = {
    "first temp object under backups/": lambda repo: bool(temp_objects(repo, "backups")),
    "one server's backup.json written, the set still running":
        lambda repo: bool(list(repo.glob("backups/alpha/*/backup.json"))),
}


@pytest.mark.reliability("backup killed", fault="kill -9 of markship backup at a chosen point",
                         expected="rerun succeeds; killed set never listed complete; verify "
                                  "passes; restore to a later mark has every row")
@pytest.mark.parametrize("point", list(BACKUP_POINTS))
def test_backup_killed_then_run_again(pg_group: GroupFactory, point: str) -> None:
    group = pg_group(2)
    load_pgbench(group.servers[1], scale=3)  # bravo takes longer: alpha's record lands first
    ledger = Ledger(group)
    ledger.commit(50)
    killed = kill9_at(group, ["backup"], point, lambda: BACKUP_POINTS[point](group.repo))
    assert killed.returncode == -signal.SIGKILL
    reap(killed.orphans)  # pg_basebackup is left streaming into a closed pipe

    sets = json.loads(group.ok("list", "--json"))
    # On a loaded host the kill may land after the set was finished: then it is complete for
    # real, and verify and the restore below prove it. Otherwise it is never listed complete.
    finished_first = sets[0]["complete"]
    assert len(sets) == 1 and (finished_first or sets[0]["state"] == "incomplete"), sets
    rerun = group.markship("backup")
    assert rerun.returncode == 0, f"rerun after the kill: {rerun.stderr}"
    sets = json.loads(group.ok("list", "--json"))
    assert [s["complete"] for s in sets] == [finished_first, True], sets

    rows = ledger.commit(30)
    mark = new_mark(group, complete=True)
    ledger.commit(20)  # after the mark: must not come back
    report = assert_repository_sound(group)
    assert bool(report["incomplete_sets"]) != finished_first and not report["unrestorable_sets"]
    _restores_to_mark(group, mark, rows)


# -- wal-push -------------------------------------------------------------------------------------


def _writer_pid(temp: Path) -> int | None:
    """The pid in a temp object's name: .tmp~HOST~PID~RANDOM~NAME."""
    parts = temp.name.split("~")
    return int(parts[2]) if len(parts) >= 5 and parts[2].isdigit() else None


@pytest.mark.reliability("archive_command killed mid-write",
                         fault="kill -9 of the wal-push process PostgreSQL's archiver runs, "
                               "once its temp object is in the repository",
                         expected="the archiver retries; every segment archived, the dead "
                                  "writer's temp never read as WAL; verify passes; restore to "
                                  "a later mark has every row")
def test_archive_command_killed_while_writing(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    group.ok("backup")
    ledger = Ledger(group)
    killed: list[int] = []
    ledger.commit(2000)  # some MB of WAL: the push takes long enough to be caught
    segment = switch_wal(alpha)

    def writing() -> bool:
        for temp in temp_objects(group.repo, "wal"):
            pid = _writer_pid(temp)
            if pid is not None and pid not in killed and alive(pid):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return True
        return False

    wait_for(writing, f"a wal-push of {segment} writing its temp object", interval=0.001)

    # The archiver exits (FATAL) when its command is killed; the postmaster starts a new one
    # ~10 s later, when its loop wakes (a new connection wakes it; idle, up to 60 s).
    def retried() -> bool:
        alpha.psql("SELECT 1")
        return bool(stored_wal(group, "alpha", segment))

    wait_for(retried, f"{segment} archived after the archiver's retry", timeout=90,
             interval=0.3)
    wait_for(lambda: not ready_files(alpha), "no .ready file left", timeout=60)
    rows = ledger.commit(10)
    mark = new_mark(group, complete=True)
    report = assert_repository_sound(group)
    # The dead writers' temp objects are reported as such and --clean-temp removes them.
    dead = [t for t in report["temp_objects"] if _writer_pid(Path(t)) in killed]
    assert dead, report
    cleaned = json.loads(group.markship("verify", "--json", "--clean-temp").stdout)
    assert set(dead) <= set(cleaned["removed_temp"])
    _restores_to_mark(group, mark, rows)


@pytest.mark.reliability("wal-push killed at seeded points",
                         fault="kill -9 of wal-push of real ready segments after seeded delays "
                               "(0-120 ms: reading, compressing, writing, naming), then the "
                               "same push again, then PostgreSQL's archiver pushes them too",
                         expected="every rerun exits 0; one object per segment; identical "
                                  "re-pushes accepted; verify passes; restore has every row")
def test_wal_push_killed_at_seeded_delays(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    group.ok("backup")
    ledger = Ledger(group)
    # Archiving paused (the command fails), so ready segments pile up for us to push.
    alpha.psql("ALTER SYSTEM SET archive_command = 'false'")
    alpha.psql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    for _ in range(4):
        ledger.commit(1000)
        switch_wal(alpha)
    rows = ledger.commit(10)
    wait_for(lambda: len(ready_files(alpha)) >= 4, "four ready segments")
    delays = [random.Random(SEED + n).uniform(0.0, 0.12) for n in range(4)]
    ready = [n for n in ready_files(alpha) if len(n) == 24][:4]
    for name, delay in zip(ready, delays, strict=True):
        path = str(alpha.data_dir / "pg_wal" / name)
        args = ["wal-push", "--server", "alpha", path]
        killed = kill9_after(group, args, delay)
        reap(killed.orphans, grace=2)  # a background pusher it forked
        again = run_markship(group.config_path, *args, user=OS_USER)
        assert again.returncode == 0, f"push of {name} after a kill at {delay:.3f} s: " \
                                      f"{again.stderr}"
        assert len(stored_wal(group, "alpha", name)) == 1
    alpha.psql("ALTER SYSTEM RESET archive_command")
    alpha.psql("SELECT pg_reload_conf()")
    wait_for(lambda: not ready_files(alpha), "the archiver caught up", timeout=90)
    for name in ready:
        assert len(stored_wal(group, "alpha", name)) == 1, name
    mark = new_mark(group, complete=True)
    assert_repository_sound(group)
    _restores_to_mark(group, mark, rows)


# -- mark -----------------------------------------------------------------------------------------


def _barrier_free(group: Group) -> bool:
    with psycopg.connect(group.servers[0].conninfo(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_try_advisory_lock_shared(%s)",
                           (barrier_key("testgroup"),)).fetchone()
        conn.execute("SELECT pg_advisory_unlock_all()")
    return row is not None and row[0] is True


def _after_mark_kills(group: Group, ledger: Ledger, before: set[str]) -> None:
    """A killed mark is either not listed or listed complete and restorable; the barrier is
    free; the rerun makes a complete mark that restores with every row before it."""
    assert _barrier_free(group), "a killed mark must not keep the barrier"
    listed = json.loads(group.ok("marks", "--json", "--limit", "0"))
    for mark in listed:
        if mark["name"] not in before:
            assert mark["complete"], f"a killed mark listed but not complete: {mark}"
    assert not temp_objects(group.repo, "marks") or all(
        _writer_pid(t) is not None and not alive(_writer_pid(t) or 0)
        for t in temp_objects(group.repo, "marks"))
    rows = ledger.commit(25)
    mark = new_mark(group, complete=True)
    ledger.commit(25)
    assert mark in complete_marks(group)
    assert_repository_sound(group)
    _restores_to_mark(group, mark, rows)


@pytest.mark.reliability("mark killed after its record's temp file exists",
                         fault="kill -9 of markship mark once marks/.tmp~… appears (the record "
                               "writer is open, the barrier about to be taken)",
                         expected="no half mark listed; barrier free; rerun makes a complete "
                                  "mark; restore to it has every row on every server")
def test_mark_killed_at_record_temp_file(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    ledger = Ledger(group)
    ledger.commit(40)
    killed = kill9_at(group, ["mark"], "the mark record's temp file exists",
                      lambda: bool(temp_objects(group.repo, "marks")), poll=0.001)
    assert killed.returncode == -signal.SIGKILL
    _after_mark_kills(group, ledger, set())


@pytest.mark.reliability("mark killed at seeded points",
                         fault="kill -9 of markship mark after seeded delays (connecting, "
                               "barrier, restore points, WAL switch, record)",
                         expected="each killed mark unlisted or complete and restorable; "
                                  "barrier free; rerun complete; restore has every row")
def test_mark_killed_at_seeded_delays(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    ledger = Ledger(group)
    made = {new_mark(group)}  # the first validates the config for the lean path (slower)
    took = float("inf")  # start-up, then the mark's own steps: the quicker of two
    for _ in range(2):
        began = time.monotonic()
        made.add(new_mark(group))
        took = min(took, time.monotonic() - began)
    rng = random.Random(SEED)
    outcomes = []
    # The lean `markship mark` (no click, pydantic or psycopg) starts in ~a third of its time:
    # the mark's own steps fill the rest.
    for fraction in sorted(rng.uniform(0.35, 0.95) for _ in range(4)):
        ledger.commit(10)
        killed = kill9_after(group, ["mark"], took * fraction)
        assert killed.returncode in (-signal.SIGKILL, 0), killed.stderr
        outcomes.append(killed.returncode)
    assert -signal.SIGKILL in outcomes, "no mark was killed: the delays missed"
    _after_mark_kills(group, ledger, made)


# -- restore --group ------------------------------------------------------------------------------


@pytest.mark.reliability("group restore killed",
                         fault="kill -9 of markship restore --group while the first base backup "
                               "is being unpacked",
                         expected="the same command run again rebuilds the directories the "
                                  "killed run left half built (and says so); every server at "
                                  "the mark with every row")
def test_group_restore_killed_then_run_again(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    for server in group.servers:
        load_pgbench(server)
    ledger = Ledger(group)
    group.ok("backup")
    rows = ledger.commit(60)
    mark = new_mark(group, complete=True)
    ledger.commit(10)

    first, where = group.group_targets("g1")
    args = ["restore", "--group", "--mark", mark, *where]

    def unpacking() -> bool:
        return any((h.data_dir / "base").exists() for h in first.values())

    killed = kill9_at(group, args, "a base backup being unpacked", unpacking, poll=0.002)
    reap(killed.orphans)  # zstd and tar
    assert any((h.data_dir / UNFINISHED).exists() for h in first.values())
    again = group.markship(*args)
    assert again.returncode == 0, again.stderr
    assert "was left half built by a restore that did not finish" in again.stderr
    for handle in first.values():
        assert Ledger.count_on(handle) == rows
        assert not (handle.data_dir / UNFINISHED).exists()
    assert_repository_sound(group)


# -- the agent ------------------------------------------------------------------------------------


@pytest.mark.reliability("agent killed mid-mark",
                         fault="kill -9 of markship run (marks every second, WAL receivers "
                               "running) once a mark record's temp file exists",
                         expected="no mark listed complete that is not; `markship mark` works "
                                  "at once; a new agent takes over its receivers; restore to "
                                  "the newest complete mark has every row on every server")
def test_agent_killed_mid_mark(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    ledger = Ledger(group)
    group.add_config("\n[marks]\ninterval = 1\n")
    stop = threading.Event()

    def commit_steadily() -> None:
        while not stop.is_set():
            ledger.commit(5)
            time.sleep(0.05)

    writer = threading.Thread(target=commit_steadily)
    writer.start()
    try:
        def marking() -> bool:
            return bool(temp_objects(group.repo, "marks")) and bool(
                list((group.repo / "stream").glob("*/*.partial")))

        killed = kill9_at(group, ["run"], "a mark record's temp file while receivers stream",
                          marking, timeout=90, poll=0.001)
    finally:
        stop.set()
        writer.join()
    # Its WAL receivers go on streaming into the repository.
    receivers = [p for p in killed.orphans if command_name(p) == "pg_receivewal"]
    assert len(receivers) == 2, killed.orphans
    assert_repository_sound(group)
    before_restart = set(complete_marks(group))

    # A stale socket of the dead agent: `markship mark` must make the mark itself at once.
    began = time.monotonic()
    own = run_markship(group.config_path, "mark", "--json", timeout=60)
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["taken_by"] == "command"
    assert time.monotonic() - began < 30

    import subprocess

    from tests.support.servers import MARKSHIP

    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: not any(alive(p) for p in receivers),
                 "the new agent stopping the dead agent's receivers", timeout=60)
        wait_for(lambda: len(set(complete_marks(group)) - before_restart) >= 3,
                 "marks by the new agent", timeout=60)
    finally:
        agent.send_signal(signal.SIGTERM)
        _out, log = agent.communicate(timeout=120)
        reap(receivers, grace=0)
    assert agent.returncode == 0 and "Traceback" not in log, log
    rows = ledger.commit(1)
    mark = new_mark(group, complete=True)
    ledger.commit(5)
    assert_repository_sound(group)
    _restores_to_mark(group, mark, rows)
