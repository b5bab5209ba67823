"""Holds: a restore in progress keeps its backup set (and so its WAL) from `expire`.

A hold is a record under `holds/` (repository.layout.hold_key) written when a restore starts
and removed when it ends. One left by a restore that died counts only while it may still be
running: on this host while its process lives, from another host for one day.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from markship.repository import layout, records
from markship.repository.base import Repository
from markship.repository.catalog import BackupRecord
from markship.repository.records import Name, Record
from markship.timefmt import utcnow

OTHER_HOST_SECONDS = 86400


class Hold(Record):
    set_id: Name
    server: Name
    pid: int
    host: str
    since: datetime


@contextmanager
def hold(repo: Repository, backup: BackupRecord) -> Iterator[None]:
    """Protect the backup set (and so its WAL) from retention while the restore runs."""
    key = layout.hold_key(backup.set_id, backup.server, os.getpid())
    record = Hold(set_id=backup.set_id, server=backup.server, pid=os.getpid(),
                  host=socket.gethostname(), since=utcnow())
    records.write_record(repo, key, record, overwrite=True)
    try:
        yield
    finally:
        repo.delete(key)


def active_holds(repo: Repository) -> set[str]:
    """Set ids held by restores still running (same host: pid alive; other hosts: < 1 day)."""
    held: set[str] = set()
    for each in records.read_folder(repo, layout.HOLDS, Hold):
        if each.host == socket.gethostname():
            try:
                os.kill(each.pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
        elif (utcnow() - each.since).total_seconds() > OTHER_HOST_SECONDS:
            continue
        held.add(each.set_id)
    return held
