"""`markship demo`: the whole story on throwaway local servers, narrated.

Servers and a cross-server workload (two-phase commit through the client helper), a backup set,
a single-server restore, DR-site standbys, group marks every second, a disaster that takes every
production server and its disk, a group failover to one mark, and the checks that prove the
group agrees: the total of all balances is intact and no transfer is half-applied.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from rich.console import Console

from markship import osuser
from markship.backup.basebackup import run_backup
from markship.backup.restore import restore_server
from markship.backup.targets import Target
from markship.client import setup_decisions
from markship.config import model as config_mod
from markship.dr.failover import failover
from markship.dr.standby import create_standbys, standby_status
from markship.errors import MarkshipError
from markship.marks.choose import mark_states
from markship.marks.take import GroupConnections, take_mark
from markship.pg.commands import archive_command, markship_command
from markship.pg.scratch import (
    ScratchServer,
    create_ledger,
    free_port,
    transfer_workload,
    wait_archived,
)
from markship.repository.backends import location_of, open_repository
from markship.timefmt import show
from markship.wal.spool import spool_dir

NAMES = ["orders", "payments", "inventory"]
OS_USER = "postgres"
ACCOUNTS = 20
START_BALANCE = 1000


def write_config(path: Path, repo: Path, servers: list[ScratchServer],
                 standbys: dict[str, ScratchServer]) -> None:
    lines = ['[group]\nname = "demo"\n\n[repository]\n',
             f'path = "{repo}"\nos_user = "{OS_USER}"\n\n[marks]\ninterval = 1\n']
    for server in servers:
        lines.append(f'\n[[server]]\nname = "{server.name}"\nconninfo = "{server.conninfo()}"\n'
                     f'data_dir = "{server.data_dir}"\n')
    lines.append('\n[dr_site]\nname = "dr"\n')
    for name, sb in standbys.items():
        lines.append(f'\n[[dr_site.standby]]\nserver = "{name}"\ndata_dir = "{sb.data_dir}"\n'
                     f'host = "127.0.0.1"\nport = {sb.port}\nsocket_dir = "{sb.base_dir}"\n')
    lines.append(f'\n[failover.clients]\njson = "{path.parent / "clients.json"}"\n')
    path.write_text("".join(lines))


def run_demo(count: int, keep: bool) -> None:
    console = Console()
    osuser.switch_to(OS_USER)
    command = markship_command()
    if not os.access(command, os.X_OK):
        raise MarkshipError(f"{command} cannot be run by the {OS_USER} user",
                            "install markship in a directory every user can read (./dev demo)")
    workdir = Path(tempfile.mkdtemp(prefix="markship-demo-"))
    workdir.chmod(0o755)
    everything: list[ScratchServer] = []
    try:
        _story(console, workdir, count, command, everything)
    finally:
        for server in everything:
            server.stop(mode="immediate")
        if keep:
            console.print(f"[dim]demo files kept in {workdir}[/dim]")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            # wal-push's spool for this config: <spool>/<config>/<server>
            spool = os.path.dirname(spool_dir(str(workdir / "markship.toml"), NAMES[0]))
            shutil.rmtree(spool, ignore_errors=True)
            console.print("[dim]demo servers stopped and files removed[/dim]")


def _story(console: Console, workdir: Path, count: int, command: str,
           everything: list[ScratchServer]) -> None:
    cfg_path = workdir / "markship.toml"
    console.rule("[bold]1. a group of PostgreSQL servers that must agree")
    servers = []
    for name in NAMES[:count]:
        archive = archive_command(command, cfg_path, name)
        servers.append(ScratchServer(name, workdir / name, free_port(), os_user=OS_USER,
                                     settings={"archive_mode": "on",
                                               "archive_command": archive}))
    standbys = {s.name: ScratchServer(s.name, workdir / f"dr-{s.name}", free_port(),
                                      os_user=OS_USER) for s in servers}
    write_config(cfg_path, workdir / "repo", servers, standbys)
    everything.extend(servers)
    for server in servers:
        server.initdb()
        server.start()
        create_ledger(server, ACCOUNTS, START_BALANCE)
        console.print(f"  {server.name}: 127.0.0.1:{server.port}, {ACCOUNTS} accounts of "
                      f"{START_BALANCE}, archive_command → markship wal-push")
    with psycopg.connect(servers[0].conninfo(), autocommit=True) as conn:
        setup_decisions(conn)
    total = len(servers) * ACCOUNTS * START_BALANCE
    console.print(f"  invariant: the balances of all servers add up to {total}")
    config = config_mod.load(cfg_path)
    repo = open_repository(location_of(config.repository))

    console.rule("[bold]2. markship backup: one backup set for the whole group")
    result = run_backup(config, repo, list(config.servers))
    console.print(f"  backup set {result.record.id} complete: " + ", ".join(
        f"{n} {b.raw_size / 2**20:.0f} MiB → {b.stored_size / 2**20:.1f} MiB"
        for n, b in result.backups.items()))

    console.rule("[bold]3. one server restored on its own, to its latest archived state")
    victim = servers[0]
    victim.psql("INSERT INTO accounts VALUES (1000, 0)")
    wait_archived(victim)
    scratch = ScratchServer(victim.name, workdir / "scratch", free_port(), os_user=OS_USER)
    everything.append(scratch)
    restored = restore_server(config, repo, victim.name, scratch.data_dir, Target("latest"),
                              start=True, port=scratch.port,
                              extra_settings={"unix_socket_directories": str(workdir)})
    same = scratch.psql("SELECT count(*) FROM accounts") == victim.psql(
        "SELECT count(*) FROM accounts")
    console.print(f"  {victim.name} restored in {restored.seconds:.1f} s; rows match: "
                  f"{'yes' if same else 'NO'}")
    scratch.stop(mode="immediate")
    victim.psql("DELETE FROM accounts WHERE id = 1000")

    console.rule("[bold]4. the DR site: one standby per server, fed from the repository")
    create_standbys(config, repo, [s.name for s in servers])
    everything.extend(standbys.values())
    for name, sb in standbys.items():
        console.print(f"  standby of {name} on 127.0.0.1:{sb.port}, replaying only up to the "
                      "newest complete group mark")

    console.rule("[bold]5. a two-phase-commit workload, and a group mark every second")
    stop = threading.Event()
    done: list[str] = []
    errors: list[str] = []
    worker = threading.Thread(target=transfer_workload,
                              args=(servers, "demo", ACCOUNTS, stop, done, errors))
    worker.start()
    conns = GroupConnections(config)
    try:
        for _ in range(6):
            time.sleep(1)
            mark = take_mark(config, repo, conns).record
            console.print(f"  mark {mark.name}: barrier held {mark.barrier_hold_ms:.1f} ms, "
                          f"{len(done)} transfers so far")
    finally:
        conns.close()
    time.sleep(1.5)
    for s in standby_status(config, repo):
        console.print(f"  standby of {s.server} sits at {s.at_mark}, {s.marks_behind} mark(s) "
                      "behind")

    console.rule("[bold red]6. disaster: every production server dies and its disk is lost")
    stop.set()
    for server in servers:
        server.kill9()
        shutil.rmtree(server.data_dir)
    worker.join()
    if errors:
        raise MarkshipError(f"demo workload failed: {errors[0]}")
    console.print(f"  kill -9 and rm -rf on {', '.join(s.name for s in servers)} after "
                  f"{len(done)} transfers")

    console.rule("[bold]7. markship failover: every standby to the same mark")
    plan = failover(config, repo, dry_run=True)
    console.print(f"  dry run: newest complete mark {plan.mark}, made {show(plan.mark_time)}")
    report = failover(config, repo)
    for r in report.resolutions:
        console.print(f"  in-doubt {r.gid} on {r.server}: {r.action}")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items())
    console.print(f"  promoted at {report.mark}: RTO {report.rto_seconds:.1f} s ({phases}), "
                  f"RPO {report.rpo_seconds:.1f} s")
    for state in report.archiving:
        console.print(f"  {'✓' if state.ok else '✗'} {state.line()}")
    console.print(f"  site {report.site} is production now; its config: {report.new_config}")

    console.rule("[bold]8. does the group agree?")
    balance = sum(int(sb.psql("SELECT sum(balance) FROM accounts")) for sb in standbys.values())
    decided = set(standbys[servers[0].name].psql("SELECT gid FROM markship.decisions").split())
    halves: dict[str, int] = {}
    for sb in standbys.values():
        for gid in sb.psql("SELECT gid FROM transfers").split():
            halves[gid] = halves.get(gid, 0) + 1
    prepared = sum(int(sb.psql("SELECT count(*) FROM pg_prepared_xacts"))
                   for sb in standbys.values())
    whole = set(halves) == decided and all(n == 2 for n in halves.values())
    console.print(f"  balances add up to {balance} (expected {total})")
    console.print(f"  {len(decided)} transfers survived, each on both of its servers: "
                  f"{'yes' if whole else 'NO'}; prepared transactions left: {prepared}")
    if balance != total or not whole or prepared:
        raise MarkshipError("demo failed: the restored group does not agree")
    console.print("[bold green]  ✓ the whole group is back at one consistent point[/bold green]")
    console.rule("[bold]report")
    mark_count = len(mark_states(repo, config))
    console.print(f"  {len(servers)} servers, backup set {result.record.id}, {mark_count} marks, "
                  f"failover to {report.mark}: RTO {report.rto_seconds:.1f} s, RPO "
                  f"{report.rpo_seconds:.1f} s, clients file {workdir / 'clients.json'}")
