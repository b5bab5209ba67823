"""`markship run`: the agent (see markship.agent.loop)."""

from __future__ import annotations

from pathlib import Path

import click

from markship.cli.context import Context, pass_context


@click.command("run")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), metavar="PATH",
              help="Append the log to PATH (created with mode 0600) instead of stderr; "
                   "reopened when moved away (logrotate).")
@click.option("--journald", is_flag=True,
              help="Start each line with its journald priority (<3> error, <4> warning, "
                   "<6> info); the default when stderr is the journal (JOURNAL_STREAM).")
@click.option("--standby-agent", is_flag=True,
              help="Wait while another agent runs for the group (e.g. on another host) and "
                   "take over when it stops or dies, instead of refusing to start.")
@pass_context
def run_agent(ctx: Context, log_json: bool, log_file: Path | None, journald: bool,
              standby_agent: bool) -> None:
    """The agent: marks every interval, full backups on schedule, retention after backups."""
    from markship.agent import web
    from markship.agent.log import EventLog
    from markship.agent.loop import Agent, marking_thread
    from markship.errors import MarkshipError

    config = ctx.config
    try:  # before markship becomes os_user: the file may be in a folder only root writes
        log = EventLog(as_json=log_json, journald=True if journald else None, file=log_file)
    except OSError as exc:
        raise MarkshipError(f"cannot open the log file {log_file}: {exc.strerror}",
                            "give --log-file a path in an existing folder markship may "
                            "write") from None
    marker = marking_thread(config, log)  # made before markship becomes os_user
    if config.repository.on_object_storage and config.marks.delivery == "stream":
        from markship.marks.upload import prepare_spool

        prepare_spool(config)  # likewise: /var/lib/markship may be root's alone
    # Like the marking thread: the credentials may be root's alone, the port privileged.
    web_server = web.prepare(config)
    agent = Agent(config, ctx.repository(), log, config_path=str(ctx.config_path),
                  marker=marker, standby=standby_agent, web_server=web_server)
    agent.run()
    if agent.switch_to is not None:
        _restart_with(agent.switch_to)
    if agent.superseded is not None:
        raise agent.superseded


def _restart_with(config: Path) -> None:
    """Run this same `markship run` again, with `config` (a failover's role-swapped config)."""
    import os
    import sys

    from markship import argv as options

    _, _, rest = options.parse(sys.argv[1:], options=("--config",), leading=True)
    args = ["--config", str(config), *rest]
    program = sys.argv[0]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.path.basename(program) == "markship" and os.access(program, os.X_OK):
        os.execv(program, [program, *args])
    os.execv(sys.executable, [sys.executable, "-c", "from markship._entry import main; main()",
                              *args])


COMMANDS = [run_agent]
