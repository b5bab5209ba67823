"""Production's repository gone, its copy ([[repository.copy]]) still there: the DR site goes
on reading the copy — standbys keep replaying, wal-fetch serves WAL, a restore and a failover
bring back every row committed before their target."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from markship.pg.datadir import stopped_at
from markship.pg.scratch import as_user, chown_to
from tests.support.checks import complete_marks, switch_wal, wait_for
from tests.support.fingerprints import Ledger
from tests.support.netcut import Blackhole, Knocks
from tests.support.s3 import S3Server, new_store
from tests.support.servers import (
    MARKSHIP,
    OS_USER,
    Group,
    GroupFactory,
    add_dr_site,
    markship_ok,
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
    mark = new_mark(group, complete=True)
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
    assert _drill(group, mark, rows)["ok"]
    assert list((offsite / "drills").glob("*.md"))

    # The failover: every standby to the mark, from the copy.
    proc = group.markship("failover")
    assert proc.returncode == 0, proc.stderr
    # Promoted, but not protected: the new primaries cannot archive, one line says why.
    lost = [line for line in proc.stdout.splitlines() if line.startswith("✗")]
    assert len(lost) == 1 and "alpha (127.0.0.1:" in lost[0] and "bravo" in lost[0], proc.stdout
    assert "the repository cannot be written" in lost[0], lost
    records = [json.loads(p.read_text())["body"]
               for p in (offsite / "failovers").glob("*.json")]
    assert [r["mark"] for r in records] == [mark]  # recorded where it can be read
    for state in records[0]["report"]["archiving"]:
        assert not state["ok"] and "the repository cannot be written" in state["problem"], state
    steps = {s["title"]: s for s in json.loads(run_markship(
        group.workdir / "markship.dr.toml", "checklist", "--json").stdout)}
    assert steps["Ship the WAL (log shipping) continuously"]["state"] == "✗", steps
    assert steps["Store backups and WAL where they survive the primary site"]["state"] == "✗"
    for name, sb in standbys.items():
        assert stopped_at(sb.data_dir) == f'at restore point "{mark}"', name
        assert Ledger.count_on(sb) == rows, name
    if primary == "directory":
        assert not group.repo.exists()  # never re-created where production's repository was


def _drill(group: Group, mark: str, rows: int) -> dict[str, Any]:
    """A recovery drill of `mark` checking the ledger's `rows`; its JSON report."""
    parent = group.workdir / "drills"
    parent.mkdir()
    chown_to(parent, OS_USER)
    checks = group.workdir / "rows.sql"
    checks.write_text(f"[*] SELECT count(*) = {rows} FROM ledger\n")
    drill = group.markship("drill", "--mark", mark, "--check-sql", str(checks), "--work-dir",
                           str(parent), "--json")
    assert drill.returncode == 0, drill.stderr
    return dict(json.loads(drill.stdout))


def _repository_in_s3(group: Group, moto: S3Server) -> None:
    """The group's repository in a bucket on moto's server instead of its directory."""
    moto.start()
    store = new_store(moto, group.workdir)
    group.config_path.write_text(group.config_path.read_text().replace(
        f'path = "{group.repo}"\n', store.config_lines()))


@pytest.mark.reliability("repository back after the DR site wrote to its copy",
                         fault="production's repository unreachable (a directory unmounted, "
                               "or its S3 endpoint cut) while the DR site restores and drills "
                               "from the copy; then it comes back",
                         expected="`repository sync` brings back to the repository what was "
                                  "written to the copy meanwhile (journal entries, the drill's "
                                  "record and report); the repository alone, without the "
                                  "copy, then shows them, its journal verifies, and a restore "
                                  "from it alone reaches the mark with its rows")
@pytest.mark.parametrize("repository_kind", ["fs", pytest.param("s3-relay", marks=pytest.mark.s3)])
def test_what_the_dr_site_wrote_to_the_copy_is_brought_back_to_the_repository(
        pg_group: GroupFactory, request: pytest.FixtureRequest, repository_kind: str) -> None:
    group = pg_group(2)
    primary_only = group.workdir / "primary-only.toml"  # the repository, no copy behind it
    primary_only.write_text(group.config_path.read_text())
    primary_only.chmod(0o644)
    # The copy: a directory, or (with the repository in S3) a bucket of its own.
    owed: Callable[[], list[str]]
    if repository_kind == "fs":
        offsite = group.workdir / "offsite"
        where = f'path = "{offsite}"\n'

        def owed() -> list[str]:
            return [str(p.relative_to(offsite)) for p in offsite.glob("owed/**/*")
                    if p.is_file()]
    else:
        credentials = group.workdir / "offsite-s3"
        credentials.mkdir()
        chown_to(credentials, OS_USER)
        store = new_store(request.getfixturevalue("s3_server"), credentials)
        request.addfinalizer(store.drop)
        where = store.config_lines()

        def owed() -> list[str]:
            return store.stored_keys("owed/")
    group.config_path.write_text(group.config_path.read_text() + (
        f'\n[[repository.copy]]\nname = "offsite"\n{where}'))
    ledger = Ledger(group)
    ledger.commit(20)
    group.ok("backup")
    rows = ledger.commit(30)
    mark = new_mark(group, complete=True)
    group.ok("repository", "sync")

    # The repository goes away; the DR site restores and drills from the copy meanwhile.
    if repository_kind == "fs":
        away = group.workdir / "repo-away"
        group.repo.rename(away)
    else:
        relay = request.getfixturevalue("s3_relay")
        relay.cut()
    restored = group.restored("alpha")
    proc = group.markship("restore", "--server", "alpha", "--name", mark, "--target-dir",
                          str(restored.data_dir))
    assert proc.returncode == 0, proc.stderr
    drill_id = str(_drill(group, mark, rows)["id"])
    assert [k for k in owed() if ".md/" in k]  # the drill's report, noted as owed

    # The repository is back: one sync brings back what the copy holds for it.
    if repository_kind == "fs":
        away.rename(group.repo)
    else:
        relay.restore()
    assert _owed_shown(group) >= 4  # `status` says what the copy owes
    synced = group.markship("repository", "sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert _owed_shown(group) == 0
    report = json.loads(synced.stdout)["copies"][0]
    assert report["conflicts"] == []
    assert report["returned_objects"] >= 4  # 2 journal entries, the drill's record and report
    assert owed() == []  # settled

    # The repository alone holds it all now.
    entries = json.loads(markship_ok(primary_only, "journal", "--json"))
    from_copy = [e["command"] for e in entries if e["objects"].get("from_copy") == "offsite"]
    assert any(c.startswith("restore") for c in from_copy), entries
    assert any(c.startswith("drill") for c in from_copy), entries
    markship_ok(primary_only, "journal", "verify")
    assert drill_id in markship_ok(primary_only, "drills", "--json")
    again = group.restored("alpha")
    proc = run_markship(primary_only, "restore", "--server", "alpha", "--name", mark,
                        "--target-dir", str(again.data_dir), "--start", "--port",
                        str(again.port), "--setting",
                        f"unix_socket_directories={again.base_dir}")
    assert proc.returncode == 0, proc.stderr
    assert Ledger.count_on(again) == rows


def _owed_shown(group: Group) -> int:
    shown = group.markship("status", "--json")
    assert shown.stdout, shown.stderr
    copies = {r["name"]: r for r in json.loads(shown.stdout)["repositories"]}
    return int(copies["offsite"]["owed_objects"])


# What a DR-site process writing through the copies does while the repository is gone, as
# the postgres user: a mark, then every WAL file PostgreSQL could not archive (its .ready
# files), both through the fallback writer — the objects land in the copy, noted as owed.
_WRITE_THROUGH_THE_COPY = """
import glob, os, sys
from markship.config import model
from markship.marks.take import GroupConnections, take_mark
from markship.repository.backends import location_of, open_repository
from markship.repository.copies import open_copies
from markship.repository.fallback import Fallback
from markship.wal.push import push

config = model.load(sys.argv[1])
repo = Fallback(open_repository(location_of(config.repository)),
                [c.repo for c in open_copies(config)])
conns = GroupConnections(config)
try:
    mark = take_mark(config, repo, conns).record.name
finally:
    conns.close()
for server in config.servers:
    for ready in sorted(glob.glob(f"{server.data_dir}/pg_wal/archive_status/*.ready")):
        name = os.path.basename(ready)[: -len(".ready")]
        push(repo, server.name, f"{server.data_dir}/pg_wal/{name}")
print(mark)
"""


@pytest.mark.reliability("WAL and a mark only in the copy, repository back",
                         fault="the repository unmounted under load; WAL and a mark written "
                               "through the copies land in the copy only; production dies; "
                               "the repository comes back",
                         expected="`repository sync` brings the WAL and the mark back: the "
                                  "repository alone (no copy configured) lists the mark "
                                  "complete and a restore from it reaches the mark with every "
                                  "row committed before it")
def test_wal_and_a_mark_only_in_the_copy_make_the_repository_whole_again(
        pg_group: GroupFactory) -> None:
    group = pg_group(2)
    primary_only = group.workdir / "primary-only.toml"
    primary_only.write_text(group.config_path.read_text())
    primary_only.chmod(0o644)
    offsite = group.workdir / "offsite"
    group.config_path.write_text(group.config_path.read_text() + (
        f'\n[[repository.copy]]\nname = "offsite"\npath = "{offsite}"\n'))
    ledger = Ledger(group)
    ledger.commit(20)
    group.ok("backup")
    group.ok("repository", "sync")

    # The repository becomes unreachable: a share whose permissions were taken away (a
    # directory renamed away would not do: wal-push, which writes to the repository only,
    # creates a fresh one in its place and archives into it).
    mode = group.repo.stat().st_mode
    os.chown(group.repo, 0, 0)
    group.repo.chmod(0o700)
    rows = ledger.commit(40)  # archiving fails now: PostgreSQL keeps the WAL in pg_wal
    wrote = subprocess.run(
        as_user([str(MARKSHIP.parent / "python"), "-c", _WRITE_THROUGH_THE_COPY,
                 str(group.config_path)], OS_USER),
        capture_output=True, text=True, timeout=300, check=False)
    assert wrote.returncode == 0, wrote.stderr
    mark = wrote.stdout.strip()
    assert (offsite / "marks" / f"{mark}.json").exists()
    assert not (group.repo / "marks" / f"{mark}.json").exists()
    for server in group.servers:  # production dies before its archiver could catch up
        server.kill9()
    only_in_copy = {p.name for p in (offsite / "wal").rglob("*.zst")} - \
        {p.name for p in (group.repo / "wal").rglob("*.zst")}
    assert only_in_copy  # the hole a repository-only restore would fall into

    chown_to(group.repo, OS_USER)
    group.repo.chmod(mode)
    group.ok("repository", "sync")

    held = {p.name for p in (group.repo / "wal").rglob("*.zst")}
    assert only_in_copy <= held
    listed = json.loads(markship_ok(primary_only, "marks", "--json", "--limit", "0"))
    assert [m["complete"] for m in listed if m["name"] == mark] == [True]
    restored = group.restored("alpha")
    proc = run_markship(primary_only, "restore", "--server", "alpha", "--name", mark,
                        "--target-dir", str(restored.data_dir), "--start", "--port",
                        str(restored.port), "--setting",
                        f"unix_socket_directories={restored.base_dir}")
    assert proc.returncode == 0, proc.stderr
    assert Ledger.count_on(restored) == rows


@pytest.mark.s3
@pytest.mark.reliability("production's repository dropping packets at the DR site",
                         fault="the S3 endpoint of production's repository answers nothing "
                               "(a network that drops packets: no refusal, every connection "
                               "waits for its timeout) while PostgreSQL fetches WAL from the "
                               "copy, one wal-fetch per segment",
                         expected="the first wal-fetch waits for the endpoint once and serves "
                                  "the copy's segment; the next ones, for a minute, read the "
                                  "copy without trying the endpoint, except one answering "
                                  "'not archived' (exit 1), which asks it first; after that "
                                  "minute one tries it again")
def test_wal_fetch_passes_over_a_silent_repository_for_a_minute(
        pg_group: GroupFactory, own_s3_server: S3Server) -> None:
    group = pg_group(1)
    _repository_in_s3(group, own_s3_server)
    offsite = group.workdir / "offsite"
    group.config_path.write_text(group.config_path.read_text() + (
        f'\n[[repository.copy]]\nname = "offsite"\npath = "{offsite}"\n'))
    group.ok("backup")
    new_mark(group, complete=True)

    def in_the_copy() -> list[str]:
        switch_wal(group.servers[0])
        group.ok("repository", "sync")  # what the agent does every few seconds
        return sorted({p.name[:24] for p in (offsite / "wal" / "alpha").glob("0*/*.zst")
                       if p.name[24] == "-"})  # segments, not backup history files
    wait_for(lambda: len(in_the_copy()) >= 4, "four segments archived and in the copy",
             interval=0.5)
    segments = in_the_copy()

    def fetch(segment: str) -> None:
        dest = group.workdir / "fetched"
        got = run_markship(group.config_path, "wal-fetch", "--server", "alpha", segment,
                           str(dest), user=OS_USER)  # as PostgreSQL's restore_command runs
        assert got.returncode == 0 and dest.stat().st_size == 16 << 20, got.stderr
        dest.unlink()

    with Blackhole() as silent:
        group.config_path.write_text(group.config_path.read_text().replace(
            own_s3_server.endpoint, silent.endpoint))
        fetch(segments[0])  # waits for the silent endpoint, then reads the copy
        port = silent.port
    notes = _unreachable_notes(OS_USER)
    assert any(silent.endpoint in text for text in notes.values()), notes

    with Knocks(port) as knocks:  # the same port now counts who still tries it
        fetch(segments[1])
        assert knocks.count == 0  # passed over: the copy was read at once
        # "Not archived" (the end of recovery) is answered only once it was asked too.
        past = run_markship(group.config_path, "wal-fetch", "--server", "alpha",
                            "0000000100000001000000FF", str(group.workdir / "past"),
                            user=OS_USER)
        assert past.returncode == 1, past.stderr
        assert knocks.count >= 1
        knocked = knocks.count
        fetch(segments[2])  # that failed try renewed the notice
        assert knocks.count == knocked
        for path, text in notes.items():  # a minute later...
            if silent.endpoint in text:
                old = time.time() - 61
                os.utime(path, (old, old))
        fetch(segments[3])
        assert knocks.count > knocked  # ...it is asked again


def _unreachable_notes(user: str) -> dict[Path, str]:
    """The notes of repositories `user`'s commands found unreachable (path → text)."""
    folder = Path(f"/var/tmp/markship-spool-{pwd.getpwnam(user).pw_uid}") / "~unreachable"
    return {p: p.read_text() for p in folder.iterdir()} if folder.is_dir() else {}
