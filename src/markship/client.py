"""Client helper for applications that commit across the group's servers with two-phase commit.

A group mark is consistent when no commit phase of a cross-server transaction is in flight. The
mark takes an exclusive advisory lock (the *barrier*) on the barrier server; applications take
the shared side of the same lock around their commit phase:

1. `PREPARE TRANSACTION` on every participant (outside the barrier: may take long);
2. on the barrier server: `SELECT pg_advisory_lock_shared(key)`;
3. record the global decision in its own committed transaction:
   `INSERT INTO markship.decisions (gid) VALUES ('...')` (autocommit);
4. `COMMIT PREPARED '...'` on every participant;
5. `SELECT pg_advisory_unlock_shared(key)`.

A transaction whose decision row exists at a mark was committed everywhere before it (the
barrier waits for step 5); one without a row is rolled back when the group is restored to that
mark. Any language can follow these steps; `barrier_key(group)` gives the lock key, also printed
by `markship client-sql`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from markship.barrierkey import barrier_key as barrier_key

DECISIONS_TABLE = "markship.decisions"

SETUP_SQL = """
CREATE SCHEMA IF NOT EXISTS markship;
CREATE TABLE IF NOT EXISTS markship.decisions (
    gid text PRIMARY KEY,
    decided_at timestamptz NOT NULL DEFAULT now()
);
"""


def setup_decisions(conn: psycopg.Connection[Any]) -> None:
    """Create the decision table on the barrier server (idempotent)."""
    with conn.transaction():
        conn.execute(SETUP_SQL)


def commit_decided(barrier: psycopg.Connection[Any], group: str, gid: str,
                   participants: Sequence[psycopg.Connection[Any]]) -> None:
    """Steps 2–5 for participants already prepared with psycopg's `tpc_prepare()`.

    `barrier` is an autocommit connection to the barrier server. If the decision cannot be
    recorded the participants are rolled back; once it is recorded they are committed.
    """
    key = barrier_key(group)
    barrier.execute("SELECT pg_advisory_lock_shared(%s)", (key,))
    try:
        try:
            barrier.execute(f"INSERT INTO {DECISIONS_TABLE} (gid) VALUES (%s)", (gid,))
        except psycopg.Error:
            for conn in participants:
                conn.tpc_rollback()
            raise
        for conn in participants:
            conn.tpc_commit()
    finally:
        barrier.execute("SELECT pg_advisory_unlock_shared(%s)", (key,))


@contextmanager
def group_transaction(barrier: psycopg.Connection[Any], group: str, gid: str,
                      participants: Sequence[psycopg.Connection[Any]]) -> Iterator[None]:
    """One transaction across several servers, committed under the group barrier.

    ```
    with group_transaction(barrier_conn, "shop", "transfer-42", [orders, payments]):
        orders.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        payments.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 7")
    ```
    Participants must not be in autocommit mode. On an exception inside the block every
    participant is rolled back.
    """
    for conn in participants:
        conn.tpc_begin(gid)  # a plain string: PostgreSQL's gid is exactly `gid`
    try:
        yield
        for conn in participants:
            conn.tpc_prepare()
    except BaseException:
        for conn in participants:
            conn.tpc_rollback()
        raise
    commit_decided(barrier, group, gid, participants)
