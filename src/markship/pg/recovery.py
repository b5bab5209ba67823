"""Recovery state as a server reports it: in recovery or not, how far WAL is replayed, on
which timeline (standbys at the DR site, scratch servers of a drill), paused at a recovery
target or not, and resuming a paused one (restores with `--action pause`)."""

from __future__ import annotations

from dataclasses import dataclass

from markship.pg.lsn import parse_lsn
from markship.pg.sql import Connection


@dataclass(frozen=True)
class Position:
    """Where a server is: replayed up to `lsn` in recovery (None before it replayed any),
    else written up to it; and its timeline."""

    in_recovery: bool
    lsn: int | None
    timeline: int


def position(conn: Connection) -> Position:
    row = conn.execute("SELECT pg_is_in_recovery() AS r, CASE WHEN "
                       "pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE "
                       "pg_current_wal_lsn() END::text AS lsn, (SELECT timeline_id "
                       "FROM pg_control_checkpoint()) AS tli").fetchone()
    assert row is not None
    return Position(in_recovery=bool(row["r"]),
                    lsn=parse_lsn(row["lsn"]) if row["lsn"] else None, timeline=row["tli"])


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


@dataclass(frozen=True)
class Pause:
    """A recovering server's pause: `state` is PostgreSQL's ('not paused', 'pause requested',
    'paused'; None when it is not in recovery), with how far it replayed and the time of the
    last transaction it replayed (ISO text, None before any)."""

    in_recovery: bool
    state: str | None
    lsn: int | None
    last_replayed: str | None


def pause(conn: Connection) -> Pause:
    # pg_get_wal_replay_pause_state() raises outside recovery: CASE keeps it from running
    row = conn.execute("SELECT pg_is_in_recovery() AS r, CASE WHEN pg_is_in_recovery() THEN "
                       "pg_get_wal_replay_pause_state() END AS state, "
                       "pg_last_wal_replay_lsn()::text AS lsn, "
                       "pg_last_xact_replay_timestamp() AS last").fetchone()
    assert row is not None
    return Pause(in_recovery=bool(row["r"]), state=row["state"],
                 lsn=parse_lsn(row["lsn"]) if row["lsn"] else None,
                 last_replayed=row["last"].isoformat() if row["last"] else None)


def resume_replay(conn: Connection) -> None:
    """Resume a paused recovery; at a recovery target that ends recovery and promotes."""
    conn.execute("SELECT pg_wal_replay_resume()")
