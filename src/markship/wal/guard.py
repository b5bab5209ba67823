"""pg_wal protection: with `[repository] archive_queue_max` set, when the repository cannot be
written and more WAL waits in pg_wal than that, wal-push answers "archived" for the oldest
segments without storing them, so PostgreSQL recycles them instead of filling its disk; and
it records what it gave up. Once a gap is open, the WAL after it cannot be restored before
the next full backup anyway: every segment that waits then goes into the gap, until a segment
is stored again.

The record of a gap (server, timeline, first and last dropped segment, when that WAL was
written) cannot go to the repository while it is down. It is written to the spool first
(`spool.gap_dir`, private to the OS user), flushed to disk before any segment is given up;
`flush` writes it into the catalog (`repository.catalog.GapRecord`, under gaps/) and the
journal as soon as the repository takes it: after the next successful wal-push, or from the
agent. A record stays in the spool while its gap may still grow (until a later segment of its
server is stored), and is written again whenever it grew, so one outage is one gap record.

Only a failed push looks at the backlog; a push that succeeds pays one stat() (is a record
waiting?). While a record waits, wal-push tries an S3 repository once, without retries: a
failure then gives its segment up at once rather than after up to 30 s of retries, during
which pg_wal would keep filling. Module-level imports: the standard library only.
"""

from __future__ import annotations

import os

from markship import userspool

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from typing import Any

    from markship.pg.lsn import Segment
    from markship.repository.base import Repository

SUFFIX = ".json"
FLUSHED = ".flushed"  # beside a record: the sha256 of its content as the repository has it
_LOCK = ".lock"


def give_up_oldest(config_path: str, server: str, path: str, queue_max: int,
                   reason: str) -> list[str]:
    """Called when the push of WAL file `path` failed because the repository cannot be
    written. When more than `queue_max` bytes of WAL wait to be archived, the oldest
    segments (`path` first, as many as bring the backlog back to `queue_max`) are recorded as
    a gap and their names returned: wal-push then exits 0 for `path`, and PostgreSQL's calls
    for the others are answered at once from their spool markers. When `path` continues a
    gap still open (no later segment stored since), every segment waiting goes into it.

    [] when the backlog is within the limit and no gap is open, `path` is not the oldest
    segment waiting (or no segment at all), or the record cannot be kept safely: the failure
    then stands, as it does without `archive_queue_max`.
    """
    from markship.pg.lsn import parse_segment_name, wal_file_kind
    from markship.wal import spool

    name = os.path.basename(path)
    if wal_file_kind(name) != "segment" or queue_max <= 0:
        return []
    size = os.stat(path).st_size
    waiting = [n for n in spool.ready_files(path) if len(n) == 24]  # segments, not history
    backlog = len(waiting) * size
    if not waiting or waiting[0] != name:
        return []
    try:
        expected = parse_segment_name(name, size)
    except ValueError:  # not a segment size PostgreSQL writes: nothing to reason about
        return []
    # Once a gap is open, no WAL after it can be restored before the next full backup (which
    # starts after the repository is back): keeping the rest of the backlog only fills pg_wal.
    folder = spool.gap_dir(config_path, server)
    growing = os.path.isdir(folder) and _continued(folder, expected, size) is not None
    if backlog <= queue_max and not growing:
        return []
    wanted = len(waiting) if growing else -(-(backlog - queue_max) // size)
    run: list[str] = []
    for other in waiting:
        if len(run) >= wanted or parse_segment_name(other, size) != expected:
            break
        run.append(other)
        expected = expected.next()
    if not userspool.ours():
        return []  # a record another user could remove is no record
    directory = os.path.dirname(path)
    try:
        _record(config_path, server, directory, run, size, queue_max, backlog, reason)
    except (OSError, ValueError):
        return []
    markers = spool.spool_dir(config_path, server)
    for other in run[1:]:
        try:  # noqa: SIM105 - contextlib is one import too many on this path
            spool.mark_pushed(markers, os.path.join(directory, other))
        except OSError:
            pass  # its own call gives it up then (it is in the record already)
    return run


def waiting(config_path: str, server: str) -> bool:
    """Whether gap records of `server` wait in the spool (one stat(); wal-push asks the
    same of spool.gap_dir on every successful push, without importing this module)."""
    from markship.wal import spool

    return os.path.isdir(spool.gap_dir(config_path, server))


def unrecorded(config_path: str, server: str) -> list[dict[str, Any]]:
    """The gap records of `server` kept in this host's spool that the repository does not
    have yet (as written there: JSON fields of repository.catalog.GapRecord)."""
    import hashlib
    import json

    listed = _records(config_path, server)
    if listed is None:
        return []
    folder, files = listed
    found = []
    for file in files:
        raw = _read_bytes(os.path.join(folder, file))
        if raw is None or _read_text(os.path.join(folder, file + FLUSHED)) == \
                hashlib.sha256(raw).hexdigest():
            continue
        try:
            found.append(dict(json.loads(raw)))
        except (ValueError, TypeError):
            continue  # flush() names it
    return found


def flush(repo: Repository, config_path: str, server: str,
          pushed: str | None = None) -> list[str]:
    """Write the gap records waiting in the spool into the repository's catalog, each with a
    journal entry, unless the repository already has that very content. With `pushed` (a
    segment wal-push just stored), records of gaps before it are complete and leave the
    spool. Returns the catalog keys written.

    Raises MarkshipError (e.g. RepositoryError) when the repository does not take them; they
    stay in the spool for the next attempt.
    """
    import hashlib

    listed = _records(config_path, server)
    if listed is None:
        return []
    folder, files = listed
    written = []
    for file in files:
        path = os.path.join(folder, file)
        try:
            with open(path, "rb") as handle:
                raw = handle.read()
        except FileNotFoundError:
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if _read_text(path + FLUSHED) != digest:
            key = _store(repo, server, raw, path)
            if key is None:
                continue
            _write_file(folder, file + FLUSHED, digest.encode())
            written.append(key)
        if pushed is not None and _closed_by(raw, pushed):
            with _Locked(folder):
                if _read_bytes(path) == raw:  # not grown meanwhile
                    os.unlink(path)
                    os.unlink(path + FLUSHED)
    if pushed is not None:
        _remove_if_empty(folder)
    return written


def _records(config_path: str, server: str) -> tuple[str, list[str]] | None:
    """The spool's gap folder of `server` and the names of the records in it, sorted; None
    when there is no such folder or the spool is not trusted (a record another user could
    have written is no record)."""
    from markship.wal import spool

    folder = spool.gap_dir(config_path, server)
    try:
        files = sorted(f for f in os.listdir(folder) if f.endswith(SUFFIX))
    except FileNotFoundError:
        return None
    if not userspool.ours():
        return None
    return folder, files


def _store(repo: Repository, server: str, raw: bytes, path: str) -> str | None:
    """Write one spool record into the catalog and the journal; its key. A record that
    does not parse is moved aside (named on stderr) and None returned."""
    import json
    import sys

    from pydantic import ValidationError

    from markship.repository import catalog, journal, layout, records, restorable

    try:
        record = catalog.GapRecord.model_validate(json.loads(raw))
        if record.server != server:
            raise ValueError(f"it names server {record.server}")
    except (ValueError, ValidationError) as exc:
        aside = os.path.join(os.path.dirname(os.path.dirname(path)),
                             f"~damaged-{server}-{os.path.basename(path)}")
        os.replace(path, aside)
        print(f"markship: warning: the WAL gap record {path} is damaged "
              f"({str(exc).splitlines()[0]}); moved to {aside}: WAL of server {server} "
              "was dropped, take a full backup (markship backup)", file=sys.stderr)
        return None
    key = layout.gap_key(server, record.first_segment)
    records.write_record(repo, key, record, overwrite=True)
    journal.append(repo, "wal-push",
                   f"failed: {restorable.gap_text(record)}; the repository could not be "
                   f"written ({record.reason}) while {record.backlog_bytes} bytes of WAL "
                   f"waited, more than archive_queue_max ({record.queue_max_bytes})",
                   objects={"gap": key})
    return key


def _closed_by(raw: bytes, pushed: str) -> bool:
    """Whether storing segment `pushed` ends the gap a spool record describes: it can no
    longer grow once a later segment is stored."""
    import json

    from markship.pg.lsn import parse_segment_name, wal_file_kind

    try:
        if wal_file_kind(pushed) != "segment":
            return False
        gap = json.loads(raw)
        size = int(gap["segment_size"])
        return parse_segment_name(pushed, size) > parse_segment_name(gap["last_segment"], size)
    except (ValueError, KeyError, TypeError):
        return False


def _record(config_path: str, server: str, directory: str, run: list[str], size: int,
            queue_max: int, backlog: int, reason: str) -> None:
    """Add the segments `run` to this server's gap record in the spool: the record they
    continue, or a new one. Flushed to disk before it returns."""
    import json
    import socket
    import time

    from markship.pg.lsn import Segment, parse_segment_name
    from markship.wal import spool

    folder = spool.gap_dir(config_path, server)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    first, last = parse_segment_name(run[0], size), parse_segment_name(run[-1], size)
    now = time.time()
    with _Locked(folder):
        gap = _continued(folder, first, size)
        if gap is None:
            before = Segment(first.timeline, first.number - 1).name(size)
            began = _mtime(directory, before) or _mtime(directory, run[0]) or now
            gap = {"server": server, "timeline": first.timeline, "first_segment": run[0],
                   "last_segment": run[-1], "segment_size": size, "wal_from": _stamp(began),
                   "wal_to": _stamp(_mtime(directory, run[-1]) or now),
                   "dropped_at": _stamp(now), "host": socket.gethostname(),
                   "backlog_bytes": 0}
        elif last > parse_segment_name(gap["last_segment"], size):
            gap["last_segment"] = run[-1]
            gap["wal_to"] = _stamp(_mtime(directory, run[-1]) or now)
        gap["segments"] = (parse_segment_name(gap["last_segment"], size).number
                           - parse_segment_name(gap["first_segment"], size).number + 1)
        gap.update(last_dropped_at=_stamp(now), queue_max_bytes=queue_max, reason=reason,
                   backlog_bytes=max(int(gap["backlog_bytes"]), backlog))
        _write_file(folder, gap["first_segment"] + SUFFIX,
                    json.dumps(gap, indent=1, sort_keys=True).encode())


def _continued(folder: str, first: Segment, size: int) -> dict[str, Any] | None:
    """The spool record of a gap that segment `first` lies in or continues, if any."""
    import json

    from markship.pg.lsn import parse_segment_name

    for file in sorted(os.listdir(folder)):
        if not file.endswith(SUFFIX):
            continue
        try:
            gap = json.loads(_read_bytes(os.path.join(folder, file)) or b"")
            if int(gap["segment_size"]) != size:
                continue
            low = parse_segment_name(gap["first_segment"], size)
            high = parse_segment_name(gap["last_segment"], size)
        except (ValueError, KeyError, TypeError):
            continue  # flush() names it
        if low <= first <= high.next():
            return dict(gap)
    return None


def _stamp(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _mtime(directory: str, name: str) -> float | None:
    try:
        return os.stat(os.path.join(directory, name)).st_mtime
    except OSError:
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _read_text(path: str) -> str:
    data = _read_bytes(path)
    return data.decode(errors="replace") if data is not None else ""


def _write_file(folder: str, name: str, data: bytes) -> None:
    """Replace `folder/name` atomically, the file and its directory entry flushed."""
    target = os.path.join(folder, name)
    temp = f"{target}.{os.getpid()}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, target)
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _remove_if_empty(folder: str) -> None:
    """Drop the folder once no record waits, so the next push's stat() finds nothing."""
    with _Locked(folder):
        if any(f.endswith(SUFFIX) for f in os.listdir(folder)):
            return
        for file in os.listdir(folder):
            os.unlink(os.path.join(folder, file))
        os.rmdir(folder)


class _Locked:
    """An exclusive flock on the folder's lock file: wal-push and the agent take turns."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, _LOCK)
        self.fd = -1

    def __enter__(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)
