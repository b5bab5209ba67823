"""Command-line interface: the `markship` click group, its global options and the entry point.

The commands live in one module per group of the README's command list (backups, marks, dr,
journal, …); this module registers them and turns a user error into one line and an exit code.
"""

from __future__ import annotations

import sys

import click

from markship import __version__
from markship.agent.log import journal_stream
from markship.cli import (
    agent,
    backups,
    check,
    config,
    dr,
    drill,
    dumps,
    files,
    journal,
    keys,
    marks,
    preflight,
    repository,
    wal,
)
from markship.cli.context import Context
from markship.errors import MarkshipError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH", envvar=None,
              help="Config file (default: $MARKSHIP_CONFIG, else ./markship.toml).")
@click.version_option(__version__, prog_name="markship")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Keep a group of PostgreSQL servers recoverable to one common point."""
    ctx.obj = Context(config_path)


# -- demo: declared here, so that loading the CLI does not import the demo's story --------------


@cli.command()
@click.option("--servers", default=3, show_default=True, type=click.IntRange(2, 3),
              help="How many throwaway servers.")
@click.option("--keep", is_flag=True, help="Keep the demo directory and stop servers only.")
def demo(servers: int, keep: bool) -> None:
    """Throwaway servers, 2PC workload, backup, marks, standbys, disaster, group failover."""
    from markship.cli.demo import run_demo

    run_demo(servers, keep)


def run(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one line on stderr and a non-zero exit code."""
    try:
        cli.main(args=argv, prog_name="markship", standalone_mode=False)
    except MarkshipError as exc:
        # under systemd, the journal gives the line error priority (sd-daemon prefix)
        prefix = "<3>" if journal_stream() else ""
        click.echo(f"{prefix}markship: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("markship: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("markship: interrupted", err=True)
        sys.exit(130)
    sys.exit(0)


for _module in (config, preflight, backups, check, marks, agent, dr, drill, journal, keys, dumps,
                files, repository, wal):
    for _command in _module.COMMANDS:
        cli.add_command(_command)
