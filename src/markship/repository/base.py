"""The storage interface every repository backend implements (for type checking and the full
CLI; the lean WAL path imports only `objects` and a backend)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol

from markship.repository.objects import ObjectInfo, StoredObject, TempObject


class Readable(Protocol):
    """Anything with `read(size)`: files, pipes, decompressors."""

    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """Where a producer writes an object's bytes (see Repository.write_named_by)."""

    def write(self, data: bytes | memoryview, /) -> int: ...

    def flush(self) -> None: ...


class StagedObject(Protocol):
    def publish(self, name_for: Callable[[], str], *, overwrite: bool = False,
                sync: bool = True) -> StoredObject:
        """Give the object its name. `sync=False`: the name is not yet flushed to disk; the
        next publish with sync=True in the same folder flushes both (one fsync for two)."""
        ...

    def stored_sha256(self) -> str:
        """The sha256 of the bytes as they will be stored (before publish())."""
        ...

    def discard(self) -> None: ...


class Repository(Protocol):
    """A flat key → bytes store with atomic, checksummed writes."""

    location: str

    def write(self, key: str, source: Readable, *, overwrite: bool = False,
              metadata: bool = False) -> StoredObject:
        """Stream `source` into `key` atomically (visible only once complete).

        Raises ConflictError when `key` exists and `overwrite` is false (the stored object is
        kept), RepositoryError when the store is full or not writable.
        """
        ...

    def write_named(self, folder: str, source: Readable, name_for: Callable[[], str], *,
                    overwrite: bool = False, metadata: bool = False) -> StoredObject:
        """Stream `source` into `folder`, naming the object with `name_for()` once all of it
        is stored (a partly written object never carries a final name)."""
        ...

    def write_named_by(self, folder: str, fill: Callable[[Writable], None],
                       name_for: Callable[[], str], *, overwrite: bool = False,
                       hashed: bool = True, metadata: bool = False) -> StoredObject:
        """Like write_named(), for producers that push: `fill(sink)` writes the bytes.
        `hashed=False` skips the sha256 of the stored bytes (the result's is then "")."""
        ...

    def write_by(self, key: str, fill: Callable[[Writable], None], *, overwrite: bool = False,
                 metadata: bool = False) -> StoredObject:
        """Like write(), for producers that push: `fill(sink)` writes the bytes of `key`
        (streamed to object storage as they come)."""
        ...

    def stage(self, folder: str, fill: Callable[[Writable], None], *,
              hashed: bool = True, metadata: bool = False) -> StagedObject:
        """The first half of write_named_by(): the bytes are stored and flushed to disk under
        a temp name; the result's publish() names the object, discard() drops it. Lets a
        caller store an object while it still waits for what decides whether it is valid.
        `metadata`: a catalog record, not data (an encrypted repository lets the hosts that
        hold the catalog key read it)."""
        ...

    def write_bytes(self, key: str, data: bytes, *, overwrite: bool = False,
                    metadata: bool = False) -> StoredObject: ...

    def write_stored(self, key: str, source: Readable, *, overwrite: bool = False
                     ) -> StoredObject:
        """Store `source` under `key` byte for byte: bytes already as a repository stores
        them (read with another repository's open_stored(); never encrypted again). Visible
        only once complete; ConflictError as write()."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open `key` for streaming reads; raise ObjectMissing when absent."""
        ...

    def open_stored(self, key: str) -> BinaryIO:
        """The bytes of `key` exactly as stored (not decrypted)."""
        ...

    def plaintext(self, stored: Readable, key: str) -> Readable:
        """The content of object `key` from a reader of its stored bytes (decrypting)."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every complete object whose key starts with `prefix` (temp objects excluded)."""
        ...

    def children(self, prefix: str) -> list[str]:
        """Names directly below `prefix` (a key prefix ending in '/'), sorted."""
        ...

    def delete(self, key: str) -> None: ...

    def temp_objects(self) -> list[TempObject]: ...

    def lock(self, name: str, purpose: str) -> AbstractContextManager[None]:
        """Hold an exclusive named lock; raise LockedError when someone else holds it."""
        ...

    def lock_holder(self, name: str) -> str | None:
        """Who holds lock `name` now, as LockedError would name it (command, pid, host, since),
        or None when nobody does. Only looks: never creates, takes or changes the lock."""
        ...

    def check_writable(self) -> None:
        """Raise RepositoryError naming the problem when objects cannot be written."""
        ...

    def flush(self, folder: str) -> None:
        """Make durable the names given in `folder` by publish(sync=False) (nothing to do
        where a write is durable once answered). Raises RepositoryError."""
        ...


__all__ = ["ObjectInfo", "Readable", "Repository", "StoredObject", "TempObject", "Writable"]
