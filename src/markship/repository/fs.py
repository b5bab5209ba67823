"""Repository in a local or mounted directory (NFS included)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from markship.errors import ConflictError, LockedError, ObjectMissing, RepositoryError
from markship.repository.base import ObjectInfo, Readable, StoredObject, TempObject

CHUNK = 1024 * 1024
TEMP_PREFIX = ".tmp~"


def _temp_name(final_name: str) -> str:
    return f"{TEMP_PREFIX}{_host()}~{os.getpid()}~{os.urandom(6).hex()}~{final_name}"


def _host() -> str:
    return os.uname().nodename.replace("~", "-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, path: Path) -> RepositoryError:
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

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return self.root / key

    # -- writing -----------------------------------------------------------------------------

    def write(self, key: str, source: Readable, *, overwrite: bool = False) -> StoredObject:
        folder, _sep, name = key.rpartition("/")
        if not overwrite and self._path(key).exists():
            raise ConflictError(f"object {key} already exists in the repository")
        return self.write_named(folder + "/" if folder else "", source, lambda: name,
                                overwrite=overwrite)

    def write_named(self, folder: str, source: Readable, name_for: Callable[[], str], *,
                    overwrite: bool = False) -> StoredObject:
        """Like write(), but the object's name is decided once all of `source` is stored
        (e.g. a name carrying the digest of the data, computed while it streamed)."""
        directory = self._path(folder.rstrip("/")) if folder.rstrip("/") else self.root
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, directory) from exc
        temp = directory / _temp_name("pending")
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise _os_error(exc, temp) from exc
        final = temp
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                while True:
                    chunk = source.read(CHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    size += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        written = out.write(view)
                        view = view[written or 0 :]
                os.fsync(out.fileno())
            final = directory / name_for()
            self._path(final.relative_to(self.root).as_posix())  # validates the name
            self._publish(temp, final, overwrite)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _os_error(exc, final) from exc
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StoredObject(final.relative_to(self.root).as_posix(), size, digest.hexdigest())

    def _publish(self, temp: Path, final: Path, overwrite: bool) -> None:
        if overwrite:
            os.replace(temp, final)
        else:
            # link() refuses to replace an existing name, unlike rename(): the no-clobber
            # guarantee holds even when two writers race for the same key.
            try:
                os.link(temp, final)
            except FileExistsError:
                temp.unlink(missing_ok=True)
                raise ConflictError(
                    f"object {final.relative_to(self.root)} already exists in the repository"
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if final.exists():
                    temp.unlink(missing_ok=True)
                    raise ConflictError(
                        f"object {final.relative_to(self.root)} already exists in the repository"
                    ) from None
                os.replace(temp, final)
            else:
                temp.unlink()
        _fsync_dir(final.parent)

    def write_bytes(self, key: str, data: bytes, *, overwrite: bool = False) -> StoredObject:
        return self.write(key, io.BytesIO(data), overwrite=overwrite)

    # -- reading -----------------------------------------------------------------------------

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise ObjectMissing(f"object {key} is missing from the repository") from None
        except OSError as exc:
            raise _os_error(exc, self._path(key)) from exc

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as handle:
            return handle.read()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"object {key} is missing from the repository") from None

    def iter_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/")) if prefix.rstrip("/") else self.root
        start = base if base.is_dir() else base.parent
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def children(self, prefix: str) -> list[str]:
        path = self._path(prefix.rstrip("/")) if prefix.rstrip("/") else self.root
        try:
            return sorted(n for n in os.listdir(path) if not n.startswith(TEMP_PREFIX))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def remove_empty_dirs(self, prefix: str) -> None:
        """Remove empty folders below `prefix` (after deletions), deepest first."""
        top = self._path(prefix.rstrip("/"))
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            if Path(dirpath) != top:
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

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
                path = Path(dirpath) / name
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                found.append(TempObject(path.relative_to(self.root).as_posix(), size, alive))
        return sorted(found, key=lambda t: t.key)

    def delete_temp(self, key: str) -> None:
        path = self._path(key)
        if not path.name.startswith(TEMP_PREFIX):
            raise ValueError(f"{key} is not a temp object")
        path.unlink(missing_ok=True)

    # -- locks and checks --------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str, purpose: str) -> Iterator[None]:
        import json

        path = self._path(f"locks/{name}.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise _os_error(exc, path) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                try:
                    info = json.loads(holder)
                    who = f"{info['purpose']} (pid {info['pid']} on {info['host']})"
                except (ValueError, KeyError, TypeError):
                    who = "another markship process"
                raise LockedError(
                    f"another job is running: {who} holds the {name} lock",
                    "wait for it to finish, or stop it, then retry",
                ) from None
            note = json.dumps(
                {"purpose": purpose, "pid": os.getpid(), "host": os.uname().nodename,
                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            ).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, note, 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def check_writable(self) -> None:
        if not self.root.exists():
            try:
                self.root.mkdir(parents=True, mode=0o750)
            except OSError as exc:
                raise _os_error(exc, self.root) from exc
        if not self.root.is_dir():
            raise RepositoryError(
                f"repository path {self.root} is not a directory",
                "point [repository] path at a directory",
            )
        probe = self.root / _temp_name("write-probe")
        try:
            probe.write_bytes(b"probe")
        except OSError as exc:
            raise _os_error(exc, self.root) from exc
        finally:
            probe.unlink(missing_ok=True)
