"""What a copy owes the repository: objects the DR site wrote to a copy while the repository
was gone (markship.repository.fallback), brought back once the repository answers again.

Why notes, and not a comparison of listings: a key the copy holds and the repository lacks
is either new (written to the copy during the outage) or deleted from the repository on
purpose (expire, a hold removed after a finished restore); the listings alone cannot tell
them apart, and guessing wrong either resurrects expired data or leaves a hole in the
restore chain. So the fallback writer leaves a note, `owed/<key>/<note-id>`, in the copy
before each object it writes there, and only noted keys are ever brought back. One note per
write, under a name of its own: a writer noting a key again while it is being settled adds a
new note that the settling does not delete (it deletes exactly the notes it read), so no
write is ever left unnoted.

Settling one noted key (`settle`, run by `sync` before anything else, so nothing the copy
owes is overwritten or deleted in it first):
- the copy no longer holds it (deleted there since, or a writer that died between the note
  and the object): nothing is owed; the note goes once it is STALE_SECONDS old (a younger
  one may belong to a write still in flight);
- a journal entry: copied back as stored when it continues the repository's chain (its
  number next, its link to the repository's newest entry); else — the copy lacked the
  newest entries when the repository went (its own `repository sync` entry, say), or both
  were written to meanwhile — added to the repository's chain as it was (time, user,
  command, outcome) under the next number, naming the copy and its number there — once:
  an entry found so among the repository's newest RECHAINED_WINDOW is not added again
  (a settling that stopped before deleting its notes); the journal head is then the
  repository's own;
- the repository lacks it: copied back as stored, create-only;
- the repository holds the same content: nothing to do (WAL is named by its content);
- a record rewritten in place (noted by a write that may overwrite: failover records, the
  journal head) that differs: the newer one wins — the copy's replaces the repository's only
  when the copy's was written later (listing times, clocks agreeing as for leases) and, for
  the journal head, only when the repository then holds the entry it names; otherwise the
  repository's stays and `sync` refreshes the copy from it;
- anything else that differs (an object written once under a key the repository also
  wrote meanwhile, equal times included), and a journal entry that cannot be read as one:
  a conflict. The repository's object stays, the
  copy's is kept beside it in the repository under `conflicts/<copy>/<key>`, and the
  conflict is reported: one line in the result and a journal entry (when the journal can be
  written). The copy's key then takes the repository's object (its own is kept in the
  repository), as after a journal entry is chained anew.
A key's notes are deleted only once it is settled; a failure stops the settling with the
rest still owed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time

from markship.errors import ConflictError, CorruptObject, MarkshipError, ObjectMissing
from markship.repository import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.repository.base import Repository
    from markship.repository.journal import JournalEntry
    from markship.repository.objects import ObjectInfo

STALE_SECONDS = 3600.0  # a note without its object, older than this, owes nothing
RECHAINED_WINDOW = 64  # newest journal entries looked at for one already chained anew
CHUNK = 1 << 20


def note(copy: Repository, key: str, overwrite: bool) -> None:
    """Leave a note in `copy` that `key` is about to be written there while the repository
    is gone (`overwrite`: by a write that may replace it, a record rewritten in place)."""
    note_id = f"{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
    body = json.dumps({"overwrite": overwrite}).encode() + b"\n"
    copy.write_bytes(f"{layout.owed_key(key)}/{note_id}", body, metadata=True)


class Settled:
    """What settling a copy's notes did."""

    __slots__ = ("conflicts", "returned_bytes", "returned_objects")

    def __init__(self) -> None:
        self.returned_objects = 0  # copied back to the repository (or replaced a record there)
        self.returned_bytes = 0
        self.conflicts: list[str] = []  # one line each


def owed(copy: Repository) -> dict[str, list[ObjectInfo]]:
    """The keys `copy` owes the repository, each with its notes."""
    notes: dict[str, list[ObjectInfo]] = {}
    for info in copy.iter_objects(layout.OWED):
        key = info.key[len(layout.OWED):].rpartition("/")[0]
        if key:
            notes.setdefault(key, []).append(info)
    return notes


class _Copy:
    __slots__ = ("name", "repo")

    def __init__(self, name: str, repo: Repository) -> None:
        self.name, self.repo = name, repo


def settle(primary: Repository, copy: Repository, copy_name: str,
           now: float | None = None) -> Settled:
    """Bring back to `primary` what `copy` (named `copy_name` in the config) owes it (see the
    module docstring). Raises RepositoryError; what was settled before stays settled."""
    result = Settled()
    notes = owed(copy)
    now = time.time() if now is None else now
    named = _Copy(copy_name, copy)
    for key in sorted(notes):  # journal entries before the journal head
        try:
            done = _settle_key(primary, named, key, notes[key], now, result)
            if done:
                for info in notes[key]:
                    copy.delete(info.key)
        except ObjectMissing:
            continue  # gone while settling (deleted on the copy): owed again next round
    return result


def _copy_stored(source: Repository, target: Repository, key: str, target_key: str,
                 overwrite: bool = False) -> int:
    """Object `key` of `source`, as stored, into `target_key` of `target`; the bytes."""
    with source.open_stored(key) as stored:
        return target.write_stored(target_key, stored, overwrite=overwrite).size


def _info(repo: Repository, key: str) -> ObjectInfo | None:
    """`key` as listed (its time), found in its folder's listing: a listing from the key
    itself may start after it (S3's start-after)."""
    folder = key.rpartition("/")[0]
    return next((o for o in repo.iter_objects(folder + "/" if folder else "")
                 if o.key == key), None)


def _settle_key(primary: Repository, copy: _Copy, key: str, notes: list[ObjectInfo],
                now: float, result: Settled) -> bool:
    """Settle one key; whether its notes may go."""
    mine = _info(copy.repo, key)
    if mine is None:
        return all(now - n.mtime >= STALE_SECONDS for n in notes)
    theirs = _info(primary, key)
    if key.startswith(layout.JOURNAL) and key != layout.JOURNAL_HEAD_KEY:
        return _settle_entry(primary, copy, key, theirs is not None, result)
    if theirs is None:
        try:
            result.returned_bytes += _copy_stored(copy.repo, primary, key, key)
            result.returned_objects += 1
            return True
        except ConflictError:  # written to the primary meanwhile
            theirs = _info(primary, key)
            if theirs is None:
                return False
    if _same(primary, copy.repo, key):
        return True
    in_place = any(_overwrites(copy.repo, n.key) for n in notes)
    if in_place and _newer(copy.repo, mine, primary, theirs, key):
        result.returned_bytes += _copy_stored(copy.repo, primary, key, key, overwrite=True)
        result.returned_objects += 1
        return True
    if in_place and theirs.mtime > mine.mtime:
        return True  # the primary's is the newer: sync refreshes the copy from it
    _keep_both(primary, copy, key, result)
    return True


def _settle_entry(primary: Repository, copy: _Copy, key: str, taken: bool,
                  result: Settled) -> bool:
    """A journal entry the copy owes: copied as stored when it continues the repository's
    chain; else (the copy's journal went its own way: it lacked the newest entries when the
    repository went, or both were written meanwhile) added to the repository's chain as it
    was, under the next number, naming the copy and its number there."""
    from markship.repository import journal, records

    if taken and _same(primary, copy.repo, key):
        return True
    try:
        entry = records.read_record(copy.repo, key, journal.JournalEntry)
    except CorruptObject:  # kept as it is, and reported: it never blocks the rest
        _keep_both(primary, copy, key, result)
        return True
    if not taken and journal.fits(primary, entry):
        try:
            result.returned_bytes += _copy_stored(copy.repo, primary, key, key)
            result.returned_objects += 1
            return True
        except ConflictError:
            pass  # a writer took this number meanwhile: chained after it instead
    marks = {"from_copy": copy.name, "copy_seq": str(entry.seq)}
    if not any(_rechained(e, entry, marks) for e in journal.newest(primary, RECHAINED_WINDOW)):
        journal.rechain(primary, entry, marks)
        result.returned_objects += 1
    _align(primary, copy, key)
    return True


def _rechained(found: JournalEntry, entry: JournalEntry, marks: dict[str, str]) -> bool:
    """Whether `found` is `entry` chained anew already (by a settling that stopped before
    deleting the notes, or one running at once)."""
    return (found.time, found.host, found.command) == (entry.time, entry.host, entry.command) \
        and all(found.objects.get(k) == v for k, v in marks.items())


def _align(primary: Repository, copy: _Copy, key: str) -> None:
    """The copy's `key` replaced by the repository's now that the copy's content is kept in
    the repository (rechained, or under conflicts/): `sync` refreshes a record only when the
    listings show it rewritten, and the repository's may look older."""
    with contextlib.suppress(ObjectMissing):
        _copy_stored(primary, copy.repo, key, key, overwrite=True)


def _overwrites(copy: Repository, note_key: str) -> bool:
    try:
        return bool(json.loads(copy.read_bytes(note_key)).get("overwrite"))
    except (ValueError, AttributeError, CorruptObject):
        return False  # a damaged note: the stricter reading (create-only)


def _newer(copy: Repository, mine: ObjectInfo, primary: Repository, theirs: ObjectInfo,
           key: str) -> bool:
    """Whether the copy's version of in-place record `key` replaces the primary's."""
    if mine.mtime <= theirs.mtime:
        return False
    if key != layout.JOURNAL_HEAD_KEY:
        return True
    from markship.repository import journal, records

    try:  # the head must name an entry the primary holds, with its hash
        head = records.read_record(copy, key, journal.JournalHead)
        ours = records.read_record(primary, key, journal.JournalHead)
    except MarkshipError:
        return False
    return head.seq > ours.seq and journal.head_fits(primary, head)


def _same(primary: Repository, copy: Repository, key: str) -> bool:
    """Whether both hold the same content under `key` (stored bytes may differ: an object
    encrypted twice, or compressed at another level)."""
    if layout.split_wal_key(key) is not None:
        return True  # named by the digest of its content
    with primary.open(key) as a, copy.open(key) as b:
        while True:
            left, right = a.read(CHUNK), b.read(CHUNK)
            if left != right:
                return False
            if not left:
                return True


def _keep_both(primary: Repository, copy: _Copy, key: str, result: Settled) -> None:
    from markship.repository import journal

    kept = layout.conflict_key(copy.name, key)
    with contextlib.suppress(ConflictError):  # kept by an earlier round
        _copy_stored(copy.repo, primary, key, kept)
    _align(primary, copy, key)
    line = (f"copy {copy.name}: {key} differs from the repository's (or is damaged): the "
            f"repository's is kept, the copy's is kept beside it as {kept}; compare them")
    result.conflicts.append(line)
    with contextlib.suppress(MarkshipError):  # the line above is reported anyway
        journal.append(primary, "repository sync", f"conflict: {line}", objects={"key": key})
