"""The agent: marks on an interval, a first backup, one agent per group, survives kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

from conftest import MARKSHIP, Group, GroupFactory


def _start_agent(group: Group) -> subprocess.Popen[str]:
    return subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate: object, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _marks(group: Group) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(group.ok("marks", "--json"))
    return result


def test_agent_marks_backs_up_and_survives_kill_9(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.config_path.write_text(group.config_path.read_text() + "\n[marks]\ninterval = 1\n")
    for server in group.servers:
        server.psql("CREATE TABLE ticks (n int)")
    agent = _start_agent(group)
    try:
        _wait_for(lambda: any(s["complete"] for s in json.loads(group.ok("list", "--json"))),
                  "the agent's first backup set")
        for n in range(5):
            for server in group.servers:
                server.psql(f"INSERT INTO ticks VALUES ({n})")
            time.sleep(0.3)
        _wait_for(lambda: sum(1 for m in _marks(group) if m["complete"]) >= 3, "three marks")

        second = _start_agent(group)
        _out, err = second.communicate(timeout=60)
        assert second.returncode != 0 and "another job is running" in err

        agent.send_signal(signal.SIGKILL)
        agent.wait()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    marks = _marks(group)
    complete = [m for m in marks if m["complete"]]
    assert complete and all(set(m["points"]) == {"alpha", "bravo"} for m in marks)
    newest = str(complete[-1]["name"])
    counts = {s.name: group.restore(s.name, "--name", newest).psql("SELECT count(*) FROM ticks")
              for s in group.servers}
    # The newest mark said complete really is reachable on every server.
    assert all(0 <= int(c) <= 5 for c in counts.values())

    restarted = _start_agent(group)
    try:
        before = len(marks)
        _wait_for(lambda: len(_marks(group)) >= before + 2, "marks after the restart")
        restarted.send_signal(signal.SIGTERM)
        _out, err = restarted.communicate(timeout=60)
    finally:
        if restarted.poll() is None:
            restarted.kill()
    assert restarted.returncode == 0, err
    assert "agent.stopping signal=SIGTERM" in err and "agent.stop" in err
    lines = [line for line in err.splitlines() if " mark.ok " in line]
    assert lines and all(line.split()[0].endswith("Z") for line in lines)
