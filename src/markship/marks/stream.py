"""WAL streaming into the repository: how a mark reaches the repository in milliseconds
without a 16 MB WAL switch per mark.

The agent runs one `pg_receivewal --synchronous` per server into `stream/<server>/` of a
directory repository; with object storage, into a local spool from which the agent uploads
what each mark needs before the mark is published (markship.marks.upload). The receiver
writes the current segment as `SEG.partial` (padded to 16 MB) and renames it `SEG` when it
is full; it flushes what it received before acknowledging it, so
the server's `pg_stat_replication.flush_lsn` for the receiver says what is durably there.

- A mark waits (briefly) until each server's receiver has flushed past the mark's restore
  point, and records `delivery = "stream"` for that server. A server without a receiver gets
  the old treatment: `pg_switch_wal()`, delivery `"switch"`.
- A mark point delivered by stream counts as in the repository while the segment holding it
  is archived *or* present in the stream folder (whole or partial): for a directory
  repository the receiver's own files, for object storage the uploaded copies.
- `wal-fetch` serves a segment that is not archived yet from the stream folder (a partial one
  under the segment's name: recovery stops at the mark before the zero padding). Standbys
  only ever get whole segments.
- The agent lays out the receiver's *next* segment file ahead of time (zeros, flushed, then
  renamed to `SEG.partial`): pg_receivewal opens a full-size file as it is, so its switch to a
  new segment no longer stalls the stream for a 16 MB write and fsync (marks waited on that).
  An unused one (its first page still zero) is removed before a receiver starts.
- The archive stays the record of truth: archive_command still archives every segment, and
  the agent deletes streamed files once their segment is archived. No replication slot is
  used, so a receiver that is down never makes a production server keep WAL; after a long
  outage the receiver starts again from the server's current segment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from markship.config.model import Config
from markship.marks import upload
from markship.marks.delivery import in_place as in_place
from markship.pg import conninfo as conninfo_mod
from markship.pg import programs
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, parse_segment_name
from markship.pg.replication import RECEIVER_NAME
from markship.repository import layout
from markship.repository.base import Repository
from markship.repository.fs import FsRepository

PARTIAL = layout.STREAM_PARTIAL
stream_prefix = layout.stream_prefix
PID_FILE = "receiver.pid"
PAD_PREFIX = ".pad-"  # a next segment being laid out (pg_receivewal ignores other names)
# pg_receivewal's complaints that mean the folder cannot be resumed from.
RESTART_FRESH = ("has already been removed", "timeline", "ahead of the WAL flush position")
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


def prune(repo: Repository, server: str) -> int:
    """Delete streamed files (and uploaded pieces) whose segment is archived, keeping the
    newest two segments (the one the receiver may be writing, and the next one laid out for
    it). Returns how many were deleted."""
    from markship.wal.stored import find_archived

    names = {name: parsed[0] for name in repo.children(stream_prefix(server))
             if (parsed := layout.split_stream_name(name)) is not None}
    # The newest two segments stay: the one being written may be the next, laid out ahead.
    older = sorted(set(names.values()))[:-2]
    archived = {segment for segment in older if find_archived(repo, server, segment)}
    deleted = 0
    for name, segment in sorted(names.items()):
        if segment in archived:
            repo.delete(stream_prefix(server) + name)
            deleted += 1
    return deleted


class ReceiverLog(Protocol):
    """The event-log call the receivers use (`EventLog` is one)."""

    def __call__(self, event: str, level: str = "info", **fields: object) -> None: ...


class Receiver:
    """One supervised pg_receivewal for one server, writing into `folder` (the agent calls
    `poll()` often)."""

    def __init__(self, folder: Path, server: str, conninfo: str, pg_receivewal: str,
                 log: ReceiverLog) -> None:
        self.server = server
        # Marks recognise the receiver by this name in pg_stat_replication; psycopg's
        # parser sets it on a URI as well as on key=value pairs.
        self.conninfo = conninfo_mod.with_params(conninfo, application_name=RECEIVER_NAME)
        self.pg_receivewal = pg_receivewal
        self.log = log
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.login: conninfo_mod.ProgramConninfo | None = None  # while proc runs
        self.errors: deque[str] = deque(maxlen=5)
        self.failures = 0
        self.next_start = 0.0
        self.started_at = 0.0
        self.padding: threading.Thread | None = None

    def poll(self) -> None:
        """Start the receiver when it is not running (with a growing delay after failures)."""
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                if time.monotonic() - self.started_at > 60:
                    self.failures = 0
                self._lay_out_next()
                return
            self._exited(code)
        if time.monotonic() >= self.next_start:
            self._start()

    def _lay_out_next(self) -> None:
        """Start laying out the segment after the one being written, unless that is done or
        under way (a thread: writing and flushing 16 MB takes tens of milliseconds)."""
        if self.padding is not None and self.padding.is_alive():
            return
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        partials = sorted(n for n in names if n.endswith(PARTIAL)
                          and len(n.removesuffix(PARTIAL)) == 24)
        if not partials:
            return
        current = partials[-1]
        try:
            following = parse_segment_name(current.removesuffix(PARTIAL)).next().name()
            if following in names or following + PARTIAL in names:
                return  # laid out already (the usual case: nothing more to read)
            size = os.stat(self.folder / current).st_size
        except (ValueError, OSError):
            return
        if size != DEFAULT_SEGMENT_SIZE or _first_page_zero(self.folder / current):
            return  # being padded by pg_receivewal, or itself a laid-out file not yet used
        self.padding = threading.Thread(target=self._pad, args=(following, size),
                                        name=f"pad-{self.server}", daemon=True)
        self.padding.start()

    def _pad(self, name: str, size: int) -> None:
        temp = self.folder / f"{PAD_PREFIX}{name}"
        try:
            with open(temp, "wb") as handle:
                zeros = bytes(1 << 20)
                for _ in range(size >> 20):
                    handle.write(zeros)
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # never over the receiver's own file
                os.link(temp, self.folder / (name + PARTIAL))
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.log("stream.pad_failed", level="warning", server=self.server,
                     reason=exc.strerror or str(exc))
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()

    def _drop_unused(self) -> None:
        """Before a receiver starts: remove laid-out segments it never wrote to (it would
        resume from the newest `.partial` and skip the rest of the one before)."""
        if self.padding is not None:
            self.padding.join()
        for child in self.folder.iterdir():
            if child.name.startswith(PAD_PREFIX) or (
                    child.name.endswith(PARTIAL) and _first_page_zero(child)):
                child.unlink(missing_ok=True)

    def _start(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._stop_orphan()
        self._drop_unused()
        self.errors.clear()
        # The password goes to the receiver's environment, never its command line: it runs
        # as long as the agent, in every local user's `ps`.
        self.login = conninfo_mod.ProgramConninfo(self.conninfo)
        try:
            self.proc = subprocess.Popen(
                [self.pg_receivewal, "--dbname", self.login.argv, "--directory",
                 str(self.folder), "--synchronous", "--no-loop", "--no-password",
                 "--status-interval", "1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=self.login.env)
        except BaseException:
            self._forget_login()
            raise
        (self.folder / PID_FILE).write_text(f"{self.proc.pid}\n")
        self.started_at = time.monotonic()
        threading.Thread(target=self._read_errors, args=(self.proc,), daemon=True,
                         name=f"receiver-{self.server}").start()
        self.log("stream.start", server=self.server, pid=self.proc.pid)

    def _stop_orphan(self) -> None:
        """A receiver left running by an agent that was killed (this agent holds the agent
        lock, so no live agent owns it) must not write into the folder beside a new one."""
        try:
            pid = int((self.folder / PID_FILE).read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if os.fsencode(str(self.folder)) in cmdline and \
                os.path.basename(cmdline[0]) == b"pg_receivewal":
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.05)

    def _read_errors(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self.errors.append(line)

    def _forget_login(self) -> None:
        if self.login is not None:
            self.login.close()
            self.login = None

    def running_seconds(self) -> float | None:
        """How long the receiver has been running; None when it is not."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return time.monotonic() - self.started_at

    def _exited(self, code: int) -> None:
        self.proc = None
        self._forget_login()
        detail = self.errors[-1] if self.errors else f"exit status {code}"
        if any(sign in e for e in self.errors for sign in RESTART_FRESH):
            # The folder resumes from WAL the server no longer has (a long outage), or from
            # another timeline (after a failover or failback): start over from the server's
            # current segment. The archive holds everything older.
            for child in self.folder.iterdir():
                if child.name != PID_FILE:
                    child.unlink(missing_ok=True)
            detail += "; restarting from the server's current segment"
        delay = RESTART_DELAYS[min(self.failures, len(RESTART_DELAYS) - 1)]
        self.failures += 1
        self.next_start = time.monotonic() + delay
        self.log("stream.exited", level="warning", server=self.server, reason=detail,
                 retry_in_s=delay)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # pg_receivewal flushes and exits cleanly
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._forget_login()


def _first_page_zero(path: Path) -> bool:
    """True when a WAL file's first page holds nothing: pg_receivewal writes every segment
    from its start, so such a file has received no WAL."""
    try:
        with open(path, "rb") as handle:
            return not any(handle.read(8192))
    except OSError:
        return False


def receiver_folder(config: Config, repo: Repository, server: str) -> Path:
    """Where the receiver of `server` writes."""
    if isinstance(repo, FsRepository):
        return Path(repo.root) / stream_prefix(server)
    return upload.spool_folder(config, server)


def receivers(config: Config, repo: Repository, versions: dict[str, int],
              log: ReceiverLog) -> list[Receiver]:
    """One receiver per server (`versions`: server → PostgreSQL version number, to pick the
    matching pg_receivewal)."""
    found = []
    for server in config.servers:
        tools = programs.bin_dir(server.bin_dir, versions[server.name])
        found.append(Receiver(receiver_folder(config, repo, server.name), server.name,
                              server.conninfo, programs.tool(tools, "pg_receivewal"), log))
    return found
