"""Recovery drills: the group restored to a mark on scratch servers, checked, measured, removed,
while production goes on untouched."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from markship.dr.drill import scratch_postmasters
from markship.dr.drillchecks import CheckFileError, parse_checks
from markship.pg.scratch import chown_to
from tests.support.servers import MARKSHIP, OS_USER, Group, GroupFactory
from tests.support.workloads import (
    ACCOUNTS,
    START_BALANCE,
    prepare_transfer,
    setup_accounts,
    transfer,
)

TOTAL = 2 * ACCOUNTS * START_BALANCE


def test_check_file_grammar() -> None:
    checks = parse_checks(
        "# comments and blank lines are skipped\n\n"
        "SELECT count(*) = 0 FROM pg_prepared_xacts\n"
        "[alpha, bravo/shop] SELECT true\n"
        "sum(*/shop): SELECT sum(balance)\n"
        "    FROM accounts == 20000\n", "inv.sql", ["alpha", "bravo"])
    assert [(c.line, c.kind, c.targets) for c in checks] == [
        (3, "true", (("alpha", None), ("bravo", None))),
        (4, "true", (("alpha", None), ("bravo", "shop"))),
        (5, "sum", (("alpha", "shop"), ("bravo", "shop")))]
    assert checks[2].sql == "SELECT sum(balance) FROM accounts"
    assert str(checks[2].expected) == "20000"


@pytest.mark.parametrize(("text", "message"), [
    ("SELECT true\n[charlie] SELECT true", "inv.sql line 2: unknown server 'charlie'"),
    ("sum(alpha): SELECT sum(balance) FROM accounts", "line 1: a sum check ends with =="),
    ("sum(alpha): SELECT 1 == twenty", "line 1: 'twenty' after == is not a number"),
    ("sum(alpha SELECT 1 == 1", "line 1: a sum check reads sum(SERVERS): SQL == NUMBER"),
    ("[alpha SELECT true", "line 1: '[' without a closing ']'"),
    ("[alpha,] SELECT true", "line 1: empty server name"),
    ("[alpha, alpha] SELECT true", "line 1: alpha is named twice"),
    ("[alpha/] SELECT true", "line 1: 'alpha/' names no database"),
    ("[alpha]", "line 1: the check has no SQL"),
    ("\n  SELECT true", "line 2: an indented line continues"),
    ("[alpha] SELECT sum(balance) FROM accounts == 5", "line 1: '== NUMBER' belongs to sum"),
])
def test_check_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(CheckFileError) as caught:
        parse_checks(text, "inv.sql", ["alpha", "bravo"])
    assert message in caught.value.message


def _production(group: Group) -> dict[str, str]:
    """What a drill must leave as it was: data, timeline, the very same running postmaster."""
    return {s.name: s.psql("SELECT (SELECT count(*) FROM transfers) || ' ' || "
                           "(SELECT sum(balance) FROM accounts) || ' ' || "
                           "(SELECT timeline_id FROM pg_control_checkpoint()) || ' ' || "
                           "pg_postmaster_start_time()")
            for s in group.servers}


def _assert_gone(work_dir: Path, ports: list[int]) -> None:
    assert not work_dir.exists()
    assert scratch_postmasters(work_dir) == []
    for port in ports:
        with pytest.raises(ConnectionRefusedError):  # nobody listens there any more
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _drill_parent(group: Group) -> Path:
    parent = group.workdir / "drills"
    parent.mkdir()
    chown_to(parent, OS_USER)
    return parent


def test_drill_restores_checks_measures_reports_and_cleans_up(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    alpha, bravo = group.servers
    setup_accounts(group)
    group.ok("backup")
    with psycopg.connect(alpha.conninfo(), autocommit=True) as barrier, \
            psycopg.connect(alpha.conninfo()) as a, psycopg.connect(bravo.conninfo()) as b:
        for n in range(5):
            transfer(barrier, a, b, f"transfer-{n}", 10 + n)
    with psycopg.connect(alpha.conninfo()) as a, psycopg.connect(bravo.conninfo()) as b:
        prepare_transfer(a, b, "in-doubt", 3)  # prepared, never decided: a failover rolls it back
        mark = json.loads(group.ok("mark", "--json"))["name"]
        a.tpc_rollback()
        b.tpc_rollback()
    before = _production(group)
    parent = _drill_parent(group)

    bad = group.workdir / "bad.sql"
    bad.write_text("[charlie] SELECT true\n")
    proc = group.markship("drill", "--check-sql", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"markship: error: {bad} line 1: unknown server 'charlie' "
                                   "(configured: alpha, bravo): see the check-file format: "
                                   "markship drill --help")

    good = group.workdir / "invariants.sql"
    good.write_text(f"""# money is neither made nor lost across the group
sum(*): SELECT sum(balance) FROM accounts
    == {TOTAL}
[*] SELECT count(*) = 0 FROM pg_prepared_xacts
[alpha, bravo] SELECT count(*) = 5 FROM transfers
""")
    proc = group.markship("drill", "--check-sql", str(good), "--work-dir", str(parent),
                          "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["error"] is None and report["mark"] == mark
    assert report["rto_seconds"] > 0 and report["rpo_seconds"] > 0
    assert report["started_at"] < report["finished_at"]
    assert {n: s["restored"] for n, s in report["servers"].items()} == {"alpha": True,
                                                                        "bravo": True}
    assert {(r["server"], r["gid"], r["action"]) for r in report["resolved"]} == {
        ("alpha", "in-doubt", "rollback"), ("bravo", "in-doubt", "rollback")}
    assert [(c["line"], c["ok"], c["result"]) for c in report["checks"]] == [
        (2, True, f"sum {TOTAL} as expected"), (4, True, "true"), (5, True, "true")]
    stored = json.loads((group.repo / "drills" / f"{report['id']}.json").read_text())["body"]
    assert stored == report
    markdown = (group.repo / "drills" / f"{report['id']}.md").read_text()
    assert "passed" in markdown and mark in markdown and "rollback `in-doubt`" in markdown
    ports = [s["port"] for s in report["servers"].values()]
    _assert_gone(Path(report["work_dir"]), ports)
    assert _production(group) == before
    assert not list(group.repo.glob("wal/*/history/*")), "a scratch server archived a timeline"

    failing = group.workdir / "failing.sql"
    failing.write_text("sum(alpha, bravo): SELECT sum(balance) FROM accounts == 1\n"
                       "[bravo] SELECT count(*) FROM transfers\n"
                       "[alpha] SELECT true\n")
    proc = group.markship("drill", "--check-sql", str(failing), "--work-dir", str(parent))
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("markship: error: drill ")
    assert f"2 of 3 checks failed ({failing}:1, {failing}:2)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f"✗ {failing}:1" in proc.stdout and f"✓ {failing}:3" in proc.stdout
    assert "RTO " in proc.stdout and "RPO " in proc.stdout

    history = json.loads(group.ok("drills", "--json"))
    assert [d["ok"] for d in history] == [True, False]
    results = [c["result"] for c in history[1]["checks"]]
    assert results[0] == f"sum {TOTAL}, expected 1"
    assert results[1] == "error on bravo: returned int 5, not a boolean"
    assert history[1]["rto_seconds"] > 0
    _assert_gone(Path(history[1]["work_dir"]), [s["port"] for s in history[1]["servers"].values()])
    assert _production(group) == before
    table = group.ok("drills")
    assert "✓ ok" in table and "✗ failed" in table

    # A group that does not come up is a failed drill too; what did come up is removed.
    for archive in group.repo.glob("backups/bravo/*/base.tar.zst"):
        archive.unlink()
    proc = group.markship("drill", "--work-dir", str(parent), "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    broken = json.loads(proc.stdout)
    assert not broken["ok"] and "bravo" in broken["error"] and broken["rto_seconds"] is None
    assert not broken["servers"]["bravo"]["restored"]
    _assert_gone(Path(broken["work_dir"]), [s["port"] for s in broken["servers"].values()])
    assert [d["ok"] for d in json.loads(group.ok("drills", "--json"))] == [True, False, False]
    assert _production(group) == before


def test_interrupted_drill_still_removes_its_servers(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    group.servers[0].psql("CREATE TABLE transfers (id int); CREATE TABLE accounts (balance int)")
    group.ok("backup")
    group.ok("mark")
    before = _production(group)
    parent = _drill_parent(group)
    slow = group.workdir / "slow.sql"
    slow.write_text("[alpha] SELECT true FROM pg_sleep(120)\n")
    drill = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "drill",
                              "--check-sql", str(slow), "--work-dir", str(parent)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert drill.stdout is not None
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any("servers open" in line for line in lines):  # the check is running now
            assert time.monotonic() < deadline and drill.poll() is None, lines
            lines.append(drill.stdout.readline())
        work_dir = next(p for p in parent.iterdir() if p.name.startswith("markship-drill-"))
        assert scratch_postmasters(work_dir)
        drill.send_signal(signal.SIGTERM)
        _out, err = drill.communicate(timeout=60)
    finally:
        if drill.poll() is None:
            drill.kill()
    assert drill.returncode == 130, err
    assert "Traceback" not in err
    _assert_gone(work_dir, [])
    assert json.loads(group.ok("drills", "--json")) == []  # an interrupted drill is no result
    assert _production(group) == before


def test_drill_with_a_config_naming_the_data_directory_stays_off_production(
        pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    # Debian keeps postgresql.conf in /etc and names the data directory there; a restored
    # copy of that setting must not make the scratch server open production's data directory.
    alpha.write_settings({"data_directory": str(alpha.data_dir)})
    alpha.psql("CREATE TABLE notes (id int); INSERT INTO notes VALUES (1)")
    group.ok("backup")
    group.ok("mark")
    started = alpha.psql("SELECT pg_postmaster_start_time()")
    parent = _drill_parent(group)
    proc = group.markship("drill", "--work-dir", str(parent), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]
    assert alpha.psql("SELECT pg_postmaster_start_time()") == started
    assert alpha.psql("SELECT count(*) FROM notes") == "1"
    assert list(parent.iterdir()) == []
