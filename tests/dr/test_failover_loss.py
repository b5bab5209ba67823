"""What a failover costs, said before it runs: `failover --dry-run` names per server (and its
host:port) the WAL the repository holds after the chosen mark, in bytes and in time; the
split-brain refusal names where each production server still answers; and `standby status`
says "no mark yet" rather than "0 behind" for a standby that has no mark to be behind of."""

from __future__ import annotations

import json
import shutil
from typing import Any

from markship.pg.lsn import parse_lsn
from markship.pg.scratch import ScratchServer, chown_to
from markship.timefmt import parse_aware
from tests.support.checks import archiver, refused_line, switch_wal, wait_for
from tests.support.servers import (
    OS_USER,
    Group,
    GroupFactory,
    add_dr_site,
    new_mark,
    run_markship,
)

FILLER_BYTES = 2 * 2**20  # at least this much WAL written on each server after the first mark


def _complete(group: Group, name: str) -> bool:
    return any(m["name"] == name and m["complete"]
               for m in json.loads(group.ok("marks", "--json")))


def _write_filler(server: ScratchServer) -> int:
    """Write at least FILLER_BYTES of WAL, switch and return the LSN reached before the
    switch."""
    server.psql("CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 32) AS pad "
                "FROM generate_series(1, 2500) AS g")
    return parse_lsn(server.psql("SELECT pg_current_wal_lsn()"))


def _switch_and_archive(server: ScratchServer) -> None:
    finished = switch_wal(server)
    wait_for(lambda: archiver(server)["last_archived_wal"] >= finished,
             f"{server.name}'s WAL archived", timeout=60, interval=0.3)


def _wide_text(group: Group, *args: str) -> str:
    """The text output, on a terminal wide enough that no table cell wraps."""
    proc = run_markship(group.config_path, *args, env={"COLUMNS": "250"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _status(group: Group) -> dict[str, dict[str, Any]]:
    return {s["server"]: s for s in json.loads(group.ok("standby", "status", "--json"))}


def test_dry_run_says_what_each_server_loses(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    add_dr_site(group)
    first = new_mark(group)
    wait_for(lambda: _complete(group, first), "the first mark complete", timeout=60,
             interval=0.3)
    points = {s: p for s, p in
              next(m for m in json.loads(group.ok("marks", "--json"))
                   if m["name"] == first)["points"].items()}
    reached = {}
    for server in group.servers:
        reached[server.name] = _write_filler(server)
        assert reached[server.name] - points[server.name]["lsn"] >= FILLER_BYTES
        _switch_and_archive(server)
    second = new_mark(group)
    wait_for(lambda: _complete(group, second), "the second mark complete", timeout=60,
             interval=0.3)

    dry = json.loads(group.ok("failover", "--dry-run", "--mark", first, "--json"))
    assert dry["dry_run"] and dry["mark"] == first
    for server in group.servers:
        loss = dry["lost"][server.name]
        assert loss["address"] == f"127.0.0.1:{server.port}"
        # Everything written after the mark is held, so all of it is discarded.
        assert loss["lost_bytes"] >= reached[server.name] - points[server.name]["lsn"]
        assert loss["lost_bytes"] >= FILLER_BYTES
        assert loss["later_marks"] == 1 and loss["newest_wal"]
        for key in ("lost_until", "newest_mark_at", "newest_wal_stored_at"):
            moment = parse_aware(loss[key])  # refuses a time without zone
            assert "." in loss[key] and moment > parse_aware(dry["mark_time"])
        assert loss["lost_seconds"] > 0
    assert dry["rpo_seconds"] == max(v["lost_seconds"] for v in dry["lost"].values())
    assert any("wal-push" in note for note in dry["notes"])

    newest = json.loads(group.ok("failover", "--dry-run", "--json"))
    assert newest["mark"] == second
    for server in group.servers:
        assert newest["lost"][server.name]["lost_bytes"] < dry["lost"][server.name]["lost_bytes"]
        assert newest["lost"][server.name]["later_marks"] == 0

    text = group.ok("failover", "--dry-run", "--mark", first)
    for server in group.servers:
        line = next(x for x in text.splitlines()
                    if x.strip().startswith(f"{server.name} (127.0.0.1:{server.port}): "))
        assert "of WAL after it, up to " in line and "(1 later mark)" in line, text
        assert line.endswith("discarded"), line
    assert "pg_wal may hold WAL never archived" in text and "markship wal-push --server" in text
    assert all(_complete(group, m) for m in (first, second))  # a dry run changed nothing


def test_surviving_pg_wal_pushed_by_hand_completes_a_later_mark(pg_group: GroupFactory) -> None:
    """What the dry run's note tells an operator whose old primary's disk survived: push
    the segments pg_wal still has to archive, and the later mark waiting for them becomes
    the one failover takes."""
    group = pg_group(2)
    add_dr_site(group)
    first = new_mark(group)
    wait_for(lambda: _complete(group, first), "the first mark complete", timeout=60,
             interval=0.3)
    alpha = group.server("alpha")
    alpha.psql("ALTER SYSTEM SET archive_command = '/bin/false'")
    alpha.psql("SELECT pg_reload_conf()")
    _write_filler(alpha)
    second = new_mark(group)  # its segment on alpha is never archived
    status = alpha.data_dir / "pg_wal" / "archive_status"
    wait_for(lambda: any(status.glob("*.ready")) and _complete(group, second) is False
             and int(archiver(alpha)["failed_count"]) > 0, "alpha's archiver failing",
             timeout=60, interval=0.3)
    alpha.kill9()
    assert json.loads(group.ok("failover", "--dry-run", "--json"))["mark"] == first

    rescued = group.workdir / "rescued-pg_wal"
    rescued.mkdir()
    chown_to(rescued, OS_USER)
    for ready in sorted(status.glob("*.ready")):
        segment = rescued / ready.name.removesuffix(".ready")
        shutil.copyfile(alpha.data_dir / "pg_wal" / segment.name, segment)
        chown_to(segment, OS_USER)
        group.ok("wal-push", "--server", "alpha", str(segment))
    assert _complete(group, second)
    assert json.loads(group.ok("failover", "--dry-run", "--json"))["mark"] == second


def test_split_brain_refusal_names_where_production_answers(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    add_dr_site(group)
    mark = new_mark(group)
    wait_for(lambda: _complete(group, mark), "the mark complete", timeout=60, interval=0.3)
    line = refused_line(group.markship("failover"))
    assert "split brain" in line
    for server in group.servers:
        assert f"{server.name} (127.0.0.1:{server.port})" in line, line


def test_a_standby_without_a_mark_is_not_zero_behind(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    add_dr_site(group)
    group.ok("standby", "create")
    for standby in _status(group).values():
        assert standby["in_recovery"] and standby["at_mark"] is None
        assert standby["marks_behind"] is None, standby
    text = _wide_text(group, "standby", "status")
    assert text.count("no mark yet") == 2, text

    first = new_mark(group)
    wait_for(lambda: _complete(group, first), "the first mark complete", timeout=60,
             interval=0.3)
    for standby in _status(group).values():  # a mark of its timeline it has not replayed
        assert standby["at_mark"] is None and standby["marks_behind"] == 1, standby
    second = new_mark(group)  # the standbys may now replay the first mark's segment
    wait_for(lambda: all(s["at_mark"] == first for s in _status(group).values()),
             "the standbys at the first mark", timeout=90, interval=0.3)
    for standby in _status(group).values():
        # The newest mark's own segment is withheld from standbys: never replayed.
        assert standby["marks_behind"] == 1 and standby["reachable_mark"] == second, standby
    assert "no mark yet" not in _wide_text(group, "standby", "status")
