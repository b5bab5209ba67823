"""The written record: an append-only, hash-chained journal of everything markship changes.

Each entry is its own repository object `journal/<seq>.json` (a checksummed record) carrying the
sha256 of the previous entry's bytes as stored (in an encrypted repository: the age file), so
appending needs no key: a host that may only write still keeps the record. Appending writes the
next sequence number with the repository's no-clobber publish (link() refuses an existing
name), so two concurrent writers can never both get a number: the loser re-reads the chain and
appends after the winner. `journal/HEAD` names the newest entry, so removing entries from the
end is noticed too.

What it proves: that no entry was removed, reordered or altered since it was written, by
anyone who did not also rewrite every later entry and HEAD. The journal travels with the
repository to the DR site; a copy kept elsewhere (e.g. the DR site's repository copy) is what
makes a full rewrite detectable.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from pydantic import Field

from markship import osuser
from markship.errors import CorruptObject, MarkshipError, ObjectMissing
from markship.pg.conninfo import redact_text
from markship.repository import journalchain, layout, records
from markship.repository.base import Repository
from markship.repository.records import Record
from markship.timefmt import utcnow


class JournalEntry(Record):
    seq: int
    time: datetime
    user: str
    host: str
    command: str
    outcome: str  # "ok", "failed: <reason>", or what an entry that is neither says
    objects: dict[str, str] = Field(default_factory=dict)
    diff: str | None = None  # config changes: a unified diff, secrets redacted
    config_text: str | None = None  # the (redacted) config this entry's diff leads to
    prev: str  # stored_hash of the previous entry ("" for the first); older: entry_hash

    @property
    def failed(self) -> bool:
        return self.outcome.startswith("failed")


class JournalHead(Record):
    seq: int
    hash: str


STORED = journalchain.STORED
stored_hash = journalchain.stored_hash
invoking_user = osuser.invoking_user


def entry_hash(entry: JournalEntry) -> str:
    """The chain link of journals written before links hashed the stored bytes."""
    body = json.dumps(entry.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _link_to(repo: Repository, entry: JournalEntry, link: str) -> str:
    """What `link` (a prev or HEAD hash) should be for `entry`, in the link's own format."""
    return stored_hash(repo, entry.seq) if link.startswith(STORED) else entry_hash(entry)


def head_fits(repo: Repository, head: JournalHead) -> bool:
    """Whether `repo` holds the entry `head` names, with the hash `head` carries (a head
    brought back from a copy may replace the repository's only then)."""
    try:
        entry = records.read_record(repo, layout.journal_entry_key(head.seq), JournalEntry)
        return _link_to(repo, entry, head.hash) == head.hash
    except MarkshipError:
        return False


def redact(text: str) -> str:
    """Config text with passwords and other secrets replaced: every libpq form (`password=`,
    `sslpassword=`, quoted or not, a URI's `user:secret@` and `?password=`), and other
    `…secret…=`, `…token…=`, `…passphrase…=` values."""
    return redact_text(text)


def config_diff(old: str | None, new: str) -> str:
    lines = difflib.unified_diff((old or "").splitlines(keepends=True),
                                 new.splitlines(keepends=True), "before", "after")
    return "".join(lines)


_entry_names = journalchain.entry_names


def last_entry(repo: Repository) -> JournalEntry | None:
    names = _entry_names(repo)
    if not names:
        return None
    return records.read_record(repo, layout.JOURNAL + names[-1], JournalEntry)


def append(repo: Repository, command: str, outcome: str, *, user: str | None = None,
           objects: dict[str, str] | None = None, diff: str | None = None,
           config_text: str | None = None) -> JournalEntry:
    """Add one entry after the newest one (retrying after a concurrent writer)."""
    return _chain(repo, lambda seq, prev: JournalEntry.model_validate(journalchain.entry_body(
        seq, prev, utcnow(), command, outcome, user=user, objects=objects, diff=diff,
        config_text=config_text)))


def rechain(repo: Repository, entry: JournalEntry, objects: dict[str, str]) -> JournalEntry:
    """Add `entry` (another chain's: a copy's, written while the repository was gone) after
    the newest one, as it was (time, user, host, command, outcome) but under the next number,
    linked to this chain, with `objects` added."""
    return _chain(repo, lambda seq, prev: entry.model_copy(
        update={"seq": seq, "prev": prev, "objects": {**entry.objects, **objects}}))


def newest(repo: Repository, count: int) -> list[JournalEntry]:
    """The newest `count` entries, oldest first."""
    return [records.read_record(repo, layout.JOURNAL + n, JournalEntry)
            for n in _entry_names(repo)[-count:]]


def fits(repo: Repository, entry: JournalEntry) -> bool:
    """Whether `entry` continues `repo`'s chain as it stands: its number is the next one and
    it links to the newest entry."""
    names = _entry_names(repo)
    last = int(names[-1][:-5]) if names else 0
    if entry.seq != last + 1:
        return False
    if not last:
        return entry.prev == ""
    previous = records.read_record(repo, layout.journal_entry_key(last), JournalEntry)
    return bool(entry.prev) and _link_to(repo, previous, entry.prev) == entry.prev


def _chain(repo: Repository, make: Callable[[int, str], JournalEntry]) -> JournalEntry:
    def sealed(seq: int, prev: str) -> tuple[JournalEntry, bytes]:
        entry = make(seq, prev)
        return entry, records.encode(entry)

    return journalchain.append(repo, sealed)


def entries(repo: Repository, since: datetime | None = None) -> list[JournalEntry]:
    found = [records.read_record(repo, layout.JOURNAL + n, JournalEntry)
             for n in _entry_names(repo)]
    return [e for e in found if since is None or e.time >= since]


def last_config_text(repo: Repository) -> str | None:
    for name in reversed(_entry_names(repo)):
        entry = records.read_record(repo, layout.JOURNAL + name, JournalEntry)
        if entry.config_text is not None:
            return entry.config_text
    return None


@dataclass(frozen=True)
class Verification:
    entries: int
    problem: str | None  # the first bad entry, named; None when the chain is whole

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(repo: Repository) -> Verification:
    """Walk the chain from the first entry; name the first entry that is missing, out of
    order or altered."""
    names = _entry_names(repo)
    previous: JournalEntry | None = None
    for index, name in enumerate(names):
        expected = index + 1
        seq = int(name[:-5])
        if seq != expected:
            return Verification(index, f"entry {expected} is missing (removed); the chain "
                                       f"resumes at entry {seq}")
        try:
            entry = records.read_record(repo, layout.JOURNAL + name, JournalEntry)
        except CorruptObject:
            return Verification(index, f"entry {seq} was altered (its checksum does not match)")
        if entry.seq != seq:
            return Verification(index, f"entry {seq} holds entry {entry.seq}'s content "
                                       "(reordered)")
        if entry.prev != (_link_to(repo, previous, entry.prev) if previous else ""):
            return Verification(index - 1, f"entry {seq - 1} was altered after it was written "
                                           f"(entry {seq} no longer matches it)")
        previous = entry
    try:
        head = records.read_record(repo, layout.JOURNAL_HEAD_KEY, JournalHead)
    except ObjectMissing:
        head = None
    except CorruptObject:
        return Verification(len(names), f"{layout.JOURNAL}HEAD was altered")
    if head is not None:
        newest = previous.seq if previous else 0
        if head.seq > newest:
            return Verification(len(names), f"entries {newest + 1}–{head.seq} are missing "
                                            "(removed from the end)")
        if (previous is not None and head.seq == newest
                and head.hash != _link_to(repo, previous, head.hash)):
            return Verification(len(names), f"entry {newest} was altered after it was written")
    return Verification(len(names), None)
