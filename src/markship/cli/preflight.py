"""`markship preflight` command (see markship.dr.preflight)."""

from __future__ import annotations

import click

from markship.cli import output
from markship.cli.context import Context, pass_context
from markship.errors import ConfigError, MarkshipError


@click.command()
@click.option("--server", "servers", multiple=True, metavar="NAME",
              help="Check only this server (repeatable). Default: every server.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--print-role-sql", is_flag=True,
              help="Print the SQL creating a least-privilege `markship` role, and exit.")
@pass_context
def preflight(ctx: Context, servers: tuple[str, ...], as_json: bool,
              print_role_sql: bool) -> None:
    """Check that every server, its role, the repository and the key files are ready.

    One line per check, ✓ or ✗ with the fix (! for a warning); the exit status is non-zero
    when any check failed. Connects with each server's conninfo exactly as markship does, and
    tests the repository and files as [repository] os_user (switching to it when run as root).
    """
    from markship import osuser
    from markship.config import file
    from markship.dr import preflight as checks_mod

    if print_role_sql:
        from markship.dr.rolesql import role_sql

        try:
            file.locate(ctx.config_path)
        except ConfigError:
            click.echo(role_sql(None), nl=False)  # no config: the generic role
            return
        click.echo(role_sql(ctx.config), nl=False)
        return
    config = ctx.config
    chosen = config.select(servers)
    osuser.switch_to(config.repository.os_user)
    results = checks_mod.run_checks(config, chosen)
    failed = [c for c in results if c.status == "fail"]
    output.writer(as_json).preflight(results)
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise MarkshipError(f"preflight failed: {failed[0].scope}: {failed[0].message}{more}",
                            "fix the checks marked ✗")


COMMANDS = [preflight]
