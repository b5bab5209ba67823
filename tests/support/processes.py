"""Processes of a test: finding a command's children in /proc, killing a markship command
with SIGKILL at a chosen point, and reaping what it left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import MARKSHIP, Group


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
