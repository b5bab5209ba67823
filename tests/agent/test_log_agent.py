"""The running agent's log as systemd and an operator read it: journald priority prefixes
when stderr is the journal, and the log file of `markship run --log-file`."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

from tests.support.checks import wait_for
from tests.support.servers import MARKSHIP, Group, GroupFactory, run_markship

PRIORITY = {"<3>": "error", "<4>": "warning", "<6>": "info"}


def _agent(group: Group, stderr: Path, *options: str) -> subprocess.Popen[str]:
    """`markship run` with stderr in a file that JOURNAL_STREAM names, as systemd sets it
    up for a service whose stderr is the journal."""
    handle = stderr.open("w")
    found = os.fstat(handle.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"}
    try:
        return subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "run",
                                 *options], stdout=subprocess.DEVNULL, stderr=handle, env=env,
                                text=True)
    finally:
        handle.close()


def _stop(agent: subprocess.Popen[str]) -> None:
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=60) == 0


def test_under_journald_every_line_starts_with_its_priority(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.config_path.write_text(group.config_path.read_text() + "\n[marks]\ninterval = 3600\n")
    stderr = group.workdir / "agent.stderr"
    agent = _agent(group, stderr)
    try:
        wait_for(lambda: " mark.ok " in stderr.read_text(), "the agent's first mark",
                 timeout=90, interval=0.3)
        group.ok("mark", "--name", "twice")
        assert group.markship("mark", "--name", "twice").returncode == 1  # failed: an error
        assert group.markship("mark", "--name", "no good").returncode != 0  # refused: a warning
        wait_for(lambda: " mark.refused " in stderr.read_text(), "the refusal in the log")
    finally:
        _stop(agent)
    lines = stderr.read_text().splitlines()
    assert len(lines) >= 3
    for line in lines:
        assert line[:3] in PRIORITY, line
        assert line[3:].split()[1] == PRIORITY[line[:3]], line
    assert any(re.match(r"<6>\S+Z info agent\.start ", line) for line in lines)
    assert any(re.match(r"<4>\S+Z warning mark\.refused ", line) for line in lines)
    assert any(re.match(r"<3>\S+Z error mark\.failed ", line) for line in lines)

    # a command's error line gets error priority too
    with stderr.open("w") as handle:
        found = os.fstat(handle.fileno())
        proc = subprocess.run([str(MARKSHIP), "--config", str(group.workdir / "absent.toml"),
                               "status"], stdout=subprocess.DEVNULL, stderr=handle, check=False,
                              env={**os.environ,
                                   "JOURNAL_STREAM": f"{found.st_dev}:{found.st_ino}"})
    assert proc.returncode != 0
    assert stderr.read_text().startswith("<3>markship: error: ")


def test_the_log_file_is_private_and_holds_the_lines(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.config_path.write_text(group.config_path.read_text() + "\n[marks]\ninterval = 3600\n")
    log_file = group.workdir / "logs" / "agent.log"
    log_file.parent.mkdir()  # root's: the agent opens the file before it becomes postgres
    stderr = group.workdir / "agent.stderr"
    agent = _agent(group, stderr, "--log-json", "--log-file", str(log_file))
    try:
        wait_for(lambda: log_file.exists() and '"mark.ok"' in log_file.read_text(),
                 "a mark in the log file", timeout=90, interval=0.3)
    finally:
        _stop(agent)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert records[0]["event"] == "agent.start" and records[-1]["event"] == "agent.stop"
    assert {r["level"] for r in records} <= {"info", "warning", "error"}
    assert "mark.ok" in {r["event"] for r in records}
    assert stderr.read_text() == ""  # the lines went to the file, nothing to the journal

    proc = run_markship(group.config_path, "run", "--log-file",
                        str(group.workdir / "no-such-folder" / "agent.log"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("markship: error: cannot open the log file ")
    assert len(proc.stderr.splitlines()) == 1
