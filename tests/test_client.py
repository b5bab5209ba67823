"""markship.client, the applications' two-phase commit helper: the README's examples run as
written against two real servers, and commit on both servers or on neither."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from markship.client import group_transaction
from markship.pg.scratch import ScratchServer
from tests.support.servers import GroupFactory

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example(name: str) -> str:
    """The fenced python block right after `<!-- example: NAME -->` in README.md."""
    found = re.search(rf"<!-- example: {re.escape(name)} -->\n```python\n(.*?)\n```\n",
                      README.read_text(), re.DOTALL)
    assert found, f"README.md has no python block marked <!-- example: {name} -->"
    return found.group(1) + "\n"


def run_example(name: str, workdir: Path, orders: ScratchServer,
                payments: ScratchServer) -> subprocess.CompletedProcess[str]:
    """Run the README example `name` as an application would: its own Python process, with
    the connection strings it reads from the environment pointing at the two servers."""
    script = workdir / f"{name}.py"
    script.write_text(readme_example(name))
    env = {**os.environ,
           "ORDERS_DSN": orders.conninfo(), "PAYMENTS_DSN": payments.conninfo(),
           "ORDERS_URL": f"postgresql+psycopg://postgres@{orders.host}:{orders.port}/postgres",
           "PAYMENTS_URL":
               f"postgresql+psycopg://postgres@{payments.host}:{payments.port}/postgres"}
    return subprocess.run([sys.executable, str(script)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def restart_with_prepared_transactions(server: ScratchServer, allowed: int) -> None:
    """`max_prepared_transactions = allowed` (0: the server refuses every PREPARE)."""
    server.stop()
    server.write_settings({"max_prepared_transactions": str(allowed)})
    server.start()


def prepared(server: ScratchServer) -> str:
    return server.psql("SELECT string_agg(gid, ',') FROM pg_prepared_xacts")


@pytest.mark.parametrize("example", ["2pc-psycopg", "2pc-sqlalchemy", "2pc-psycopg-async"])
def test_readme_example_commits_on_both_servers_or_on_neither(pg_group: GroupFactory,
                                                              example: str) -> None:
    group = pg_group(2)
    orders, payments = group.servers  # orders (the first [[server]]) is the barrier server

    restart_with_prepared_transactions(payments, 0)
    refused = run_example(example, group.workdir, orders, payments)
    assert refused.returncode != 0, refused.stdout
    assert "prepared transactions are disabled" in refused.stderr
    # orders had prepared it: rolled back, nothing left in doubt, no decision recorded
    assert orders.psql("SELECT count(*) FROM orders") == "0"
    assert payments.psql("SELECT count(*) FROM payments") == "0"
    assert prepared(orders) == prepared(payments) == ""
    assert orders.psql("SELECT count(*) FROM markship.decisions") == "0"

    restart_with_prepared_transactions(payments, 10)
    done = run_example(example, group.workdir, orders, payments)
    assert done.returncode == 0, done.stderr
    assert orders.psql("SELECT id, total FROM orders") == "42|10"
    assert payments.psql("SELECT order_id, amount FROM payments") == "42|10"
    assert orders.psql("SELECT gid FROM markship.decisions") == "order-42"
    assert prepared(orders) == prepared(payments) == ""


def test_without_the_decision_table_nothing_commits(pg_group: GroupFactory) -> None:
    """The README's first example once failed here: a decision that cannot be recorded rolls
    every prepared participant back and says which table is missing."""
    group = pg_group(2)
    alpha, bravo = group.servers
    for server in group.servers:
        server.psql("CREATE TABLE t (x int)")
    with psycopg.connect(alpha.conninfo(), autocommit=True) as barrier, \
            psycopg.connect(alpha.conninfo()) as a, psycopg.connect(bravo.conninfo()) as b, \
            pytest.raises(psycopg.errors.UndefinedTable, match=r"markship\.decisions"), \
            group_transaction(barrier, "testgroup", "no-table", [a, b]):
        a.execute("INSERT INTO t VALUES (1)")
        b.execute("INSERT INTO t VALUES (1)")
    assert alpha.psql("SELECT count(*) FROM t") == bravo.psql("SELECT count(*) FROM t") == "0"
    assert prepared(alpha) == prepared(bravo) == ""


def test_a_barrier_connection_outside_autocommit_is_refused(pg_group: GroupFactory) -> None:
    """Without autocommit the decision would not commit on its own: refused before any work."""
    group = pg_group(1)
    (alpha,) = group.servers
    with psycopg.connect(alpha.conninfo()) as barrier, psycopg.connect(alpha.conninfo()) as a, \
            pytest.raises(psycopg.ProgrammingError, match="autocommit"), \
            group_transaction(barrier, "testgroup", "never", [a]):
        pytest.fail("the block must not run")
    assert prepared(alpha) == ""
