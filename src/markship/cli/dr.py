"""The DR site: `markship standby`, `failover`, `checklist`, `parity` and `failback`."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click

from markship.cli.context import Context, _size, _table, emit_json, journaled, pass_context
from markship.errors import MarkshipError
from markship.timefmt import show


@click.group("standby")
def standby_group() -> None:
    """Standbys at the DR site, fed from the repository up to the newest complete mark."""


@standby_group.command("create")
@click.option("--server", "servers", multiple=True, metavar="NAME",
              help="Only the standby of this server (repeatable). Default: every standby.")
@pass_context
@journaled("standby create")
def standby_create(ctx: Context, servers: tuple[str, ...]) -> None:
    """Build each standby from the newest backup and start it in continuous recovery."""
    from markship.dr.standby import create_standbys

    config = ctx.config
    names = list(servers) or [s.server for s in (config.dr_site.standbys if config.dr_site
                                                 else [])]
    for name in names:
        config.standby(name)
    if not names:
        raise MarkshipError("no [dr_site] standbys configured",
                            "add [[dr_site.standby]] entries to the config")
    results = create_standbys(config, ctx.repository(), names)
    ctx.note(servers=",".join(results))
    for name, result in results.items():
        sb = config.standby(name)
        click.echo(f"✓ standby of {name} on {sb.host}:{sb.port} from backup set "
                   f"{result.set_id} ({result.seconds:.1f} s), replaying up to the newest "
                   "complete mark")


@standby_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def standby_status_cmd(ctx: Context, as_json: bool) -> None:
    """Per standby: replayed LSN, the mark it sits at, lag, parity with production."""
    from markship.dr.standby import standby_status
    from markship.pg.lsn import format_lsn

    result = standby_status(ctx.config, ctx.repository())
    if as_json:
        emit_json([asdict(s) for s in result])
    else:
        rows = [[s.server, s.address, ("standby" if s.in_recovery else "PRIMARY")
                 if s.reachable else f"DOWN: {s.error}",
                 format_lsn(s.replay_lsn) if s.replay_lsn is not None else "-",
                 s.at_mark or "-", "-" if s.marks_behind is None else str(s.marks_behind),
                 _size(s.lag_bytes),
                 "-" if s.lag_seconds is None else f"{s.lag_seconds:.0f} s",
                 "ok" if not s.parity else "; ".join(s.parity)] for s in result]
        _table("DR site", ["server", "standby", "state", "replayed", "at mark", "marks behind",
                           "lag", "mark age", "parity"], rows)
    if not all(s.reachable for s in result):
        sys.exit(1)


@click.command()
@click.option("--mark", "mark_name", metavar="NAME",
              help="Fail over to this mark (default: the newest complete one).")
@click.option("--dry-run", is_flag=True, help="Say which mark and what would be lost; change "
              "nothing.")
@click.option("--force", is_flag=True, help="Go on although a production server still answers.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def failover(ctx: Context, mark_name: str | None, dry_run: bool, force: bool,
             as_json: bool) -> None:
    """Bring every standby to one mark, promote, settle 2PC, update references."""
    from markship.dr.failover import failover as run_failover

    config = ctx.config
    try:
        report = run_failover(config, ctx.repository(), mark_name, dry_run, force)
    except MarkshipError as exc:
        if not dry_run:
            ctx.journal("failover", f"failed: {exc.message}")
        raise
    if not dry_run:
        ctx.note(mark=report.mark, rto_s=f"{report.rto_seconds:.1f}",
                 rpo_s=f"{report.rpo_seconds:.1f}")
        ctx.journal("failover", "ok")
    if as_json:
        emit_json(asdict(report))
        return
    head = "would fail over" if dry_run else ("resumed failover" if report.resumed
                                             else "failed over")
    click.echo(f"{head} to mark {report.mark} (made {show(report.mark_time)}, "
               f"{report.rpo_seconds:.0f} s before {'now' if dry_run else 'the failover'})")
    for server, lsn in report.points.items():
        lost = report.discarded_wal.get(server)
        tail = f"; WAL after it up to {lost} is discarded" if lost else ""
        click.echo(f"  {server}: mark at {lsn}{tail}")
    if dry_run:
        return
    for r in report.resolutions:
        click.echo(f"  {r.server}/{r.database}: {r.action} prepared transaction {r.gid}")
    for line in report.references + [f"wrote {f}" for f in report.client_files] + \
            [f"hook ran: {h}" for h in report.hooks]:
        click.echo(f"  {line}")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items())
    click.echo(f"✓ group promoted at {report.mark}: RTO {report.rto_seconds:.1f} s ({phases}); "
               f"RPO {report.rpo_seconds:.1f} s")


@click.command("checklist")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def checklist_cmd(ctx: Context, as_json: bool) -> None:
    """Every step of the disaster-recovery checklist, checked live: ✓ with the evidence,
    ✗ with the command that fixes it, — when not used. Non-zero exit on any ✗."""
    from markship.dr.checklist import MISSING, checklist

    steps = checklist(ctx.config, ctx.repository())
    if as_json:
        emit_json([asdict(s) for s in steps])
    else:
        phase = ""
        for step in steps:
            if step.phase != phase:
                phase = step.phase
                click.echo("Backing up" if phase == "backup" else "\nRestoring")
            fix = f"  → {step.fix}" if step.state == MISSING and step.fix else ""
            click.echo(f"  {step.state} {step.title}: {step.evidence}{fix}")
    if any(s.state == MISSING for s in steps):
        sys.exit(1)


@click.command("parity")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def parity_cmd(ctx: Context, as_json: bool) -> None:
    """Production against the DR site, server by server: standby count, version, settings a
    standby needs at least as high, free disk, CPUs and memory. Mismatches explained."""
    from markship.dr.parity import parity

    report = parity(ctx.config)
    if as_json:
        emit_json({"ok": report.ok, "checks": [asdict(c) for c in report.checks]})
    else:
        for c in report.checks:
            sign = "✓" if c.ok else ("!" if c.warning else "✗")
            tail = f" — {c.fix}" if not c.ok and c.fix else ""
            click.echo(f"{sign} {c.server}: {c.what}: {c.detail}{tail}")
    if not report.ok:
        sys.exit(1)


@click.group("failback")
def failback_group() -> None:
    """Switch roles back after a failover."""


@failback_group.command("prepare")
@click.option("--new-config", required=True, type=click.Path(path_type=Path, resolve_path=True),
              help="Where to write the next generation of the config (roles swapped).")
@pass_context
@journaled("failback prepare")
def failback_prepare(ctx: Context, new_config: Path) -> None:
    """Protect the new primaries (archiving, backup) and rebuild the old site as standbys."""
    from markship.dr.failback import prepare

    report = prepare(ctx.config, ctx.repository(), new_config)
    click.echo(f"✓ new primaries archive into the repository; backup set {report.backup_set}")
    for name, where in report.standbys.items():
        click.echo(f"  standby of {name}: {where}")
    click.echo(f"✓ from now on use --config {report.new_config}; `markship failover` with it "
               "switches back to the old site")


COMMANDS = [standby_group, failover, checklist_cmd, parity_cmd, failback_group]
