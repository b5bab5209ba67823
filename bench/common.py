"""What the benchmarks share: running and timing commands as the postgres OS user, what is
recorded of the installs measured, the summary table and the results file, and running a
bench so that it always cleans up."""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import psycopg
from psycopg.rows import TupleRow

import markship
from markship.pg.scratch import ScratchServer, as_user

# The checkout, for the test suite's helpers (run as `python bench/NAME.py`).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The markship of the interpreter running the bench (its virtualenv's): the in-process calls
# and the commands then measure the same install.
MARKSHIP = Path(sys.executable).parent / "markship"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
MIB = 1024 * 1024
RESULTS_DIR = Path(__file__).resolve().parent / "results"
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
              timeout: float = 3600, poller: Callable[[int], Poller] | None = None,
              env: dict[str, str] | None = None) -> Timed:
    """Run a command to completion; wall time includes process start (fork/exec) and exit.
    `poll_rss`: sample the child's VmHWM (HwmPoller); `poller`: another sampler, made with the
    child's pid (the caller keeps it for its report); `env`: added to the environment."""
    if poll_rss and poller is None:
        poller = HwmPoller
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdout: Any = subprocess.DEVNULL if discard_stdout else out
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=stdout, stderr=err, stdin=subprocess.DEVNULL,
                                env={**os.environ, **env} if env else None)
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


def installed_digest() -> str:
    """A digest of the installed markship sources: the work tree's HEAD says nothing about what
    was installed into the venv (from a snapshot, maybe commits ago)."""
    root = Path(markship.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def run_meta(markship: Path, options: dict[str, Any], **versions: str) -> dict[str, Any]:
    """What a bench records of its run before it starts: the time, the options, the host and
    the versions measured (markship, PostgreSQL and `versions`)."""
    return {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "page_cache": "warm (cannot be dropped on this machine)",
        "options": options,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                 "loadavg_at_start": loadavg()},
        "versions": {
            "markship": tool_version([str(markship), "--version"]),
            "markship_executable": str(markship),
            "markship_installed_at": installed_at(),
            "markship_installed_digest": installed_digest(),
            "work_tree_head": tool_version(["git", "-C", str(Path(__file__).resolve().parent),
                                            "rev-parse", "--short", "HEAD"]),
            "postgres": tool_version([pg("postgres"), "--version"]),
            **versions,
        },
    }


def summary_head(results: dict[str, Any], *lines: str) -> None:
    """The head of a summary: a rule, whether the run failed, then `lines`."""
    print()
    print("=" * 100)
    if "failed" in results:
        print(f"INCOMPLETE RUN, it failed: {results['failed']}")
    for line in lines:
        print(line)


def chosen_phases(parser: argparse.ArgumentParser, given: str,
                  phases: tuple[str, ...]) -> tuple[str, ...]:
    """The phases named in `given` (comma-separated) in run order; a restore brings the
    backups it needs."""
    chosen = set(given.split(","))
    if chosen - set(phases):
        parser.error(f"unknown phase(s): {', '.join(sorted(chosen - set(phases)))}")
    if "restore" in chosen:
        chosen.add("backup")  # the restores need the backups
    return tuple(p for p in phases if p in chosen)
