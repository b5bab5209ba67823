"""Backup sets: `markship backup`, `list`, `status`, `verify`, `restore` and `expire`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from markship.cli import output, progress
from markship.cli.context import Context, journaled, pass_context
from markship.config.model import Config
from markship.errors import MarkshipError
from markship.repository.base import Repository


@click.command()
@click.option("--server", "servers", multiple=True, metavar="NAME",
              help="Back up only this server (repeatable). Default: every server.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("backup")
def backup(ctx: Context, servers: tuple[str, ...], as_json: bool) -> None:
    """Full base backup of every server of the group, in parallel, as one backup set."""
    from markship.backup.basebackup import run_backup

    config = ctx.config
    chosen = config.select(servers)
    repo = ctx.repository()
    with progress.shown("backup", as_json) as on_progress:
        result = run_backup(config, repo, chosen, on_progress)
    ctx.note(set=result.record.id)
    output.writer(as_json).backup(result)
    # Warnings go to stderr with --json too: they must not be missed by scripts' logs.
    for what, problem in result.record.errors.items():  # file sets; the databases are fine
        click.echo(f"markship: warning: {what} not captured: {problem}", err=True)
    _warn_key_backup(config, repo)


def _warn_key_backup(config: Config, repo: Repository) -> None:
    """Say it every time while the encryption key has no recorded backup."""
    from markship.repository.keys import backup_warning

    warning = backup_warning(config, repo)
    if warning:
        click.echo(f"markship: warning: {warning}", err=True)


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_sets(ctx: Context, as_json: bool) -> None:
    """Backup sets with times, sizes, compression ratio and completeness."""
    from markship.repository import catalog, restorable

    repo = ctx.repository(fallback=True)
    wal: dict[str, restorable.WalIndex] = {}
    states = [restorable.set_state(repo, r, wal) for r in catalog.list_sets(repo)]
    output.writer(as_json).list_sets(states)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Per server: last backup, archived WAL, archive lag and archiver failures; WAL dropped
    by pg_wal protection and the time it puts out of reach."""
    from markship.monitor.snapshot import group_status

    result = group_status(ctx.config, ctx.repository(), ctx.copies())
    output.writer(as_json).status(result)
    if not result.healthy:
        sys.exit(1)


@click.command()
@click.argument("set_id", required=False, metavar="[SET]")
@click.option("--clean-temp", is_flag=True,
              help="Delete temp objects whose writer has died (partly written objects).")
@click.option("--repository", "copy_name", metavar="NAME",
              help="Verify this [[repository.copy]] instead of the repository.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("verify")  # its outcome and age are on the agent's /metrics
def verify(ctx: Context, set_id: str | None, clean_temp: bool, copy_name: str | None,
           as_json: bool) -> None:
    """Re-read every object against its checksum and check WAL continuity."""
    from markship import names
    from markship.backup.verify import verify as run_verify

    if set_id is not None:
        names.check(set_id, "backup set id")
    ctx.note(**{k: v for k, v in (("set", set_id), ("copy", copy_name)) if v})
    repo = ctx.copies([copy_name])[0].repo if copy_name else ctx.repository()
    with progress.shown("verify", as_json) as on_progress:
        report = run_verify(repo, set_id, clean_temp, on_progress)
    output.writer(as_json).verify(report)
    if not report.ok:
        raise MarkshipError("verify found problems (listed above)",
                            "take a new backup with markship backup; keep the bad objects for "
                            "inspection")


@click.command()
@click.option("--server", metavar="NAME", help="Server to restore.")
@click.option("--group", "whole_group", is_flag=True,
              help="Restore every server to one mark (--mark), started and settled.")
@click.option("--mark", "mark_name", metavar="NAME",
              help="With --group: the mark (default: the newest complete one).")
@click.option("--port-base", type=int, help="With --group: first port; servers take the next.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="With --group: address the restored servers listen on.")
@click.option("--target-dir", required=True, type=click.Path(path_type=Path, resolve_path=True),
              help="New (or empty) data directory; with --group a template with {server}.")
@click.option("--latest", "kind", flag_value="latest", default=True,
              help="Recover to the end of the archived WAL (default).")
@click.option("--time", "at_time", metavar="TIMESTAMP",
              help="Recover to this time; must carry a zone, e.g. 2026-11-25T19:02:11Z.")
@click.option("--name", "point_name", metavar="RESTORE_POINT",
              help="Recover to this named restore point.")
@click.option("--set", "set_id", metavar="SET", help="Use this backup set.")
@click.option("--start", is_flag=True, help="Start the server and wait until it is promoted.")
@click.option("--port", type=int, help="Port for the restored server.")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extra server setting for the restored server (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("restore")
def restore(ctx: Context, server: str | None, whole_group: bool, mark_name: str | None,
            port_base: int | None, host: str, target_dir: Path, kind: str, at_time: str | None,
            point_name: str | None, set_id: str | None, start: bool, port: int | None,
            settings: tuple[str, ...], as_json: bool) -> None:
    """Restore one server (to the latest point, a time or a name) or the group (to a mark)."""
    from markship import names
    from markship.backup.restore import Target, restore_server
    from markship.timefmt import parse_aware

    if mark_name is not None:
        names.check_restore_point(mark_name, "mark name (--mark)")
    if point_name is not None:
        names.check_restore_point(point_name, "restore point name (--name)")
    if set_id is not None:
        names.check(set_id, "backup set id (--set)")
    if whole_group:
        if server or at_time or point_name or set_id or port:
            raise click.UsageError("--group takes --mark, --target-dir, --port-base, --host")
        if port_base is None:
            raise click.UsageError("--group needs --port-base")
        _restore_group(ctx, mark_name, str(target_dir), port_base, host, as_json)
        ctx.note(group="all servers", into=target_dir)
        return
    if not server:
        raise click.UsageError("give --server NAME, or --group")

    if at_time and point_name:
        raise click.UsageError("give at most one of --time and --name")
    if at_time:
        try:
            target = Target("time", time=parse_aware(at_time))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--time") from None
    elif point_name:
        target = Target("name", name=point_name)
    else:
        target = Target("latest")
    extra: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--setting")
        extra[key.strip()] = value.strip()
    config = ctx.config
    config.server(server)
    repo = ctx.repository(fallback=True)
    _warn_reading_copies(repo)
    with progress.shown("restore", as_json) as on_progress:
        result = restore_server(config, repo, server, target_dir, target, set_id=set_id,
                                start=start, port=port, extra_settings=extra,
                                on_progress=on_progress)
    ctx.note(server=server, set=result.set_id, target=target.describe(), into=target_dir)
    output.writer(as_json).restore(server, target, result)


def _restore_group(ctx: Context, mark_name: str | None, template: str, port_base: int,
                   host: str, as_json: bool) -> None:
    from markship.backup.group_restore import restore_group

    config = ctx.config
    repo = ctx.repository(fallback=True)
    _warn_reading_copies(repo)
    with progress.shown("restore", as_json) as on_progress:
        report = restore_group(config, repo, mark_name, template, port_base, host, on_progress)
    output.writer(as_json).restore_group(report, host)


def _warn_reading_copies(repo: Repository) -> None:
    """Say it when the repository is gone and a restore reads its copies alone."""
    from markship.repository.fallback import Fallback

    if isinstance(repo, Fallback) and repo.writer is not repo.primary:
        click.echo(f"markship: warning: the repository {repo.primary.location} cannot be "
                   f"reached: restoring from the copy at {repo.writer.location}; recovery "
                   "ends where the copies' WAL ends (an async copy may lack the newest)",
                   err=True)


@click.command()
@click.option("--dry-run", is_flag=True, help="Show the plan, delete nothing.")
@click.option("--now", "now_text", metavar="TIMESTAMP",
              help="Plan as if it were this time (with zone), e.g. to preview next week.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def expire(ctx: Context, dry_run: bool, now_text: str | None, as_json: bool) -> None:
    """Apply retention: delete old backup sets, the WAL only they needed, and old marks."""
    from markship.backup import retention
    from markship.timefmt import parse_aware, utcnow

    try:
        now = parse_aware(now_text) if now_text else utcnow()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--now") from None
    config = ctx.config
    repo = ctx.repository()
    with repo.lock("backup", "markship expire"):
        result = retention.make_plan(repo, now, config.retention.days, config.retention.min_sets)
        if not dry_run:
            retention.apply(repo, result)
    if not dry_run:
        ctx.note(deleted_sets=",".join(result.delete_sets) or "none",
                 deleted_objects=len(result.delete_keys))
        ctx.journal("expire", "ok")
    output.writer(as_json).expire(result, dry_run)


COMMANDS = [backup, list_sets, status, verify, restore, expire]
