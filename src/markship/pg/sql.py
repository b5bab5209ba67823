"""Connections to PostgreSQL (psycopg 3) and the queries markship asks of any server.

markship sends SQL only from markship.pg: this module (connect, server facts, settings, the
archiver, the mark's statements, statements the config declares), and beside it one module
per topic — recovery (replay positions), replication (the WAL receiver, replication
connections), roles (what the connected role may do), twophase (prepared transactions and the
decision table) — plus fanout, which sends one statement on many connections at once, and
scratch (throwaway servers). markship.client, the two-phase commit helper applications import,
stays standalone with its own SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from markship.errors import ConfigError, MarkshipError, ServerError, first_line
from markship.pg import marksql
from markship.pg.conninfo import parse, scrub, secrets_of
from markship.pg.lsn import parse_lsn

Connection = psycopg.Connection[dict[str, Any]]


def connect(conninfo: str, server: str, timeout: int = 5) -> Connection:
    """Open an autocommit connection; raise ServerError naming the server when it fails.

    libpq's messages may quote a fragment of the conninfo: a malformed one is refused without
    its detail (ConfigError), and a password is scrubbed from any other message.
    """
    try:
        return psycopg.connect(conninfo, connect_timeout=timeout, autocommit=True,
                               application_name="markship", row_factory=dict_row)
    except psycopg.Error as exc:
        raise connect_error(conninfo, server, first_line(exc)) from None


def connect_error(conninfo: str, server: str, message: str) -> MarkshipError:
    """What a failed connection to `server` raises (`message`: libpq's first line): a
    ConfigError without detail for a malformed conninfo, else a ServerError with every
    password scrubbed. Also for markship.pg.libpq's connections (the lean `markship mark`)."""
    try:
        parse(conninfo)
    except ConfigError as bad:  # its detail would quote the conninfo
        return ConfigError(f"the conninfo of server {server} is not valid libpq syntax",
                           bad.hint)
    detail = scrub(message, secrets_of(conninfo))
    return ServerError(f"cannot connect to server {server}: {detail}",
                       "check that it is running and its conninfo in the config")


def refusal(exc: BaseException) -> str:
    """One line for a refused connection: what the server said after `FATAL:` (libpq puts the
    address before it), else markship.errors.first_line."""
    for line in str(exc).strip().splitlines():
        if "FATAL:" in line:
            return line.split("FATAL:", 1)[1].strip()
    return first_line(exc)


@dataclass(frozen=True)
class ServerFacts:
    """What markship needs to know about a server before backing it up."""

    version_num: int
    version: str
    system_identifier: int
    wal_segment_size: int
    timeline: int
    current_lsn: int
    in_recovery: bool
    archive_mode: str
    archive_command: str
    config_files: dict[str, str]


def facts(conn: Connection) -> ServerFacts:
    row = conn.execute(
        """
        SELECT current_setting('server_version_num')::int AS version_num,
               current_setting('server_version') AS version,
               (SELECT system_identifier FROM pg_control_system()) AS sysid,
               current_setting('wal_segment_size') AS segsize,
               (SELECT timeline_id FROM pg_control_checkpoint()) AS timeline,
               pg_is_in_recovery() AS in_recovery,
               CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                    ELSE pg_current_wal_lsn() END::text AS lsn,
               current_setting('archive_mode') AS archive_mode,
               current_setting('archive_command') AS archive_command
        """
    ).fetchone()
    assert row is not None
    files: dict[str, str] = {}
    for setting in ("config_file", "hba_file", "ident_file"):
        value = conn.execute(
            "SELECT setting FROM pg_settings WHERE name = %s", (setting,)
        ).fetchone()
        if value and value["setting"]:
            files[setting] = value["setting"]
    return ServerFacts(
        version_num=row["version_num"],
        version=row["version"],
        system_identifier=int(row["sysid"]),
        wal_segment_size=_size_setting(row["segsize"]),
        timeline=int(row["timeline"]),
        current_lsn=parse_lsn(row["lsn"]),
        in_recovery=bool(row["in_recovery"]),
        archive_mode=row["archive_mode"],
        archive_command=row["archive_command"],
        config_files=files,
    )


@dataclass(frozen=True)
class Tablespace:
    name: str
    location: str


def tablespaces(conn: Connection) -> dict[str, Tablespace]:
    """The server's tablespaces outside its data directory: OID (as text) → name and location
    (pg_default and pg_global live inside it, and so do in-place ones, whose location is
    relative)."""
    rows = conn.execute("SELECT oid::text AS oid, spcname, pg_tablespace_location(oid) AS "
                        "location FROM pg_tablespace WHERE spcname NOT IN ('pg_default', "
                        "'pg_global') ORDER BY oid").fetchall()
    return {row["oid"]: Tablespace(row["spcname"], row["location"]) for row in rows
            if row["location"].startswith("/")}


def _size_setting(text: str) -> int:
    units = {"kB": 1024, "MB": 1024**2, "GB": 1024**3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(text[: -len(unit)]) * factor
    return int(text)


def read_server_file(conn: Connection, path: str) -> bytes | None:
    """Read a file on the server host through SQL; None when the role may not."""
    try:
        row = conn.execute("SELECT pg_read_binary_file(%s) AS data", (path,)).fetchone()
    except psycopg.Error:
        return None
    return bytes(row["data"]) if row else None


@dataclass(frozen=True)
class ArchiverStats:
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    current_lsn: int
    current_wal_file: str
    timeline: int


def archiver_stats(conn: Connection) -> ArchiverStats:
    row = conn.execute(
        """
        SELECT a.archived_count, a.last_archived_wal, a.last_archived_time,
               a.failed_count, a.last_failed_wal, a.last_failed_time,
               pg_current_wal_lsn()::text AS lsn,
               pg_walfile_name(pg_current_wal_lsn()) AS walfile,
               (SELECT timeline_id FROM pg_control_checkpoint()) AS timeline
        FROM pg_stat_archiver a
        """
    ).fetchone()
    assert row is not None
    return ArchiverStats(
        archived_count=row["archived_count"],
        last_archived_wal=row["last_archived_wal"],
        last_archived_time=row["last_archived_time"],
        failed_count=row["failed_count"],
        last_failed_wal=row["last_failed_wal"],
        last_failed_time=row["last_failed_time"],
        current_lsn=parse_lsn(row["lsn"]),
        current_wal_file=row["walfile"],
        timeline=int(row["timeline"]),
    )


def settings_named(conn: Connection, names: list[str]) -> dict[str, str]:
    """name → setting for those of `names` the role may see."""
    rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                        (names,)).fetchall()
    return {r["name"]: r["setting"] for r in rows}


def data_size_bytes(conn: Connection) -> int | None:
    """The size of every database of the server together; None when it reports none."""
    row = conn.execute("SELECT sum(pg_database_size(oid))::bigint AS b "
                       "FROM pg_database").fetchone()
    return int(row["b"]) if row and row["b"] is not None else None


@dataclass(frozen=True)
class HostFiles:
    """The server host's /proc/cpuinfo and /proc/meminfo, as text."""

    cpuinfo: str
    meminfo: str


def host_files(conn: Connection) -> HostFiles | None:
    """Read /proc/cpuinfo and /proc/meminfo through the server, in a transaction of its own.

    Raises psycopg.Error when the role may not read them (pg_read_server_files or superuser).
    """
    with conn.transaction():
        row = conn.execute("SELECT pg_read_file('/proc/cpuinfo') AS c, "
                           "pg_read_file('/proc/meminfo') AS m").fetchone()
    return None if row is None else HostFiles(cpuinfo=row["c"], meminfo=row["m"])


def in_recovery(conn: Connection) -> bool:
    row = conn.execute("SELECT pg_is_in_recovery() AS r").fetchone()
    return bool(row and row["r"])


# The mark's statements (run on every server at once by markship.pg.fanout) live in
# markship.pg.marksql, which the lean path of `markship mark` imports without psycopg.
RESTORE_POINT = marksql.RESTORE_POINT
SWITCH_WAL = marksql.SWITCH_WAL


def switch_wal(conn: Connection) -> None:
    """pg_switch_wal(): close the current segment so the archiver takes it now (a server
    that wrote nothing since the last switch keeps its segment)."""
    conn.execute(SWITCH_WAL)


def switch_wal_file(conn: Connection) -> str:
    """pg_switch_wal(), and the name of the segment it closed (the one the archiver takes
    next; the segment before the current position when nothing was written since the last
    switch)."""
    row = conn.execute("SELECT pg_walfile_name(pg_switch_wal()) AS name").fetchone()
    assert row is not None
    return str(row["name"])


# -- changes, and statements the config declares -------------------------------------------------


def set_archiving(conn: Connection, archive_command: str) -> None:
    """ALTER SYSTEM SET archive_mode = on and `archive_command` (postgresql.auto.conf: the
    server applies them when restarted)."""
    conn.execute("ALTER SYSTEM SET archive_mode = 'on'")
    conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(
        sql.Literal(archive_command)))


def run_statement(conn: Connection, statement: str) -> None:
    """Run one statement the config declares, sent as given (no parameters); raises
    psycopg.Error when it fails."""
    conn.execute(statement.encode())


def read_only_session(conn: Connection) -> None:
    """Make the session read-only, with statements cut off after 10 minutes."""
    conn.execute("SET default_transaction_read_only = on")
    conn.execute("SET statement_timeout = '10min'")


def query_values(conn: Connection, query: str) -> list[list[Any]]:
    """The rows of one query given as text (each row's values, one per distinct column name);
    none for a statement that returns no rows. Raises psycopg.Error when it fails."""
    cursor = conn.execute(query.encode())
    rows = cursor.fetchall() if cursor.description is not None else []
    return [list(row.values()) for row in rows]
