"""Group marks and two-phase commit: `markship mark`, `marks`, `resolve` and `client-sql`."""

from __future__ import annotations

import click

from markship.cli import output
from markship.cli.context import Context, journaled, pass_context


@click.command()
@click.option("--name", metavar="NAME", help="Mark name (default: ms-GROUP-UTCTIME); never reuse.")
@click.option("--no-switch", is_flag=True,
              help="Neither wait for the WAL receiver nor switch WAL after the mark (it "
                   "completes when its segment is archived).")
@click.option("--wait", "wait_seconds", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Return only once the mark is complete (every server's WAL holding it in "
                   "the repository), waiting at most SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("mark")
def mark(ctx: Context, name: str | None, no_switch: bool, wait_seconds: float | None,
         as_json: bool) -> None:
    """Lay a group mark: the same restore point on every server, under the barrier.

    When the agent (markship run) is running, it makes the mark: the command only asks."""
    from markship import names
    from markship.marks import priority
    from markship.marks.take import GroupConnections, take_mark

    if name is not None:
        names.check_restore_point(name, "mark name (--name)")
    config = ctx.config
    if config.marks.nice:
        priority.set_for_thread(config.marks.nice)  # as the agent does; best effort here
    repo = ctx.repository()
    conns = GroupConnections(config)
    try:
        result = take_mark(config, repo, conns, name, switch_wal=not no_switch)
    finally:
        conns.close()
    ctx.note(mark=result.record.name)
    if wait_seconds is not None:
        _wait_complete(ctx, result.record.name, wait_seconds)
    output.writer(as_json).mark(result)


def _wait_complete(ctx: Context, name: str, seconds: float) -> None:
    """Return once mark `name` is complete; raise MarkshipError after `seconds`."""
    import time

    from markship.errors import MarkshipError
    from markship.marks.choose import mark_state

    repo = ctx.repository()
    deadline = time.monotonic() + seconds
    while True:
        state = mark_state(repo, ctx.config, name)
        if state.complete:
            return
        if state.unrestorable or time.monotonic() >= deadline:
            waiting = "; ".join(f"{server}: {why}" for server, why in
                                (state.unrestorable or state.waiting_for).items())
            raise MarkshipError(
                f"mark {name} was made, but is not complete after {seconds:g} s ({waiting})",
                "markship status shows whether each server archives; markship marks shows "
                "the mark once it is complete")
        time.sleep(0.1)


@click.command()
@click.option("--limit", default=100, show_default=True,
              help="Show the newest N marks (0: all of them).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def marks(ctx: Context, limit: int, as_json: bool) -> None:
    """Group marks with their completeness (WAL archived on every server) and age."""
    from markship.marks.choose import mark_states

    config = ctx.config
    states = mark_states(ctx.repository(fallback=True), config, newest=limit or None)
    output.writer(as_json).marks(states)


@click.command()
@click.option("--server", "servers", multiple=True, required=True, metavar="NAME=CONNINFO",
              help="A restored server and how to reach it (repeat for every server).")
@click.option("--decisions", required=True, metavar="NAME",
              help="Which of them holds the decision table (the barrier server).")
@click.option("--dry-run", is_flag=True, help="Show what would be done.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def resolve(servers: tuple[str, ...], decisions: str, dry_run: bool, as_json: bool) -> None:
    """Settle prepared transactions on restored servers from the recorded decisions."""
    from markship.marks.resolve import resolve_in_doubt

    participants: dict[str, str] = {}
    for item in servers:
        name, sep, conninfo = item.partition("=")
        if not sep or not name or not conninfo:
            raise click.BadParameter(f"{item!r} is not NAME=CONNINFO", param_hint="--server")
        participants[name] = conninfo
    if decisions not in participants:
        raise click.BadParameter(f"{decisions!r} is not one of the --server names",
                                 param_hint="--decisions")
    done = resolve_in_doubt(participants, decisions, dry_run)
    output.writer(as_json).resolve(done, dry_run)


@click.command("client-sql")
@click.option("--setup", is_flag=True,
              help="Only the DDL of the decision table (idempotent; needs no config): "
                   "markship client-sql --setup | psql … on the barrier server.")
@click.option("--protocol", is_flag=True,
              help="Only the commit protocol, annotated, with the group's barrier key.")
@pass_context
def client_sql(ctx: Context, setup: bool, protocol: bool) -> None:
    """Print two-phase commit in SQL: the decision table's DDL and the commit protocol.

    Without --setup or --protocol both are printed, to read; only --setup is meant for psql."""
    from markship.client import SETUP_SQL, protocol_sql

    both = not setup and not protocol
    if setup or both:
        click.echo("-- markship decision table: run once on the barrier server ([marks] "
                   "barrier_server,\n-- else the first [[server]]); creates nothing that "
                   f"exists already.\n{SETUP_SQL}", nl=False)
    if both:
        click.echo()
    if protocol or both:
        config = ctx.config
        click.echo(protocol_sql(config.group.name, config.barrier_server.name), nl=False)


COMMANDS = [mark, marks, resolve, client_sql]
