"""kill -9 at the DR site (issue #12): `standby create`, a standby's restore_command (wal-fetch)
and `failover`, each at a chosen point. Afterwards the command (or the standby) goes on, no
mark is taken for complete that is not, and the promoted group holds every row committed
before the mark it stopped at."""

from __future__ import annotations

import json
import os
import signal

import pytest

from markship.pg.datadir import stopped_at
from markship.pg.scratch import ScratchServer
from tests.support.checks import assert_repository_sound, complete_marks, switch_wal, wait_for
from tests.support.fingerprints import Ledger
from tests.support.processes import alive, kill9_at, reap
from tests.support.servers import Group, GroupFactory, add_dr_site, new_mark


def _dr_group(pg_group: GroupFactory) -> tuple[Group, Ledger, dict[str, ScratchServer]]:
    """Two servers with a ledger, a backup set and a DR site (standbys not created yet)."""
    group = pg_group(2)
    ledger = Ledger(group)
    ledger.commit(20)
    group.ok("backup")
    standbys = add_dr_site(group)
    return group, ledger, standbys


def _in_recovery(group: Group) -> list[bool | None]:
    """Per standby: in recovery (None when it does not answer)."""
    proc = group.markship("standby", "status", "--json")
    return [s["in_recovery"] for s in json.loads(proc.stdout)]


def _fail_over(group: Group, standbys: dict[str, ScratchServer], rows: int, mark: str) -> None:
    """Production dies; `markship failover` brings every standby to `mark` with `rows`."""
    for server in group.servers:
        server.kill9()
    proc = group.markship("failover", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mark"] == mark
    for name, sb in standbys.items():
        assert stopped_at(sb.data_dir) == f'at restore point "{mark}"', name
        assert Ledger.count_on(sb) == rows, name


@pytest.mark.reliability("standby create killed",
                         fault="kill -9 of markship standby create while a standby's base "
                               "backup is being unpacked into its data directory",
                         expected="running it again builds both standbys (the half-unpacked "
                                  "directory is markship's own); they follow the marks")
def test_standby_create_killed_then_run_again(pg_group: GroupFactory) -> None:
    group, ledger, standbys = _dr_group(pg_group)

    def unpacking() -> bool:
        return any((sb.data_dir / "base").exists() and not (sb.data_dir / "standby.signal")
                   .exists() for sb in standbys.values())

    killed = kill9_at(group, ["standby", "create"], "a standby's base backup being unpacked",
                      unpacking, poll=0.002)
    reap(killed.orphans)
    rerun = group.markship("standby", "create")
    assert rerun.returncode == 0, rerun.stderr
    assert _in_recovery(group) == [True, True]
    rows = ledger.commit(10)
    mark = new_mark(group, complete=True)
    ledger.commit(10)
    _fail_over(group, standbys, rows, mark)


@pytest.mark.reliability("standby's restore_command killed",
                         fault="kill -9 of a standby's wal-fetch (its restore_command) while it "
                               "writes the segment into pg_wal",
                         expected="no segment half-written under its name; the standby, started "
                                  "again, goes on; no mark counts as complete that is not; "
                                  "failover reaches the newest complete mark with every row")
def test_standby_fetch_killed(pg_group: GroupFactory) -> None:
    group, ledger, standbys = _dr_group(pg_group)
    group.ok("standby", "create")
    for _ in range(3):  # whole segments for the standbys to fetch once a mark completes
        ledger.commit(2000)
        for server in group.servers:
            switch_wal(server)
    killed: list[ScratchServer] = []

    def fetching() -> bool:
        for sb in standbys.values():
            try:
                names = os.listdir(sb.data_dir / "pg_wal")
            except OSError:
                continue
            for name in names:
                if name.startswith(".RECOVERYXLOG.markship-"):
                    pid = int(name.rsplit("-", 1)[1])
                    if alive(pid):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(sb)
                        return True
        return False

    new_mark(group)  # the standbys may now fetch the segments above
    wait_for(fetching, "a standby's wal-fetch writing a segment", timeout=60, interval=0.001)
    # PostgreSQL takes a restore_command killed by a signal as fatal: the standby stops. No
    # segment appeared under its own name; the operator starts the standby again.
    victim = killed[0]
    wait_for(lambda: not (victim.data_dir / "postmaster.pid").exists(),
             f"the standby of {victim.name} stopping", timeout=30)
    assert "could not restore file" in (victim.data_dir / "markship-restore.log").read_text()
    victim.start(data_dir=victim.data_dir, wait=False)
    wait_for(lambda: _in_recovery(group) == [True, True], "both standbys in recovery again",
             timeout=60, interval=0.5)
    assert_repository_sound(group)

    rows = ledger.commit(10)
    mark = new_mark(group, complete=True)
    ledger.commit(10)
    assert complete_marks(group)[-1] == mark
    _fail_over(group, standbys, rows, mark)


@pytest.mark.reliability("standby stopped mid-promotion",
                         fault="a standby killed with its signal file removed and no new "
                               "timeline yet (PostgreSQL 15 removes standby.signal just before "
                               "it writes the timeline history file)",
                         expected="failover asks it to recover again and promotes it exactly at "
                                  "the mark, with every row; it never comes up as a primary "
                                  "past the mark")
def test_failover_finishes_a_promotion_cut_short(pg_group: GroupFactory) -> None:
    group, ledger, standbys = _dr_group(pg_group)
    group.ok("standby", "create")
    rows = ledger.commit(30)
    mark = new_mark(group, complete=True)
    ledger.commit(10)  # after the mark: lost by the failover, on purpose
    cut = standbys["alpha"]
    cut.kill9()
    (cut.data_dir / "standby.signal").unlink()
    _fail_over(group, standbys, rows, mark)
    assert cut.psql("SELECT pg_is_in_recovery()") == "f"


@pytest.mark.reliability("failover killed before promotion",
                         fault="kill -9 of markship failover once a standby was restarted with "
                               "the mark as its recovery target",
                         expected="running it again resumes at the same mark; every standby "
                                  "stops exactly there and is promoted, with every row")
def test_failover_killed_then_resumed(pg_group: GroupFactory) -> None:
    group, ledger, standbys = _dr_group(pg_group)
    group.ok("standby", "create")
    rows = ledger.commit(30)
    mark = new_mark(group, complete=True)
    ledger.commit(10)  # after the mark: lost by the failover, on purpose
    for server in group.servers:
        server.kill9()

    def restarted_with_target() -> bool:
        return any(f"recovery_target_name = '{mark}'" in
                   (sb.data_dir / "postgresql.auto.conf").read_text()
                   for sb in standbys.values())

    killed = kill9_at(group, ["failover"], "a standby restarted with the mark as target",
                      restarted_with_target, poll=0.002)
    reap(killed.orphans)
    proc = group.markship("failover", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["resumed"] and report["mark"] == mark
    for name, sb in standbys.items():
        assert stopped_at(sb.data_dir) == f'at restore point "{mark}"', name
        assert sb.psql("SELECT pg_is_in_recovery()") == "f"
        assert Ledger.count_on(sb) == rows, name
    assert_repository_sound(group)
