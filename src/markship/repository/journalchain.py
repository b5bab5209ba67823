"""Appending to the journal (markship.repository.journal): the chain link, the next number
taken with the repository's no-clobber publish, then HEAD. Standard library only, so the lean
path of `markship mark` journals its mark without the models; the journal module reads,
verifies and appends through this one implementation."""

from __future__ import annotations

import os

from markship.errors import ConflictError, MarkshipError
from markship.osuser import invoking_user
from markship.repository import envelope, layout
from markship.timefmt import as_json

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the lean path of `markship mark`
    from collections.abc import Callable
    from datetime import datetime
    from typing import TypeVar

    from markship.repository.base import Repository, StagedObject

    T = TypeVar("T")

STORED = "stored-sha256:"


def entry_body(seq: int, prev: str, time: datetime, command: str, outcome: str, *,
               user: str | None = None, objects: dict[str, str] | None = None,
               diff: str | None = None, config_text: str | None = None,
               ) -> dict[str, object]:
    """A new journal entry in its JSON form (the body of a JournalEntry record)."""
    return {"seq": seq, "time": as_json(time), "user": user or invoking_user(),
            "host": os.uname().nodename, "command": command, "outcome": outcome,
            "objects": dict(objects or {}), "diff": diff, "config_text": config_text,
            "prev": prev}


def entry_names(repo: Repository) -> list[str]:
    return sorted(n for n in repo.children(layout.JOURNAL)
                  if n.endswith(".json") and n[:-5].isdigit())


def stored_hash(repo: Repository, seq: int) -> str:
    """The chain link to entry `seq`: the sha256 of its bytes as stored."""
    with repo.open_stored(layout.journal_entry_key(seq)) as handle:
        return STORED + envelope.sha256(handle.read()).hexdigest()


def append(repo: Repository, make: Callable[[int, str], tuple[T, bytes]]) -> T:
    """Add the entry `make(seq, prev link)` gives (it and its stored bytes) after the newest
    one, retrying after a concurrent writer took the number; then point HEAD at it."""
    for _attempt in range(100):
        seq, prev = _next(repo)
        entry, data = make(seq, prev)
        try:
            stored = repo.write_bytes(layout.journal_entry_key(seq), data, overwrite=False,
                                      metadata=True)
        except ConflictError:
            continue  # another writer took this number: chain after its entry
        head = {"seq": seq, "hash": STORED + stored.sha256}
        repo.write_bytes(layout.JOURNAL_HEAD_KEY, envelope.seal("JournalHead", head),
                         overwrite=True, metadata=True)
        return entry
    raise MarkshipError("the journal is too busy: 100 concurrent appends in a row failed",
                        "retry; look for a runaway process writing to the repository")


def _next(repo: Repository) -> tuple[int, str]:
    """The number the next entry takes, and its link to the newest one."""
    names = entry_names(repo)
    last = int(names[-1][:-5]) if names else 0
    return last + 1, stored_hash(repo, last) if last else ""


def append_entry(repo: Repository, command: str, outcome: str, *, user: str | None = None,
                 objects: dict[str, str] | None = None) -> None:
    """Add one entry without the model (the lean path of `markship mark`)."""
    from markship.timefmt import utcnow

    def make(seq: int, prev: str) -> tuple[None, bytes]:
        body = entry_body(seq, prev, utcnow(), command, outcome, user=user, objects=objects)
        return None, envelope.seal("JournalEntry", body)

    append(repo, make)


class Ahead:
    """A journal entry written ahead of its command's end: the entry and HEAD pointing at it
    stored under temp names and flushed, while the command works. Once it succeeded,
    `publish()` names them: two renames, where append() lists the journal, reads its newest
    entry and writes two objects. If another writer took the number meanwhile, the entry is
    appended the normal way. Making one raises what a write raises."""

    def __init__(self, repo: Repository, command: str, outcome: str, user: str,
                 objects: dict[str, str]) -> None:
        from markship.timefmt import utcnow

        self.repo, self.command, self.outcome = repo, command, outcome
        self.user, self.objects = user, objects
        self.seq, prev = _next(repo)
        data = envelope.seal("JournalEntry", entry_body(
            self.seq, prev, utcnow(), command, outcome, user=user, objects=objects))
        self.entry: StagedObject = envelope.stage_sealed(
            repo, layout.journal_entry_key(self.seq), lambda: data)
        try:
            head = {"seq": self.seq, "hash": STORED + self.entry.stored_sha256()}
            self.head: StagedObject = envelope.stage_sealed(
                repo, layout.JOURNAL_HEAD_KEY, lambda: envelope.seal("JournalHead", head))
        except BaseException:
            self.entry.discard()
            raise

    def publish(self) -> None:
        try:
            # HEAD's publish below flushes the folder for both names: the entry's name is
            # made first, so no journaling file system keeps HEAD without it.
            self.entry.publish(lambda: layout.journal_entry_key(self.seq).rpartition("/")[2],
                               sync=False)
        except ConflictError:  # another writer took the number: chain after its entry
            self.head.discard()
            append_entry(self.repo, self.command, self.outcome, user=self.user,
                         objects=self.objects)
            return
        except BaseException:
            self.head.discard()
            raise
        self.head.publish(lambda: layout.JOURNAL_HEAD_KEY.rpartition("/")[2], overwrite=True)

    def discard(self) -> None:
        self.entry.discard()
        self.head.discard()
