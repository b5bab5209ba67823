"""wal-push's work: archive one WAL file, atomically and idempotently.

The same content pushed twice succeeds; different content under an archived name raises
ConflictError and keeps the stored copy. The object's name carries its content digest
(repository.walsum), so a re-push is recognised without reading the stored copy.
"""

from __future__ import annotations

import os

from markship.errors import ConflictError
from markship.pg.lsn import wal_file_kind
from markship.repository import layout, walsum
from markship.wal.stored import find_archived

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from collections.abc import Iterator

    from markship.repository.base import Repository, Writable

def push(repo: Repository, server: str, path: str, compression_level: int = 1) -> bool:
    """Archive one WAL file. True when stored now, False when an identical copy was there.

    Raises ConflictError when a different file is archived under the same name.
    """
    from markship.wal import _zstd

    zstandard = _zstd.load()
    name = os.path.basename(path)
    kind = wal_file_kind(name)  # ValueError for names PostgreSQL never archives
    existing = find_archived(repo, server, name)
    if existing:  # a re-push (after a crash) or a clash: compare contents
        _same_or_conflict(server, name, path, "", existing)
        return False
    compressor = zstandard.ZstdCompressor(level=compression_level, write_checksum=True,
                                          threads=-1)
    with _MappedSegment(path) as segment:
        def fill(sink: Writable) -> None:
            with compressor.stream_writer(sink, size=segment.size, closefd=False) as packer:
                for piece in segment.pieces():
                    with piece:  # released at once, also when the write fails
                        packer.write(piece)

        try:
            stored = repo.write_named_by(
                layout.wal_dir(server, name), fill,
                lambda: layout.wal_key(server, name, segment.digest()).rsplit("/", 1)[1],
                hashed=False,  # the name carries the content's digest
                # .backup and .history files are small facts the catalog needs (backup stop
                # points, timeline switches): production hosts read them with the catalog key
                metadata=kind in ("backup", "history"))
        except ConflictError:
            return False  # a concurrent push of the same content won the race
        digest = segment.digest()
    others = [(k, d) for k, d in find_archived(repo, server, name) if k != stored.key]
    if others:  # another push of this name landed meanwhile
        try:
            _same_or_conflict(server, name, path, digest, others)
        finally:
            repo.delete(stored.key)
    return True


class _MappedSegment:
    """A WAL file mapped into memory and hashed by a second thread while it is compressed.

    The file is read once, with no copy: zstd compresses straight from the mapping on every
    core (threads=-1) while the other thread hashes the same pages (repository.walsum; BLAKE3
    releases the GIL). That thread also loads the hash module while the first chunks
    compress. _thread and mmap, not threading: they cost nothing to import.
    """

    PIECE = 1 << 20  # zstd's worker threads take 1 MiB slices better than 256 KiB ones

    def __init__(self, path: str) -> None:
        import _thread
        import mmap

        with open(path, "rb", buffering=0) as raw:
            self.size = os.fstat(raw.fileno()).st_size
            self._map = mmap.mmap(raw.fileno(), 0, prot=mmap.PROT_READ,
                                  flags=mmap.MAP_SHARED | mmap.MAP_POPULATE) \
                if self.size else None
        self._view = memoryview(self._map if self._map is not None else b"")
        self._hex = ""
        self._failure: BaseException | None = None
        self._done = _thread.allocate_lock()
        self._done.acquire()
        _thread.start_new_thread(self._hash, ())

    def _hash(self) -> None:
        try:
            digest = walsum.ContentHash()
            for piece in self.pieces():
                with piece:
                    digest.update(piece)
            self._hex = digest.result()
        except BaseException as exc:  # handed to the caller of digest()
            self._failure = exc
        finally:
            self._done.release()

    def pieces(self) -> Iterator[memoryview]:
        for start in range(0, self.size, self.PIECE):
            yield self._view[start:start + self.PIECE]

    def digest(self) -> str:
        """The file's content digest (repository.walsum), once the hashing thread is done."""
        if self._done.acquire():
            self._done.release()
        if self._failure is not None:
            raise self._failure
        return self._hex

    def __enter__(self) -> _MappedSegment:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.digest()  # the thread must be done with the mapping before it goes
        except BaseException:
            if exc[0] is None:
                raise
        self._view.release()
        if self._map is not None:
            try:  # noqa: SIM105 - contextlib is one import too many on this path
                self._map.close()
            except BufferError:
                pass  # a slice is still referenced (by a traceback): unmapped when freed


def _same_or_conflict(server: str, name: str, path: str, digest: str,
                      existing: list[tuple[str, str]]) -> None:
    """Raise ConflictError unless every stored copy holds the content of `path` (whose
    digest is `digest`, or "" when not computed); each is compared in its own algorithm."""
    for _key, stored_digest in existing:
        mine = digest if _same_kind(digest, stored_digest) else walsum.of_file(path, stored_digest)
        if stored_digest != mine:
            raise ConflictError(
                f"{name} of server {server} is already archived with different content "
                f"(stored digest {stored_digest[:15]}…, new {mine[:15]}…); the stored copy "
                "is kept",
                "two clusters may be archiving under one server name: check archive_command "
                "on each server and markship status",
            )


def _same_kind(digest: str, other: str) -> bool:
    return bool(digest) and digest.startswith(walsum.BLAKE3) == other.startswith(walsum.BLAKE3)
