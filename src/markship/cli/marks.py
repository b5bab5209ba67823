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
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("mark")
def mark(ctx: Context, name: str | None, no_switch: bool, as_json: bool) -> None:
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
    output.writer(as_json).mark(result)


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
@pass_context
def client_sql(ctx: Context) -> None:
    """Print the SQL of the two-phase commit protocol (decision table, barrier key)."""
    from markship.client import SETUP_SQL, barrier_key

    key = barrier_key(ctx.config.group.name)
    click.echo(f"-- on the barrier server ({ctx.config.barrier_server.name}), once:{SETUP_SQL}")
    click.echo(f"""-- per cross-server commit, after PREPARE TRANSACTION 'gid' on each participant:
SELECT pg_advisory_lock_shared({key});            -- on the barrier server
INSERT INTO markship.decisions (gid) VALUES ('gid');  -- committed on its own
COMMIT PREPARED 'gid';                                -- on every participant
SELECT pg_advisory_unlock_shared({key});          -- on the barrier server""")


COMMANDS = [mark, marks, resolve, client_sql]
