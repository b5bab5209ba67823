"""Preflight: can markship do its work on every server, with this role, and this repository?

A check is `ok`, `warn` (markship works, but with more privilege than it needs or without a
nicety) or `fail` (backups, marks or archiving will not work until the named fix is applied).
This module checks each server and its role; preflighthost checks this host (the repository,
the config and key files), and preflightreport holds a check's report line.

What markship runs as the database role, and what that needs from a non-superuser:

- `pg_basebackup` and the agent's `pg_receivewal`: a replication connection (REPLICATION, and a
  `replication` line in pg_hba.conf);
- marks: `pg_create_restore_point(text)` and `pg_switch_wal()` (EXECUTE is revoked from PUBLIC);
  `txid_current()`, `pg_walfile_name()`, `pg_advisory_xact_lock()` are open to everyone;
- stream delivery reads `pg_stat_replication.flush_lsn`, shown only to `pg_read_all_stats`;
- backups capture postgresql.conf, pg_hba.conf and pg_ident.conf: their paths are in settings
  only `pg_read_all_settings` sees, and reading them through SQL needs EXECUTE on
  `pg_read_binary_file(text)` (files outside the data directory: `pg_read_server_files`);
- `[[dump]]`: pg_dump reads every table (`pg_read_all_data`);
- two-phase commit: `resolve` reads the decision table `markship.decisions`.
"""

from __future__ import annotations

import os
import shlex

import psycopg

from markship.client import DECISIONS_TABLE
from markship.config.model import Config, ServerSection
from markship.dr.preflighthost import acting_as, local_checks, os_user_entry
from markship.dr.preflightreport import Check
from markship.errors import MarkshipError
from markship.pg import replication, roles, sql, twophase
from markship.pg.commands import archive_command_problem, expected_archive_command
from markship.timefmt import show


def run_checks(config: Config, servers: list[ServerSection]) -> list[Check]:
    """Every check: the repository and key files first, then each server in turn."""
    checks = local_checks(config)
    two_phase = decisions_table_exists(config)
    for server in servers:
        checks.extend(server_checks(config, server, two_phase))
    return checks


# -- one server -----------------------------------------------------------------------------------

def decisions_table_exists(config: Config) -> bool:
    """Whether the group uses markship's two-phase commit: the decision table exists on the
    barrier server (False when that server cannot be reached: its own lines say so)."""
    barrier = config.barrier_server
    schema, table = DECISIONS_TABLE.split(".")
    try:
        with sql.connect(barrier.conninfo, barrier.name) as conn:
            return twophase.decisions_readable(conn, schema, table) is not None
    except MarkshipError:
        return False


def server_checks(config: Config, server: ServerSection, two_phase: bool) -> list[Check]:
    """Connect as the configured role and check everything markship will ask of it;
    `two_phase` says the group uses two-phase commit (see decisions_table_exists)."""
    name = server.name
    try:
        conn = sql.connect(server.conninfo, name)
    except MarkshipError as exc:
        return [Check(name, "connect", "fail", exc.message, exc.hint)]
    with conn:
        facts = roles.role_facts(conn)
        role = facts.role
        checks = [_connected(name, facts)]
        if facts.in_recovery:
            return checks
        checks.append(_superuser(name, facts))
        checks.append(_replication(server, facts))
        checks.extend(_functions(name, facts))
        checks.append(_archiver(conn, name))
        if _streaming(config):
            checks.append(_receiver_progress(name, facts))
        checks.extend(_settings(config, server, facts))
        checks.extend(_two_phase(conn, config, server, facts, two_phase))
        checks.append(_config_files(conn, server, facts))
        for dump in config.dumps:
            if dump.server == name:
                checks.append(_dump(conn, name, role, dump.dump_name, dump.database, facts))
    return checks


def _connected(name: str, facts: roles.RoleFacts) -> Check:
    if facts.in_recovery:
        return Check(name, "connect", "fail",
                     f"connected as {facts.role}, but the server is in recovery (a standby)",
                     "markship backs up and marks primaries: point its conninfo at the primary")
    return Check(name, "connect", "ok",
                 f"connected as {facts.role} to PostgreSQL {facts.version.split()[0]}, "
                 "a primary")


def _superuser(name: str, facts: roles.RoleFacts) -> Check:
    role = facts.role
    if facts.superuser:
        return Check(name, "superuser", "warn", f"role {role} is a superuser",
                     "markship needs far less: `markship preflight --print-role-sql` prints a "
                     "least-privilege role; use it in the conninfo")
    return Check(name, "superuser", "ok", f"role {role} is not a superuser")


def _replication(server: ServerSection, facts: roles.RoleFacts) -> Check:
    """REPLICATION, and a replication connection that pg_hba.conf lets in (tried for real)."""
    name, role = server.name, facts.role
    if not facts.replication and not facts.superuser:
        return Check(name, "replication", "fail",
                     f"role {role} lacks REPLICATION (pg_basebackup and the WAL receiver need "
                     "it)", f"ALTER ROLE {role} REPLICATION")
    try:
        replication.identify_system(server.conninfo)
    except psycopg.Error as exc:
        detail = sql.refusal(exc)
        if "pg_hba.conf" in detail:
            fix = (f"add `host replication {role} <markship host>/32 scram-sha-256` to "
                   "pg_hba.conf and reload the server")
        elif "max_wal_senders" in detail or "too many" in detail:
            fix = "raise max_wal_senders and restart the server"
        else:
            fix = "check pg_hba.conf `replication` lines and the server log"
        return Check(name, "replication", "fail",
                     f"replication connection as {role} refused ({detail})", fix)
    return Check(name, "replication", "ok",
                 f"role {role} opens replication connections (for pg_basebackup, "
                 "pg_receivewal)")


def _functions(name: str, facts: roles.RoleFacts) -> list[Check]:
    role = facts.role
    found = []
    for key, allowed, function, why in (
            ("restore_point", facts.restore_point, "pg_create_restore_point(text)",
             "group marks"),
            ("switch_wal", facts.switch_wal, "pg_switch_wal()", "mark delivery by WAL switch")):
        if allowed:
            found.append(Check(name, key, "ok", f"role {role} may run {function} ({why})"))
        else:
            found.append(Check(name, key, "fail", f"role {role} may not run {function} ({why})",
                               f"GRANT EXECUTE ON FUNCTION {function} TO {role}"))
    return found


def _archiver(conn: sql.Connection, name: str) -> Check:
    try:
        stats = sql.archiver_stats(conn)
    except psycopg.Error as exc:
        return Check(name, "archiver", "fail", f"cannot read pg_stat_archiver ({sql.refusal(exc)})",
                     "markship status reads it: check the role's privileges")
    failing = (stats.last_failed_time is not None
               and (stats.last_archived_time is None
                    or stats.last_failed_time > stats.last_archived_time))
    if failing:
        return Check(name, "archiver", "fail",
                     f"archiving is failing: {stats.failed_count} failure(s), the last for "
                     f"{stats.last_failed_wal} at {show(stats.last_failed_time)}",
                     "the server log shows archive_command's error")
    archived = (f"{stats.archived_count} archived (last {stats.last_archived_wal})"
                if stats.last_archived_wal else "nothing archived yet")
    return Check(name, "archiver", "ok",
                 f"pg_stat_archiver readable: {archived}, {stats.failed_count} failed")


def _streaming(config: Config) -> bool:
    # With encryption and a directory repository the agent starts no receivers (they would
    # write plain WAL into it); with object storage they write into its spool.
    return config.marks.delivery == "stream" and (
        config.encryption is None or config.repository.on_object_storage)


def _receiver_progress(name: str, facts: roles.RoleFacts) -> Check:
    role = facts.role
    if facts.read_all_stats:
        return Check(name, "receiver_progress", "ok",
                     f"role {role} sees WAL receiver progress (pg_stat_replication.flush_lsn)")
    return Check(name, "receiver_progress", "fail",
                 f"role {role} cannot see WAL receiver progress in pg_stat_replication, so "
                 "every mark falls back to a 16 MB WAL switch",
                 f"GRANT pg_read_all_stats TO {role}")


def _settings(config: Config, server: ServerSection, facts: roles.RoleFacts) -> list[Check]:
    name = server.name
    expected = expected_archive_command(config, name)
    checks = []
    if facts.wal_level in ("replica", "logical"):
        checks.append(Check(name, "wal_level", "ok", f"wal_level = {facts.wal_level}"))
    else:
        checks.append(Check(name, "wal_level", "fail",
                            f"wal_level is {facts.wal_level}: archives cannot restore it",
                            "set wal_level = replica and restart the server"))
    if facts.archive_mode in ("on", "always"):
        checks.append(Check(name, "archive_mode", "ok", f"archive_mode = {facts.archive_mode}"))
    else:
        checks.append(Check(name, "archive_mode", "fail", f"archive_mode is {facts.archive_mode}",
                            f"set archive_mode = on and archive_command = '{expected}', "
                            "then restart the server"))
    if facts.archive_mode != "off":  # else it shows "(disabled)"; archive_mode's fix sets it
        problem = archive_command_problem(facts.archive_command, name, config.source)
        if problem is None:
            problem = _program_problem(facts.archive_command, config.repository.os_user)
        if problem is None:
            checks.append(Check(name, "archive_command", "ok",
                                f"archive_command calls markship wal-push --server {name}"))
        else:
            checks.append(Check(name, "archive_command", "fail", problem,
                                f"set archive_command = '{expected}' and reload the server"))
    needed = 1 + (1 if _streaming(config) else 0)  # pg_basebackup (+ pg_receivewal)
    others = facts.other_senders
    if facts.max_wal_senders >= needed + others:
        checks.append(Check(name, "max_wal_senders", "ok",
                            f"max_wal_senders = {facts.max_wal_senders} (markship needs "
                            f"{needed}, {others} in use by others)"))
    else:
        checks.append(Check(name, "max_wal_senders", "fail",
                            f"max_wal_senders is {facts.max_wal_senders}: markship needs "
                            f"{needed} and {others} are in use by others",
                            f"set max_wal_senders = {needed + others + 2} and restart the "
                            "server"))
    return checks


def _program_problem(command: str, os_user: str) -> str | None:
    """The program archive_command starts must be executable by PostgreSQL's OS user."""
    program = shlex.split(command)[0]
    entry = os_user_entry(os_user)
    if not os.path.isabs(program) or entry is None or not acting_as(entry):
        return None
    if not os.access(program, os.X_OK):
        return f"{program} cannot be run by {os_user}, who runs archive_command"
    return None


def _two_phase(conn: sql.Connection, config: Config, server: ServerSection,
               facts: roles.RoleFacts, two_phase: bool) -> list[Check]:
    """2PC is in use when the decision table exists on the barrier server, or this server
    holds prepared transactions."""
    name, role = server.name, facts.role
    schema, table = DECISIONS_TABLE.split(".")
    barrier = config.barrier_server.name == name
    readable = twophase.decisions_readable(conn, schema, table) if barrier else None
    in_use = two_phase or facts.prepared > 0
    checks = []
    if not in_use:
        checks.append(Check(name, "max_prepared_transactions", "ok",
                            f"max_prepared_transactions = {facts.max_prepared} (two-phase "
                            f"commit not in use: no {DECISIONS_TABLE} table on "
                            f"{config.barrier_server.name})"))
    elif facts.max_prepared > 0:
        checks.append(Check(name, "max_prepared_transactions", "ok",
                            f"max_prepared_transactions = {facts.max_prepared} (two-phase "
                            "commit in use)"))
    else:
        checks.append(Check(name, "max_prepared_transactions", "fail",
                            "max_prepared_transactions is 0 but the group uses two-phase commit",
                            "set max_prepared_transactions (e.g. = max_connections) and "
                            "restart the server"))
    if readable is not None:
        if readable:
            checks.append(Check(name, "decisions", "ok",
                                f"role {role} reads {DECISIONS_TABLE} (markship resolve)"))
        else:
            checks.append(Check(name, "decisions", "fail",
                                f"role {role} cannot read {DECISIONS_TABLE} (markship resolve "
                                "settles in-doubt transactions from it)",
                                f"GRANT USAGE ON SCHEMA {schema} TO {role}; "
                                f"GRANT SELECT ON {DECISIONS_TABLE} TO {role}"))
    return checks


def _config_files(conn: sql.Connection, server: ServerSection,
                  facts: roles.RoleFacts) -> Check:
    """Backups capture postgresql.conf, pg_hba.conf, pg_ident.conf: through SQL, or from disk
    on the server's own host. Without them a backup still works, hence a warning."""
    name, role = server.name, facts.role
    paths = roles.config_file_paths(conn)
    if not paths:
        return Check(name, "config_files", "warn",
                     f"role {role} cannot see where postgresql.conf and pg_hba.conf are, so "
                     "backups capture them only from data_dir on this host",
                     f"GRANT pg_read_all_settings TO {role}")
    unreadable: list[str] = []
    from_disk = 0
    for path in paths.values():
        try:
            roles.try_read_server_file(conn, path)
        except psycopg.Error:
            if os.access(path, os.R_OK):
                from_disk += 1
            else:
                unreadable.append(path)
    if not unreadable:
        how = "from disk on this host" if from_disk else "through SQL"
        return Check(name, "config_files", "ok",
                     f"postgresql.conf, pg_hba.conf, pg_ident.conf readable {how}")
    if not facts.read_file:
        fix = f"GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO {role}"
    else:
        fix = (f"GRANT pg_read_server_files TO {role} (they lie outside the data directory), "
               "or run markship on the server's host")
    return Check(name, "config_files", "warn",
                 f"backups will not capture {', '.join(unreadable)}", fix)


def _dump(conn: sql.Connection, name: str, role: str, dump: str, database: str,
          facts: roles.RoleFacts) -> Check:
    if not roles.may_connect(conn, database):
        return Check(name, f"dump:{dump}", "fail",
                     f"role {role} cannot connect to database {database} (dump {dump})",
                     f"check [[dump]] database, or GRANT CONNECT ON DATABASE {database} TO {role}")
    if not facts.read_all_data:
        return Check(name, f"dump:{dump}", "fail",
                     f"role {role} cannot read every table of {database} (dump {dump})",
                     f"GRANT pg_read_all_data TO {role}")
    return Check(name, f"dump:{dump}", "ok", f"role {role} can dump {database} (dump {dump})")
