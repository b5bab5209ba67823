"""The DR site: `markship standby`, `failover`, `checklist`, `parity` and `failback`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from markship.cli import output, progress
from markship.cli.context import Context, journaled, pass_context
from markship.errors import MarkshipError


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
    with progress.shown("standby create", as_json=False) as on_progress:
        results = create_standbys(config, ctx.repository(fallback=True), names, on_progress)
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

    result = standby_status(ctx.config, ctx.repository(fallback=True))
    output.writer(as_json).standby_status(result)
    if not all(s.reachable for s in result):
        sys.exit(1)


@click.command()
@click.option("--mark", "mark_name", metavar="NAME",
              help="Fail over to this mark (default: the newest complete one).")
@click.option("--dry-run", is_flag=True, help="Say which mark and what would be lost; change "
              "nothing.")
@click.option("--force", is_flag=True, help="Go on although a production server still answers.")
@click.option("--new-config", type=click.Path(path_type=Path, resolve_path=True, dir_okay=False),
              help="Where to write the role-swapped config (default: NAME.SITE.toml beside "
                   "the config, or the group's own file on a return trip).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def failover(ctx: Context, mark_name: str | None, dry_run: bool, force: bool,
             new_config: Path | None, as_json: bool) -> None:
    """Bring every standby to one mark, promote, settle 2PC, update references; the new
    primaries archive at once, and the role-swapped config is written."""
    from markship.dr.failover import failover as run_failover

    config = ctx.config
    try:
        report = run_failover(config, ctx.repository(fallback=True), mark_name, dry_run, force,
                              new_config)
    except MarkshipError as exc:
        if not dry_run:
            ctx.journal("failover", f"failed: {exc.message}")
        raise
    if not dry_run:
        ctx.note(mark=report.mark, rto_s=f"{report.rto_seconds:.1f}",
                 rpo_s=f"{report.rpo_seconds:.1f}", site=report.site,
                 new_config=report.new_config)
        ctx.journal("failover", "ok" if report.protected else
                    "ok: promoted, but " + "; ".join(a.line() for a in report.archiving
                                                     if not a.ok))
    output.writer(as_json).failover(report, dry_run)


@click.command("checklist")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def checklist_cmd(ctx: Context, as_json: bool) -> None:
    """Every step of the disaster-recovery checklist, checked live: ✓ with the evidence,
    ✗ with the command that fixes it, — when not used. Non-zero exit on any ✗."""
    from markship.dr.checklist import MISSING, checklist

    # Read from a copy while the repository is gone (the DR site's view); the steps about
    # writing check the repository itself.
    steps = checklist(ctx.config, ctx.repository(fallback=True))
    output.writer(as_json).checklist(steps)
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
    output.writer(as_json).parity(report)
    if not report.ok:
        sys.exit(1)


@click.group("failback")
def failback_group() -> None:
    """Switch roles back after a failover."""


@failback_group.command("prepare")
@click.option("--new-config", type=click.Path(path_type=Path, resolve_path=True),
              help="Only after a failover that wrote no config (older markship): run with the "
                   "config from before it, and write the role-swapped one here.")
@pass_context
@journaled("failback prepare")
def failback_prepare(ctx: Context, new_config: Path | None) -> None:
    """Run with the config the failover wrote: a new backup set of the new primaries, and the
    old site rebuilt as their standbys."""
    from markship.dr.failback import prepare

    report = prepare(ctx.config, ctx.repository(), new_config)
    if report.archiving_enabled:
        click.echo(f"✓ archiving turned on for {', '.join(report.archiving_enabled)}")
    click.echo(f"✓ backup set {report.backup_set} of the new primaries")
    for name, where in report.standbys.items():
        click.echo(f"  standby of {name}: {where}")
    click.echo(f"✓ the old site follows; `markship --config {report.config} failover` "
               "switches back to it")


COMMANDS = [standby_group, failover, checklist_cmd, parity_cmd, failback_group]
