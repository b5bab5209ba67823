"""Peak resident set of a whole process tree (a command and its descendants), sampled from
/proc while the command runs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from common import Timed, run_timed


def _ppid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
    try:
        return int(text[text.rindex(")") + 2:].split()[1])
    except (ValueError, IndexError):
        return None


def _comm(pid: int) -> str:
    """The command name of a process ("" once it is gone)."""
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _status_kb(pid: int) -> tuple[int, int, str] | None:
    """(VmRSS, VmHWM, Name) of one process, in KiB; None once it is gone (or a zombie)."""
    rss = hwm = -1
    name = "?"
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("Name:"):
                    name = line.split(None, 1)[1].strip()
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break  # VmRSS comes after VmHWM
    except (OSError, ValueError):
        return None
    if rss < 0 or hwm < 0:
        return None
    return rss, hwm, name


class TreeRssPoller(threading.Thread):
    """Samples the resident set of a process and all its descendants.

    Every `interval` s it sums VmRSS over the known members of the tree (the sampled tree
    peak), and keeps each member's VmHWM (its exact own peak; their sum bounds the tree's peak
    from above). The descendants are found by scanning /proc every `scan_interval` s (this
    kernel has no /proc/PID/task/TID/children), and at once when the tree is first seen.
    A descendant whose command name is in `exclude` is left out with its own descendants (a
    PostgreSQL server that a restore starts is not part of the markship process tree).
    """

    def __init__(self, pid: int, interval: float = 0.01, scan_interval: float = 0.1,
                 exclude: frozenset[str] = frozenset()) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.exclude = exclude
        self.interval = interval
        self.scan_interval = scan_interval
        self.members: set[int] = {pid}
        self.peak_sum_kb = 0
        self.hwm_kb: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.samples = 0
        self.most_members = 1
        self.done = threading.Event()

    def _scan(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                parent = _ppid(entry)
                if parent is not None:
                    children.setdefault(parent, []).append(int(entry))
        found: set[int] = set()
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            if pid not in found and (pid == self.pid or _comm(pid) not in self.exclude):
                found.add(pid)
                todo.extend(children.get(pid, ()))
        self.members |= found

    def run(self) -> None:
        next_scan = 0.0
        while not self.done.is_set():
            now = time.monotonic()
            if now >= next_scan:
                self._scan()
                next_scan = now + self.scan_interval
            total = 0
            alive = 0
            for pid in list(self.members):
                status = _status_kb(pid)
                if status is None:
                    continue
                rss, hwm, name = status
                if name in self.exclude:  # found while still pg_ctl's `sh`, now the server
                    continue
                alive += 1
                total += rss
                self.hwm_kb[pid] = max(self.hwm_kb.get(pid, 0), hwm)
                self.names[pid] = name
            self.peak_sum_kb = max(self.peak_sum_kb, total)
            self.most_members = max(self.most_members, alive)
            self.samples += 1
            self.done.wait(self.interval)

    def process_hwm_kb(self) -> int | None:
        return self.hwm_kb.get(self.pid)

    def report(self) -> dict[str, Any]:
        return {
            "tree_peak_sum_vmrss_kb": self.peak_sum_kb,
            "sum_of_member_vmhwm_kb": sum(self.hwm_kb.values()),
            "members": [{"pid": pid, "name": self.names.get(pid, "?"), "vmhwm_kb": kb}
                        for pid, kb in sorted(self.hwm_kb.items())],
            "markship_process_vmhwm_kb": self.hwm_kb.get(self.pid, 0),
            "samples": self.samples,
            "most_members_at_once": self.most_members,
        }


def run_tree_rss(argv: Sequence[str], timeout: float = 3600,
                 exclude: frozenset[str] = frozenset()) -> tuple[Timed, dict[str, Any]]:
    """Run a command to completion while TreeRssPoller samples it and its descendants (those
    named in `exclude` left out, with theirs)."""
    pollers: list[TreeRssPoller] = []

    def poller(pid: int) -> TreeRssPoller:
        pollers.append(TreeRssPoller(pid, exclude=exclude))
        return pollers[0]

    timed = run_timed(argv, timeout=timeout, poller=poller)
    return timed, pollers[0].report()


