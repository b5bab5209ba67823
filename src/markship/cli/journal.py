"""`markship journal` and `markship journal verify`: the written record of every change."""

from __future__ import annotations

import click

from markship.cli import output
from markship.cli.context import Context, pass_context
from markship.errors import MarkshipError


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
    output.writer(as_json).journal(found)


@journal_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def journal_verify(ctx: Context, as_json: bool) -> None:
    """Check the journal's hash chain; name the first removed, reordered or altered entry."""
    from markship.repository import journal

    result = journal.verify(ctx.repository())
    output.writer(as_json).journal_verify(result)
    if not result.ok:
        raise MarkshipError(f"journal broken: {result.problem}",
                            "compare with the DR site's copy of the repository; the entries "
                            "before it are intact")


COMMANDS = [journal_group]
