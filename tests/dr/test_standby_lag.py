"""What `standby status` says a failover would have to do: the marks a standby has not
replayed, the newest mark it could reach from the repository now and the WAL bytes to it; and
`[dr_site] max_replay_delay`, the agent's WAL switch that keeps standbys from sitting behind
under light load."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from markship.pg.scratch import ScratchServer
from tests.support.checks import wait_for
from tests.support.servers import (
    Group,
    GroupFactory,
    add_dr_site,
    new_mark,
    running_agent,
    stop_agent,
)


def _status(group: Group) -> dict[str, dict[str, Any]]:
    return {s["server"]: s for s in json.loads(group.ok("standby", "status", "--json"))}


def _complete(group: Group) -> list[dict[str, Any]]:
    return [m for m in json.loads(group.ok("marks", "--json")) if m["complete"]]


def test_status_shows_what_failover_replays(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    add_dr_site(group)
    group.ok("standby", "create")
    for server in group.servers:
        server.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n")
    first = new_mark(group)  # delivered by a WAL switch: its own segment is withheld
    wait_for(lambda: [m["name"] for m in _complete(group)] == [first], "the mark complete",
             timeout=60, interval=0.3)
    marks = _complete(group)
    status = _status(group)
    for name, standby in status.items():
        assert standby["at_mark"] is None
        assert standby["marks_behind"] == len(marks) == 1, standby
        assert standby["reachable_mark"] == first
        point = marks[0]["points"][name]["lsn"]
        assert standby["to_mark_bytes"] == point - standby["replay_lsn"] > 0
        assert standby["to_newest_wal_bytes"] >= standby["to_mark_bytes"]
        assert standby["failover_seconds_estimate"] > 0
        for key in ("lag_bytes", "lag_seconds", "parity", "replay_lsn"):
            assert key in standby

    second = new_mark(group)  # now the first mark's segment may be replayed
    wait_for(lambda: all(s["at_mark"] == first for s in _status(group).values()),
             "the standbys at the first mark", timeout=90, interval=0.3)
    newest = _complete(group)[-1]
    assert newest["name"] == second
    for name, standby in _status(group).items():
        assert standby["marks_behind"] == 1 and standby["reachable_mark"] == second
        assert standby["to_mark_bytes"] == newest["points"][name]["lsn"] - standby["replay_lsn"]

    text = group.ok("standby", "status")
    for name in status:
        assert f"{name}: failover reaches mark {second}: " in text, text
    assert "assumed rate" in text


def _light_writes(group: Group, stop: threading.Event) -> None:
    """A row a server every 0.2 s: far from filling a WAL segment."""
    while not stop.is_set():
        for server in group.servers:
            server.psql("INSERT INTO light VALUES (now())")
        stop.wait(0.2)


def _archived(group: Group) -> dict[str, int]:
    return {s.name: int(s.psql("SELECT archived_count FROM pg_stat_archiver"))
            for s in group.servers}


def test_max_replay_delay_switches_wal_for_standbys(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    for server in group.servers:
        server.psql("CREATE TABLE light (at timestamptz)")
    group.ok("backup")
    standbys = add_dr_site(group, extra="\n[marks]\ninterval = 3600\n")
    group.ok("standby", "create")
    base = group.config_path.read_text()

    # Unset: the agent never switches WAL, whatever the standbys' lag.
    stop = threading.Event()
    writer = threading.Thread(target=_light_writes, args=(group, stop))
    with running_agent(group.config_path) as agent:
        wait_for(lambda: bool(_complete(group)), "the agent's first mark", timeout=60,
                 interval=0.3)
        before = _archived(group)
        writer.start()
        try:
            time.sleep(12)  # four times the delay set below
        finally:
            stop.set()
            writer.join()
        after = _archived(group)
        log = stop_agent(agent)
    assert after == before, log
    assert "replay_pace.switch" not in log

    # Set: the standbys replay past a mark within a bounded wait under the same writes.
    group.config_path.write_text(
        base.replace("interval = 3600", "interval = 2").replace(
            'name = "dr"\n', 'name = "dr"\nmax_replay_delay = "3s"\n'))
    stop = threading.Event()
    writer = threading.Thread(target=_light_writes, args=(group, stop))
    with running_agent(group.config_path) as agent:
        writer.start()
        try:
            # A mark the agent delivered by stream: its WAL reaches the repository only
            # streamed, never archived, unless a segment is switched or fills up.
            streamed: list[dict[str, Any]] = []

            def streamed_mark() -> bool:
                streamed[:] = [m for m in _complete(group)
                               if set(m["delivery"].values()) == {"stream"}]
                return bool(streamed)

            wait_for(streamed_mark, "a mark delivered by stream", timeout=60, interval=0.5)
            points = {name: point["lsn"] for name, point in streamed[0]["points"].items()}

            def past_mark() -> bool:
                return all(_replay_lsn(sb) > points[name] for name, sb in standbys.items())

            wait_for(past_mark, "every standby past the mark", timeout=120, interval=0.5)
        finally:
            stop.set()
            writer.join()
        log = stop_agent(agent)
    assert "replay_pace.switch" in log and "Traceback" not in log, log
    status = _status(group)
    assert all(s["at_mark"] is not None for s in status.values()), status


def _replay_lsn(sb: ScratchServer) -> int:
    text = sb.psql("SELECT pg_last_wal_replay_lsn()")
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)

