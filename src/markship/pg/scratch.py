"""Throwaway local PostgreSQL servers, for the demo, drills and the test-suite.

PostgreSQL refuses to run as root; when markship runs as root every command here is run as
the unprivileged `os_user` via runuser, and every directory is owned by that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from markship.errors import MarkshipError, first_line
from markship.pg import datadir

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")


def as_user(argv: Sequence[str], os_user: str) -> list[str]:
    """Prefix a command with runuser when we are root and must act as `os_user`."""
    if os.geteuid() == 0 and os_user != "root":
        return ["runuser", "-u", os_user, "--", *argv]
    return list(argv)


def chown_to(path: Path, os_user: str) -> None:
    """Give `path` to `os_user` when we are root (no-op otherwise)."""
    if os.geteuid() == 0:
        entry = pwd.getpwnam(os_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _listening_ranges() -> list[range]:
    """Ports a listener may take without racing outgoing connections: those past the
    kernel's ephemeral range, from which every connect() draws its local port (on Linux
    61000-65535, within IANA's dynamic ports: no well-known service expects them); only when
    that range is too small, the 10000 ports below it (and when the kernel may hand out
    every port, any)."""
    try:
        low, high = (int(n) for n in
                     Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    above = range(high + 1, 65536)
    if len(above) >= 256:
        return [above]
    below = range(max(1024, low - 10000), low)
    return [below] if len(below) >= 256 else [range(1024, 65536)]  # all ephemeral: any


def _bindable(host: str, ports: range) -> bool:
    """Whether nobody holds any of `ports` on `host` right now."""
    socks: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, port))
    except OSError:
        return False
    finally:
        for sock in socks:
            sock.close()
    return True


def free_port_range(count: int, host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """The first of `count` consecutive ports nobody listens on (and none in `avoid`).

    Chosen at random outside the ephemeral range: a port the kernel hands out for outgoing
    connections can be taken by one between this probe and the server's start (seen as a
    drill's "could not create any TCP/IP sockets" while an agent was busy connecting).
    """
    ranges = [r for r in _listening_ranges() if len(r) >= count]
    for _attempt in range(200):
        if not ranges:
            break
        span = random.choice(ranges)
        base = random.randrange(span.start, span.stop - count + 1)
        wanted = range(base, base + count)
        if avoid and avoid.intersection(wanted):
            continue
        if _bindable(host, wanted):
            return base
    raise MarkshipError(f"no {count} consecutive free ports on {host}",
                        "free some ports, or use fewer servers")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now on `host` (outside the ephemeral range)."""
    return free_port_range(1, host)


@dataclass
class ScratchServer:
    """One PostgreSQL server in a directory of its own, run as `os_user`."""

    name: str
    base_dir: Path
    port: int
    host: str = "127.0.0.1"
    os_user: str = "postgres"
    bin_dir: Path = DEFAULT_BIN_DIR
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={dbname}"

    def run(self, tool: str, *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL client or server tool of this installation as `os_user`."""
        argv = as_user([str(self.bin_dir / tool), *args], self.os_user)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check:
            self._check(tool, proc)
        return proc

    def _check(self, tool: str, proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode != 0:
            raise MarkshipError(
                f"{tool} failed for scratch server {self.name} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )

    def initdb(self) -> None:
        """Create the data directory and write the settings into postgresql.auto.conf."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        for path in (self.base_dir, self.socket_dir):
            chown_to(path, self.os_user)
        self.base_dir.chmod(0o755)
        self.run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                 "--encoding=UTF8", "--locale=C", "--no-sync")
        base = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "replica",
            "max_wal_senders": "5",
            "max_prepared_transactions": "10",
            "logging_collector": "off",
        }
        base.update(self.settings)
        self.write_settings(base)

    def write_settings(self, settings: dict[str, str]) -> None:
        """Append `settings` to postgresql.conf (read at the next start or reload)."""
        lines = "".join(f"{key} = '{_quote(value)}'\n" for key, value in settings.items())
        conf = self.data_dir / "postgresql.conf"
        script = f"cat >> {conf}"
        proc = subprocess.run(as_user(["sh", "-c", script], self.os_user), input=lines,
                              text=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise MarkshipError(f"cannot write {conf}: {proc.stderr.strip()}")

    def start(self, data_dir: Path | None = None, wait: bool = True) -> None:
        proc = datadir.start(str(self.bin_dir / "pg_ctl"), data_dir or self.data_dir,
                             self.log_file, 120, wait=wait, prefix=as_user([], self.os_user),
                             timeout=300)
        self._check("pg_ctl", proc)

    def stop(self, mode: str = "fast", data_dir: Path | None = None) -> None:
        target = data_dir or self.data_dir
        if (target / "postmaster.pid").exists():
            datadir.stop(str(self.bin_dir / "pg_ctl"), target, mode, 120,
                         prefix=as_user([], self.os_user), timeout=300)

    def kill9(self) -> None:
        """Crash the server: SIGKILL to the postmaster and every backend."""
        pid_file = self.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        subprocess.run(["pkill", "-KILL", "-P", str(pid)], check=False)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        time.sleep(0.2)

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL, return unaligned tuples-only output."""
        proc = self.run("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-d", self.conninfo(dbname), "-c", sql)
        return proc.stdout.strip()

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _quote(value: str) -> str:
    return value.replace("'", "''")


def wait_archived(server: ScratchServer, timeout: float = 60) -> str:
    """Switch WAL and wait until the archiver has stored the finished segment; return its name."""
    segment = server.psql(
        "SELECT pg_walfile_name(pg_switch_wal()) FROM (SELECT txid_current()) AS force_wal")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = server.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        if done and done[8:] >= segment[8:] and done[:8] == segment[:8]:
            return segment
        time.sleep(0.1)
    raise MarkshipError(f"scratch server {server.name}: {segment} not archived after {timeout} s")


def create_ledger(server: ScratchServer, accounts: int, balance: int) -> None:
    """The tables `transfer_workload` moves money between."""
    server.psql(f"""
        CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
        INSERT INTO accounts SELECT g, {int(balance)} FROM generate_series(1, {int(accounts)}) g;
        CREATE TABLE transfers (gid text PRIMARY KEY, amount bigint NOT NULL);""")


def transfer_workload(servers: list[ScratchServer], group: str, accounts: int,
                      stop: threading.Event, done: list[str], errors: list[str]) -> None:
    """Move money between random pairs of servers until `stop` is set, each transfer one
    two-phase commit under the group barrier (the first server holds it). Tables:
    `accounts(id, balance)` and `transfers(gid, amount)` on every server. Errors after `stop`
    (servers killed on purpose) are not reported."""
    import random

    import psycopg

    from markship.client import group_transaction

    conns = [psycopg.connect(s.conninfo()) for s in servers]
    try:
        with psycopg.connect(servers[0].conninfo(), autocommit=True) as barrier:
            n = 0
            while not stop.is_set():
                n += 1
                a, b = random.sample(range(len(servers)), 2)
                amount, gid = random.randint(1, 50), f"transfer-{n}"
                with group_transaction(barrier, group, gid, [conns[a], conns[b]]):
                    conns[a].execute("UPDATE accounts SET balance = balance - %s WHERE id = %s",
                                     (amount, random.randint(1, accounts)))
                    conns[a].execute("INSERT INTO transfers VALUES (%s, %s)", (gid, -amount))
                    conns[b].execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                                     (amount, random.randint(1, accounts)))
                    conns[b].execute("INSERT INTO transfers VALUES (%s, %s)", (gid, amount))
                done.append(gid)
    except Exception as exc:
        if not stop.is_set():
            errors.append(first_line(exc))
    finally:
        for conn in conns:
            conn.close()
