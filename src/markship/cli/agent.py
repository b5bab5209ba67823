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
    here: Context = ctx
    while True:
        agent = Agent(config, here.repository(), log, config_path=str(here.config_path),
                      marker=marker, standby=standby_agent, web_server=web_server)
        agent.run()
        if agent.superseded is not None:
            raise agent.superseded
        if agent.switch_to is None:
            return
        # A failover made another site production and wrote its config here: the same
        # agent goes on with it (the log, its file and the marking thread stay as they are).
        here = Context(str(agent.switch_to))
        config = here.config
        marker = marking_thread(config, log)  # the last one was shut down with its agent
        web_server = None
        try:
            web_server = web.prepare(config)
        except MarkshipError as exc:
            log("web.unavailable", level="warning", reason=exc.one_line(),
                detail="the status page is not served after the switch: restart the agent "
                       f"with --config {agent.switch_to}")
        log("agent.switched", config=str(agent.switch_to), group=config.group.name,
            site=config.site.name)


COMMANDS = [run_agent]
