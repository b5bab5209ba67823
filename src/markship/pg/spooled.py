"""pg_basebackup's tar archives read from its output directory while it writes them.

A server with tablespaces outside its data directory cannot be backed up to stdout:
pg_basebackup then writes one archive per tablespace (`base.tar[.zst]`, `<oid>.tar[.zst]`)
into a directory it insists is empty, one archive after the other and each closed before the
next is created. `SpooledArchives` hands each archive over as a stream as soon as it appears,
reads it while it grows, frees the disk blocks behind the reader (so the spool holds only
what the reader has not caught up with) and deletes it once read to its end. An archive is
at its end once pg_basebackup no longer holds it open (read in /proc: its child process) or
has exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# The names pg_basebackup gives its tar archives: the data directory, or a tablespace's OID.
ARCHIVE_NAME = re.compile(r"^(base|[1-9][0-9]{0,9})\.tar(\.zst)?$")
CHUNK = 1 << 20
# How long a reader that caught up with the writer waits before looking again.
POLL_SECONDS = 0.02
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


class UnexpectedFile(Exception):
    """pg_basebackup wrote a file whose name is not one of its tar archives'."""


class _Growing:
    """One archive being written by pg_basebackup, read up to its end; `read()` waits while
    the writer still holds it open. Blocks already read are given back to the file system."""

    def __init__(self, path: Path, writing: Callable[[os.stat_result], bool]) -> None:
        self.path = path
        self._writing = writing
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._stat = os.fstat(self._fd)
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
            if not self._writing(self._stat):
                # Closed by the writer: whatever it wrote before closing is there to read.
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
        if _fallocate(self._fd, _PUNCH_HOLE, ctypes.c_long(self._freed),
                      ctypes.c_long(self._offset - self._freed)) == 0:
            self._freed = self._offset

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _libc_fallocate() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    function.restype = ctypes.c_int
    return function


_fallocate = _libc_fallocate()


class SpooledArchives:
    """The archives pg_basebackup (process `pid`) writes into `directory`, in the order it
    writes them; `exited()` tells whether it has ended."""

    def __init__(self, directory: Path, pid: int, exited: Callable[[], bool]) -> None:
        self.directory = directory
        self.pid = pid
        self.exited = exited
        self.done: list[str] = []

    def _open_files(self) -> set[tuple[int, int]]:
        """(device, inode) of every file the writer holds open; empty once it has ended."""
        held = set()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                try:
                    info = os.stat(f"/proc/{self.pid}/fd/{fd}")
                except OSError:
                    continue
                held.add((info.st_dev, info.st_ino))
        return held

    def _writing(self, info: os.stat_result) -> bool:
        return not self.exited() and (info.st_dev, info.st_ino) in self._open_files()

    def __iter__(self) -> Iterator[tuple[str, _Growing]]:
        """Each archive's name and its stream, once; the next is looked for when the caller
        asks for it (after reading the previous one to its end). Raises UnexpectedFile for a
        file that is no tar archive of pg_basebackup's."""
        while True:
            waiting = sorted(set(os.listdir(self.directory)) - set(self.done))
            for name in waiting:
                if not ARCHIVE_NAME.match(name):
                    raise UnexpectedFile(name)
            if not waiting:
                if self.exited():
                    # Exited between the listing and this check: look once more.
                    if not sorted(set(os.listdir(self.directory)) - set(self.done)):
                        return
                    continue
                time.sleep(POLL_SECONDS)
                continue
            # Finished archives first (at most one is still being written). pg_basebackup
            # never waits for this reader, so any order ends; this one spools the least.
            held = self._open_files()
            stats = {name: os.stat(self.directory / name) for name in waiting}
            name = sorted(waiting, key=lambda n: (stats[n].st_dev, stats[n].st_ino) in held)[0]
            stream = _Growing(self.directory / name, self._writing)
            try:
                yield name, stream
            finally:
                stream.close()
            self.done.append(name)

