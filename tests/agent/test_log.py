"""The agent's event log: one line per event, whatever the values hold."""

from __future__ import annotations

import io

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
