"""Stream delivery into object storage: the receivers' local spool, and the uploads from it
that make a mark complete.

pg_receivewal writes into a directory; an S3 repository is none. With one, the agent's
receivers (markship.marks.stream) write into a spool on the agent's host instead:
`[marks] stream_spool` (default /var/lib/markship/stream), folder `<group>-<id>/<server>/`,
where `<id>` is 8 hex digits of the repository's location (two groups or repositories never
share a folder). `markship run` started as root makes the group's folder, owned by the
repository's OS user and private to it (0700).

A mark delivered by stream is published only once its WAL is in the repository. After the
receiver has flushed past the mark's restore point, `StreamUploads.ship` puts into
`stream/<server>/` (the keys of a directory repository's stream folder, so completeness in
markship.repository.restorable, wal-fetch and markship.marks.stream.prune read both alike):

- what the mark's segment received since the last upload, up to the end of the WAL page
  holding the restore point, as a piece `SEG.partial.<from>-<to>` (byte offsets in the
  segment, 8 hex digits). A piece starts with the last page of the one before (that page
  may have been written to since), so each mark uploads the WAL of its own interval, not
  the segment from its start; wal-fetch lays the pieces down in the order of their ends,
  the order they were uploaded in, a later one over the page it repeats;
- the whole segment as `SEG` once the receiver has finished it, and likewise every earlier
  segment the receiver finished that is neither archived nor uploaded yet.

Between marks the agent uploads ahead (`ship_ahead`, on a thread of its own): once a
receiver's current segment holds AHEAD_BYTES more than is uploaded, that goes up as a piece
too, so a mark uploads only the WAL since then, whatever the mark interval.

Each object is one zstd frame of the WAL bytes; a partial segment leaves out the zero
padding, which wal-fetch puts back up to the segment size the WAL page header names. With
`[encryption]` the objects are encrypted like every other (the spool itself, on the agent's
host, holds the WAL as PostgreSQL's own pg_wal does). A server whose upload fails gets a WAL
switch instead, like a server without a receiver.

The spool holds nothing the repository needs: the agent deletes files whose segment is
archived, and each server's folder when it stops (a receiver started later begins at the
server's current segment).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from markship.config.model import Config
from markship.errors import MarkshipError
from markship.pg.lsn import WAL_HEADER_BYTES, parse_segment_name, wal_header_problem
from markship.repository import layout
from markship.repository.base import Repository

DEFAULT_SPOOL = Path("/var/lib/markship/stream")
PAGE = 8192  # XLOG_BLCKSZ of every PostgreSQL build markship supports
AHEAD_BYTES = 4 << 20  # received WAL not yet uploaded that ship_ahead() uploads
PARTIAL = layout.STREAM_PARTIAL


class UploadLog(Protocol):
    """The event-log call the uploads use (`EventLog` is one)."""

    def __call__(self, event: str, level: str = "info", **fields: object) -> None: ...


def spool_root(config: Config) -> Path:
    """The group's folder in the spool."""
    base = config.marks.stream_spool or DEFAULT_SPOOL
    tag = hashlib.sha256(config.repository.location.encode()).hexdigest()[:8]
    return base / f"{config.group.name}-{tag}"


def spool_folder(config: Config, server: str) -> Path:
    """Where the receiver of `server` writes when the repository is object storage."""
    return spool_root(config) / server


def prepare_spool(config: Config) -> None:
    """As root, for a repository in object storage: make the group's spool folder, owned by
    the repository's OS user, mode 0700 (`markship run` calls this before it becomes that
    user). A failure is left for the receivers to report when they cannot write there."""
    if os.geteuid() != 0 or not config.repository.on_object_storage:
        return
    import pwd

    try:
        entry = pwd.getpwnam(config.repository.os_user)
        root = spool_root(config)
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)
    except (KeyError, OSError):
        return


class NotReceived(MarkshipError):
    """The spool does not hold the WAL a mark needs (yet, or any more)."""


@dataclass
class _Server:
    """What this process uploaded of one server's spool."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    whole: set[str] = field(default_factory=set)  # segments stored whole, or archived
    # segment → (inode of the spool file, bytes from its start uploaded in pieces, of which
    # known complete: the last page uploaded may have been written to since)
    partial: dict[str, tuple[int, int, int]] = field(default_factory=dict)


class StreamUploads:
    """The agent's uploads of streamed WAL from the spool into the repository."""

    def __init__(self, config: Config, repo: Repository, log: UploadLog | None = None) -> None:
        self.config, self.repo, self.log = config, repo, log
        self.level = config.repository.compression_level
        self._servers: dict[str, _Server] = {}
        self._failing: set[str] = set()  # servers whose last upload failed (logged once)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: ThreadPoolExecutor | None = None
        self._ahead_running: Future[None] | None = None

    def folder(self, server: str) -> Path:
        return spool_folder(self.config, server)

    def _state(self, server: str) -> _Server:
        return self._servers.setdefault(server, _Server())

    def ship(self, points: dict[str, tuple[int, str]]) -> set[str]:
        """Put each server's WAL up to its point (restore point LSN, WAL file) into the
        repository, all servers at once; returns the servers done. A failure is logged (once
        until that server's uploads work again), and that server left out."""
        if not points:
            return set()
        items = list(points.items())
        if len(items) > 1 and self._pool is None:
            # Made by the first caller, the marking thread: its threads inherit that
            # thread's nice value (markship.marks.priority).
            self._pool = ThreadPoolExecutor(max_workers=len(self.config.servers),
                                            thread_name_prefix="markship-upload")
        futures = {server: self._pool.submit(self._try, server, *point)
                   for server, point in items[1:]} if self._pool is not None else {}
        done = {items[0][0]} if self._try(items[0][0], *items[0][1]) else set()
        done.update(server for server, future in futures.items() if future.result())
        return done

    def _try(self, server: str, lsn: int, wal_file: str) -> bool:
        try:
            self.ship_one(server, lsn, wal_file)
        except (OSError, ValueError, MarkshipError) as exc:
            if server not in self._failing and self.log is not None:
                self.log("stream.upload_failed", level="warning", server=server,
                         reason=exc.message if isinstance(exc, MarkshipError) else str(exc),
                         detail="marks switch WAL on this server until uploads work again")
            self._failing.add(server)
            return False
        self._failing.discard(server)
        return True

    def ship_one(self, server: str, lsn: int, wal_file: str) -> None:
        """One server's part of ship(). Raises NotReceived when the spool lacks the WAL,
        OSError when it cannot be read, MarkshipError when the repository fails."""
        state = self._state(server)
        folder = self.folder(server)
        with state.lock:
            names = set(os.listdir(folder))
            self._ship_finished(server, state, folder, names, wal_file)
            if wal_file in names:
                self._ship_whole(server, state, folder, wal_file)
                return
            try:
                self._ship_partial(server, state, folder, lsn, wal_file)
            except FileNotFoundError:  # finished meanwhile: renamed to its own name
                if not (folder / wal_file).exists():
                    raise NotReceived(f"the spool {folder} holds no {wal_file} of server "
                                      f"{server}") from None
                self._ship_whole(server, state, folder, wal_file)

    def _ship_finished(self, server: str, state: _Server, folder: Path, names: set[str],
                       before: str) -> None:
        """Earlier segments the receiver finished, neither archived nor uploaded."""
        waiting = sorted(n for n in names if len(n) == 24 and n < before and n not in state.whole)
        if not waiting:
            return
        archived: dict[str, list[str]] = {}
        for name in waiting:
            where = layout.wal_dir(server, name)
            if where not in archived:
                archived[where] = self.repo.children(where)
            if any(child.startswith(name + "-") for child in archived[where]):
                state.whole.add(name)
            else:
                self._ship_whole(server, state, folder, name)

    def _ship_whole(self, server: str, state: _Server, folder: Path, name: str) -> None:
        if name in state.whole:
            return
        data = (folder / name).read_bytes()
        problem = wal_header_problem(data[:WAL_HEADER_BYTES], name)
        if problem is not None:
            raise NotReceived(f"spool file {folder / name} is not WAL file {name} ({problem})")
        self._put(layout.stream_prefix(server) + name, data)
        state.whole.add(name)  # wal-fetch prefers it to pieces, which prune takes later

    def _ship_partial(self, server: str, state: _Server, folder: Path, lsn: int,
                      wal_file: str) -> None:
        path = folder / (wal_file + PARTIAL)
        with open(path, "rb") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            head = handle.read(WAL_HEADER_BYTES)
            problem = wal_header_problem(head, wal_file)
            if problem is not None:
                raise NotReceived(f"spool file {path} does not hold WAL file {wal_file} yet "
                                  f"({problem})")
            segment_size = int.from_bytes(head[32:36], "little")
            start = parse_segment_name(wal_file, segment_size).start_lsn(segment_size)
            if not start < lsn <= start + segment_size:
                raise NotReceived(f"WAL position {lsn:X} is not in {wal_file}")
            needed = min(segment_size, -(-(lsn - start) // PAGE) * PAGE)
            uploaded = state.partial.get(wal_file)
            done, known = uploaded[1:] if uploaded is not None and uploaded[0] == inode \
                else (0, 0)
            if known >= lsn - start:
                return  # an earlier upload holds it
            begin = max(0, done - PAGE)  # its last page again: written to since, maybe
            handle.seek(begin)
            data = handle.read(needed - begin)
        last = len(data) - PAGE
        if len(data) < needed - begin or int.from_bytes(data[last + 8:last + 16], "little") \
                != start + begin + last:
            raise NotReceived(f"spool file {path} does not hold WAL up to {lsn:X} (the "
                              "receiver reported it flushed)")
        self._put(layout.stream_prefix(server)
                  + layout.stream_piece_name(wal_file, begin, needed), data)
        state.partial[wal_file] = (inode, max(done, needed), lsn - start)

    def _put(self, key: str, data: bytes) -> None:
        from markship.wal import _zstd

        packed = _zstd.load().ZstdCompressor(level=self.level).compress(data)
        self.repo.write_bytes(key, packed, overwrite=True)

    def prune(self, server: str) -> int:
        """Delete spool files whose segment is archived, keeping the newest two (the one the
        receiver writes, and the next one laid out for it). Returns how many were deleted."""
        from markship.wal.stored import find_archived

        state = self._state(server)
        folder = self.folder(server)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return 0
        segments = sorted(n for n in names if len(n.removesuffix(PARTIAL)) == 24)
        deleted = 0
        with state.lock:
            for name in segments[:-2]:
                base = name.removesuffix(PARTIAL)
                if find_archived(self.repo, server, base):
                    (folder / name).unlink(missing_ok=True)
                    state.whole.discard(base)
                    state.partial.pop(base, None)
                    deleted += 1
        return deleted

    def ship_ahead(self, servers: list[str]) -> None:
        """Upload, in the background, what each server's receiver has received beyond the
        last upload once that is AHEAD_BYTES or more (unless the last round still runs)."""
        if self._ahead_running is not None and not self._ahead_running.done():
            return
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(max_workers=1,
                                             thread_name_prefix="markship-upload-ahead")
        self._ahead_running = self._ahead.submit(self._ahead_round, list(servers))

    def _ahead_round(self, servers: list[str]) -> None:
        for server in servers:
            try:
                self._ship_received(server)
            except FileNotFoundError:
                continue  # finished (renamed) or cleared meanwhile: the next round sees it
            except (OSError, ValueError, MarkshipError) as exc:
                if server not in self._failing and self.log is not None:
                    self.log("stream.upload_failed", level="warning", server=server,
                             reason=exc.message if isinstance(exc, MarkshipError)
                             else str(exc), detail="uploading ahead of the next mark")
                self._failing.add(server)

    def _ship_received(self, server: str) -> None:
        state = self._state(server)
        folder = self.folder(server)
        with state.lock:
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return
            for name in sorted((n for n in names if n.endswith(PARTIAL)
                                and len(n) == 24 + len(PARTIAL)), reverse=True):
                received = _received_bytes(folder / name, name[:24])
                if received:  # else laid out ahead, nothing in it yet
                    break
            else:
                return
            wal_file = name[:24]
            uploaded = state.partial.get(wal_file)
            inode = os.stat(folder / name).st_ino
            done = uploaded[1] if uploaded is not None and uploaded[0] == inode else 0
            if received - done < AHEAD_BYTES:
                return
            with open(folder / name, "rb") as handle:
                if os.fstat(handle.fileno()).st_ino != inode:
                    return  # replaced meanwhile (a receiver starting afresh)
                begin = max(0, done - PAGE)
                handle.seek(begin)
                data = handle.read(received - begin)
            if len(data) != received - begin:
                return
            self._put(layout.stream_prefix(server)
                      + layout.stream_piece_name(wal_file, begin, received), data)
            state.partial[wal_file] = (inode, received, received - PAGE)

    def clear(self) -> None:
        """Remove every server's spool folder (the agent stops; its receivers have)."""
        for pool in (self._pool, self._ahead):
            if pool is not None:
                pool.shutdown()
        for server in self.config.servers:
            shutil.rmtree(self.folder(server.name), ignore_errors=True)


def _received_bytes(path: Path, wal_file: str) -> int:
    """How much of spool file `path` (segment `wal_file`) holds WAL, to the end of the last
    page begun (0 when none; that page may still be being written). WAL fills a segment from
    its start, page by page, each beginning with a header holding its own address; what is
    past the WAL received is zeros."""
    with open(path, "rb") as handle:
        head = handle.read(WAL_HEADER_BYTES)
        if wal_header_problem(head, wal_file) is not None:
            return 0
        segment_size = int.from_bytes(head[32:36], "little")
        start = parse_segment_name(wal_file, segment_size).start_lsn(segment_size)

        def begun(page: int) -> bool:
            handle.seek(page * PAGE + 8)
            return int.from_bytes(handle.read(8), "little") == start + page * PAGE

        low, high = 0, segment_size // PAGE - 1  # page `low` is begun; find the last one
        while low < high:
            middle = (low + high + 1) // 2
            if begun(middle):
                low = middle
            else:
                high = middle - 1
        return (low + 1) * PAGE
