"""CPU priority for the thread that makes marks (stdlib only).

A mark holds the barrier, which production's two-phase commit phases wait on, and each of its
steps waits for this host to run it again once a server has answered. When the database
workload keeps every CPU busy, an ordinary thread waits its turn at each of those steps: the
mark takes longer and holds the barrier longer, so the very workload that crowds it out then
waits for it (a priority inversion). The marking thread needs a few milliseconds of CPU per
mark; a lower nice value (`[marks] nice`, default -10) lets it run as soon as an answer is in.
Measured in bench/marks_bench.py: 3 servers, pgbench -c 4 each, 2 CPUs.

Linux keeps a nice value per thread, so only the agent's marking thread (and the thread that
writes mark records for it) gets it: not backups, dumps or the WAL receivers. Lowering nice
needs root (CAP_SYS_NICE) or RLIMIT_NICE: markship started as root sets it on a thread made
before it becomes the repository's OS user (`marking_thread`); contrib/markship@.service sets
LimitNICE for an agent started as that user.
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:  # not imported on the lean path of `markship mark`
    from collections.abc import Callable
    from concurrent.futures import ThreadPoolExecutor


def marking_thread(nice: int, warn: Callable[[str], None]) -> ThreadPoolExecutor:
    """A single thread to make marks on, at nice value `nice` (0: left alone), started now.

    Start it before becoming the repository's OS user: root may lower a thread's nice value,
    and the thread keeps it when the process switches user (every thread switches). `warn`
    gets the reason when the value could not be set."""
    def start() -> None:
        if nice and (problem := set_for_thread(nice)) is not None:
            warn(problem)

    from concurrent.futures import ThreadPoolExecutor

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="markship-marks",
                                  initializer=start)
    executor.submit(int).result()  # the thread exists (and has its priority) from here on
    return executor


def current() -> int:
    """The calling thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def set_for_thread(nice: int) -> str | None:
    """Give the calling thread nice value `nice`; returns why not when that is not allowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        return (f"the marking thread keeps nice {current()}, not [marks] nice = {nice} "
                f"({exc.strerror}): on a busy host marks take longer and hold the barrier "
                f"longer; start the agent as root, allow it (systemd: LimitNICE={nice}), or "
                f"set [marks] nice = 0")
    return None
