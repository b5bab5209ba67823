"""After a failover the group is protected again at once: the new primaries archive on their
new timeline, the failover writes the role-swapped config and names what runs next, an agent
already running on the DR host switches to that config by itself, new marks are complete and
the group restores to one of them from backups."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from markship.pg.scratch import chown_to, free_port_range
from tests.dr.test_failover import standby_pair
from tests.support.checks import wait_for
from tests.support.servers import (
    MARKSHIP,
    OS_USER,
    GroupFactory,
    run_markship,
    stop_postmaster,
)


def _marks(config: Path) -> list[dict[str, Any]]:
    proc = run_markship(config, "marks", "--json")
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result



def test_failover_leaves_the_group_protected(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    standbys = standby_pair(group, 3)
    group.ok("mark")

    # Production's agent, and the DR host's standby agent waiting for the agent lock.
    production_agent = subprocess.Popen(
        [str(MARKSHIP), "--config", str(group.config_path), "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    dr_agent = subprocess.Popen(
        [str(MARKSHIP), "--config", str(group.config_path), "run", "--standby-agent"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = _marks(group.config_path)[-1]["name"]
        wait_for(lambda: any(m["complete"] and m["name"] != first
                             for m in _marks(group.config_path)),
                 "the production agent's marks", timeout=90, interval=0.5)
        wait_for(lambda: all(sb.psql("SELECT pg_is_in_recovery()") == "t"
                             for sb in standbys.values()), "standbys up")

        # The disaster takes production's servers, disks and agent host.
        for server in group.servers:
            server.kill9()
            shutil.rmtree(server.data_dir)
        production_agent.kill()
        production_agent.wait()

        proc = group.markship("failover", "--json", timeout=300)
        assert proc.returncode == 0, proc.stderr
        failed_over = time.monotonic()
        report = json.loads(proc.stdout)
        assert report["protected"], report["archiving"]
        for state in report["archiving"]:
            assert state["ok"] and state["segment"].startswith("00000002"), state
        new_config = Path(report["new_config"])
        assert new_config.parent == group.config_path.parent and new_config.exists()
        assert (report["site"], report["rebuild_site"]) == ("dr", "production")

        # Writes at the DR site after the failover, then a mark made by the DR agent (it
        # switched itself to the new config): the group restores to it from backups.
        for name, sb in standbys.items():
            sb.psql("CREATE TABLE after_failover (site text)")
            sb.psql(f"INSERT INTO after_failover VALUES ('dr-{name}')")
        written = datetime.now(UTC)

        def new_mark() -> dict[str, Any] | None:
            for mark in reversed(_marks(new_config)):
                if mark["complete"] and datetime.fromisoformat(mark["created_at"]) > written:
                    found: dict[str, Any] = mark
                    return found
            return None

        wait_for(new_mark, "a complete mark by the DR agent after the failover",
                 timeout=60 - (time.monotonic() - failed_over), interval=0.5)
        mark = new_mark()
        assert mark is not None
        assert dr_agent.poll() is None  # the same agent, running the new config
        for name in standbys:
            assert mark["points"][name]["timeline"] == 2
    finally:
        for agent in (production_agent, dr_agent):
            if agent.poll() is None:
                agent.terminate()
        _out, dr_log = dr_agent.communicate(timeout=120)
    assert "agent.switched" in dr_log and "Traceback" not in dr_log, dr_log[-3000:]

    restored = group.workdir / "after"
    restored.mkdir()
    chown_to(restored, OS_USER)
    port_base = free_port_range(2)
    try:
        proc = run_markship(new_config, "restore", "--group", "--mark", mark["name"],
                            "--target-dir", f"{restored}/{{server}}", "--port-base",
                            str(port_base), "--json", timeout=300)
        assert proc.returncode == 0, proc.stderr
        servers = json.loads(proc.stdout)["servers"]
        for name in standbys:
            conninfo = servers[name]["conninfo"]
            with psycopg.connect(conninfo) as conn:
                rows = conn.execute("SELECT site FROM after_failover").fetchall()
                balance = conn.execute("SELECT balance FROM accounts WHERE id = 1").fetchone()
            assert rows == [(f"dr-{name}",)]
            assert balance == ((1003,) if name == "alpha" else (997,))
    finally:
        for name in standbys:
            stop_postmaster(restored / name)
