"""The per-OS-user folder where markship keeps what it may forget without harm between its
own runs: WAL push markers and parsed settings (markship.wal.spool), records of WAL given up
(markship.wal.guard), repositories found unreachable (markship.repository.reach).

It lives under /var/tmp, private to its user (0700). What is kept there is only relied on
while the folder is the user's alone: a folder planted by another user counts as empty.
Imports nothing but `os`: the WAL commands reach it before anything else.
"""

from __future__ import annotations

import os


def top(uid: int | None = None) -> str:
    """The folder of `uid` (default: the user this process runs as)."""
    return os.path.join("/var/tmp", f"markship-spool-{os.getuid() if uid is None else uid}")


def trusted() -> bool:
    """The folder exists and is ours alone."""
    try:
        stat = os.lstat(top())
    except OSError:
        return False
    return stat.st_uid == os.getuid() and stat.st_mode & 0o077 == 0 and os.path.isdir(top())


def ours() -> bool:
    """The folder is ours alone, created (0700) when missing; False when it cannot be made
    or belongs to someone else."""
    if not os.path.isdir(top()):
        try:
            os.makedirs(top(), mode=0o700, exist_ok=True)
        except OSError:
            return False
    return trusted()
