"""Recovery never ends short of what the repository holds, and never says ✓ when it did."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from markship.pg.datadir import in_production, postmaster_status
from markship.pg.scratch import ScratchServer, chown_to, wait_archived
from tests.support.servers import MARKSHIP, OS_USER, Group, GroupFactory, run_markship


def _key(workdir: Path, name: str) -> tuple[Path, str]:
    path = workdir / name
    proc = run_markship(None, "key", "create", "--identity-file", str(path))
    assert proc.returncode == 0, proc.stderr
    chown_to(path, OS_USER)
    recipient = next(line.split('"')[1] for line in proc.stdout.splitlines()
                     if line.startswith("recipient"))
    return path, recipient


def _batch(server: ScratchServer, first: int) -> str:
    """1,000 committed rows, archived; returns the segment that holds them."""
    server.psql(f"INSERT INTO orders SELECT g FROM generate_series({first}, {first + 999}) g")
    return wait_archived(server)


def _restore(group: Group, *flags: str) -> tuple[ScratchServer, int, str, str]:
    handle = group.restored("alpha")
    proc = group.markship("restore", "--server", "alpha", "--target-dir", str(handle.data_dir),
                          "--start", "--port", str(handle.port),
                          "--setting", f"unix_socket_directories={handle.base_dir}", *flags)
    return handle, proc.returncode, proc.stdout, proc.stderr


@pytest.mark.reliability("restore --latest after a key rotation the restore site lacks",
                         fault="backup with key A; production switched to recipient B; two "
                               "batches of 1,000 rows archived; restore with only A, then "
                               "with the identity file lost",
                         expected="restore exits non-zero with one line, never ✓; PostgreSQL "
                                  "never promotes short of the archived WAL")
def test_restore_with_a_missing_key_never_promotes_short(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    key_a, recipient_a = _key(group.workdir, "a.key")
    _key_b, recipient_b = _key(group.workdir, "b.key")
    plain = group.config_path.read_text()
    group.config_path.write_text(plain + f'\n[encryption]\nrecipient = "{recipient_a}"\n'
                                 f'identity_file = "{key_a}"\n')
    alpha.psql("CREATE TABLE orders (id int)")
    _batch(alpha, 1)
    group.ok("backup")
    # Production now writes for key B; the restore site still holds only key A.
    group.config_path.write_text(plain + f'\n[encryption]\nrecipient = "{recipient_b}"\n'
                                 f'identity_file = "{key_a}"\n')
    _batch(alpha, 1001)
    _batch(alpha, 2001)

    handle, code, out, err = _restore(group)
    assert code != 0 and "✓" not in out, out
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "could not fetch" in err and "another key" in err, err
    assert not (postmaster_status(handle.data_dir) == "ready" and in_production(handle.data_dir)), \
        "the restored server promoted without the WAL it could not read"

    # A restore site that lost its identity file altogether: one line, nothing started.
    group.config_path.write_text(plain + f'\n[encryption]\nrecipient = "{recipient_b}"\n'
                                 f'identity_file = "{group.workdir / "lost.key"}"\n')
    handle, code, out, err = _restore(group)
    assert code != 0 and "✓" not in out
    assert err.count("\n") == 1 and "lost.key" in err and "not found" in err, err
    assert postmaster_status(handle.data_dir) is None


@pytest.mark.reliability("restore --latest when a WAL fetch fails quietly",
                         fault="restore_command reports the newest archived segment as absent "
                               "(exit 1: a wrapper, an older markship)",
                         expected="markship compares where recovery stopped with the archive: "
                                  "exit non-zero naming both LSNs, server stopped, no ✓")
def test_recovery_that_stopped_short_of_the_archive_is_refused(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE TABLE orders (id int)")
    group.ok("backup")
    _batch(alpha, 1)
    newest = _batch(alpha, 1001)
    fetch = (f"{shlex.quote(str(MARKSHIP))} --config {shlex.quote(str(group.config_path))} "
             "wal-fetch --server alpha %f %p")
    hiding = f"test %f = {newest} && exit 1; {fetch}"

    handle, code, out, err = _restore(group, "--setting", f"restore_command={hiding}")
    assert code != 0 and "✓" not in out, out
    assert "recovery of alpha stopped at" in err and "repository holds WAL up to" in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert postmaster_status(handle.data_dir) is None, "the short server was stopped"

    # The same restore with markship's own restore_command reaches the end, and says where.
    handle, code, out, err = _restore(group, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["recovery_end_lsn"] and result["archive_end_lsn"]
    assert handle.psql("SELECT count(*) FROM orders") == "2000"
