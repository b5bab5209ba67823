"""Damaged records: a set or mark record that cannot be read (garbage, a failed checksum, a
name that fails markship.names) is named and skipped by every command, never hides the good
ones, is listed by verify (non-zero exit) and never leads expire to delete anything."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from markship.backup import retention
from markship.pg.scratch import wait_archived
from markship.repository.catalog import BackupRecord, SetRecord
from markship.repository.records import ObjectRef
from markship.repository.restorable import SetState
from tests.support.checks import forge_record
from tests.support.servers import GroupFactory

NOW = datetime(2026, 11, 25, 19, 0, tzinfo=UTC)


def _warnings(stderr: str, keys: list[str]) -> None:
    """Each key named in exactly one warning line that says what to run."""
    assert "Traceback" not in stderr, stderr
    assert all(line.startswith("markship: ") for line in stderr.splitlines()), stderr
    for key in keys:
        lines = [line for line in stderr.splitlines() if key in line]
        assert len(lines) == 1, (key, stderr)
        assert lines[0].startswith("markship: warning: ") and "markship verify" in lines[0]


@pytest.mark.reliability("damaged set and mark records",
                         fault="garbage in sets/<old>.json and marks/, a mark record failing "
                               "its checksum, a planted mark naming server ../../x",
                         expected="list, marks, status, restore of a good set and expire "
                                  "--dry-run work and warn once per record; verify names each "
                                  "and exits non-zero; expire deletes nothing for them")
def test_damaged_records_are_named_and_skipped(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.config_path.write_text(group.config_path.read_text()
                                 + "\n[retention]\ndays = 14\nmin_sets = 1\n")
    for _ in range(2):
        group.ok("backup")
        group.ok("mark")
    for server in group.servers:
        wait_archived(server)
    old, new = [s["id"] for s in json.loads(group.ok("list", "--json"))]
    first, second = [m["name"] for m in json.loads(group.ok("marks", "--json"))]

    repo = group.repo
    (repo / "sets" / f"{old}.json").write_text("{garbage\n")
    (repo / "marks" / "garbage.json").write_text("{garbage\n")
    (repo / "marks" / "new\nline.json").write_text("{garbage\n")
    altered = repo / "marks" / f"{first}.json"
    altered.write_text(altered.read_text().replace('"barrier_server": "alpha"',
                                                   '"barrier_server": "bravo"'))
    planted = json.loads((repo / "marks" / f"{second}.json").read_text())["body"]
    planted["name"] = "zz-planted"
    planted["points"] = {"../../x": planted["points"]["alpha"]}
    forge_record(repo / "marks" / "zz-planted.json", planted, "MarkRecord")
    damaged_marks = ["marks/garbage.json", f"marks/{first}.json", "marks/zz-planted.json",
                     "marks/new\\nline.json"]  # as shown: escaped, the warning stays one line

    listed = group.markship("list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == [new]
    _warnings(listed.stderr, [f"sets/{old}.json"])

    marks = group.markship("marks", "--json")
    assert marks.returncode == 0, marks.stderr
    assert [m["name"] for m in json.loads(marks.stdout)] == [second]
    _warnings(marks.stderr, damaged_marks)

    status = group.markship("status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["latest_complete_mark"]["name"] == second
    _warnings(status.stderr, [f"sets/{old}.json"])

    handle = group.restored("alpha")
    restored = group.markship("restore", "--server", "alpha", "--target-dir",
                              str(handle.data_dir), "--name", second)
    assert restored.returncode == 0, restored.stderr
    assert f"from backup set {new}" in restored.stdout
    _warnings(restored.stderr, [f"sets/{old}.json"])

    later = (datetime.now(UTC) + timedelta(days=15)).isoformat()
    expire = group.markship("expire", "--dry-run", "--json", "--now", later)
    assert expire.returncode == 0, expire.stderr
    plan = json.loads(expire.stdout)
    assert plan["delete_sets"] == {} and plan["delete_wal"] == {}
    assert plan["wal_kept"] and f"sets/{old}.json" in plan["damaged"]
    assert not [k for k in plan["delete_keys"] if old in k or k.startswith(
        tuple(m.replace("\\n", "\n") for m in damaged_marks))]
    _warnings(expire.stderr, [f"sets/{old}.json"])

    verify = group.markship("verify")
    assert verify.returncode == 1 and "Traceback" not in verify.stderr, verify.stderr
    for key in [f"sets/{old}.json", *damaged_marks]:
        lines = [line for line in verify.stdout.splitlines() if key in line]
        assert len(lines) == 1 and lines[0].startswith("✗ damaged record: "), verify.stdout
        assert "move it out of the repository" in lines[0]
    assert verify.stderr.strip().startswith("markship: error: verify found problems")


# -- retention, as a pure policy -----------------------------------------------------------------


def _state(set_id: str, days_ago: float, restorable: list[str], servers: list[str],
           damaged: list[str] | None = None) -> SetState:
    created = NOW - timedelta(days=days_ago)
    record = SetRecord(id=set_id, group="g", servers=servers, created_at=created,
                       status="done", finished_at=created, pid=1, host="h")
    backups = {s: BackupRecord(
        set_id=set_id, server=s, label="l", started_at=created, finished_at=created,
        consistent_at=created, timeline=1, start_lsn=0x3000000, stop_lsn=0x3000100,
        pg_version="15", pg_version_num=150000, system_identifier=1, raw_size=1,
        archive=ObjectRef(key=f"backups/{s}/{set_id}/base.tar.zst", size=1, sha256="0"),
        markship_version="0") for s in restorable}
    complete = restorable == servers and not damaged
    problems = [] if complete else ["bravo: backup record missing"]
    return SetState(record=record, backups=backups, complete=complete, problems=problems,
                    restorable=backups, damaged=damaged or [])


WAL = {"alpha": [("000000010000000000000001", "wal/alpha/1", 10)]}


@pytest.mark.reliability("expire: only incomplete sets left",
                         fault="every set older than the window is incomplete (one server's "
                               "backup failed)",
                         expected="the newest set that can restore each server is kept")
def test_expire_keeps_the_last_set_that_can_restore_a_server() -> None:
    states = [_state("20261001T000000Z", 55, ["alpha"], ["alpha", "bravo"]),
              _state("20261010T000000Z", 46, ["alpha"], ["alpha", "bravo"])]
    plan = retention.plan(states, [], WAL, {}, NOW, 14, 2, set())
    assert list(plan.delete_sets) == ["20261001T000000Z"]
    assert plan.keep_sets == {"20261010T000000Z": "the newest set that can restore alpha"}
    assert "wal/alpha/1" in plan.delete_keys  # older than the kept backup's start


@pytest.mark.reliability("expire: damaged set or backup records",
                         fault="a set record that cannot be read; a set whose backup record "
                               "is damaged",
                         expected="no WAL deleted while a set record is damaged; a set with a "
                                  "damaged backup record is kept")
def test_expire_deletes_nothing_on_the_strength_of_a_damaged_record() -> None:
    complete = _state("20261110T000000Z", 15, ["alpha", "bravo"], ["alpha", "bravo"])
    plan = retention.plan([complete], [], WAL, {}, NOW, 14, 1, set(),
                          damaged_sets=["sets/20261001T000000Z.json"])
    assert plan.delete_wal == {} and not plan.delete_keys and plan.wal_kept
    assert plan.damaged == ["sets/20261001T000000Z.json"]

    broken = _state("20261001T000000Z", 55, ["alpha"], ["alpha", "bravo"],
                    damaged=["backups/bravo/20261001T000000Z/backup.json"])
    plan = retention.plan([broken, complete], [], WAL, {}, NOW, 14, 1, set())
    assert plan.delete_sets == {} and plan.delete_wal == {}
    assert "damaged" in plan.keep_sets["20261001T000000Z"]
