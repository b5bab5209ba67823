"""pg_basebackup's tar archives read from its output directory while it writes them.

A server with tablespaces outside its data directory cannot be backed up to stdout:
pg_basebackup then writes one archive per tablespace (`base.tar[.zst]`, `<oid>.tar[.zst]`)
into a directory it insists is empty, one archive after the other, each closed before the
next is created. `SpooledArchives` watches that directory with inotify from before
pg_basebackup starts, so it knows the order the archives were created in and when each was
closed; it hands each archive over as a stream as soon as it appears, reads it while it grows,
frees the disk blocks behind the reader (the spool holds only what the reader has not caught
up with) and deletes it once read to its end: once pg_basebackup closed it, or has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# The names pg_basebackup gives its tar archives: the data directory, or a tablespace's OID.
ARCHIVE_NAME = re.compile(r"^(base|[1-9][0-9]{0,9})\.tar(\.zst)?$")
CHUNK = 1 << 20
# How long a reader that caught up with the writer waits before looking again.
POLL_SECONDS = 0.02
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_IN_CLOSE_WRITE, _IN_CREATE, _IN_Q_OVERFLOW = 0x08, 0x100, 0x4000
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name


class SpoolError(Exception):
    """The spool directory cannot be watched, or holds what pg_basebackup never writes."""


_libc = ctypes.CDLL(None, use_errno=True)


def _fallocate_function() -> Callable[..., int] | None:
    function = getattr(_libc, "fallocate", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_fallocate = _fallocate_function()


class _Watch:
    """Files created in a directory, in order, and those closed after writing (inotify)."""

    def __init__(self, directory: Path) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise SpoolError(f"cannot watch {directory}: {os.strerror(ctypes.get_errno())}")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                   _IN_CREATE | _IN_CLOSE_WRITE) < 0:
            error = ctypes.get_errno()
            os.close(self.fd)
            raise SpoolError(f"cannot watch {directory}: {os.strerror(error)}")
        self.created: list[str] = []
        self.closed: set[str] = set()

    def update(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = os.fsdecode(data[start : start + length].rstrip(b"\0"))
                offset = start + length
                if mask & _IN_Q_OVERFLOW:
                    raise SpoolError("too many events in the spool directory to follow")
                if mask & _IN_CREATE:
                    self.created.append(name)
                if mask & _IN_CLOSE_WRITE:
                    self.closed.add(name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Growing:
    """One archive being written by pg_basebackup, read up to its end; `read()` waits while
    `writing()` says it may still grow. Blocks already read go back to the file system."""

    def __init__(self, path: Path, writing: Callable[[], bool]) -> None:
        self.path = path
        self._writing = writing
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._offset = 0
        self._freed = 0
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        while not self._ended:
            chunk = os.pread(self._fd, want, self._offset)
            if chunk:
                self._offset += len(chunk)
                self._free_behind()
                return chunk
            if not self._writing():
                # Closed by the writer: what it wrote before closing can all be read now.
                chunk = os.pread(self._fd, want, self._offset)
                if chunk:
                    self._offset += len(chunk)
                    return chunk
                self._ended = True
                break
            time.sleep(POLL_SECONDS)
        return b""

    def _free_behind(self) -> None:
        if self._offset - self._freed < 16 * CHUNK or _fallocate is None:
            return
        if _fallocate(self._fd, _PUNCH_HOLE, self._freed, self._offset - self._freed) == 0:
            self._freed = self._offset

    def close(self) -> None:
        """Close and remove the file (our own descriptor was opened for writing: closing it
        counts as a close after writing for the watch, so only after the end was read)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


class SpooledArchives:
    """The archives a pg_basebackup writes into `directory`, which must be empty and watched
    before it starts (create this first)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._watch = _Watch(directory)
        self.done: list[str] = []

    def follow(self, exited: Callable[[], bool]) -> Iterator[tuple[str, _Growing]]:
        """Each archive's name and its stream, in the order pg_basebackup created them; the
        next is looked for when the caller asks for it (after reading the previous one to its
        end). `exited()` tells whether pg_basebackup has ended. Raises SpoolError for a file
        that is no tar archive of pg_basebackup's."""
        watch = self._watch
        try:
            while True:
                watch.update()
                waiting = [n for n in watch.created if n not in self.done]
                if not waiting:
                    if exited():
                        watch.update()
                        if [n for n in watch.created if n not in self.done]:
                            continue
                        left = sorted(set(os.listdir(self.directory)) - set(self.done))
                        if left:
                            raise SpoolError(f"pg_basebackup left {left[0]!r} unannounced")
                        return
                    time.sleep(POLL_SECONDS)
                    continue
                name = waiting[0]
                if not ARCHIVE_NAME.match(name):
                    raise SpoolError(f"pg_basebackup wrote {name!r}, which is none of its "
                                     "tar archives")

                def writing(name: str = name) -> bool:
                    # Exited is checked first: after it, every byte is in the file.
                    if exited():
                        return False
                    watch.update()
                    return name not in watch.closed

                try:
                    stream = _Growing(self.directory / name, writing)
                except FileNotFoundError:
                    if exited():
                        return  # its failure is pg_basebackup's to report
                    raise SpoolError(f"{name} vanished from the spool directory") from None
                try:
                    yield name, stream
                finally:
                    stream.close()
                self.done.append(name)
        finally:
            watch.close()

    def close(self) -> None:
        self._watch.close()
