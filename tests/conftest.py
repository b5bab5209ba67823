"""Fixtures: real PostgreSQL 15 servers run as the unprivileged `postgres` user (the groups
they form and markship's command line are in tests/support/servers.py)."""

from __future__ import annotations

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
from tests.support.servers import (
    MARKSHIP,
    OS_USER,
    PG_BIN,
    Group,
    GroupFactory,
    write_config,
)

pytest_plugins = ["tests.support.reliability"]


@pytest.fixture(scope="session", autouse=True)
def _markship_runnable_by_postgres() -> None:
    if not (PG_BIN / "postgres").exists():
        pytest.exit(f"PostgreSQL 15 is not installed in {PG_BIN}: run ./dev test", returncode=3)
    proc = subprocess.run(as_user([str(MARKSHIP), "--version"], OS_USER),
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.exit(f"{MARKSHIP} cannot be run by the {OS_USER} user ({proc.stderr.strip()}): "
                    "install markship with ./dev setup", returncode=3)


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


@pytest.fixture
def pg_group(workdir: Path) -> Iterator[GroupFactory]:
    """`pg_group(2)` starts two servers whose archive_command is markship wal-push."""
    groups: list[Group] = []

    def start(count: int = 2, names: list[str] | None = None,
              settings: dict[str, str] | None = None) -> Group:
        names = names or ["alpha", "bravo", "charlie", "delta"][:count]
        config_path = workdir / "markship.toml"
        repo = workdir / "repo"
        servers = []
        for name in names:
            archive = f"{MARKSHIP} --config {config_path} wal-push --server {name} %p"
            base_settings = {"archive_mode": "on", "archive_command": archive, "fsync": "off",
                             "shared_buffers": "32MB"}
            base_settings.update(settings or {})
            servers.append(ScratchServer(name, workdir / name, free_port(), os_user=OS_USER,
                                         settings=base_settings))
        write_config(config_path, repo, servers)
        group = Group(workdir, servers, config_path, repo)
        groups.append(group)
        for server in servers:
            server.initdb()
            server.start()
        return group

    yield start
    for group in groups:
        for server in [*group.servers, *group.extra]:
            server.stop(mode="immediate")
