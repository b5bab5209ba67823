"""Groups of real PostgreSQL 15 servers run as the unprivileged `postgres` user, their config,
and markship run through its command line exactly as an operator (or PostgreSQL's archiver)
runs it. The fixtures that start them live in tests/conftest.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port, free_port_range

OS_USER = "postgres"
MARKSHIP = Path(sys.executable).parent / "markship"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def run_markship(config: Path | None, *args: str, user: str | None = None,
                 env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """markship's command line, as root (it switches user itself) or as `user`."""
    argv = [str(MARKSHIP)] + (["--config", str(config)] if config else []) + list(args)
    if user:
        argv = as_user(argv, user)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})


def markship_ok(config: Path, *args: str, user: str | None = None) -> str:
    """stdout of `markship --config CONFIG ARGS`, which must succeed."""
    proc = run_markship(config, *args, user=user)
    assert proc.returncode == 0, f"markship {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


class RepoStore(Protocol):
    """A group's repository as a test sees it: where the config points, and the stored objects
    by key (the same keys on every backend; tests/support/s3.py has the S3 one)."""

    kind: str  # "fs" or "s3"

    def config_lines(self) -> str:
        """The location keys of the [repository] table."""
        ...

    def stored_keys(self, prefix: str = "") -> list[str]:
        """Every stored key starting with `prefix`, sorted."""
        ...

    def read(self, key: str) -> bytes: ...

    def write(self, key: str, data: bytes) -> None: ...


@dataclass
class FsStore:
    """A repository in a directory."""

    path: Path
    kind: str = "fs"

    def config_lines(self) -> str:
        return f'path = "{self.path}"\n'

    def stored_keys(self, prefix: str = "") -> list[str]:
        if not self.path.is_dir():
            return []
        found = (p.relative_to(self.path).as_posix() for p in self.path.rglob("*")
                 if p.is_file())
        return sorted(k for k in found if k.startswith(prefix))

    def read(self, key: str) -> bytes:
        return (self.path / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        path = self.path / key
        created = not path.exists()
        path.write_bytes(data)
        if created:
            chown_to(path, OS_USER)


@dataclass
class Group:
    """Servers of one group, the config describing them, and its repository."""

    workdir: Path
    servers: list[ScratchServer]
    config_path: Path
    store: RepoStore
    extra: list[ScratchServer] = field(default_factory=list)

    @property
    def repo(self) -> Path:
        """The repository's directory (a test that reads it so runs on the file system only;
        `store` reads any backend)."""
        assert isinstance(self.store, FsStore), \
            f"this test reads the repository as a directory; it is {self.store.kind}"
        return self.store.path

    def add_config(self, text: str) -> None:
        """Add TOML `text` to the group's config (see merge_config: a `[marks]` table the
        config has already takes the keys of the one in `text`)."""
        self.config_path.write_text(merge_config(self.config_path.read_text(), text))

    def markship(self, *args: str, user: str | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_markship(self.config_path, *args, user=user, timeout=timeout)

    def ok(self, *args: str) -> str:
        return markship_ok(self.config_path, *args)

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

    def group_targets(self, tag: str = "g") -> tuple[dict[str, ScratchServer], list[str]]:
        """Handles for a `restore --group` of every server into workdir/TAG-<name>/data, on
        a range of free ports (stopped at teardown), and the restore arguments naming them."""
        base = free_port_range(len(self.servers))
        handles = {}
        for offset, server in enumerate(self.servers):
            handle = ScratchServer(server.name, self.workdir / f"{tag}-{server.name}",
                                   base + offset, os_user=OS_USER)
            handle.base_dir.mkdir()
            chown_to(handle.base_dir, OS_USER)
            self.extra.append(handle)
            handles[server.name] = handle
        return handles, ["--port-base", str(base),
                         "--target-dir", str(self.workdir / f"{tag}-{{server}}" / "data")]

    def restore(self, name: str, *flags: str) -> ScratchServer:
        """`markship restore ... --start` into a fresh directory; returns the running server."""
        handle = self.restored(name)
        proc = self.markship("restore", "--server", name, "--target-dir", str(handle.data_dir),
                             "--start", "--port", str(handle.port),
                             "--setting", f"unix_socket_directories={handle.base_dir}", *flags)
        assert proc.returncode == 0, f"restore failed: {proc.stderr}"
        return handle


GroupFactory = Callable[..., Group]


def new_mark(group: Group, complete: bool = False) -> str:
    """`markship mark` on the group; the new mark's name. `complete`: return once its WAL
    is in the repository (`--wait`), as a test that kills the servers next needs: the
    lean `markship mark` returns before the WAL switches it sent have finished."""
    wait = ["--wait", "120"] if complete else []
    return str(json.loads(group.ok("mark", "--json", *wait))["name"])


def merge_config(text: str, addition: str) -> str:
    """TOML `addition` appended to config `text`, except that the keys under a `[table]`
    header `text` has already go into that table (TOML allows a table to be declared once).
    Array-of-tables headers (`[[server]]`) always add an entry."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    chunks: list[list[str]] = [[]]
    for line in addition.splitlines(keepends=True):
        if line.startswith("["):
            chunks.append([])
        chunks[-1].append(line)
    tail = "".join(chunks[0])
    for chunk in chunks[1:]:
        header = chunk[0].strip()
        existing = [i for i, line in enumerate(lines) if line.strip() == header]
        if header.startswith("[[") or not existing:
            tail += "".join(chunk)
            continue
        keys = chunk[1:]
        while keys and not keys[-1].strip():  # the blank lines before the next table
            tail += keys.pop()
        lines[existing[0] + 1:existing[0] + 1] = [k if k.endswith("\n") else k + "\n"
                                                  for k in keys]
    return "".join(lines) + tail


def write_config(path: Path, repo: Path | RepoStore, servers: list[ScratchServer],
                 extra: str = "") -> None:
    """`repo`: a directory, or any repository store. With object storage, the WAL receivers'
    spool (`[marks] stream_spool`) is `stream/` beside the config, in the test's workdir:
    the default (/var/lib/markship/stream) would keep a folder per test, made by the agent
    as root and left behind by it as the repository's OS user (add to `[marks]` with
    merge_config or Group.add_config)."""
    store = FsStore(repo) if isinstance(repo, Path) else repo
    text = (f'[group]\nname = "testgroup"\n\n[repository]\n{store.config_lines()}'
            f'os_user = "{OS_USER}"\n')
    for server in servers:
        text += (f'\n[[server]]\nname = "{server.name}"\nconninfo = "{server.conninfo()}"\n'
                 f'data_dir = "{server.data_dir}"\n')
    if store.kind != "fs":
        text += f'\n[marks]\nstream_spool = "{path.parent / "stream"}"\n'
    elif isinstance(store, FsStore) and not store.path.exists() and store.path.parent.is_dir():
        # wal-push never creates a missing repository folder (a share not mounted): the
        # folder is made as an operator makes it (markship config check would).
        store.path.mkdir()
        chown_to(store.path, OS_USER)
    path.write_text(merge_config(text, extra))
    path.chmod(0o644)


def write_offline_config(path: Path, repo: Path | RepoStore, server: str = "orders",
                         extra: str = "") -> None:
    """A config whose one server nobody listens for (port 1): enough for commands that never
    connect to it (the config requires a server)."""
    write_config(path, repo, [], extra=(
        f'\n[[server]]\nname = "{server}"\n'
        'conninfo = "host=127.0.0.1 port=1 user=postgres dbname=postgres"\n' + extra))


def add_dr_site(group: Group, extra: str = "",
                standby_lines: dict[str, str] | None = None) -> dict[str, ScratchServer]:
    """A [dr_site] standby per server (directories and ports under the group's workdir);
    `standby_lines`: server → more lines of its [[dr_site.standby]] table."""
    standbys = {s.name: group.restored(s.name) for s in group.servers}
    text = "\n[dr_site]\nname = \"dr\"\n"
    for name, sb in standbys.items():
        text += (f'\n[[dr_site.standby]]\nserver = "{name}"\ndata_dir = "{sb.data_dir}"\n'
                 f'host = "127.0.0.1"\nport = {sb.port}\nsocket_dir = "{sb.base_dir}"\n'
                 + (standby_lines or {}).get(name, ""))
    group.config_path.write_text(group.config_path.read_text() + extra + text)
    return standbys


def stop_postmaster(data_dir: Path) -> None:
    """Stop a server markship started in `data_dir` (a restore's), if one runs there."""
    subprocess.run(["runuser", "-u", OS_USER, "--", str(PG_BIN / "pg_ctl"), "-D", str(data_dir),
                    "-m", "immediate", "-w", "stop"], capture_output=True, check=False)


def start_agent(config: Path) -> subprocess.Popen[str]:
    """`markship run` for the group of `config` (stdout and stderr piped)."""
    return subprocess.Popen([str(MARKSHIP), "--config", str(config), "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextmanager
def running_agent(config: Path) -> Iterator[subprocess.Popen[str]]:
    """The agent, killed on the way out if the test did not stop it."""
    agent = start_agent(config)
    try:
        yield agent
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def stop_agent(agent: subprocess.Popen[str]) -> str:
    """SIGTERM, as an operator stops it; returns its log (stderr)."""
    agent.send_signal(signal.SIGTERM)
    _out, err = agent.communicate(timeout=60)
    return err
