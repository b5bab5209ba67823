"""`markship drill` and `markship drills` (see markship.dr.drill)."""

from __future__ import annotations

from pathlib import Path

import click

from markship.cli import output, progress
from markship.cli.context import Context, journaled, pass_context
from markship.errors import MarkshipError


@click.command("drill")
@click.option("--mark", "mark_name", metavar="NAME",
              help="Drill this mark (default: the newest complete one).")
@click.option("--check-sql", "check_files", multiple=True, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Checks to run on the restored group (repeatable; format above).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the scratch directory is made (default: $TMPDIR or /tmp); it needs "
                   "room for every server's data.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("drill")
def drill(ctx: Context, mark_name: str | None, check_files: tuple[Path, ...],
          work_dir: Path | None, as_json: bool) -> None:
    """Recovery drill: restore the group to a mark on scratch servers, check it, measure RTO
    and RPO, store a report (drills/ID.json and .md in the repository), remove the servers.

    Production servers and standbys are never contacted. The exit status is non-zero when the
    group did not come up or a check failed; the report is written either way.

    \b
    Check file (--check-sql): one check per line, '#' comments, an indented line continues
    the check above it.
      [TARGETS] SQL           SQL returns one boolean, true, on each target
      SQL                     the same, on every server
      sum(TARGETS): SQL == N  SQL returns one number on each target; the sum must equal N
    TARGETS: server names or * (every server), each optionally /DATABASE, comma-separated.
    Example:
      sum(*): SELECT sum(balance) FROM accounts == 20000
      [alpha/shop] SELECT count(*) = 0 FROM orders WHERE paid IS NULL
    """
    from markship.dr.drill import run_drill
    from markship.dr.drillchecks import CheckFileError, parse_checks
    from markship.pg.datadir import STOP_BY_HAND

    config = ctx.config
    servers = [s.name for s in config.servers]
    checks = []
    for path in check_files:  # read before markship becomes the repository's OS user
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CheckFileError(f"cannot read check file {path}: {exc}") from None
        checks.extend(parse_checks(text, str(path), servers))
    repo = ctx.repository(fallback=True)
    say = None if as_json else click.echo
    with progress.shown("drill restore", as_json) as on_progress:
        record = run_drill(config, repo, checks, mark_name=mark_name, work_dir=work_dir,
                           progress=say, on_progress=on_progress)
    failed = [c for c in record.checks if not c.ok]
    ctx.note(drill=record.id, mark=record.mark, ok=record.ok,
             rto_seconds=record.rto_seconds, rpo_seconds=record.rpo_seconds)
    output.writer(as_json).drill(record, config.repository.location)
    if record.error is not None:
        raise MarkshipError(f"drill {record.id} failed: {record.error}",
                            f"the report drills/{record.id}.md has the details")
    if failed:
        where = ", ".join(f"{c.file}:{c.line}" for c in failed)
        raise MarkshipError(f"drill {record.id} failed: {len(failed)} of {len(record.checks)} "
                            f"checks failed ({where})",
                            f"the report drills/{record.id}.md says why")
    if record.cleanup_problems:
        raise MarkshipError(f"drill {record.id}: cleanup incomplete: "
                            f"{record.cleanup_problems[0]}",
                            f"stop that server by hand ({STOP_BY_HAND})")


@click.command("drills")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def drills(ctx: Context, as_json: bool) -> None:
    """Past recovery drills: when, which mark, RTO, RPO, checks passed, result."""
    from markship.dr.drill import list_drills

    records = list_drills(ctx.repository(fallback=True))
    output.writer(as_json).drills(records)


COMMANDS = [drill, drills]
