"""wal-fetch's work: put one WAL file where recovery asked for it, checked, or say it is not
there; for DR-site standbys, only up to the newest complete group mark.

A file is written under a temporary name and renamed only once its digest and its WAL page
header (it is this segment, not another one stored under its name) are checked.
"""

from __future__ import annotations

import os

from markship.errors import CorruptObject, MarkshipError, ObjectMissing
from markship.pg.lsn import (
    WAL_HEADER_BYTES,
    Segment,
    parse_segment_name,
    wal_file_kind,
    wal_header_problem,
)
from markship.repository import layout, walsum
from markship.wal.stored import CHUNK, find_archived, open_archived

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from typing import BinaryIO

    from markship.repository.base import Readable, Repository

def standby_ceiling(repo: Repository, server: str, floor: str | None,
                    servers: frozenset[str]) -> Segment | None:
    """The newest segment a DR-site standby may replay.

    That is the segment *before* the one holding the newest complete group mark: the mark's
    own segment also holds WAL written after the mark, and a standby that replayed it could no
    longer stop at the mark. `floor` (the base backup's last segment) always stays allowed so a
    new standby can reach consistency. None: nothing is allowed beyond the floor. `servers`:
    the group's, as the config names them (a mark record naming others is skipped).
    """
    ceiling: Segment | None = None
    names = sorted((n for n in repo.children(layout.MARKS) if n.endswith(".json")), reverse=True)
    for name in names[:100]:
        points = _mark_points(repo, layout.MARKS + name, servers)
        if not points or server not in points:
            continue
        if all(_delivered(repo, s, wal_file, how) for s, (wal_file, how) in points.items()):
            holding = parse_segment_name(points[server][0])
            ceiling = Segment(holding.timeline, holding.number - 1)
            break
    if floor:
        floor_segment = parse_segment_name(floor)
        if ceiling is None or floor_segment > ceiling:
            ceiling = floor_segment
    return ceiling


def _mark_points(repo: Repository, key: str,
                 servers: frozenset[str]) -> dict[str, tuple[str, str]] | None:
    """server → (WAL segment, delivery) of a mark record, read without pydantic; None if
    unreadable or damaged. Repository data is untrusted: every server must be one of
    `servers` (the config's) and every WAL file a segment name, or the record is skipped."""
    import hashlib
    import json

    try:
        envelope = json.loads(repo.read_bytes(key))
        body = envelope["body"]
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        if hashlib.sha256(canonical).hexdigest() != envelope["sha256"]:
            return None
        delivery = body.get("delivery") or {}
        points = {server: (str(point["wal_file"]), str(delivery.get(server, "switch")))
                  for server, point in body["points"].items()}
    except (ValueError, KeyError, TypeError, AttributeError, MarkshipError):
        return None
    try:
        if not points or not set(points) <= servers or any(
                wal_file_kind(wal_file) != "segment" for wal_file, _how in points.values()):
            return None
    except ValueError:  # not a WAL file name at all
        return None
    return points


def _delivered(repo: Repository, server: str, wal_file: str, delivery: str) -> bool:
    if find_archived(repo, server, wal_file):
        return True
    return delivery == "stream" and bool(streamed_copy(repo, server, wal_file, True))


def streamed_copy(repo: Repository, server: str, wal_name: str,
                  allow_partial: bool) -> list[tuple[str, int, int]]:
    """The stream-folder objects holding `wal_name` (see markship.marks.stream), as (key,
    start, end) in the order to lay them down: the whole file, else (if allowed) the
    partial one, else the pieces uploaded from the agent's spool (markship.marks.upload) that
    continue each other from the segment's start; empty when there is none. For one object
    start and end are 0 and -1 (all of it)."""
    if len(wal_name) != 24:
        return []
    prefix = layout.stream_prefix(server)
    names = repo.children(prefix)
    if wal_name in names:
        return [(prefix + wal_name, 0, -1)]
    if not allow_partial:
        return []
    if wal_name + layout.STREAM_PARTIAL in names:
        return [(prefix + wal_name + layout.STREAM_PARTIAL, 0, -1)]
    # Pieces go down in the order they were uploaded, which is that of their ends: a later
    # one may begin inside an earlier one (the page that was still being written then) and
    # replaces those bytes.
    pieces = sorted((span[1], span[0], name) for name in names
                    if (parsed := layout.split_stream_name(name)) is not None
                    and parsed[0] == wal_name and (span := parsed[1]) is not None)
    chain: list[tuple[str, int, int]] = []
    reached = 0
    for end, start, name in pieces:
        if start > reached:
            break  # a gap: what follows it cannot be used
        chain.append((prefix + name, start, end))
        reached = max(reached, end)
    return chain


def fetch_streamed(repo: Repository, server: str, wal_name: str, dest: str,
                   allow_partial: bool) -> None:
    """Copy a segment that is not archived yet from the stream folder to `dest`.

    A partial segment is zero-padded to full size: recovery reads what was received and
    treats the padding as the end of WAL. A directory repository's stream folder holds
    pg_receivewal's own files; one in object storage holds the agent's uploads
    (markship.marks.upload): pieces of one zstd frame each, laid down in order, then padded
    up to the segment size the WAL page header names. Raises ObjectMissing when there is no
    copy.
    """
    sources = streamed_copy(repo, server, wal_name, allow_partial)
    if not sources:
        raise ObjectMissing(f"{wal_name} of server {server} is not archived")
    whole = sources[0][0].endswith(wal_name)
    folder, name = os.path.split(dest)
    temp = os.path.join(folder, f".{name}.markship-{os.getpid()}")
    try:
        with open(temp, "w+b") as out:
            size = 0
            for key, start, end in sources:
                out.seek(start)
                copied = _copy_stored(repo, key, out, MAX_SEGMENT - start)
                if end >= 0 and copied != end - start:
                    raise CorruptObject(f"streamed copy {key} holds {copied} bytes, its name "
                                        f"says {end - start}",
                                        "run markship verify; this WAL must not be replayed")
                size = max(size, start + copied)
            out.seek(0)
            head = out.read(WAL_HEADER_BYTES)
            segment_size = _segment_size(head)
            if not whole and segment_size and size < segment_size:
                out.truncate(segment_size)  # the zero padding left out of the upload
                size = segment_size
    except ObjectMissing:
        _discard(temp)  # archived and pruned meanwhile: the caller looks again
        raise
    except BaseException:
        _discard(temp)
        raise
    if not whole and not head.strip(b"\0"):
        # The agent lays the receiver's next segment out ahead, zero-filled: nothing of this
        # segment has been received yet.
        _discard(temp)
        raise ObjectMissing(f"{wal_name} of server {server} is not archived")
    problem = wal_header_problem(head, wal_name)
    if problem is None and size != segment_size:
        problem = f"{size} bytes, not the {segment_size} of its segment size"
    if problem is not None:
        _discard(temp)
        raise CorruptObject(f"streamed copy {sources[0][0]} is not WAL file {wal_name} "
                            f"({problem})", "run markship verify; this WAL must not be replayed")
    os.replace(temp, dest)


def _copy_stored(repo: Repository, key: str, out: BinaryIO, limit: int) -> int:
    """Write the WAL bytes of one stream-folder object to `out` (decrypted and unpacked when
    it is an upload); returns how many, stopping past `limit` (repository data is
    untrusted)."""
    copied = 0
    with repo.open_stored(key) as stored:
        first = stored.read(CHUNK)
        source: Readable = stored
        if first[:len(AGE_MAGIC)] == AGE_MAGIC:  # an upload to an encrypted repository
            source = repo.plaintext(_Rejoined(first, stored), key)
            first = source.read(CHUNK)
        if first[:len(ZSTD_MAGIC)] == ZSTD_MAGIC:  # an upload from the agent's spool
            from markship.wal import _zstd

            source = _zstd.load().ZstdDecompressor().stream_reader(
                _Rejoined(first, source), read_across_frames=True)
            first = source.read(CHUNK)
        chunk = first
        while chunk:
            copied += len(chunk)
            if copied > limit:
                break
            out.write(chunk)
            chunk = source.read(CHUNK)
    return copied


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
AGE_MAGIC = b"age-encryption.org/v1\n"  # as markship.repository.crypto (not loaded here)
MAX_SEGMENT = 1 << 30  # PostgreSQL's largest WAL segment size


def _segment_size(head: bytes) -> int:
    """The segment size a segment's long page header names (0 when too short to say)."""
    return int.from_bytes(head[32:36], "little") if len(head) >= WAL_HEADER_BYTES else 0


class _Rejoined:
    """A reader of `first` followed by the rest of `rest` (bytes already read to sniff)."""

    __slots__ = ("first", "rest")

    def __init__(self, first: bytes, rest: Readable) -> None:
        self.first, self.rest = first, rest

    def read(self, size: int = -1) -> bytes:
        if self.first:
            taken = self.first if size < 0 else self.first[:size]
            self.first = self.first[len(taken):]
            return taken
        return self.rest.read(size)


class Head:
    """The first bytes of a stream, gathered from its chunks (for the WAL page header)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def take(self, chunk: bytes) -> None:
        if len(self.data) < WAL_HEADER_BYTES:
            self.data += bytes(chunk[:WAL_HEADER_BYTES - len(self.data)])


def _discard(path: str) -> None:
    try:  # noqa: SIM105 - contextlib is one import too many on this path
        os.unlink(path)
    except FileNotFoundError:
        pass


def fetch(repo: Repository, server: str, wal_name: str, dest: str) -> None:
    """Restore one archived WAL file to `dest`, checking its digest before it appears there.

    Raises ObjectMissing when not archived, CorruptObject when the stored copy is damaged.
    """
    from markship.wal import _zstd

    zstandard = _zstd.load()
    reader, expected = open_archived(repo, server, wal_name)
    folder, name = os.path.split(dest)
    temp = os.path.join(folder, f".{name}.markship-{os.getpid()}")
    digest = walsum.ContentHash(expected)
    head = Head()
    try:
        with reader, open(temp, "wb") as out:
            while chunk := reader.read(CHUNK):
                head.take(chunk)
                digest.update(chunk)
                out.write(chunk)
    except zstandard.ZstdError as exc:
        _discard(temp)
        raise CorruptObject(f"archived {wal_name} of server {server} cannot be decompressed "
                            f"({exc})", "run markship verify; restore from another copy") from None
    except BaseException:
        _discard(temp)
        raise
    if digest.result() != expected:
        _discard(temp)
        raise CorruptObject(f"archived {wal_name} of server {server} fails its checksum",
                            "run markship verify; this WAL must not be replayed")
    # The digest in the object's name only proves the object is intact; the page header
    # proves it is this segment (a copy of another segment stored under this name would pass
    # the digest and be replayed as the wrong WAL).
    problem = wal_header_problem(head.data, wal_name)
    if problem is not None:
        _discard(temp)
        raise CorruptObject(f"archived {wal_name} of server {server} is not that WAL file "
                            f"({problem})", "run markship verify; this WAL must not be replayed")
    os.replace(temp, dest)
