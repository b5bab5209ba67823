"""Production's repository gone, its copy ([[repository.copy]]) still there: the DR site goes
on reading the copy — standbys keep replaying, wal-fetch serves WAL, a restore and a failover
bring back every row committed before their target."""

from __future__ import annotations

import json

import pytest

from markship.pg.datadir import stopped_at
from markship.pg.scratch import chown_to
from tests.support.checks import complete_marks
from tests.support.fingerprints import Ledger
from tests.support.s3 import S3Server, new_store
from tests.support.servers import (
    OS_USER,
    Group,
    GroupFactory,
    add_dr_site,
    new_mark,
    run_markship,
)


@pytest.mark.reliability("primary repository gone, a copy up",
                         fault="production's repository disappears after the copy was synced "
                               "(a directory renamed away, or its S3 server stopped); "
                               "production dies",
                         expected="wal-fetch, restore, a drill and failover read the copy: the "
                                  "restored servers and the promoted standbys hold every row "
                                  "committed before their target; wal-fetch exits 1 only past "
                                  "the copy's last segment; the failover is recorded in the "
                                  "copy")
@pytest.mark.parametrize("primary", ["directory", "s3"])
def test_restore_and_failover_read_the_copy_when_the_repository_is_gone(
        pg_group: GroupFactory, own_s3_server: S3Server, primary: str) -> None:
    group = pg_group(2)
    moto = own_s3_server
    if primary == "s3":
        _repository_in_s3(group, moto)
    offsite = group.workdir / "offsite"
    group.config_path.write_text(group.config_path.read_text() + (
        f'\n[[repository.copy]]\nname = "offsite"\npath = "{offsite}"\n'))
    ledger = Ledger(group)
    ledger.commit(20)
    group.ok("backup")
    standbys = add_dr_site(group)
    group.ok("standby", "create")
    rows = ledger.commit(30)
    mark = new_mark(group)
    assert complete_marks(group)[-1] == mark
    group.ok("repository", "sync")  # what the agent does every few seconds

    # The disaster: production dies, and its repository is gone with it.
    for server in group.servers:
        server.kill9()
    if primary == "s3":
        moto.stop()
    else:
        group.repo.rename(group.workdir / "repo-lost")
    shown = group.markship("status", "--json")
    assert shown.stdout, shown.stderr
    status = json.loads(shown.stdout)
    assert {r["name"]: r["reachable"] for r in status["repositories"]} == \
        {"primary": False, "offsite": True}

    # wal-fetch, as a restore_command: a segment from the copy; past its end, exit 1.
    wal = next((offsite / "wal" / "alpha").glob("0*/*.zst")).name[:24]
    dest = group.workdir / "fetched"
    got = run_markship(group.config_path, "wal-fetch", "--server", "alpha", wal, str(dest))
    assert got.returncode == 0 and dest.stat().st_size == 16 << 20, got.stderr
    past = run_markship(group.config_path, "wal-fetch", "--server", "alpha",
                        "0000000100000001000000FF", str(dest), user=OS_USER)
    assert (past.returncode, past.stderr) == (1, "")  # the copy's end is the end

    # A restore of one server, to the mark, entirely from the copy.
    restored = group.restored("alpha")
    proc = group.markship("restore", "--server", "alpha", "--name", mark, "--target-dir",
                          str(restored.data_dir), "--start", "--port", str(restored.port),
                          "--setting", f"unix_socket_directories={restored.base_dir}")
    assert proc.returncode == 0, proc.stderr
    assert "restoring from the copy" in proc.stderr  # the operator is told
    assert Ledger.count_on(restored) == rows

    # A recovery drill: the group restored to the mark on scratch servers, checked, from the
    # copy, its report stored in the copy.
    parent = group.workdir / "drills"
    parent.mkdir()
    chown_to(parent, OS_USER)
    checks = group.workdir / "rows.sql"
    checks.write_text(f"[*] SELECT count(*) = {rows} FROM ledger\n")
    drill = group.markship("drill", "--mark", mark, "--check-sql", str(checks), "--work-dir",
                           str(parent), "--json")
    assert drill.returncode == 0, drill.stderr
    assert json.loads(drill.stdout)["ok"]
    assert list((offsite / "drills").glob("*.md"))

    # The failover: every standby to the mark, from the copy.
    proc = group.markship("failover", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mark"] == mark
    for name, sb in standbys.items():
        assert stopped_at(sb.data_dir) == f'at restore point "{mark}"', name
        assert Ledger.count_on(sb) == rows, name
    assert list((offsite / "failovers").glob("*.json"))  # recorded where it can be read
    if primary == "directory":
        assert not group.repo.exists()  # never re-created where production's repository was


def _repository_in_s3(group: Group, moto: S3Server) -> None:
    """The group's repository in a bucket on moto's server instead of its directory."""
    moto.start()
    store = new_store(moto, group.workdir)
    group.config_path.write_text(group.config_path.read_text().replace(
        f'path = "{group.repo}"\n', store.config_lines()))
