"""`markship checklist` after a failover: evidence from the servers in the role they have now,
from a live agent (the holder of the agent lock) and from marks made after the failover; and
the read-only probe of a repository lock it asks (`Repository.lock_holder`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from markship.config import model
from markship.errors import LockedError
from markship.repository import layout
from markship.repository.backends import location_of, open_repository
from markship.repository.base import Repository
from tests.support.checks import wait_for
from tests.support.s3 import ON_FS_AND_S3, S3Store
from tests.support.servers import (
    FsStore,
    GroupFactory,
    add_dr_site,
    new_mark,
    run_markship,
    running_agent,
    stop_agent,
    write_offline_config,
)

# Takes the agent lock as `markship run` does, says so, and holds it until stdin closes.
_HOLD = """
import sys
from markship.config import model
from markship.repository.backends import location_of, open_repository
config = model.load(sys.argv[1])
repo = open_repository(location_of(config.repository))
with repo.lock("agent", "markship run for group testgroup"):
    print("held", flush=True)
    sys.stdin.read()
"""


def _repository(config: Path) -> Repository:
    return open_repository(location_of(model.load(config).repository))


@pytest.mark.parametrize("kind", ["fs", pytest.param("s3", marks=pytest.mark.s3)])
def test_lock_holder_names_only_a_live_holder(kind: str, workdir: Path,
                                              request: pytest.FixtureRequest) -> None:
    store = FsStore(workdir / "repo") if kind == "fs" else request.getfixturevalue("s3_store")
    config = workdir / "markship.toml"
    write_offline_config(config, store)
    repo = _repository(config)
    key = layout.lock_key("agent")

    assert repo.lock_holder("agent") is None
    assert store.stored_keys(layout.LOCKS) == []  # looking created nothing

    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(config)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        named = repo.lock_holder("agent")
        assert named is not None and named.startswith("markship run (pid "), named
        assert f"pid {holder.pid} on this host" in named
        assert repo.lock_holder("agent") == named
        # The probe left the lock to its holder: it is still taken.
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            repo.lock("agent", "markship run for group testgroup").__enter__()
    finally:
        holder.kill()  # dies holding it: the note stays, the lock does not
        holder.wait(timeout=60)
    assert key in store.stored_keys(layout.LOCKS)
    assert b"markship run" in store.read(key)
    assert repo.lock_holder("agent") is None
    with repo.lock("agent", "markship run for group testgroup"):
        assert "this host" in (repo.lock_holder("agent") or "")
    assert repo.lock_holder("agent") is None

    if isinstance(store, S3Store):
        # A lease from another host is held until it expires, judged as taking it would.
        def lease(expires: float) -> dict[str, Any]:
            return {"command": "markship run", "pid": 4242, "host": "0123456789ab",
                    "since": "2026-12-05T10:00:00Z", "expires": expires}

        store.write(key, json.dumps(lease(time.time() + 300)).encode())
        assert "pid 4242 on another host (id 0123456789ab)" in (repo.lock_holder("agent") or "")
        store.write(key, json.dumps(lease(time.time() - 1)).encode())
        assert repo.lock_holder("agent") is None


def test_last_done_failover_passes_over_damaged_and_unfinished_records(workdir: Path) -> None:
    from datetime import UTC, datetime

    from markship.dr.history import FailoverRecord, newest_done
    from markship.repository import records
    from markship.repository.fs import FsRepository

    repo = FsRepository(str(workdir / "repo"))
    assert newest_done(repo) is None

    def record(day: int, status: str) -> FailoverRecord:
        started = datetime(2026, 12, day, 10, 0, tzinfo=UTC)
        return FailoverRecord(id=started.strftime("%Y%m%dT%H%M%SZ"), mark=f"m{day}",
                              started_at=started, status=status)  # type: ignore[arg-type]

    for day, status in ((1, "done"), (2, "done"), (4, "running")):
        rec = record(day, status)
        records.write_record(repo, layout.failover_key(rec.id), rec)
    (workdir / "repo" / layout.failover_key("20261203T100000Z")).write_bytes(b"{damaged")
    found = newest_done(repo)
    assert found is not None and found.mark == "m2"


def _states(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return {s["title"]: s for s in json.loads(proc.stdout)}


def _checklist(config: Path) -> dict[str, dict[str, str]]:
    return _states(run_markship(config, "checklist", "--json"))


STANDBY_STEPS = ("Standby servers match production in count and capacity",
                 "Prepare the disaster recovery site",
                 "Feed the DR site from the repository")
AGENT = "Run the backup job (marks, schedule, retention)"
TARGET = "Restore the group to one mark"
DATABASES = "Restore the databases"
ARCHIVING = "Ship the WAL (log shipping) continuously"


@ON_FS_AND_S3
def test_checklist_after_failover_tells_the_current_roles(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    group.add_config("[marks]\ninterval = 2\n")
    standbys = add_dr_site(group)
    group.ok("backup")
    group.ok("standby", "create")
    new_mark(group)
    wait_for(lambda: all(m["complete"] for m in json.loads(group.ok("marks", "--json"))),
             "the mark complete", timeout=90, interval=0.3)
    production = group.servers[0]
    production.kill9()
    shutil.rmtree(production.data_dir)
    report = json.loads(group.ok("failover", "--json"))
    used, after = report["mark"], Path(report["new_config"])
    standby = standbys["alpha"]
    standby_at = f"127.0.0.1:{standby.port}"

    # The old config: its servers are gone, its "standbys" are primaries now.
    old = _checklist(group.config_path)
    assert old[ARCHIVING]["state"] == "✗"
    assert old[ARCHIVING]["evidence"].startswith(
        "this config names site production as production, but failover "), old[ARCHIVING]
    assert old[ARCHIVING]["evidence"].endswith(" made site dr production"), old[ARCHIVING]
    assert f"markship --config {after} checklist" in old[ARCHIVING]["fix"]
    assert f"{standby_at} (alpha) is a primary" in old["Prepare the disaster recovery site"][
        "evidence"]
    for title in STANDBY_STEPS:
        assert old[title]["state"] == "✗", old[title]
    assert "ready to promote" not in old[DATABASES]["evidence"]
    assert old[TARGET]["state"] == "✗" and used not in old[TARGET]["evidence"]
    assert old[TARGET]["evidence"].startswith("no complete mark since failover ")

    # The config the failover wrote, before any new mark: the old marks are history.
    fresh = _checklist(after)
    assert fresh[TARGET]["state"] == "✗" and used not in fresh[TARGET]["evidence"]
    assert fresh[AGENT]["state"] == "✗"

    # A mark made by hand: the target, but no agent runs.
    by_hand = json.loads(run_markship(after, "mark", "--json").stdout)["name"]
    wait_for(lambda: any(m["name"] == by_hand and m["complete"] for m in json.loads(
        run_markship(after, "marks", "--json").stdout)),
        "the hand-made mark complete", timeout=90, interval=0.3)
    now = _checklist(after)
    site = now["Prepare the disaster recovery site"]
    assert site["state"] == "✗"
    assert site["evidence"].startswith("0/1 DR-site servers in recovery; "
                                       f"127.0.0.1:{production.port} (alpha) does not answer")
    assert "markship failback prepare" in site["fix"]
    for title in STANDBY_STEPS:
        assert now[title]["state"] != "✓", now[title]
    assert "ready to promote" not in now[DATABASES]["evidence"]
    assert now[AGENT]["state"] == "✗"
    assert now[AGENT]["evidence"].startswith("no agent holds the agent lock")
    assert now[TARGET]["state"] == "✓" and by_hand in now[TARGET]["evidence"]
    assert used not in now[TARGET]["evidence"]

    # The agent: the job runs while it holds the lock, and only then.
    with running_agent(after) as agent:
        def agent_done() -> bool:
            assert agent.poll() is None, agent.communicate()
            return _checklist(after)[AGENT]["state"] == "✓"

        wait_for(agent_done, "the backup job ✓ with the agent", timeout=120, interval=1)
        running = _checklist(after)[AGENT]
        assert f"pid {agent.pid} on this host" in running["evidence"], running
        assert "Traceback" not in stop_agent(agent)
    stopped = _checklist(after)[AGENT]
    assert stopped["state"] == "✗" and "no agent holds" in stopped["evidence"]

    # The old site rebuilt as standbys: the old config's servers answer, in recovery.
    assert run_markship(after, "standby", "create").returncode == 0
    rebuilt = _checklist(after)["Prepare the disaster recovery site"]
    assert rebuilt["state"] == "✓", rebuilt
    stale = _checklist(group.config_path)[ARCHIVING]
    assert stale["state"] == "✗" and "made site dr production" in stale["evidence"]
    assert str(after) in stale["fix"]
