"""How a mark's WAL reaches the repository by stream: waiting for the agent's receivers
(markship.marks.stream runs them) to flush past each restore point. Standard library only:
the lean path of `markship mark` makes its marks through markship.marks.take too."""

from __future__ import annotations

import time

from markship.pg import fanout
from markship.pg.marksql import RECEIVER_FLUSHED
from markship.repository.fs import FsRepository

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from markship.repository.base import Repository


def wait_flushed(conns: Mapping[str, fanout.Link], lsns: dict[str, int],
                 timeout: float, first: dict[str, fanout.Rows] | None = None) -> set[str]:
    """Wait until each server's receiver has flushed WAL up to its `lsns` entry; return the
    servers where it did. A server without a receiver, or whose receiver did not get there
    within `timeout` seconds, is left out. Every round asks all waiting servers at once;
    `first` holds answers to RECEIVER_FLUSHED already asked (the first round is then
    skipped)."""
    began = time.monotonic()
    deadline = began + timeout
    waiting = dict(lsns)
    done: set[str] = set()
    while waiting:
        answers = first or fanout.fan_out(
            {server: (conns[server], RECEIVER_FLUSHED, ()) for server in waiting})
        first = None
        for server, rows in answers.items():
            flushed = rows[0][0] if rows else None
            if flushed is None:
                del waiting[server]  # no receiver
            elif int(flushed) >= waiting[server]:
                del waiting[server]
                done.add(server)
        now = time.monotonic()
        if not waiting or now >= deadline:
            return done
        # The receiver usually reports within milliseconds: poll closely at first (each poll
        # is one small query per server), then back off.
        time.sleep(0.002 if now - began < 0.2 else 0.02)
    return done


def in_place(repo: Repository) -> bool:
    """Whether the receivers write into the repository itself (a directory), rather than
    into the spool of markship.marks.upload (object storage)."""
    return isinstance(repo, FsRepository)
