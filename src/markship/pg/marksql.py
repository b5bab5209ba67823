"""The statements of a group mark, on any connection markship.pg.fanout takes (psycopg's, or
markship.pg.libpq's on the lean path of `markship mark`). Standard library only."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.pg.fanout import Link

LOCK_NOT_AVAILABLE = b"55P03"  # SQLSTATE of a lock_timeout
FATAL_ERROR = 7  # libpq's PGRES_FATAL_ERROR

RECEIVER_NAME = "markship-stream"
"""The application_name markship's WAL receiver connects with; servers list it under it."""

RECEIVER_FLUSHED = ("SELECT max(flush_lsn - '0/0'::pg_lsn)::bigint FROM pg_stat_replication"
                    f" WHERE application_name = '{RECEIVER_NAME}' AND state = 'streaming'")
"""How far this server's markship receiver has flushed WAL (NULL with no receiver); asked of
every server at once by markship.pg.fanout while a mark waits."""

RESTORE_POINT = (
    "SELECT lsn::text, pg_walfile_name(lsn),"
    " set_config('synchronous_commit', 'local', true), txid_current()"
    " FROM pg_create_restore_point($1) AS lsn")
"""Create a restore point and flush it to disk: (end LSN, WAL file, ...). A restore point
record alone waits for the WAL writer (up to wal_writer_delay); taking an xid makes the
statement's commit flush everything before it, so the answer comes once the point is durable
and WAL receivers can get it. `synchronous_commit = local`: without waiting for synchronous
standbys."""

SWITCH_WAL = ("SELECT pg_switch_wal(), set_config('synchronous_commit', 'local', true),"
              " txid_current()")
"""Close the current segment so the archiver takes it now, then commit one xid: its commit
record, flushed at once, makes the server create the next segment's file (16 MB written and
flushed when no old segment is there to recycle) here, rather than in the next mark's first
flush, which runs under the barrier (measured: a barrier held ~70 ms instead of ~5 ms on an
idle server with fsync on)."""


def hold_barrier(link: Link, key: int, timeout_ms: int) -> bool:
    """Open a transaction holding the exclusive barrier lock; False when it timed out.
    Raises `link.Error` when the server fails otherwise.

    One round trip (the statements go as one simple query). The lock is transaction-level:
    COMMIT or ROLLBACK on `link` releases it.
    """
    result = link.pgconn.exec_(f"BEGIN; SET LOCAL lock_timeout = {int(timeout_ms)};"
                               f" SELECT pg_advisory_xact_lock({int(key)})".encode())
    if result.status != FATAL_ERROR:
        return True
    if result.error_field(ord("C")) == LOCK_NOT_AVAILABLE:
        _run(link, "ROLLBACK")
        return False
    raise link.Error(_message(result.error_message))


def release_barrier(link: Link) -> None:
    _run(link, "COMMIT")


def _run(link: Link, statement: str) -> None:
    result = link.pgconn.exec_(statement.encode())
    if result.status == FATAL_ERROR:
        raise link.Error(_message(result.error_message))


def _message(error: bytes) -> str:
    text = error.decode(errors="replace").strip()
    return text.removeprefix("ERROR:").strip() or "the server failed"
