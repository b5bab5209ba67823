"""Replication as a server reports it: markship's WAL receiver in pg_stat_replication, and
whether a replication connection (what pg_basebackup and pg_receivewal open) is let in."""

from __future__ import annotations

import psycopg

from markship.pg.marksql import RECEIVER_FLUSHED as RECEIVER_FLUSHED
from markship.pg.marksql import RECEIVER_NAME as RECEIVER_NAME
from markship.pg.sql import Connection

RECEIVERS_LISTED = ("SELECT count(*) AS n FROM pg_stat_replication"
                    f" WHERE application_name = '{RECEIVER_NAME}'")
"""How many receivers this server lists under markship's name (in any state)."""


def receiver_listed(conn: Connection) -> bool:
    """True when the server lists a receiver under markship's application_name."""
    row = conn.execute(RECEIVERS_LISTED).fetchone()
    return bool(row and next(iter(row.values())))


def receiver_flushed_lsn(conn: Connection) -> int | None:
    """How far markship's receiver has flushed WAL on this server; None with no receiver."""
    row = conn.execute(RECEIVER_FLUSHED).fetchone()
    value = None if row is None else next(iter(row.values()))
    return None if value is None else int(value)


def identify_system(conninfo: str) -> None:
    """Open a replication connection and run IDENTIFY_SYSTEM on it.

    Raises psycopg.Error when the server refuses the connection (pg_hba.conf, REPLICATION,
    max_wal_senders) or the command.
    """
    with psycopg.connect(conninfo, replication="true", connect_timeout=5,
                         autocommit=True) as repl:
        result = repl.pgconn.exec_(b"IDENTIFY_SYSTEM")
        if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
            raise psycopg.OperationalError(
                (result.error_message or b"IDENTIFY_SYSTEM failed").decode(errors="replace"))
