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


COMMANDS = [config_group]
