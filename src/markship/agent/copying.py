"""The agent's copier: keeps every [[repository.copy]] caught up with the primary, on a thread
of its own so marks never wait for it.

Every COPY_EVERY seconds each copy is synced (markship.repository.copies.sync): first what the
DR site wrote to the copy while the repository was gone is brought back to the repository
(markship.repository.owed; a key the repository holds otherwise is logged as
`copy.conflict`, an error, and journaled), then new objects copied, rewritten records
copied again, expired ones deleted. `sync` copies get their WAL from wal-push already;
everything else (backups, marks, records) reaches them here too. A copy
that cannot be reached is logged once when it goes and once when it is back; the next round
after it is back copies all it missed. Each round lists the primary and every copy (a
record rewritten in place is told from its copy by the listings' times, see
markship.repository.copies).
"""

from __future__ import annotations

import threading

from markship.agent.log import EventLog
from markship.errors import MarkshipError
from markship.repository.base import Repository
from markship.repository.copies import Copy, sync

COPY_EVERY = 2.0  # seconds between rounds


class Copier:
    """The copying thread of one agent."""

    def __init__(self, primary: Repository, copies: list[Copy], log: EventLog) -> None:
        self.primary = primary
        self.copies = copies
        self.log = log
        self.stop = threading.Event()
        self.failing: dict[str, str] = {}  # copy name → the problem logged when it began
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.copies:
            return
        self.thread = threading.Thread(target=self._run, name="copies", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop after the round in flight."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.round()
            self.stop.wait(COPY_EVERY)

    def round(self) -> None:
        """Sync every copy once; failures are logged, never raised."""
        for copy in self.copies:
            if self.stop.is_set():
                return
            self.sync_one(copy)

    def sync_one(self, copy: Copy) -> None:
        try:
            result = sync(self.primary, copy)
        except Exception as exc:  # the thread goes on whatever happened: logged, retried
            reason = exc.message if isinstance(exc, MarkshipError) else \
                f"unexpected {type(exc).__name__}: {exc}"
            if copy.name not in self.failing:  # once per outage, not once per round
                self.failing[copy.name] = reason
                self.log("copy.failed", level="error", copy=copy.name, reason=reason,
                         detail="retried every few seconds; nothing is lost meanwhile")
            return
        if self.failing.pop(copy.name, None) is not None:
            self.log("copy.recovered", copy=copy.name)
        for line in result.conflicts:
            self.log("copy.conflict", level="error", copy=copy.name, reason=line)
        if result.returned_objects:
            self.log("copy.returned", copy=copy.name, returned=result.returned_objects,
                     returned_bytes=result.returned_bytes,
                     detail="written to the copy while the repository was gone")
        if result.copied_objects or result.refreshed_objects or result.deleted_objects:
            self.log("copy.ok", copy=copy.name, copied=result.copied_objects,
                     copied_bytes=result.copied_bytes, refreshed=result.refreshed_objects,
                     deleted=result.deleted_objects)
