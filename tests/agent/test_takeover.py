"""A standby agent (`markship run --standby-agent`) waits while the group's agent runs and takes
over marking when that agent dies, so the group keeps its marks."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.support.checks import marks_of, wait_for
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, Group, GroupFactory, start_agent, stop_agent


def _standby(group: Group) -> subprocess.Popen[str]:
    return subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run",
                             "--standby-agent"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@ON_FS_AND_S3
def test_standby_agent_takes_over_when_the_agent_is_killed(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.add_config("\n[marks]\ninterval = 1\n")
    for server in group.servers:
        server.psql("CREATE TABLE ticks (n int)")
    first = start_agent(group.config_path)
    standby: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: any(s["complete"] for s in json.loads(group.ok("list", "--json"))),
                 "the agent's first backup set", timeout=90, interval=0.3)
        wait_for(lambda: any(m["complete"] for m in marks_of(group)), "a first mark",
                 timeout=60, interval=0.3)
        standby = _standby(group)
        time.sleep(3)
        assert standby.poll() is None, "the standby agent must wait, not refuse to start"
        ours = {m["name"] for m in marks_of(group)}

        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = {m["name"] for m in marks_of(group)}
        for n in range(3):
            for server in group.servers:
                server.psql(f"INSERT INTO ticks VALUES ({n})")
        wait_for(lambda: sum(1 for m in marks_of(group)
                             if m["complete"] and m["name"] not in killed) >= 2,
                 "two marks made by the standby agent", timeout=90, interval=0.3)
        log = stop_agent(standby)
    finally:
        for agent in (first, standby):
            if agent is not None and agent.poll() is None:
                agent.kill()
                agent.wait()
    assert standby.returncode == 0, log
    assert "agent.standby" in log and "agent.takeover" in log
    newest = [m for m in marks_of(group) if m["complete"] and m["name"] not in ours][-1]
    counts = {s.name: group.restore(s.name, "--name", str(newest["name"]))
              .psql("SELECT count(*) FROM ticks") for s in group.servers}
    assert counts == {"alpha": "3", "bravo": "3"}
