"""The SQL of markship's least-privilege role: what `markship preflight --print-role-sql`
prints, and what makes every preflight check pass without a superuser (see markship.dr.preflight
for what each grant is for)."""

from __future__ import annotations

from markship.client import DECISIONS_TABLE
from markship.config.model import Config

ROLE = "markship"


def role_sql(config: Config | None, role: str = ROLE) -> str:
    """SQL creating a role that passes every preflight check without being a superuser.

    Run it as a superuser on every server of the group (it is safe to run again).
    """
    dumps = config is not None and bool(config.dumps)
    schema, table = DECISIONS_TABLE.split(".")
    dump_line = (f"GRANT pg_read_all_data TO {role};" if dumps
                 else f"-- with [[dump]] tables in the config: GRANT pg_read_all_data TO {role};")
    return f"""\
-- markship's least-privilege role. Run as a superuser on every server of the group (again
-- after the applications created {DECISIONS_TABLE}); then use user={role} in each conninfo.
--
-- Also, by hand:
--   * a password: \\password {role}   (psql), or ALTER ROLE {role} PASSWORD '...';
--     keep it in ~/.pgpass of the OS user running markship, or in the conninfo (then make the
--     config file unreadable to others);
--   * pg_hba.conf lines for the markship host (pg_basebackup and pg_receivewal connect as
--     `replication`, which `all` does not cover), then SELECT pg_reload_conf();
--       host  all          {role}  192.0.2.10/32  scram-sha-256
--       host  replication  {role}  192.0.2.10/32  scram-sha-256
--
-- Not covered, on purpose: settling in-doubt transactions (markship resolve, restore --group,
-- failover) runs COMMIT/ROLLBACK PREPARED, which PostgreSQL allows only to the role that
-- prepared the transaction or a superuser: give those commands the applications' role or a
-- superuser when prepared transactions remain. `failback prepare` runs ALTER SYSTEM on
-- archive_command, which amounts to running any program as the server's OS user: superuser.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} LOGIN REPLICATION;
    ELSE
        ALTER ROLE {role} LOGIN REPLICATION NOSUPERUSER;
    END IF;
END
$$;

-- group marks: a restore point on every server; a WAL switch delivers it without a receiver
GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO {role};
GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {role};
-- mark delivery by stream: the WAL receiver's flush_lsn in pg_stat_replication
GRANT pg_read_all_stats TO {role};
-- backups capture postgresql.conf, pg_hba.conf, pg_ident.conf: where they are, and reading
-- them (files outside the data directory, as on Debian, also need pg_read_server_files, or
-- markship running on the server's host)
GRANT pg_read_all_settings TO {role};
GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO {role};
-- logical dumps read every table
{dump_line}
-- two-phase commit: markship resolve reads the decision table (on the barrier server)
DO $$
BEGIN
    IF to_regclass('{schema}.{table}') IS NOT NULL THEN
        GRANT USAGE ON SCHEMA {schema} TO {role};
        GRANT SELECT ON {schema}.{table} TO {role};
    END IF;
END
$$;
"""
