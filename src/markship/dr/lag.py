"""How far a standby is from what a failover needs: the newest mark it could reach from the
WAL the repository holds now, and the WAL bytes to fetch and replay to get there.

Pure: it reads a WAL index (names only) and LSNs, nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from markship.pg.lsn import (
    DEFAULT_SEGMENT_SIZE,
    parse_segment_name,
    segment_holding_end,
    segment_of,
)
from markship.repository.restorable import WalIndex


@dataclass(frozen=True)
class Ahead:
    """`mark_index`: the newest of the marks asked about that the standby reaches with the
    WAL held (None: no mark given); `to_mark_bytes`: WAL from the standby's position to it
    (0 once replayed; None without a mark); `to_newest_bytes`: to the end of the newest WAL
    held on its timeline, as far as names tell (the end of the newest archived segment, or
    the newest mark's point when streamed WAL holds more)."""

    mark_index: int | None
    to_mark_bytes: int | None
    to_newest_bytes: int


def ahead(index: WalIndex, timeline: int, replayed: int, mark_lsns: list[int],
          size: int = DEFAULT_SEGMENT_SIZE) -> Ahead:
    """`mark_lsns`: the points, on this server and timeline, of the complete marks, oldest
    first. A mark past the standby is reachable when every segment from the one holding its
    position to the mark's own is archived or in the stream folder."""
    held = set(index.segments.get(timeline, set()))
    for name in index.streamed:
        segment = parse_segment_name(name, size)
        if segment.timeline == timeline:
            held.add(segment.number)
    first_missing = segment_of(timeline, replayed, size).number
    while first_missing in held:
        first_missing += 1
    chosen: int | None = None
    for position, lsn in enumerate(mark_lsns):
        if lsn <= replayed or segment_holding_end(timeline, lsn, size).number < first_missing:
            chosen = position
    archived = index.segments.get(timeline)
    newest = (max(archived) + 1) * size if archived else 0
    if mark_lsns:
        newest = max(newest, mark_lsns[-1])
    to_mark = None if chosen is None else max(mark_lsns[chosen] - replayed, 0)
    return Ahead(chosen, to_mark, max(newest - replayed, 0))
