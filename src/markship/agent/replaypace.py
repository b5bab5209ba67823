"""`[dr_site] max_replay_delay`: the agent switches WAL on a production server whose standby
would otherwise sit further behind than that.

A DR standby replays whole archived segments only (markship.wal.fetch), so under light load
it waits until production fills a segment. When a server's newest archived segment is older
than the delay (or it has archived none yet) and it has written WAL since, the agent runs
pg_switch_wal() there: the archiver ships the segment and the standby can take it. Each switch
costs one segment of the repository's WAL (16 MB by default, less once compressed), at most
one per server every `max_replay_delay`, like `archive_timeout`. A server whose archiver is
behind (more than the current segment waiting) is left alone: a switch would not help it.
"""

from __future__ import annotations

import time
from datetime import datetime

import psycopg

from markship.agent.log import EventLog
from markship.config.model import Config
from markship.errors import MarkshipError
from markship.pg import sql
from markship.pg.lsn import parse_segment_name
from markship.timefmt import utcnow

CHECK_EVERY_MAX = 5.0  # seconds between two looks at the servers, at most


class ReplayPacer:
    """Looks at each server with a DR standby every few seconds; switches WAL when due."""

    def __init__(self, config: Config, log: EventLog) -> None:
        site = config.dr_site
        self.delay = site.max_replay_delay if site is not None else None
        self.servers = [config.server(sb.server) for sb in site.standbys] if site else []
        self.log = log
        self.conns: dict[str, sql.Connection] = {}
        self.started = utcnow()
        self.next_check = 0.0
        self.switches = 0

    @property
    def active(self) -> bool:
        return self.delay is not None and bool(self.servers)

    def check_every(self) -> float:
        assert self.delay is not None
        return min(self.delay / 4, CHECK_EVERY_MAX)

    def tick(self) -> None:
        """Switch WAL where due; problems are logged, never raised (the next look retries)."""
        if not self.active or time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + self.check_every()
        for server in self.servers:
            try:
                self._one(server.name, server.conninfo)
            except MarkshipError as exc:
                self._drop(server.name)
                self.log("replay_pace.failed", level="warning", server=server.name,
                         reason=exc.one_line())
            except psycopg.Error as exc:
                self._drop(server.name)
                self.log("replay_pace.failed", level="warning", server=server.name,
                         reason=sql.refusal(exc))

    def _one(self, name: str, conninfo: str) -> None:
        assert self.delay is not None
        conn = self.conns.get(name)
        if conn is None or conn.closed or conn.broken:
            conn = self.conns[name] = sql.connect(conninfo, name)
        stats = sql.archiver_stats(conn)
        if not due(stats, self.delay, self.started, utcnow()):
            return
        sql.switch_wal(conn)
        self.switches += 1
        self.log("replay_pace.switch", server=name, wal_file=stats.current_wal_file,
                 detail=f"no segment archived for {self.delay:g} s or more")

    def _drop(self, name: str) -> None:
        conn = self.conns.pop(name, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for name in list(self.conns):
            self._drop(name)


def due(stats: sql.ArchiverStats, delay: float, started: datetime, now: datetime) -> bool:
    """Whether to switch: WAL written in the current segment, the one right after the newest
    archived (nothing else waits for the archiver), archived longer ago than `delay`. Before
    any archiving, the time counts from `started` (the agent's start)."""
    current = parse_segment_name(stats.current_wal_file)
    if stats.current_lsn <= current.start_lsn():
        return False  # nothing written in this segment yet
    if stats.last_archived_wal is not None:
        try:
            archived = parse_segment_name(stats.last_archived_wal)
        except ValueError:  # a history file or backup label was archived last
            archived = None
        if archived is not None and archived.number + 1 != current.number:
            return False  # the archiver is behind or failing: a switch would only add to it
    since = stats.last_archived_time or started
    return (now - since).total_seconds() >= delay
