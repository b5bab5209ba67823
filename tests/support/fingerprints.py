"""What a test writes into its servers and compares afterwards: pgbench's tables and their
fingerprint, and a ledger of rows committed in order on every server."""

from __future__ import annotations

from markship.pg.scratch import ScratchServer
from tests.support.servers import Group

FINGERPRINT_SQL = """
SELECT (SELECT count(*) FROM pgbench_accounts) || ' accounts, '
    || (SELECT count(*) FROM pgbench_history) || ' history rows, balance sum '
    || (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ', md5 '
    || (SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts)
"""


def pgbench_fingerprint(server: ScratchServer, dbname: str = "postgres") -> str:
    """Counts, balance sum and a digest of pgbench's tables: equal strings, equal data."""
    return server.psql(FINGERPRINT_SQL, dbname)


def load_pgbench(server: ScratchServer, scale: int = 1) -> None:
    """pgbench's tables at `scale` (1: 100,000 accounts)."""
    server.run("pgbench", "-i", "-s", str(scale), "-q", "-d", server.conninfo())


class Ledger:
    """Rows committed on every server of a group, numbered in commit order: `commit(n)`
    adds n rows to each; `count_on(server)` is what a restored server holds."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.committed = 0
        for server in group.servers:
            server.psql("CREATE TABLE IF NOT EXISTS ledger (id bigint PRIMARY KEY, "
                        "note text NOT NULL DEFAULT repeat('x', 200))")

    def commit(self, rows: int) -> int:
        first = self.committed + 1
        self.committed += rows
        for server in self.group.servers:
            server.psql(f"INSERT INTO ledger (id) SELECT g FROM "
                        f"generate_series({first}, {self.committed}) g")
        return self.committed

    @staticmethod
    def count_on(server: ScratchServer) -> int:
        """Rows 1..N with no hole: N (asserts there is no hole)."""
        count, top = server.psql("SELECT count(*), coalesce(max(id), 0) FROM ledger").split("|")
        assert count == top, f"ledger on {server.name} has holes: {count} rows, max id {top}"
        return int(count)
