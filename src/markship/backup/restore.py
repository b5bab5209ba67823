"""Restore one server: base backup → new data directory → recovery to a target.

A chain of small steps: choose the backup, stream it out of the repository (checksum while
reading, decompress, untar), write the recovery settings, optionally start and wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from markship.backup.holds import hold
from markship.config.model import Config
from markship.errors import CorruptObject, RestoreError
from markship.pg import programs
from markship.pg.lsn import format_lsn, parse_history, segment_holding_end
from markship.repository import catalog, restorable
from markship.repository.base import Readable, Repository
from markship.repository.catalog import BackupRecord
from markship.repository.hashing import HashingReader
from markship.timefmt import show, utcnow


@dataclass(frozen=True)
class Target:
    """Where recovery stops: the end of the archive, a time, or a named restore point."""

    kind: str  # "latest" | "time" | "name" | "standby" (continuous recovery, no target)
    time: datetime | None = None
    name: str | None = None
    mark: catalog.MarkRecord | None = None  # set when `name` is a group mark

    def settings(self) -> dict[str, str]:
        if self.kind == "time" and self.time is not None:
            return {"recovery_target_time": self.time.isoformat(),
                    "recovery_target_action": "promote"}
        if self.kind == "name" and self.name is not None:
            return {"recovery_target_name": self.name, "recovery_target_action": "promote"}
        return {}

    def describe(self) -> str:
        if self.kind == "time":
            return f"time {show(self.time)}"
        if self.kind == "name":
            return f"restore point {self.name}"
        if self.kind == "standby":
            return "continuous recovery up to the newest complete mark"
        return "the end of the archived WAL"


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


@dataclass(frozen=True)
class RecoveryEnd:
    """Where a promoted server's recovery stopped, from the timeline history file it wrote
    when it promoted: the timeline it was on, the LSN, and PostgreSQL's reason line."""

    timeline: int
    lsn: int
    reason: str


def recovery_end(data_dir: Path) -> RecoveryEnd | None:
    """The end of recovery of a promoted data directory; None before any promotion."""
    histories = sorted((data_dir / "pg_wal").glob("*.history"))
    if not histories:
        return None
    text = histories[-1].read_text(errors="replace")
    entries = parse_history(text)  # raises on a malformed file
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not entries:
        return None
    timeline, lsn = entries[-1]
    return RecoveryEnd(timeline, lsn, lines[-1].split("\t", 2)[-1])


def complete_backups(repo: Repository, server: str) -> list[BackupRecord]:
    """This server's finished backups with their WAL archived, newest first.

    A server's backup is usable for restoring that server alone even when another server of
    its set failed; group restores (later) need complete sets.
    """
    found = []
    wal: dict[str, restorable.WalIndex] = {}
    for record in catalog.list_sets(repo):
        if server not in record.servers:
            continue
        state = restorable.set_state(repo, record, wal)
        if server in state.restorable:
            found.append(state.restorable[server])
    return sorted(found, key=lambda b: b.consistent_at, reverse=True)


def choose_backup(repo: Repository, server: str, target: Target,
                  set_id: str | None = None) -> BackupRecord:
    """The newest complete backup from which `target` can be reached.

    Raises RestoreError when there is none, or the target lies before every backup's
    consistency point.
    """
    backups = complete_backups(repo, server)
    if set_id is not None:
        backups = [b for b in backups if b.set_id == set_id]
        if not backups:
            raise RestoreError(f"backup set {set_id} has no usable backup of server {server}",
                               "pick a set that markship list shows as complete")
    if not backups:
        raise RestoreError(f"no usable backup of server {server} in the repository",
                           "run markship backup first (markship list shows what exists)")
    if target.mark is not None:
        point = target.mark.points.get(server)
        if point is None:
            raise RestoreError(f"mark {target.mark.name} has no restore point on server {server}",
                               "choose a mark made while this server was in the group")
        usable = [b for b in backups
                  if b.timeline == point.timeline and b.stop_lsn <= point.lsn]
        if not usable:
            raise RestoreError(
                f"mark {target.mark.name} is older than every backup of server {server}",
                "choose a newer mark (markship marks)")
        return usable[0]
    if target.kind == "time" and target.time is not None:
        usable = [b for b in backups if b.consistent_at <= target.time]
        if not usable:
            oldest = min(backups, key=lambda b: b.consistent_at)
            raise RestoreError(
                f"{target.describe()} is before the consistency point of every backup of "
                f"server {server} (the oldest is consistent from {show(oldest.consistent_at)})",
                "choose a later time",
            )
        return usable[0]
    return backups[0]


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
    missing = restorable.mark_missing_wal(mark, {server: restorable.WalIndex(repo, server)})
    if server in missing:
        raise RestoreError(
            f"mark {mark.name} is not complete for server {server}: {missing[server]} is not "
            "archived", "choose a complete mark (markship marks) or wait for archiving")


def markship_command() -> str:
    """The markship executable PostgreSQL should call in restore_command."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "markship" and argv0.exists():
        return str(argv0.absolute())
    found = shutil.which("markship")
    if found:
        return found
    return str(Path(sys.executable).parent / "markship")


# 1 MiB tar records: tar's default 10 KiB reads cost a measurable share of a restore.
_TAR = ["tar", "--blocking-factor=2048", "-x", "-f", "-", "-C"]


def extract(repo: Repository, backup: BackupRecord, target_dir: Path) -> None:
    """Stream the base backup into `target_dir`; remove what was written if it is corrupt.

    Reading and hashing happen here; decompression runs in the `zstd` program when it is
    installed (one more process, so reading, decompressing and unpacking use both cores),
    else in-process with python-zstandard.
    """
    stored = repo.open_stored(backup.archive.key)
    hashed = HashingReader(stored)  # the checksum covers the stored (maybe encrypted) bytes
    source = repo.plaintext(hashed, backup.archive.key)
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
    if problem is None and hashed.hexdigest() != backup.archive.sha256:
        problem = "fails its checksum"
    if problem is None and tar_code != 0:
        detail = tar_error.splitlines()[-1] if tar_error else "tar failed"
        problem = f"cannot be unpacked ({detail})"
    if problem is not None:
        _empty(target_dir)
        raise CorruptObject(
            f"base backup {backup.archive.key} {problem}; nothing was restored",
            "run markship verify and restore from another backup set (--set)",
        )


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


def fetch_command(config: Config, server: str, standby_floor: str | None = None) -> str:
    """restore_command calling wal-fetch; with a floor, the mark-gated standby variant."""
    assert config.source is not None
    gate = f"--standby --floor {standby_floor} " if standby_floor else ""
    return (f"{shlex.quote(markship_command())} --config {shlex.quote(str(config.source))} "
            f"wal-fetch --server {shlex.quote(server)} {gate}%f %p")


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
    if port is not None:
        settings["port"] = str(port)
    settings.update(extra)
    return settings


def write_settings(data_dir: Path, settings: dict[str, str], comment: str) -> None:
    lines = [f"\n# {comment}\n"]
    for key, value in settings.items():
        lines.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n")
    with (data_dir / "postgresql.auto.conf").open("a") as handle:
        handle.writelines(lines)
        handle.flush()
        # Durable before the server starts: after a crash a restored server must not come
        # back without its recovery target (it would recover to the end instead).
        os.fsync(handle.fileno())


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


def restore_server(config: Config, repo: Repository, server: str, target_dir: Path,
                   target: Target, *, set_id: str | None = None, start: bool = False,
                   port: int | None = None, extra_settings: dict[str, str] | None = None,
                   wait_seconds: float = 600, standby: bool = False) -> RestoreResult:
    """Build a new data directory for `server` recovering to `target`; start it if asked.

    With `standby`, the server stays in continuous recovery from the repository, fed only up
    to the newest complete group mark (see wal.standby_ceiling).
    """
    section = config.server(server)
    began = time.monotonic()
    if target.kind == "name" and target.name and target.mark is None:
        mark = catalog.read_mark(repo, target.name)
        if mark is not None:
            target = Target("name", name=target.name, mark=mark)
    if target.mark is not None:
        refuse_incomplete_mark(repo, server, target.mark)
    backup = choose_backup(repo, server, target, set_id)
    if target.kind == "latest":
        refuse_gaps(repo, server, backup)
    with claimed_target_dir(target_dir), hold(repo, backup):
        extract(repo, backup, target_dir)
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
        (target_dir / UNFINISHED).unlink()
        reached: tuple[str | None, str | None] = (None, None)
        if start:
            tools = programs.bin_dir(section.bin_dir, backup.pg_version_num)
            pg_ctl = programs.tool(tools, "pg_ctl")
            start_and_wait(pg_ctl, target_dir, wait_seconds,
                           until="standby" if standby else "promoted")
            if not standby:
                reached = check_recovery_end(repo, server, backup, target, target_dir, pg_ctl)
    return RestoreResult(server, backup.set_id, target_dir, target, start, port,
                         time.monotonic() - began, *reached)


def check_recovery_end(repo: Repository, server: str, backup: BackupRecord, target: Target,
                       data_dir: Path, pg_ctl: str) -> tuple[str, str | None]:
    """Where recovery stopped and where it should have reached (as LSN text), compared.

    PostgreSQL ends recovery at the first WAL file restore_command does not deliver and
    promotes, so a fetch that failed quietly (a wrapper, an older markship, a bug) would look
    like the end of the archive. The archive holds the truth: recovery to the latest point
    must have reached its newest segment on the timeline recovery ended on, and recovery to a
    mark that mark's restore point. Raises RestoreError, after stopping the server so nothing
    writes to a database missing committed data, when recovery stopped short.
    """
    end = recovery_end(data_dir)
    if end is None:
        raise RestoreError(f"restored server {server} promoted without a timeline history file",
                           f"inspect {data_dir}; do not use it before the cause is known")
    size = backup.wal_segment_size
    # PostgreSQL itself refuses to promote short of a time or a bare name: nothing to compare.
    expected: int | None = None
    short = False
    if target.kind == "latest":
        newest = max(restorable.WalIndex(repo, server, size).segments.get(end.timeline, ()),
                     default=None)
        if newest is not None:
            expected = (newest + 1) * size  # the end of the newest archived segment
            stopped = segment_holding_end(end.timeline, end.lsn, size).number
            short = stopped < newest
    elif target.mark is not None:
        expected = target.mark.points[server].lsn
        short = end.lsn < expected
    if short and expected is not None:
        stop_server(pg_ctl, data_dir)
        raise RestoreError(
            f"recovery of {server} stopped at {format_lsn(end.lsn)} on timeline "
            f"{end.timeline}, but the repository holds WAL up to {format_lsn(expected)}: "
            "the restored server lacks committed transactions, so it was stopped",
            f"find the failed WAL fetch in {data_dir / 'markship-restore.log'}, fix it and "
            "restore again into an empty directory")
    return format_lsn(end.lsn), None if expected is None else format_lsn(expected)


def _place_captured_config(repo: Repository, backup: BackupRecord, target_dir: Path) -> None:
    """Config files kept outside the data directory (Debian's /etc) come from the backup."""
    for file_name, ref in backup.config_files.items():
        (target_dir / file_name).write_bytes(repo.read_bytes(ref.key))
    if backup.config_files:
        write_settings(target_dir, {"hba_file": str(target_dir / "pg_hba.conf"),
                                    "ident_file": str(target_dir / "pg_ident.conf")},
                       "markship restore: configuration captured with the backup")


_PATH_SETTING = re.compile(
    r"^(\s*)(data_directory|hba_file|ident_file|external_pid_file)\b", re.MULTILINE)
_INCLUDE = re.compile(
    r"^(\s*)(include_dir|include_if_exists|include)\b\s*=?\s*'([^']*)'", re.MULTILINE)


def neutralize_paths(conf: Path) -> None:
    """A restored postgresql.conf must not point outside the restored data directory.

    Debian keeps postgresql.conf in /etc with `data_directory` naming production's data
    directory: started with that file, the restored server would open production's data
    instead of its copy. Such settings (and pid/hba/ident file paths) are commented out, and so
    are includes of files that did not come with the backup (Debian's `include_dir 'conf.d'`),
    which would stop the server from starting."""
    try:
        text = conf.read_text()
    except FileNotFoundError:
        return
    note = "# disabled by markship restore (points outside the restored data directory): "
    text = _PATH_SETTING.sub(lambda m: f"{m.group(1)}{note}{m.group(2)}", text)

    def include(match: re.Match[str]) -> str:
        target = Path(match.group(3))
        if not target.is_absolute():
            target = conf.parent / target
        if target.exists() and conf.parent in (target, *target.parents):
            return match.group(0)
        return f"{match.group(1)}# disabled by markship restore (not in the backup): " \
               f"{match.group(0).lstrip()}"

    conf.write_text(_INCLUDE.sub(include, text))


def start_and_wait(pg_ctl: str, data_dir: Path, wait_seconds: float,
                   until: str = "promoted") -> None:
    """Start the restored server and wait until it is promoted (recovery ended and it accepts
    writes) or, with until="standby", until it is a consistent hot standby."""
    log = data_dir / "markship-restore.log"
    proc = subprocess.run([pg_ctl, "-D", str(data_dir), "-l", str(log), "-w", "-t",
                           str(int(wait_seconds)), "start"],
                          capture_output=True, text=True, check=False)
    if not wait_until(data_dir, until, wait_seconds) or proc.returncode != 0:
        fail_start(data_dir, log, proc.stderr, wait_seconds)


def stop_server(pg_ctl: str, data_dir: Path) -> None:
    """Stop a restored server (fast shutdown), whatever state it is in; a server that is not
    running is not an error."""
    subprocess.run([pg_ctl, "-D", str(data_dir), "-m", "fast", "-w", "stop"],
                   capture_output=True, check=False)


DB_IN_PRODUCTION = 6  # DBState in pg_control.h, unchanged since PostgreSQL 9.0


def in_production(data_dir: Path) -> bool:
    """pg_control says the cluster is in production: recovery and promotion are finished."""
    import struct

    try:
        with (data_dir / "global" / "pg_control").open("rb") as handle:
            head = handle.read(20)
    except OSError:
        return False
    # system_identifier (8 bytes), pg_control_version (4), catalog_version_no (4), state (4)
    return len(head) == 20 and struct.unpack_from("=i", head, 16)[0] == DB_IN_PRODUCTION


def wait_until(data_dir: Path, until: str, wait_seconds: float) -> bool:
    """Poll until the server is a consistent standby, or promoted: running, no signal file
    left and pg_control in production (the postmaster's 'ready' alone comes a little early).
    False if it stopped or timed out."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        status = postmaster_status(data_dir)
        if status is None:
            return False
        if until == "standby" and status in ("standby", "ready"):
            return True
        signals = (data_dir / "recovery.signal").exists() or (data_dir / "standby.signal").exists()
        if until == "promoted" and status == "ready" and not signals and in_production(data_dir):
            return True
        time.sleep(0.05)
    return False


def fail_start(data_dir: Path, log: Path, stderr: str, wait_seconds: float) -> None:
    reason = _recovery_failure(log)
    # still running after the wait: recovery is slow, not broken
    if reason is None and postmaster_status(data_dir) is not None:
        raise RestoreError(f"recovery did not finish within {wait_seconds:.0f} s",
                           f"the server is still replaying; watch {log}")
    raise RestoreError(f"restored server did not start: {reason or stderr.strip()[-300:]}",
                       f"see {log}")


def postmaster_status(data_dir: Path) -> str | None:
    """The status line of postmaster.pid ('starting', 'standby', 'ready', 'stopping'), or
    None when the postmaster is not running."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines[7].strip() if len(lines) > 7 else "starting"


def _recovery_failure(log: Path) -> str | None:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    fetch_error = next((line.split("error:", 1)[1].strip() for line in reversed(lines)
                        if "markship wal-fetch: error:" in line), None)
    for line in reversed(lines):
        if "could not restore file" in line and fetch_error:
            return f"recovery stopped at a WAL file it could not fetch: {fetch_error}"
        if "recovery ended before configured recovery target was reached" in line:
            return ("the recovery target was not reached: it lies beyond the archived WAL or "
                    "before this backup (try --set with an older backup set)")
        if "FATAL" in line or "PANIC" in line:
            return line.split("FATAL:", 1)[-1].split("PANIC:", 1)[-1].strip()
    return None


def stopped_at(data_dir: Path) -> str | None:
    """The reason line of the newest timeline history file: where recovery stopped."""
    end = recovery_end(data_dir)
    return None if end is None else end.reason
