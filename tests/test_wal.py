"""wal-push / wal-fetch: PostgreSQL's archive and restore command contract, no server needed."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import MARKSHIP, OS_USER, run_markship, write_config
from markship.scratch import chown_to
from support import wait_for

SEGMENT = "000000010000000000000007"


def _setup(workdir: Path) -> tuple[Path, Path]:
    config = workdir / "markship.toml"
    write_config(config, workdir / "repo", [])
    config.write_text(config.read_text() + '\n[[server]]\nname = "orders"\n'
                      'conninfo = "host=127.0.0.1 port=1 user=postgres dbname=postgres"\n')
    wal = workdir / "pg_wal"
    wal.mkdir()
    chown_to(wal, OS_USER)
    return config, wal


def _segment(wal: Path, content: bytes, name: str = SEGMENT) -> Path:
    path = wal / name
    path.write_bytes(content)
    chown_to(path, OS_USER)
    return path


def _stored(workdir: Path) -> list[Path]:
    return sorted((workdir / "repo" / "wal" / "orders").rglob(f"{SEGMENT}-*"))


def test_push_is_idempotent_and_refuses_different_content(workdir: Path) -> None:
    config, wal = _setup(workdir)
    original = os.urandom(1 << 20) + bytes(15 << 20)
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


def test_fetch_of_missing_file_fails_quietly(workdir: Path) -> None:
    config, wal = _setup(workdir)
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

    from markship import spool

    config, wal = _setup(workdir)
    status = wal / "archive_status"
    status.mkdir()
    chown_to(status, OS_USER)
    names = [f"0000000100000000000000{n:02X}" for n in range(1, count + 1)]
    contents = {}
    for name in names:
        contents[name] = os.urandom(1 << 16) * 256
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
    from markship import spool, wal

    config, wal_dir, names, _contents, _folder = _backlog(workdir, 3)
    blocker = Path(spool.spool_dir(str(config), "orders"))  # as this (root) process sees it
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.parent.parent.chmod(0o700)  # a spool markship trusts: claims would be taken
    blocker.write_text("not a folder")
    try:
        settings = wal.load_settings(str(config))
        repo = settings.open_repository()
        before = set(os.listdir("/proc"))
        wal.push_ahead_in_background(repo, "orders", str(wal_dir / names[0]), settings,
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

    from markship.scratch import as_user

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

    code = ("import sys\nfrom markship import _zstd, wal, spool\nz = _zstd.load()\n"
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
    original = os.urandom(1 << 20) + bytes(15 << 20)
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
