"""`markship check`: the monitoring check (see markship.monitor.check)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from markship.cli import output
from markship.cli.context import Context, pass_context
from markship.errors import first_line

if TYPE_CHECKING:
    from markship.monitor.check import CheckResult


@click.command("check")
@click.option("--nagios", is_flag=True,
              help="Monitoring-plugin output: one line `MARKSHIP STATE - …` with perfdata, "
                   "then the other findings.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def check(ctx: Context, nagios: bool, as_json: bool) -> None:
    """Judge the group against the [check] thresholds: RPO, archiving, archive lag, backup
    age, WAL gaps, servers, repositories and standbys. Exit 0 OK, 1 WARNING, 2 CRITICAL,
    3 UNKNOWN (the config, the repository or a part of the group could not be read)."""
    from markship.monitor import check as check_mod

    try:
        result = check_mod.check(ctx.config, ctx.repository(), ctx.copies())
    except Exception as exc:  # a plugin must answer UNKNOWN, never crash with 1 (WARNING)
        # the usual error line for a person; the plugin line or JSON for the monitoring
        click.echo(f"markship: error: {first_line(exc)}", err=True)
        result = check_mod.unknown(f"cannot check the group: {first_line(exc)}")
        if nagios or as_json:
            _show(result, nagios, as_json)
        sys.exit(result.exit_code)
    _show(result, nagios, as_json)
    sys.exit(result.exit_code)


def _show(result: CheckResult, nagios: bool, as_json: bool) -> None:
    if nagios:
        click.echo(result.plugin_output())
    else:
        output.writer(as_json).check(result)


COMMANDS = [check]
