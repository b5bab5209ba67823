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
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    MARKSHIP,
    MIB,
    OS_USER,
    PG_BIN,
    WARM_CACHE,
    Conn,
    Row,
    Timed,
    as_pg,
    chosen_phases,
    connect,
    count_ready,
    fmt_s,
    median,
    pg,
    print_table,
    ratio_verdict,
    remove_root,
    report_install_and_load,
    run_guarded,
    run_meta,
    run_timed,
    running_as_root,
    save_results,
    say,
    scalar,
    settle,
    sh_as_pg,
    stop_servers,
    summary_head,
    tool_version,
    wait_promoted,
)
from markship.pg.scratch import ScratchServer, chown_to
from side_by_side import (
    ScratchFiles,
    alternating,
    bench_root,
    drain_backlog,
    make_wal,
    markship_inner_seconds,
    markship_sizes,
    markship_toml,
    pgbackrest_conf,
    pgbackrest_sizes,
    print_sizes,
    same_data,
    same_data_row,
)
from tests.support.fingerprints import pgbench_fingerprint  # importable once common is

SEGMENT = 16 * 1024 * 1024
PHASES = ("backup", "restore", "switch", "sustained", "drain", "walpush")


def segment_index(wal_name: str) -> int:
    """Position of a 16 MB segment in the WAL stream, from its file name (timeline ignored)."""
    return int(wal_name[8:16], 16) * 0x100 + int(wal_name[16:24], 16)


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
        self.root = bench_root("markship-bench-")
        ms, self.data_bytes = self.pgbench_source("ms", self.scale)
        # Two physical copies of the same stopped cluster: identical data for every tool.
        self.ms, self.pgbr, self.plain = ms, self.copy_server(ms, "pgbr"), self.copy_server(
            ms, "plain")

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
            pgbackrest_conf(f"repo1-path={self.pg_dir(self.root / 'pgbackrest') / 'repo'}",
                            self.root / "pgbackrest", self.pgbr))
        self.pgbr_restore_conf = self.write_file(
            self.root / "pgbackrest-restore.conf",
            pgbackrest_conf(f"repo1-path={self.root / 'pgbackrest' / 'repo'}",
                            self.pg_dir(self.root / "pgbackrest-restore"), self.pgbr))
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
        sizes["pgbackrest"] = pgbackrest_sizes(self.pgbackrest(self.pgbr_conf, "info",
                                                               "--output=json"))
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
            for name in alternating(["markship", "pgbackrest"], run):
                settle()
                server = self.restore_target(name, run + 1)
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
                    checks[name] = same_data(name, server, fingerprint)
                self.drop(server)
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
            same_data_row(checks),
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

        make_wal(self.plain, lambda: len(new_segments()) >= self.segments, timeout=300)
        stage = self.pg_dir(self.root / "wal" / "stage", 0o700)
        for source in new_segments()[: self.segments]:
            target = stage / source.stem
            subprocess.run(["zstd", "-d", "-q", "-f", str(source), "-o", str(target)], check=True)
            chown_to(target, OS_USER)
            target.chmod(0o600)
        return stage

    # -- running it all --------------------------------------------------------------------------

    def run(self) -> None:
        self.results["meta"] = run_meta(
            MARKSHIP, {"scale": self.scale, "duration": self.duration, "runs": self.runs,
                       "samples": self.samples, "segments": self.segments,
                       "drain_segments": self.drain_segments, "phases": list(self.phases)},
            pgbackrest=tool_version(["pgbackrest", "version"]),
            zstd=tool_version(["zstd", "--version"]))
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
        summary_head(self.results, f"markship benchmark summary — pgbench scale {self.scale}, "
                     f"{self.data_bytes / MIB:.0f} MiB data, {os.cpu_count()} CPUs, "
                     f"runs={self.runs}", WARM_CACHE)
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
            print_sizes(backup["sizes"])
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
    args.phases = chosen_phases(parser, args.phases, PHASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root():
        return 2
    ensure_tools()
    bench = Bench(scale=args.scale, duration=args.duration, runs=args.runs, keep=args.keep,
                  samples=args.samples, segments=args.segments,
                  drain_segments=args.drain_segments,
                  phases=args.phases)
    return run_guarded(bench, lambda: hasattr(bench, "data_bytes"))


if __name__ == "__main__":
    sys.exit(main())
