"""Fixtures, and the two tiers of the suite: tests that need real PostgreSQL 15 servers run as
the unprivileged `postgres` user (marked `pg`; skipped with the reason where that cannot be
done, or the run stopped with `--require-pg`), and pure tests that run anywhere
(`pytest -m "not pg"`)."""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from markship.agent import control
from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port
from tests.support.netcut import Relay
from tests.support.s3 import S3Server, S3Store, new_store, start_s3_server
from tests.support.servers import (
    MARKSHIP,
    OS_USER,
    PG_BIN,
    FsStore,
    Group,
    GroupFactory,
    RepoStore,
    write_config,
)

pytest_plugins = ["tests.support.reliability"]

# Fixtures that give a test PostgreSQL servers or directories owned by the postgres user.
PG_FIXTURES = {"workdir", "pg_group"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--require-pg", action="store_true",
                     help="stop the run (exit 3) instead of skipping pg tests when PostgreSQL "
                          "cannot be used here (./dev test and CI)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test asking for a PostgreSQL fixture is a `pg` test; the fault-injection suite is
    `pg` and `slow` (the markers are declared in pyproject.toml)."""
    faults = Path(__file__).parent / "faults"
    for item in items:
        in_faults = faults in item.path.parents
        if in_faults or PG_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.pg)
        if in_faults:
            item.add_marker(pytest.mark.slow)


@functools.cache
def _pg_missing() -> str | None:
    """Why `pg` tests cannot run here, or None when they can."""
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL 15 is not installed in {PG_BIN} (./dev test installs it)"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != OS_USER:
        return f"needs root (or the {OS_USER} user) to run PostgreSQL as {OS_USER}"
    proc = subprocess.run(as_user([str(MARKSHIP), "--version"], OS_USER),
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return (f"{MARKSHIP} cannot be run by the {OS_USER} user ({proc.stderr.strip()}): "
                "install markship with ./dev setup")
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("pg") and (reason := _pg_missing()):
        if item.config.getoption("--require-pg"):
            pytest.exit(reason, returncode=3)
        pytest.skip(reason)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temp directory the postgres user owns (CI's checkout may be unreadable to it)."""
    path = Path(tempfile.mkdtemp(prefix="markship-test-"))
    path.chmod(0o755)
    chown_to(path, OS_USER)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    # wal-push's spool markers for configs that lived in this directory
    escaped = str(path).replace("%", "%25").replace("/", "%2F")
    for spool in Path("/var/tmp").glob(f"markship-spool-*/{escaped}*"):
        shutil.rmtree(spool, ignore_errors=True)
    # an agent socket left by a test that killed its agent (the group config's name)
    for uid in {os.getuid(), pwd.getpwnam(OS_USER).pw_uid}:
        Path(control.socket_path(str(path / "markship.toml"), uid)).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3-compatible server on 127.0.0.1 (plain HTTP), one for the session."""
    server = start_s3_server()
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_tls_server() -> Iterator[S3Server]:
    """The same over HTTPS, with a self-signed certificate (`ca_file` trusts it)."""
    server = start_s3_server(tls=True)
    yield server
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture
def s3_store(s3_server: S3Server, workdir: Path) -> Iterator[S3Store]:
    """A fresh bucket of the session's S3 server and a credentials file in the workdir."""
    store = new_store(s3_server, workdir)
    yield store
    store.drop()


@pytest.fixture
def s3_tls_store(s3_tls_server: S3Server, workdir: Path) -> Iterator[S3Store]:
    store = new_store(s3_tls_server, workdir)
    yield store
    store.drop()


@pytest.fixture
def own_s3_server(workdir: Path) -> Iterator[S3Server]:
    """moto's server for this test alone, its port chosen but not started: the test starts
    and stops it (a stopped server comes back empty, with no bucket); stopped at the end."""
    server = S3Server(workdir, free_port())
    yield server
    server.stop()


@pytest.fixture
def s3_relay(s3_server: S3Server) -> Iterator[Relay]:
    """A relay to the session's S3 server that the test can cut (tests/support/netcut.py)."""
    with Relay(s3_server.port) as relay:
        yield relay


@pytest.fixture
def s3_relayed_store(s3_server: S3Server, s3_relay: Relay, workdir: Path) -> Iterator[S3Store]:
    """A fresh bucket markship reaches through `s3_relay`."""
    store = new_store(s3_server, workdir, endpoint=s3_relay.endpoint)
    yield store
    store.drop()


@pytest.fixture
def repository_kind() -> str:
    """Where `pg_group` keeps the repository: "fs" (a directory) unless a test parametrizes
    it (tests.support.s3.ON_FS_AND_S3): "s3", "s3-tls" (HTTPS, ca_file), "s3-relay"
    (through `s3_relay`)."""
    return "fs"


@pytest.fixture
def pg_group(workdir: Path, repository_kind: str,
             request: pytest.FixtureRequest) -> Iterator[GroupFactory]:
    """`pg_group(2)` starts two servers whose archive_command is markship wal-push."""
    groups: list[Group] = []
    store: RepoStore
    if repository_kind == "fs":
        store = FsStore(workdir / "repo")
    else:
        store = request.getfixturevalue({"s3": "s3_store", "s3-tls": "s3_tls_store",
                                         "s3-relay": "s3_relayed_store"}[repository_kind])

    def start(count: int = 2, names: list[str] | None = None,
              settings: dict[str, str] | None = None) -> Group:
        names = names or ["alpha", "bravo", "charlie", "delta"][:count]
        config_path = workdir / "markship.toml"
        servers = []
        for name in names:
            archive = f"{MARKSHIP} --config {config_path} wal-push --server {name} %p"
            base_settings = {"archive_mode": "on", "archive_command": archive, "fsync": "off",
                             "shared_buffers": "32MB"}
            base_settings.update(settings or {})
            servers.append(ScratchServer(name, workdir / name, free_port(), os_user=OS_USER,
                                         settings=base_settings))
        write_config(config_path, store, servers)
        group = Group(workdir, servers, config_path, store)
        groups.append(group)
        for server in servers:
            server.initdb()
            server.start()
        return group

    yield start
    for group in groups:
        for server in [*group.servers, *group.extra]:
            server.stop(mode="immediate")
