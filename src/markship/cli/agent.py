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
    from markship.agent.log import EventLog
    from markship.agent.loop import Agent, marking_thread

    config = ctx.config
    log = EventLog(as_json=log_json)
    marker = marking_thread(config, log)  # made before markship becomes os_user
    Agent(config, ctx.repository(), log, config_path=str(ctx.config_path), marker=marker,
          standby=standby_agent).run()


COMMANDS = [run_agent]
