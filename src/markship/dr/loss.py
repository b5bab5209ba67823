"""What a failover at a mark discards: per server, the WAL the repository holds after the
mark's point, in bytes and in time, and where the old primaries may hold more.

Read from names, listings (sizes, modification times) and mark records: no WAL content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from markship.config.model import Config
from markship.pg.conninfo import address
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, Segment, parse_segment_name
from markship.repository import layout, records, restorable
from markship.repository.base import Repository
from markship.repository.catalog import MarkRecord

# What an operator can still save when the old site's disks survive. True of any failover:
# markship cannot see another host's pg_wal, nor know that its disk is gone.
UNARCHIVED_NOTE = (
    "the old primaries' pg_wal may hold WAL never archived. If their disks survive, push it "
    "before failing over: each pg_wal/ segment that has a .ready file in pg_wal/archive_status/, "
    "and the newest segment, with `markship wal-push --server NAME FILE` (files the "
    "repository's OS user can read); a later mark waiting for that WAL becomes complete and "
    "failover takes it (markship marks)")


@dataclass(frozen=True)
class Loss:
    """One server's WAL after the mark, as far as the repository shows it.

    `lost_bytes`: from the mark's point to the end of the newest WAL the repository holds on
    the mark's timeline: whole segments archived or streamed by the agent's receiver, a
    partly streamed one up to its newest uploaded piece. A segment closed by a
    later mark's WAL switch counts up to that mark's point; one closed by any other switch
    (archive_timeout, pg_switch_wal) counts whole: names do not tell where its WAL ends.
    WAL after the point inside the mark's own segment counts only as far as a later mark's
    point or a streamed piece shows it.
    `newest_wal`: the newest WAL file held after the mark's segment (or the mark's own one
    while the agent's receiver still writes it), `newest_wal_stored_at` when the repository
    stored it (its object's modification time: after its last write).
    `later_marks`: marks made after this one with a point on the server's timeline there,
    complete or not; `newest_mark_at`: when the newest of them was made.
    `lost_until`: the later of those two times; `lost_seconds`: from the mark's time to it,
    0 when the repository holds nothing after the mark. Production may have run longer than
    the repository shows (see UNARCHIVED_NOTE)."""

    server: str
    address: str
    lost_bytes: int
    newest_wal: str | None
    newest_wal_stored_at: datetime | None
    later_marks: int
    newest_mark_at: datetime | None
    lost_until: datetime | None
    lost_seconds: float


def later_marks(repo: Repository, mark: MarkRecord) -> list[MarkRecord]:
    """The marks made after `mark`, complete or not, oldest first (damaged records are
    reported and left out). Default mark names sort by their time: of those, only the newer
    files are read; marks named by `mark --name` always are."""
    own, default = f"{mark.name}.json", f"ms-{mark.group}-"
    newer = [n for n in repo.children(layout.MARKS) if n.endswith(".json") and n != own
             and (n > own or not n.startswith(default) or not own.startswith(default))]
    found = (records.read_good(repo, layout.MARKS + n, MarkRecord, lambda m: m.name)
             for n in newer)
    return sorted((m for m in found if m is not None and m.created_at > mark.created_at),
                  key=lambda m: m.created_at)


def _stored_at(repo: Repository, key: str) -> datetime | None:
    for info in repo.iter_objects(key):
        if info.key == key:
            return datetime.fromtimestamp(info.mtime, UTC)
    return None


@dataclass
class _Newest:
    """The newest position held after the mark, and what shows it."""

    lsn: int
    wal: str | None = None
    key: str | None = None  # an archived segment's object: its time is read at the end
    stored_at: datetime | None = None


def server_loss(repo: Repository, config: Config, mark: MarkRecord, server: str,
                later: list[MarkRecord], size: int = DEFAULT_SEGMENT_SIZE) -> Loss:
    """What a failover to `mark` discards of `server` (see Loss); `later`: later_marks()."""
    point = mark.points[server]
    own = Segment(point.timeline, point.lsn // size)

    # The mark's timeline only: a newer one is WAL of servers promoted after it (a resumed
    # failover finds its own new primaries' WAL archived), not production's.
    def after(segment: Segment) -> bool:
        return segment.timeline == own.timeline and segment.number > own.number

    newest = _Newest(point.lsn)
    index = restorable.WalIndex(repo, server, size)
    for timeline, numbers in index.segments.items():
        for number in numbers:
            segment = Segment(timeline, number)
            if after(segment) and (number + 1) * size > newest.lsn:
                name = segment.name(size)
                newest = _Newest((number + 1) * size, name, index.keys.get(name))
    receiving: tuple[Segment, datetime] | None = None
    for info in repo.iter_objects(layout.stream_prefix(server)):
        parsed = layout.split_stream_name(info.key.rpartition("/")[2])
        if parsed is None:
            continue
        try:
            segment = parse_segment_name(parsed[0], size)
        except ValueError:  # not a segment name: not markship's
            continue
        if not (after(segment) or segment == own):
            continue
        if parsed[1] is not None:  # a piece uploaded from the agent's spool: its end is known
            end = segment.start_lsn(size) + parsed[1][1]
        elif info.key.endswith(layout.STREAM_PARTIAL):
            # pg_receivewal's own partial file: full size, filled to an end names do not
            # tell; its modification time is that of the newest WAL received.
            if receiving is None or segment > receiving[0]:
                receiving = (segment, datetime.fromtimestamp(info.mtime, UTC))
            continue
        elif segment == own:
            continue
        else:
            end = segment.start_lsn(size) + size
        if end > newest.lsn:
            newest = _Newest(end, parsed[0], None, datetime.fromtimestamp(info.mtime, UTC))
    mine = [m for m in later
            if server in m.points and m.points[server].timeline == own.timeline]
    for other in mine:
        there = other.points[server]
        if other.delivery.get(server) == "switch" and newest.wal == there.wal_file and \
                newest.lsn == (there.lsn // size + 1) * size:
            # The mark's WAL switch closed this segment: what follows its point there is
            # mostly the switch's padding, not WAL production wrote.
            newest = _Newest(there.lsn, newest.wal, newest.key, newest.stored_at)
    for other in mine:  # a later mark's point shows how far WAL held in its segment goes
        there = other.points[server]
        held = there.wal_file in index.keys or there.wal_file in index.streamed
        if held and there.lsn > newest.lsn:
            newest = _Newest(there.lsn, newest.wal, newest.key, newest.stored_at)
    stored = _stored_at(repo, newest.key) if newest.key is not None else newest.stored_at
    if receiving is not None and receiving[0].start_lsn(size) >= newest.lsn - size:
        # The segment being received is the newest WAL held (no whole segment after it).
        name, stored = receiving[0].name(size), max(receiving[1], stored or receiving[1])
        newest = _Newest(newest.lsn, name, None, stored)
    newest_mark_at = mine[-1].created_at if mine else None
    times = [t for t in (stored, newest_mark_at) if t is not None]
    until = max(times) if times else None
    return Loss(server=server, address=address(config.server(server).conninfo),
                lost_bytes=max(newest.lsn - point.lsn, 0), newest_wal=newest.wal,
                newest_wal_stored_at=stored, later_marks=len(mine),
                newest_mark_at=newest_mark_at, lost_until=until,
                lost_seconds=max((until - mark.created_at).total_seconds(), 0.0)
                if until is not None else 0.0)


def discarded(repo: Repository, config: Config, mark: MarkRecord) -> dict[str, Loss]:
    """Per server of the mark, what a failover to it discards (see Loss)."""
    later = later_marks(repo, mark)
    return {server: server_loss(repo, config, mark, server, later)
            for server in mark.points if any(s.name == server for s in config.servers)}
