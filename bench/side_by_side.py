"""What the side-by-side benches (backup_bench, s3_bench, crypto_bench) share: scratch servers
holding one `pgbench -i` data set and their copies, restores checked against the source, the
markship and pgBackRest configurations, and the figures read from both tools' output."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import (
    MIB,
    OS_USER,
    WARM_CACHE,
    Row,
    as_pg,
    connect,
    count_ready,
    dir_bytes,
    pg,
    run_timed,
    say,
)
from markship.pg.scratch import ScratchServer, chown_to, free_port
from tests.support.fingerprints import pgbench_fingerprint  # importable once common is


class ScratchFiles:
    """Ports, directories and files for a bench's scratch servers (a mixin for the benches'
    dataclasses, which hold `used_ports`)."""

    used_ports: set[int]
    root: Path
    tracked: list[ScratchServer]

    def port(self) -> int:
        while True:
            candidate = free_port()
            if candidate not in self.used_ports:
                self.used_ports.add(candidate)
                return candidate

    def pg_dir(self, path: Path, mode: int = 0o750) -> Path:
        """A directory owned by the postgres OS user."""
        path.mkdir(parents=True, exist_ok=True)
        chown_to(path, OS_USER)
        path.chmod(mode)
        return path

    def write_file(self, path: Path, text: str) -> Path:
        path.write_text(text)
        path.chmod(0o644)
        return path

    def pgbench_source(self, name: str, scale: int) -> tuple[ScratchServer, int]:
        """A new server (tracked) holding `pgbench -i -s scale` data, stopped cleanly, and the
        bytes of its data directory without pg_wal."""
        server = ScratchServer(name, self.root / name, self.port(),
                               settings={"archive_mode": "off"})
        self.tracked.append(server)
        server.initdb()
        server.start()
        pgbench_init(server, scale)
        server.stop()
        data_bytes = dir_bytes(server.data_dir, skip=("pg_wal",))
        say(f"data directory without pg_wal: {data_bytes / MIB:.0f} MiB")
        return server, data_bytes

    def copy_server(self, source: ScratchServer, name: str) -> ScratchServer:
        """A physical copy (tracked) of the stopped `source`: identical data, same system id."""
        server = ScratchServer(name, self.root / name, self.port())
        self.pg_dir(server.base_dir, 0o755)
        self.pg_dir(server.socket_dir, 0o755)
        self.tracked.append(server)
        subprocess.run(["cp", "-a", str(source.data_dir), str(server.data_dir)], check=True)
        server.write_settings({"port": str(server.port),
                               "unix_socket_directories": str(server.socket_dir)})
        return server

    def restore_target(self, tool: str, run: int) -> ScratchServer:
        """A server (tracked) with an empty directory for `tool` to restore into in `run`."""
        base = self.pg_dir(self.root / "restore" / f"{tool}-{run}", 0o755)
        server = ScratchServer(f"{tool}-restore-{run}", base, self.port())
        self.pg_dir(server.socket_dir, 0o755)
        self.tracked.append(server)
        return server

    def drop(self, server: ScratchServer) -> None:
        """Stop and delete a tracked server."""
        server.destroy()
        self.tracked.remove(server)


def bench_root(prefix: str) -> Path:
    """A new bench directory under /tmp, made the working directory: every tool, whichever
    user it runs as, can enter it."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    chown_to(root, OS_USER)
    root.chmod(0o755)
    os.chdir(root)
    say(f"bench directory {root}")
    say(WARM_CACHE)
    return root


def pgbench_init(server: ScratchServer, scale: int) -> None:
    say(f"pgbench -i -s {scale} on {server.name} ...")
    started = time.monotonic()
    run_timed(as_pg([pg("pgbench"), "-h", server.host, "-p", str(server.port), "-U",
                     "postgres", "-i", "-q", "-s", str(scale), "postgres"])).check("pgbench -i")
    say(f"pgbench -i done in {time.monotonic() - started:.1f} s")


def make_wal(server: ScratchServer, enough: Callable[[], bool], timeout: float) -> None:
    """Short pgbench runs on `server` until `enough()`. A CHECKPOINT before each run makes the
    next page touches write full-page images, as after every checkpoint in production; without
    it a small scale writes so little WAL that collecting segments would take minutes."""
    deadline = time.monotonic() + timeout
    while not enough():
        if time.monotonic() > deadline:
            raise RuntimeError(f"pgbench did not produce enough WAL in {timeout:.0f} s")
        server.psql("CHECKPOINT")
        run_timed(as_pg([pg("pgbench"), "-h", server.host, "-p", str(server.port), "-U",
                         "postgres", "-n", "-c", "4", "-j", "2", "-T", "5", "postgres"])
                  ).check("pgbench")


def alternating(names: Sequence[str], run: int) -> list[str]:
    """`names` in their order on even runs, reversed on odd ones: no tool always goes first."""
    return list(names) if run % 2 == 0 else list(reversed(names))


def same_data(name: str, restored: ScratchServer, fingerprint: str) -> bool:
    """Whether the restored server's pgbench data has the source's `fingerprint`; says so."""
    same = pgbench_fingerprint(restored) == fingerprint
    say(f"  {name} restored data {'matches' if same else 'DIFFERS FROM'}"
        " the source (pgbench fingerprint)")
    return same


def same_data_row(checks: dict[str, bool]) -> Row:
    return Row("restored data equals source (fingerprint)",
               "yes" if checks.get("markship") else "NO",
               f"pgBackRest {'yes' if checks.get('pgbackrest') else 'NO'}", None, "equal",
               "PASS" if checks.get("markship") else "MISS")


def drain_backlog(server: ScratchServer, segments: int) -> dict[str, float]:
    """Pause archiving (`archive_command = ''`), let about `segments` segments of bulk-load WAL
    pile up as .ready files, resume it and time until none is left; the server's own
    archive_command does the draining."""
    with connect(server.port) as conn:
        conn.execute("ALTER SYSTEM SET archive_command = ''")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        # Bulk-load WAL like pgbench -i's (what BENCHMARKS.md's anchor drained).
        conn.execute("DROP TABLE IF EXISTS bench_drain")
        conn.execute("CREATE TABLE bench_drain (LIKE pgbench_accounts)")
        deadline = time.monotonic() + 300
        while count_ready(server.data_dir) < segments:
            if time.monotonic() > deadline:
                raise RuntimeError("could not build the WAL backlog in 300 s")
            conn.execute("INSERT INTO bench_drain SELECT * FROM pgbench_accounts "
                         "LIMIT 200000")
        queued = count_ready(server.data_dir)
        conn.execute("ALTER SYSTEM RESET archive_command")
        started = time.perf_counter()
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 600
        while count_ready(server.data_dir) > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("backlog not drained in 600 s")
            time.sleep(0.01)
        seconds = time.perf_counter() - started
        conn.execute("DROP TABLE bench_drain")
    return {"segments": queued, "seconds": seconds, "per_s": queued / seconds}


def markship_inner_seconds(output: str) -> float:
    """Time between the backup set's created_at and finished_at, from `backup --json`."""
    try:
        record = json.loads(output)["set"]
        created = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00"))
        finished = datetime.fromisoformat(record["finished_at"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return float("nan")
    return (finished - created).total_seconds()


def markship_sizes(output: str) -> dict[str, Any]:
    try:
        backup = json.loads(output)["backups"]["src"]
        return {"raw_bytes": backup["raw_size"], "stored_bytes": backup["archive"]["size"]}
    except (ValueError, KeyError, TypeError):
        return {}


def _log_time(line: str) -> float | None:
    """The wall-clock time of a server log line (log_line_prefix '%m [%p] ')."""
    try:
        stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S.%f")
    except ValueError:
        return None
    return stamp.replace(tzinfo=UTC).timestamp()


def restore_log(data_dir: Path, began: float, returned: float) -> dict[str, Any]:
    """What the restored server's log (markship-restore.log) says about a restore.

    `began`/`returned` are the wall-clock times (time.time()) of markship restore's start and
    exit: the log's first line splits the run into unpacking (up to the server's start) and
    recovery (up to "ready to accept connections", i.e. promoted); the rest is markship
    noticing it. Also the WAL files fetched through restore_command.
    """
    try:
        lines = (data_dir / "markship-restore.log").read_text(errors="replace").splitlines()
    except OSError:
        return {}
    stamps = [t for t in (_log_time(line) for line in lines) if t is not None]
    ready = next((_log_time(line) for line in lines
                  if "database system is ready to accept connections" in line), None)
    found: dict[str, Any] = {
        "wal_files_fetched": sum(1 for line in lines if "restored log file" in line)}
    if stamps and ready is not None:
        found.update(unpack_s=stamps[0] - began, recovery_s=ready - stamps[0],
                     after_ready_s=returned - ready)
    return found


def markship_toml(repo: Path, port: int) -> str:
    return (f'[group]\nname = "bench"\n\n[repository]\npath = {json.dumps(str(repo))}\n'
            f'os_user = "{OS_USER}"\n\n[[server]]\nname = "src"\n'
            f'conninfo = "host=127.0.0.1 port={port} user=postgres dbname=postgres"\n')


def pgbackrest_conf(repo: str, own: Path, server: ScratchServer,
                    archive_async: bool = True) -> str:
    """pgBackRest's settings from BENCHMARKS.md for the stanza "bench" of `server`: `repo`, the
    repo1-* lines of the repository; spool, lock and log paths under `own`."""
    return f"""[global]
{repo}
repo1-retention-full=99
spool-path={own / "spool"}
lock-path={own / "lock"}
log-path={own / "log"}
archive-async={"y" if archive_async else "n"}
process-max=2
compress-type=zst
compress-level=1
start-fast=y
log-level-console=warn
log-level-file=info

[bench]
pg1-path={server.data_dir}
pg1-port={server.port}
pg1-socket-path={server.socket_dir}
pg1-user=postgres
"""


def pgbackrest_sizes(info_argv: list[str]) -> dict[str, Any]:
    """Raw and stored bytes of pgBackRest's latest backup, from `info --output=json`."""
    proc = run_timed(info_argv)
    try:
        info = json.loads(proc.out)[0]["backup"][-1]["info"]
        return {"raw_bytes": info["size"], "stored_bytes": info["repository"]["size"]}
    except (ValueError, KeyError, IndexError, TypeError):
        return {}


def print_sizes(sizes: dict[str, dict[str, Any]]) -> None:
    """Each tool's raw and stored bytes of a backup, and their ratio."""
    for name, entry in sizes.items():
        if entry.get("raw_bytes") and entry.get("stored_bytes"):
            print(f"  {name}: {entry['raw_bytes'] / MIB:.0f} MiB → "
                  f"{entry['stored_bytes'] / MIB:.1f} MiB stored "
                  f"({entry['raw_bytes'] / entry['stored_bytes']:.1f}×)")
