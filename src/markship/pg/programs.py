"""Finding PostgreSQL's own programs (bin_dir, tool), and pg_basebackup run and watched."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

from markship.errors import BackupError, ServerError
from markship.pg.conninfo import ProgramConninfo

_PROGRESS_RE = re.compile(r"(\d+)/(\d+) kB")


def bin_dir(configured: Path | None, version_num: int) -> Path | None:
    """The directory holding the PostgreSQL tools matching the server's major version."""
    if configured is not None:
        return configured
    debian = Path(f"/usr/lib/postgresql/{version_num // 10000}/bin")
    if (debian / "pg_basebackup").exists():
        return debian
    return None


def tool(directory: Path | None, name: str) -> str:
    """Absolute path of a PostgreSQL program; raise ServerError when it is not installed."""
    if directory is not None:
        path = directory / name
        if path.exists():
            return str(path)
    found = shutil.which(name)
    if not found:
        raise ServerError(f"PostgreSQL program {name} not found",
                          "install the PostgreSQL server package or set bin_dir for the server")
    return found


_RUNNING: set[subprocess.Popen[bytes]] = set()


def kill_running() -> None:
    """Kill every pg_basebackup this process started (the agent abandoning a backup)."""
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()


class ByteStream(Protocol):
    """What a backup's stdout offers: `read(size)`."""

    def read(self, size: int = -1, /) -> bytes: ...


# pg_basebackup compresses with zstd on the server from PostgreSQL 15 on; before, markship does.
SERVER_ZSTD_FROM = 150000
# The oldest PostgreSQL markship backs up (README "Supported PostgreSQL versions").
OLDEST_SUPPORTED = 130000


class BaseBackupProcess:
    """`pg_basebackup` writing tar archives, watched on stderr; `archives()` gives each one
    zstd-compressed either way: by the server (`server_zstd`, PostgreSQL 15 and later) or by
    markship as it streams (13 and 14, whose pg_basebackup has no zstd).

    Without `spool_dir`, the one archive of the data directory comes through stdout. With it
    (a private empty directory: needed when the server has tablespaces outside its data
    directory, which pg_basebackup does not write to stdout), each archive is read from there
    as it is written (markship.pg.spooled) and removed once read.

    The caller reads every archive to its end, then calls `finish()`, which raises BackupError
    when pg_basebackup failed; the streamed bytes must then be discarded.
    """

    def __init__(self, pg_basebackup: str, conninfo: str, label: str, *, level: int,
                 workers: int, archive_wait_seconds: int, server_zstd: bool = True,
                 on_progress: Callable[[int, int], None] | None = None,
                 spool_dir: Path | None = None) -> None:
        detail = f"level={level}" + (f",workers={workers}" if workers else "")
        compress = [f"--compress=server-zstd:{detail}"] if server_zstd else []
        # The password travels in the environment, never on the command line (see conninfo).
        self.login = ProgramConninfo(conninfo)
        # Into a directory, no fsync: the archives are only passing through on their way to
        # the repository, which makes them durable itself. No clean-up by pg_basebackup on
        # failure either: the archives it would delete may be being read (markship removes
        # the directory).
        output = (["-D", "-"] if spool_dir is None
                  else ["-D", str(spool_dir), "--no-sync", "--no-clean"])
        self.argv = [pg_basebackup, "-d", self.login.argv, *output, "-Ft", "-X", "none",
                     "--checkpoint=fast", *compress, "--no-manifest",
                     "-l", label, "--progress", "--no-password"]
        self.level, self.workers, self.server_zstd = level, workers, server_zstd
        self.archive_wait_seconds = archive_wait_seconds
        self.on_progress = on_progress
        self.spooled = None
        if spool_dir is not None:
            from markship.pg.spooled import SpooledArchives, SpoolError

            try:  # watched before pg_basebackup starts, to see every archive it creates
                self.spooled = SpooledArchives(spool_dir)
            except SpoolError as exc:
                self.login.close()
                raise BackupError(str(exc), "check the temporary directory (TMPDIR)") from None
        self.total_kb = 0
        self.done_kb = 0
        self.lines: list[str] = []
        self.failure: str | None = None
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE if spool_dir is None
                                         else subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                         env=self.login.env)
        except BaseException:
            self.login.close()
            if self.spooled is not None:
                self.spooled.close()
            raise
        _RUNNING.add(self.proc)
        assert self.proc.stderr is not None
        self._watcher = threading.Thread(target=self._watch, args=(self.proc.stderr,),
                                         daemon=True)
        self._watcher.start()

    def _compressed(self, stream: ByteStream) -> ByteStream:
        if self.server_zstd:
            return stream
        import zstandard

        return zstandard.ZstdCompressor(level=self.level, threads=self.workers).stream_reader(
            stream, closefd=False)  # type: ignore[arg-type]

    def archives(self) -> Iterator[tuple[str, ByteStream]]:
        """Each archive as pg_basebackup writes it: "base" (the data directory) or a
        tablespace's OID, and its zstd stream. Read each to its end before asking for the
        next. Raises BackupError for a file in the spool directory that is no archive."""
        if self.spooled is None:
            assert self.proc.stdout is not None
            yield "base", self._compressed(self.proc.stdout)
            return
        from markship.pg.spooled import SpoolError

        try:
            for name, stream in self.spooled.follow(lambda: self.proc.poll() is not None):
                yield name.split(".", 1)[0], self._compressed(stream)
        except SpoolError as exc:
            raise BackupError(str(exc), "report this to the markship developers") from None

    def _watch(self, stream: IO[bytes]) -> None:
        waiting_since: float | None = None
        buffer = b""
        while chunk := stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096):
            buffer += chunk
            parts = re.split(rb"[\r\n]", buffer)
            buffer = parts.pop()
            for raw in parts:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                match = _PROGRESS_RE.search(line)
                if match:
                    self.done_kb, self.total_kb = int(match.group(1)), int(match.group(2))
                    if self.on_progress:
                        self.on_progress(self.done_kb, self.total_kb)
                    continue
                if "not removed at user's request" in line:
                    continue  # --no-clean: markship removes its spool directory itself
                self.lines.append(line)
                if "WAL archiving is not enabled" in line:
                    self.failure = ("WAL archiving is not enabled on the server, so this "
                                    "backup could never be restored")
                    self.proc.kill()
                if "still waiting for all required WAL segments" in line:
                    waiting_since = waiting_since or time.monotonic()
                    # PostgreSQL warns after 60 s of waiting; stop once our bound is passed.
                    if self.archive_wait_seconds <= 60 or (
                        time.monotonic() - waiting_since + 60 >= self.archive_wait_seconds
                    ):
                        self.failure = ("the server's archiver did not deliver the backup's "
                                        "WAL to the repository in time")
                        self.proc.kill()

    def finish(self) -> None:
        """Wait for pg_basebackup; raise BackupError when it did not succeed."""
        code = self.proc.wait()
        if self.spooled is not None:
            self.spooled.close()
        _RUNNING.discard(self.proc)
        self.login.close()
        self._watcher.join(timeout=10)
        if self.failure:
            raise BackupError(self.failure,
                              "check archive_command (markship wal-push) and `markship status`")
        if code != 0 and any("single tablespace to stdout" in line for line in self.lines):
            raise BackupError("a tablespace was created on the server as its backup started",
                              "run markship backup again")
        if code != 0:
            tail = " | ".join(self.lines[-3:]) or f"exit status {code}"
            raise BackupError(f"pg_basebackup failed: {tail}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.spooled is not None:
            self.spooled.close()
        _RUNNING.discard(self.proc)
        self.login.close()
