"""Helpers shared by test modules: pgbench loads, waiting, killing a command at a chosen
point (and the processes it left), a DR site in the config, and the checks every fault case
ends with (the repository verifies, what is listed as usable really is)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import MARKSHIP, Group
from markship.pg.scratch import ScratchServer

TEMP_PREFIX = ".tmp~"  # markship.repository.fs: partly written objects


def load_pgbench(server: ScratchServer, scale: int = 1) -> None:
    """pgbench's tables at `scale` (1: 100,000 accounts)."""
    server.run("pgbench", "-i", "-s", str(scale), "-q", "-d", server.conninfo())


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60,
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(interval)


def temp_objects(repo: Path, under: str = "") -> list[Path]:
    """Partly written objects (`.tmp~…` names) below `repo/under`."""
    top = repo / under if under else repo
    if not top.exists():
        return []
    return sorted(p for p in top.rglob(f"{TEMP_PREFIX}*") if p.is_file())


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` (children, grandchildren ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def command_name(pid: int) -> str:
    """The process's command name (/proc/PID/comm), "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def reap(pids: Sequence[int], grace: float = 10) -> list[int]:
    """Give processes left by a killed command `grace` seconds to end on their own, then
    SIGKILL each one still there (by its id); returns those that had to be killed."""
    deadline = time.monotonic() + grace
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return killed


@dataclass
class Killed:
    """A markship command that was sent SIGKILL at a chosen point."""

    argv: list[str]
    point: str
    returncode: int
    orphans: list[int] = field(default_factory=list)  # its children when it was killed
    stderr: str = ""


def kill9_at(group: Group, args: Sequence[str], point: str, reached: Callable[[], bool],
             timeout: float = 120, poll: float = 0.005, may_finish: bool = False) -> Killed:
    """Run `markship ARGS` on the group's config and SIGKILL it once `reached()` is true.

    Fails the test if the command ends before the point is reached (the point was missed,
    so the case would test nothing), unless `may_finish`: the result then has its exit
    status."""
    argv = [str(MARKSHIP), "--config", str(group.config_path), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "MARKSHIP_NO_AGENT": "1"})
    deadline = time.monotonic() + timeout
    try:
        while not reached():
            if proc.poll() is not None:
                _out, err = proc.communicate()
                if may_finish:
                    return Killed(argv, point, proc.returncode, [], err)
                raise AssertionError(f"markship {' '.join(args)} ended (exit {proc.returncode}) "
                                     f"before {point}: {err}")
            assert time.monotonic() < deadline, f"{point} not reached in {timeout:g} s"
            time.sleep(poll)
        children = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise
    _out, err = proc.communicate()
    return Killed(argv, point, proc.returncode, children, err)


def kill9_after(group: Group, args: Sequence[str], delay: float) -> Killed:
    """Run `markship ARGS` and SIGKILL it `delay` seconds after it started (if still alive)."""
    began = time.monotonic()
    return kill9_at(group, args, f"{delay:.3f} s after the start",
                    lambda: time.monotonic() - began >= delay, may_finish=True)


def ok_json(group: Group, *args: str) -> object:
    return json.loads(group.ok(*args, "--json"))


def one_error_line(stderr: str) -> str:
    """The single `error:` line of a failed command (warnings may come before it), with no
    traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.strip().splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0]


def assert_repository_sound(group: Group) -> dict[str, Any]:
    """What every fault case ends with: verify passes (temp objects are reported, never
    data), the set and mark listings decode, and every mark listed complete has the WAL
    holding it stored (archived, or streamed when delivered by stream) on every server."""
    proc = group.markship("verify", "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] and proc.returncode == 0, report
    sets = json.loads(group.ok("list", "--json"))
    assert all(s["complete"] == (s["state"] == "complete") for s in sets), sets
    for mark in json.loads(group.ok("marks", "--json", "--limit", "0")):
        if not mark["complete"]:
            continue
        for server, point in mark["points"].items():
            stored = list((group.repo / "wal" / server).rglob(f"{point['wal_file']}-*"))
            streamed = list((group.repo / "stream" / server).glob(f"{point['wal_file']}*"))
            assert stored or (mark["delivery"].get(server) == "stream" and streamed), \
                f"mark {mark['name']} listed complete without {point['wal_file']} of {server}"
    assert isinstance(report, dict)
    return report


def complete_marks(group: Group) -> list[str]:
    return [m["name"] for m in json.loads(group.ok("marks", "--json", "--limit", "0"))
            if m["complete"]]


class Ledger:
    """Rows committed on every server of a group, numbered in commit order: `commit(n)`
    adds n rows to each; `count_on(server)` is what a restored server holds."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.committed = 0
        for server in group.servers:
            server.psql("CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY, "
                        "note text NOT NULL DEFAULT repeat('x', 200))")

    def commit(self, rows: int) -> int:
        first = self.committed + 1
        self.committed += rows
        for server in self.group.servers:
            server.psql(f"INSERT INTO ledger (id) SELECT g FROM "
                        f"generate_series({first}, {self.committed}) g")
        return self.committed

    @staticmethod
    def count_on(server: ScratchServer) -> int:
        """Rows 1..N with no hole: N (asserts there is no hole)."""
        count, top = server.psql("SELECT count(*), coalesce(max(id), 0) FROM ledger").split("|")
        assert count == top, f"ledger on {server.name} has holes: {count} rows, max id {top}"
        return int(count)


def add_dr_site(group: Group, extra: str = "") -> dict[str, ScratchServer]:
    """A [dr_site] standby per server (directories and ports under the group's workdir)."""
    standbys = {s.name: group.restored(s.name) for s in group.servers}
    text = "\n[dr_site]\nname = \"dr\"\n"
    for name, sb in standbys.items():
        text += (f'\n[[dr_site.standby]]\nserver = "{name}"\ndata_dir = "{sb.data_dir}"\n'
                 f'host = "127.0.0.1"\nport = {sb.port}\nsocket_dir = "{sb.base_dir}"\n')
    group.config_path.write_text(group.config_path.read_text() + extra + text)
    return standbys


def ready_files(server: ScratchServer) -> list[str]:
    """WAL files PostgreSQL still has to archive (their `.ready` status files)."""
    folder = server.data_dir / "pg_wal" / "archive_status"
    return sorted(p.name.removesuffix(".ready") for p in folder.glob("*.ready"))


def archiver(server: ScratchServer) -> dict[str, str]:
    """pg_stat_archiver of the server: archived_count, last_archived_wal, failed_count,
    last_failed_wal."""
    row = server.psql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
                      "coalesce(last_failed_wal, '') FROM pg_stat_archiver")
    keys = ("archived_count", "last_archived_wal", "failed_count", "last_failed_wal")
    return dict(zip(keys, row.split("|"), strict=True))


def switch_wal(server: ScratchServer) -> str:
    """Write a little, switch WAL; the name of the segment that was finished."""
    return server.psql(
        "SELECT pg_walfile_name(pg_switch_wal()) FROM (SELECT txid_current()) AS force_wal")


def stored_wal(group: Group, server: str, name: str) -> list[Path]:
    """Objects stored under a final name for WAL file `name` of `server`."""
    return [p for p in (group.repo / "wal" / server).rglob(f"{name}-*")
            if not p.name.startswith(TEMP_PREFIX)]
