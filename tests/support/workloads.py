"""The money-transfer workload of the mark and drill tests: accounts on every server, moved
between two servers by two-phase commits under the group barrier, so that any mark restores
to a total that adds up."""

from __future__ import annotations

import random

import psycopg

from markship.client import group_transaction, setup_decisions
from markship.pg.scratch import create_ledger
from tests.support.servers import Group

ACCOUNTS = 10
START_BALANCE = 1000
# Accounts 1 and 2 are the test's own in-doubt transactions'; the workload keeps off them: a
# prepared transaction holds its row locks until the test decides it, and a workload transfer
# waiting on one while holding a row the test needs would deadlock across the two servers.
WORKLOAD_ACCOUNTS = (3, ACCOUNTS)


def setup_accounts(group: Group) -> None:
    """`accounts` and `transfers` on every server, and the decision table on the first (the
    barrier server)."""
    for server in group.servers:
        create_ledger(server, ACCOUNTS, START_BALANCE)
    with psycopg.connect(group.servers[0].conninfo(), autocommit=True) as conn:
        setup_decisions(conn)


def transfer(barrier: psycopg.Connection[object], a: psycopg.Connection[object],
             b: psycopg.Connection[object], gid: str, amount: int) -> None:
    """Move `amount` from a random account on `a` to one on `b` (never accounts 1 and 2):
    one two-phase commit under the group barrier."""
    with group_transaction(barrier, "testgroup", gid, [a, b]):
        a.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s",
                  (amount, random.randint(*WORKLOAD_ACCOUNTS)))
        a.execute("INSERT INTO transfers VALUES (%s, %s)", (gid, -amount))
        b.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                  (amount, random.randint(*WORKLOAD_ACCOUNTS)))
        b.execute("INSERT INTO transfers VALUES (%s, %s)", (gid, amount))


def prepare_transfer(a: psycopg.Connection[object], b: psycopg.Connection[object], gid: str,
                     account: int) -> None:
    """A transfer of 7 on `account`, prepared on both servers and left undecided (the
    test decides it, or never does)."""
    for conn, amount in ((a, -7), (b, 7)):
        conn.tpc_begin(gid)
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                     (amount, account))
        conn.execute("INSERT INTO transfers VALUES (%s, %s)", (gid, amount))
        conn.tpc_prepare()
