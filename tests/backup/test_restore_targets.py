"""Each recovery target restores exactly the rows committed before it: an LSN, a transaction
id (inclusive or not), the backup's consistency point; bad targets are one line."""

from __future__ import annotations

import json

from markship.pg.lsn import parse_lsn
from markship.pg.scratch import ScratchServer, wait_archived
from tests.support.servers import GroupFactory


def _batch(server: ScratchServer, first: int) -> int:
    """Ten rows committed in one transaction; returns its transaction id."""
    out = server.psql(f"BEGIN; INSERT INTO orders SELECT g FROM generate_series({first}, "
                      f"{first + 9}) g; SELECT txid_current(); COMMIT;")
    return int(out.split()[-1])



def test_each_target_restores_the_rows_committed_before_it(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE orders (id int)")
    group.ok("backup")
    _batch(alpha, 1)
    lsn1 = alpha.psql("SELECT pg_current_wal_insert_lsn()")
    xid2 = _batch(alpha, 11)
    _batch(alpha, 21)
    wait_archived(alpha)

    # An LSN between two commits: the rows of the first, none of the second, either way.
    for flags in ((), ("--exclusive",)):
        handle = group.restored("alpha")
        proc = group.markship("restore", "--server", "alpha", "--target-dir",
                              str(handle.data_dir), "--start", "--port", str(handle.port),
                              "--setting", f"unix_socket_directories={handle.base_dir}",
                              "--lsn", lsn1, "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        assert handle.psql("SELECT count(*) FROM orders") == "10", flags
        result = json.loads(proc.stdout)
        if not flags:  # recovery must have replayed at least up to the LSN
            assert result["archive_end_lsn"] == lsn1
            assert parse_lsn(result["recovery_end_lsn"]) >= parse_lsn(lsn1)
    # A transaction id: its rows come back inclusive, not with --exclusive.
    assert group.restore("alpha", "--xid", str(xid2)).psql(
        "SELECT count(*) FROM orders") == "20"
    assert group.restore("alpha", "--xid", str(xid2), "--exclusive").psql(
        "SELECT count(*) FROM orders") == "10"
    # --immediate: the backup as it was taken, none of the later rows.
    assert group.restore("alpha", "--immediate").psql("SELECT count(*) FROM orders") == "0"


def test_bad_targets_are_one_line(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE orders (id int)")
    _batch(alpha, 1)
    group.ok("backup")
    target = str(group.workdir / "never")
    for flags, words in ((("--lsn", "16-B374D848"), "is not an LSN"),
                         (("--lsn", "0/ZZ"), "is not an LSN"),
                         (("--xid", "-5"), "is not a transaction id"),
                         (("--xid", "0"), "is not a transaction id"),
                         (("--lsn", "0/1", "--xid", "7"), "are two recovery targets"),
                         (("--name", "n1", "--exclusive"), "--exclusive applies to"),
                         (("--action", "pause"), "needs a recovery target"),
                         (("--lsn", "0/1"), "is before the end of every backup")):
        proc = group.markship("restore", "--server", "alpha", "--target-dir", target, *flags)
        assert proc.returncode != 0, flags
        assert words in proc.stderr and proc.stderr.count("\n") == 1, (flags, proc.stderr)
        assert "Traceback" not in proc.stderr
