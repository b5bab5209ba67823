"""`markship dumps …`: logical dumps of stores that WAL shipping does not cover."""

from __future__ import annotations

import time

import click

from markship.cli import output
from markship.cli.context import Context, journaled, pass_context
from markship.errors import MarkshipError


@click.group("dumps")
def dumps_group() -> None:
    """Logical dumps (pg_dump -Fc) of databases not covered by WAL shipping."""


@dumps_group.command("run")
@click.option("--dump", "names", multiple=True, metavar="NAME",
              help="Dump only this [[dump]] (repeatable; default: every one).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("dumps run")
def dumps_run(ctx: Context, names: tuple[str, ...], as_json: bool) -> None:
    """Dump the configured databases now (pg_dump -Fc into the repository)."""
    from markship.backup.dumps import run_dump

    config = ctx.config
    if not config.dumps:
        raise MarkshipError("the config has no [[dump]] tables",
                            'add one: [[dump]] server = "NAME" database = "DB"')
    configured = {d.dump_name: d for d in config.dumps}
    unknown = [n for n in names if n not in configured]
    if unknown:
        raise MarkshipError(f"unknown dump {unknown[0]!r} (configured: "
                            f"{', '.join(configured)})",
                            "use the name of a [[dump]] table (name = …, default "
                            "SERVER-DATABASE)")
    chosen = [configured[n] for n in dict.fromkeys(names)] if names else list(config.dumps)
    repo = ctx.repository()
    out = output.writer(as_json)
    done: list[dict[str, object]] = []
    failed: list[str] = []
    for dump in chosen:
        started = time.monotonic()
        try:
            record = run_dump(config, repo, dump)
        except MarkshipError as exc:
            failed.append(dump.dump_name)
            out.dump_failed(dump.dump_name, exc.one_line())
            continue
        seconds = time.monotonic() - started
        done.append({**record.model_dump(), "seconds": round(seconds, 3)})
        out.dump_done(record, seconds)
    out.dumps_run(done, failed)
    if failed:
        raise MarkshipError(f"{len(failed)} of {len(chosen)} dumps failed: {', '.join(failed)}",
                            "the lines above say why; no record was written for them")


@dumps_group.command("list")
@click.option("--dump", "name", metavar="NAME", help="Only the dumps of this name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def dumps_list(ctx: Context, name: str | None, as_json: bool) -> None:
    """Recorded dumps: name, time (UTC), server/database, the mark before it, size."""
    from markship import names
    from markship.backup.dumps import list_dumps

    if name is not None:
        names.check(name, "dump name (--dump)")
    dumps = list_dumps(ctx.repository(), name)
    output.writer(as_json).dumps_list(dumps, name)


@dumps_group.command("restore")
@click.option("--dump", "name", required=True, metavar="NAME", help="The dump's name.")
@click.option("--at", "at_text", metavar="TIME",
              help="The newest dump made at or before TIME, with a zone "
                   "(2026-11-25T19:30:00Z); default: the newest.")
@click.option("--conninfo", required=True, metavar="CONNINFO",
              help="The existing (empty) database to restore into, e.g. "
                   "'host=… port=… dbname=analytics_restored'. Give its password through "
                   "PGPASSWORD or ~/.pgpass: every local user can read a command line.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("dumps restore")
def dumps_restore(ctx: Context, name: str, at_text: str | None, conninfo: str,
                  as_json: bool) -> None:
    """Restore a dump into an existing database with pg_restore (all or nothing)."""
    from markship import names
    from markship.backup.dumps import choose, restore_dump
    from markship.pg.conninfo import has_secret
    from markship.timefmt import parse_aware

    names.check(name, "dump name (--dump)")
    if has_secret(conninfo):
        click.echo("markship: warning: --conninfo carries a password, which every local user "
                   "could read from this command line: use PGPASSWORD or ~/.pgpass next time",
                   err=True)
    try:
        at = parse_aware(at_text) if at_text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None
    config = ctx.config
    repo = ctx.repository(fallback=True)
    record = choose(repo, name, at)
    started = time.monotonic()
    result = restore_dump(config, repo, record, conninfo)
    seconds = time.monotonic() - started
    output.writer(as_json).dumps_restore(record, result, seconds)


COMMANDS = [dumps_group]
