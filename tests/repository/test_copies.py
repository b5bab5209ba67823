"""Copies of the repository ([[repository.copy]]): sync (copy what is missing, copy rewritten
records again, mirror what expire deleted, never empty a copy from a broken primary), the
fallback reads, and the copy through the command line: wal-push to a sync copy, the agent and
`repository sync` catching an async copy up, status and verify of a copy."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from markship.errors import CorruptObject, ObjectMissing, RepositoryError
from markship.pg.scratch import chown_to
from markship.repository import catalog, layout
from markship.repository.base import Repository
from markship.repository.copies import Copy, expired, lag, sync
from markship.repository.fallback import Fallback
from markship.repository.fs import FsRepository
from tests.support.checks import one_error_line, wait_for
from tests.support.s3 import SECRET_ACCESS_KEY, S3Server, write_credentials
from tests.support.servers import OS_USER, GroupFactory, run_markship, running_agent, stop_agent

WAL_A = "wal/alpha/0000000100000000/000000010000000000000003-b3." + "a" * 64 + ".zst"
WAL_B = "wal/alpha/0000000100000000/000000010000000000000004-b3." + "b" * 64 + ".zst"
WAL_C = "wal/alpha/0000000100000000/000000010000000000000005-b3." + "c" * 64 + ".zst"
HISTORY = "wal/alpha/history/00000002.history-b3." + "d" * 64 + ".zst"


def _repo(path: Path) -> FsRepository:
    repo = FsRepository(path)
    catalog.ensure_marker(repo, "testgroup", datetime.now(UTC))
    return repo


def _put(repo: Repository, key: str, data: bytes, overwrite: bool = False) -> None:
    repo.write(key, io.BytesIO(data), overwrite=overwrite)


def _keys(repo: Repository) -> set[str]:
    return {o.key for o in repo.iter_objects("")}


# -- sync, on two directories -------------------------------------------------------------------


def test_sync_copies_what_is_missing_byte_for_byte(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    for key in (WAL_A, WAL_B, "sets/S1.json", "marks/m1.json"):
        _put(primary, key, os.urandom(5000))
    _put(primary, "locks/backup.lock", b"held")  # never copied
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))

    assert lag(primary, copy.repo).objects == 5  # the marker too
    result = sync(primary, copy)
    assert result.copied_objects == 5
    assert _keys(copy.repo) == _keys(primary) - {"locks/backup.lock"}
    for key in _keys(copy.repo):
        assert copy.repo.open_stored(key).read() == primary.open_stored(key).read()
    assert lag(primary, copy.repo).objects == 0
    assert sync(primary, copy).copied_objects == 0  # nothing twice


def test_records_rewritten_in_the_primary_are_copied_again(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    _put(primary, "sets/S1.json", b'{"status": "running"}')
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    time.sleep(0.01)  # the rewrite is newer than the copy made above
    _put(primary, "sets/S1.json", b'{"status": "complete", "more": 1}', overwrite=True)
    assert lag(primary, copy.repo).objects == 1
    result = sync(primary, copy)
    assert result.refreshed_objects == 1
    assert copy.repo.read_bytes("sets/S1.json") == b'{"status": "complete", "more": 1}'


def test_what_expire_deleted_is_deleted_from_the_copy(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    for key in (WAL_A, WAL_B, WAL_C, HISTORY, "sets/S1.json", "sets/S2.json",
                "backups/alpha/S1/base.tar.zst", "backups/alpha/S2/base.tar.zst",
                "failovers/F1.json"):
        _put(primary, key, b"x")
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    # expire: the oldest set, its backup and the WAL only it needed
    for key in ("sets/S1.json", "backups/alpha/S1/base.tar.zst", WAL_A):
        primary.delete(key)
    result = sync(primary, copy)
    assert result.deleted_objects == 3
    assert _keys(copy.repo) == _keys(primary)


def test_a_broken_primary_never_empties_its_copy(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    for key in (WAL_A, WAL_B, "sets/S1.json"):
        _put(primary, key, b"x")
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    held = _keys(copy.repo)

    # A WAL folder emptied (by hand, a damaged disk): nothing in it is taken as expired.
    primary.delete(WAL_A)
    primary.delete(WAL_B)
    assert sync(primary, copy).deleted_objects == 0
    # Unmounted (the directory answers like an empty one): refused before anything happens.
    (tmp_path / "primary").rename(tmp_path / "elsewhere")
    with pytest.raises(RepositoryError, match=r"no markship\.json"):
        sync(primary, copy)
    assert _keys(copy.repo) == held


def test_an_encrypted_repository_is_copied_still_encrypted(tmp_path: Path) -> None:
    from pyrage import x25519

    from markship.repository.encrypted import EncryptedFsRepository

    identity = x25519.Identity.generate()
    key_file = tmp_path / "identity.txt"
    key_file.write_text(str(identity) + "\n")
    key_file.chmod(0o600)
    recipient = str(identity.to_public())
    primary = EncryptedFsRepository(tmp_path / "primary", [recipient], key_file)
    catalog.ensure_marker(primary, "testgroup", datetime.now(UTC))
    primary.write_bytes("dumps/shop/D1.dump.zst", b"customer data")
    copy = Copy("offsite", "async",
                EncryptedFsRepository(tmp_path / "copy", [recipient], key_file))
    sync(primary, copy)
    stored = (tmp_path / "copy" / "dumps/shop/D1.dump.zst").read_bytes()
    assert b"customer data" not in stored and stored.startswith(b"age-encryption.org/v1")
    assert copy.repo.read_bytes("dumps/shop/D1.dump.zst") == b"customer data"

    # An object that is not encrypted although encryption is on is damaged, never "missing"
    # (for wal-fetch that would read as the end of WAL) when no copy holds it intact.
    primary.write_stored("dumps/shop/D2.dump.zst", io.BytesIO(b"not encrypted"))
    with pytest.raises(CorruptObject, match="not encrypted"):
        Fallback(primary, [copy.repo]).read_bytes("dumps/shop/D2.dump.zst")


def test_a_copy_holding_another_repository_is_left_alone(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    _put(primary, WAL_B, b"x")
    other = _repo(tmp_path / "other")  # another group's repository, named as the copy
    _put(other, WAL_A, b"theirs")
    with pytest.raises(RepositoryError, match="holds another repository"):
        sync(primary, Copy("offsite", "async", other))
    assert other.read_bytes(WAL_A) == b"theirs" and not other.exists(WAL_B)


@pytest.mark.parametrize(("primary", "copy", "gone"), [
    ([WAL_B, WAL_C], [WAL_A, WAL_B, WAL_C], [WAL_A]),
    ([], [WAL_A], []),  # the primary lists nothing there: nothing is taken as expired
    ([WAL_A], [WAL_A, WAL_B, WAL_C], []),  # newer than the primary's: written there meanwhile
    ([WAL_C], [HISTORY, WAL_A], [WAL_A]),  # timeline history files are kept for ever
    (["marks/m2.json"], ["marks/m1.json", "failovers/F.json", "journal/HEAD.json"],
     ["marks/m1.json"]),
    (["wal/bravo/0000000100000000/x"], [WAL_A], []),  # another server's WAL says nothing
    # the oldest set lost its record (damage, not expire): nothing of that set goes
    (["backups/alpha/S2/base.tar.zst", "backups/alpha/S3/backup.json"],
     ["backups/alpha/S1/base.tar.zst", "backups/alpha/S2/backup.json",
      "backups/alpha/S2/base.tar.zst"], ["backups/alpha/S1/base.tar.zst"]),
    (["dumps/shop/D2.json", "dumps/shop/D2.dump.zst"],
     ["dumps/shop/D1.json", "dumps/shop/D1.dump.zst", "dumps/shop/D2.json"],
     ["dumps/shop/D1.dump.zst", "dumps/shop/D1.json"]),
])
def test_expired_keys(primary: list[str], copy: list[str], gone: list[str]) -> None:
    assert expired(set(primary), copy) == gone


# -- reading through the copies -----------------------------------------------------------------


def test_reads_fall_back_to_a_copy_when_the_primary_is_gone(tmp_path: Path) -> None:
    primary = _repo(tmp_path / "primary")
    _put(primary, WAL_A, b"first")
    copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
    sync(primary, copy)
    _put(copy.repo, WAL_B, b"only in the copy")
    reading = Fallback(primary, [copy.repo])
    assert reading.read_bytes(WAL_B) == b"only in the copy"
    assert reading.children("wal/alpha/0000000100000000/") == sorted(
        [WAL_A.rsplit("/", 1)[1], WAL_B.rsplit("/", 1)[1]])

    (tmp_path / "primary").rename(tmp_path / "gone")
    reading = Fallback(FsRepository(tmp_path / "primary"), [copy.repo])
    assert reading.read_bytes(WAL_A) == b"first"
    assert reading.exists(layout.MARKER_KEY)
    with pytest.raises(ObjectMissing):
        reading.read_bytes(WAL_C)
    # Writes go to the copy now (never into a directory re-created where the primary was).
    reading.write_bytes("failovers/F1.json", b"{}")
    assert copy.repo.exists("failovers/F1.json")
    assert not (tmp_path / "primary").exists()


# -- through the command line -------------------------------------------------------------------


def _copy_config(path: Path, copy: Path, mode: str = "async") -> None:
    path.write_text(path.read_text() + f'\n[[repository.copy]]\nname = "offsite"\n'
                                       f'path = "{copy}"\nmode = "{mode}"\n')


def _unreachable(folder: Path) -> None:
    """A copy the postgres user can neither read nor write (a mount gone stale, a share
    whose permissions were taken away)."""
    folder.mkdir(exist_ok=True)
    os.chown(folder, 0, 0)
    folder.chmod(0o700)


def _reachable(folder: Path) -> None:
    folder.chmod(0o750)
    chown_to(folder, OS_USER)


def test_wal_push_waits_for_a_sync_copy_and_fetch_reads_it(workdir: Path) -> None:
    from tests.support.servers import write_offline_config
    from tests.wal.test_wal import SEGMENT, wal_content

    config = workdir / "markship.toml"
    write_offline_config(config, workdir / "repo")
    offsite = workdir / "offsite"
    _copy_config(config, offsite, "sync")
    wal = workdir / "pg_wal"
    wal.mkdir()
    chown_to(wal, OS_USER)
    content = wal_content(SEGMENT, os.urandom(1 << 16) * 256)
    segment = wal / SEGMENT
    segment.write_bytes(content)
    chown_to(segment, OS_USER)
    _mark_as_repository(workdir / "repo")

    _unreachable(offsite)
    refused = run_markship(config, "wal-push", "--server", "orders", str(segment), user=OS_USER)
    assert refused.returncode != 0  # PostgreSQL keeps the segment and retries
    line = one_error_line(refused.stderr, alone=True)
    assert "copy offsite" in line and str(offsite) in line

    _reachable(offsite)
    pushed = run_markship(config, "wal-push", "--server", "orders", str(segment), user=OS_USER)
    assert pushed.returncode == 0, pushed.stderr
    stored = sorted(p.relative_to(workdir / "repo") for p in (workdir / "repo").rglob(
        f"{SEGMENT}-*"))
    assert len(stored) == 1
    assert (offsite / stored[0]).read_bytes() == (workdir / "repo" / stored[0]).read_bytes()

    sync_marker = run_markship(config, "repository", "sync")  # the copy gets the marker
    assert sync_marker.returncode == 0, sync_marker.stderr

    # A damaged object in the repository: served intact from the copy.
    dest = wal / "RECOVERYXLOG"
    damaged = workdir / "repo" / stored[0]
    intact = damaged.read_bytes()
    damaged.write_bytes(intact[:100] + bytes([intact[100] ^ 0xFF]) + intact[101:])
    fetched = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == content
    damaged.write_bytes(intact)

    # The repository unreachable (unreadable), the copy up: what the copy holds is served,
    # and its end is the end of the archived WAL.
    _unreachable(workdir / "repo")
    dest.unlink()
    fetched = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == content
    later = run_markship(config, "wal-fetch", "--server", "orders", "000000010000000000000008",
                         str(wal / "NEXT"), user=OS_USER)
    assert (later.returncode, later.stderr) == (1, "")
    _reachable(workdir / "repo")

    # Production's repository gone: wal-fetch reads the copy; only "not archived anywhere"
    # exits 1, as PostgreSQL's end of WAL.
    (workdir / "repo").rename(workdir / "repo-gone")
    dest.unlink()
    fetched = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == content
    after = run_markship(config, "wal-fetch", "--server", "orders", "000000010000000000000008",
                         str(wal / "NEXT"), user=OS_USER)
    assert (after.returncode, after.stderr) == (1, "")
    # Neither reachable: no longer "not archived" but a failure that stops recovery.
    _unreachable(offsite)
    lost = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                        user=OS_USER)
    assert lost.returncode >= 126, lost.stderr
    one_error_line(lost.stderr, alone=True)


def _mark_as_repository(path: Path) -> None:
    _repo(path)
    for each in [path, *path.rglob("*")]:
        chown_to(each, OS_USER)


def _status(config: Path) -> dict[str, dict[str, object]]:
    proc = run_markship(config, "status", "--json")
    return {r["name"]: r for r in json.loads(proc.stdout)["repositories"]}


def test_agent_catches_an_async_copy_up_after_an_outage(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    offsite = group.workdir / "offsite"
    _copy_config(group.config_path, offsite)
    group.add_config("\n[marks]\ninterval = 1\n")
    for server in group.servers:
        server.psql("CREATE TABLE ticks (n int); INSERT INTO ticks VALUES (1)")
    _unreachable(offsite)
    with running_agent(group.config_path) as agent:
        wait_for(lambda: any(s["complete"] for s in json.loads(group.ok("list", "--json"))),
                 "the agent's first backup set", timeout=120, interval=0.3)
        down = _status(group.config_path)["offsite"]
        assert down["reachable"] is False and down["error"]
        assert run_markship(group.config_path, "status").returncode != 0

        _reachable(offsite)  # the outage ends: the agent catches up by itself
        wait_for(lambda: _status(group.config_path)["offsite"]["lag_objects"] == 0,
                 "the copy caught up", timeout=120, interval=0.5)
        for server in group.servers:
            server.psql("INSERT INTO ticks VALUES (2)")
        mark = json.loads(group.ok("mark", "--json"))["name"]
        wait_for(lambda: (offsite / layout.mark_key(mark)).exists(),
                 "the new mark in the copy", timeout=60, interval=0.3)
        log = stop_agent(agent)
    assert "copy.failed" in log and "copy.recovered" in log and "Traceback" not in log
    up = _status(group.config_path)
    assert up["primary"]["reachable"] and up["offsite"]["reachable"]
    verified = run_markship(group.config_path, "verify", "--repository", "offsite")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    unknown = run_markship(group.config_path, "verify", "--repository", "nosuch")
    assert unknown.returncode == 2 and "no [[repository.copy]] named 'nosuch'" in unknown.stderr


def test_repository_sync_catches_a_copy_up_by_hand(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    offsite = group.workdir / "offsite"
    _copy_config(group.config_path, offsite)
    group.ok("backup")
    behind = json.loads(group.ok("repository", "sync", "--dry-run", "--json"))
    assert behind["copies"][0]["copied_objects"] > 0 and not offsite.exists()
    done = json.loads(group.ok("repository", "sync", "--json"))
    assert done["copies"][0]["copied_objects"] == behind["copies"][0]["copied_objects"]
    again = json.loads(group.ok("repository", "sync", "--json"))["copies"][0]
    assert again["copied_objects"] <= 1  # nothing twice: only the first sync's journal entry
    # everything but locks (never copied) and the journal (the last sync's own entry)
    primary = {p.relative_to(group.repo) for p in group.repo.rglob("*") if p.is_file()
               and not str(p.relative_to(group.repo)).startswith(("locks/", "journal/"))}
    assert primary <= {p.relative_to(offsite) for p in offsite.rglob("*") if p.is_file()}
    shutil.rmtree(group.repo / "wal")  # damaged: the copy keeps what it holds
    group.ok("repository", "sync")
    assert any((offsite / "wal").rglob("*.zst"))


# -- a copy in S3-compatible storage (moto's server on loopback) --------------------------------


def test_a_sync_copy_in_object_storage(workdir: Path, own_s3_server: S3Server) -> None:
    from tests.support.servers import write_offline_config
    from tests.wal.test_wal import SEGMENT, wal_content

    moto = own_s3_server
    credentials = write_credentials(workdir / "s3.env")
    config = workdir / "markship.toml"
    write_offline_config(config, workdir / "repo")
    config.write_text(config.read_text() + (
        f'\n[[repository.copy]]\nname = "cloud"\nurl = "s3://offsite-bucket/markship"\n'
        f'endpoint = "{moto.endpoint}"\nregion = "us-east-1"\n'
        f'credentials_file = "{credentials}"\nmode = "sync"\n'))
    _mark_as_repository(workdir / "repo")
    wal = workdir / "pg_wal"
    wal.mkdir()
    chown_to(wal, OS_USER)
    segment = wal / SEGMENT
    content = wal_content(SEGMENT, os.urandom(1 << 16) * 256)
    segment.write_bytes(content)
    chown_to(segment, OS_USER)

    # The copy's server is down: the archiver is told, in one line naming the copy.
    refused = run_markship(config, "wal-push", "--server", "orders", str(segment), user=OS_USER)
    assert refused.returncode != 0
    line = one_error_line(refused.stderr, alone=True)
    assert "copy cloud" in line and SECRET_ACCESS_KEY not in refused.stderr

    moto.start()
    moto.client().create_bucket(Bucket="offsite-bucket")
    pushed = run_markship(config, "wal-push", "--server", "orders", str(segment), user=OS_USER)
    assert pushed.returncode == 0, pushed.stderr
    synced = run_markship(config, "repository", "sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["copies"][0]["copied_objects"] >= 1  # the marker

    (workdir / "repo").rename(workdir / "repo-gone")
    dest = wal / "RECOVERYXLOG"
    fetched = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == content
    moto.stop()  # nothing reachable: recovery must stop, not end
    lost = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                        user=OS_USER)
    assert lost.returncode >= 126
    one_error_line(lost.stderr, alone=True)
