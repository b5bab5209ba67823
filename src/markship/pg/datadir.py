"""A PostgreSQL data directory: its postmaster (pg_ctl), its settings files, its recovery end.

The one owner of `pg_ctl`: starting, stopping and restarting a server, and finding the pg_ctl
that matches its version. Also what the directory itself says without asking the server:
postmaster.pid (running, and in which state), pg_control (in production) and the timeline history
file a promotion wrote (where recovery stopped). Promotion itself is never asked of pg_ctl: a
server promotes on its own at its recovery target (`recovery_target_action = promote`).
Settings: appended to postgresql.auto.conf, durably; a restored postgresql.conf is kept from
pointing outside its directory.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from markship.errors import MarkshipError, RestoreError
from markship.pg import programs
from markship.pg.lsn import parse_history

LOG_NAME = "markship-restore.log"  # the server log of every server markship starts itself
# What to tell a user who must start or stop a server markship left alone.
START_BY_HAND = "pg_ctl start"
STOP_BY_HAND = "pg_ctl stop -m immediate"


def pg_ctl_for(data_dir: Path, bin_dir: Path | None, version_num: int | None = None) -> str:
    """The pg_ctl for the server of `data_dir`: of `version_num`, or when None of the major
    version that made the directory (its PG_VERSION file); `bin_dir` as configured, or None.

    Raises OSError or ValueError when PG_VERSION cannot be read, ServerError when that pg_ctl is
    not installed."""
    if version_num is None:
        version_num = int((data_dir / "PG_VERSION").read_text().strip()) * 10000
    return programs.tool(programs.bin_dir(bin_dir, version_num), "pg_ctl")


def server_log(data_dir: Path) -> Path:
    """Where a server markship starts writes its log (inside its data directory)."""
    return data_dir / LOG_NAME


@dataclass(frozen=True)
class DataDir:
    """A data directory on this host with the pg_ctl of its version: its server's controls."""

    path: Path
    pg_ctl: str

    @classmethod
    def at(cls, path: Path, bin_dir: Path | None, version_num: int | None = None) -> DataDir:
        """The directory with its pg_ctl found now (see `pg_ctl_for`, which says what it
        raises)."""
        return cls(path, pg_ctl_for(path, bin_dir, version_num))

    def start_and_wait(self, wait_seconds: float, until: str = "promoted") -> None:
        """Start a recovering server and wait until it is promoted (recovery ended and it
        accepts writes), with until="standby" until it is a consistent hot standby, with
        "paused" until it pauses at its recovery target, with "shutdown" until it has shut
        down there.

        Raises RestoreError when it did not get there within `wait_seconds`, with the reason
        its log gives."""
        log = server_log(self.path)
        if until in ("paused", "shutdown"):
            offset = log.stat().st_size if log.exists() else 0
            # pg_ctl's own wait ends once the server is a consistent standby, before it reaches
            # the target (and it fails when the server already shut down there on purpose): the
            # log says when the target was reached.
            proc = start(self.pg_ctl, self.path, log, wait_seconds)
            started = proc.returncode == 0 or until == "shutdown"
            if not started or not wait_for_target(self.path, offset, until, wait_seconds):
                if until == "paused" and in_production(self.path):
                    raise RestoreError(
                        "the restored server promoted at its target instead of pausing "
                        "(PostgreSQL does so when it could not open for reading there)",
                        f"it is open for writes now; see {log}")
                fail_start(self.path, log, proc.stderr, wait_seconds)
            return
        proc = start(self.pg_ctl, self.path, log, wait_seconds)
        if not wait_until(self.path, until, wait_seconds) or proc.returncode != 0:
            fail_start(self.path, log, proc.stderr, wait_seconds)

    def stop(self) -> None:
        """Stop the server (fast shutdown), whatever state it is in; a server that is not
        running is not an error."""
        stop(self.pg_ctl, self.path, "fast")

    def restart(self) -> str | None:
        """Restart the running server (fast shutdown) so it reads changed settings; None when
        it came back, else the end of pg_ctl's error output."""
        # -l: without a log file the new postmaster would keep our stdout pipe open forever
        proc = subprocess.run([self.pg_ctl, "-D", str(self.path), "-l",
                               str(server_log(self.path)), "-m", "fast", "-w", "restart"],
                              capture_output=True, text=True, check=False)
        return None if proc.returncode == 0 else proc.stderr.strip()[-300:]


# -- pg_ctl ---------------------------------------------------------------------------------------


def start(pg_ctl: str, data_dir: Path, log: Path, wait_seconds: float, *, wait: bool = True,
          prefix: Sequence[str] = (), timeout: float | None = None
          ) -> subprocess.CompletedProcess[str]:
    """`pg_ctl start`, waiting up to `wait_seconds` for it (`wait`) or not; `prefix` goes in front
    of the command (runuser, to run it as another OS user). The caller reads the result."""
    argv = [*prefix, pg_ctl, "-D", str(data_dir), "-l", str(log), "-w" if wait else "-W", "-t",
            str(int(wait_seconds)), "start"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def stop(pg_ctl: str, data_dir: Path, mode: str, wait_seconds: float | None = None, *,
         prefix: Sequence[str] = (), timeout: float | None = None
         ) -> subprocess.CompletedProcess[str]:
    """`pg_ctl stop -m MODE`, waiting up to `wait_seconds` (pg_ctl's own default when None); a
    server that is not running is not an error. The caller reads the result."""
    limit = [] if wait_seconds is None else ["-t", str(int(wait_seconds))]
    argv = [*prefix, pg_ctl, "-D", str(data_dir), "-m", mode, "-w", *limit, "stop"]
    return subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=timeout, check=False)


def stop_immediately(data_dir: Path, bin_dir: Path | None) -> str | None:
    """Immediate shutdown with the pg_ctl matching the directory, waiting at most about a
    minute; the caller checks whether it stopped (postmaster_status) and kills what is left.

    Returns a problem only when that pg_ctl cannot be found."""
    try:
        pg_ctl = pg_ctl_for(data_dir, bin_dir)
    except (OSError, ValueError, MarkshipError) as exc:
        return f"cannot find pg_ctl ({exc})"
    with contextlib.suppress(subprocess.TimeoutExpired):
        stop(pg_ctl, data_dir, "immediate", 60, timeout=90)
    return None


# -- what the directory says ----------------------------------------------------------------------


def postmaster_status(data_dir: Path) -> str | None:
    """The status line of postmaster.pid ('starting', 'standby', 'ready', 'stopping'), or
    None when the postmaster is not running."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    return lines[7].strip() if len(lines) > 7 else "starting"


# DBState in pg_control.h, unchanged since PostgreSQL 9.0
DB_SHUTDOWNED_IN_RECOVERY = 2
DB_IN_ARCHIVE_RECOVERY = 5
DB_IN_PRODUCTION = 6


def control_state(data_dir: Path) -> int | None:
    """The cluster state pg_control holds (a DBState), or None when it cannot be read."""
    import struct

    try:
        with (data_dir / "global" / "pg_control").open("rb") as handle:
            head = handle.read(20)
    except OSError:
        return None
    # system_identifier (8 bytes), pg_control_version (4), catalog_version_no (4), state (4)
    return struct.unpack_from("=i", head, 16)[0] if len(head) == 20 else None


def in_production(data_dir: Path) -> bool:
    """pg_control says the cluster is in production: recovery and promotion are finished."""
    return control_state(data_dir) == DB_IN_PRODUCTION


def postmaster_alive(data_dir: Path) -> bool:
    """A live process has the pid postmaster.pid names (a killed server leaves the file)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but not ours to read
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])  # a zombie is dead


def stopped_in_archive_recovery(data_dir: Path) -> bool:
    """The server is down and pg_control says it never left archive recovery (it was stopped,
    or killed, while a standby or while recovering to a target)."""
    return not postmaster_alive(data_dir) and control_state(data_dir) in (
        DB_SHUTDOWNED_IN_RECOVERY, DB_IN_ARCHIVE_RECOVERY)


def ask_for_recovery(data_dir: Path) -> None:
    """Put recovery.signal back, owned like the directory, so the next start recovers again
    (to the target in the settings) instead of coming up as a primary."""
    signal = data_dir / "recovery.signal"
    with open(signal, "a") as handle:
        os.fsync(handle.fileno())
    if os.geteuid() == 0:
        owner = data_dir.stat()
        os.chown(signal, owner.st_uid, owner.st_gid)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


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


# PostgreSQL's log lines at a recovery target (in English, as the other lines read here).
PAUSED_LINE = "pausing at the end of recovery"
SHUTDOWN_LINE = "shutdown at recovery target"
STOPPING_LINE = "recovery stopping "


def wait_for_target(data_dir: Path, offset: int, until: str, wait_seconds: float) -> bool:
    """Poll the server log from byte `offset` until the server paused at its recovery target
    (until="paused", still running) or shut down there (until="shutdown"). False if it
    stopped otherwise or timed out."""
    log = server_log(data_dir)
    line = PAUSED_LINE if until == "paused" else SHUTDOWN_LINE
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        running = postmaster_status(data_dir) is not None
        reached = line in _log_since(log, offset)
        if until == "paused" and (reached or not running or in_production(data_dir)):
            return reached and running
        if until == "shutdown" and reached and not postmaster_alive(data_dir):
            return True
        if until == "shutdown" and not running and not reached:
            return False
        time.sleep(0.05)
    return False


def stop_reason(data_dir: Path, offset: int = 0) -> str | None:
    """PostgreSQL's 'recovery stopping …' line (where it stopped at its target) in the server
    log after byte `offset`, or None."""
    lines = [line for line in _log_since(server_log(data_dir), offset).splitlines()
             if STOPPING_LINE in line]
    return lines[-1].split(STOPPING_LINE, 1)[1].strip() if lines else None


def _log_since(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def fail_start(data_dir: Path, log: Path, stderr: str, wait_seconds: float) -> None:
    """Raise RestoreError saying why a started server did not get where it should."""
    reason = _recovery_failure(log)
    # still running after the wait: recovery is slow, not broken
    if reason is None and postmaster_status(data_dir) is not None:
        raise RestoreError(f"recovery did not finish within {wait_seconds:.0f} s",
                           f"the server is still replaying; watch {log}")
    raise RestoreError(f"restored server did not start: {reason or stderr.strip()[-300:]}",
                       f"see {log}")


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


def stopped_at(data_dir: Path) -> str | None:
    """The reason line of the newest timeline history file: where recovery stopped."""
    end = recovery_end(data_dir)
    return None if end is None else end.reason


# -- settings -------------------------------------------------------------------------------------


def write_settings(data_dir: Path, settings: dict[str, str], comment: str) -> None:
    """Append `settings` under `# comment` to postgresql.auto.conf, durably (fsync)."""
    lines = [f"\n# {comment}\n"]
    for key, value in settings.items():
        lines.append(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n")
    with (data_dir / "postgresql.auto.conf").open("a") as handle:
        handle.writelines(lines)
        handle.flush()
        # Durable before the server starts: after a crash a restored server must not come
        # back without its recovery target (it would recover to the end instead).
        os.fsync(handle.fileno())


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
