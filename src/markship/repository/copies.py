"""Copies of the repository ([[repository.copy]]): opening them, copying objects into them
byte for byte, catching a copy up with the primary, and how far behind one is.

A copy holds the same keys and the same stored bytes as the primary (an encrypted primary's
objects stay encrypted in the copy: it is opened with the same keys). Objects are copied as
stored (`open_stored` → `write_stored`): streamed, create-only, visible only once complete.

What `sync` does to a copy:
- first, what the copy owes the repository (objects the DR site wrote to it while the
  repository was gone) is brought back to the repository: markship.repository.owed;
- every object the copy lacks is copied (except locks, the stream folder and holds:
  layout.NOT_COPIED);
- a record (`.json`) the primary rewrote since it was copied (sets, the journal head, the
  agent's state, failover records) is copied again;
- an object `expire` deleted from the primary is deleted from the copy. Retention deletes
  oldest first within each of its folders (layout.expiry_unit: one server's WAL file by
  file, one server's backups set by set, sets, marks, …), so the copy deletes an object
  only when the primary still holds objects in that folder and every one of them belongs to
  a later unit (a damaged primary that lost part of its oldest set deletes nothing of it).
  A primary that lists nothing in a folder (emptied, unmounted, or damaged) deletes nothing
  there, a listing that fails stops the sync before anything is deleted, and a primary
  without its marker object is not synced from at all: a broken primary never empties its
  copy.

Module-level imports stay light: wal-push imports this module for `sync` copies.
"""

from __future__ import annotations

import time

from markship.errors import ConflictError, ObjectMissing, RepositoryError
from markship.repository import layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

    from markship.config.model import Config, CopySection
    from markship.repository.base import Repository
    from markship.repository.objects import ObjectInfo

RECORD_SUFFIX = layout.RECORD_SUFFIX
MTIME_SLACK = 1.0  # seconds; see _outdated


class Copy:
    """One [[repository.copy]], opened: its name, mode (async or sync) and repository."""

    __slots__ = ("mode", "name", "repo")

    def __init__(self, name: str, mode: str, repo: Repository) -> None:
        self.name, self.mode, self.repo = name, mode, repo

    def __repr__(self) -> str:
        return f"Copy({self.name!r}, {self.mode!r}, {self.repo.location!r})"


def open_copy(section: CopySection, config: Config, strict_catalog: bool = True) -> Copy:
    """A configured copy, opened with the primary's encryption settings."""
    from markship.repository.backends import location_of, open_repository

    where = location_of(section)
    encryption = config.encryption
    if encryption is None:
        return Copy(section.name, section.mode, open_repository(where))
    return Copy(section.name, section.mode, open_repository(
        where, [encryption.recipient], encryption.identity_file, encryption.catalog_key_file,
        strict_catalog=strict_catalog))


def open_copies(config: Config, names: Iterable[str] | None = None) -> list[Copy]:
    """The config's copies in their order (only those named, when `names` is given)."""
    wanted = None if names is None else set(names)
    return [open_copy(c, config) for c in config.repository.copies
            if wanted is None or c.name in wanted]


# -- copying objects ----------------------------------------------------------------------------


def copy_object(source: Repository, target: Repository, key: str,
                overwrite: bool = False) -> int:
    """Copy object `key` from `source` to `target` as stored; the bytes copied. Raises
    ConflictError when `target` holds `key` and `overwrite` is false, ObjectMissing when
    `source` lacks it."""
    with source.open_stored(key) as stored:
        return target.write_stored(key, stored, overwrite=overwrite).size


def named(copy: Copy, exc: RepositoryError) -> RepositoryError:
    """`exc` (from the copy's repository), its message naming the copy."""
    return type(exc)(f"copy {copy.name} ({copy.repo.location}): {exc.message}",
                     exc.hint or "make the copy reachable and writable, then retry")


# -- catching a copy up -------------------------------------------------------------------------


class SyncResult:
    """What one sync did to a copy."""

    __slots__ = ("conflicts", "copied_bytes", "copied_objects", "deleted_objects", "name",
                 "refreshed_objects", "returned_bytes", "returned_objects")

    def __init__(self, name: str) -> None:
        self.name = name
        self.returned_objects = 0  # owed by the copy: brought back to the repository
        self.returned_bytes = 0
        self.conflicts: list[str] = []  # owed keys the repository holds otherwise: one line each
        self.copied_objects = 0
        self.copied_bytes = 0
        self.refreshed_objects = 0  # records the primary rewrote, copied again
        self.deleted_objects = 0  # deleted from the primary by expire, so from the copy


class Lag:
    """How far a copy is behind its primary: the objects (and bytes) it lacks or holds in an
    older version, and the age of the oldest of them (seconds; 0 when none)."""

    __slots__ = ("bytes", "objects", "oldest_seconds")

    def __init__(self, objects: int, size_bytes: int, oldest_seconds: float) -> None:
        self.objects, self.bytes, self.oldest_seconds = objects, size_bytes, oldest_seconds


def _listing(repo: Repository) -> dict[str, ObjectInfo]:
    return {o.key: o for o in repo.iter_objects("") if layout.copied(o.key)}


def _check_primary(primary: Repository) -> None:
    if not primary.exists(layout.MARKER_KEY):
        raise RepositoryError(
            f"the repository {primary.location} has no {layout.MARKER_KEY}: it is not "
            "mounted or not a markship repository, so no copy is synced from it",
            "mount it or correct [repository]; the copies keep what they hold")


def _check_same_repository(primary: Repository, copy: Copy) -> None:
    """A copy that already holds a marker must hold the primary's very marker (written once,
    copied byte for byte): syncing into another group's repository would delete its data."""
    try:
        with copy.repo.open_stored(layout.MARKER_KEY) as stored:
            theirs = stored.read()
    except ObjectMissing:
        return  # a new copy
    except RepositoryError as exc:
        raise named(copy, exc) from None
    with primary.open_stored(layout.MARKER_KEY) as stored:
        ours = stored.read()
    if theirs != ours:
        raise RepositoryError(
            f"copy {copy.name} ({copy.repo.location}) holds another repository (its "
            f"{layout.MARKER_KEY} is not this repository's): nothing is copied or deleted",
            "point the [[repository.copy]] at an empty place, or at this repository's own copy")


def _outdated(primary: ObjectInfo, copy: ObjectInfo) -> bool:
    """A record the primary may have rewritten after it was copied (records are small and
    rewritten in place; every other object is written once, and WAL is named by its
    content): unless the copy's time proves it was copied after the primary's last write.
    A primary keeping times in whole seconds (S3) proves nothing within that second, and a
    copy in such a store shows a time truncated below the copy's real one: a record copied
    in the second of its last write is copied once more, in a later second, and then no
    more (the hosts' and stores' clocks agreeing, as for leases)."""
    if not primary.key.endswith(RECORD_SUFFIX):
        return False
    slack = MTIME_SLACK if primary.mtime == int(primary.mtime) else 0.0
    return primary.size != copy.size or primary.mtime + slack > copy.mtime


def expired(primary_keys: Collection[str], copy_keys: Iterable[str]) -> list[str]:
    """The keys of `copy_keys` that retention deleted from the primary (see the module
    docstring): in a folder where the primary still holds objects, of a unit (a WAL file, a
    backup set, a mark, …) sorting before every unit the primary holds there. Pure: the
    listings in, the keys to delete out."""
    oldest: dict[str, str] = {}
    for key in primary_keys:
        found = layout.expiry_unit(key)
        if found is not None:
            folder, unit = found
            if folder not in oldest or unit < oldest[folder]:
                oldest[folder] = unit
    present = set(primary_keys)
    gone = []
    for key in copy_keys:
        found = layout.expiry_unit(key)
        if found is not None and key not in present and found[0] in oldest \
                and found[1] < oldest[found[0]]:
            gone.append(key)
    return sorted(gone)


def _missing(primary: dict[str, ObjectInfo], copy: dict[str, ObjectInfo]) -> list[ObjectInfo]:
    """What the copy lacks or holds in an older version, the marker first (a copy is taken
    for a repository only once it has it), then oldest first."""
    todo = [info for key, info in primary.items()
            if key not in copy or _outdated(info, copy[key])]
    return sorted(todo, key=lambda o: (o.key != layout.MARKER_KEY, o.mtime, o.key))


def lag(primary: Repository, copy: Repository, now: float | None = None) -> Lag:
    """How far `copy` is behind `primary` (both listed once)."""
    source, target = _listing(primary), _listing(copy)
    todo = _missing(source, target)
    now = time.time() if now is None else now
    oldest = min((o.mtime for o in todo), default=now)
    return Lag(len(todo), sum(o.size for o in todo), max(0.0, now - oldest))


def sync(primary: Repository, copy: Copy, delete: bool = True) -> SyncResult:
    """Catch `copy` up with `primary` (see the module docstring): both are listed, what the
    copy lacks is copied, what expire deleted is deleted — after what the copy owes the
    repository is brought back. Raises RepositoryError (naming the copy when it is the copy
    that failed); what was copied before a failure stays copied."""
    from markship.repository.owed import settle

    _check_primary(primary)
    _check_same_repository(primary, copy)
    result = SyncResult(copy.name)
    try:
        settled = settle(primary, copy.repo, copy.name)
    except RepositoryError as exc:
        raise RepositoryError(f"bringing back what copy {copy.name} ({copy.repo.location}) "
                              f"holds for the repository: {exc.message}",
                              exc.hint or "make both reachable and writable, then retry"
                              ) from None
    result.returned_objects, result.returned_bytes = \
        settled.returned_objects, settled.returned_bytes
    result.conflicts = settled.conflicts
    source = _listing(primary)
    try:
        target = _listing(copy.repo)
    except RepositoryError as exc:
        raise named(copy, exc) from None
    for info in _missing(source, target):
        outdated = info.key in target
        try:
            stored = primary.open_stored(info.key)
        except ObjectMissing:
            continue  # deleted from the primary meanwhile (expire, a finished restore)
        with stored:
            try:
                size = copy.repo.write_stored(info.key, stored, overwrite=outdated).size
            except ConflictError:
                size = 0  # copied meanwhile by another syncer (the same bytes)
            except RepositoryError as exc:
                raise named(copy, exc) from None
        target[info.key] = info
        if outdated:
            result.refreshed_objects += 1
        else:
            result.copied_objects += 1
        result.copied_bytes += size
    if delete:
        for key in expired(source, list(target)):
            try:
                copy.repo.delete(key)
            except RepositoryError as exc:
                raise named(copy, exc) from None
            target.pop(key, None)
            result.deleted_objects += 1
    return result
