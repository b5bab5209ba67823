"""A standby agent (`markship run --standby-agent`) waits while the group's agent runs, its web
port answering 503, and takes over marking when that agent dies, so the group keeps its
marks."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from markship.pg.scratch import free_port
from tests.support.checks import marks_of, wait_for
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, GroupFactory, start_agent, stop_agent


def _standby(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([str(MARKSHIP), "--config", str(config), "run", "--standby-agent"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _answer(url: str) -> tuple[int, str]:
    """Status and body of a GET, within 5 s (a port nobody answers on fails the test)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


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
        # The standby agent (another host in real life: here its own config file, the
        # same group, with a web port of its own) answers its port while it waits.
        port = free_port()
        standby_config = group.workdir / "standby-agent.toml"
        standby_config.write_text(group.config_path.read_text() + (
            f'\n[web]\nlisten = "127.0.0.1:{port}"\nauth = "none"\nrefresh = 1\n'))
        standby = _standby(standby_config)
        time.sleep(3)
        assert standby.poll() is None, "the standby agent must wait, not refuse to start"
        status, body = _answer(f"http://127.0.0.1:{port}/metrics")
        assert (status, body) == (503, "standby agent: waiting to take over when the "
                                       "group's agent stops\n")
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
        wait_for(lambda: _answer(f"http://127.0.0.1:{port}/metrics")[0] == 200,
                 "the standby agent's metrics once it took over", timeout=60, interval=0.5)
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
