"""wal-push / wal-fetch: PostgreSQL's archive and restore command contract, no server needed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from markship.pg.scratch import chown_to
from tests.support.checks import wait_for
from tests.support.servers import MARKSHIP, OS_USER, run_markship, write_offline_config

SEGMENT = "000000010000000000000007"


def _setup(workdir: Path) -> tuple[Path, Path]:
    config = workdir / "markship.toml"
    write_offline_config(config, workdir / "repo")
    wal = workdir / "pg_wal"
    wal.mkdir()
    chown_to(wal, OS_USER)
    return config, wal


def wal_content(name: str, body: bytes, timeline: int | None = None,
                page_address: int | None = None) -> bytes:
    """`body` with the long page header PostgreSQL starts a segment `name` with (16 MB
    segments): wal-fetch and verify check it against the name."""
    from markship.pg.lsn import parse_segment_name

    segment = parse_segment_name(name[:24])
    header = ((0xD110).to_bytes(2, "little") + (0x0002).to_bytes(2, "little")
              + (timeline or segment.timeline).to_bytes(4, "little")
              + (segment.start_lsn() if page_address is None else page_address).to_bytes(
                  8, "little")
              + bytes(8) + (7).to_bytes(8, "little") + (16 << 20).to_bytes(4, "little")
              + (8192).to_bytes(4, "little"))
    return header + body[len(header):]


def _segment(wal: Path, content: bytes, name: str = SEGMENT) -> Path:
    path = wal / name
    path.write_bytes(content)
    chown_to(path, OS_USER)
    return path


def _stored(workdir: Path) -> list[Path]:
    return sorted((workdir / "repo" / "wal" / "orders").rglob(f"{SEGMENT}-*"))


def test_push_is_idempotent_and_refuses_different_content(workdir: Path) -> None:
    config, wal = _setup(workdir)
    original = wal_content(SEGMENT, os.urandom(1 << 20) + bytes(15 << 20))
    path = _segment(wal, original)
    first = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert first.returncode == 0, first.stderr
    again = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert again.returncode == 0, again.stderr
    stored = _stored(workdir)
    assert len(stored) == 1
    before = stored[0].read_bytes()

    _segment(wal, os.urandom(16 << 20))
    clash = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert clash.returncode != 0
    assert "already archived with different content" in clash.stderr
    assert "Traceback" not in clash.stderr
    assert _stored(workdir) == stored and stored[0].read_bytes() == before

    dest = wal / "RECOVERYXLOG"
    fetched = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == original


def _mark_repository(workdir: Path) -> None:
    """The marker object every repository gets at its first backup."""
    from datetime import UTC, datetime

    from markship.repository import catalog
    from markship.repository.fs import FsRepository

    catalog.ensure_marker(FsRepository(workdir / "repo"), "testgroup", datetime.now(UTC))
    for path in [workdir / "repo", *(workdir / "repo").rglob("*")]:
        chown_to(path, OS_USER)


def test_fetch_of_missing_file_fails_quietly(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    proc = run_markship(config, "wal-fetch", "--server", "orders", "00000002.history",
                        str(wal / "RECOVERYHISTORY"), user=OS_USER)
    assert proc.returncode == 1
    assert proc.stderr == ""
    assert not (wal / "RECOVERYHISTORY").exists()


def test_fetch_of_corrupt_segment_aborts_recovery(workdir: Path) -> None:
    config, wal = _setup(workdir)
    path = _segment(wal, os.urandom(1 << 16) * 256)
    assert run_markship(config, "wal-push", "--server", "orders", str(path)).returncode == 0
    stored = _stored(workdir)[0]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    dest = wal / "RECOVERYXLOG"
    proc = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                        user=OS_USER)
    # above 125: PostgreSQL aborts recovery instead of taking the damage for the end of WAL
    assert proc.returncode == 126
    assert SEGMENT in proc.stderr and "Traceback" not in proc.stderr
    assert not dest.exists()


def test_push_as_root_keeps_repository_owned_by_postgres(workdir: Path) -> None:
    config, wal = _setup(workdir)
    path = _segment(wal, bytes(16 << 20))
    assert run_markship(config, "wal-push", "--server", "orders", str(path)).returncode == 0
    owner = _stored(workdir)[0].stat().st_uid
    assert owner == (workdir / "pg_wal").stat().st_uid != 0


def test_unknown_server_is_one_clear_line(workdir: Path) -> None:
    config, wal = _setup(workdir)
    path = _segment(wal, b"x" * 100)
    proc = run_markship(config, "wal-push", "--server", "nosuch", str(path), user=OS_USER)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "unknown server 'nosuch'" in proc.stderr


def _backlog(workdir: Path, count: int) -> tuple[Path, Path, list[str], dict[str, bytes], Path]:
    """A WAL folder with `count` ready segments; returns config, folder, names, contents and
    the spool folder the postgres user's wal-push uses for this config."""
    import pwd

    from markship.wal import spool

    config, wal = _setup(workdir)
    status = wal / "archive_status"
    status.mkdir()
    chown_to(status, OS_USER)
    names = [f"0000000100000000000000{n:02X}" for n in range(1, count + 1)]
    contents = {}
    for name in names:
        contents[name] = wal_content(name, os.urandom(1 << 16) * 256)
        _segment(wal, contents[name], name)
        (status / f"{name}.ready").touch()
    uid = pwd.getpwnam(OS_USER).pw_uid
    folder = Path(spool.spool_dir(str(config), "orders").replace(
        f"markship-spool-{os.getuid()}", f"markship-spool-{uid}"))
    return config, wal, names, contents, folder


def _fetched(config: Path, wal: Path, name: str) -> bytes:
    """What wal-fetch restores for `name` (as PostgreSQL's restore_command would)."""
    dest = wal / "RECOVERYXLOG"
    fetched = run_markship(config, "wal-fetch", "--server", "orders", name, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    return dest.read_bytes()


def _push_first_and_wait(config: Path, wal: Path, names: list[str], folder: Path) -> None:
    """wal-push of the oldest file, then wait for the background pusher's markers of all
    the others (and no claim left)."""
    first = run_markship(config, "wal-push", "--server", "orders", str(wal / names[0]),
                         user=OS_USER)
    assert first.returncode == 0, first.stderr
    wait_for(lambda: sorted(p.name for p in folder.iterdir()) == names[1:],
                "the background pusher's markers for the whole backlog")


def test_backlog_is_pushed_ahead_and_later_calls_return_at_once(workdir: Path) -> None:
    import shutil

    config, wal, names, contents, folder = _backlog(workdir, 5)
    top = folder.parent.parent
    try:
        _push_first_and_wait(config, wal, names, folder)
        stored = {p.name.split("-")[0]: p for p in (workdir / "repo").rglob("0000000100*-*")}
        assert set(stored) == set(names), "the backlog was pushed ahead"

        # The next call finds its marker: it returns without reading or storing anything.
        stored[names[1]].unlink()
        fast = run_markship(config, "wal-push", "--server", "orders", str(wal / names[1]),
                            user=OS_USER)
        assert fast.returncode == 0 and not stored[names[1]].exists()

        # A spool others could write to is never trusted: the file is really pushed.
        top.chmod(0o777)
        stored[names[2]].unlink()
        slow = run_markship(config, "wal-push", "--server", "orders", str(wal / names[2]),
                            user=OS_USER)
        assert slow.returncode == 0 and stored[names[2]].exists()
        assert _fetched(config, wal, names[4]) == contents[names[4]]
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
        if top.exists():
            top.chmod(0o700)


def test_pusher_keeps_claiming_until_the_backlog_is_gone(workdir: Path) -> None:
    """With `push_ahead = 2` the background pusher holds two claims at a time and claims the
    next ready file as each one is done, until the whole backlog is stored."""
    import shutil

    config, wal, names, contents, folder = _backlog(workdir, 7)
    config.write_text(config.read_text().replace("[repository]\n",
                                                 "[repository]\npush_ahead = 2\n", 1))
    try:
        _push_first_and_wait(config, wal, names, folder)
        for name in names:
            assert _fetched(config, wal, name) == contents[name]
        # The archiver's calls for them all return from their markers.
        for name in names[1:]:
            later = run_markship(config, "wal-push", "--server", "orders", str(wal / name),
                                 user=OS_USER)
            assert later.returncode == 0, later.stderr
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_backlog_without_a_usable_spool_is_pushed_one_by_one(workdir: Path) -> None:
    """When the spool cannot hold claims (here its folder is a file), wal-push claims nothing
    and forks nothing: it pushes its own file and the archiver's calls push the rest."""
    from markship.wal import spool
    from markship.wal.ahead import push_ahead_in_background
    from markship.wal.settings import load_settings

    config, wal_dir, names, _contents, _folder = _backlog(workdir, 3)
    blocker = Path(spool.spool_dir(str(config), "orders"))  # as this (root) process sees it
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.parent.parent.chmod(0o700)  # a spool markship trusts: claims would be taken
    blocker.write_text("not a folder")
    try:
        settings = load_settings(str(config))
        repo = settings.open_repository()
        before = set(os.listdir("/proc"))
        push_ahead_in_background(repo, "orders", str(wal_dir / names[0]), settings,
                                 spool_for=str(config))
        assert not list((workdir / "repo").rglob("0000000100*-*")), "nothing pushed ahead"
        children = [pid for pid in set(os.listdir("/proc")) - before if pid.isdigit()
                    and Path(f"/proc/{pid}/stat").exists()
                    and int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                    == os.getpid()]
        assert not children
        for name in names:
            call = run_markship(config, "wal-push", "--server", "orders", str(wal_dir / name),
                                user=OS_USER)
            assert call.returncode == 0, call.stderr
        stored = {p.name.split("-")[0] for p in (workdir / "repo").rglob("0000000100*-*")}
        assert stored == set(names)
    finally:
        blocker.unlink()


def test_call_for_a_claimed_file_waits_for_its_pusher(workdir: Path) -> None:
    """The archiver's call for a file a background pusher has claimed waits for it to let go;
    a pusher that let go without a marker (it failed or was killed) leaves the file to the
    call, which pushes it itself."""
    import fcntl
    import shutil
    import subprocess

    from markship.pg.scratch import as_user

    config, wal, names, contents, folder = _backlog(workdir, 2)
    folder.mkdir(parents=True, mode=0o700)
    for path in (folder.parent.parent, folder.parent, folder):
        chown_to(path, OS_USER)
        path.chmod(0o700)
    claim = folder / f"{names[1]}.claim"
    try:
        with open(claim, "w") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # a pusher at work on names[1]
            call = subprocess.Popen(
                as_user([str(MARKSHIP), "--config", str(config), "wal-push", "--server",
                         "orders", str(wal / names[1])], OS_USER),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(3)
            assert call.poll() is None, "the call did not wait for the claim's pusher"
            assert not list((workdir / "repo").rglob(f"{names[1]}-*"))
        _out, err = call.communicate(timeout=60)  # let go without a marker: it pushes itself
        assert call.returncode == 0, err
        stored = list((workdir / "repo").rglob(f"{names[1]}-*"))
        assert len(stored) == 1
        assert _fetched(config, wal, names[1]) == contents[names[1]]
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_cached_settings_follow_config_edits(workdir: Path) -> None:
    config, wal = _setup(workdir)
    path = _segment(wal, os.urandom(1 << 16) * 256)
    first = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert first.returncode == 0, first.stderr
    # Renaming the server must be seen at once, not hidden by the parsed-settings cache.
    config.write_text(config.read_text().replace('name = "orders"', 'name = "billing"'))
    renamed = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert renamed.returncode == 2
    assert "unknown server 'orders' (configured: billing)" in renamed.stderr


def test_wal_path_stays_lean_and_its_zstd_is_standard(tmp_path: Path) -> None:
    """The per-segment start-up loads no typing/re/pydantic, and the zstd backend it loads
    directly writes frames the regular zstandard package (and so the zstd CLI) reads."""
    import subprocess
    import sys

    code = ("import sys\nfrom markship import _entry\n"
            "from markship.wal import _zstd, ahead, command, fetch, guard, push, spool\n"
            "z = _zstd.load()\n"
            "data = bytes(range(256)) * 4096\n"
            "sys.stdout.buffer.write(z.ZstdCompressor(level=1, write_checksum=True)"
            ".compress(data))\n"
            "heavy = sorted(m for m in ('typing', 're', 'pydantic', 'click', 'tomllib', "
            "'zstandard', 'contextlib') if m in sys.modules)\n"
            "print(heavy, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert proc.stderr.decode().strip() == "[]"
    import zstandard

    assert zstandard.ZstdDecompressor().decompress(proc.stdout) == bytes(range(256)) * 4096


def test_objects_named_by_sha256_before_blake3_stay_valid(workdir: Path) -> None:
    """Repositories written before WAL objects were named by BLAKE3 carry sha256 names: they
    are fetched and checked by sha256, and a re-push compares in that algorithm."""
    import hashlib

    import zstandard

    config, wal = _setup(workdir)
    original = wal_content(SEGMENT, os.urandom(1 << 20) + bytes(15 << 20))
    folder = workdir / "repo" / "wal" / "orders" / SEGMENT[:16]
    folder.mkdir(parents=True)
    legacy = folder / f"{SEGMENT}-{hashlib.sha256(original).hexdigest()}.zst"
    legacy.write_bytes(zstandard.ZstdCompressor(level=1).compress(original))
    for made in (workdir / "repo", folder.parent.parent, folder.parent, folder, legacy):
        chown_to(made, OS_USER)

    path = _segment(wal, original)
    again = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert again.returncode == 0, again.stderr
    assert _stored(workdir) == [legacy], "an identical re-push writes nothing new"
    _segment(wal, os.urandom(16 << 20))
    clash = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert clash.returncode == 1 and "already archived with different content" in clash.stderr

    dest = wal / "RECOVERYXLOG"
    fetched = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                           user=OS_USER)
    assert fetched.returncode == 0, fetched.stderr
    assert dest.read_bytes() == original

    # Damaged content under the old name is caught by its sha256 too.
    legacy.write_bytes(zstandard.ZstdCompressor(level=1).compress(original[:-1] + b"x"))
    dest.unlink()
    bad = run_markship(config, "wal-fetch", "--server", "orders", SEGMENT, str(dest),
                       user=OS_USER)
    assert bad.returncode == 126 and not dest.exists()


# -- wal-fetch never lets recovery end short (issue #12, defect 1) ------------------------------


def _pushed(config: Path, wal: Path, *names: str) -> None:
    """WAL files of these names (page headers as PostgreSQL writes them) pushed by wal-push."""
    for name in names or (SEGMENT,):
        path = _segment(wal, wal_content(name, os.urandom(1 << 16) * 256), name)
        pushed = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
        assert pushed.returncode == 0, pushed.stderr


def _fetch(config: Path, wal: Path, name: str = SEGMENT) -> tuple[int, str, bool]:
    """(exit status, stderr, DEST written) of the restore_command PostgreSQL would run."""
    dest = wal / "RECOVERYXLOG"
    dest.unlink(missing_ok=True)
    proc = run_markship(config, "wal-fetch", "--server", "orders", name, str(dest),
                        user=OS_USER)
    return proc.returncode, proc.stderr, dest.exists()


def _one_fatal_line(result: tuple[int, str, bool], *words: str) -> None:
    code, err, written = result
    assert code >= 126, f"exit {code} would end recovery as if the WAL were not archived: {err}"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert all(word in err for word in words), err
    assert not written


def _age_key(path: Path) -> str:
    """A new age identity in `path` (0600, owned by postgres); returns its recipient."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    path.write_text(str(identity) + "\n")
    path.chmod(0o600)
    chown_to(path, OS_USER)
    return str(identity.to_public())


@pytest.mark.reliability("wal-fetch: object encrypted for another key",
                         fault="production switched to recipient B; restore site holds only A",
                         expected="exit 126 naming the key, never the quiet 'not archived' 1")
def test_fetch_with_a_key_that_does_not_open_the_object_stops_recovery(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    plain = config.read_text()
    key_a, key_b = workdir / "a.key", workdir / "b.key"
    recipient_a, recipient_b = _age_key(key_a), _age_key(key_b)
    config.write_text(plain + f'\n[encryption]\nrecipient = "{recipient_b}"\n'
                      f'identity_file = "{key_a}"\n')
    _pushed(config, wal)
    _one_fatal_line(_fetch(config, wal), SEGMENT)

    # The same object with the right key comes back: the failure was the key's.
    config.write_text(plain + f'\n[encryption]\nrecipient = "{recipient_a}"\n'
                      f'identity_file = "{key_b}"\n')
    assert _fetch(config, wal)[0] == 0


@pytest.mark.reliability("wal-fetch: identity file unreadable or missing",
                         fault="identity file chmod 000 (root-owned), then deleted",
                         expected="exit 126 naming the file")
def test_fetch_without_a_readable_identity_stops_recovery(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    key = workdir / "repo.key"
    recipient = _age_key(key)
    config.write_text(config.read_text() + f'\n[encryption]\nrecipient = "{recipient}"\n'
                      f'identity_file = "{key}"\n')
    _pushed(config, wal)
    os.chown(key, 0, 0)
    _one_fatal_line(_fetch(config, wal), str(key), "not readable")
    key.unlink()
    _one_fatal_line(_fetch(config, wal), str(key), "not found")


@pytest.mark.reliability("wal-fetch: WAL folder not readable (EACCES)",
                         fault="chmod 000 on wal/<server>/<timeline+log>/, root-owned",
                         expected="exit 126, 'not readable' (not 'not writable')")
def test_fetch_from_an_unreadable_folder_stops_recovery(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _pushed(config, wal)
    folder = workdir / "repo" / "wal" / "orders" / SEGMENT[:16]
    os.chown(folder, 0, 0)
    folder.chmod(0)
    try:
        _one_fatal_line(_fetch(config, wal), "not readable", str(folder))
    finally:
        folder.chmod(0o755)


@pytest.mark.reliability("wal-fetch: repository not mounted",
                         fault="the repository directory is gone (unmounted NFS, wrong path)",
                         expected="exit 126 saying the repository is absent, not 'not archived'")
def test_fetch_from_an_absent_repository_stops_recovery(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    _pushed(config, wal)
    (workdir / "repo").rename(workdir / "repo-elsewhere")
    _one_fatal_line(_fetch(config, wal), "markship.json", "not mounted")


@pytest.mark.reliability("wal-push: repository not mounted",
                         fault="the repository directory is gone (an unmounted share, a disk "
                               "not attached)",
                         expected="wal-push fails with one line saying the repository path "
                                  "does not exist; it never creates an empty repository in "
                                  "its place")
def test_push_into_an_absent_repository_fails_and_creates_nothing(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _pushed(config, wal)
    (workdir / "repo").rename(workdir / "repo-elsewhere")
    path = _segment(wal, wal_content("000000010000000000000008", os.urandom(1 << 20) * 16),
                    "000000010000000000000008")
    proc = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr, proc.stderr
    assert not (workdir / "repo").exists()
    # Back in place, the same segment archives.
    (workdir / "repo-elsewhere").rename(workdir / "repo")
    again = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert again.returncode == 0, again.stderr


@pytest.mark.reliability("wal-fetch and wal-push: invalid config",
                         fault="compression_level = \"high\", an unknown key, a relative path",
                         expected="wal-push exit 2 and wal-fetch exit 126, one line each; "
                                  "nothing written to the data directory")
@pytest.mark.parametrize("problem", ["level is not a number", "unknown key", "relative path"])
def test_wal_commands_refuse_what_the_cli_refuses(workdir: Path, problem: str) -> None:
    config, wal = _setup(workdir)
    path = _segment(wal, wal_content(SEGMENT, os.urandom(1 << 16) * 256))
    text = config.read_text()
    config.write_text({
        "level is not a number": text.replace("[repository]\n",
                                              '[repository]\ncompression_level = "high"\n'),
        "unknown key": text.replace("[repository]\n", "[repository]\ncompresion_level = 3\n"),
        "relative path": text.replace(f'path = "{workdir / "repo"}"', 'path = "relative/repo"'),
    }[problem])
    pushed = run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)
    assert pushed.returncode == 2, pushed.stderr
    assert pushed.stderr.count("\n") == 1 and "Traceback" not in pushed.stderr
    listed = run_markship(config, "status")
    assert listed.returncode == 2, "the full CLI refuses it too"
    assert not list(workdir.rglob("relative")), "nothing written under a relative path"
    _one_fatal_line(_fetch(config, wal), str(config))


@pytest.mark.reliability("wal-fetch: another segment's object under this name",
                         fault="segment 4's object copied into the repository as segment 5",
                         expected="wal-fetch exit 126 and verify names the object; "
                                  "digest alone would pass it")
def test_object_of_another_segment_is_never_served(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    four, five = "000000010000000000000004", "000000010000000000000005"
    _pushed(config, wal, four, five)
    assert run_markship(config, "verify").returncode == 0
    folder = workdir / "repo" / "wal" / "orders" / four[:16]
    (stored_four,) = folder.glob(f"{four}-*")
    (stored_five,) = folder.glob(f"{five}-*")
    stored_five.unlink()
    planted = folder / stored_four.name.replace(four, five)
    planted.write_bytes(stored_four.read_bytes())
    chown_to(planted, OS_USER)

    _one_fatal_line(_fetch(config, wal, five), five, "0/4000000")
    checked = run_markship(config, "verify")
    assert checked.returncode != 0
    assert f"stored as {five} is not that file" in checked.stdout + checked.stderr


@pytest.mark.reliability("wal-fetch: DEST not writable",
                         fault="pg_wal not writable by the PostgreSQL OS user",
                         expected="exit 126 with the path, no traceback")
def test_fetch_into_an_unwritable_folder_stops_recovery(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _pushed(config, wal)
    os.chown(wal, 0, 0)
    wal.chmod(0o755)
    _one_fatal_line(_fetch(config, wal), str(wal))


@pytest.mark.reliability("wal-push into new folders, power loss",
                         fault="the repository's folders for this server do not exist yet",
                         expected="every folder made is fsynced into its parent before "
                                  "wal-push exits 0 (the object survives a power loss)")
def test_new_folders_are_flushed_into_their_parents(workdir: Path) -> None:
    import re
    import subprocess

    from markship.pg.scratch import as_user

    config, wal = _setup(workdir)
    path = _segment(wal, wal_content(SEGMENT, os.urandom(1 << 16) * 256))
    trace = workdir / "strace.log"
    argv = as_user([str(MARKSHIP), "--config", str(config), "wal-push", "--server", "orders",
                    str(path)], OS_USER)
    proc = subprocess.run(["strace", "-f", "-y", "-qq", "-e", "trace=mkdir,mkdirat,fsync",
                           "-o", str(trace), *argv], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    events = trace.read_text().splitlines()
    made = [(i, m.group(1)) for i, line in enumerate(events)
            if (m := re.search(r'mkdir(?:at)?\((?:[^,]*, )?"([^"]+)".* = 0$', line))
            and m.group(1).startswith(str(workdir / "repo"))]
    assert {os.path.basename(p) for _i, p in made} >= {"wal", "orders", SEGMENT[:16]}
    for at, folder in made:
        parent = os.path.dirname(folder)
        assert any("fsync(" in line and f"<{parent}>) = 0" in line for line in events[at:]), \
            f"{folder} was made but {parent} was never fsynced after it"


def _plant_mark_record(workdir: Path, name: str, body: object) -> None:
    """A mark record with a valid checksum but whatever body (the repository's OS user can
    write any record)."""
    import hashlib
    import json

    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    envelope = {"kind": "MarkRecord", "format": 1, "body": body,
                "sha256": hashlib.sha256(canonical).hexdigest()}
    path = workdir / "repo" / "marks" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(envelope))
    for made in (path.parent, path):
        chown_to(made, OS_USER)


@pytest.mark.reliability("standby wal-fetch: forged mark records",
                         fault="mark records naming server '../../x', a non-WAL file, points "
                               "as a list (checksums recomputed)",
                         expected="the forged records are skipped; the standby is still fed "
                                  "up to the good mark and never stopped by them")
def test_forged_mark_records_never_stop_a_standby(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    four, five = "000000010000000000000004", "000000010000000000000005"
    _pushed(config, wal, four, five)
    _plant_mark_record(workdir, "m1-good", {"points": {"orders": {"wal_file": five}}})
    _plant_mark_record(workdir, "m2-forged", {"points": {"../../x": {"wal_file": five}}})
    _plant_mark_record(workdir, "m3-forged", {"points": {"orders": {"wal_file": "../../x"}}})
    _plant_mark_record(workdir, "m4-forged", {"points": [["orders", five]]})

    def standby_fetch(name: str) -> tuple[int, str]:
        dest = wal / "RECOVERYXLOG"
        dest.unlink(missing_ok=True)
        proc = run_markship(config, "wal-fetch", "--server", "orders", "--standby", "--floor",
                            "000000010000000000000003", name, str(dest), user=OS_USER)
        return proc.returncode, proc.stderr

    assert standby_fetch(four) == (0, "")  # below the good mark's segment: fed
    assert standby_fetch(five) == (1, "")  # the mark's own segment: withheld, quietly


@pytest.mark.reliability("wal-fetch: streamed partial segment",
                         fault="the receiver's next segment laid out ahead (zero-filled), then "
                               "one holding another segment's pages",
                         expected="zero-filled: exit 1 quietly (nothing received yet); another "
                                  "segment's pages: exit 126")
def test_streamed_partial_segments_are_checked_too(workdir: Path) -> None:
    config, wal = _setup(workdir)
    _mark_repository(workdir)
    stream = workdir / "repo" / "stream" / "orders"
    stream.mkdir(parents=True)
    partial = stream / f"{SEGMENT}.partial"
    partial.write_bytes(bytes(16 << 20))
    for made in (stream.parent, stream, partial):
        chown_to(made, OS_USER)
    assert _fetch(config, wal)[:2] == (1, "")

    partial.write_bytes(wal_content("000000010000000000000006", os.urandom(1 << 16) * 256))
    _one_fatal_line(_fetch(config, wal), "0/6000000")


def test_uploaded_stream_pieces_are_laid_down_in_order_and_padded_back(workdir: Path) -> None:
    """The agent's uploads from its spool (object storage, markship.marks.upload) are pieces
    of a partial segment, zstd frames without the zero padding; each begins with the last
    page of the one before, which may have been written to since. wal-fetch lays them down
    in order up to the first gap and pads the segment back to full size. The format is read
    from the names and bytes, so a directory repository shows it as well."""
    import zstandard

    from markship.repository import layout

    config, wal = _setup(workdir)
    _mark_repository(workdir)
    stream = workdir / "repo" / "stream" / "orders"
    stream.mkdir(parents=True)
    page = 8192
    received = wal_content(SEGMENT, os.urandom(5 * page))
    # The first upload caught page 3 half written; the second repeats it, whole.
    earlier = received[:2 * page] + received[2 * page:2 * page + 4000] + bytes(page - 4000)
    pieces = {(0, 3 * page): earlier, (2 * page, 5 * page): received[2 * page:],
              (7 * page, 8 * page): os.urandom(page)}  # after a gap: never used
    for (start, end), data in pieces.items():
        path = stream / layout.stream_piece_name(SEGMENT, start, end)
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
        chown_to(path, OS_USER)
    for made in (stream.parent, stream):
        chown_to(made, OS_USER)
    assert _fetched(config, wal, SEGMENT) == received + bytes((16 << 20) - len(received))

    # A whole segment must be whole: a short one is damage, not the end of WAL.
    whole = stream / SEGMENT
    whole.write_bytes(zstandard.ZstdCompressor().compress(received))
    chown_to(whole, OS_USER)
    _one_fatal_line(_fetch(config, wal), SEGMENT, "bytes")
