"""Command-line interface: parse, call the library, format the result (table or --json)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click

from markship import __version__
from markship.cli.context import Context, _size, _table, emit_json, journaled, pass_context
from markship.config.model import Config
from markship.errors import MarkshipError, RepositoryError
from markship.repository.fs import FsRepository
from markship.timefmt import show


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar=None,
              help="Config file (default: $MARKSHIP_CONFIG, else ./markship.toml).")
@click.version_option(__version__, prog_name="markship")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Keep a group of PostgreSQL servers recoverable to one common point."""
    ctx.obj = Context(config_path)


# -- configuration --------------------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_context
def config_check(ctx: Context) -> None:
    """Validate the config, connect to every server, check the repository is writable."""
    from markship.pg import sql

    config = ctx.config
    click.echo(f"✓ {config.source}: valid ({len(config.servers)} servers, group "
               f"{config.group.name})")
    repo = ctx.repository()
    repo.check_writable()
    click.echo(f"✓ repository {repo.location} is writable by this user")
    failed: list[str] = []
    for server in config.servers:
        try:
            with sql.connect(server.conninfo, server.name) as conn:
                facts = sql.facts(conn)
            archiving = "archive_mode on" if facts.archive_mode != "off" else "archive_mode OFF"
            mark = "✓" if facts.archive_mode != "off" else "✗"
            click.echo(f"{mark} server {server.name}: PostgreSQL {facts.version}, {archiving}")
            if facts.archive_mode == "off":
                failed.append(f"archive_mode is off on server {server.name}")
        except MarkshipError as exc:
            click.echo(f"✗ server {server.name}: {exc.message}")
            failed.append(exc.message)
    if failed:
        raise MarkshipError(f"config check failed: {failed[0]}"
                            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                            "fix the servers marked ✗ above")


# -- backup, list, status, verify -----------------------------------------------------------------


@cli.command()
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
    if as_json or not sys.stderr.isatty():
        result = run_backup(config, repo, chosen)
    else:
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(),
                      TimeRemainingColumn(), transient=True) as bar:
            tasks = {s.name: bar.add_task(s.name, total=None) for s in chosen}

            def progress(name: str, done: int, total: int) -> None:
                bar.update(tasks[name], completed=done, total=total)

            result = run_backup(config, repo, chosen, progress)
    ctx.note(set=result.record.id)
    if as_json:
        emit_json({"set": result.record.model_dump(mode="json"),
                   "backups": {k: v.model_dump(mode="json") for k, v in result.backups.items()}})
    else:
        for name, rec in result.backups.items():
            ratio = rec.raw_size / rec.archive.size if rec.archive.size else 0
            seconds = (rec.finished_at - rec.started_at).total_seconds()
            click.echo(f"✓ {name}: {_size(rec.raw_size)} → {_size(rec.archive.size)} "
                       f"({ratio:.1f}×) in {seconds:.1f} s")
        click.echo(f"backup set {result.record.id} complete")
    # Warnings go to stderr with --json too: they must not be missed by scripts' logs.
    for what, problem in result.record.errors.items():  # file sets; the databases are fine
        click.echo(f"markship: warning: {what} not captured: {problem}", err=True)
    _warn_key_backup(config, repo)


def _warn_key_backup(config: Config, repo: FsRepository) -> None:
    """Say it every time while the encryption key has no recorded backup."""
    from markship.repository.keys import backup_warning

    warning = backup_warning(config, repo)
    if warning:
        click.echo(f"markship: warning: {warning}", err=True)


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def list_sets(ctx: Context, as_json: bool) -> None:
    """Backup sets with times, sizes, compression ratio and completeness."""
    from markship.repository import catalog, restorable

    repo = ctx.repository()
    wal: dict[str, restorable.WalIndex] = {}
    states = [restorable.set_state(repo, r, wal) for r in catalog.list_sets(repo)]
    if as_json:
        emit_json([{
            "id": s.record.id, "state": s.label, "complete": s.complete,
            "created_at": s.record.created_at, "finished_at": s.record.finished_at,
            "servers": s.record.servers, "problems": s.problems,
            "raw_bytes": sum(b.raw_size for b in s.backups.values()),
            "stored_bytes": sum(b.archive.size for b in s.backups.values()),
            "backups": {k: b.model_dump(mode="json") for k, b in s.backups.items()},
        } for s in states])
        return
    rows = []
    for s in states:
        raw = sum(b.raw_size for b in s.backups.values())
        stored = sum(b.archive.size for b in s.backups.values())
        rows.append([s.record.id, show(s.record.created_at), ", ".join(s.record.servers),
                     _size(raw), _size(stored), f"{raw / stored:.1f}×" if stored else "-",
                     s.label if s.complete else f"{s.label}: {'; '.join(s.problems)}"])
    if not rows:
        click.echo("no backup sets yet: run markship backup")
        return
    _table("backup sets (times in UTC)", ["set", "created", "servers", "data", "stored",
                                          "ratio", "state"], rows)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Per server: last backup, archived WAL, archive lag and archiver failures."""
    from markship.backup.status import group_status
    from markship.marks.choose import newest_complete

    config = ctx.config
    repo = ctx.repository()
    result = group_status(config, repo)
    problems = [f"{s.server}: {s.repository_error}" for s in result if s.repository_error]
    try:
        newest = newest_complete(repo, config)
    except RepositoryError as exc:  # a server's WAL folder cannot be read
        newest = None
        problems.append(f"the newest complete mark cannot be told: {exc.one_line()}")
    from markship.repository.keys import backup_warning

    key_warning = backup_warning(config, repo)
    if as_json:
        emit_json({"servers": [asdict(s) | {"healthy": s.healthy} for s in result],
                   "latest_complete_mark": None if newest is None else {
                       "name": newest.record.name, "created_at": newest.record.created_at,
                       "age_seconds": round(newest.age_seconds, 3)},
                   "warnings": [key_warning] if key_warning else [],
                   "problems": problems})
    else:
        rows = []
        for s in result:
            failures = (f"{s.archiver_failed_count} (last {s.last_failed_wal} at "
                        f"{show(s.last_failed_at)})" if s.archiver_failed_count else "0")
            lag = (f"{_size(s.archive_lag_bytes)} / {s.archive_lag_seconds:.0f} s"
                   if s.archive_lag_bytes is not None and s.archive_lag_seconds is not None
                   else _size(s.archive_lag_bytes))
            rows.append([s.server, "up" if s.reachable else f"DOWN: {s.error}",
                         f"{s.last_backup_set or 'none'} ({show(s.last_backup_at)})",
                         f"{s.last_archived_wal or '-'} ({show(s.last_archived_at)})",
                         lag, failures if s.reachable else "-"])
        _table("group status (times in UTC)", ["server", "state", "last backup",
                                               "last archived WAL", "archive lag", "failures"],
               rows)
        if newest is None:
            click.echo("latest complete mark: none (run markship mark)")
        else:
            click.echo(f"latest complete mark: {newest.record.name}, made "
                       f"{show(newest.record.created_at)}, {newest.age_seconds:.0f} s ago "
                       "(the group's current recovery point)")
        if key_warning:
            click.echo(f"markship: warning: {key_warning}", err=True)
        for problem in problems:
            click.echo(f"✗ {problem}")
    if problems or not all(s.reachable for s in result):
        sys.exit(1)


@cli.command()
@click.argument("set_id", required=False, metavar="[SET]")
@click.option("--clean-temp", is_flag=True,
              help="Delete temp objects whose writer has died (partly written objects).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def verify(ctx: Context, set_id: str | None, clean_temp: bool, as_json: bool) -> None:
    """Re-read every object against its checksum and check WAL continuity."""
    from markship import names
    from markship.backup.verify import verify as run_verify

    if set_id is not None:
        names.check(set_id, "backup set id")
    report = run_verify(ctx.repository(), set_id, clean_temp)
    if as_json:
        emit_json(asdict(report) | {"ok": report.ok})
    else:
        click.echo(f"checked {report.objects_checked} objects ({_size(report.bytes_checked)})")
        for line in report.problems:
            click.echo(f"✗ {line}")
        for problem in report.damaged_records.values():
            click.echo(f"✗ damaged record: {problem}: {report.damaged_fix}")
        for sid, reasons in report.unrestorable_sets.items():
            click.echo(f"✗ backup set {sid} is not restorable: {'; '.join(reasons)}")
        for sid, reasons in report.incomplete_sets.items():
            click.echo(f"- backup set {sid} is incomplete and ignored: {'; '.join(reasons)}")
        for key in report.temp_objects:
            state = "removed" if key in report.removed_temp else "left by a dead writer"
            click.echo(f"! partly written object {key} ({state}; never used as data)")
        if report.ok:
            click.echo("✓ every object matches its checksum and the WAL is continuous")
    if not report.ok:
        raise MarkshipError("verify found problems (listed above)",
                            "take a new backup with markship backup; keep the bad objects for "
                            "inspection")


# -- restore --------------------------------------------------------------------------------------


@cli.command()
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
    repo = ctx.repository()
    result = restore_server(config, repo, server, target_dir, target, set_id=set_id,
                            start=start, port=port, extra_settings=extra)
    ctx.note(server=server, set=result.set_id, target=target.describe(), into=target_dir)
    if as_json:
        emit_json(asdict(result))
        return
    state = "started and promoted" if result.started else "ready to start (pg_ctl start)"
    click.echo(f"✓ {server} restored from backup set {result.set_id} into {result.target_dir}, "
               f"recovering to {target.describe()}; {state} in {result.seconds:.1f} s")


@cli.command()
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
            retention.execute(repo, result)
    if not dry_run:
        ctx.note(deleted_sets=",".join(result.delete_sets) or "none",
                 deleted_objects=len(result.delete_keys))
        ctx.journal("expire", "ok")
    if as_json:
        emit_json(asdict(result) | {"dry_run": dry_run})
        return
    verb = "would delete" if dry_run else "deleted"
    for sid, why in result.keep_sets.items():
        click.echo(f"keep   set {sid}: {why}")
    for sid, why in result.delete_sets.items():
        click.echo(f"{verb} set {sid}: {why}")
    if result.wal_kept:
        click.echo(f"keep   all WAL: {result.wal_kept}")
    for server, count in result.delete_wal.items():
        click.echo(f"{verb} {count} WAL file(s) of {server} older than its oldest kept backup")
    if result.delete_captures or result.delete_dumps:
        click.echo(f"{verb} {len(result.delete_captures)} file set capture(s) and "
                   f"{len(result.delete_dumps)} dump(s) older than the window")
    if result.delete_marks:
        click.echo(f"{verb} {len(result.delete_marks)} mark(s) older than "
                   f"{show(result.cutoff)} or than the oldest kept set")
    click.echo(f"{verb} {len(result.delete_keys)} object(s), {_size(result.freed_bytes)}")


@cli.command("run")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line.")
@pass_context
def run_agent(ctx: Context, log_json: bool) -> None:
    """The agent: marks every interval, full backups on schedule, retention after backups."""
    from markship.agent.log import EventLog
    from markship.agent.loop import Agent, marking_thread

    config = ctx.config
    log = EventLog(as_json=log_json)
    marker = marking_thread(config, log)  # made before markship becomes os_user
    Agent(config, ctx.repository(), log, config_path=str(ctx.config_path), marker=marker).run()


def _restore_group(ctx: Context, mark_name: str | None, template: str, port_base: int,
                   host: str, as_json: bool) -> None:
    from markship.backup.group_restore import restore_group
    from markship.pg.conninfo import without_secrets

    config = ctx.config
    report = restore_group(config, ctx.repository(), mark_name, template, port_base, host)
    if as_json:
        shown = asdict(report)
        for info in shown["servers"].values():  # for a script to connect, less the secrets
            info["conninfo"] = without_secrets(info["conninfo"])
        emit_json(shown)
        return
    for name, info in report.servers.items():
        click.echo(f"  {name}: {info['data_dir']} on {host}:{info['port']}, at "
                   f"{info['mark_lsn']}")
    for r in report.resolutions:
        click.echo(f"  {r.server}/{r.database}: {r.action} prepared transaction {r.gid}")
    click.echo(f"✓ group restored to mark {report.mark} in {report.seconds:.1f} s")


# -- marks ----------------------------------------------------------------------------------------


@cli.command()
@click.option("--name", metavar="NAME", help="Mark name (default: ms-GROUP-UTCTIME); never reuse.")
@click.option("--no-switch", is_flag=True,
              help="Neither wait for the WAL receiver nor switch WAL after the mark (it "
                   "completes when its segment is archived).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("mark")
def mark(ctx: Context, name: str | None, no_switch: bool, as_json: bool) -> None:
    """Lay a group mark: the same restore point on every server, under the barrier.

    When the agent (markship run) is running, it makes the mark: the command only asks."""
    from markship import names
    from markship.marks import priority
    from markship.marks.take import GroupConnections, result_json, result_line, take_mark

    if name is not None:
        names.check_restore_point(name, "mark name (--name)")
    config = ctx.config
    if config.marks.nice:
        priority.set_for_thread(config.marks.nice)  # as the agent does; best effort here
    repo = ctx.repository()
    conns = GroupConnections(config)
    try:
        result = take_mark(config, repo, conns, name, switch_wal=not no_switch)
    finally:
        conns.close()
    ctx.note(mark=result.record.name)
    if as_json:
        emit_json(result_json(result, "command"))
    else:
        click.echo(result_line(result))


@cli.command()
@click.option("--limit", default=100, show_default=True,
              help="Show the newest N marks (0: all of them).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def marks(ctx: Context, limit: int, as_json: bool) -> None:
    """Group marks with their completeness (WAL archived on every server) and age."""
    from markship.marks.choose import mark_states
    from markship.pg.lsn import format_lsn

    config = ctx.config
    states = mark_states(ctx.repository(), config, newest=limit or None)
    if as_json:
        emit_json([s.record.model_dump(mode="json") | {
            "complete": s.complete, "waiting_for": s.waiting_for,
            "age_seconds": round(s.age_seconds, 3)} for s in states])
        return
    if not states:
        click.echo("no marks yet: run markship mark")
        return
    rows = [[s.record.name, show(s.record.created_at), f"{s.age_seconds:.0f} s",
             "complete" if s.complete else "waiting for " + ", ".join(
                 f"{k}:{v}" for k, v in s.waiting_for.items()),
             ", ".join(f"{k} {format_lsn(p.lsn)}" for k, p in s.record.points.items()),
             f"{s.record.barrier_hold_ms:.1f} ms"] for s in states]
    _table("group marks (times in UTC)", ["mark", "made", "age", "state", "LSN per server",
                                         "barrier held"], rows)


@cli.command()
@click.option("--server", "servers", multiple=True, required=True, metavar="NAME=CONNINFO",
              help="A restored server and how to reach it (repeat for every server).")
@click.option("--decisions", required=True, metavar="NAME",
              help="Which of them holds the decision table (the barrier server).")
@click.option("--dry-run", is_flag=True, help="Show what would be done.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def resolve(servers: tuple[str, ...], decisions: str, dry_run: bool, as_json: bool) -> None:
    """Settle prepared transactions on restored servers from the recorded decisions."""
    from markship.marks.resolve import resolve_in_doubt

    participants: dict[str, str] = {}
    for item in servers:
        name, sep, conninfo = item.partition("=")
        if not sep or not name or not conninfo:
            raise click.BadParameter(f"{item!r} is not NAME=CONNINFO", param_hint="--server")
        participants[name] = conninfo
    if decisions not in participants:
        raise click.BadParameter(f"{decisions!r} is not one of the --server names",
                                 param_hint="--decisions")
    done = resolve_in_doubt(participants, decisions, dry_run)
    if as_json:
        emit_json([asdict(r) for r in done])
        return
    for r in done:
        verb = ("would " if dry_run else "") + ("commit" if r.action == "commit" else "roll back")
        click.echo(f"{r.server}/{r.database}: {verb} {r.gid}")
    click.echo(f"{len(done)} prepared transaction(s) {'to settle' if dry_run else 'settled'}")


@cli.command("client-sql")
@pass_context
def client_sql(ctx: Context) -> None:
    """Print the SQL of the two-phase commit protocol (decision table, barrier key)."""
    from markship.client import SETUP_SQL, barrier_key

    key = barrier_key(ctx.config.group.name)
    click.echo(f"-- on the barrier server ({ctx.config.barrier_server.name}), once:{SETUP_SQL}")
    click.echo(f"""-- per cross-server commit, after PREPARE TRANSACTION 'gid' on each participant:
SELECT pg_advisory_lock_shared({key});            -- on the barrier server
INSERT INTO markship.decisions (gid) VALUES ('gid');  -- committed on its own
COMMIT PREPARED 'gid';                                -- on every participant
SELECT pg_advisory_unlock_shared({key});          -- on the barrier server""")


# -- DR site ---------------------------------------------------------------------------------------


@cli.group("journal", invoke_without_command=True)
@click.option("--since", metavar="TIME", help="Only entries from TIME on (with a zone).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def journal_group(click_ctx: click.Context, since: str | None, as_json: bool) -> None:
    """The written record: every change markship made, hash-chained in the repository."""
    if click_ctx.invoked_subcommand is not None:
        return
    from markship.repository import journal
    from markship.timefmt import parse_aware

    try:
        start = parse_aware(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    ctx = click_ctx.find_object(Context)
    assert ctx is not None
    found = journal.entries(ctx.repository(), start)
    if as_json:
        emit_json([e.model_dump(mode="json") for e in found])
        return
    for entry in found:
        objects = " ".join(f"{k}={v}" for k, v in entry.objects.items())
        click.echo(f"{entry.seq:>6} {show(entry.time)} {entry.user}@{entry.host} "
                   f"{entry.command}: {entry.outcome}{'  ' + objects if objects else ''}")
        if entry.diff:
            for line in entry.diff.splitlines():
                click.echo(f"         {line}")


@journal_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def journal_verify(ctx: Context, as_json: bool) -> None:
    """Check the journal's hash chain; name the first removed, reordered or altered entry."""
    from markship.repository import journal

    result = journal.verify(ctx.repository())
    if as_json:
        emit_json({"entries": result.entries, "ok": result.ok, "problem": result.problem})
    elif result.ok:
        click.echo(f"✓ journal intact: {result.entries} entries, chain unbroken")
    if not result.ok:
        raise MarkshipError(f"journal broken: {result.problem}",
                            "compare with the DR site's copy of the repository; the entries "
                            "before it are intact")


@cli.group("standby")
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


@cli.command()
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


@cli.command("checklist")
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


@cli.command("parity")
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


@cli.group("failback")
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


# -- WAL commands (lean path in markship._entry; declared here for help and docs) -----------------


@cli.command("wal-push", context_settings={"ignore_unknown_options": True})
@click.option("--server", required=True, metavar="NAME")
@click.argument("path")
@pass_context
def wal_push(ctx: Context, server: str, path: str) -> None:
    """archive_command: store one WAL file (%p) in the repository, compressed and checksummed."""
    from markship.wal import command

    sys.exit(command.main("wal-push", ["--server", server, path], ctx.config_path))


@cli.command("wal-fetch")
@click.option("--server", required=True, metavar="NAME")
@click.argument("segment")
@click.argument("dest")
@pass_context
def wal_fetch(ctx: Context, server: str, segment: str, dest: str) -> None:
    """restore_command: write archived WAL file SEGMENT (%f) to DEST (%p); exit 1 if absent."""
    from markship.wal import command

    sys.exit(command.main("wal-fetch", ["--server", server, segment, dest], ctx.config_path))


# -- demo -----------------------------------------------------------------------------------------


@cli.command()
@click.option("--servers", default=3, show_default=True, type=click.IntRange(2, 3),
              help="How many throwaway servers.")
@click.option("--keep", is_flag=True, help="Keep the demo directory and stop servers only.")
def demo(servers: int, keep: bool) -> None:
    """Throwaway servers, 2PC workload, backup, marks, standbys, disaster, group failover."""
    from markship.cli.demo import run_demo

    run_demo(servers, keep)


def run(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    try:
        cli.main(args=argv, prog_name="markship", standalone_mode=False)
    except MarkshipError as exc:
        click.echo(f"markship: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("markship: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("markship: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


def _register_groups() -> None:
    """Commands kept in their own modules (each a click command or group named *_COMMANDS)."""
    from markship.cli import drill as drill_cli
    from markship.cli import keys as keys_cli
    from markship.cli import preflight as preflight_cli
    from markship.cli.dumps import dumps_group
    from markship.cli.files import files_group

    cli.add_command(files_group)
    cli.add_command(dumps_group)
    for module in (preflight_cli, drill_cli, keys_cli):
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_register_groups()
