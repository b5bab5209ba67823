"""`markship checklist`: the expected ✗s on a fresh group, all ✓ once the steps are done."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import psycopg

from markship.client import setup_decisions
from tests.support.servers import MARKSHIP, GroupFactory


def _states(group_ok: str) -> dict[str, str]:
    return {s["title"]: s["state"] for s in json.loads(group_ok)}


def test_checklist_from_fresh_to_done(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    fresh = group.markship("checklist", "--json")
    assert fresh.returncode == 1
    states = _states(fresh.stdout)
    for title in ("Keep a written record of every change",
                  "Back up every database, and prove a restore works",
                  "Prepare the disaster recovery site",
                  "Restore the group to one mark",
                  "Point the application hosts at the new servers"):
        assert states[title] == "✗", (title, fresh.stdout)
    assert states["Back up the master secret (the repository key)"] == "—"
    text = group.markship("checklist").stdout
    assert "✗ Back up every database, and prove a restore works: no complete backup set" \
           "  → markship backup" in text

    # Do the steps: DR site, clients, a backup, standbys, the agent, a drill.
    standby = group.restored("alpha")
    group.config_path.write_text(group.config_path.read_text() + (
        f'\n[marks]\ninterval = 2\n\n[dr_site]\n[[dr_site.standby]]\nserver = "alpha"\n'
        f'data_dir = "{standby.data_dir}"\nport = {standby.port}\n'
        f'socket_dir = "{standby.base_dir}"\n'
        f'\n[failover.clients]\njson = "{group.workdir}/clients.json"\n'))
    with psycopg.connect(group.servers[0].conninfo(), autocommit=True) as conn:
        setup_decisions(conn)  # the group commits across servers with the 2PC protocol
    group.ok("backup")
    group.ok("standby", "create")
    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not any(m["complete"] for m in json.loads(group.ok("marks", "--json"))):
            assert time.monotonic() < deadline and agent.poll() is None
            time.sleep(0.5)
        group.ok("drill")
        time.sleep(3)  # the standby replays up to a mark
        done = group.markship("checklist", "--json")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=120)
    steps = json.loads(done.stdout)
    assert done.returncode == 0, [s for s in steps if s["state"] == "✗"]
    assert all(s["state"] in ("✓", "—") for s in steps)
    assert next(s for s in steps if s["title"].startswith("Run the backup job"))[
        "evidence"].startswith("last complete mark ")
