"""File sets: configuration files captured with backups, restored by mark.

A capture reads the configured paths once (markship.backup.filesnapshot: symlinks are stored
as links, never followed), streams them as a pax tar through zstd into the repository, and
writes its record last:

```
filesets/<name>/<id>.tar.zst     the archive; member names are absolute paths without the "/"
filesets/<name>/<id>.json        FilesetRecord: reason, nearest mark, content digest, counts
```

A restore streams the archive back, checking its sha256 while reading, and places it member by
member with markship.backup.safetar, which checks each member before writing anything for it.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import socket
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from pydantic import Field

from markship import names
from markship.backup import safetar
from markship.backup.filesnapshot import (
    CHUNK,
    Entry,
    Snapshot,
    content_digest,
    digest_header,
    reading,
    take,
)
from markship.config.model import Config, FilesetSection
from markship.errors import CorruptObject, MarkshipError, ObjectMissing
from markship.repository import catalog, layout, records
from markship.repository.base import Repository, Writable
from markship.repository.hashing import HashingReader
from markship.repository.records import Name, ObjectRef, Record
from markship.timefmt import show, utcnow

# -- keys and records -----------------------------------------------------------------------------


def fileset_prefix(name: str) -> str:
    """The file set's folder (repository.layout). These key functions raise BadName
    (markship.names) for a name no file set can have."""
    return layout.fileset_prefix(names.check(name, "file set name"))


def record_key(name: str, capture_id: str) -> str:
    return layout.fileset_record_key(names.check(name, "file set name"), capture_id)


def capture_id_at(moment: datetime) -> str:
    """`20261125T190211.123Z`: sortable, millisecond precision."""
    return moment.strftime("%Y%m%dT%H%M%S.%f")[:-3] + "Z"


class FilesetRecord(Record):
    """One capture of a file set; written after its archive is stored."""

    name: Name
    id: Name
    created_at: datetime
    reason: str  # "backup set <id>", "content changed", "manual"
    set_id: Name | None = None
    mark: Name | None = None  # the newest complete mark when the capture was made
    host: str
    roots: list[str]
    content_sha256: str  # names, types, modes, owners, link targets, file bytes: not mtimes
    archive: ObjectRef
    files: int
    dirs: int
    links: int
    total_bytes: int
    # sockets, FIFOs and devices found under the paths (not captured)
    skipped: list[str] = Field(default_factory=list)


# -- capture --------------------------------------------------------------------------------------


@dataclass
class _Counts:
    files: int = 0
    dirs: int = 0
    links: int = 0
    total_bytes: int = 0


def _tarinfo(entry: Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.name)
    info.mode, info.uid, info.gid = entry.mode, entry.uid, entry.gid
    info.mtime = entry.mtime_ns // 1_000_000_000
    info.uname = _user_name(entry.uid)
    info.gname = _group_name(entry.gid)
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "link":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    else:
        info.type, info.size = tarfile.REGTYPE, entry.size
    return info


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _write_archive(sink: Writable, snapshot: Snapshot, level: int, digest: hashlib._Hash,
                   counts: _Counts) -> None:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    packer = compressor.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
    with packer as packed, tarfile.open(fileobj=packed, mode="w|",
                                        format=tarfile.PAX_FORMAT) as tar:
        for entry in snapshot.entries:
            digest_header(digest, entry)
            info = _tarinfo(entry)
            if entry.kind == "file":
                with reading(entry, digest) as reader:
                    tar.addfile(info, reader)
                counts.files += 1
                counts.total_bytes += entry.size
            else:
                tar.addfile(info)
                if entry.kind == "dir":
                    counts.dirs += 1
                else:
                    counts.links += 1


def newest_record(repo: Repository, name: str) -> FilesetRecord | None:
    """The newest good capture record of a file set (damaged ones reported, passed over)."""
    prefix = fileset_prefix(name)
    files = sorted((n for n in repo.children(prefix) if n.endswith(".json")), reverse=True)
    for file in files:
        record = records.read_good(repo, prefix + file, FilesetRecord, _stem_in(name))
        if record is not None:
            return record
    return None


def _stem_in(name: str) -> Callable[[FilesetRecord], str]:
    """A capture record's expected file name (without .json): its id, and only in its own
    file set's folder."""
    return lambda record: record.id if record.name == name else f"{record.name}/{record.id}"


def capture(config: Config, repo: Repository, fileset: FilesetSection | Snapshot, *,
            reason: str, set_id: str | None = None, mark: str | None = None,
            only_if_changed: bool = False) -> FilesetRecord | None:
    """Store the file set's current content, tied to `mark` (default: the newest complete
    mark). With `only_if_changed`, return None and write nothing when the content digest
    equals the newest capture's (what the agent calls periodically).

    Raises MarkshipError naming a missing, unreadable or changing path.
    """
    if isinstance(fileset, Snapshot):
        return _capture(config, repo, fileset, reason, set_id, mark, only_if_changed)
    with take(fileset) as snapshot:
        return _capture(config, repo, snapshot, reason, set_id, mark, only_if_changed)


def capture_all(config: Config, repo: Repository, *, reason: str, set_id: str | None = None,
                only_if_changed: bool = False) -> list[FilesetRecord]:
    """Capture every configured file set (with a backup set, or the agent's change check)."""
    captures = []
    for fileset in config.filesets:
        record = capture(config, repo, fileset, reason=reason, set_id=set_id,
                         only_if_changed=only_if_changed)
        if record is not None:
            captures.append(record)
    return captures


def _capture(config: Config, repo: Repository, snapshot: Snapshot, reason: str,
             set_id: str | None, mark: str | None, only_if_changed: bool) -> FilesetRecord | None:
    name = snapshot.fileset.name
    if only_if_changed:
        newest = newest_record(repo, name)
        if newest is not None and newest.content_sha256 == content_digest(snapshot):
            return None
    now = utcnow()
    catalog.ensure_marker(repo, config.group.name, now)
    if mark is None:
        from markship.marks.choose import newest_complete

        state = newest_complete(repo, config)
        mark = state.record.name if state is not None else None
    capture_id = capture_id_at(now)
    while repo.exists(record_key(name, capture_id)):
        now += timedelta(milliseconds=1)
        capture_id = capture_id_at(now)
    digest = hashlib.sha256()
    counts = _Counts()
    level = config.repository.compression_level
    stored = repo.write_by(
        fileset_prefix(name) + layout.fileset_archive_name(capture_id),
        lambda sink: _write_archive(sink, snapshot, level, digest, counts))
    record = FilesetRecord(
        name=name, id=capture_id, created_at=now, reason=reason, set_id=set_id, mark=mark,
        host=socket.gethostname(), roots=[str(p) for p in snapshot.fileset.paths],
        content_sha256=digest.hexdigest(),
        archive=ObjectRef(key=stored.key, size=stored.size, sha256=stored.sha256),
        files=counts.files, dirs=counts.dirs, links=counts.links,
        total_bytes=counts.total_bytes, skipped=snapshot.skipped)
    records.write_record(repo, record_key(name, capture_id), record)
    return record


# -- choosing a capture ---------------------------------------------------------------------------


def list_records(repo: Repository, name: str | None = None,
                 found: list[records.Damaged] | None = None) -> list[FilesetRecord]:
    """Good captures of one file set (or all), oldest first; damaged records are reported
    (to `found` when given) and left out. Raises BadName for a name no file set can have."""
    folders = [names.check(name, "file set name")] if name is not None else \
        records.good_folders(repo, layout.FILESETS, found)
    captures = []
    for set_name in folders:
        captures += records.read_folder(repo, fileset_prefix(set_name), FilesetRecord,
                                        _stem_in(set_name), found)
    return sorted(captures, key=lambda r: (r.created_at, r.name))


def choose(repo: Repository, name: str, mark: str | None = None,
           capture_id: str | None = None) -> FilesetRecord:
    """The capture `capture_id`, else the newest made at or before `mark`, else the newest.

    Raises MarkshipError when the file set has no such capture or the mark does not exist.
    """
    captures = list_records(repo, name)
    if not captures:
        raise MarkshipError(f"file set {name} has no captures in the repository",
                            f"run markship files capture --set {name}")
    if capture_id is not None:
        for record in captures:
            if record.id == capture_id:
                return record
        raise MarkshipError(f"file set {name} has no capture {capture_id}",
                            f"markship files list --set {name} shows them")
    if mark is None:
        return captures[-1]
    mark_record = catalog.read_mark(repo, mark)
    if mark_record is None:
        raise MarkshipError(f"no mark named {mark} in the repository",
                            "markship marks lists them")
    usable = [r for r in captures if r.created_at <= mark_record.created_at]
    if not usable:
        raise MarkshipError(
            f"file set {name} has no capture made at or before mark {mark} "
            f"({show(mark_record.created_at)}); the oldest is from {show(captures[0].created_at)}",
            "choose a newer mark, or a capture with --id")
    return usable[-1]


# -- restore --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    record: FilesetRecord
    target_dir: Path
    files: int
    dirs: int
    links: int
    total_bytes: int
    narrowed: list[str]  # members restored without set-id, sticky or group/other write bits


def restore(repo: Repository, record: FilesetRecord, target_dir: Path) -> RestoreResult:
    """Lay the capture out under `target_dir` (new or empty): modes, mtimes, links as links,
    and owners when running as root (elsewhere where permitted).

    Raises RestoreError for a non-empty target or an unsafe member (checked before anything
    is written for it), CorruptObject when the archive fails its checksum or cannot be
    unpacked. On any failure what was written is removed again: the target is left empty.
    """
    root_fd = safetar.open_target(target_dir)
    placer = safetar.Placer(root_fd, f"file set archive {record.archive.key}")
    try:
        try:
            _extract(repo, record, placer)
            placer.finish()
        except BaseException:
            safetar.empty(target_dir)
            raise
    finally:
        os.close(root_fd)
    counts = placer.counts
    return RestoreResult(record, target_dir, counts.files, counts.dirs, counts.links,
                         counts.total_bytes, counts.narrowed)


def _extract(repo: Repository, record: FilesetRecord, placer: safetar.Placer) -> None:
    import zstandard

    key = record.archive.key
    try:
        stored = repo.open_stored(key)
    except ObjectMissing:
        raise ObjectMissing(f"file set archive {key} is missing from the repository",
                            "restore another capture (markship files list)") from None
    hashed = HashingReader(stored)  # the checksum covers the stored (maybe encrypted) bytes
    plain = repo.plaintext(hashed, key)
    try:
        unpacked = zstandard.ZstdDecompressor().stream_reader(
            plain, read_size=CHUNK)  # type: ignore[arg-type]
        with tarfile.open(fileobj=unpacked, mode="r|") as tar:
            for member in tar:
                placer.place(member, tar)
        while unpacked.read(CHUNK):
            pass
        while plain.read(CHUNK):
            pass
        while hashed.read(CHUNK):
            pass
    except (tarfile.TarError, EOFError, zstandard.ZstdError) as exc:
        raise CorruptObject(f"file set archive {key} cannot be unpacked ({exc}); nothing was "
                            "restored", "run markship verify, and restore another capture "
                            "(--id; markship files list shows them)") from None
    finally:
        close = getattr(plain, "close", None)
        if plain is not hashed and close is not None:
            close()
        stored.close()
    if hashed.hexdigest() != record.archive.sha256 or hashed.size != record.archive.size:
        raise CorruptObject(f"file set archive {key} fails its checksum; nothing was "
                            "restored (what had been written was removed)",
                            "run markship verify, and restore another capture (--id; "
                            "markship files list shows them)")


