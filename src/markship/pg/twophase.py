"""Two-phase commit as a server holds it: prepared transactions, finishing them, and the
decision table (markship.client's `markship.decisions`) that says which ones committed."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from markship.client import DECISIONS_TABLE
from markship.pg.sql import Connection, connect


def prepared_transactions(conn: Connection) -> list[tuple[str, str]]:
    """(gid, database) of every prepared transaction on the server."""
    rows = conn.execute("SELECT gid, database FROM pg_prepared_xacts ORDER BY gid").fetchall()
    return [(r["gid"], r["database"]) for r in rows]


def finish_prepared(conninfo: str, server: str, database: str, gid: str, commit: bool) -> None:
    """COMMIT PREPARED or ROLLBACK PREPARED, connected to the transaction's own database."""
    target = psycopg.conninfo.make_conninfo(conninfo, dbname=database)
    verb = sql.SQL("COMMIT PREPARED" if commit else "ROLLBACK PREPARED")
    with connect(target, server) as conn:
        # Utility statements take no bind parameters: quote the gid as a literal.
        conn.execute(sql.SQL("{} {}").format(verb, sql.Literal(gid)))


def recorded_commits(conn: Connection) -> set[str]:
    """The global transactions the decision table records as committed.

    Raises psycopg.errors.UndefinedTable when the table was never created.
    """
    rows = conn.execute(f"SELECT gid FROM {DECISIONS_TABLE}").fetchall()
    return {r["gid"] for r in rows}


DECISIONS_READABLE = """
SELECT has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT') AS readable
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""


def decisions_readable(conn: Connection, schema: str, table: str) -> bool | None:
    """Whether the connected role may read the decision table `schema.table`; None when the
    table does not exist."""
    row = conn.execute(DECISIONS_READABLE, (schema, table)).fetchone()
    return None if row is None else bool(row["readable"])


@dataclass(frozen=True)
class TwoPhaseSetup:
    """What a server is set up for: a decision table, and room for prepared transactions."""

    decision_table: bool
    max_prepared: int


def two_phase_setup(conn: Connection) -> TwoPhaseSetup | None:
    row = conn.execute("SELECT to_regclass('markship.decisions') IS NOT NULL AS t, "
                       "current_setting('max_prepared_transactions')::int AS m"
                       ).fetchone()
    return None if row is None else TwoPhaseSetup(decision_table=row["t"], max_prepared=row["m"])
