#!/usr/bin/env python3
"""Encryption overhead benchmark: markship backup and restore with [encryption] on vs off.

Two targets from the issue, measured in ONE invocation on the same data (these machines are
shared and noisy, so the ratios are what counts; the page cache is warm and cannot be dropped):

1. backup and restore with encryption on vs off, pgbench scale 50: encrypted ÷ plain ≤ 1.15,
   for the wall time of `markship backup` and of `markship restore` (to a promoted server);
2. peak RSS of an encrypted `markship backup` of a ~2 GB data directory (scale 135) < 150 MB,
   summed over the markship process tree (the Python process and its pg_basebackup).

Run as root with the markship virtualenv's interpreter:

    /opt/markship/venv/bin/python bench/crypto_bench.py                               # full
    /opt/markship/venv/bin/python bench/crypto_bench.py --scale 5 --rss-scale 0 --runs 1  # smoke

ONE `pgbench -i` data directory, stopped cleanly and copied with `cp -a`, gives two servers with
identical data; each archives with its own archive_command into its own repository:

    plain  archive_command = markship --config plain.toml wal-push   (no [encryption])
    enc    archive_command = markship --config enc.toml wal-push     ([encryption], age)

so the encrypted variant pays for encryption everywhere a real installation does (base backup
stream, WAL pushed while the backup waits for its end segment, WAL fetched during recovery),
and neither variant waits for the other's archiver. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import side_by_side
from common import (
    MARKSHIP,
    MIB,
    OS_USER,
    WARM_CACHE,
    Row,
    Timed,
    dir_bytes,
    fmt_s,
    median,
    package_version,
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
    settle,
    stop_servers,
    summary_head,
    wait_promoted,
)
from markship.pg.scratch import ScratchServer, chown_to, wait_archived
from side_by_side import (
    ScratchFiles,
    alternating,
    bench_root,
    markship_inner_seconds,
    markship_sizes,
    restore_log,
    same_data,
)
from tests.support.fingerprints import pgbench_fingerprint  # importable once common is
from tree_rss import run_tree_rss

VARIANTS = ("plain", "enc")
LABEL = {"plain": "encryption off", "enc": "encryption on (age)"}
OVERHEAD_TARGET = 1.15
RSS_LIMIT_MB = 150
ONE_MB = 1024 * 1024  # RSS figures in MB as backup_bench prints them (KiB / 1024)


# -- helpers ---------------------------------------------------------------------------------------


def markship_toml(repo: Path, port: int, encryption: tuple[str, Path] | None) -> str:
    text = side_by_side.markship_toml(repo, port)
    if encryption is not None:
        recipient, identity = encryption
        text += (f"\n[encryption]\nrecipient = {json.dumps(recipient)}\n"
                 f"identity_file = {json.dumps(str(identity))}\n")
    return text


def parse_recipient(output: str) -> str:
    found = re.search(r'^recipient = "(age1[0-9a-z]+)"', output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no recipient in the output of markship key create:\n{output}")
    return found.group(1)


def stderr_notes(text: str) -> list[str]:
    """markship's warnings and other messages on stderr (progress lines left out)."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and "\r" not in line and not line.lstrip().startswith("✓")]


def json_warnings(output: str) -> list[str]:
    """`"warnings"` of a --json answer (backup puts the key-export warning there)."""
    try:
        found = json.loads(output).get("warnings") or []
    except (ValueError, AttributeError):
        return []
    return [f"(JSON warning) {item}" for item in found]


def repo_sizes(repo: Path) -> dict[str, int]:
    """Bytes in the repository: the whole, base backups, WAL, everything else."""
    total = dir_bytes(repo)
    backups = dir_bytes(repo / "backups") if (repo / "backups").exists() else 0
    wal = dir_bytes(repo / "wal") if (repo / "wal").exists() else 0
    base = sum(p.stat().st_size for p in (repo / "backups").rglob("base.tar*")) \
        if (repo / "backups").exists() else 0
    wal_objects = sum(1 for p in (repo / "wal").rglob("*") if p.is_file()) \
        if (repo / "wal").exists() else 0
    return {"total": total, "backups": backups, "base_tar": base, "wal": wal,
            "wal_objects": wal_objects, "other": total - backups - wal}


# -- the benchmark ---------------------------------------------------------------------------------


@dataclass
class CryptoBench(ScratchFiles):
    scale: int
    rss_scale: int
    runs: int
    keep: bool
    root: Path = field(init=False)
    tracked: list[ScratchServer] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    used_ports: set[int] = field(default_factory=set)
    notes: dict[str, int] = field(default_factory=dict)
    servers: dict[str, ScratchServer] = field(default_factory=dict)
    configs: dict[str, Path] = field(default_factory=dict)
    repos: dict[str, Path] = field(default_factory=dict)
    data_bytes: int = 0

    # -- helpers ---------------------------------------------------------------------------------

    def note(self, result: Timed) -> None:
        """Remember what markship printed on stderr and the warnings in its JSON output; each
        shown once, counted."""
        for line in stderr_notes(result.err) + json_warnings(result.out):
            if line not in self.notes:
                say(f"  markship said: {line}")
            self.notes[line] = self.notes.get(line, 0) + 1

    def archive_to(self, server: ScratchServer, *configs: Path) -> None:
        command = " && ".join(f"{MARKSHIP} --config {cfg} wal-push --server src %p"
                              for cfg in configs)
        server.write_settings({"archive_mode": "on", "archive_command": command})

    def backup_argv(self, variant: str) -> list[str]:
        return [str(MARKSHIP), "--config", str(self.configs[variant]), "backup", "--json"]

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.root = bench_root("markship-crypto-bench-")

        # The key: created by markship, readable by the repository's OS user only.
        self.identity = self.root / "key.txt"
        created = run_timed([str(MARKSHIP), "key", "create", "--identity-file",
                             str(self.identity)]).check("markship key create")
        self.recipient = parse_recipient(created.out)
        chown_to(self.identity, OS_USER)
        self.identity.chmod(0o600)
        say(f"age key created: {created.out.strip().splitlines()[0]}")

        plain, self.data_bytes = self.pgbench_source("plain", self.scale)
        enc = self.copy_server(plain, "enc")
        self.servers = {"plain": plain, "enc": enc}

        for variant, server in self.servers.items():
            self.repos[variant] = self.pg_dir(self.root / f"{variant}-repo")
            self.configs[variant] = self.write_file(
                self.root / f"{variant}.toml",
                markship_toml(self.repos[variant], server.port,
                              (self.recipient, self.identity) if variant == "enc" else None))
            self.archive_to(server, self.configs[variant])
        self.pg_dir(self.root / "restore", 0o755)
        for server in self.servers.values():
            server.start()
            wait_archived(server)  # archiving works, and the first push is out of the timings
        say(f"servers up: plain :{plain.port} → {self.repos['plain'].name}, enc :{enc.port} → "
            f"{self.repos['enc'].name} (age recipient in {self.configs['enc'].name})")
        self.results["setup"] = {
            "scale": self.scale, "data_bytes_without_pg_wal": self.data_bytes,
            "ports": {name: server.port for name, server in self.servers.items()},
            "configs": {name: path.read_text() for name, path in self.configs.items()},
        }

    # -- 1. backups ------------------------------------------------------------------------------

    def bench_backups(self) -> None:
        say(f"== markship backup, encryption off vs on: {self.runs} run(s), order alternating")
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        inner: dict[str, list[float]] = {v: [] for v in VARIANTS}
        rss: dict[str, list[int]] = {v: [] for v in VARIANTS}
        sizes: dict[str, Any] = {}
        for run in range(self.runs):
            for variant in alternating(VARIANTS, run):
                settle()
                result = run_timed(self.backup_argv(variant), poll_rss=True).check(
                    f"markship backup ({variant})")
                self.note(result)
                seconds = markship_inner_seconds(result.out)
                times[variant].append(result.seconds)
                inner[variant].append(seconds)
                rss[variant].append(result.hwm_kb or 0)
                sizes.setdefault(variant, markship_sizes(result.out))
                say(f"run {run + 1} {variant:<5} {fmt_s(result.seconds)}  (set created→finished "
                    f"{seconds:.2f} s; markship process peak RSS "
                    f"{(result.hwm_kb or 0) / 1024:.0f} MB)")
        med = {v: median(times[v]) for v in VARIANTS}
        med_inner = {v: median(inner[v]) for v in VARIANTS}
        repos = {v: repo_sizes(self.repos[v]) for v in VARIANTS}
        self.results["backup"] = {"seconds": times, "median_seconds": med,
                                  "set_created_to_finished_seconds": inner,
                                  "median_set_created_to_finished_seconds": med_inner,
                                  "markship_peak_rss_kb": rss, "sizes": sizes,
                                  "repository_bytes_after_backups": repos}
        ratio = med["enc"] / med["plain"]
        ratio_inner = med_inner["enc"] / med_inner["plain"]
        self.rows += [
            Row("markship backup, median wall time", fmt_s(med["enc"]),
                f"encryption off {fmt_s(med['plain'])}", ratio, f"≤{OVERHEAD_TARGET}",
                ratio_verdict(ratio, OVERHEAD_TARGET)),
            Row("  (info) set created→finished (no process start)", fmt_s(med_inner["enc"]),
                f"encryption off {fmt_s(med_inner['plain'])}", ratio_inner, "-", "info"),
            Row("  (info) peak RSS, markship backup process",
                f"{max(rss['enc']) / 1024:.0f} MB",
                f"encryption off {max(rss['plain']) / 1024:.0f} MB", None, "-", "info"),
        ]
        stored = {v: sizes[v].get("stored_bytes") for v in VARIANTS}
        if stored["enc"] and stored["plain"]:
            self.rows.append(Row(
                "  (info) one base backup, stored", f"{stored['enc'] / MIB:.2f} MiB",
                f"encryption off {stored['plain'] / MIB:.2f} MiB",
                stored["enc"] / stored["plain"], "≈1.00", "info"))
        self.rows.append(Row(
            f"  (info) repository after {self.runs} backup(s)",
            f"{repos['enc']['total'] / MIB:.2f} MiB", f"encryption off "
            f"{repos['plain']['total'] / MIB:.2f} MiB",
            repos["enc"]["total"] / repos["plain"]["total"], "≈1.00", "info"))

    # -- 2. restores -----------------------------------------------------------------------------

    def bench_restores(self) -> None:
        say(f"== markship restore --latest --start to a promoted server, encryption off vs on: "
            f"{self.runs} run(s), order alternating")
        fingerprint = pgbench_fingerprint(self.servers["plain"])
        if pgbench_fingerprint(self.servers["enc"]) != fingerprint:
            raise RuntimeError("the two source servers hold different data")
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cli: dict[str, list[float]] = {v: [] for v in VARIANTS}
        rss: dict[str, list[int]] = {v: [] for v in VARIANTS}
        first_look: dict[str, list[str]] = {v: [] for v in VARIANTS}
        logs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        checks: dict[str, bool] = {}
        for run in range(self.runs):
            for variant in alternating(VARIANTS, run):
                settle()
                server = self.restore_target(variant, run + 1)
                started = time.perf_counter()
                began = time.time()
                result = run_timed(
                    [str(MARKSHIP), "--config", str(self.configs[variant]), "restore",
                     "--server", "src", "--target-dir", str(server.data_dir), "--latest",
                     "--start", "--port", str(server.port),
                     "--setting", f"unix_socket_directories={server.socket_dir}"],
                    poll_rss=True).check(f"markship restore ({variant})")
                returned = time.time()
                first_look[variant].append(wait_promoted(server.port))
                total = time.perf_counter() - started
                self.note(result)
                times[variant].append(total)
                cli[variant].append(result.seconds)
                rss[variant].append(result.hwm_kb or 0)
                log = restore_log(server.data_dir, began, returned)
                logs[variant].append(log)
                phases = (f"unpack {log['unpack_s']:.2f} s, recovery {log['recovery_s']:.2f} s "
                          f"({log['wal_files_fetched']} WAL files fetched), after "
                          f"{log['after_ready_s']:.2f} s; " if "unpack_s" in log else "")
                say(f"run {run + 1} {variant:<5} {fmt_s(total)}  (CLI {fmt_s(result.seconds)}: "
                    f"{phases}first look after return: {first_look[variant][-1]}; markship "
                    f"process peak RSS {(result.hwm_kb or 0) / 1024:.0f} MB)")
                if run == 0:
                    checks[variant] = same_data(variant, server, fingerprint)
                self.drop(server)
        med = {v: median(times[v]) for v in VARIANTS}
        med_cli = {v: median(cli[v]) for v in VARIANTS}
        self.results["restore"] = {"seconds": times, "median_seconds": med,
                                   "cli_seconds": cli, "median_cli_seconds": med_cli,
                                   "markship_peak_rss_kb": rss,
                                   "first_look_after_return": first_look,
                                   "server_log": logs,
                                   "data_matches_source": checks}
        ratio = med["enc"] / med["plain"]
        promoted = sum(look.count("promoted") for look in first_look.values())
        self.rows += [
            Row("markship restore → promoted server, median", fmt_s(med["enc"]),
                f"encryption off {fmt_s(med['plain'])}", ratio, f"≤{OVERHEAD_TARGET}",
                ratio_verdict(ratio, OVERHEAD_TARGET)),
            Row("  (info) restore CLI alone (to its exit)", fmt_s(med_cli["enc"]),
                f"encryption off {fmt_s(med_cli['plain'])}", med_cli["enc"] / med_cli["plain"],
                "-", "info"),
        ]
        for phase, what in (("unpack_s", "start → server started (unpack)"),
                            ("recovery_s", "server started → promoted (WAL replay)")):
            values = {v: [log[phase] for log in logs[v] if phase in log] for v in VARIANTS}
            if all(values.values()):
                enc, plain = median(values["enc"]), median(values["plain"])
                self.rows.append(Row(f"  (info) restore {what}", fmt_s(enc),
                                     f"encryption off {fmt_s(plain)}", enc / plain, "-",
                                     "info"))
        self.rows += [
            Row("  (info) peak RSS, markship restore process",
                f"{max(rss['enc']) / 1024:.0f} MB",
                f"encryption off {max(rss['plain']) / 1024:.0f} MB", None, "-", "info"),
            Row("restored data equals source (fingerprint)",
                "yes" if checks.get("enc") else "NO",
                f"encryption off {'yes' if checks.get('plain') else 'NO'}", None, "equal",
                "PASS" if checks.get("enc") and checks.get("plain") else "MISS"),
            Row("  (info) promoted when markship restore returned",
                f"{promoted} of {2 * self.runs} runs", "-", None, "-", "info"),
        ]

    # -- 3. peak RSS of an encrypted backup of ~2 GB ---------------------------------------------

    def bench_rss(self) -> None:
        say(f"== peak RSS of an encrypted markship backup, pgbench scale {self.rss_scale}")
        # The scale-50 servers are done with: free their memory and disk first.
        for name in VARIANTS:
            self.drop(self.servers.pop(name))
        big, data_bytes = self.pgbench_source("rss", self.rss_scale)
        configs: dict[str, Path] = {}
        for variant in VARIANTS:
            repo = self.pg_dir(self.root / f"rss-{variant}-repo")
            configs[variant] = self.write_file(
                self.root / f"rss-{variant}.toml",
                markship_toml(repo, big.port,
                              (self.recipient, self.identity) if variant == "enc" else None))
        # Both repositories get every WAL file, so a backup of either finds its WAL (the times
        # here are not compared: only memory is measured).
        self.archive_to(big, configs["enc"], configs["plain"])
        big.start()
        wait_archived(big)
        found: dict[str, Any] = {}
        for variant in ("enc", "plain"):
            settle()
            result, tree = run_tree_rss([str(MARKSHIP), "--config", str(configs[variant]),
                                         "backup", "--json"])
            result.check(f"markship backup ({variant}, scale {self.rss_scale})")
            self.note(result)
            sizes = markship_sizes(result.out)
            found[variant] = {"seconds": result.seconds, "sizes": sizes, **tree}
            members = ", ".join(f"{m['name']} {m['vmhwm_kb'] / 1024:.0f}"
                                for m in tree["members"])
            say(f"{variant:<5} {fmt_s(result.seconds)}: tree peak (sampled sum of VmRSS) "
                f"{tree['tree_peak_sum_vmrss_kb'] / 1024:.0f} MB, sum of each member's VmHWM "
                f"{tree['sum_of_member_vmhwm_kb'] / 1024:.0f} MB ({members} MB); "
                f"{sizes.get('raw_bytes', 0) / MIB:.0f} MiB → "
                f"{sizes.get('stored_bytes', 0) / MIB:.1f} MiB stored")
        self.results["rss"] = {"scale": self.rss_scale, "data_bytes_without_pg_wal": data_bytes,
                               "backups": found}
        enc = found["enc"]
        peak_mb = enc["tree_peak_sum_vmrss_kb"] / 1024
        bound_mb = enc["sum_of_member_vmhwm_kb"] / 1024
        raw = enc["sizes"].get("raw_bytes") or data_bytes
        self.rows += [
            Row(f"peak RSS, encrypted backup of {raw / MIB / 1024:.2f} GiB (markship tree)",
                f"{peak_mb:.0f} MB", f"encryption off "
                f"{found['plain']['tree_peak_sum_vmrss_kb'] / 1024:.0f} MB", None,
                f"< {RSS_LIMIT_MB} MB", "PASS" if peak_mb < RSS_LIMIT_MB else "MISS"),
            Row("  (info) same, sum of each member's own peak (upper bound)",
                f"{bound_mb:.0f} MB", f"encryption off "
                f"{found['plain']['sum_of_member_vmhwm_kb'] / 1024:.0f} MB", None,
                f"< {RSS_LIMIT_MB} MB", "info, PASS" if bound_mb < RSS_LIMIT_MB
                else "info, over"),
            Row("  (info) same, markship Python process alone (VmHWM)",
                f"{enc['markship_process_vmhwm_kb'] / 1024:.0f} MB", f"encryption off "
                f"{found['plain']['markship_process_vmhwm_kb'] / 1024:.0f} MB", None, "-",
                "info"),
        ]
        self.drop(big)

    # -- running it all --------------------------------------------------------------------------

    def run(self) -> None:
        self.results["meta"] = run_meta(
            MARKSHIP, {"scale": self.scale, "rss_scale": self.rss_scale, "runs": self.runs},
            pyrage=package_version("pyrage"), zstandard=package_version("zstandard"))
        self.setup()
        self.bench_backups()
        self.bench_restores()
        if self.rss_scale:
            self.bench_rss()

    def summary(self) -> Path:
        summary_head(
            self.results,
            f"markship encryption benchmark — pgbench scale {self.scale}, "
            f"{self.data_bytes / MIB:.0f} MiB data, {os.cpu_count()} CPUs, runs={self.runs}"
            + (f", RSS run at scale {self.rss_scale}" if self.rss_scale else ", no RSS run"),
            WARM_CACHE)
        versions = self.results["meta"]["versions"]
        print(f"{versions['markship']} (installed {versions['markship_installed_at']}, sources "
              f"digest {versions['markship_installed_digest']}; work tree HEAD "
              f"{versions['work_tree_head']}, which need not be what is installed); "
              f"{versions['postgres']}; pyrage {versions['pyrage']}")
        report_install_and_load(self.results)
        print("ratio = encryption on ÷ encryption off, same data, same run")
        print("=" * 100)
        for phase, title in (("backup", "markship backup"),
                             ("restore", "markship restore → promoted server")):
            found = self.results.get(phase)
            if found:
                print(f"\n{title}, each run (s):")
                print_table(["variant", "runs", "median"], [
                    [LABEL[v], " ".join(f"{s:.2f}" for s in found["seconds"][v]),
                     f"{found['median_seconds'][v]:.2f}"] for v in VARIANTS])
        backup = self.results.get("backup")
        if backup:
            print("\nrepository sizes after the backups (MiB):")
            repos = backup["repository_bytes_after_backups"]
            print_table(["variant", "total", "base backups", "WAL", "WAL objects", "other"], [
                [LABEL[v], f"{repos[v]['total'] / MIB:.2f}", f"{repos[v]['base_tar'] / MIB:.2f}",
                 f"{repos[v]['wal'] / MIB:.2f}", str(repos[v]["wal_objects"]),
                 f"{repos[v]['other'] / MIB:.3f}"] for v in VARIANTS])
        if self.notes:
            print("\nmarkship printed on stderr (times seen):")
            for line, count in self.notes.items():
                print(f"  {count}× {line}")
        print()
        print_table(["metric", "encrypted", "plain", "ratio", "target", "verdict"], [
            [r.metric, r.markship, r.anchor, "-" if r.ratio is None else f"{r.ratio:.3f}",
             r.target, r.verdict] for r in self.rows])
        self.results["summary"] = [r.__dict__ for r in self.rows]
        self.results["markship_stderr"] = self.notes
        return save_results(self.results, "crypto-")

    def cleanup(self) -> None:
        os.chdir("/")
        stop_servers(list(reversed(self.tracked)))
        remove_root(getattr(self, "root", None), self.keep)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=50,
                        help="pgbench -i scale for the overhead runs (default 50)")
    parser.add_argument("--rss-scale", type=int, default=135,
                        help="pgbench -i scale for the peak-RSS run (default 135 ≈ 2 GB; 0 skips "
                             "it)")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed backup and restore runs per variant (default 3)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the bench directory (servers are stopped anyway)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.scale < 1 or args.rss_scale < 0:
        parser.error("--scale must be at least 1 and --rss-scale at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root():
        return 2
    if not (Path(pg("postgres")).exists() and MARKSHIP.exists()):
        print(f"PostgreSQL 15 or {MARKSHIP} missing: run ./dev setup first", file=sys.stderr)
        return 2
    bench = CryptoBench(scale=args.scale, rss_scale=args.rss_scale, runs=args.runs,
                        keep=args.keep)
    return run_guarded(bench, lambda: bool(bench.data_bytes))


if __name__ == "__main__":
    sys.exit(main())
