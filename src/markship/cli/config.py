"""`markship config check`: validate the config, reach every server, write to the repository."""

from __future__ import annotations

import click

from markship.cli.context import Context, pass_context
from markship.errors import MarkshipError


@click.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("check")
@pass_context
def config_check(ctx: Context) -> None:
    """Validate the config, connect to every server, check the repository is writable."""
    from markship.pg import programs, sql

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
            too_old = facts.version_num < programs.OLDEST_SUPPORTED
            mark = "✗" if facts.archive_mode == "off" or too_old else "✓"
            # README "Supported PostgreSQL versions": the suite runs against 15 only
            note = ("" if facts.version_num // 10000 == 15 else
                    " (not supported: 13 and later are)" if too_old else " (untested version)")
            click.echo(f"{mark} server {server.name}: PostgreSQL {facts.version}{note}, "
                       f"{archiving}")
            if too_old:
                failed.append(f"server {server.name} runs PostgreSQL {facts.version}, older "
                              "than 13")
            if facts.archive_mode == "off":
                failed.append(f"archive_mode is off on server {server.name}")
        except MarkshipError as exc:
            click.echo(f"✗ server {server.name}: {exc.message}")
            failed.append(exc.message)
    if failed:
        raise MarkshipError(f"config check failed: {failed[0]}"
                            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                            "fix the servers marked ✗ above")


COMMANDS = [config_group]
