"""`markship wal-push` and `wal-fetch`, declared for help and docs.

The console entry (markship._entry) runs both on its lean path, without loading the CLI; these
declarations run them only when the CLI is called directly (`markship.cli.main.run`)."""

from __future__ import annotations

import sys

import click

from markship.cli.context import Context, pass_context


@click.command("wal-push", context_settings={"ignore_unknown_options": True})
@click.option("--server", required=True, metavar="NAME")
@click.argument("path")
@pass_context
def wal_push(ctx: Context, server: str, path: str) -> None:
    """archive_command: store one WAL file (%p) in the repository, compressed and checksummed."""
    from markship.wal import command

    sys.exit(command.main("wal-push", ["--server", server, path], ctx.config_path))


@click.command("wal-fetch")
@click.option("--server", required=True, metavar="NAME")
@click.argument("segment")
@click.argument("dest")
@pass_context
def wal_fetch(ctx: Context, server: str, segment: str, dest: str) -> None:
    """restore_command: write archived WAL file SEGMENT (%f) to DEST (%p); exit 1 if absent."""
    from markship.wal import command

    sys.exit(command.main("wal-fetch", ["--server", server, segment, dest], ctx.config_path))


COMMANDS = [wal_push, wal_fetch]
