"""Fixtures: real PostgreSQL 15 servers run as the unprivileged `postgres` user, and markship
run through its command line exactly as an operator (or PostgreSQL's archiver) runs it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from markship.agent import control
from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port

pytest_plugins = ["reliability"]

OS_USER = "postgres"
MARKSHIP = Path(sys.executable).parent / "markship"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


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


def run_markship(config: Path | None, *args: str, user: str | None = None,
                 env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """markship's command line, as root (it switches user itself) or as `user`."""
    argv = [str(MARKSHIP)] + (["--config", str(config)] if config else []) + list(args)
    if user:
        argv = as_user(argv, user)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


@dataclass
class Group:
    """Servers of one group, the config describing them, and its repository."""

    workdir: Path
    servers: list[ScratchServer]
    config_path: Path
    repo: Path
    extra: list[ScratchServer] = field(default_factory=list)

    def markship(self, *args: str, user: str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_markship(self.config_path, *args, user=user, timeout=timeout)

    def ok(self, *args: str) -> str:
        proc = self.markship(*args)
        assert proc.returncode == 0, f"markship {' '.join(args)} failed: {proc.stderr}"
        return proc.stdout

    def server(self, name: str) -> ScratchServer:
        return next(s for s in self.servers if s.name == name)

    def restored(self, name: str) -> ScratchServer:
        """A handle for a server restored under workdir/restored-<name>-N (stopped at teardown)."""
        base = self.workdir / f"restored-{name}-{len(self.extra)}"
        handle = ScratchServer(name, base, free_port(), os_user=OS_USER)
        base.mkdir()
        chown_to(base, OS_USER)
        self.extra.append(handle)
        return handle

    def restore(self, name: str, *flags: str) -> ScratchServer:
        """`markship restore ... --start` into a fresh directory; returns the running server."""
        handle = self.restored(name)
        proc = self.markship("restore", "--server", name, "--target-dir", str(handle.data_dir),
                             "--start", "--port", str(handle.port),
                             "--setting", f"unix_socket_directories={handle.base_dir}", *flags)
        assert proc.returncode == 0, f"restore failed: {proc.stderr}"
        return handle


def write_config(path: Path, repo: Path, servers: list[ScratchServer], extra: str = "") -> None:
    text = f'[group]\nname = "testgroup"\n\n[repository]\npath = "{repo}"\nos_user = "{OS_USER}"\n'
    for server in servers:
        text += (f'\n[[server]]\nname = "{server.name}"\nconninfo = "{server.conninfo()}"\n'
                 f'data_dir = "{server.data_dir}"\n')
    path.write_text(text + extra)
    path.chmod(0o644)


GroupFactory = Callable[..., Group]


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
