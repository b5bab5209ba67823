"""The agent: marks on an interval, a first backup, one agent per group, survives kill -9."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from tests.support.checks import marks_of, wait_for
from tests.support.servers import (
    MARKSHIP,
    OS_USER,
    GroupFactory,
    running_agent,
    start_agent,
    stop_agent,
)


def test_agent_marks_backs_up_and_survives_kill_9(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.add_config("\n[marks]\ninterval = 1\n")
    for server in group.servers:
        server.psql("CREATE TABLE ticks (n int)")
    agent = start_agent(group.config_path)
    try:
        wait_for(lambda: any(s["complete"] for s in json.loads(group.ok("list", "--json"))),
                 "the agent's first backup set", timeout=90, interval=0.3)
        for n in range(5):
            for server in group.servers:
                server.psql(f"INSERT INTO ticks VALUES ({n})")
            time.sleep(0.3)
        wait_for(lambda: sum(1 for m in marks_of(group) if m["complete"]) >= 3, "three marks",
                 timeout=90, interval=0.3)

        second = start_agent(group.config_path)
        _out, err = second.communicate(timeout=60)
        assert second.returncode != 0 and "another job is running" in err

        agent.send_signal(signal.SIGKILL)
        agent.wait()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()

    marks = marks_of(group)
    complete = [m for m in marks if m["complete"]]
    assert complete and all(set(m["points"]) == {"alpha", "bravo"} for m in marks)
    newest = str(complete[-1]["name"])
    counts = {s.name: group.restore(s.name, "--name", newest).psql("SELECT count(*) FROM ticks")
              for s in group.servers}
    # The newest mark said complete really is reachable on every server.
    assert all(0 <= int(c) <= 5 for c in counts.values())

    restarted = start_agent(group.config_path)
    try:
        before = len(marks)
        wait_for(lambda: len(marks_of(group)) >= before + 2, "marks after the restart",
                 timeout=90, interval=0.3)
        restarted.send_signal(signal.SIGTERM)
        _out, err = restarted.communicate(timeout=60)
    finally:
        if restarted.poll() is None:
            restarted.kill()
    assert restarted.returncode == 0, err
    assert "agent.stopping signal=SIGTERM" in err and "agent.stop" in err
    lines = [line for line in err.splitlines() if " mark.ok " in line]
    assert lines and all(line.split()[0].endswith("Z") for line in lines)


def test_mark_command_is_made_by_the_running_agent(pg_group: GroupFactory) -> None:
    """While the agent runs, `markship mark` asks it (warm connections, no Python start with
    psycopg and pydantic); errors come back as one line; without the agent the command makes
    the mark itself."""
    from tests.support.servers import run_markship

    group = pg_group(2)
    group.add_config("\n[marks]\ninterval = 3600\n")
    with running_agent(group.config_path) as agent:
        wait_for(lambda: len(marks_of(group)) >= 1, "the agent's first mark", timeout=90,
                 interval=0.3)
        made = json.loads(group.ok("mark", "--json", "--name", "before-deploy"))
        assert made["taken_by"] == "agent"
        assert made["name"] == "before-deploy" and set(made["points"]) == {"alpha", "bravo"}
        text = group.ok("mark")
        assert text.startswith("✓ mark ms-") and "barrier held" in text

        again = group.markship("mark", "--name", "before-deploy")
        assert again.returncode == 1 and not again.stdout
        assert again.stderr.startswith("markship: error: mark before-deploy already exists")
        assert len(again.stderr.strip().splitlines()) == 1, again.stderr

        direct = run_markship(group.config_path, "mark", "--json",
                              env={"MARKSHIP_NO_AGENT": "1"})
        assert direct.returncode == 0, direct.stderr
        assert json.loads(direct.stdout)["taken_by"] == "command"

        err = stop_agent(agent)
    assert agent.returncode == 0, err
    assert "mark.ok name=before-deploy" in err and "requested_by=" in err
    names = {m["name"]: m["complete"] for m in marks_of(group)}
    assert "before-deploy" in names
    entries = json.loads(group.ok("journal", "--json"))
    by_agent = [e for e in entries
                if e["command"] == "mark" and "through markship run" in e["user"]]
    assert [e["outcome"] for e in by_agent][:1] == ["ok"]
    assert by_agent[0]["objects"] == {"mark": "before-deploy"}
    assert any(e["outcome"].startswith("failed: mark before-deploy already exists")
               for e in by_agent)

    # The agent is gone (its socket with it): the command makes the mark itself again.
    after = json.loads(group.ok("mark", "--json"))
    assert after["taken_by"] == "command"


def test_receiver_finds_its_next_segment_laid_out(pg_group: GroupFactory) -> None:
    """The agent writes the receiver's next segment file ahead of time; pg_receivewal takes it
    as it is, and a restarted agent drops one never written to."""
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE ticks (n int)")
    folder = group.repo / "stream" / "alpha"
    group.add_config("\n[marks]\ninterval = 3600\n")

    def laid_out() -> list[str]:
        """`.partial` files whose first page is still zero: written by the agent, unused."""
        found = []
        for path in sorted(folder.glob("*.partial")):
            with path.open("rb") as handle:
                if not any(handle.read(8192)):
                    found.append(path.name)
        return found

    def streamed_mark() -> str:
        mark = json.loads(group.ok("mark", "--json"))["name"]
        record = json.loads((group.repo / "marks" / f"{mark}.json").read_text())
        assert record["body"]["delivery"] == {"alpha": "stream"}, record
        return str(mark)

    with running_agent(group.config_path) as agent:
        wait_for(lambda: len(laid_out()) == 1, "the next segment laid out", timeout=90,
                 interval=0.3)
        (following,) = laid_out()
        inode = (folder / following).stat().st_ino
        alpha.psql("INSERT INTO ticks VALUES (1); SELECT pg_switch_wal()")
        alpha.psql("INSERT INTO ticks VALUES (2)")
        # The receiver moved on into the file laid out for it: same file, now holding WAL.
        wait_for(lambda: (folder / following).exists() and following not in laid_out(),
                 "the receiver in the laid-out segment", timeout=90, interval=0.3)
        assert (folder / following).stat().st_ino == inode
        streamed_mark()
        wait_for(lambda: len(laid_out()) == 1 and laid_out()[0] > following,
                 "the segment after it laid out", timeout=90, interval=0.3)
        log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert laid_out(), "an unused laid-out segment is left for the restart to handle"

    # A restarted agent resumes the receiver in the segment it was writing, not in the unused
    # one after it (which would skip the rest of that segment).
    with running_agent(group.config_path) as agent:
        alpha.psql("INSERT INTO ticks VALUES (3)")
        wait_for(lambda: alpha.psql("SELECT count(*) FROM pg_stat_replication WHERE "
                                    "state = 'streaming'") == "1", "the receiver streaming",
                 timeout=90, interval=0.3)
        mark = streamed_mark()
        log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert "stream.exited" not in log and "stream.pad_failed" not in log, log
    restored = group.restore("alpha", "--name", mark)
    assert restored.psql("SELECT array_agg(n ORDER BY n) FROM ticks") == "{1,2,3}"


def _threads(pid: int) -> dict[int, tuple[int, int]]:
    """Each thread of process `pid` → (nice value, real uid), from /proc."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        nice = int(stat[stat.rindex(")") + 2:].split()[16])  # field 19 of stat
        uid = next(line for line in (task / "status").read_text().splitlines()
                   if line.startswith("Uid:")).split()[1]
        found[int(task.name)] = (nice, int(uid))
    return found


def _children_named(pid: int, comm: str) -> list[int]:
    """Nice values of the child processes of `pid` running `comm`."""
    nices = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if stat[stat.index("(") + 1:stat.rindex(")")] == comm and int(fields[1]) == pid:
            nices.append(int(fields[16]))
    return nices


def test_marks_run_on_a_thread_of_raised_priority(pg_group: GroupFactory) -> None:
    """Started as root, the agent makes marks on a thread with `[marks] nice` (and writes
    their records from one), while its other threads and the WAL receivers keep nice 0 and
    every thread runs as os_user; started as os_user, it says once that it cannot and goes
    on marking."""
    group = pg_group(1)
    group.add_config("\n[marks]\ninterval = 1\nnice = -7\n")
    with running_agent(group.config_path) as agent:
        wait_for(lambda: any(m["delivery"] == {"alpha": "stream"} for m in marks_of(group)),
                 "a mark delivered by stream", timeout=90, interval=0.3)
        threads = _threads(agent.pid)
        receivers = _children_named(agent.pid, "pg_receivewal")
        err = stop_agent(agent)
    assert agent.returncode == 0, err
    assert {uid for _nice, uid in threads.values()} == {pwd.getpwnam(OS_USER).pw_uid}
    nices = sorted(nice for nice, _uid in threads.values())
    assert nices.count(-7) == 2 and set(nices) == {-7, 0}, nices  # marks, mark records
    assert threads[agent.pid][0] == 0
    assert receivers and set(receivers) == {0}
    assert "mark.priority" not in err

    user = pwd.getpwnam(OS_USER)  # started as that user directly: signals reach the agent
    unprivileged = subprocess.Popen(
        [str(MARKSHIP), "--config", str(group.config_path), "run"], user=user.pw_uid,
        group=user.pw_gid, extra_groups=[], env={**os.environ, "HOME": user.pw_dir},
        cwd=group.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        before = len(marks_of(group))
        wait_for(lambda: len(marks_of(group)) >= before + 2,
                 "marks from the unprivileged agent", timeout=90, interval=0.3)
        err = stop_agent(unprivileged)
    finally:
        if unprivileged.poll() is None:
            unprivileged.kill()
            unprivileged.wait()
    assert unprivileged.returncode == 0, err
    warnings = [line for line in err.splitlines() if " mark.priority " in line]
    assert len(warnings) == 1 and "LimitNICE=-7" in warnings[0], err
    assert " mark.ok " in err
