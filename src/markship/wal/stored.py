"""What the repository holds of one WAL file: its stored copies and a reader of one of them."""

from __future__ import annotations

from markship.errors import CorruptObject, ObjectMissing
from markship.repository import layout

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from typing import BinaryIO

    from markship.repository.base import Repository

# 256 KiB: a fresh process reading 1 MiB chunks spent twice as long faulting in new heap
# pages as reading; smaller chunks reuse the same memory.
CHUNK = 256 * 1024


def find_archived(repo: Repository, server: str, wal_name: str) -> list[tuple[str, str]]:
    """(key, content digest) of every stored copy of `wal_name` (normally zero or one)."""
    folder = layout.wal_dir(server, wal_name)
    found = []
    # Only the names starting with this one: object storage then lists from there instead of
    # the whole folder (up to 256 segments), once per segment archived.
    for info in repo.iter_objects(folder + wal_name + "-"):
        child = info.key[len(folder):]
        if "/" in child:
            continue
        parsed = layout.split_wal_key(child)
        if parsed and parsed[0] == wal_name:
            found.append((folder + child, parsed[1]))
    return found


def open_archived(repo: Repository, server: str, wal_name: str) -> tuple[BinaryIO, str]:
    """A reader of the uncompressed WAL file and its expected digest (markship.repository.walsum).

    Raises ObjectMissing when it is not archived.
    """
    from markship.wal import _zstd

    zstandard = _zstd.load()
    found = find_archived(repo, server, wal_name)
    if not found:
        raise ObjectMissing(f"{wal_name} of server {server} is not archived")
    if len(found) > 1:
        raise CorruptObject(f"{wal_name} of server {server} is archived more than once",
                            "run markship verify and remove the wrong copy")
    key, digest = found[0]
    stored = repo.open(key)
    return zstandard.ZstdDecompressor().stream_reader(stored, closefd=True), digest


HISTORY_LIMIT = 1 << 20  # a timeline history file is a few lines per timeline


def read_history(repo: Repository, server: str, timeline: int) -> list[tuple[int, int]]:
    """The ancestry of `timeline` from its archived history file: (parent timeline, LSN where
    the next one branched off), oldest first; [] for timeline 1. The file is checked against
    the digest its name carries (the repository is not trusted).

    Raises ObjectMissing when it is not archived, CorruptObject when it is damaged."""
    from markship.pg.lsn import parse_history
    from markship.repository.walsum import ContentHash

    if timeline <= 1:
        return []
    name = f"{timeline:08X}.history"
    reader, digest = open_archived(repo, server, name)
    with reader:
        data = reader.read(HISTORY_LIMIT + 1)
    check = ContentHash(digest)
    check.update(data)
    if len(data) > HISTORY_LIMIT or check.result() != digest:
        raise CorruptObject(f"{name} of server {server} does not match its digest",
                            "run markship verify; restore it from a copy or the server's pg_wal")
    try:
        entries = parse_history(data.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptObject(f"{name} of server {server} is not a timeline history file: {exc}",
                            "run markship verify") from None
    if any(parent >= timeline for parent, _ in entries):
        raise CorruptObject(f"{name} of server {server} names a parent timeline not below "
                            f"{timeline}", "run markship verify")
    return entries
