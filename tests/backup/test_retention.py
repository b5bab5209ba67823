"""Retention with an injected clock: old sets, their WAL and old marks really leave the disk."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from markship.backup import holds
from markship.pg.scratch import chown_to, wait_archived
from markship.repository import records
from markship.repository.backends import open_repository
from tests.support.fingerprints import pgbench_fingerprint
from tests.support.servers import OS_USER, GroupFactory


def _du(path: os.PathLike[str]) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*")
               if f.is_file())


def test_expire_keeps_the_window_and_the_newest_complete_set(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    portal = group.workdir / "portal"
    portal.mkdir()
    (portal / "app.conf").write_text("debug = false\n")
    group.config_path.write_text(group.config_path.read_text()
                                 + "\n[retention]\ndays = 14\nmin_sets = 1\n"
                                 + f'\n[[fileset]]\nname = "portal"\npaths = ["{portal}"]\n')
    for server in group.servers:
        server.run("pgbench", "-i", "-s", "1", "-q", "-d", server.conninfo())
    for _ in range(3):
        group.ok("backup")
        for server in group.servers:
            server.run("pgbench", "-n", "-t", "100", "-d", server.conninfo())
        group.ok("mark")
    for server in group.servers:
        wait_archived(server)
    expected = {s.name: pgbench_fingerprint(s) for s in group.servers}
    sets = [s["id"] for s in json.loads(group.ok("list", "--json"))]
    assert len(sets) == 3

    now = datetime.now(UTC)
    tomorrow = json.loads(group.ok("expire", "--json", "--now",
                                   (now + timedelta(days=1)).isoformat()))
    # inside the window nothing but WAL from before the first backup may go
    assert tomorrow["delete_sets"] == {} and tomorrow["delete_marks"] == []
    assert all(k.startswith("wal/") for k in tomorrow["delete_keys"])

    # A restore in progress holds the oldest set: it survives even outside the window.
    repo = open_repository(group.repo)
    hold_key = f"holds/{sets[0]}-alpha-{os.getpid()}.json"
    records.write_record(repo, hold_key, holds.Hold(
        set_id=sets[0], server="alpha", pid=os.getpid(), host=socket.gethostname(), since=now))
    for path in (group.repo / "holds", group.repo / hold_key):
        chown_to(path, OS_USER)
    later = (now + timedelta(days=15)).isoformat()
    plan = json.loads(group.ok("expire", "--json", "--dry-run", "--now", later))
    assert set(plan["delete_sets"]) == {sets[1]}
    assert plan["keep_sets"][sets[0]] == "in use by a restore"
    repo.delete(hold_key)

    before = _du(group.repo)
    plan = json.loads(group.ok("expire", "--json", "--dry-run", "--now", later))
    assert set(plan["delete_sets"]) == {sets[0], sets[1]}
    assert list(plan["keep_sets"]) == [sets[2]]
    assert _du(group.repo) == before, "--dry-run must not delete"
    done = json.loads(group.ok("expire", "--json", "--now", later))
    assert done["delete_keys"] == plan["delete_keys"]
    for key in done["delete_keys"]:
        assert not (group.repo / key).exists(), key
    assert not list(group.repo.glob(f"backups/*/{sets[0]}"))
    assert _du(group.repo) < before - done["freed_bytes"] * 0.9
    assert all(n > 0 for n in done["delete_wal"].values()) and len(done["delete_wal"]) == 2
    assert json.loads(group.ok("marks", "--json")) == []
    # File set history is pruned too, but the newest capture stays.
    assert len(done["delete_captures"]) == 2
    assert len(json.loads(group.ok("files", "list", "--json"))) == 1
    assert [s["id"] for s in json.loads(group.ok("list", "--json"))] == [sets[2]]
    assert group.markship("verify").returncode == 0

    for server in group.servers:
        restored = group.restore(server.name)
        assert pgbench_fingerprint(restored) == expected[server.name]
