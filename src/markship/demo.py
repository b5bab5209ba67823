"""`markship demo`: the whole story on throwaway local servers, narrated."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rich.console import Console

from markship import config as config_mod
from markship import osuser
from markship.backup import run_backup
from markship.errors import MarkshipError
from markship.repository import open_repository
from markship.restore import Target, markship_command, restore_server
from markship.scratch import ScratchServer, free_port, pgbench_fingerprint, wait_archived
from markship.status import group_status
from markship.timefmt import show

NAMES = ["orders", "payments", "inventory"]
OS_USER = "postgres"


def write_config(path: Path, repo: Path, servers: list[ScratchServer]) -> None:
    lines = ['[group]\nname = "demo"\n\n[repository]\n',
             f'path = "{repo}"\nos_user = "{OS_USER}"\n']
    for server in servers:
        lines.append(f'\n[[server]]\nname = "{server.name}"\nconninfo = "{server.conninfo()}"\n'
                     f'data_dir = "{server.data_dir}"\n')
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
    servers: list[ScratchServer] = []
    try:
        _story(console, workdir, count, command, servers)
    finally:
        for server in servers:
            server.stop(mode="immediate")
        restored = workdir / "orders-restored"
        if (restored / "postmaster.pid").exists():
            subprocess.run(["/usr/lib/postgresql/15/bin/pg_ctl", "-D", str(restored), "-m",
                            "immediate", "stop"], capture_output=True, check=False)
        if keep:
            console.print(f"[dim]demo files kept in {workdir}[/dim]")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            console.print("[dim]demo servers stopped and files removed[/dim]")


def _story(console: Console, workdir: Path, count: int, command: str,
           servers: list[ScratchServer]) -> None:
    cfg_path = workdir / "markship.toml"
    repo_path = workdir / "repo"
    console.rule("[bold]1. a group of PostgreSQL servers")
    for name in NAMES[:count]:
        archive = f"{command} --config {cfg_path} wal-push --server {name} %p"
        server = ScratchServer(name, workdir / name, free_port(), os_user=OS_USER,
                               settings={"archive_mode": "on", "archive_command": archive})
        servers.append(server)
    write_config(cfg_path, repo_path, servers)
    for server in servers:
        server.initdb()
        server.start()
        server.run("pgbench", "-i", "-s", "1", "-q", "-d", server.conninfo())
        console.print(f"  {server.name}: PostgreSQL on 127.0.0.1:{server.port}, "
                      f"pgbench data loaded, archive_command → markship wal-push")
    console.print(f"  config: {cfg_path}")
    config = config_mod.load(cfg_path)
    repo = open_repository(repo_path)

    console.rule("[bold]2. markship backup: one backup set for the whole group")
    began = time.monotonic()
    result = run_backup(config, repo, list(config.servers))
    for name, rec in result.backups.items():
        console.print(f"  {name}: {rec.raw_size / 2**20:.1f} MiB → "
                      f"{rec.archive.size / 2**20:.2f} MiB")
    console.print(f"  backup set {result.record.id} complete in {time.monotonic() - began:.1f} s")

    console.rule("[bold]3. the workload goes on after the backup")
    for server in servers:
        server.run("pgbench", "-n", "-c", "2", "-t", "300", "-d", server.conninfo())
        wait_archived(server)
    victim = servers[0]
    before = pgbench_fingerprint(victim)
    console.print(f"  {victim.name} now has: {before}")
    for s in group_status(config, repo):
        console.print(f"  {s.server}: last archived {s.last_archived_wal} at "
                      f"{show(s.last_archived_at)}, archive lag {s.archive_lag_bytes} bytes")

    console.rule(f"[bold red]4. disaster: {victim.name} crashes and its disk is lost")
    victim.kill9()
    shutil.rmtree(victim.data_dir)
    console.print(f"  kill -9 {victim.name}; rm -rf {victim.data_dir}")

    console.rule(f"[bold]5. markship restore --server {victim.name} --latest --start")
    target = workdir / "orders-restored"
    port = free_port()
    restored = restore_server(config, repo, victim.name, target, Target("latest"), start=True,
                              port=port, extra_settings={"unix_socket_directories": str(workdir)})
    console.print(f"  restored from set {restored.set_id} into {target}, running on port "
                  f"{port}, in {restored.seconds:.1f} s")
    check = ScratchServer(victim.name, workdir, port, os_user=OS_USER)
    after = pgbench_fingerprint(check)
    console.print(f"  restored data: {after}")
    if after != before:
        raise MarkshipError("demo failed: the restored rows differ from the source")
    console.print("[bold green]  ✓ every committed and archived row is back[/bold green]")
    console.rule("[bold]report")
    console.print(f"  servers: {', '.join(s.name for s in servers)}; backup set "
                  f"{result.record.id}; restored {victim.name} to the end of its archived WAL; "
                  "rows match.")
