"""`markship run`: the agent (see markship.agent.loop)."""

from __future__ import annotations

import click

from markship.cli.context import Context, pass_context


@click.command("run")
@click.option("--log-json", is_flag=True, help="Log one JSON object per line.")
@click.option("--standby-agent", is_flag=True,
              help="Wait while another agent runs for the group (e.g. on another host) and "
                   "take over when it stops or dies, instead of refusing to start.")
@pass_context
def run_agent(ctx: Context, log_json: bool, standby_agent: bool) -> None:
    """The agent: marks every interval, full backups on schedule, retention after backups."""
    from markship.agent import web
    from markship.agent.log import EventLog
    from markship.agent.loop import Agent, marking_thread

    config = ctx.config
    log = EventLog(as_json=log_json)
    marker = marking_thread(config, log)  # made before markship becomes os_user
    if config.repository.on_object_storage and config.marks.delivery == "stream":
        from markship.marks.upload import prepare_spool

        prepare_spool(config)  # likewise: /var/lib/markship may be root's alone
    # Like the marking thread: the credentials may be root's alone, the port privileged.
    web_server = web.prepare(config)
    Agent(config, ctx.repository(), log, config_path=str(ctx.config_path), marker=marker,
          standby=standby_agent, web_server=web_server).run()


COMMANDS = [run_agent]
