"""Recovery state as a server reports it: in recovery or not, how far WAL is replayed, on
which timeline (standbys at the DR site, scratch servers of a drill)."""

from __future__ import annotations

from dataclasses import dataclass

from markship.pg.lsn import parse_lsn
from markship.pg.sql import Connection


@dataclass(frozen=True)
class Position:
    """Where a server is: replayed up to `lsn` in recovery, else written up to it."""

    in_recovery: bool
    lsn: int
    timeline: int


def position(conn: Connection) -> Position:
    row = conn.execute("SELECT pg_is_in_recovery() AS r, CASE WHEN "
                       "pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE "
                       "pg_current_wal_lsn() END::text AS lsn, (SELECT timeline_id "
                       "FROM pg_control_checkpoint()) AS tli").fetchone()
    assert row is not None
    return Position(in_recovery=bool(row["r"]), lsn=parse_lsn(row["lsn"]), timeline=row["tli"])


@dataclass(frozen=True)
class Replay:
    """How far a standby has replayed WAL (`lsn` None when it has replayed none), and its
    timeline."""

    lsn: int | None
    timeline: int


def replay(conn: Connection) -> Replay | None:
    row = conn.execute("SELECT pg_last_wal_replay_lsn()::text AS lsn, (SELECT "
                       "timeline_id FROM pg_control_checkpoint()) AS tli").fetchone()
    if row is None:
        return None
    return Replay(lsn=parse_lsn(row["lsn"]) if row["lsn"] else None, timeline=row["tli"])


@dataclass(frozen=True)
class OpenState:
    """Whether a server is still in recovery, and whether it archives."""

    recovering: bool
    archive_mode: str


def open_state(conn: Connection) -> OpenState | None:
    row = conn.execute("SELECT pg_is_in_recovery() AS recovering, "
                       "current_setting('archive_mode') AS archive_mode").fetchone()
    return None if row is None else OpenState(recovering=row["recovering"],
                                              archive_mode=row["archive_mode"])
