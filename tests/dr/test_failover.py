"""The DR site end to end: three servers, three standbys, a 2PC workload, marks every 2 s,
a disaster, an interrupted failover resumed, and a group that agrees on one mark."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from markship.client import setup_decisions
from markship.pg.datadir import stopped_at
from markship.pg.scratch import ScratchServer, create_ledger, transfer_workload
from tests.support.checks import wait_for
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, OS_USER, Group, GroupFactory, run_markship

ACCOUNTS = 10
START = 1000


def _dr_config(group: Group) -> dict[str, ScratchServer]:
    standbys = {s.name: group.restored(s.name) for s in group.servers}
    hook = group.workdir / "hook.sh"
    hook.write_text("#!/bin/sh\nenv | grep ^MARKSHIP_ | sort > \"$(dirname \"$0\")/hook.out\"\n")
    hook.chmod(0o755)
    text = "\n[marks]\ninterval = 2\n\n[dr_site]\nname = \"dr\"\n"
    for name, sb in standbys.items():
        text += (f'\n[[dr_site.standby]]\nserver = "{name}"\ndata_dir = "{sb.data_dir}"\n'
                 f'host = "127.0.0.1"\nport = {sb.port}\nsocket_dir = "{sb.base_dir}"\n')
    text += (f'\n[failover.clients]\njson = "{group.workdir}/clients.json"\n'
             f'env = "{group.workdir}/clients.env"\n'
             f'pg_service = "{group.workdir}/pg_service.conf"\n'
             '\n[[failover.sql]]\nserver = "alpha"\n'
             "statement = \"UPDATE peers SET host = '{bravo.host}', port = {bravo.port} "
             "WHERE name = 'bravo'\"\n"
             f'\n[[failover.hook]]\ncommand = ["{hook}"]\n')
    group.add_config(text)
    return standbys


def _setup(group: Group) -> None:
    for server in group.servers:
        create_ledger(server, ACCOUNTS, START)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE peers (name text PRIMARY KEY, host text, port int); "
               f"INSERT INTO peers VALUES ('bravo', '127.0.0.1', {group.servers[1].port})")
    with psycopg.connect(alpha.conninfo(), autocommit=True) as conn:
        setup_decisions(conn)


def standby_pair(group: Group, moved: int) -> dict[str, ScratchServer]:
    """The ledger on both servers of `group`, a backup, DR standbys, and `moved` moved from
    alpha's account 1 to bravo's; the standbys."""
    _setup(group)
    group.ok("backup")
    standbys = _dr_config(group)
    group.ok("standby", "create")
    group.servers[0].psql(f"UPDATE accounts SET balance = balance + {moved} WHERE id = 1")
    group.servers[1].psql(f"UPDATE accounts SET balance = balance - {moved} WHERE id = 1")
    return standbys


def _replay_lsn(sb: ScratchServer) -> int:
    text = sb.psql("SELECT pg_last_wal_replay_lsn()")
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@ON_FS_AND_S3
def test_group_failover_to_one_mark(pg_group: GroupFactory) -> None:
    group = pg_group(3)
    _setup(group)
    group.ok("backup")
    standbys = _dr_config(group)
    group.ok("standby", "create")
    status = json.loads(group.ok("standby", "status", "--json"))
    assert [s["in_recovery"] for s in status] == [True, True, True]

    agent = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    errors: list[str] = []
    worker = threading.Thread(target=transfer_workload,
                              args=(group.servers, "testgroup", ACCOUNTS, stop, [], errors))
    worker.start()
    checks = 0
    try:
        deadline = time.monotonic() + 60
        while checks < 6 and time.monotonic() < deadline:
            replayed = {name: _replay_lsn(sb) for name, sb in standbys.items()}
            marks = [m for m in json.loads(group.ok("marks", "--json")) if m["complete"]]
            if marks:
                for name, lsn in replayed.items():
                    newest = max(m["points"][name]["lsn"] for m in marks)
                    assert lsn <= newest, f"standby of {name} replayed past the newest mark"
                checks += 1
            time.sleep(0.5)
        assert checks >= 5

        refused = group.markship("failover")
        assert refused.returncode != 0 and "split brain" in refused.stderr
        dry = json.loads(group.ok("failover", "--dry-run", "--json"))
        assert dry["dry_run"] and dry["mark"]
        assert all((sb.data_dir / "standby.signal").exists() for sb in standbys.values())

        # The disaster: every production server dies mid-load and its disk is lost.
        stop.set()  # the workload's connections will break: that is expected now
        for server in group.servers:
            server.kill9()
        worker.join()
        for server in group.servers:
            shutil.rmtree(server.data_dir)
        agent.send_signal(signal.SIGTERM)
        _out, agent_log = agent.communicate(timeout=60)
        # Production died under the agent: its marks fail and say so; it never crashes.
        assert agent.returncode == 0 and "Traceback" not in agent_log, agent_log
    finally:
        stop.set()
        worker.join()
        if agent.poll() is None:
            agent.kill()
    assert not errors, errors

    # A failover killed once the first standby is promoted, then run again.
    first = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "failover"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while first.poll() is None and all((sb.data_dir / "standby.signal").exists()
                                       for sb in standbys.values()):
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    proc = group.markship("failover", "--json")
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    mark = report["mark"]
    assert report["resumed"]
    for name, sb in standbys.items():
        assert stopped_at(sb.data_dir) == f'at restore point "{mark}"', name
        assert sb.psql("SELECT pg_is_in_recovery()") == "f"
        assert sb.psql("SELECT count(*) FROM pg_prepared_xacts") == "0"

    total = sum(int(sb.psql("SELECT sum(balance) FROM accounts")) for sb in standbys.values())
    assert total == 3 * ACCOUNTS * START
    decided = set(standbys["alpha"].psql("SELECT gid FROM markship.decisions").split())
    seen: dict[str, int] = {}
    for sb in standbys.values():
        for gid in sb.psql("SELECT gid FROM transfers").split():
            seen[gid] = seen.get(gid, 0) + 1
    assert set(seen) == decided and all(count == 2 for count in seen.values())
    assert len(decided) > 10

    alpha = standbys["alpha"]
    assert alpha.psql("SELECT host || ':' || port FROM peers WHERE name = 'bravo'") == \
        f"127.0.0.1:{standbys['bravo'].port}"
    clients = json.loads((group.workdir / "clients.json").read_text())
    assert {n: int(c["port"]) for n, c in clients.items()} == \
        {n: sb.port for n, sb in standbys.items()}
    hook_saw = (group.workdir / "hook.out").read_text()
    assert f"MARKSHIP_BRAVO_PORT={standbys['bravo'].port}" in hook_saw
    assert f"MARKSHIP_MARK={mark}" in hook_saw
    assert f"port={standbys['charlie'].port}" in (group.workdir / "pg_service.conf").read_text()

    # The config from before the failover describes roles of the past: refused, naming the
    # one the failover wrote.
    again = group.markship("failover", "--dry-run")
    assert again.returncode != 0 and report["new_config"] in again.stderr, again.stderr

    # The written record of the whole run: each mutating command, in order, chain intact.
    entries = json.loads(group.ok("journal", "--json"))
    done = [(e["command"], e["outcome"].split(":")[0]) for e in entries]
    assert ("backup", "ok") in done and ("standby create", "ok") in done
    assert ("failover", "ok") in done and ("agent start", "ok") in done
    assert any(e["command"] == "marks" and int(e["objects"]["made"]) > 0 for e in entries)
    assert any(c == "config change" for c, _ in done)
    assert [e["objects"]["mark"] for e in entries if e["command"] == "failover"
            and e["outcome"] == "ok"] == [mark]
    assert "dry" not in " ".join(e["command"] for e in entries)
    assert json.loads(group.ok("journal", "verify", "--json"))["ok"]



def test_failback_switches_roles_back(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    standbys = standby_pair(group, 5)
    first = json.loads(group.ok("mark", "--json"))["name"]
    group.servers[0].psql("UPDATE accounts SET balance = balance + 1 WHERE id = 5")
    group.servers[1].psql("UPDATE accounts SET balance = balance - 1 WHERE id = 5")
    group.ok("mark")
    wait_for(lambda: all(m["complete"] for m in json.loads(group.ok("marks", "--json")))
             and all(s["at_mark"] == first
                     for s in json.loads(group.ok("standby", "status", "--json"))),
             "marks complete and standbys past the first", timeout=90, interval=0.3)
    for server in group.servers:
        server.kill9()
        shutil.rmtree(server.data_dir)
    older = group.markship("failover", "--mark", first)
    assert older.returncode != 0 and "already replayed past mark" in older.stderr
    assert all((sb.data_dir / "standby.signal").exists() for sb in standbys.values())
    report = json.loads(group.ok("failover", "--json"))
    assert report["protected"] and (report["site"], report["rebuild_site"]) == ("dr", "production")
    new_config = Path(report["new_config"])
    assert new_config == group.workdir / "markship.dr.toml"
    # The config from before the failover is refused, naming the one to use.
    stale = group.markship("failback", "prepare")
    assert stale.returncode != 0 and str(new_config) in stale.stderr, stale.stderr
    proc = run_markship(new_config, "failback", "prepare", timeout=240)
    assert proc.returncode == 0, proc.stderr
    back = json.loads(run_markship(new_config, "standby", "status", "--json").stdout)
    assert [s["in_recovery"] for s in back] == [True, True]
    # On the new timeline no mark is complete yet: no mark to be behind of, not "0 behind".
    assert [(s["at_mark"], s["marks_behind"]) for s in back] == [(None, None), (None, None)]
    standbys["alpha"].psql("UPDATE accounts SET balance = balance + 7 WHERE id = 2")
    standbys["bravo"].psql("UPDATE accounts SET balance = balance - 7 WHERE id = 2")
    back_mark = json.loads(run_markship(new_config, "mark", "--json").stdout)["name"]
    for sb in standbys.values():
        sb.stop()
    proc = run_markship(new_config, "failover", "--json")
    assert proc.returncode == 0, proc.stderr
    returned = json.loads(proc.stdout)
    assert returned["mark"] == back_mark and returned["protected"]
    # Home again: the group's own file describes these roles, so it is the config again;
    # the sites keep the names the operator gave them.
    assert returned["new_config"] == str(group.config_path)
    assert (returned["site"], returned["rebuild_site"]) == ("production", "dr")
    old_site = [ScratchServer(s.name, s.base_dir, s.port, os_user=OS_USER) for s in group.servers]
    assert [s.psql("SELECT balance FROM accounts WHERE id = 2") for s in old_site] == \
        [str(START + 7), str(START - 7)]
    assert sum(int(s.psql("SELECT sum(balance) FROM accounts")) for s in old_site) == \
        2 * ACCOUNTS * START

    # The checklist of the round trip's config tells the current roles: the DR site's servers
    # are stopped primaries, no agent runs, and the marks before the return are history.
    steps = {s["title"]: s for s in json.loads(group.markship("checklist", "--json").stdout)}
    for title in ("Prepare the disaster recovery site", "Feed the DR site from the repository",
                  "Standby servers match production in count and capacity"):
        assert steps[title]["state"] == "✗", steps[title]
    assert "ready to promote" not in steps["Restore the databases"]["evidence"]
    assert steps["Run the backup job (marks, schedule, retention)"]["state"] == "✗"
    assert back_mark not in steps["Restore the group to one mark"]["evidence"]
    assert steps["Ship the WAL (log shipping) continuously"]["state"] == "✓", steps
