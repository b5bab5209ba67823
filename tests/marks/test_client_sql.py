"""`markship client-sql`: the decision table's DDL that psql runs (twice as well as once), and
the commit protocol as SQL that does what it says."""

from __future__ import annotations

import subprocess

from markship.client import barrier_key
from markship.pg.scratch import ScratchServer, as_user
from tests.support.servers import MARKSHIP, OS_USER, PG_BIN, GroupFactory, run_markship


def psql_script(server: ScratchServer, script: str) -> subprocess.CompletedProcess[str]:
    """`script` run by psql as the PostgreSQL OS user, stopping at the first error."""
    argv = as_user(["sh", "-c", f"{script} | {PG_BIN}/psql -X -q -v ON_ERROR_STOP=1 "
                    f"-d '{server.conninfo()}'"], OS_USER)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          cwd="/")


def test_setup_pipes_into_psql_twice_in_a_row(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    (server,) = group.servers
    for _ in range(2):  # from / and without --config: the DDL needs no config file
        piped = psql_script(server, f"{MARKSHIP} client-sql --setup")
        assert piped.returncode == 0, piped.stderr
        assert "ERROR" not in piped.stderr
    assert server.psql("SELECT to_regclass('markship.decisions') IS NOT NULL") == "t"
    server.psql("INSERT INTO markship.decisions (gid) VALUES ('kept')")
    again = psql_script(server, f"{MARKSHIP} client-sql --setup")
    assert again.returncode == 0, again.stderr
    assert server.psql("SELECT gid FROM markship.decisions") == "kept"


def test_the_protocol_commits_a_prepared_transaction(pg_group: GroupFactory) -> None:
    """One server is barrier and participant at once, so psql can run the printed protocol
    as it stands after a transaction doing some work."""
    group = pg_group(1)
    (server,) = group.servers
    protocol = group.ok("client-sql", "--protocol")
    assert f"pg_advisory_lock_shared({barrier_key('testgroup')})" in protocol
    assert "CREATE" not in protocol
    server.psql("CREATE TABLE t (x int)")
    work = "printf 'BEGIN; INSERT INTO t VALUES (1);\\n'"
    setup = f"{MARKSHIP} client-sql --setup"
    ran = psql_script(server, f"{{ {setup}; {work}; {MARKSHIP} --config "
                              f"{group.config_path} client-sql --protocol; }}")
    assert ran.returncode == 0, ran.stderr
    assert server.psql("SELECT count(*) FROM t") == "1"
    assert server.psql("SELECT gid FROM markship.decisions") == "transfer-42"
    assert server.psql("SELECT count(*) FROM pg_prepared_xacts") == "0"


def test_without_a_choice_both_are_printed(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    both = group.ok("client-sql")
    assert both.index("CREATE TABLE IF NOT EXISTS markship.decisions") \
        < both.index("PREPARE TRANSACTION")
    alone = run_markship(None, "client-sql", "--setup")
    assert alone.returncode == 0, alone.stderr
    assert "PREPARE" not in alone.stdout and "'transfer-42'" not in alone.stdout
