#!/usr/bin/env python3
"""Backup, restore and WAL-archiving benchmark: markship against pgBackRest and the bare tools.

Everything is measured in ONE invocation, side by side, on the same data: these machines are
shared and noisy (absolute seconds move 10-30 % between runs), so the ratios are what counts.
The page cache cannot be dropped here: every figure is a warm-cache figure.

Run as root with the markship virtualenv's interpreter (``./dev bench`` does this):

    /opt/markship/venv/bin/python bench/backup_bench.py                         # scale 50, 60 s
    /opt/markship/venv/bin/python bench/backup_bench.py --scale 5 --duration 10  # smoke run

Three source servers are built from ONE ``pgbench -i`` data directory (two are physical copies),
so each tool archives with its own archive_command and no tool waits for the other's WAL push:

    ms     archive_command = markship wal-push                    (markship backup/restore/WAL)
    pgbr   archive_command = pgbackrest archive-push (async)      (pgBackRest backup/restore/WAL)
    plain  archive_command = zstd -1 -q -f %p -o DIR/%f.zst       (bare pg_basebackup anchor)

See bench/README.md for what each phase measures and why.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psycopg
from psycopg.rows import TupleRow

import markship
from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port

# The checkout, for the test suite's helpers (run as `python bench/backup_bench.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.fingerprints import pgbench_fingerprint

# The markship of the interpreter running the bench (its virtualenv's): the in-process calls
# and the commands then measure the same install.
MARKSHIP = Path(sys.executable).parent / "markship"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
SEGMENT = 16 * 1024 * 1024
MIB = 1024 * 1024
RESULTS_DIR = Path(__file__).resolve().parent / "results"
PHASES = ("backup", "restore", "switch", "sustained", "drain", "walpush")
WARM_CACHE = ("page cache WARM: it cannot be dropped on this machine, so every figure below is a "
              "warm-cache figure (data just written or read)")

Conn = psycopg.Connection[TupleRow]
_T0 = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - _T0
    print(f"[{int(elapsed) // 60:02d}:{elapsed % 60:04.1f}] {message}", flush=True)


# -- running and timing commands -------------------------------------------------------------------


class HwmPoller(threading.Thread):
    """Polls VmHWM (peak resident set) of ONE process in /proc, children not included."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        while not self.done.is_set():
            try:
                with open(path) as handle:
                    for line in handle:
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                            break
            except (OSError, ValueError):
                pass
            self.done.wait(self.interval)

    def process_hwm_kb(self) -> int | None:
        return self.peak_kb


@dataclass
class Timed:
    argv: list[str]
    seconds: float
    code: int
    out: str
    err: str
    tree_maxrss_kb: int  # wait4: the largest peak RSS of the child and its waited-for descendants
    hwm_kb: int | None  # VmHWM of the direct child alone (polled), when asked for

    def check(self, what: str) -> Timed:
        if self.code != 0:
            tail = (self.err or self.out).strip()[-1500:]
            raise RuntimeError(f"{what} failed (exit {self.code}): {' '.join(self.argv)}\n{tail}")
        return self


class Poller(Protocol):
    """A thread that samples a running process (HwmPoller, crypto_bench.TreeRssPoller)."""

    done: threading.Event

    def start(self) -> None: ...

    def join(self) -> None: ...

    def process_hwm_kb(self) -> int | None: ...


def run_timed(argv: Sequence[str], *, poll_rss: bool = False, discard_stdout: bool = False,
              timeout: float = 3600, poller: Callable[[int], Poller] | None = None) -> Timed:
    """Run a command to completion; wall time includes process start (fork/exec) and exit.
    `poll_rss`: sample the child's VmHWM (HwmPoller); `poller`: another sampler, made with the
    child's pid (the caller keeps it for its report)."""
    if poll_rss and poller is None:
        poller = HwmPoller
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdout: Any = subprocess.DEVNULL if discard_stdout else out
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=stdout, stderr=err, stdin=subprocess.DEVNULL)
        sampler = poller(proc.pid) if poller is not None else None
        if sampler is not None:
            sampler.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
            if sampler is not None:
                sampler.done.set()
                sampler.join()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Timed(list(argv), seconds, proc.returncode, out.read().decode(errors="replace"),
                     err.read().decode(errors="replace"), usage.ru_maxrss,
                     sampler.process_hwm_kb() if sampler is not None else None)


def settle(seconds: float = 1.0) -> None:
    """Before a timed run: flush the dirty pages earlier steps left (a restore leaves a whole
    data directory to write back), then let background work calm down, so no run pays for the
    previous one's writeback."""
    os.sync()
    time.sleep(seconds)


def pg(tool: str) -> str:
    return str(PG_BIN / tool)


def as_pg(argv: Sequence[str]) -> list[str]:
    return as_user([str(a) for a in argv], OS_USER)


def sh_as_pg(command: str) -> list[str]:
    """`runuser -u postgres -- sh -c COMMAND`: how PostgreSQL runs an archive_command."""
    return as_pg(["sh", "-c", command])


def connect(port: int, timeout: int = 5) -> Conn:
    return psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres "
                           f"connect_timeout={timeout}", autocommit=True)


def scalar(conn: Conn, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def wait_promoted(port: int, timeout: float = 600) -> str:
    """Wait until a server on `port` accepts connections and pg_is_in_recovery() is false.

    Returns what the first look found: "promoted", "in recovery" or "refused: <error>".
    """
    deadline = time.monotonic() + timeout
    conn: Conn | None = None
    first: str | None = None
    try:
        while time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = connect(port, timeout=2)
                if not scalar(conn, "SELECT pg_is_in_recovery()"):
                    return first or "promoted"
                first = first or "in recovery"
            except psycopg.OperationalError as exc:
                if conn is not None:
                    conn.close()
                conn = None
                first = first or f"refused: {str(exc).strip().splitlines()[-1][:120]}"
            time.sleep(0.02)
    finally:
        if conn is not None:
            conn.close()
    raise RuntimeError(f"server on port {port} was not promoted within {timeout:.0f} s")


def count_ready(data_dir: Path) -> int:
    """WAL files PostgreSQL has finished but not archived yet (archive_status/*.ready)."""
    try:
        names = os.listdir(data_dir / "pg_wal" / "archive_status")
    except FileNotFoundError:
        return 0
    return sum(1 for name in names if name.endswith(".ready"))


def segment_index(wal_name: str) -> int:
    """Position of a 16 MB segment in the WAL stream, from its file name (timeline ignored)."""
    return int(wal_name[8:16], 16) * 0x100 + int(wal_name[16:24], 16)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def dir_bytes(path: Path, skip: tuple[str, ...] = ()) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            try:
                total += (Path(dirpath) / name).lstat().st_size
            except FileNotFoundError:
                continue
    return total


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def installed_at() -> str:
    """When the markship package in the venv was (re)installed: ./dev setup rewrites it."""
    return datetime.fromtimestamp(Path(markship.__file__).stat().st_mtime, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def tool_version(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if proc.returncode == 0 else "?"


def ensure_tools() -> None:
    """Install pgBackRest and zstd with apt when missing; PostgreSQL 15 comes from ./dev setup."""
    if not (PG_BIN / "postgres").exists() or not MARKSHIP.exists():
        raise SystemExit(f"PostgreSQL 15 ({PG_BIN}) or markship ({MARKSHIP}) missing: run "
                         "./dev setup first")
    missing = [pkg for exe, pkg in (("pgbackrest", "pgbackrest"), ("zstd", "zstd"))
               if shutil.which(exe) is None]
    if missing:
        say(f"installing {', '.join(missing)} with apt")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env,
                       stdout=subprocess.DEVNULL)


# -- verdicts and the summary table ----------------------------------------------------------------


@dataclass
class Row:
    metric: str
    markship: str
    anchor: str
    ratio: float | None
    target: str
    verdict: str


def ratio_verdict(ratio: float, target: float, aim: float | None = None,
                  goal: float | None = None, higher_is_better: bool = False) -> str:
    """PASS(goal) / PASS(aim) / PASS(target) / MISS for a ratio against its thresholds."""
    def ok(limit: float) -> bool:
        return ratio >= limit if higher_is_better else ratio <= limit

    if ratio != ratio:  # NaN
        return "n/a"
    if goal is not None and ok(goal):
        return "PASS (goal)"
    if aim is not None and ok(aim):
        return "PASS (aim)"
    if not ok(target):
        return "MISS"
    return "PASS (target)" if aim is not None or goal is not None else "PASS"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 10 else f"{seconds:.2f} s"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def save_results(results: dict[str, Any], prefix: str = "") -> Path:
    """Write a run's results to bench/results/<prefix><UTC time>.json and say where."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{prefix}{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults written to {path}")
    return path


def stop_servers(servers: Sequence[ScratchServer]) -> None:
    """Stop every server (immediate), reporting the ones that would not stop."""
    for server in servers:
        try:
            server.stop(mode="immediate")
        except Exception as exc:  # keep cleaning up the others
            say(f"could not stop {server.name}: {exc}")


def remove_root(root: Path | None, keep: bool, settle: float = 0.0) -> None:
    """Delete the bench directory (after `settle` seconds), unless --keep."""
    if root is None:
        return
    if keep:
        say(f"--keep: servers stopped, directory kept: {root}")
        return
    time.sleep(settle)
    shutil.rmtree(root, ignore_errors=True)
    say(f"removed {root}")


def report_install_and_load(results: dict[str, Any]) -> None:
    """Say if markship was reinstalled during the run, and the load average at its end."""
    versions = results["meta"]["versions"]
    if installed_at() != versions["markship_installed_at"]:
        print(f"WARNING: markship was reinstalled during this run (at {installed_at()}, was "
              f"{versions['markship_installed_at']}): phases may have run different code")
    host = results["meta"]["host"]
    host["loadavg_at_end"] = loadavg()
    print(f"load average (1/5/15 min) at start {host['loadavg_at_start']}, at end "
          f"{host['loadavg_at_end']}: other work on this shared machine adds noise")


class ScratchFiles:
    """Ports, directories and files for a bench's scratch servers (a mixin for the benches'
    dataclasses, which hold `used_ports`)."""

    used_ports: set[int]

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


class Guarded(Protocol):
    results: dict[str, Any]

    def run(self) -> None: ...

    def summary(self) -> Path: ...

    def cleanup(self) -> None: ...


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def running_as_root() -> bool:
    if os.geteuid() == 0:
        return True
    print("run as root: servers and tools are started as the postgres OS user via runuser",
          file=sys.stderr)
    return False


def run_guarded(bench: Guarded, has_figures: Callable[[], bool]) -> int:
    """Run a bench; whatever happens, print the summary (when `has_figures()`) and clean up.
    SIGTERM/SIGHUP end the run like Ctrl-C; a second signal cannot cut the clean-up short.
    Returns the exit status (1 when the run failed)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    failed = False
    try:
        bench.run()
    except BaseException as exc:
        failed = True
        bench.results["failed"] = f"{type(exc).__name__}: {exc}"
        say(f"benchmark FAILED: {type(exc).__name__}: {exc}")
        if not isinstance(exc, Exception):
            raise
    finally:
        previous: dict[int, Any] = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            if has_figures():
                try:
                    bench.summary()
                except Exception as exc:  # the clean-up still runs
                    say(f"summary failed: {type(exc).__name__}: {exc}")
        finally:
            bench.cleanup()
            for number, handler in previous.items():
                signal.signal(number, handler)
    return 1 if failed else 0


# -- the benchmark ---------------------------------------------------------------------------------


@dataclass
class Bench(ScratchFiles):
    scale: int
    duration: int
    runs: int
    keep: bool
    samples: int
    segments: int
    drain_segments: int
    phases: tuple[str, ...]
    root: Path = field(init=False)
    tracked: list[ScratchServer] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    used_ports: set[int] = field(default_factory=set)

    # -- helpers ---------------------------------------------------------------------------------

    def pgbench_argv(self, server: ScratchServer, *options: str) -> list[str]:
        return as_pg([pg("pgbench"), "-h", server.host, "-p", str(server.port), "-U", "postgres",
                      *options, "postgres"])

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="markship-bench-", dir="/tmp"))
        chown_to(self.root, OS_USER)
        self.root.chmod(0o755)
        os.chdir(self.root)  # every tool, whichever user it runs as, can enter this directory
        say(f"bench directory {self.root}")
        say(WARM_CACHE)

        ms = ScratchServer("ms", self.root / "ms", self.port(), settings={"archive_mode": "off"})
        self.tracked.append(ms)
        ms.initdb()
        ms.start()
        say(f"pgbench -i -s {self.scale} ...")
        started = time.monotonic()
        proc = run_timed(self.pgbench_argv(ms, "-i", "-q", "-s", str(self.scale)))
        proc.check("pgbench -i")
        say(f"pgbench -i done in {time.monotonic() - started:.1f} s")
        ms.stop()
        self.data_bytes = dir_bytes(ms.data_dir, skip=("pg_wal",))
        say(f"data directory without pg_wal: {self.data_bytes / MIB:.0f} MiB")

        # Two physical copies of the same stopped cluster: identical data for every tool.
        copies: dict[str, ScratchServer] = {}
        for name in ("pgbr", "plain"):
            server = ScratchServer(name, self.root / name, self.port())
            self.pg_dir(server.base_dir, 0o755)
            self.pg_dir(server.socket_dir, 0o755)
            subprocess.run(["cp", "-a", str(ms.data_dir), str(server.data_dir)], check=True)
            server.write_settings({"port": str(server.port),
                                   "unix_socket_directories": str(server.socket_dir)})
            self.tracked.append(server)
            copies[name] = server
        self.ms, self.pgbr, self.plain = ms, copies["pgbr"], copies["plain"]

        # markship: repository, config, archive_command.
        self.ms_repo = self.pg_dir(self.root / "ms-repo")
        self.ms_cfg = self.write_file(self.root / "markship.toml",
                                      markship_toml(self.ms_repo, ms.port))
        self.ms_push = (f"{MARKSHIP} --config {self.ms_cfg} wal-push --server src")
        ms.write_settings({"archive_mode": "on", "archive_command": f"{self.ms_push} %p"})

        # pgBackRest: its own config, repository, spool, lock and log paths (a second set for
        # the restores: a restore on the same host wipes the stanza's spool).
        self.pgbr_conf = self.write_file(
            self.root / "pgbackrest.conf",
            pgbackrest_conf(self.pg_dir(self.root / "pgbackrest"), self.root / "pgbackrest",
                            self.pgbr))
        self.pgbr_restore_conf = self.write_file(
            self.root / "pgbackrest-restore.conf",
            pgbackrest_conf(self.root / "pgbackrest", self.pg_dir(self.root / "pgbackrest-restore"),
                            self.pgbr))
        for sub in ("repo", "spool", "lock", "log"):
            self.pg_dir(self.root / "pgbackrest" / sub)
        for sub in ("spool", "lock", "log"):
            self.pg_dir(self.root / "pgbackrest-restore" / sub)
        self.pgbr_push = f"pgbackrest --config={self.pgbr_conf} --stanza=bench archive-push"
        self.pgbr.write_settings({"archive_mode": "on", "archive_command": f"{self.pgbr_push} %p"})

        # Bare shell archive_command for the pg_basebackup anchor.
        self.plain_archive = self.pg_dir(self.root / "plain-archive")
        self.plain.write_settings({"archive_mode": "on", "archive_command":
                                   f"zstd -1 -q -f %p -o {self.plain_archive}/%f.zst"})

        self.pg_dir(self.root / "restore", 0o755)
        for server in (ms, self.pgbr, self.plain):
            server.start()
        run_timed(self.pgbackrest(self.pgbr_conf, "stanza-create")).check("stanza-create")
        run_timed(self.pgbackrest(self.pgbr_conf, "check")).check("pgbackrest check")
        for server in (ms, self.plain):
            with connect(server.port) as conn:
                self.switch_once(conn, timeout=60)
        say(f"servers up: ms :{ms.port} (markship wal-push), pgbr :{self.pgbr.port} "
            f"(pgBackRest async archive-push), plain :{self.plain.port} (bare zstd)")
        self.results["setup"] = {
            "scale": self.scale, "data_bytes_without_pg_wal": self.data_bytes,
            "ports": {"ms": ms.port, "pgbr": self.pgbr.port, "plain": self.plain.port},
        }

    def pgbackrest(self, conf: Path, *args: str) -> list[str]:
        return as_pg(["pgbackrest", f"--config={conf}", "--stanza=bench", *args])

    # -- 1. full backups -------------------------------------------------------------------------

    def bench_backups(self) -> None:
        say(f"== full backups: {self.runs} runs, order rotated each run")
        tools: dict[str, Callable[[], Timed]] = {
            "markship": lambda: run_timed(
                [str(MARKSHIP), "--config", str(self.ms_cfg), "backup", "--json"], poll_rss=True),
            "pgbackrest": lambda: run_timed(self.pgbackrest(self.pgbr_conf, "--type=full",
                                                            "backup")),
            "pg_basebackup": lambda: run_timed(self.basebackup_argv(self.plain),
                                               discard_stdout=True),
            "pg_basebackup_ms": lambda: run_timed(self.basebackup_argv(self.ms),
                                                  discard_stdout=True),
        }
        names = list(tools)
        times: dict[str, list[float]] = {name: [] for name in names}
        rss: list[int] = []
        inside: list[float] = []
        sizes: dict[str, Any] = {}
        for run in range(self.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                settle()
                result = tools[name]().check(f"{name} backup")
                times[name].append(result.seconds)
                line = f"run {run + 1} {name:<17} {fmt_s(result.seconds)}"
                if name == "markship":
                    rss.append(result.hwm_kb or 0)
                    inner = markship_inner_seconds(result.out)
                    inside.append(inner)
                    line += (f"  (set created→finished {inner:.2f} s, so "
                             f"{result.seconds - inner:.2f} s of process start, imports, config "
                             f"and exit; peak RSS {(result.hwm_kb or 0) / 1024:.0f} MB)")
                    if "markship" not in sizes:
                        sizes["markship"] = markship_sizes(result.out)
                say(line)
        sizes["pgbackrest"] = self.pgbackrest_sizes()
        med = {name: median(values) for name, values in times.items()}
        self.results["backup"] = {"seconds": times, "median_seconds": med,
                                  "markship_peak_rss_kb": rss, "sizes": sizes,
                                  "markship_set_created_to_finished_seconds": inside}
        raw = sizes["markship"].get("raw_bytes") or self.data_bytes
        rate = {name: raw / MIB / value for name, value in med.items() if value}
        self.results["backup"]["median_mib_per_s"] = rate
        vs_pgbr = med["markship"] / med["pgbackrest"]
        vs_bb = med["markship"] / med["pg_basebackup"]
        self.rows += [
            Row("full backup, median wall time", fmt_s(med["markship"]),
                f"pgBackRest {fmt_s(med['pgbackrest'])}", vs_pgbr, "≤1.0, aim 0.8, goal 0.5",
                ratio_verdict(vs_pgbr, 1.0, 0.8, 0.5)),
            Row("full backup, median wall time", fmt_s(med["markship"]),
                f"bare pg_basebackup {fmt_s(med['pg_basebackup'])}", vs_bb, "≤1.3 (goal)",
                ratio_verdict(vs_bb, 1.3)),
            Row("  (info) same pg_basebackup, on markship's server", fmt_s(med["markship"]),
                f"pg_basebackup {fmt_s(med['pg_basebackup_ms'])}",
                med["markship"] / med["pg_basebackup_ms"], "-", "info"),
            Row("peak RSS, markship backup process", f"{max(rss) / 1024:.0f} MB", "-", None,
                "< 150 MB", "PASS" if max(rss) < 150 * 1024 else "MISS"),
        ]

    def basebackup_argv(self, server: ScratchServer) -> list[str]:
        return as_pg([pg("pg_basebackup"), "-d", server.conninfo(), "-D", "-", "-Ft", "-X", "none",
                      "-c", "fast", "--compress=server-zstd:1", "--no-manifest"])

    def pgbackrest_sizes(self) -> dict[str, Any]:
        proc = run_timed(self.pgbackrest(self.pgbr_conf, "info", "--output=json"))
        try:
            info = json.loads(proc.out)[0]["backup"][-1]["info"]
            return {"raw_bytes": info["size"], "stored_bytes": info["repository"]["size"]}
        except (ValueError, KeyError, IndexError, TypeError):
            return {}

    # -- 2. restores -----------------------------------------------------------------------------

    def bench_restores(self) -> None:
        say(f"== restores to a running, promoted server: {self.runs} runs, alternating")
        fingerprint = pgbench_fingerprint(self.ms)
        times: dict[str, list[float]] = {"markship": [], "pgbackrest": []}
        cli_times: list[float] = []
        after_return: list[float] = []
        first_look: list[str] = []
        rss: list[int] = []
        checks: dict[str, bool] = {}
        for run in range(self.runs):
            order = ["markship", "pgbackrest"] if run % 2 == 0 else ["pgbackrest", "markship"]
            for name in order:
                settle()
                base = self.pg_dir(self.root / "restore" / f"{name}-{run + 1}", 0o755)
                server = ScratchServer(f"{name}-restore-{run + 1}", base, self.port())
                self.pg_dir(server.socket_dir, 0o755)
                self.tracked.append(server)
                started = time.perf_counter()
                if name == "markship":
                    result = run_timed(
                        [str(MARKSHIP), "--config", str(self.ms_cfg), "restore", "--server", "src",
                         "--target-dir", str(server.data_dir), "--latest", "--start",
                         "--port", str(server.port),
                         "--setting", f"unix_socket_directories={server.socket_dir}"],
                        poll_rss=True).check("markship restore")
                    returned = time.perf_counter()
                    first_look.append(wait_promoted(server.port))
                    cli_times.append(result.seconds)
                    after_return.append(time.perf_counter() - returned)
                    rss.append(result.hwm_kb or 0)
                else:
                    self.restore_pgbackrest(server)
                total = time.perf_counter() - started
                times[name].append(total)
                extra = ""
                if name == "markship":
                    state = ("promoted when markship returned" if first_look[-1] == "promoted"
                             else f"NOT promoted when markship returned ({first_look[-1]}); "
                             f"writable {after_return[-1] * 1000:.0f} ms later")
                    extra = (f"  (CLI {fmt_s(cli_times[-1])}; {state}; markship process peak "
                             f"RSS {rss[-1] / 1024:.0f} MB)")
                say(f"run {run + 1} {name:<10} {fmt_s(total)}{extra}")
                if run == 0:
                    checks[name] = pgbench_fingerprint(server) == fingerprint
                    say(f"  {name} restored data {'matches' if checks[name] else 'DIFFERS FROM'}"
                        " the source (pgbench fingerprint)")
                server.destroy()
                self.tracked.remove(server)
        med = {name: median(values) for name, values in times.items()}
        self.results["restore"] = {"seconds": times, "median_seconds": med,
                                   "markship_cli_seconds": cli_times,
                                   "markship_wait_after_return_seconds": after_return,
                                   "markship_first_look_after_return": first_look,
                                   "markship_peak_rss_kb": rss, "data_matches_source": checks}
        ratio = med["markship"] / med["pgbackrest"]
        self.rows += [
            Row("restore to running promoted server, median", fmt_s(med["markship"]),
                f"pgBackRest {fmt_s(med['pgbackrest'])}", ratio, "≤1.0, goal 0.7",
                ratio_verdict(ratio, 1.0, None, 0.7)),
            Row("peak RSS, markship restore process", f"{max(rss) / 1024:.0f} MB", "-", None,
                "< 150 MB", "PASS" if max(rss) < 150 * 1024 else "MISS"),
            Row("markship restore --start returns once promoted",
                f"{first_look.count('promoted')} of {len(first_look)} runs",
                f"max {max(after_return) * 1000:.0f} ms to writable after return", None,
                "all runs", "PASS" if first_look.count("promoted") == len(first_look)
                else "MISS"),
            Row("restored data equals source (fingerprint)",
                "yes" if checks.get("markship") else "NO",
                f"pgBackRest {'yes' if checks.get('pgbackrest') else 'NO'}", None, "equal",
                "PASS" if checks.get("markship") else "MISS"),
        ]

    def restore_pgbackrest(self, server: ScratchServer) -> None:
        """pgbackrest restore + pg_ctl start + wait until promoted (the caller times it)."""
        self.pg_dir(server.data_dir, 0o700)
        run_timed(self.pgbackrest(self.pgbr_restore_conf, f"--pg1-path={server.data_dir}",
                                  "--type=default", "--archive-mode=off", "restore")
                  ).check("pgbackrest restore")
        with (server.data_dir / "postgresql.auto.conf").open("a") as handle:
            handle.write(f"\n# backup_bench\nport = '{server.port}'\n"
                         f"unix_socket_directories = '{server.socket_dir}'\n")
        server.run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_file), "-w",
                   "-t", "600", "start", timeout=700)
        wait_promoted(server.port)

    # -- 3. pg_switch_wal() to archived ----------------------------------------------------------

    def switch_once(self, conn: Conn, timeout: float = 30) -> float:
        """Write a commit record, switch WAL, return seconds until the segment is archived."""
        scalar(conn, "SELECT txid_current()")
        started = time.perf_counter()
        segment = str(scalar(conn, "SELECT pg_walfile_name(pg_switch_wal())"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = str(scalar(conn, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"))
            if len(last) >= 24 and last[:8] == segment[:8] and last[8:24] >= segment[8:24]:
                return time.perf_counter() - started
            time.sleep(0.005)
        raise RuntimeError(f"{segment} not archived within {timeout:.0f} s")

    def bench_switch(self) -> None:
        say(f"== pg_switch_wal() → archived: {self.samples} samples per archiver")
        found: dict[str, list[float]] = {}
        for label, server in (("markship", self.ms), ("pgbackrest", self.pgbr),
                              ("zstd", self.plain)):
            values = []
            with connect(server.port) as conn:
                for _ in range(self.samples):
                    time.sleep(0.3)
                    values.append(self.switch_once(conn))
            found[label] = values
            say(f"{label:<10} median {median(values) * 1000:.0f} ms  "
                f"({', '.join(f'{v * 1000:.0f}' for v in values)} ms)")
        med = {k: median(v) for k, v in found.items()}
        self.results["switch_to_archived"] = {"seconds": found, "median_seconds": med}
        ratio = med["markship"] / med["pgbackrest"]
        self.rows += [
            Row("pg_switch_wal() → archived, median", f"{med['markship'] * 1000:.0f} ms",
                f"pgBackRest async {med['pgbackrest'] * 1000:.0f} ms", ratio, "≤1.0 (goal)",
                ratio_verdict(ratio, 1.0)),
            Row("  (info) same, bare zstd archive_command", f"{med['markship'] * 1000:.0f} ms",
                f"zstd {med['zstd'] * 1000:.0f} ms", med["markship"] / med["zstd"], "-", "info"),
        ]

    # -- 4. sustained archiving under pgbench ----------------------------------------------------

    def bench_sustained(self) -> None:
        say(f"== sustained archiving: pgbench -c 4 -j 2 -T {self.duration} on the markship server "
            "(markship wal-push is its only archive_command)")
        query = ("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint, archived_count, "
                 "failed_count FROM pg_stat_archiver")
        samples: list[dict[str, float]] = []
        with connect(self.ms.port) as conn:
            def sample(t0: float, phase: str) -> dict[str, float]:
                row = conn.execute(query).fetchone()
                assert row is not None
                entry = {"t": time.monotonic() - t0, "lsn": int(row[0]), "archived": int(row[1]),
                         "failed": int(row[2]), "ready": count_ready(self.ms.data_dir),
                         "load": 1.0 if phase == "load" else 0.0}
                samples.append(entry)
                return entry

            t0 = time.monotonic()
            first = sample(t0, "load")
            proc = subprocess.Popen(self.pgbench_argv(self.ms, "-c", "4", "-j", "2", "-T",
                                                      str(self.duration)),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            tick = t0
            while proc.poll() is None:
                tick += 1.0
                time.sleep(max(0.0, tick - time.monotonic()))
                sample(t0, "load")
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"pgbench failed: {err.strip()[-500:]}")
            at_end = sample(t0, "drain")
            load_seconds = at_end["t"]
            deadline = time.monotonic() + 120
            last = at_end
            while last["ready"] > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
                last = sample(t0, "drain")
            drained_after = last["t"] - load_seconds if last["ready"] == 0 else float("nan")
        tps = next((float(line.split()[2]) for line in out.splitlines()
                    if line.startswith("tps = ")), float("nan"))
        produced = at_end["lsn"] // SEGMENT - first["lsn"] // SEGMENT
        pushed_during_load = at_end["archived"] - first["archived"]
        load = [s for s in samples if s["load"] == 1.0]
        lags = [int(s["ready"]) for s in load]
        half = max(1, len(lags) // 2)
        first_half, second_half = lags[:half], lags[half:] or lags[-1:]
        bounded = (max(second_half) <= max(2, max(first_half))
                   and drained_after == drained_after and drained_after < 30)
        failed = int(last["failed"] - first["failed"])
        self.results["sustained"] = {
            "duration_s": self.duration, "pgbench_tps": tps, "load_seconds": load_seconds,
            "segments_produced": produced, "segments_pushed_during_load": pushed_during_load,
            "produced_per_s": produced / load_seconds, "pushed_per_s":
            pushed_during_load / load_seconds, "max_lag_segments": max(lags),
            "lag_at_load_end": int(at_end["ready"]), "drained_seconds_after_load": drained_after,
            "archive_failures": failed, "lag_bounded": bounded, "samples": samples,
        }
        say(f"tps {tps:.0f}; produced {produced} segments ({produced / load_seconds:.2f}/s), "
            f"pushed {pushed_during_load} ({pushed_during_load / load_seconds:.2f}/s); "
            f"lag max {max(lags)}, at end {int(at_end['ready'])}, drained "
            f"{drained_after:.1f} s after load; archive failures {failed}")
        say("lag per second (segments .ready): " + " ".join(str(v) for v in lags))
        self.rows.append(Row(
            f"sustained pgbench -T {self.duration}: pushed/s vs produced/s",
            f"{pushed_during_load / load_seconds:.2f}/s",
            f"produced {produced / load_seconds:.2f}/s",
            (pushed_during_load / produced) if produced else None,
            "lag bounded", "PASS" if bounded and failed == 0 else "MISS"))
        self.rows.append(Row("  max archive lag under load (segments)", str(max(lags)),
                             f"drained {drained_after:.1f} s after load", None, "-", "info"))
        self.tps_on_off()

    def tps_on_off(self) -> None:
        """pgbench tps on the markship server with archiving off (`archive_command = ''`: the
        WAL waits as `.ready` files) and on (markship wal-push), in alternating windows of
        duration/3 s, three of each, so both see the same machine. The backlog an "off"
        window leaves is archived before the next "on" window starts, outside both."""
        window = max(5, self.duration // 3)
        say(f"== pgbench tps, archiving off vs on: 3 × {window} s each, alternating")
        tps: dict[str, list[float]] = {"off": [], "on": []}
        with connect(self.ms.port) as conn:
            try:
                for i in range(3):
                    for state in ("off", "on") if i % 2 == 0 else ("on", "off"):
                        conn.execute("ALTER SYSTEM SET archive_command = ''" if state == "off"
                                     else "ALTER SYSTEM RESET archive_command")
                        conn.execute("SELECT pg_reload_conf()")
                        time.sleep(0.5)
                        deadline = time.monotonic() + 300
                        while state == "on" and count_ready(self.ms.data_dir) > 0:
                            if time.monotonic() > deadline:
                                raise RuntimeError("the off window's backlog was not archived")
                            time.sleep(0.1)
                        result = run_timed(self.pgbench_argv(
                            self.ms, "-c", "4", "-j", "2", "-T", str(window)), timeout=600)
                        result.check("pgbench")
                        tps[state].append(next(float(line.split()[2])
                                               for line in result.out.splitlines()
                                               if line.startswith("tps = ")))
            finally:
                conn.execute("ALTER SYSTEM RESET archive_command")
                conn.execute("SELECT pg_reload_conf()")
        ratio = sum(tps["on"]) / sum(tps["off"])
        say(f"tps off {' '.join(f'{v:.0f}' for v in tps['off'])}; on "
            f"{' '.join(f'{v:.0f}' for v in tps['on'])}; ratio {ratio:.3f}")
        self.results["tps_archiving"] = {"window_s": window, "tps": tps, "ratio": ratio}
        self.rows.append(Row("pgbench tps, markship archiving on vs off",
                             f"{sum(tps['on']) / 3:.0f} tps", f"off {sum(tps['off']) / 3:.0f} tps",
                             ratio, "≥0.97 (goal)",
                             ratio_verdict(ratio, 0.97, higher_is_better=True)))

    # -- 5. backlog drain rate -------------------------------------------------------------------

    def bench_drain(self) -> None:
        say(f"== WAL backlog drain: archive_command paused, ~{self.drain_segments} segments "
            "queued, then resumed")
        found: dict[str, dict[str, float]] = {}
        for label, server in (("markship", self.ms), ("pgbackrest", self.pgbr)):
            found[label] = self.drain_once(server)
            say(f"{label:<10} {found[label]['segments']:.0f} segments in "
                f"{found[label]['seconds']:.2f} s = {found[label]['per_s']:.1f} segments/s")
        self.results["backlog_drain"] = found
        ratio = found["markship"]["per_s"] / found["pgbackrest"]["per_s"]
        self.rows.append(Row("WAL backlog drain rate", f"{found['markship']['per_s']:.1f} seg/s",
                             f"pgBackRest async {found['pgbackrest']['per_s']:.1f} seg/s", ratio,
                             "≥1.0 (goal)", ratio_verdict(ratio, 1.0, higher_is_better=True)))

    def drain_once(self, server: ScratchServer) -> dict[str, float]:
        return drain_backlog(server, self.drain_segments)

    # -- 6. wal-push per segment -----------------------------------------------------------------

    def bench_walpush(self) -> None:
        say(f"== wal-push per 16 MB segment: {self.segments} real pgbench segments, fresh "
            "repository, each command as `runuser -u postgres -- sh -c CMD` (process start in)")
        stage = self.real_segments()
        repo = self.pg_dir(self.root / "wal" / "repo")
        cfg = self.write_file(self.root / "wal" / "markship.toml",
                              markship_toml(repo, self.ms.port))
        zdir = self.pg_dir(self.root / "wal" / "zstd")
        zsync = self.pg_dir(self.root / "wal" / "zstd-sync")
        names = sorted(p.name for p in stage.iterdir())

        def markship_cmd(name: str) -> list[str]:
            return sh_as_pg(f"{MARKSHIP} --config {cfg} wal-push --server src {stage / name}")

        def zstd_cmd(name: str) -> list[str]:
            return sh_as_pg(f"zstd -1 -q -f {stage / name} -o {zdir / name}.zst")

        def zstd_sync_cmd(name: str) -> list[str]:
            tmp, final = zsync / f"{name}.tmp", zsync / f"{name}.zst"
            return sh_as_pg(f"zstd -1 -q -f {stage / name} -o {tmp} && sync {tmp} && "
                            f"mv {tmp} {final} && sync {zsync}")

        times: dict[str, list[float]] = {"markship": [], "zstd": [], "zstd_durable": [],
                                         "runuser_sh_true": [], "markship_repush": []}
        rss: list[int] = []
        for i, name in enumerate(names):
            pair: list[tuple[str, Callable[[str], list[str]]]] = [
                ("markship", markship_cmd), ("zstd", zstd_cmd), ("zstd_durable", zstd_sync_cmd)]
            if i % 2:
                pair.reverse()
            for label, make in pair:
                result = run_timed(make(name)).check(f"{label} {name}")
                times[label].append(result.seconds)
                if label == "markship":
                    rss.append(result.tree_maxrss_kb)
            times["runuser_sh_true"].append(run_timed(sh_as_pg("true")).seconds)
        for name in names:
            result = run_timed(markship_cmd(name)).check(f"markship re-push {name}")
            times["markship_repush"].append(result.seconds)
        stored = sum(p.stat().st_size for p in repo.rglob("*.zst"))
        zstd_stored = sum(p.stat().st_size for p in zdir.glob("*.zst"))
        med = {k: median(v) for k, v in times.items()}
        self.results["wal_push"] = {"segments": names, "seconds": times, "median_seconds": med,
                                    "markship_peak_rss_kb": rss, "markship_stored_bytes": stored,
                                    "zstd_stored_bytes": zstd_stored}
        for label, value in med.items():
            say(f"{label:<16} median {value * 1000:.0f} ms")
        say(f"compressed: markship {stored / MIB:.1f} MiB, zstd {zstd_stored / MIB:.1f} MiB for "
            f"{len(names) * 16} MiB of WAL; serial push rate ≈ {1 / med['markship']:.1f} "
            "segments/s")
        ratio = med["markship"] / med["zstd"]
        self.rows += [
            Row("wal-push per segment, median (process start in)",
                f"{med['markship'] * 1000:.0f} ms", f"bare zstd {med['zstd'] * 1000:.0f} ms",
                ratio, "≤1.5", ratio_verdict(ratio, 1.5)),
            Row("  (info) vs zstd + fsync + rename", f"{med['markship'] * 1000:.0f} ms",
                f"zstd durable {med['zstd_durable'] * 1000:.0f} ms",
                med["markship"] / med["zstd_durable"], "-", "info"),
            Row("  (info) idempotent re-push of an archived segment",
                f"{med['markship_repush'] * 1000:.0f} ms",
                f"runuser+sh alone {med['runuser_sh_true'] * 1000:.0f} ms", None, "-", "info"),
            Row("peak RSS, markship wal-push process", f"{max(rss) / 1024:.0f} MB", "-", None,
                "< 150 MB", "PASS" if max(rss) < 150 * 1024 else "MISS"),
        ]

    def real_segments(self) -> Path:
        """Full 16 MB segments written by pgbench on the plain server, decompressed."""
        before = {p.name for p in self.plain_archive.iterdir()}

        def new_segments() -> list[Path]:
            return sorted(p for p in self.plain_archive.iterdir()
                          if p.name not in before and len(p.name) == 28 and p.suffix == ".zst")

        # A CHECKPOINT before each short pgbench run makes the next page touches write full-page
        # images, as after every checkpoint in production; without it a small scale writes so
        # little WAL that collecting the segments would take minutes.
        deadline = time.monotonic() + 300
        while len(new_segments()) < self.segments:
            if time.monotonic() > deadline:
                raise RuntimeError("pgbench did not produce enough WAL in 300 s")
            self.plain.psql("CHECKPOINT")
            run_timed(self.pgbench_argv(self.plain, "-n", "-c", "4", "-j", "2", "-T", "5")
                      ).check("pgbench")
        stage = self.pg_dir(self.root / "wal" / "stage", 0o700)
        for source in new_segments()[: self.segments]:
            target = stage / source.stem
            subprocess.run(["zstd", "-d", "-q", "-f", str(source), "-o", str(target)], check=True)
            chown_to(target, OS_USER)
            target.chmod(0o600)
        return stage

    # -- running it all --------------------------------------------------------------------------

    def run(self) -> None:
        self.results["meta"] = {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "page_cache": "warm (cannot be dropped on this machine)",
            "options": {"scale": self.scale, "duration": self.duration, "runs": self.runs,
                        "samples": self.samples, "segments": self.segments,
                        "drain_segments": self.drain_segments, "phases": list(self.phases)},
            "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                     "loadavg_at_start": loadavg()},
            "versions": {
                "markship": tool_version([str(MARKSHIP), "--version"]),
                "markship_installed_at": installed_at(),
                "work_tree_head": tool_version(["git", "-C", str(Path(__file__).resolve().parent),
                                                "rev-parse", "--short", "HEAD"]),
                "postgres": tool_version([pg("postgres"), "--version"]),
                "pgbackrest": tool_version(["pgbackrest", "version"]),
                "zstd": tool_version(["zstd", "--version"]),
            },
        }
        self.setup()
        steps: dict[str, Callable[[], None]] = {
            "backup": self.bench_backups, "restore": self.bench_restores,
            "switch": self.bench_switch, "sustained": self.bench_sustained,
            "drain": self.bench_drain, "walpush": self.bench_walpush,
        }
        for phase in PHASES:
            if phase in self.phases:
                steps[phase]()

    def summary(self) -> Path:
        print()
        print("=" * 100)
        if "failed" in self.results:
            print(f"INCOMPLETE RUN, it failed: {self.results['failed']}")
        print(f"markship benchmark summary — pgbench scale {self.scale}, "
              f"{self.data_bytes / MIB:.0f} MiB data, {os.cpu_count()} CPUs, runs={self.runs}")
        print(WARM_CACHE)
        versions = self.results["meta"]["versions"]
        print(f"{versions['markship']} (installed {versions['markship_installed_at']}, work tree "
              f"HEAD {versions['work_tree_head']}); {versions['postgres']}; "
              f"{versions['pgbackrest']}")
        report_install_and_load(self.results)
        print("ratio = markship ÷ anchor (for drain rate and pushed/produced: higher is better)")
        print("=" * 100)
        backup = self.results.get("backup")
        if backup:
            print("\nfull backup, each run (s):")
            print_table(["tool", "runs", "median", "MiB/s"], [
                [name, " ".join(f"{v:.2f}" for v in values),
                 f"{backup['median_seconds'][name]:.2f}",
                 f"{backup['median_mib_per_s'].get(name, 0):.0f}"]
                for name, values in backup["seconds"].items()])
            sizes = backup["sizes"]
            for name, entry in sizes.items():
                if entry.get("raw_bytes") and entry.get("stored_bytes"):
                    print(f"  {name}: {entry['raw_bytes'] / MIB:.0f} MiB → "
                          f"{entry['stored_bytes'] / MIB:.1f} MiB stored "
                          f"({entry['raw_bytes'] / entry['stored_bytes']:.1f}×)")
        restore = self.results.get("restore")
        if restore:
            print("\nrestore to a running promoted server, each run (s):")
            print_table(["tool", "runs", "median"], [
                [name, " ".join(f"{v:.2f}" for v in values),
                 f"{restore['median_seconds'][name]:.2f}"]
                for name, values in restore["seconds"].items()])
        print()
        print_table(["metric", "markship", "anchor", "ratio", "target", "verdict"], [
            [r.metric, r.markship, r.anchor, "-" if r.ratio is None else f"{r.ratio:.2f}",
             r.target, r.verdict] for r in self.rows])
        self.results["summary"] = [r.__dict__ for r in self.rows]
        return save_results(self.results)

    def cleanup(self) -> None:
        os.chdir("/")
        stop_servers(list(reversed(self.tracked)))
        # pgBackRest's async archiver exits on its own once idle
        remove_root(getattr(self, "root", None), self.keep, settle=0.5)


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


def markship_toml(repo: Path, port: int) -> str:
    return (f'[group]\nname = "bench"\n\n[repository]\npath = {json.dumps(str(repo))}\n'
            f'os_user = "{OS_USER}"\n\n[[server]]\nname = "src"\n'
            f'conninfo = "host=127.0.0.1 port={port} user=postgres dbname=postgres"\n')


def pgbackrest_conf(repo_base: Path, own: Path, server: ScratchServer) -> str:
    return f"""[global]
repo1-path={repo_base / "repo"}
repo1-retention-full=99
spool-path={own / "spool"}
lock-path={own / "lock"}
log-path={own / "log"}
archive-async=y
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=50, help="pgbench -i scale (default 50)")
    parser.add_argument("--duration", type=int, default=60,
                        help="seconds of pgbench load for the sustained-archiving phase")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed runs of each backup and restore (at least 2)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the bench directory (servers are stopped anyway)")
    parser.add_argument("--samples", type=int, default=7,
                        help="pg_switch_wal() samples per archiver")
    parser.add_argument("--segments", type=int, default=20,
                        help="WAL segments for the wal-push timing")
    parser.add_argument("--drain-segments", type=int, default=40,
                        help="size of the WAL backlog for the drain-rate phase")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    args = parser.parse_args(argv)
    if args.runs < 2:
        parser.error("--runs must be at least 2")
    chosen = set(args.phases.split(","))
    if chosen - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(chosen - set(PHASES)))}")
    if "restore" in chosen:
        chosen.add("backup")  # the restores need the backups
    args.phases = ",".join(p for p in PHASES if p in chosen)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root():
        return 2
    ensure_tools()
    bench = Bench(scale=args.scale, duration=args.duration, runs=args.runs, keep=args.keep,
                  samples=args.samples, segments=args.segments,
                  drain_segments=args.drain_segments,
                  phases=tuple(p for p in PHASES if p in args.phases.split(",")))
    return run_guarded(bench, lambda: hasattr(bench, "data_bytes"))


if __name__ == "__main__":
    sys.exit(main())
