"""A file set's paths read once: what they hold (Snapshot), and each regular file read back
exactly as it was walked.

`take` walks the configured paths without following links. A file that changes between the walk
and its reading is an error naming it (the capture is then retried), never a silent mix. The
content digest covers what the paths hold, not how an archive lays it out.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from markship.config.model import FilesetSection
from markship.errors import MarkshipError

CHUNK = 1 << 20
Kind = Literal["file", "dir", "link"]


@dataclass
class Entry:
    """One walked path, as it goes into the archive."""

    name: str  # member name: the absolute path without its leading "/"
    path: str
    kind: Kind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    target: str = ""  # of a link
    fd: int | None = None  # a regular file held open since the walk (see take)


@dataclass
class Snapshot:
    """What a file set's paths hold, read once; `close()` releases files held open."""

    fileset: FilesetSection
    entries: list[Entry] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def close(self) -> None:
        for entry in self.entries:
            if entry.fd is not None:
                os.close(entry.fd)
                entry.fd = None

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def take(fileset: FilesetSection, *, hold_open: bool = False) -> Snapshot:
    """Walk the file set's paths (links are not followed; `exclude` patterns are matched with
    fnmatch against the path relative to each root, `*` also matching `/`).

    With `hold_open`, every regular file is opened now: a root process can then switch to the
    repository's OS user and still stream files only root may read.

    Raises MarkshipError naming a path that is missing or cannot be read.
    """
    if hold_open:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard and hard != resource.RLIM_INFINITY:
            with suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    snapshot = Snapshot(fileset)
    found: dict[str, Entry] = {}
    try:
        for root in fileset.paths:
            _walk(fileset, os.path.normpath(str(root)), found, snapshot.skipped, hold_open)
    except BaseException:
        snapshot.entries = list(found.values())
        snapshot.close()
        raise
    snapshot.entries = sorted(found.values(), key=lambda e: e.name)
    return snapshot


def _walk(fileset: FilesetSection, root: str, found: dict[str, Entry], skipped: list[str],
          hold_open: bool) -> None:
    patterns = [p.strip("/") for p in fileset.exclude]
    try:
        root_stat = os.lstat(root)
    except FileNotFoundError:
        raise MarkshipError(f"file set {fileset.name}: {root} does not exist",
                            "create it, or remove it from the [[fileset]] paths") from None
    except OSError as exc:
        raise _unreadable(fileset, root, exc) from None
    pending: list[tuple[str, str, os.stat_result]] = [(root, "", root_stat)]
    while pending:
        path, rel, st = pending.pop()
        name = path.lstrip("/")
        if name in found:  # overlapping roots: walked already
            continue
        entry = Entry(name, path, "file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                       st.st_mtime_ns)
        if stat.S_ISDIR(st.st_mode):
            entry.kind = "dir"
            try:
                with os.scandir(path) as children:
                    for child in children:
                        child_rel = f"{rel}/{child.name}" if rel else child.name
                        if any(fnmatchcase(child_rel, p) for p in patterns):
                            continue
                        pending.append((child.path, child_rel,
                                        child.stat(follow_symlinks=False)))
            except OSError as exc:
                raise _unreadable(fileset, path, exc) from None
        elif stat.S_ISLNK(st.st_mode):
            entry.kind = "link"
            try:
                entry.target = os.readlink(path)
            except OSError as exc:
                raise _unreadable(fileset, path, exc) from None
        elif stat.S_ISREG(st.st_mode):
            entry.size = st.st_size
            if hold_open:
                _hold(fileset, entry)
        else:
            skipped.append(path)
            continue
        if name:
            found[name] = entry


def _hold(fileset: FilesetSection, entry: Entry) -> None:
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EMFILE:
            raise MarkshipError(f"file set {fileset.name} has more files than this process "
                                "may hold open", "split it into smaller file sets") from None
        raise _unreadable(fileset, entry.path, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _changed(entry)
    entry.fd, entry.size, entry.mtime_ns = fd, st.st_size, st.st_mtime_ns
    entry.mode, entry.uid, entry.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _unreadable(fileset: FilesetSection, path: str, exc: OSError) -> MarkshipError:
    return MarkshipError(
        f"file set {fileset.name}: cannot read {path} ({exc.strerror})",
        "run markship as root (it reads the files before switching to the repository's OS "
        "user), or make the file readable by that user")


def _changed(entry: Entry) -> MarkshipError:
    return MarkshipError(f"{entry.path} changed while it was being captured",
                         "capture again (the agent retries on its next check)")


class _FileReader:
    """Exactly the bytes of one walked regular file, hashed as they go by."""

    def __init__(self, entry: Entry, digest: hashlib._Hash) -> None:
        self.entry, self.digest = entry, digest
        self.offset = 0
        self.own_fd = entry.fd is None
        if entry.fd is not None:
            self.fd = entry.fd
            return
        try:
            self.fd = os.open(entry.path,
                              os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise _changed(entry) from None
        except OSError as exc:
            raise MarkshipError(f"cannot read {entry.path} ({exc.strerror})",
                                "run markship as root, or make the file readable by the "
                                "repository's OS user") from None
        st = os.fstat(self.fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_size != entry.size
                or st.st_mtime_ns != entry.mtime_ns):
            self.close()
            raise _changed(entry)

    def read(self, size: int = -1, /) -> bytes:
        remaining = self.entry.size - self.offset
        wanted = remaining if size < 0 else min(size, remaining)
        parts = []
        while wanted > 0:
            chunk = os.pread(self.fd, min(wanted, CHUNK), self.offset)
            if not chunk:
                raise _changed(self.entry)  # shorter than when it was walked
            parts.append(chunk)
            self.offset += len(chunk)
            wanted -= len(chunk)
        data = b"".join(parts)
        self.digest.update(data)
        return data

    def finish(self) -> None:
        st = os.fstat(self.fd)
        if st.st_size != self.entry.size or st.st_mtime_ns != self.entry.mtime_ns:
            raise _changed(self.entry)

    def close(self) -> None:
        if self.own_fd:
            os.close(self.fd)


@contextmanager
def reading(entry: Entry, digest: hashlib._Hash) -> Iterator[_FileReader]:
    reader = _FileReader(entry, digest)
    try:
        yield reader
        reader.finish()
    finally:
        reader.close()


def digest_header(digest: hashlib._Hash, entry: Entry) -> None:
    text = (f"{entry.kind}\0{entry.name}\0{entry.mode:o}\0{entry.uid}\0{entry.gid}\0"
            f"{entry.target}\0{entry.size}\0")
    digest.update(text.encode("utf-8", "surrogateescape"))


def content_digest(snapshot: Snapshot) -> str:
    """The sha256 of what the file set holds, independent of the archive's bytes (mtimes and
    tar layout do not count), so an unchanged file set always gives the same digest."""
    digest = hashlib.sha256()
    for entry in snapshot.entries:
        digest_header(digest, entry)
        if entry.kind == "file":
            with reading(entry, digest) as reader:
                while reader.read(CHUNK):
                    pass
    return digest.hexdigest()
