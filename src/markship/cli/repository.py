"""`markship repository sync`: catch the copies of the repository up by hand."""

from __future__ import annotations

import click

from markship.cli import output
from markship.cli.context import Context, pass_context
from markship.errors import MarkshipError


@click.group("repository")
def repository_group() -> None:
    """The repository's copies ([[repository.copy]])."""


@repository_group.command("sync")
@click.option("--copy", "copy_names", multiple=True, metavar="NAME",
              help="Only this copy (repeatable). Default: every copy.")
@click.option("--dry-run", is_flag=True, help="Say how far each copy is behind; copy nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def sync_cmd(ctx: Context, copy_names: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Bring back to the repository what was written to a copy while it was gone, then copy
    to each copy what it lacks, and delete from it what expire deleted (as the agent does
    every few seconds)."""
    from markship.repository.copies import SyncResult, lag, sync
    from markship.repository.owed import owed

    copies = ctx.copies(list(copy_names) or None)
    if not copies:
        raise MarkshipError("the config names no [[repository.copy]]",
                            "add one (name, path or url) to keep a second copy off-site")
    primary = ctx.repository()
    results: list[SyncResult] = []
    failed: dict[str, str] = {}
    for copy in copies:
        try:
            if dry_run:
                behind = lag(primary, copy.repo)
                result = SyncResult(copy.name)
                result.copied_objects, result.copied_bytes = behind.objects, behind.bytes
                result.returned_objects = len(owed(copy.repo))
            else:
                result = sync(primary, copy)
        except MarkshipError as exc:
            failed[copy.name] = exc.one_line()
            continue
        results.append(result)
    output.writer(as_json).repository_sync(results, failed, dry_run)
    conflicts = sum(len(r.conflicts) for r in results)
    problem = None
    if failed:
        problem = MarkshipError(
            f"{len(failed)} of {len(copies)} copies could not be synced ({', '.join(failed)})",
            "see above; make them reachable and retry")
    elif conflicts:
        problem = MarkshipError(
            f"{conflicts} object(s) written to a copy while the repository was gone differ "
            "from the repository's: both are kept (see above)",
            "compare each with its conflicts/<copy>/<key> object and keep the right one")
    if not dry_run:
        ctx.note(copies=",".join(c.name for c in copies),
                 copied=sum(r.copied_objects for r in results),
                 returned=sum(r.returned_objects for r in results),
                 deleted=sum(r.deleted_objects for r in results))
        ctx.journal("repository sync", f"failed: {problem.message}" if problem else "ok")
    if problem:
        raise problem


COMMANDS = [repository_group]
