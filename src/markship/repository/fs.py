"""Repository in a local or mounted directory (NFS included).

Plain `os` calls rather than pathlib: wal-push imports this module once per WAL segment, and
pathlib (with what it pulls in) was a measurable share of that start-up.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import time

from markship.errors import ConflictError, LockedError, ObjectMissing, RepositoryError
from markship.repository import layout
from markship.repository.objects import ObjectInfo, StoredObject, TempObject

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, collections and contextlib stay off the wal-push path
    from collections.abc import Callable, Iterator
    from types import TracebackType
    from typing import Any, BinaryIO

    from markship.repository.base import Readable, Writable

CHUNK = 1024 * 1024
TEMP_PREFIX = ".tmp~"
AGE_MAGIC = b"age-encryption.org/v1\n"  # first line of every age file
join = os.path.join


def _host() -> str:
    return os.uname().nodename.replace("~", "-")


def _temp_name(final_name: str) -> str:
    return f"{TEMP_PREFIX}{_host()}~{os.getpid()}~{os.urandom(6).hex()}~{final_name}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise_unless_gone(exc: OSError) -> None:
    """os.walk's error handler: a folder that vanished meanwhile is fine; one that cannot be
    read must not look like an empty one (missing WAL would then look like a gap)."""
    if not isinstance(exc, FileNotFoundError):
        raise _os_error(exc, exc.filename or "?", reading=True) from exc


def _makedirs(path: str, mode: int = 0o777) -> None:
    """Create `path` and any missing parents, each new entry flushed to its parent folder:
    an object reported stored must still be found after a power loss, and its folder's own
    entry is part of that."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _makedirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        # made by a concurrent writer: flushed here too, as this writer may finish first
    _fsync_dir(parent)


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 - contextlib is one import too many on the wal-push path
        os.unlink(path)
    except FileNotFoundError:
        pass


def _os_error(exc: OSError, path: str, reading: bool = False) -> RepositoryError:
    if reading and exc.errno in (errno.EACCES, errno.EPERM):
        return RepositoryError(
            f"repository not readable: {path} ({exc.strerror})",
            "make the repository readable by the user markship runs as (for wal-fetch: "
            "the PostgreSQL OS user)",
        )
    if exc.errno == errno.ENOSPC:
        return RepositoryError(
            f"repository disk full while writing {path}",
            "free space on the repository file system (or run `markship expire`) and retry",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return RepositoryError(
            f"repository not writable: {path} ({exc.strerror})",
            "make the repository directory writable by the user markship runs as",
        )
    return RepositoryError(f"repository I/O error at {path}: {exc.strerror or exc}")


class FsRepository:
    """Objects are files below `root`; writes go to a temp file, fsync, then rename."""

    def __init__(self, root: str | os.PathLike[str], make_root: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.location = self.root
        # False for the WAL commands: a repository whose folder is gone (a share not
        # mounted, a disk not attached) must fail archiving, not get a new empty folder
        # in the mountpoint that takes the WAL as if it were the repository.
        self.make_root = make_root

    def _root_present(self) -> None:
        if not self.make_root and not os.path.isdir(self.root):
            raise RepositoryError(
                f"repository path {self.root} does not exist (a share not mounted?)",
                "mount or restore it; markship backup or markship config check creates a new "
                "repository there")

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return join(self.root, key) if key else self.root

    def _key(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    # -- writing -----------------------------------------------------------------------------

    def write(self, key: str, source: Readable, *, overwrite: bool = False,
              metadata: bool = False) -> StoredObject:
        folder, _sep, name = key.rpartition("/")
        if not overwrite and os.path.exists(self._path(key)):
            raise ConflictError(f"object {key} already exists in the repository")
        return self.write_named(folder + "/" if folder else "", source, lambda: name,
                                overwrite=overwrite, metadata=metadata)

    def write_named(self, folder: str, source: Readable, name_for: Callable[[], str], *,
                    overwrite: bool = False, metadata: bool = False) -> StoredObject:
        """Like write(), but the object's name is decided once all of `source` is stored
        (e.g. a name carrying the digest of the data, computed while it streamed)."""

        def copy(sink: Writable) -> None:
            while chunk := source.read(CHUNK):
                sink.write(chunk)

        return self.write_named_by(folder, copy, name_for, overwrite=overwrite,
                                   metadata=metadata)

    def write_by(self, key: str, fill: Callable[[Writable], None], *, overwrite: bool = False,
                 metadata: bool = False, plain: bool = False) -> StoredObject:
        """Like write(), for producers that push data into a key known beforehand. `plain`:
        the bytes are stored as they come (already encoded, see write_stored)."""
        if not overwrite and os.path.exists(self._path(key)):
            raise ConflictError(f"object {key} already exists in the repository")
        folder, _sep, name = key.rpartition("/")
        staged = self.stage(folder + "/" if folder else "", fill, metadata=metadata,
                            plain=plain)
        return staged.publish(lambda: name, overwrite=overwrite)

    def write_stored(self, key: str, source: Readable, *, overwrite: bool = False
                     ) -> StoredObject:
        """Store `source` byte for byte under `key` (already encoded: a copy of an object of
        another repository with the same keys); atomic and create-only as write()."""

        def copy(sink: Writable) -> None:
            while chunk := source.read(CHUNK):
                sink.write(chunk)

        return self.write_by(key, copy, overwrite=overwrite, plain=True)

    def write_named_by(self, folder: str, fill: Callable[[Writable], None],
                       name_for: Callable[[], str], *, overwrite: bool = False,
                       hashed: bool = True, metadata: bool = False) -> StoredObject:
        """Like write_named(), for producers that push data: `fill(sink)` writes the object's
        bytes into `sink` (e.g. a compressor's stream_writer). `hashed=False`: no sha256 of
        the stored bytes (the result's is ""), for objects named by their content's digest.
        `metadata`: see stage()."""
        staged = self.stage(folder, fill, hashed=hashed, metadata=metadata)
        return staged.publish(name_for, overwrite=overwrite)

    def stage(self, folder: str, fill: Callable[[Writable], None], *,
              hashed: bool = True, metadata: bool = False, plain: bool = False) -> Staged:
        """The first half of a write: `fill(sink)` goes into a temp object in `folder`,
        flushed to disk; `publish()` on the result gives it its name (or `discard()`).
        `metadata` matters only to an encrypted repository; `plain`: stored as written."""
        if not plain:
            fill = self._encoded(fill, metadata)
        directory = self._path(folder.rstrip("/"))
        self._root_present()
        try:
            _makedirs(directory)
        except OSError as exc:
            raise _os_error(exc, directory) from exc
        temp = join(directory, _temp_name("pending"))
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise _os_error(exc, temp) from exc
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                sink = Sink(out, hashed)
                fill(sink)
                os.fsync(out.fileno())
        except OSError as exc:
            _unlink(temp)
            raise _os_error(exc, temp) from exc
        except BaseException:
            _unlink(temp)
            raise
        return Staged(self, temp, sink)

    def _encoded(self, fill: Callable[[Writable], None], metadata: bool
                 ) -> Callable[[Writable], None]:
        """What is stored of an object `fill` writes: here its bytes as they are (an
        encrypted repository encrypts them; `metadata` says it is a catalog record)."""
        return fill

    def _publish(self, temp: str, final: str, overwrite: bool, sync: bool = True) -> None:
        if overwrite:
            os.replace(temp, final)
        else:
            # link() refuses to replace an existing name, unlike rename(): the no-clobber
            # guarantee holds even when two writers race for the same key.
            try:
                os.link(temp, final)
            except FileExistsError:
                _unlink(temp)
                raise ConflictError(
                    f"object {self._key(final)} already exists in the repository") from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if os.path.exists(final):
                    _unlink(temp)
                    raise ConflictError(
                        f"object {self._key(final)} already exists in the repository") from None
                os.replace(temp, final)
            else:
                os.unlink(temp)
        if sync:
            _fsync_dir(os.path.dirname(final))

    def write_bytes(self, key: str, data: bytes, *, overwrite: bool = False,
                    metadata: bool = False) -> StoredObject:
        return self.write(key, io.BytesIO(data), overwrite=overwrite, metadata=metadata)

    # -- reading -----------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        handle = self.open_stored(key)
        if handle.read(len(AGE_MAGIC)) == AGE_MAGIC:
            handle.close()
            raise RepositoryError(
                f"object {key} is encrypted, but the config has no [encryption] section",
                "add [encryption] with the repository's recipient and identity_file")
        handle.seek(0)
        return handle

    def plaintext(self, stored: Readable, key: str) -> Readable:
        """The content of an object from a reader of its stored bytes (here: the same)."""
        return stored

    def open_stored(self, key: str) -> BinaryIO:
        """The stored bytes of `key`, as they are on disk (no decryption, no checks)."""
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"object {key} is missing from the repository") from None
        except OSError as exc:
            raise _os_error(exc, self._path(key), reading=True) from exc

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def size(self, key: str) -> int:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            raise ObjectMissing(f"object {key} is missing from the repository") from None

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/"))
        start = base if os.path.isdir(base) else os.path.dirname(base)
        if not os.path.isdir(start):
            return
        for dirpath, dirnames, filenames in os.walk(start, onerror=_raise_unless_gone):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(TEMP_PREFIX):
                    continue
                path = join(dirpath, name)
                key = self._key(path)
                if not key.startswith(prefix):
                    continue
                try:
                    stat = os.stat(path)
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def children(self, prefix: str) -> list[str]:
        path = self._path(prefix.rstrip("/"))
        try:
            return sorted(n for n in os.listdir(path) if not n.startswith(TEMP_PREFIX))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(exc, path, reading=True) from exc

    def delete(self, key: str) -> None:
        _unlink(self._path(key))

    def remove_empty_dirs(self, prefix: str) -> None:
        """Remove empty folders below `prefix` (after deletions), deepest first."""
        top = self._path(prefix.rstrip("/"))
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            if dirpath != top:
                try:  # noqa: SIM105
                    os.rmdir(dirpath)
                except OSError:
                    pass

    def temp_objects(self) -> list[TempObject]:
        here = _host()
        found: list[TempObject] = []
        for dirpath, _dirs, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(TEMP_PREFIX):
                    continue
                parts = name.split("~", 4)
                alive: bool | None = None
                if len(parts) == 5 and parts[1] == here and parts[2].isdigit():
                    alive = _pid_alive(int(parts[2]))
                path = join(dirpath, name)
                try:
                    size = os.stat(path).st_size
                except FileNotFoundError:
                    continue
                found.append(TempObject(self._key(path), size, alive))
        return sorted(found, key=lambda t: t.key)

    def delete_temp(self, key: str) -> None:
        path = self._path(key)
        if not os.path.basename(path).startswith(TEMP_PREFIX):
            raise ValueError(f"{key} is not a temp object")
        _unlink(path)

    # -- locks and checks --------------------------------------------------------------------

    def lock(self, name: str, purpose: str) -> _FileLock:
        return _FileLock(self._path(layout.lock_key(name)), name, purpose)

    def lock_holder(self, name: str) -> str | None:
        # A shared flock() that fails means an exclusive one is held. It is let go at once;
        # an agent starting in that instant would find its lock busy, which a probe rarely
        # meets (the checklist asks once per run). The file is only opened, never created.
        path = self._path(layout.lock_key(name))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, path, reading=True) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            note = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            return _holder(note)
        except OSError as exc:
            raise _os_error(exc, path, reading=True) from exc
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def flush(self, folder: str) -> None:
        path = self._path(folder.rstrip("/"))
        try:
            _fsync_dir(path)
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def check_writable(self) -> None:
        self._root_present()
        if not os.path.exists(self.root):
            try:
                _makedirs(self.root, 0o750)
            except OSError as exc:
                raise _os_error(exc, self.root) from exc
        if not os.path.isdir(self.root):
            raise RepositoryError(
                f"repository path {self.root} is not a directory",
                "point [repository] path at a directory",
            )
        probe = join(self.root, _temp_name("write-probe"))
        try:
            with open(probe, "wb") as handle:
                handle.write(b"probe")
        except OSError as exc:
            raise _os_error(exc, self.root) from exc
        finally:
            _unlink(probe)


class Staged:
    """A temp object written and flushed to disk, waiting for its name (FsRepository.stage)."""

    def __init__(self, repo: FsRepository, temp: str, sink: Sink) -> None:
        self.repo, self.temp, self.sink = repo, temp, sink

    def publish(self, name_for: Callable[[], str], *, overwrite: bool = False,
                sync: bool = True) -> StoredObject:
        """Give the object its name, `name_for()`, next to the temp object. Raises
        ConflictError when that name exists and `overwrite` is false (the temp goes)."""
        final = self.temp
        try:
            final = self.repo._path(self.repo._key(join(os.path.dirname(self.temp),
                                                        name_for())))
            self.repo._publish(self.temp, final, overwrite, sync)
        except OSError as exc:
            _unlink(self.temp)
            raise _os_error(exc, final) from exc
        except BaseException:
            _unlink(self.temp)
            raise
        digest = self.sink.digest.hexdigest() if self.sink.hashed else ""
        return StoredObject(self.repo._key(final), self.sink.size, digest)

    def stored_sha256(self) -> str:
        return str(self.sink.digest.hexdigest())

    def discard(self) -> None:
        _unlink(self.temp)


class Sink:
    """Where a producer writes an object's bytes: counts and hashes them on the way to the
    temp file, and writes each chunk whole."""

    def __init__(self, out: io.FileIO | BinaryIO, hashed: bool = True) -> None:
        self.out = out
        self.hashed = hashed
        self.size = 0
        self._digest: Any = None

    @property
    def digest(self) -> Any:
        """sha256 of the bytes written so far. hashlib loads OpenSSL (~4 ms): it is imported
        at the first write, so wal-push can load it on its hashing thread meanwhile."""
        if self._digest is None:
            import hashlib

            self._digest = hashlib.sha256()
        return self._digest

    def write(self, data: bytes | memoryview, /) -> int:
        if self.hashed:
            self.digest.update(data)
        view = memoryview(data)
        while view:
            written = self.out.write(view)
            view = view[written or 0 :]
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _host_fingerprint() -> str:
    import hashlib

    return hashlib.sha256(os.uname().nodename.encode()).hexdigest()[:12]


def _holder(note: str) -> str:
    """Who holds a lock, from its note (repository data: anything may be in it)."""
    import json

    def shown(value: object, limit: int) -> str:
        return "".join(c for c in str(value)[:limit] if c.isprintable())

    try:
        info = json.loads(note)
        pid = int(info["pid"])
        command, host = shown(info["command"], 40), shown(info["host"], 12)
    except (ValueError, KeyError, TypeError):
        return "another markship process"
    where = "this host" if host == _host_fingerprint() else f"another host (id {host})"
    return f"{command} (pid {pid} on {where}, since {shown(info.get('since', '?'), 20)})"


class _FileLock:
    """flock() on a file in the repository, holding a note of who holds it (a context
    manager written out, as contextlib is not loaded on the wal-push path)."""

    def __init__(self, path: str, name: str, purpose: str) -> None:
        self.path, self.name, self.purpose = path, name, purpose
        self.fd = -1

    def __enter__(self) -> None:
        import json

        try:
            _makedirs(os.path.dirname(self.path))
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise _os_error(exc, self.path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            who = _holder(holder)
            raise LockedError(
                f"another job is running: {who} holds the {self.name} lock",
                "wait for it to finish, or stop it, then retry",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        # The note is for the operator who meets a busy lock. It is not encrypted (it is
        # rewritten in place, and read by hosts without any key), so it holds what locking
        # needs and nothing about the group: the command (the purpose's first two words,
        # e.g. "markship backup"), the pid, a fingerprint of the host and the time.
        note = json.dumps(
            {"command": " ".join(self.purpose.split()[:2]), "pid": os.getpid(),
             "host": _host_fingerprint(),
             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        fd, self.fd = self.fd, -1
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._release()
