"""`markship journal` and `markship journal verify`: the written record of every change."""

from __future__ import annotations

import click

from markship.cli.context import Context, emit_json, pass_context
from markship.errors import MarkshipError
from markship.timefmt import show


@click.group("journal", invoke_without_command=True)
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


COMMANDS = [journal_group]
