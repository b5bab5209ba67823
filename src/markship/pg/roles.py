"""What the connected role may do on a server, and the settings markship depends on: the facts
`markship preflight` checks."""

from __future__ import annotations

from dataclasses import dataclass

from markship.pg.replication import RECEIVER_NAME
from markship.pg.sql import Connection

ROLE_FACTS = """
SELECT current_user AS role, r.rolsuper AS superuser, r.rolreplication AS replication,
       current_setting('server_version') AS version,
       pg_is_in_recovery() AS in_recovery,
       current_setting('wal_level') AS wal_level,
       current_setting('archive_mode') AS archive_mode,
       current_setting('archive_command') AS archive_command,
       current_setting('max_wal_senders')::int AS max_wal_senders,
       current_setting('max_prepared_transactions')::int AS max_prepared,
       has_function_privilege('pg_create_restore_point(text)', 'EXECUTE') AS restore_point,
       has_function_privilege('pg_switch_wal()', 'EXECUTE') AS switch_wal,
       has_function_privilege('pg_read_binary_file(text)', 'EXECUTE') AS read_file,
       pg_has_role('pg_read_all_stats', 'USAGE') AS read_all_stats,
       pg_has_role('pg_read_all_data', 'USAGE') AS read_all_data,
       (SELECT count(*) FROM pg_prepared_xacts)::int AS prepared,
       (SELECT count(*) FROM pg_stat_replication
         WHERE application_name IS DISTINCT FROM %(receiver)s)::int AS other_senders
FROM pg_roles r WHERE r.rolname = current_user
"""


@dataclass(frozen=True)
class RoleFacts:
    """The connected role, its rights, and the server settings preflight checks."""

    role: str
    superuser: bool
    replication: bool
    version: str
    in_recovery: bool
    wal_level: str
    archive_mode: str
    archive_command: str
    max_wal_senders: int
    max_prepared: int
    restore_point: bool  # may run pg_create_restore_point(text)
    switch_wal: bool  # may run pg_switch_wal()
    read_file: bool  # may run pg_read_binary_file(text)
    read_all_stats: bool
    read_all_data: bool
    prepared: int  # prepared transactions on the server now
    other_senders: int  # WAL senders serving something other than markship's receiver


def role_facts(conn: Connection) -> RoleFacts:
    row = conn.execute(ROLE_FACTS, {"receiver": RECEIVER_NAME}).fetchone()
    assert row is not None
    return RoleFacts(**row)


def config_file_paths(conn: Connection) -> dict[str, str]:
    """config_file, hba_file and ident_file → their paths; empty when the role may not see
    them (pg_read_all_settings)."""
    return {r["name"]: r["setting"] for r in conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN "
        "('config_file', 'hba_file', 'ident_file')").fetchall()}


def try_read_server_file(conn: Connection, path: str) -> None:
    """Read a file on the server host through SQL (its length only); raises psycopg.Error when
    the role may not."""
    conn.execute("SELECT length(pg_read_binary_file(%s)) AS n", (path,))


def may_connect(conn: Connection, database: str) -> bool:
    """Whether the role may connect to `database` (False when it does not exist)."""
    found = conn.execute("SELECT has_database_privilege(oid, 'CONNECT') AS ok FROM pg_database "
                         "WHERE datname = %s", (database,)).fetchone()
    return found is not None and bool(found["ok"])
