"""Reading through the copies: a repository that reads from the primary and, when the primary
cannot be reached or lacks an object, from the copies in their configured order — so the DR
site restores, fails over and feeds its standbys when production's repository is gone.

Reads:
- an object (open, open_stored, read_bytes, size): the first repository that has it; an
  unreachable repository is passed over, for the rest of the command (`passed_over`), and by
  this user's other commands for a minute (markship.repository.reach: wal-fetch runs once
  per WAL file, and a repository that drops packets costs each run its timeouts); one passed
  over on that notice alone is still asked, last, before an object is called missing. A
  damaged object (CorruptObject) is raised when no other repository has it intact;
  ObjectMissing only when no reachable repository has it and at least one answered; the
  first error when none could be reached;
- exists(): true when any reachable repository has it;
- listings (children, iter_objects): the union of every reachable repository's listing (a
  WAL file or a mark the primary lacks is found in a copy), primary first; an unreachable
  repository is passed over unless none answers; one passed over on notice is asked only
  when the others list nothing.

Writes, deletes and locks go to the primary. Only when the primary is gone — unreachable (or
found so by a command of this user less than a minute ago), or without its marker object (an
unmounted or renamed directory answers like an empty one) — do
they go to the first copy that holds its marker: a failover, a drill or a restore's hold at
the DR site is then recorded in the copy. Each object written to a copy that way (except what
is never copied: locks, holds, the stream folder) is noted as owed back first: an
`owed/<key>` object in that copy, written before the object itself, so a crash between the
two leaves a note without an object (settled as nothing owed) and never an object without a
note. When the primary answers again, markship.repository.owed brings the noted objects back
to it; a note per key (not one per process) needs no read-modify-write, so parallel writers
to the copy cannot lose each other's notes, and a key is settled, and its note deleted, on
its own. Deleting on a copy leaves the note: a key no longer in the copy is owed nothing.
"""

from __future__ import annotations

import threading

from markship.errors import CorruptObject, ObjectMissing, RepositoryError
from markship.repository import layout, reach

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from typing import BinaryIO, TypeVar

    from markship.repository.base import Readable, Repository, StagedObject, Writable
    from markship.repository.objects import ObjectInfo, StoredObject, TempObject

    T = TypeVar("T")


class Fallback:
    """The primary repository with its copies behind it (see the module docstring)."""

    def __init__(self, primary: Repository, copies: list[Repository]) -> None:
        self.primary = primary
        self.copies = copies
        self.location = primary.location
        self._writer: Repository | None = None
        self._deciding = threading.Lock()  # parallel restores ask for the writer at once
        # location → why it could not be reached, for every member passed over so far; those
        # another command of this user found unreachable a moment ago are passed over at once
        self.passed_over: dict[str, str] = {}
        self._on_notice: set[str] = set()  # of those, the ones not asked in this command yet
        for repo in (primary, *copies):
            reason = reach.remembered(_identity(repo))
            if reason is not None:
                self.passed_over[repo.location] = reason
                self._on_notice.add(repo.location)
                _one_try(repo)

    @property
    def members(self) -> list[Repository]:
        """The repositories to ask, in order: one that could not be reached once is passed
        over for the rest of the command (each request to it may wait for its retries),
        unless none is left."""
        every = [self.primary, *self.copies]
        return [r for r in every if r.location not in self.passed_over] or every

    # -- reading -------------------------------------------------------------------------------

    def _passed_over(self, repo: Repository, exc: RepositoryError) -> None:
        self.passed_over.setdefault(repo.location, exc.one_line())
        reach.remember(_identity(repo), exc.one_line())

    def _on_notice_only(self, asked: list[Repository]) -> list[Repository]:
        """The members passed over on another command's notice alone, not asked yet: asked
        last, when the others gave nothing. "Not there" (to wal-fetch: the end of the
        archived WAL) is never answered without asking every member once."""
        return [r for r in (self.primary, *self.copies)
                if r.location in self._on_notice and r not in asked]

    def _answered(self, repo: Repository) -> None:
        """A member passed over on notice answered after all: ask it again from now on."""
        self._on_notice.discard(repo.location)
        self.passed_over.pop(repo.location, None)
        reach.forget(_identity(repo))

    def _first(self, call: Callable[[Repository], T]) -> T:
        missing: ObjectMissing | None = None
        damaged: CorruptObject | None = None
        unreachable: RepositoryError | None = None
        asked = self.members
        later = self._on_notice_only(asked)
        for repo in (*asked, *later):
            self._on_notice.discard(repo.location)
            try:
                found = call(repo)
            except ObjectMissing as exc:
                missing = missing or exc
                if repo in later:
                    self._answered(repo)
                continue
            except CorruptObject as exc:  # e.g. not encrypted although encryption is on
                damaged = damaged or exc
                if repo in later:
                    self._answered(repo)
                continue
            except RepositoryError as exc:
                unreachable = unreachable or exc
                self._passed_over(repo, exc)
                continue
            if repo in later:
                self._answered(repo)
            return found
        # A damaged object must never read as a missing one (wal-fetch: the end of WAL).
        if damaged is not None:
            raise damaged
        if missing is not None:
            raise missing
        assert unreachable is not None
        raise unreachable

    def open(self, key: str) -> BinaryIO:
        return self._first(lambda repo: repo.open(key))

    def open_stored(self, key: str) -> BinaryIO:
        return self._first(lambda repo: repo.open_stored(key))

    def read_bytes(self, key: str) -> bytes:
        return self._first(lambda repo: repo.read_bytes(key))

    def size(self, key: str) -> int:
        return self._first(lambda repo: repo.size(key))

    def plaintext(self, stored: Readable, key: str) -> Readable:
        return self.primary.plaintext(stored, key)  # every member holds the same encoding

    def exists(self, key: str) -> bool:
        unreachable: RepositoryError | None = None
        answered = False
        asked = self.members
        later = self._on_notice_only(asked)
        for repo in (*asked, *later):
            self._on_notice.discard(repo.location)
            try:
                if repo.exists(key):
                    if repo in later:
                        self._answered(repo)
                    return True
                answered = True
                if repo in later:
                    self._answered(repo)
            except RepositoryError as exc:
                unreachable = unreachable or exc
                self._passed_over(repo, exc)
        if not answered and unreachable is not None:
            raise unreachable
        return False

    def _union(self, listing: Callable[[Repository], list[T]]) -> list[list[T]]:
        found: list[list[T]] = []
        unreachable: RepositoryError | None = None
        asked = self.members
        later = self._on_notice_only(asked)
        for repo in (*asked, *later):
            if repo in later and any(found):
                break  # the listing is not empty: no need to wait for a silent member
            self._on_notice.discard(repo.location)
            try:
                found.append(listing(repo))
                if repo in later:
                    self._answered(repo)
            except RepositoryError as exc:
                unreachable = unreachable or exc
                self._passed_over(repo, exc)
        if not found and unreachable is not None:
            raise unreachable
        return found

    def children(self, prefix: str) -> list[str]:
        names: set[str] = set()
        for listed in self._union(lambda repo: repo.children(prefix)):
            names.update(listed)
        return sorted(names)

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        for listed in self._union(lambda repo: list(repo.iter_objects(prefix))):
            for info in listed:
                if info.key not in seen:
                    seen.add(info.key)
                    yield info

    # -- writing: the primary, or the first copy there when the primary is gone ----------------

    @property
    def writer(self) -> Repository:
        """Where writes go (decided once: commands are short, and a repository that comes
        back during one is written to by the next)."""
        with self._deciding:
            if self._writer is None:
                chosen = self.primary  # not set before the members are asked: other threads
                for repo in self.members:  # wait here instead of taking it half-decided
                    try:
                        if repo.exists(layout.MARKER_KEY):
                            chosen = repo
                            break
                    except RepositoryError as exc:
                        self._passed_over(repo, exc)
                        continue
                self._writer = chosen
            return self._writer

    def _owe(self, writer: Repository, key: str, overwrite: bool) -> None:
        """Note `key` as owed back to the primary when `writer` is a copy (before the write)."""
        if writer is not self.primary and layout.copied(key):
            from markship.repository.owed import note

            note(writer, key, overwrite)

    def _owing(self, writer: Repository, folder: str, name_for: Callable[[], str],
               overwrite: bool) -> Callable[[], str]:
        """`name_for`, noting the key it names as owed before the object takes that name."""
        def named() -> str:
            name = name_for()
            self._owe(writer, folder + name, overwrite)
            return name
        return named

    def write(self, key: str, source: Readable, *, overwrite: bool = False,
              metadata: bool = False) -> StoredObject:
        writer = self.writer
        self._owe(writer, key, overwrite)
        return writer.write(key, source, overwrite=overwrite, metadata=metadata)

    def write_named(self, folder: str, source: Readable, name_for: Callable[[], str], *,
                    overwrite: bool = False, metadata: bool = False) -> StoredObject:
        writer = self.writer
        return writer.write_named(folder, source,
                                  self._owing(writer, folder, name_for, overwrite),
                                  overwrite=overwrite, metadata=metadata)

    def write_named_by(self, folder: str, fill: Callable[[Writable], None],
                       name_for: Callable[[], str], *, overwrite: bool = False,
                       hashed: bool = True, metadata: bool = False) -> StoredObject:
        writer = self.writer
        return writer.write_named_by(folder, fill,
                                     self._owing(writer, folder, name_for, overwrite),
                                     overwrite=overwrite, hashed=hashed, metadata=metadata)

    def write_by(self, key: str, fill: Callable[[Writable], None], *, overwrite: bool = False,
                 metadata: bool = False) -> StoredObject:
        writer = self.writer
        self._owe(writer, key, overwrite)
        return writer.write_by(key, fill, overwrite=overwrite, metadata=metadata)

    def stage(self, folder: str, fill: Callable[[Writable], None], *,
              hashed: bool = True, metadata: bool = False) -> StagedObject:
        writer = self.writer
        staged = writer.stage(folder, fill, hashed=hashed, metadata=metadata)
        return staged if writer is self.primary else _OwingStage(self, writer, folder, staged)

    def write_bytes(self, key: str, data: bytes, *, overwrite: bool = False,
                    metadata: bool = False) -> StoredObject:
        writer = self.writer
        self._owe(writer, key, overwrite)
        return writer.write_bytes(key, data, overwrite=overwrite, metadata=metadata)

    def write_stored(self, key: str, source: Readable, *, overwrite: bool = False
                     ) -> StoredObject:
        writer = self.writer
        self._owe(writer, key, overwrite)
        return writer.write_stored(key, source, overwrite=overwrite)

    def delete(self, key: str) -> None:
        self.writer.delete(key)

    def temp_objects(self) -> list[TempObject]:
        return self.writer.temp_objects()

    def lock(self, name: str, purpose: str) -> AbstractContextManager[None]:
        return self.writer.lock(name, purpose)

    def lock_holder(self, name: str) -> str | None:
        return self.writer.lock_holder(name)

    def flush(self, folder: str) -> None:
        self.writer.flush(folder)

    def check_writable(self) -> None:
        self.writer.check_writable()


def _one_try(repo: Repository) -> None:
    """Ask a member found unreachable a moment ago without retries, when asked at all: an S3
    endpoint that drops packets then costs one connect timeout (5 s), not 30 s of retries.
    Takes effect before its first request (S3 repositories connect on first use)."""
    where = getattr(repo, "where", None)
    if where is not None and hasattr(where, "retries"):
        where.retries = 0


def _identity(repo: Repository) -> str:
    """What tells this repository apart from any other of the same user: its location, and
    for S3 the endpoint (one bucket name may exist on two S3 services)."""
    endpoint = getattr(getattr(repo, "where", None), "endpoint", "")
    return f"{repo.location} {endpoint}" if endpoint else repo.location


class _OwingStage:
    """An object staged in a copy: its key is noted as owed when it is published."""

    def __init__(self, fallback: Fallback, writer: Repository, folder: str,
                 staged: StagedObject) -> None:
        self.fallback, self.writer, self.folder, self.staged = fallback, writer, folder, staged

    def publish(self, name_for: Callable[[], str], *, overwrite: bool = False,
                sync: bool = True) -> StoredObject:
        return self.staged.publish(
            self.fallback._owing(self.writer, self.folder, name_for, overwrite),
            overwrite=overwrite, sync=sync)

    def stored_sha256(self) -> str:
        return self.staged.stored_sha256()

    def discard(self) -> None:
        self.staged.discard()
