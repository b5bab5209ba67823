"""Repositories found unreachable, remembered across commands for a while.

A repository read through its copies (markship.repository.fallback) passes over a member it
could not reach, but only for the rest of one command. PostgreSQL runs `wal-fetch` once per
WAL file, so at the DR site, with production's repository cut off (a network that drops
packets rather than refusing them), every segment would wait again for the connect timeout
and the retries before the copy is read: tens of seconds per 16 MB of recovery.

So a member passed over is noted here, in the user's private folder (markship.userspool),
for PASS_OVER_SECONDS; while the note is fresh, other commands of the same user pass that
member over without asking it. Once the note is older, the next command asks the member
again (and notes it again if it still cannot be reached). A note in a folder another user
could write is never relied on; losing the notes only costs time.
"""

from __future__ import annotations

import os
import time

from markship import userspool

PASS_OVER_SECONDS = 60.0
FOLDER = "~unreachable"  # '~': never a server's spool name (markship.names)


def _note_path(location: str) -> str:
    try:
        from _blake2 import blake2b  # hashlib would load OpenSSL (wal-fetch's start-up)
    except ImportError:
        from hashlib import blake2b
    digest = blake2b(location.encode(), digest_size=16).hexdigest()
    return os.path.join(userspool.top(), FOLDER, digest)


def remembered(location: str, now: float | None = None) -> str | None:
    """Why the repository at `location` could not be reached, when a command of this user
    found so less than PASS_OVER_SECONDS ago; None otherwise."""
    path = _note_path(location)
    try:
        age = (time.time() if now is None else now) - os.stat(path).st_mtime
        if not 0 <= age < PASS_OVER_SECONDS or not userspool.trusted():
            return None
        with open(path, encoding="utf-8", errors="replace") as handle:
            where, _, reason = handle.read(4096).partition("\n")
    except OSError:
        return None
    if where != location:
        return None
    return reason.strip() or "unreachable"


def remember(location: str, reason: str) -> None:
    """Note that the repository at `location` could not be reached just now (best effort)."""
    if not userspool.ours():
        return
    path = _note_path(location)
    temp = f"{path}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(f"{location}\n{reason}\n")
        os.replace(temp, path)
    except OSError:
        try:  # noqa: SIM105 - contextlib is one import too many on the wal-fetch path
            os.unlink(temp)
        except OSError:
            pass


def forget(location: str) -> None:
    """The repository at `location` answered again: drop its note."""
    try:  # noqa: SIM105 - as above
        os.unlink(_note_path(location))
    except OSError:
        pass
