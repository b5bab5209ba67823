"""Backup sets: `markship backup`, `list`, `status`, `verify`, `restore` and `expire`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from markship.cli import output, progress
from markship.cli.context import Context, journaled, pass_context
from markship.config.model import Config
from markship.errors import MarkshipError
from markship.repository.base import Repository

if TYPE_CHECKING:
    from markship.backup.targets import Target


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
              help="The group mark to recover to (with --group default: the newest complete "
                   "one); with --server the same as --name.")
@click.option("--port-base", type=int, help="With --group: first port; servers take the next.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="With --group: address the restored servers listen on.")
@click.option("--target-dir", required=True, type=click.Path(path_type=Path, resolve_path=True),
              help="New (or empty) data directory; with --group a template with {server}. "
                   "With --resume or --advance-to: the directory of a paused restore.")
@click.option("--latest", "kind", flag_value="latest", default=True,
              help="Recover to the end of the archived WAL (default).")
@click.option("--time", "at_time", metavar="TIMESTAMP",
              help="Recover to this time; must carry a zone, e.g. 2026-11-25T19:02:11Z.")
@click.option("--name", "point_name", metavar="RESTORE_POINT",
              help="Recover to this named restore point (or group mark).")
@click.option("--lsn", metavar="LSN",
              help="Recover to this WAL location (X/Y in hex, e.g. 0/3000060); the backup "
                   "is the newest that ends before it.")
@click.option("--xid", metavar="XID",
              help="Recover to the commit of this transaction id; uses the newest backup "
                   "(or --set): an xid older than that backup needs --set with an older set.")
@click.option("--immediate", is_flag=True,
              help="Recover only until the backup is consistent (the newest, or --set).")
@click.option("--exclusive", is_flag=True,
              help="Stop just before the --time, --lsn or --xid target instead of just after "
                   "it (default: inclusive).")
@click.option("--action", type=click.Choice(["promote", "pause", "shutdown"]),
              default="promote", show_default=True,
              help="At the target: promote; pause (read-only, for inspection; then --resume "
                   "or --advance-to); shut down.")
@click.option("--resume", is_flag=True,
              help="Promote the paused restore in --target-dir (with --group: every server, "
                   "then settle prepared transactions).")
@click.option("--advance-to", "advance", is_flag=True,
              help="Move the paused restore in --target-dir on to a later target (--time, "
                   "--name, --mark, --lsn or --xid) and pause there.")
@click.option("--set", "set_id", metavar="SET", help="Use this backup set.")
@click.option("--start", is_flag=True,
              help="Start the server and wait until it did the --action at the target.")
@click.option("--port", type=int, help="Port for the restored server.")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Extra server setting for the restored server (repeatable), e.g. "
                   "unix_socket_directories=/tmp on a host lacking production's paths.")
@click.option("--tablespace-map", "tablespace_map", multiple=True, metavar="OLD=NEW",
              help="Restore the tablespace OLD (its name or original location) into the "
                   "new or empty directory NEW (repeatable); OLD '*' maps every tablespace "
                   "not named, NEW then contains {oid}; with --group NEW contains "
                   "{server}. Unmapped tablespaces go back to their original location.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("restore")
def restore(ctx: Context, server: str | None, whole_group: bool, mark_name: str | None,
            port_base: int | None, host: str, target_dir: Path, kind: str, at_time: str | None,
            point_name: str | None, lsn: str | None, xid: str | None, immediate: bool,
            exclusive: bool, action: str, resume: bool, advance: bool, set_id: str | None,
            start: bool, port: int | None, settings: tuple[str, ...],
            tablespace_map: tuple[str, ...], as_json: bool) -> None:
    """Restore one server (to the latest point, a time, a name, an LSN, an xid or the
    backup's consistency point) or the group (to a mark); promote a paused one or move it
    on."""
    from markship import names
    from markship.backup.restore import restore_server
    from markship.config.tablespacemap import parse_mapping

    if mark_name is not None:
        names.check_restore_point(mark_name, "mark name (--mark)")
    if point_name is not None:
        names.check_restore_point(point_name, "restore point name (--name)")
    if set_id is not None:
        names.check(set_id, "backup set id (--set)")
    targets = [flag for flag, given in (("--time", at_time), ("--name", point_name),
                                        ("--lsn", lsn), ("--xid", xid),
                                        ("--immediate", immediate)) if given]
    if not whole_group and mark_name is not None:
        targets.append("--mark")
    if len(targets) > 1:
        raise MarkshipError(f"{' and '.join(targets)} are two recovery targets",
                            "give exactly one of --latest, --time, --name (--mark), --lsn, "
                            "--xid, --immediate")
    if resume:
        if targets or advance or server or set_id or start or port or settings \
                or tablespace_map:
            raise MarkshipError("--resume takes only --target-dir (and --group, --json)",
                                "run markship restore --resume --target-dir DIR")
        _resume(ctx, target_dir, whole_group, as_json)
        return
    if whole_group:
        if server or targets or set_id or port or advance or exclusive:
            raise click.UsageError("--group takes --mark, --target-dir, --port-base, --host, "
                                   "--action")
        if port_base is None:
            raise click.UsageError("--group needs --port-base")
        mapping = parse_mapping(tablespace_map, per_server=True)
        _restore_group(ctx, mark_name, str(target_dir), port_base, host, action, mapping,
                       as_json)
        ctx.note(group="all servers", into=target_dir, action=action)
        return
    target = _target(at_time, point_name or mark_name, lsn, xid, immediate, exclusive, action)
    if advance:
        if not target.stops or target.kind == "immediate":
            raise MarkshipError("--advance-to needs a later target",
                                "add --time, --name, --mark, --lsn or --xid")
        if server or set_id or start or port or settings or tablespace_map:
            raise MarkshipError("--advance-to takes a target and --target-dir only",
                                "the server, port and settings are the restore's own")
        _advance(ctx, target_dir, target, as_json)
        return
    if not server:
        raise click.UsageError("give --server NAME, or --group")
    extra: dict[str, str] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--setting")
        extra[key.strip()] = value.strip()
    mapping = parse_mapping(tablespace_map)
    config = ctx.config
    config.server(server)
    repo = ctx.repository(fallback=True)
    _warn_reading_copies(repo)
    with progress.shown("restore", as_json) as on_progress:
        result = restore_server(config, repo, server, target_dir, target, set_id=set_id,
                                start=start, port=port, extra_settings=extra,
                                on_progress=on_progress, tablespace_map=mapping)
    ctx.note(server=server, set=result.set_id, target=target.describe(), into=target_dir,
             action=action)
    output.writer(as_json).restore(server, result.target, result)


def _target(at_time: str | None, point_name: str | None, lsn: str | None, xid: str | None,
            immediate: bool, exclusive: bool, action: str) -> Target:
    """The one recovery target the options give, checked; one line for a bad value."""
    from markship.backup.targets import Target
    from markship.pg.lsn import parse_lsn
    from markship.timefmt import parse_aware

    inclusive = not exclusive
    if exclusive and not (at_time or lsn or xid):
        raise MarkshipError("--exclusive applies to a --time, --lsn or --xid target",
                            "drop --exclusive, or give one of those targets")
    if at_time:
        try:
            return Target("time", time=parse_aware(at_time), inclusive=inclusive,
                          action=action)
        except ValueError as exc:
            raise MarkshipError(f"--time: {exc}",
                                "write it with a zone, e.g. 2026-11-25T19:02:11Z") from None
    if point_name:
        return Target("name", name=point_name, action=action)
    if lsn:
        try:
            return Target("lsn", lsn=parse_lsn(lsn), inclusive=inclusive, action=action)
        except ValueError:
            raise MarkshipError(f"--lsn {lsn!r} is not an LSN",
                                "write it as PostgreSQL does: two hex numbers, e.g. "
                                "0/3000060 (pg_current_wal_lsn())") from None
    if xid is not None:
        if not xid.isdigit() or not 0 < int(xid) < 1 << 64:
            raise MarkshipError(f"--xid {xid!r} is not a transaction id",
                                "give a positive integer, e.g. what txid_current() returned")
        return Target("xid", xid=int(xid), inclusive=inclusive, action=action)
    if immediate:
        return Target("immediate", action=action)
    if action != "promote":
        raise MarkshipError(f"--action {action} needs a recovery target: the end of the "
                            "archive is none", "add --time, --name, --lsn, --xid or --immediate")
    return Target("latest")


def _resume(ctx: Context, target_dir: Path, whole_group: bool, as_json: bool) -> None:
    from markship import osuser
    from markship.backup.group_restore import resume_group
    from markship.backup.paused import resume

    # The restore's OS user: it owns the data directory, and pg_ctl refuses to run as root.
    osuser.switch_to(ctx.config.repository.os_user)
    if whole_group:
        report = resume_group(ctx.config, str(target_dir))
        ctx.note(group="all servers", resumed=target_dir)
        output.writer(as_json).restore_group(report, "")
        return
    result = resume(ctx.config, target_dir)
    ctx.note(server=result.server, resumed=target_dir)
    output.writer(as_json).restore_paused(result)


def _advance(ctx: Context, target_dir: Path, target: Target, as_json: bool) -> None:
    from markship.backup.paused import advance

    result = advance(ctx.config, ctx.repository(fallback=True), target_dir, target)
    ctx.note(server=result.server, advanced=target_dir, target=result.target)
    output.writer(as_json).restore_paused(result)


def _restore_group(ctx: Context, mark_name: str | None, template: str, port_base: int,
                   host: str, action: str, tablespace_map: dict[str, str],
                   as_json: bool) -> None:
    from markship.backup.group_restore import restore_group

    config = ctx.config
    repo = ctx.repository(fallback=True)
    _warn_reading_copies(repo)
    with progress.shown("restore", as_json) as on_progress:
        report = restore_group(config, repo, mark_name, template, port_base, host, on_progress,
                               action, tablespace_map)
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
