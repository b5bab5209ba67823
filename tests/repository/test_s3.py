"""The S3 repository against a real S3-compatible server (moto's, on loopback): PostgreSQL's
archive and restore command contract, TLS with a private CA, and credentials that never show."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from markship.pg.scratch import as_user, chown_to, free_port, wait_archived
from markship.repository import catalog, layout
from markship.repository.fs import FsRepository
from tests.support.checks import wait_for
from tests.support.fingerprints import load_pgbench
from tests.support.s3 import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    S3Store,
    new_store,
    require_signatures,
    start_s3_server,
    write_credentials,
)
from tests.support.servers import (
    MARKSHIP,
    OS_USER,
    GroupFactory,
    run_markship,
    running_agent,
    stop_agent,
    write_offline_config,
)
from tests.wal.test_wal import wal_content

SEGMENT = "000000010000000000000007"
OTHER = "000000010000000000000008"


def _setup(workdir: Path, store: S3Store, marked: bool = True) -> tuple[Path, Path]:
    """A config whose repository is `store`, a pg_wal folder; `marked`: the repository has
    its marker object, as after the first backup (wal-fetch tells "not archived" from "no
    repository here" by it)."""
    config = workdir / "markship.toml"
    write_offline_config(config, store)
    wal = workdir / "pg_wal"
    wal.mkdir(exist_ok=True)
    chown_to(wal, OS_USER)
    if marked:
        # The record's bytes are the same on every backend: made in a directory, copied up.
        local = workdir / "marker"
        catalog.ensure_marker(FsRepository(local), "testgroup", datetime.now(UTC))
        store.write(layout.MARKER_KEY, (local / layout.MARKER_KEY).read_bytes())
    return config, wal


def _segment(wal: Path, content: bytes, name: str = SEGMENT) -> Path:
    path = wal / name
    path.write_bytes(content)
    chown_to(path, OS_USER)
    return path


def _push(config: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return run_markship(config, "wal-push", "--server", "orders", str(path), user=OS_USER)


def _fetch(config: Path, wal: Path, name: str = SEGMENT) -> tuple[int, str, bytes | None]:
    """(exit status, stderr, what DEST holds or None) of PostgreSQL's restore_command."""
    dest = wal / "RECOVERYXLOG"
    dest.unlink(missing_ok=True)
    proc = run_markship(config, "wal-fetch", "--server", "orders", name, str(dest),
                        user=OS_USER)
    return proc.returncode, proc.stderr, dest.read_bytes() if dest.exists() else None


def _stops_recovery(result: tuple[int, str, bytes | None]) -> None:
    """PostgreSQL takes an exit status below 126 for "not archived", the end of WAL: a
    failure to reach the repository must exit 126 or more, with one line, nothing written."""
    code, err, written = result
    assert code >= 126, f"exit {code} would end recovery as if the WAL were not archived: {err}"
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert written is None
    assert SECRET_ACCESS_KEY not in err


def _stored_segments(store: S3Store) -> list[str]:
    return [k for k in store.stored_keys(layout.wal_prefix("orders"))
            if k.rsplit("/", 1)[1].startswith(SEGMENT)]


def test_push_is_create_only(workdir: Path, s3_store: S3Store) -> None:
    config, wal = _setup(workdir, s3_store)
    original = wal_content(SEGMENT, os.urandom(1 << 20) + bytes(15 << 20))
    path = _segment(wal, original)
    first = _push(config, path)
    assert first.returncode == 0, first.stderr
    again = _push(config, path)
    assert again.returncode == 0, again.stderr
    (key,) = _stored_segments(s3_store)
    before = s3_store.read(key)

    _segment(wal, wal_content(SEGMENT, os.urandom(16 << 20)))
    clash = _push(config, path)
    assert clash.returncode == 1, clash.stderr
    assert "already archived with different content" in clash.stderr
    assert "Traceback" not in clash.stderr and clash.stderr.count("\n") == 1
    assert _stored_segments(s3_store) == [key] and s3_store.read(key) == before

    assert _fetch(config, wal) == (0, "", original)


def test_two_archivers_pushing_one_segment_both_succeed(workdir: Path,
                                                        s3_store: S3Store) -> None:
    config, wal = _setup(workdir, s3_store)
    original = wal_content(SEGMENT, os.urandom(4 << 20) * 4)
    path = _segment(wal, original)
    argv = as_user([str(MARKSHIP), "--config", str(config), "wal-push", "--server", "orders",
                    str(path)], OS_USER)
    pushers = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in pushers]
    assert [code for code, _ in results] == [0, 0], results
    assert len(_stored_segments(s3_store)) == 1
    assert _fetch(config, wal)[2] == original


@pytest.mark.reliability("S3 wal-fetch: object missing, repository unreachable, no bucket",
                         fault="a segment never archived; the endpoint down; a wrong bucket; "
                               "a bucket without markship's marker",
                         expected="exit 1 only for the missing segment (end of WAL); "
                                  "exit >= 126 with one line for the others")
def test_fetch_exits_1_only_for_a_missing_object(workdir: Path, s3_store: S3Store) -> None:
    config, wal = _setup(workdir, s3_store)
    original = wal_content(SEGMENT, os.urandom(1 << 16) * 256)
    assert _push(config, _segment(wal, original)).returncode == 0
    assert _fetch(config, wal) == (0, "", original)
    assert _fetch(config, wal, OTHER) == (1, "", None)
    assert _fetch(config, wal, "00000002.history") == (1, "", None)

    base = config.read_text()
    # Nobody listens on the endpoint's port.
    config.write_text(base.replace(s3_store.endpoint, f"http://127.0.0.1:{free_port()}"))
    _stops_recovery(_fetch(config, wal, OTHER))
    _stops_recovery(_fetch(config, wal))
    pushed = _push(config, _segment(wal, wal_content(OTHER, os.urandom(1 << 16) * 256), OTHER))
    assert 0 < pushed.returncode < 126 and pushed.stderr.count("\n") == 1, pushed.stderr
    # A bucket that does not exist (a typo in url, or a deleted bucket).
    config.write_text(base.replace(s3_store.bucket, s3_store.bucket + "-gone"))
    _stops_recovery(_fetch(config, wal, OTHER))
    # A bucket, but no repository at this prefix: not "the end of WAL" either.
    config.write_text(base.replace(s3_store.url, s3_store.url + "-elsewhere"))
    _stops_recovery(_fetch(config, wal, OTHER))


@pytest.mark.reliability("S3 credentials refused",
                         fault="a wrong secret, an unknown access key id in credentials_file",
                         expected="wal-fetch exits >= 126, wal-push fails; one line naming "
                                  "no secret; the right key archives and restores")
def test_wrong_credentials_stop_recovery(workdir: Path) -> None:
    server = start_s3_server(workdir / "s3-auth")
    try:
        key_id, secret = require_signatures(server)
        store = new_store(server, workdir, access_key=key_id, secret=secret)
        config, wal = _setup(workdir, store)
        original = wal_content(SEGMENT, os.urandom(1 << 16) * 256)
        path = _segment(wal, original)
        assert _push(config, path).returncode == 0
        assert _fetch(config, wal) == (0, "", original)
        assert _fetch(config, wal, OTHER) == (1, "", None)

        for wrong_id, wrong_secret in ((key_id, SECRET_ACCESS_KEY), (ACCESS_KEY_ID, secret)):
            write_credentials(store.credentials_file, wrong_id, wrong_secret)
            _stops_recovery(_fetch(config, wal))
            _stops_recovery(_fetch(config, wal, OTHER))
            other = wal_content(OTHER, os.urandom(1 << 16) * 256)
            pushed = _push(config, _segment(wal, other, OTHER))
            # Below 126: PostgreSQL's archiver retries (above, it is restarted).
            assert 0 < pushed.returncode < 126 and pushed.stderr.count("\n") == 1, \
                pushed.stderr
            assert secret not in pushed.stderr and wrong_secret not in pushed.stderr
            assert "Traceback" not in pushed.stderr
        assert _stored_segments(store) and not store.stored_keys(
            layout.wal_dir("orders", OTHER) + OTHER)
    finally:
        server.stop()


@pytest.mark.reliability("S3 keys rotated under a running process",
                         fault="the credentials file gets a new access key and the old key is "
                               "deleted, while one repository stays open (as the agent "
                               "keeps its own)",
                         expected="within the refresh interval the open repository writes and "
                                  "reads with the new key, without a restart")
def test_rotated_credentials_are_taken_without_a_restart(workdir: Path) -> None:
    from markship.errors import RepositoryError
    from markship.repository.s3 import CREDENTIALS_REFRESH, S3Location, S3Repository

    server = start_s3_server(workdir / "s3-rotate")
    try:
        key_id, secret = require_signatures(server)
        store = new_store(server, workdir, access_key=key_id, secret=secret)
        repo = S3Repository(S3Location(store.url, store.endpoint, REGION,
                                       str(store.credentials_file), retries=0))
        repo.write_bytes("probe/before", b"old key")

        iam = server.client(key_id, secret, service="iam")
        new = iam.create_access_key(UserName="markship")["AccessKey"]
        write_credentials(store.credentials_file, new["AccessKeyId"], new["SecretAccessKey"])
        store.credentials_file.chmod(0o644)  # a slip: others may read the new secret
        iam.delete_access_key(UserName="markship", AccessKeyId=key_id)
        refusals: list[str] = []

        def writes() -> bool:
            try:
                repo.write_bytes("probe/after", b"new key", overwrite=True)
            except RepositoryError as exc:
                refusals.append(exc.one_line())
                return False  # still the deleted key, until the next good read of the file
            return True
        # The file is not taken while others may read it; the refusal says why.
        wait_for(lambda: not writes() and "is readable by other users" in refusals[-1],
                 "the refusal naming the credentials file's mode",
                 timeout=CREDENTIALS_REFRESH * 3, interval=0.5)
        assert new["SecretAccessKey"] not in refusals[-1], refusals[-1]
        store.credentials_file.chmod(0o600)
        wait_for(writes, "the open repository taking the new key",
                 timeout=CREDENTIALS_REFRESH * 3, interval=0.5)
        assert repo.read_bytes("probe/before") == b"old key"
        assert repo.read_bytes("probe/after") == b"new key"
    finally:
        server.stop()


def test_https_endpoint_trusted_through_ca_file(workdir: Path, s3_tls_store: S3Store) -> None:
    config, wal = _setup(workdir, s3_tls_store)
    assert 'ca_file = "' in config.read_text() and "https://" in config.read_text()
    original = wal_content(SEGMENT, os.urandom(1 << 16) * 256)
    pushed = _push(config, _segment(wal, original))
    assert pushed.returncode == 0, pushed.stderr
    assert _fetch(config, wal) == (0, "", original)
    assert _fetch(config, wal, OTHER) == (1, "", None)
    # Without the CA the self-signed certificate is refused: never taken for "not archived".
    config.write_text("".join(line + "\n" for line in config.read_text().splitlines()
                              if not line.startswith("ca_file")))
    _stops_recovery(_fetch(config, wal))


def _args(pid: str) -> str:
    """A process's command line as `ps -eo args` prints it ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except OSError:
        return ""


def _holds_secret(data: bytes) -> bool:
    return SECRET_ACCESS_KEY.encode() in data or ACCESS_KEY_ID.encode() in data


@pytest.mark.parametrize("repository_kind", ["s3"])
def test_credentials_never_show(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    store = group.store
    assert isinstance(store, S3Store)
    load_pgbench(alpha)

    seen: list[str] = []
    leaked: list[str] = []
    stop = threading.Event()

    def look(lines: list[str]) -> None:
        for line in lines:
            if "markship" in line or "pg_basebackup" in line or "pg_receivewal" in line:
                seen.append(line)
            if _holds_secret(line.encode()):
                leaked.append(line)

    def watch() -> None:
        # What `ps -eo args` shows, read from /proc (ps's source) between two runs of ps
        # itself: a wal-push of a small segment lives for a few milliseconds only.
        while not stop.is_set():
            listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                     check=False).stdout
            look(listing.splitlines())
            for _ in range(50):
                look([_args(pid) for pid in os.listdir("/proc") if pid.isdigit()])

    watcher = threading.Thread(target=watch)
    watcher.start()
    outputs: list[subprocess.CompletedProcess[str]] = []
    try:
        # The watcher sees a process that lives as briefly as a wal-push.
        subprocess.run(["sh", "-c", "sleep 0.05", "markship-probe"], check=True)
        wait_for(lambda: any("markship-probe" in line for line in seen), "the probe seen",
                 timeout=10)
        outputs.append(group.markship("backup"))
        # Enough WAL that the archiver's wal-push shows up in the process list.
        deadline = time.monotonic() + 180
        while not any(" wal-push " in line for line in seen):
            assert time.monotonic() < deadline and watcher.is_alive(), "no wal-push seen"
            alpha.run("pgbench", "-n", "-t", "500", "-d", alpha.conninfo())
            alpha.psql("SELECT pg_switch_wal()")
        wait_archived(alpha)
        outputs.append(group.markship("mark", "--json"))
        group.add_config("\n[marks]\ninterval = 1\n")
        with running_agent(group.config_path) as agent:
            time.sleep(5)
            agent_log = stop_agent(agent)
        outputs.append(group.markship("restore", "--server", "alpha", "--target-dir",
                                      str(group.restored("alpha").data_dir)))
    finally:
        stop.set()
        watcher.join()
    assert all(p.returncode == 0 for p in outputs), [p.stderr for p in outputs]
    assert any(" backup" in line for line in seen) and any(" run" in line for line in seen)
    assert not leaked, leaked

    for args in (["journal", "--json"], ["status", "--json"], ["status"], ["config", "check"],
                 ["list", "--json"], ["marks", "--json"], ["verify", "--json"]):
        outputs.append(group.markship(*args))
        assert outputs[-1].returncode == 0, (args, outputs[-1].stderr)
    for proc in outputs:
        assert not _holds_secret((proc.stdout + proc.stderr).encode()), proc.args
    assert not _holds_secret(agent_log.encode())

    # Every file of the test (server logs with the archiver's messages, the config, the
    # restored server's restore_command, the WAL commands' caches) and every stored object.
    assert _holds_secret(store.credentials_file.read_bytes())  # the check can see one
    escaped = str(group.workdir).replace("%", "%25").replace("/", "%2F")
    files = [p for p in group.workdir.rglob("*") if p.is_file() and not p.is_symlink()]
    for spool in Path("/var/tmp").glob(f"markship-spool-*/{escaped}*"):
        files += [p for p in spool.rglob("*") if p.is_file()]
    assert len(files) > 100
    for path in files:
        if path != store.credentials_file:
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # a running server's temp file
                continue
            assert not _holds_secret(data), path
    for key in store.stored_keys():
        assert not _holds_secret(store.read(key)), key
