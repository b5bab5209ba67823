"""The agent's event log: one line per event, whatever the values hold; levels, journald
priorities and the log file."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from markship.agent.log import EventLog


@pytest.mark.reliability("agent log, hostile value",
                         fault="a request or record field holding a newline and a forged event",
                         expected="still one log line per event; the value quoted and escaped")
def test_a_value_never_splits_or_forges_a_log_line() -> None:
    stream = io.StringIO()
    log = EventLog(stream=stream)
    log("mark.refused", name="x\n2026-12-04T00:00:00.000Z\tinfo\tmark.ok", plain="ok")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(' plain=ok')
    assert 'name="x\\n2026-12-04T00:00:00.000Z\\tinfo\\tmark.ok"' in lines[0]


def test_each_line_carries_its_level_and_under_journald_its_priority() -> None:
    stream = io.StringIO()
    log = EventLog(stream=stream, journald=True)
    log("agent.start")
    log("mark.refused", level="warning")
    log("backup.failed", level="error", reason="disk full")
    log("odd.level", level="warn")
    lines = stream.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<4>"]
    assert [line.split()[1] for line in lines] == ["info", "warning", "error", "warning"]
    plain = io.StringIO()
    EventLog(stream=plain)("agent.start")  # a StringIO is never the journal
    assert plain.getvalue().split()[1:] == ["info", "agent.start"]


def test_json_lines_keep_their_form_after_the_priority() -> None:
    stream = io.StringIO()
    EventLog(as_json=True, stream=stream, journald=True)("mark.ok", name="m1")
    line = stream.getvalue()
    assert line.startswith("<6>{")
    record = json.loads(line[3:])
    assert (record["level"], record["event"], record["name"]) == ("info", "mark.ok", "m1")


def test_a_log_file_is_private_appended_to_and_reopened_after_rotation(
        tmp_path: Path) -> None:
    path = tmp_path / "agent.log"
    EventLog(file=path)("agent.start")
    log = EventLog(file=path, journald=True)  # a file never gets priority prefixes
    log("mark.ok", name="m1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [line.split()[2] for line in path.read_text().splitlines()] == \
        ["agent.start", "mark.ok"]
    path.rename(tmp_path / "agent.log.1")  # logrotate moves it away
    log("mark.ok", name="m2")
    assert path.read_text().split()[1:] == ["info", "mark.ok", "name=m2"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "m2" not in (tmp_path / "agent.log.1").read_text()
