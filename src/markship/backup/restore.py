"""Restore one server: base backup → new data directory → recovery to a target.

A chain of small steps: choose the backup, stream it out of the repository (checksum while
reading, decompress, untar), write the recovery settings, optionally start and wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from markship.backup import tablespaces
from markship.backup.basebackup import ProgressFn
from markship.backup.holds import hold
from markship.backup.restorestate import RestoreState, restored_host, write_state
from markship.backup.targets import Target, choose_backup
from markship.config.model import Config
from markship.errors import CorruptObject, RestoreError
from markship.pg.commands import fetch_command
from markship.pg.datadir import (
    DataDir,
    neutralize_paths,
    postmaster_status,
    recovery_end,
    server_log,
    stop_reason,
    write_settings,
)
from markship.pg.lsn import format_lsn, segment_holding_end
from markship.repository import catalog, restorable
from markship.repository.base import Readable, Repository
from markship.repository.catalog import BackupRecord
from markship.repository.hashing import HashingReader
from markship.repository.records import ObjectRef
from markship.timefmt import show, utcnow


@dataclass(frozen=True)
class RestoreResult:
    server: str
    set_id: str
    target_dir: Path
    target: Target
    started: bool
    port: int | None
    seconds: float
    recovery_end_lsn: str | None = None  # where recovery stopped (when started)
    archive_end_lsn: str | None = None  # how far it had to reach: the target, or the archive
    stopped_at: str | None = None  # PostgreSQL's words where it paused or shut down
    tablespaces: dict[str, str] = field(default_factory=dict)  # name → directory restored to


def refuse_gaps(repo: Repository, server: str, backup: BackupRecord) -> None:
    """Recovery to 'latest' stops at the first missing segment without complaint: refuse."""
    index = restorable.WalIndex(repo, server, backup.wal_segment_size)
    gaps = index.gaps_after(backup.start_segment)
    if gaps:
        missing = gaps[0].name(backup.wal_segment_size)
        raise RestoreError(
            f"WAL gap on server {server}: {missing} is missing from the archive, so recovery "
            "to the latest point would silently stop before it",
            "restore to a --time before the gap, or take a new backup (markship verify lists "
            "every gap)",
        )


def refuse_incomplete_mark(repo: Repository, server: str, mark: catalog.MarkRecord) -> None:
    wal = {server: restorable.WalIndex(repo, server)}
    lost = restorable.Gaps(repo, wal).unrestorable(mark)
    if server in lost:
        raise RestoreError(f"mark {mark.name} cannot be restored: {lost[server]}",
                           "choose a mark before the gap, or one after the full backup that "
                           "follows it (markship marks; markship status shows the gap)")
    missing = restorable.mark_missing_wal(mark, wal)
    if server in missing:
        raise RestoreError(
            f"mark {mark.name} is not complete for server {server}: {missing[server]} is not "
            "archived", "choose a complete mark (markship marks) or wait for archiving")


# 1 MiB tar records: tar's default 10 KiB reads cost a measurable share of a restore.
_TAR = ["tar", "--blocking-factor=2048", "-x", "-f", "-", "-C"]


def extract(repo: Repository, backup: BackupRecord, target_dir: Path,
            on_progress: ProgressFn | None = None) -> None:
    """Stream the base backup into `target_dir`; remove what was written if it is corrupt.
    `on_progress` hears (server, stored bytes read, stored size of all its archives) as the
    backup is read.
    """
    unpack(repo, backup.archive, target_dir, "base backup",
           _reporter(on_progress, backup.server, 0, backup.stored_size))


def unpack(repo: Repository, archive: ObjectRef, target_dir: Path, what: str,
           report: Callable[[int], None] | None = None) -> None:
    """Stream one tar archive of a base backup into `target_dir`; empty it again and raise
    CorruptObject (naming it as `what`) if the archive fails its checksum or cannot be
    unpacked. `report` hears the stored bytes read so far.

    Reading and hashing happen here; decompression runs in the `zstd` program when it is
    installed (one more process, so reading, decompressing and unpacking use both cores),
    else in-process with python-zstandard.
    """
    stored = repo.open_stored(archive.key)
    hashed = HashingReader(stored)  # the checksum covers the stored (maybe encrypted) bytes
    if report is not None:
        hashed = _Reported(stored, report)
    source = repo.plaintext(hashed, archive.key)
    zstd = shutil.which("zstd")
    problem: str | None = None
    flusher = _Flusher(target_dir)
    try:
        if zstd:
            problem, tar_error, tar_code = _extract_with_zstd(zstd, source, target_dir)
        else:
            problem, tar_error, tar_code = _extract_in_process(source, target_dir)
    finally:
        stored.close()
        flusher.stop()
    if problem is None and hashed.hexdigest() != archive.sha256:
        problem = "fails its checksum"
    if problem is None and tar_code != 0:
        detail = tar_error.splitlines()[-1] if tar_error else "tar failed"
        problem = f"cannot be unpacked ({detail})"
    if problem is not None:
        _empty(target_dir)
        raise CorruptObject(
            f"{what} {archive.key} {problem}; nothing was restored",
            "run markship verify and restore from another backup set (--set)",
        )


def _reporter(on_progress: ProgressFn | None, server: str, before: int,
              total: int) -> Callable[[int], None] | None:
    """A `report` for unpack() that tells `on_progress` of all archives read so far."""
    if on_progress is None:
        return None
    return lambda done: on_progress(server, before + done, total)


def unpack_tablespaces(repo: Repository, backup: BackupRecord, target_dir: Path,
                       placements: list[tablespaces.Placement],
                       on_progress: ProgressFn | None = None) -> None:
    """After the base backup was unpacked into `target_dir`: each tablespace's archive into
    its directory, and `tablespace_map` pointed at those. On any failure what was written
    (here and in `target_dir`) is removed again."""
    made: list[Path] = []
    try:
        tablespaces.read_map(target_dir, backup)
        made = tablespaces.create(placements, target_dir)
        done = backup.archive.size
        for each in placements:
            archive = backup.tablespaces[each.oid].archive
            unpack(repo, archive, each.directory, f"tablespace {each.name} archive",
                   _reporter(on_progress, backup.server, done, backup.stored_size))
            tablespaces.check_unpacked(each.directory, each.name, archive.key)
            done += archive.size
        tablespaces.write_map(target_dir, placements)
    except BaseException:
        tablespaces.undo(placements, made)
        _empty(target_dir)
        raise


class _Reported(HashingReader):
    """A HashingReader that tells how many bytes went by after each read."""

    def __init__(self, inner: Readable, report: Callable[[int], None]) -> None:
        super().__init__(inner)
        self.report = report

    def read(self, size: int = -1, /) -> bytes:
        chunk = super().read(size)
        self.report(self.size)
        return chunk


class _Flusher:
    """Writes the restored files back to disk while they are still being unpacked.

    PostgreSQL fsyncs the whole data directory before recovery of a directory that was not
    shut down cleanly; flushing during extraction overlaps that disk work with decompression
    instead of paying it afterwards (it then finds the pages clean).
    """

    def __init__(self, directory: Path) -> None:
        import ctypes
        import threading

        self._stop = threading.Event()
        self._syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        self._fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._syncfs is not None and not self._stop.wait(0.25):
            self._syncfs(self._fd)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)


def _extract_with_zstd(zstd: str, source: Readable,
                       target_dir: Path) -> tuple[str | None, str, int]:
    unzstd = subprocess.Popen([zstd, "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert unzstd.stdin is not None and unzstd.stdout is not None
    tar = subprocess.Popen([*_TAR, str(target_dir)], stdin=unzstd.stdout,
                           stderr=subprocess.PIPE)
    unzstd.stdout.close()
    try:
        while chunk := source.read(1 << 20):
            unzstd.stdin.write(chunk)
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            unzstd.stdin.close()
    zstd_error = _drain(unzstd)
    tar_error = _drain(tar)
    problem = None
    if unzstd.returncode != 0:
        detail = zstd_error.splitlines()[-1] if zstd_error else f"exit {unzstd.returncode}"
        problem = f"cannot be decompressed ({detail})"
    return problem, tar_error, tar.returncode


def _extract_in_process(source: Readable, target_dir: Path) -> tuple[str | None, str, int]:
    import zstandard

    tar = subprocess.Popen([*_TAR, str(target_dir)], stdin=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert tar.stdin is not None
    problem: str | None = None
    try:
        zstandard.ZstdDecompressor().copy_stream(
            source, tar.stdin, read_size=1 << 20, write_size=1 << 20)  # type: ignore[arg-type]
    except zstandard.ZstdError as exc:
        problem = f"cannot be decompressed ({exc})"
    except BrokenPipeError:
        pass
    finally:
        with contextlib.suppress(BrokenPipeError):
            tar.stdin.close()
    return problem, _drain(tar), tar.returncode


def _drain(proc: subprocess.Popen[bytes]) -> str:
    """Wait for a child whose stdin we already closed; its stderr as text."""
    assert proc.stderr is not None
    text = proc.stderr.read().decode(errors="replace").strip()
    proc.wait()
    return text


def _empty(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def recovery_settings(config: Config, server: str, target: Target,
                      port: int | None, extra: dict[str, str],
                      standby_floor: str | None = None) -> dict[str, str]:
    fetch = fetch_command(config, server, standby_floor)
    settings = {
        "restore_command": fetch,
        # The restored server must not archive into production's WAL history.
        "archive_mode": "off",
        # A synchronous standby list from production would make every commit hang.
        "synchronous_standby_names": "",
        # One syncfs() call instead of an fsync per file: markship flushed while unpacking.
        "recovery_init_sync_method": "syncfs",
    }
    settings.update(target.settings())
    if target.mark is not None and server in target.mark.points:
        # The mark's own timeline: after a failover an older mark may lie on a timeline
        # that branched off ('latest' would follow the newer one and never reach it).
        settings["recovery_target_timeline"] = str(target.mark.points[server].timeline)
    if port is not None:
        settings["port"] = str(port)
    settings.update(extra)
    return settings


UNFINISHED = "markship-restore.unfinished"  # in a data directory markship is still building


@contextmanager
def claimed_target_dir(target_dir: Path) -> Iterator[None]:
    """The target directory, new or empty, held for this restore until the block ends.

    A directory left half built by a restore that was killed (its UNFINISHED file is still
    there, no server runs in it, and no restore holds it) is emptied and built again, so the
    same command can simply be run again; any other content is refused: markship never
    overwrites data. The hold is an flock on the directory itself, which the kernel drops
    when its holder dies. The UNFINISHED file goes once the settings are written.
    """
    if target_dir.exists() and not target_dir.is_dir():
        raise RestoreError(f"target {target_dir} exists and is not a directory",
                           "choose a new or empty directory")
    if not target_dir.exists():
        try:
            target_dir.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise RestoreError(f"cannot create target directory {target_dir}: {exc.strerror}",
                               "choose a directory the repository's OS user can write") from None
    fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RestoreError(f"another markship restore is writing into {target_dir}",
                               "wait for it to finish, or choose another directory") from None
        if any(target_dir.iterdir()):
            if not (target_dir / UNFINISHED).exists() or postmaster_status(target_dir):
                raise RestoreError(f"target directory {target_dir} is not empty",
                                   "choose a new or empty directory; markship never "
                                   "overwrites data")
            print(f"markship: note: {target_dir} was left half built by a restore that did "
                  "not finish; it is built again", file=sys.stderr)
            _empty(target_dir)
        target_dir.chmod(0o700)
        with (target_dir / UNFINISHED).open("w") as marker:
            marker.write(f"markship is building this data directory (since {show(utcnow())})\n")
            marker.flush()
            os.fsync(marker.fileno())
        try:
            yield
        except BaseException:
            if [p.name for p in target_dir.iterdir()] == [UNFINISHED]:
                (target_dir / UNFINISHED).unlink()  # failed before writing anything: empty
            raise
    finally:
        os.close(fd)


# What start_and_wait waits for, per recovery_target_action.
_UNTIL = {"promote": "promoted", "pause": "paused", "shutdown": "shutdown"}


def restore_server(config: Config, repo: Repository, server: str, target_dir: Path,
                   target: Target, *, set_id: str | None = None, start: bool = False,
                   port: int | None = None, extra_settings: dict[str, str] | None = None,
                   wait_seconds: float = 600, standby: bool = False,
                   on_progress: ProgressFn | None = None,
                   tablespace_map: dict[str, str] | None = None,
                   partial_map: bool = False) -> RestoreResult:
    """Build a new data directory for `server` recovering to `target`; start it if asked and
    wait until it did the target's action (promoted, paused there, or shut down there).
    `on_progress` hears how much of the base backup was read (see extract); recovery after it
    is not counted.

    With `standby`, the server stays in continuous recovery from the repository, fed only up
    to the newest complete group mark (see wal.fetch.standby_ceiling).

    Tablespaces outside the data directory go where `tablespace_map` (OLD name or location →
    NEW directory; see backup.tablespaces.place, `partial_map` for a group's) says, else back
    to their original location; each directory must be absent or empty.
    """
    section = config.server(server)
    began = time.monotonic()
    if target.kind == "name" and target.name and target.mark is None:
        mark = catalog.read_mark(repo, target.name)
        if mark is not None:
            target = Target("name", name=target.name, mark=mark, action=target.action)
    if target.mark is not None:
        refuse_incomplete_mark(repo, server, target.mark)
    backup = choose_backup(repo, server, target, set_id)
    if target.kind == "latest":
        refuse_gaps(repo, server, backup)
    placements = tablespaces.place(backup, tablespace_map or {}, partial=partial_map)
    tablespaces.check_free(placements, target_dir)
    with claimed_target_dir(target_dir), hold(repo, backup):
        extract(repo, backup, target_dir, on_progress)
        unpack_tablespaces(repo, backup, target_dir, placements, on_progress)
        if not (target_dir / "postgresql.conf").exists():
            _place_captured_config(repo, backup, target_dir)
        neutralize_paths(target_dir / "postgresql.conf")
        floor = backup.stop_segment.name(backup.wal_segment_size) if standby else None
        (target_dir / ("standby.signal" if standby else "recovery.signal")).touch()
        settings = recovery_settings(config, server, target, port, extra_settings or {}, floor)
        if standby:
            settings.update(hot_standby="on", wal_retrieve_retry_interval="1s")
        write_settings(target_dir, settings,
                       f"markship {'standby' if standby else 'restore'} {show(utcnow())}: "
                       f"backup set {backup.set_id}, target {target.describe()}")
        if not standby:
            timeline = settings.get("recovery_target_timeline")
            write_state(target_dir, RestoreState(
                server, backup.set_id, backup.pg_version_num, port, restored_host(settings),
                target.describe(), target.action, int(timeline) if timeline else None))
        (target_dir / UNFINISHED).unlink()
        reached: tuple[str | None, str | None] = (None, None)
        stopped: str | None = None
        if start:
            directory = DataDir.at(target_dir, section.bin_dir, backup.pg_version_num)
            until = "standby" if standby else _UNTIL[target.action]
            directory.start_and_wait(wait_seconds, until=until)
            if until == "promoted":
                reached = check_recovery_end(repo, server, backup, target, directory)
            elif until in ("paused", "shutdown"):
                stopped = stop_reason(target_dir)
    return RestoreResult(server, backup.set_id, target_dir, target, start, port,
                         time.monotonic() - began, *reached, stopped_at=stopped,
                         tablespaces={p.name: str(p.directory) for p in placements})


def check_recovery_end(repo: Repository, server: str, backup: BackupRecord | None,
                       target: Target, directory: DataDir) -> tuple[str, str | None]:
    """Where recovery stopped and where it should have reached (as LSN text), compared.

    PostgreSQL ends recovery at the first WAL file restore_command does not deliver and
    promotes, so a fetch that failed quietly (a wrapper, an older markship, a bug) would look
    like the end of the archive. The archive holds the truth: recovery to the latest point
    must have reached its newest segment on the timeline recovery ended on (`backup` gives
    the segment size), recovery to a mark that mark's restore point, to an LSN (inclusive)
    that LSN. Raises RestoreError, after stopping the server so nothing writes to a database
    missing committed data, when recovery stopped short.
    """
    data_dir = directory.path
    end = recovery_end(data_dir)
    if end is None:
        raise RestoreError(f"restored server {server} promoted without a timeline history file",
                           f"inspect {data_dir}; do not use it before the cause is known")
    # PostgreSQL itself refuses to promote short of a time, an xid or a bare name, and an
    # 'immediate' target is wherever the backup became consistent: nothing to compare.
    expected = expected_lsn(target, server)
    short = expected is not None and end.lsn < expected
    if target.kind == "latest" and backup is not None:
        size = backup.wal_segment_size
        newest = max(restorable.WalIndex(repo, server, size).segments.get(end.timeline, ()),
                     default=None)
        if newest is not None:
            expected = (newest + 1) * size  # the end of the newest archived segment
            stopped = segment_holding_end(end.timeline, end.lsn, size).number
            short = stopped < newest
    if short and expected is not None:
        directory.stop()
        raise RestoreError(
            f"recovery of {server} stopped at {format_lsn(end.lsn)} on timeline "
            f"{end.timeline}, but the repository holds WAL up to {format_lsn(expected)}: "
            "the restored server lacks committed transactions, so it was stopped",
            f"find the failed WAL fetch in {server_log(data_dir)}, fix it and "
            "restore again into an empty directory")
    return format_lsn(end.lsn), None if expected is None else format_lsn(expected)


def expected_lsn(target: Target, server: str) -> int | None:
    """How far recovery to `target` must at least replay, when that is known as an LSN: a
    mark's restore point, an inclusive LSN target (an exclusive one stops just before it)."""
    if target.mark is not None and server in target.mark.points:
        return target.mark.points[server].lsn
    if target.kind == "lsn" and target.inclusive:
        return target.lsn
    return None


def _place_captured_config(repo: Repository, backup: BackupRecord, target_dir: Path) -> None:
    """Config files kept outside the data directory (Debian's /etc) come from the backup."""
    for file_name, ref in backup.config_files.items():
        (target_dir / file_name).write_bytes(repo.read_bytes(ref.key))
    if backup.config_files:
        write_settings(target_dir, {"hba_file": str(target_dir / "pg_hba.conf"),
                                    "ident_file": str(target_dir / "pg_ident.conf")},
                       "markship restore: configuration captured with the backup")
