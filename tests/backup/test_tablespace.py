"""A server with a tablespace outside its data directory: backup refuses it in one line before
writing anything (pg_basebackup streams only one tablespace); moved back into pg_default, the
same data backs up and restores."""

from __future__ import annotations

import json

from markship.pg.scratch import chown_to, wait_archived
from tests.support.servers import OS_USER, GroupFactory


def test_backup_refuses_a_tablespace_then_restores_without_it(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    location = group.workdir / "ts-orders"
    location.mkdir()
    chown_to(location, OS_USER)
    alpha.psql(f"CREATE TABLESPACE fast LOCATION '{location}'")
    alpha.psql("CREATE TABLE orders (id int) TABLESPACE fast")
    alpha.psql("INSERT INTO orders SELECT generate_series(1, 100)")

    proc = group.markship("backup")
    assert proc.returncode != 0
    assert "tablespaces outside its data directory: fast" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not any(s["complete"] for s in json.loads(group.ok("list", "--json")))

    alpha.psql("ALTER TABLE orders SET TABLESPACE pg_default")
    alpha.psql("DROP TABLESPACE fast")
    group.ok("backup")
    alpha.psql("INSERT INTO orders SELECT generate_series(101, 150)")
    wait_archived(alpha)
    assert group.restore("alpha").psql("SELECT count(*) FROM orders") == "150"
