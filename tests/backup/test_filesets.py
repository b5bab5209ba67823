"""File sets: configuration files captured into the repository and restored by mark, with
archives that try to write outside the target refused. No PostgreSQL server is needed."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import tarfile
import time
from datetime import timedelta
from pathlib import Path

import pytest

from markship.backup import filesets
from markship.backup.safetar import link_escapes, member_parts, relative_target
from markship.config.model import load
from markship.pg.scratch import chown_to
from markship.repository import records
from markship.repository.catalog import MarkPoint, MarkRecord
from markship.repository.fs import FsRepository
from markship.timefmt import utcnow
from tests.support.checks import refused_line
from tests.support.filesets import give_to_postgres, plant_capture, portal_fileset
from tests.support.servers import OS_USER, markship_ok, run_markship

WAL_FILE = "000000010000000000000001"


def _captures(config: Path) -> list[dict[str, object]]:
    data = json.loads(markship_ok(config, "files", "list", "--json"))
    assert isinstance(data, list)
    return data


def test_round_trip_keeps_content_modes_owners_and_links(workdir: Path) -> None:
    config, tree = portal_fileset(workdir)
    out = markship_ok(config, "files", "capture")
    assert "✓ portal:" in out

    target = workdir / "restored"
    out = markship_ok(config, "files", "restore", "--set", "portal", "--target-dir", str(target))
    restored = target / str(tree).lstrip("/")
    assert f"{tree} → {restored}" in out

    for name in ["portal.conf", "conf.d/sites/shop.conf", "conf.d/tls.key"]:
        original, copy = tree / name, restored / name
        assert copy.read_bytes() == original.read_bytes()
        assert stat.S_IMODE(copy.stat().st_mode) == stat.S_IMODE(original.stat().st_mode)
        assert int(copy.stat().st_mtime) == int(original.stat().st_mtime)
        assert copy.stat().st_uid == original.stat().st_uid
    assert stat.S_IMODE((restored / "conf.d" / "tls.key").stat().st_mode) == 0o600
    assert (restored / "portal.conf").owner() == OS_USER
    assert (restored / "conf.d" / "sites").is_dir()
    assert os.readlink(restored / "current") == "conf.d/sites/shop.conf"
    assert (restored / "current").read_text() == "server_name shop.example\n"
    link = os.readlink(restored / "hostname")
    assert not link.startswith("/")
    assert os.path.normpath(restored / link) == str(target / "etc" / "hostname")
    assert not (restored / "portal.conf.bak").exists()
    assert not (restored / "conf.d" / "cache").exists()

    # As the repository's user (not root): the same tree, owned by that user.
    mine = workdir / "restored-as-postgres"
    markship_ok(config, "files", "restore", "--set", "portal", "--target-dir", str(mine),
                user=OS_USER)
    copy = mine / str(tree).lstrip("/") / "conf.d" / "tls.key"
    assert copy.read_bytes() == (tree / "conf.d" / "tls.key").read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and copy.owner() == OS_USER

    again = run_markship(config, "files", "restore", "--set", "portal", "--target-dir",
                         str(target))
    assert "is not empty" in refused_line(again)


def test_only_if_changed_stores_nothing_for_unchanged_content(workdir: Path) -> None:
    config_path, tree = portal_fileset(workdir)
    config = load(config_path)
    fileset = config.filesets[0]
    repo = FsRepository(workdir / "repo")

    first = filesets.capture(config, repo, fileset, reason="content changed",
                             only_if_changed=True)
    assert first is not None and first.files == 3 and first.links == 2
    objects = sorted(o.key for o in repo.iter_objects(""))

    os.utime(tree / "portal.conf")  # a touch is not a change
    assert filesets.capture(config, repo, fileset, reason="content changed",
                            only_if_changed=True) is None
    assert sorted(o.key for o in repo.iter_objects("")) == objects

    (tree / "conf.d" / "tls.key").chmod(0o640)
    second = filesets.capture(config, repo, fileset, reason="content changed",
                              only_if_changed=True)
    assert second is not None and second.content_sha256 != first.content_sha256
    (tree / "portal.conf").write_text("listen 9090\n")
    third = filesets.capture(config, repo, fileset, reason="content changed",
                             only_if_changed=True)
    assert third is not None and third.content_sha256 != second.content_sha256
    assert [r.id for r in filesets.list_records(repo, "portal")] == [first.id, second.id,
                                                                       third.id]


def test_restore_by_mark_picks_the_capture_before_it(workdir: Path) -> None:
    config, tree = portal_fileset(workdir)
    markship_ok(config, "files", "capture", "--set", "portal")
    time.sleep(0.01)
    # A complete mark: its record, and the WAL file holding it (WAL is known by name only).
    repo = FsRepository(workdir / "repo")
    mark = "ms-testgroup-mark1"
    made = utcnow()
    records.write_record(repo, f"marks/{mark}.json", MarkRecord(
        name=mark, group="testgroup", created_at=made, barrier_server="orders",
        barrier_wait_ms=0.1, barrier_hold_ms=0.1,
        points={"orders": MarkPoint(lsn=0x1000028, timeline=1, wal_file=WAL_FILE)}))
    repo.write_bytes(f"wal/orders/{WAL_FILE[:16]}/{WAL_FILE}-{'0' * 64}.zst", b"")
    give_to_postgres(workdir / "repo")
    time.sleep(0.01)
    (tree / "portal.conf").write_text("listen 9090\n")
    markship_ok(config, "files", "capture", "--set", "portal")

    first, second = _captures(config)
    assert first["mark"] is None and second["mark"] == mark
    assert first["reason"] == second["reason"] == "manual"

    at_mark = workdir / "at-mark"
    out = markship_ok(config, "files", "restore", "--set", "portal", "--mark", mark, "--target-dir",
              str(at_mark))
    assert str(first["id"]) in out
    assert (at_mark / str(tree).lstrip("/") / "portal.conf").read_text() == "listen 8080\n"
    newest = workdir / "newest"
    markship_ok(config, "files", "restore", "--set", "portal", "--target-dir", str(newest))
    assert (newest / str(tree).lstrip("/") / "portal.conf").read_text() == "listen 9090\n"

    unknown = run_markship(config, "files", "restore", "--set", "portal", "--mark", "nope",
                           "--target-dir", str(workdir / "x"))
    assert "no mark named nope" in refused_line(unknown)
    records.write_record(repo, "marks/ms-testgroup-mark0.json", MarkRecord(
        name="ms-testgroup-mark0", group="testgroup", created_at=made - timedelta(hours=1),
        barrier_server="orders", barrier_wait_ms=0.1, barrier_hold_ms=0.1, points={}))
    too_old = run_markship(config, "files", "restore", "--set", "portal", "--mark",
                           "ms-testgroup-mark0", "--target-dir", str(workdir / "x"))
    assert "no capture made at or before mark ms-testgroup-mark0" in refused_line(too_old)
    assert not (workdir / "x").exists() or not any((workdir / "x").iterdir())


def test_capture_of_a_missing_path_names_it(workdir: Path) -> None:
    config, tree = portal_fileset(workdir)
    config.write_text(config.read_text().replace(f'paths = ["{tree}"]',
                                                 f'paths = ["{tree}", "{tree}-gone"]'))
    proc = run_markship(config, "files", "capture")
    assert f"{tree}-gone does not exist" in refused_line(proc)
    assert not (workdir / "repo" / "filesets").exists()


# -- archives made to escape -----------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"evil\n",
            link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _listing(directory: Path) -> list[str]:
    """Everything below `directory`, except the journal (a refused restore is recorded)."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if "journal" not in p.relative_to(directory).parts)


REG, LINK = tarfile.REGTYPE, tarfile.SYMTYPE


@pytest.mark.parametrize(("members", "refused"), [
    ([("../outside/evil", REG, "")], "../outside/evil"),
    ([("WORKDIR/outside/evil", REG, "")], "WORKDIR/outside/evil"),
    ([("link", LINK, "../outside"), ("link/evil", REG, "")], "link"),
    ([("etc/link", LINK, "../../outside"), ("etc/link/evil", REG, "")], "etc/link"),
    # an absolute link is made relative inside the target; nothing is written through it
    ([("link", LINK, "WORKDIR/outside"), ("link/evil", REG, "")], "link/evil"),
    # each link alone looks harmless; together y would lead to the target's parent
    ([("x", LINK, "."), ("y", LINK, "x/../outside"), ("y/evil", REG, "")], "y"),
    ([("hard", tarfile.LNKTYPE, "WORKDIR/outside/victim")], "hard"),
    ([("pipe", tarfile.FIFOTYPE, "")], "pipe"),
    ([("disk", tarfile.BLKTYPE, "")], "disk"),
], ids=["dot-dot", "absolute", "escaping-link", "deep-escaping-link", "through-kept-link",
        "link-chain", "hard-link", "fifo", "device"])
def test_unsafe_members_are_refused_and_nothing_lands_outside(
        workdir: Path, members: list[tuple[str, bytes, str]], refused: str) -> None:
    config, _tree = portal_fileset(workdir)
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "victim").write_text("untouched\n")
    refused = refused.replace("WORKDIR", str(workdir))
    capture_id = plant_capture(workdir, [_member("etc/portal/ok.conf", data=b"fine\n")] + [
        _member(name.replace("WORKDIR", str(workdir)), kind,
                link=link.replace("WORKDIR", str(workdir))) for name, kind, link in members])
    before = _listing(workdir)
    target = workdir / "t"

    line = refused_line(run_markship(config, "files", "restore", "--set", "portal", "--id",
                                 capture_id, "--target-dir", str(target)))
    assert f"unsafe member {refused!r}" in line and "nothing was restored" in line
    assert (outside / "victim").read_text() == "untouched\n"
    assert [p for p in _listing(workdir) if p != "t"] == before
    assert not any(target.iterdir())  # the member placed before the bad one is gone too


@pytest.mark.parametrize(("damage", "reported"), [
    ("flipped byte", "cannot be unpacked"),
    ("appended bytes", "cannot be unpacked"),
    ("other checksum", "fails its checksum"),
])
def test_a_damaged_archive_leaves_nothing_behind(workdir: Path, damage: str,
                                                 reported: str) -> None:
    config, _tree = portal_fileset(workdir)
    markship_ok(config, "files", "capture")
    repo = FsRepository(workdir / "repo")
    (record,) = filesets.list_records(repo, "portal")
    archive = workdir / "repo" / record.archive.key
    data = bytearray(archive.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    elif damage == "appended bytes":
        data += b"garbage after the archive"
    archive.write_bytes(bytes(data))
    if damage == "other checksum":  # as if the stored object had been replaced
        changed = record.model_copy(update={"archive": record.archive.model_copy(
            update={"sha256": "0" * 64})})
        records.write_record(repo, filesets.record_key("portal", record.id), changed,
                             overwrite=True)
    target = workdir / "t"
    line = refused_line(run_markship(config, "files", "restore", "--set", "portal",
                                 "--target-dir", str(target)))
    assert reported in line and "nothing was restored" in line
    assert not any(target.iterdir())


@pytest.mark.parametrize(("name", "target", "escapes"), [
    ("etc/a", "b", False),
    ("etc/a", "../b", False),
    ("etc/a", "../../b", True),
    ("a", "sub/../../b", True),
    ("y", "x/..", True),  # x may be a link to "."
    ("etc/app/a", "/etc/hostname", True),  # absolute: rewritten before this check
    ("etc/app/a", relative_target(["etc", "app", "a"], "/etc/hostname"), False),
])
def test_link_escapes(name: str, target: str, escapes: bool) -> None:
    assert link_escapes(member_parts(name), target) is escapes


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "etc/../../x", ".", ""])
def test_member_parts_refuses(name: str) -> None:
    with pytest.raises(ValueError):
        member_parts(name)


def test_capture_as_root_reads_files_only_root_may_read(workdir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    config, tree = portal_fileset(workdir)
    os.chown(tree / "conf.d" / "tls.key", 0, 0)
    reader = subprocess.run(["runuser", "-u", OS_USER, "--", "cat",
                             str(tree / "conf.d" / "tls.key")], capture_output=True, check=False)
    assert reader.returncode != 0  # the repository's user cannot read it
    markship_ok(config, "files", "capture")
    (record,) = _captures(config)
    assert record["files"] == 3
    owner = pwd.getpwnam(OS_USER).pw_uid
    assert all(p.stat().st_uid == owner for p in (workdir / "repo" / "filesets").rglob("*"))


def test_encrypted_repository_round_trip(workdir: Path) -> None:
    config, tree = portal_fileset(workdir)
    identity = workdir / "key.txt"
    proc = run_markship(None, "key", "create", "--identity-file", str(identity))
    assert proc.returncode == 0, proc.stderr
    recipient = next(line.split('"')[1] for line in proc.stdout.splitlines()
                     if line.startswith("recipient"))
    chown_to(identity, OS_USER)
    config.write_text(config.read_text() + f'\n[encryption]\nrecipient = "{recipient}"\n'
                      f'identity_file = "{identity}"\n')
    markship_ok(config, "files", "capture")
    stored = list((workdir / "repo" / "filesets" / "portal").iterdir())
    assert len(stored) == 2
    assert all(p.read_bytes().startswith(b"age-encryption.org/v1\n") for p in stored)

    target = workdir / "restored"
    markship_ok(config, "files", "restore", "--set", "portal", "--target-dir", str(target))
    key = target / str(tree).lstrip("/") / "conf.d" / "tls.key"
    assert key.read_bytes() == (tree / "conf.d" / "tls.key").read_bytes()
