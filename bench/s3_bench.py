#!/usr/bin/env python3
"""S3 benchmark: markship against pgBackRest (repo1-type=s3) on ONE local S3-compatible server.

Everything is measured in ONE invocation, side by side, on the same data, against the same
moto server process (bench/moto_tls.py: TLS on 127.0.0.1, one bucket per tool): these machines
are shared and noisy, so the ratios are what counts. The page cache is warm and cannot be dropped.

Run as root with the interpreter of the venv whose markship is measured:

    /opt/markship/venv/bin/python bench/s3_bench.py                                # scale 50
    /opt/markship/venv/bin/python bench/s3_bench.py --scale 1 --runs 1 --drain-segments 8 \\
        --drain-runs 1 --push-segments 4                                           # smoke run

ONE `pgbench -i` data directory, stopped cleanly and copied with `cp -a`, gives the servers,
each with its own archive_command, so no tool's backup waits for the other's WAL push:

    ms     archive_command = markship wal-push          → s3://markship-bench/bench
    pgbr   archive_command = pgbackrest archive-push    → s3://pgbackrest-bench/pgbackrest (async)
    plain  archive_command = cp into a staging directory (real segments for the wal-push timing)

See bench/README.md ("S3-compatible repository") for what each phase measures and why.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import (
    MIB,
    OS_USER,
    WARM_CACHE,
    Row,
    Timed,
    as_pg,
    chosen_phases,
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
    sh_as_pg,
    stop_servers,
    summary_head,
    tool_version,
    wait_promoted,
)
from markship.pg.scratch import ScratchServer, chown_to, wait_archived
from moto_server import MotoServer, TlsFiles
from side_by_side import (
    ScratchFiles,
    alternating,
    bench_root,
    drain_backlog,
    make_wal,
    markship_inner_seconds,
    markship_sizes,
    pgbackrest_conf,
    pgbackrest_sizes,
    print_sizes,
    restore_log,
    same_data,
    same_data_row,
)
from tests.support.fingerprints import pgbench_fingerprint  # importable once common is
from tree_rss import run_tree_rss

PHASES = ("backup", "restore", "drain", "walpush")
REGION = "us-east-1"
BUCKETS = {"markship": "markship-bench", "pgbackrest": "pgbackrest-bench"}
# moto accepts any key pair; these stand in for real secrets and are handled like them (files
# readable by the postgres OS user only, never in argv).
ACCESS_KEY, SECRET_KEY = "bench-access-key", "bench-secret-key"
RSS_LIMIT_MB = 150
# The PostgreSQL server a restore starts is not part of the markship process tree.
NOT_MARKSHIP = frozenset({"postgres"})


# -- TLS for the S3 server -------------------------------------------------------------------------


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for IP 127.0.0.1 signed by it.

    Returns (CA certificate, server certificate chain, server key). A separate CA rather than
    one self-signed certificate: rustls (under obstore) refuses a CA certificate presented as
    the server's own, OpenSSL (pgBackRest; it does not verify here anyway) accepts both.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def usage(cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=True, content_commitment=False,
                             key_encipherment=False, data_encipherment=False,
                             key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                             encipher_only=False, decipher_only=False)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "markship s3 bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(cert_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file, chain_file, key_file = (directory / "ca.pem", directory / "server.pem",
                                     directory / "server.key")
    ca_file.write_bytes(ca.public_bytes(pem))
    chain_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    key_file.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    ca_file.chmod(0o644)
    chain_file.chmod(0o644)
    return ca_file, chain_file, key_file


# -- configuration files ---------------------------------------------------------------------------


def markship_s3_toml(endpoint: str, prefix: str, credentials: Path, ca: Path, port: int) -> str:
    return (f'[group]\nname = "bench"\n\n[repository]\n'
            f'url = "s3://{BUCKETS["markship"]}/{prefix}"\n'
            f'endpoint = "{endpoint}"\nregion = "{REGION}"\n'
            f"credentials_file = {json.dumps(str(credentials))}\n"
            f"ca_file = {json.dumps(str(ca))}\n"
            f'os_user = "{OS_USER}"\n\n[[server]]\nname = "src"\n'
            f'conninfo = "host=127.0.0.1 port={port} user=postgres dbname=postgres"\n')


def pgbackrest_s3_conf(s3_port: int, repo_path: str, own: Path, server: ScratchServer,
                       archive_async: bool = True, bundle: bool = False) -> str:
    """pgBackRest's settings from BENCHMARKS.md, with the repository in the moto bucket;
    `bundle`: also repo1-bundle=y (small files stored together, fewer requests)."""
    repo = (f"repo1-type=s3\nrepo1-path={repo_path}\nrepo1-s3-bucket={BUCKETS['pgbackrest']}\n"
            f"repo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={s3_port}\n"
            f"repo1-s3-region={REGION}\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\n"
            f"repo1-s3-key={ACCESS_KEY}\nrepo1-s3-key-secret={SECRET_KEY}"
            + ("\nrepo1-bundle=y" if bundle else ""))
    return pgbackrest_conf(repo, own, server, archive_async)


# -- the benchmark ---------------------------------------------------------------------------------


@dataclass
class S3Bench(ScratchFiles):
    scale: int
    runs: int
    drain_segments: int
    drain_runs: int
    push_segments: int
    keep: bool
    phases: tuple[str, ...]
    markship: Path
    bundle: bool
    root: Path = field(init=False)
    s3: MotoServer = field(init=False)
    tracked: list[ScratchServer] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    used_ports: set[int] = field(default_factory=set)
    data_bytes: int = 0

    # -- helpers ---------------------------------------------------------------------------------

    def secret_file(self, path: Path, text: str) -> Path:
        """A file with a secret in it: the postgres OS user's, mode 0600."""
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(text)
        chown_to(path, OS_USER)
        return path

    def pgbackrest(self, conf: Path, *args: str) -> list[str]:
        return as_pg(["pgbackrest", f"--config={conf}", "--stanza=bench", *args])

    def ms_toml(self, prefix: str) -> Path:
        return self.write_file(self.root / f"markship-{prefix}.toml", markship_s3_toml(
            self.s3.endpoint, prefix, self.credentials, self.ca, self.ms.port))

    def pgbr_conf(self, name: str, repo_path: str, archive_async: bool = True) -> Path:
        own = self.pg_dir(self.root / name)
        for sub in ("spool", "lock", "log"):
            self.pg_dir(own / sub)
        return self.secret_file(self.root / f"{name}.conf", pgbackrest_s3_conf(
            self.s3.port, repo_path, own, self.pgbr, archive_async, self.bundle))

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.root = bench_root("markship-s3-bench-")

        tls = self.root / "tls"
        tls.mkdir(mode=0o755)
        self.ca, chain, key = make_tls_files(tls)
        self.s3 = MotoServer(self.port(), self.root / "moto.log", TlsFiles(self.ca, chain, key))
        self.s3.start()
        for bucket in BUCKETS.values():
            self.s3.create_bucket(bucket)
        say(f"moto S3 server up at {self.s3.endpoint}, buckets {', '.join(BUCKETS.values())}")
        self.credentials = self.secret_file(
            self.root / "s3.env", f"AWS_ACCESS_KEY_ID={ACCESS_KEY}\n"
                                  f"AWS_SECRET_ACCESS_KEY={SECRET_KEY}\n")

        ms, self.data_bytes = self.pgbench_source("ms", self.scale)
        self.ms = ms
        self.pgbr = self.copy_server(ms, "pgbr")
        self.plain = self.copy_server(ms, "plain") if "walpush" in self.phases else None

        self.ms_cfg = self.ms_toml("bench")
        ms.write_settings({"archive_mode": "on", "archive_command":
                           f"{self.markship} --config {self.ms_cfg} wal-push --server src %p"})
        # pgBackRest: its own config, spool, lock and log paths; a second set for the restores
        # (a restore on the same host wipes the stanza's spool).
        self.pgbr_main = self.pgbr_conf("pgbackrest", "/pgbackrest")
        self.pgbr_restore = self.pgbr_conf("pgbackrest-restore", "/pgbackrest")
        self.pgbr.write_settings({"archive_mode": "on", "archive_command":
                                  f"pgbackrest --config={self.pgbr_main} --stanza=bench "
                                  "archive-push %p"})
        if self.plain is not None:
            self.raw_wal = self.pg_dir(self.root / "raw-wal")
            self.plain.write_settings({"archive_mode": "on", "archive_command":
                                       f"cp %p {self.raw_wal}/%f.part && "
                                       f"mv {self.raw_wal}/%f.part {self.raw_wal}/%f"})
        self.pg_dir(self.root / "restore", 0o755)
        for server in self.tracked:
            server.start()
        run_timed(self.pgbackrest(self.pgbr_main, "stanza-create")).check("stanza-create")
        run_timed(self.pgbackrest(self.pgbr_main, "check")).check("pgbackrest check")
        wait_archived(ms)  # markship's archiving works, and its first push is out of the timings
        say(f"servers up: ms :{ms.port} (markship wal-push → s3://{BUCKETS['markship']}/bench), "
            f"pgbr :{self.pgbr.port} (pgBackRest async archive-push → "
            f"s3://{BUCKETS['pgbackrest']}/pgbackrest)"
            + (f", plain :{self.plain.port} (cp)" if self.plain else ""))
        self.results["setup"] = {
            "scale": self.scale, "data_bytes_without_pg_wal": self.data_bytes,
            "s3_endpoint": self.s3.endpoint, "buckets": BUCKETS,
            "markship_config": self.ms_cfg.read_text(),
        }

    # -- 1. full backups -------------------------------------------------------------------------

    def bench_backups(self) -> None:
        say(f"== full backups into S3: {self.runs} run(s), alternating")
        times: dict[str, list[float]] = {"markship": [], "pgbackrest": []}
        trees: dict[str, list[dict[str, Any]]] = {"markship": [], "pgbackrest": []}
        inside: list[float] = []
        sizes: dict[str, Any] = {}
        argv = {"markship": [str(self.markship), "--config", str(self.ms_cfg), "backup",
                             "--json"],
                "pgbackrest": self.pgbackrest(self.pgbr_main, "--type=full", "backup")}
        for run in range(self.runs):
            for name in alternating(["markship", "pgbackrest"], run):
                settle()
                result, tree = run_tree_rss(argv[name])
                result.check(f"{name} backup")
                times[name].append(result.seconds)
                trees[name].append(tree)
                line = (f"run {run + 1} {name:<10} {fmt_s(result.seconds)}  (process tree peak "
                        f"RSS {tree['tree_peak_sum_vmrss_kb'] / 1024:.0f} MB")
                if name == "markship":
                    inside.append(markship_inner_seconds(result.out))
                    line += f"; set created→finished {inside[-1]:.2f} s"
                    sizes.setdefault("markship", markship_sizes(result.out))
                say(line + ")")
        sizes["pgbackrest"] = pgbackrest_sizes(self.pgbackrest(self.pgbr_main, "info",
                                                               "--output=json"))
        med = {name: median(values) for name, values in times.items()}
        peak = {name: max(t["tree_peak_sum_vmrss_kb"] for t in found) / 1024
                for name, found in trees.items()}
        self.results["backup"] = {"seconds": times, "median_seconds": med, "trees": trees,
                                  "markship_set_created_to_finished_seconds": inside,
                                  "sizes": sizes, "peak_tree_rss_mb": peak}
        ratio = med["markship"] / med["pgbackrest"]
        self.rows += [
            Row("full backup into S3, median wall time", fmt_s(med["markship"]),
                f"pgBackRest {fmt_s(med['pgbackrest'])}", ratio, "≤1.0",
                ratio_verdict(ratio, 1.0)),
            Row("peak RSS, markship backup process tree", f"{peak['markship']:.0f} MB",
                f"pgBackRest tree {peak['pgbackrest']:.0f} MB", None, f"< {RSS_LIMIT_MB} MB",
                "PASS" if peak["markship"] < RSS_LIMIT_MB else "MISS"),
        ]

    # -- 2. restores -----------------------------------------------------------------------------

    def bench_restores(self) -> None:
        say(f"== restores from S3 to a running, promoted server: {self.runs} run(s), alternating")
        fingerprint = pgbench_fingerprint(self.ms)
        times: dict[str, list[float]] = {"markship": [], "pgbackrest": []}
        first_look: list[str] = []
        rss: list[float] = []
        checks: dict[str, bool] = {}
        # unpack: files in place (markship: to the server's start, from its log; pgBackRest:
        # its restore command); recovery: from there to promoted
        split: dict[str, list[dict[str, Any]]] = {"markship": [], "pgbackrest": []}
        for run in range(self.runs):
            for name in alternating(["markship", "pgbackrest"], run):
                settle()
                server = self.restore_target(name, run + 1)
                started = time.perf_counter()
                extra = ""
                if name == "markship":
                    began = time.time()
                    result, tree = run_tree_rss(
                        [str(self.markship), "--config", str(self.ms_cfg), "restore", "--server",
                         "src", "--target-dir", str(server.data_dir), "--latest", "--start",
                         "--port", str(server.port),
                         "--setting", f"unix_socket_directories={server.socket_dir}"],
                        exclude=NOT_MARKSHIP)
                    result.check("markship restore")
                    returned = time.time()
                    first_look.append(wait_promoted(server.port))
                    split[name].append(restore_log(server.data_dir, began, returned))
                    rss.append(tree["tree_peak_sum_vmrss_kb"] / 1024)
                    extra = (f"  (CLI {fmt_s(result.seconds)}; first look after it returned: "
                             f"{first_look[-1]}; process tree peak RSS {rss[-1]:.0f} MB)")
                else:
                    split[name].append(self.restore_pgbackrest(server))
                times[name].append(time.perf_counter() - started)
                found = split[name][-1]
                if "unpack_s" in found:
                    extra += (f"  unpack {found['unpack_s']:.2f} s, recovery "
                              f"{found['recovery_s']:.2f} s, WAL files fetched "
                              f"{found.get('wal_files_fetched', '?')}")
                say(f"run {run + 1} {name:<10} {fmt_s(times[name][-1])}{extra}")
                if run == 0:
                    checks[name] = same_data(name, server, fingerprint)
                self.drop(server)
        med = {name: median(values) for name, values in times.items()}
        self.results["restore"] = {"seconds": times, "median_seconds": med,
                                   "markship_first_look_after_return": first_look,
                                   "markship_peak_tree_rss_mb": rss, "split": split,
                                   "data_matches_source": checks}
        ratio = med["markship"] / med["pgbackrest"]
        self.rows += [
            Row("restore from S3 to running promoted server, median", fmt_s(med["markship"]),
                f"pgBackRest {fmt_s(med['pgbackrest'])}", ratio, "≤1.0",
                ratio_verdict(ratio, 1.0)),
            Row("peak RSS, markship restore process tree", f"{max(rss):.0f} MB",
                "(its PostgreSQL server not counted)", None, f"< {RSS_LIMIT_MB} MB",
                "PASS" if max(rss) < RSS_LIMIT_MB else "MISS"),
            same_data_row(checks),
            *[Row(f"  (info) restore: {part}, median", fmt_s(values["markship"]),
                  f"pgBackRest {fmt_s(values['pgbackrest'])}",
                  values["markship"] / values["pgbackrest"], "-", "info")
              for part, values in restore_parts(split).items()],
            Row("  (info) markship restore --start returned once promoted",
                f"{first_look.count('promoted')} of {len(first_look)} runs", "-", None, "-",
                "info"),
        ]

    def restore_pgbackrest(self, server: ScratchServer) -> dict[str, Any]:
        """pgbackrest restore + pg_ctl start + wait until promoted (the caller times it); the
        seconds of the restore command and of the rest, and the WAL files recovery fetched."""
        self.pg_dir(server.data_dir, 0o700)
        restored = run_timed(self.pgbackrest(
            self.pgbr_restore, f"--pg1-path={server.data_dir}", "--type=default",
            "--archive-mode=off", "restore")).check("pgbackrest restore")
        with (server.data_dir / "postgresql.auto.conf").open("a") as handle:
            handle.write(f"\n# s3_bench\nport = '{server.port}'\n"
                         f"unix_socket_directories = '{server.socket_dir}'\n")
        started = time.perf_counter()
        server.run("pg_ctl", "-D", str(server.data_dir), "-l", str(server.log_file), "-w",
                   "-t", "600", "start", timeout=700)
        wait_promoted(server.port)
        log = server.log_file.read_text(errors="replace")
        return {"unpack_s": restored.seconds, "recovery_s": time.perf_counter() - started,
                "wal_files_fetched": log.count("restored log file")}

    # -- 3. WAL backlog drain --------------------------------------------------------------------

    def bench_drain(self) -> None:
        say(f"== WAL backlog drain into S3: archive_command paused, ~{self.drain_segments} "
            f"segments queued, then resumed; {self.drain_runs} run(s) per tool, alternating")
        found: dict[str, list[dict[str, float]]] = {"markship": [], "pgbackrest": []}
        servers = {"markship": self.ms, "pgbackrest": self.pgbr}
        for run in range(self.drain_runs):
            for label in alternating(["markship", "pgbackrest"], run):
                found[label].append(drain_backlog(servers[label], self.drain_segments))
                last = found[label][-1]
                say(f"run {run + 1} {label:<10} {last['segments']:.0f} segments in "
                    f"{last['seconds']:.2f} s = {last['per_s']:.1f} segments/s")
        rate = {label: median([r["per_s"] for r in runs]) for label, runs in found.items()}
        self.results["backlog_drain"] = {"runs": found, "median_per_s": rate}
        ratio = rate["markship"] / rate["pgbackrest"]
        self.rows.append(Row("WAL backlog drain rate into S3, median",
                             f"{rate['markship']:.1f} seg/s",
                             f"pgBackRest async {rate['pgbackrest']:.1f} seg/s", ratio,
                             "≥1.0", ratio_verdict(ratio, 1.0, higher_is_better=True)))

    # -- 4. wal-push per segment -----------------------------------------------------------------

    def bench_walpush(self) -> None:
        say(f"== wal-push per 16 MB segment into S3: {self.push_segments} real pgbench segments, "
            "fresh prefixes, each command as `runuser -u postgres -- sh -c CMD`")
        stage = self.real_segments()
        names = sorted(p.name for p in stage.iterdir())
        ms_cfg = self.ms_toml("walpush")
        # A second pgBackRest repository (another path in its bucket), archive-async=n: one
        # process per segment that returns once the segment is stored, like markship's.
        conf = self.pgbr_conf("pgbackrest-walpush", "/walpush", archive_async=False)
        run_timed(self.pgbackrest(conf, "stanza-create")).check("stanza-create (walpush)")
        commands: dict[str, Callable[[str], list[str]]] = {
            "markship": lambda name: sh_as_pg(
                f"{self.markship} --config {ms_cfg} wal-push --server src {stage / name}"),
            "pgbackrest": lambda name: sh_as_pg(
                f"pgbackrest --config={conf} --stanza=bench archive-push {stage / name}"),
        }
        times: dict[str, list[float]] = {"markship": [], "pgbackrest": [], "runuser_sh_true": []}
        rss: list[int] = []
        for i, name in enumerate(names):
            for label in alternating(["markship", "pgbackrest"], i):
                result: Timed = run_timed(commands[label](name)).check(f"{label} {name}")
                times[label].append(result.seconds)
                if label == "markship":
                    rss.append(result.tree_maxrss_kb)
            times["runuser_sh_true"].append(run_timed(sh_as_pg("true")).seconds)
        med = {k: median(v) for k, v in times.items()}
        self.results["wal_push"] = {"segments": names, "seconds": times, "median_seconds": med,
                                    "markship_peak_rss_kb": rss}
        for label, value in med.items():
            say(f"{label:<16} median {value * 1000:.0f} ms")
        ratio = med["markship"] / med["pgbackrest"]
        self.rows += [
            Row("wal-push per segment into S3, median (process start in)",
                f"{med['markship'] * 1000:.0f} ms",
                f"pgBackRest archive-push (sync) {med['pgbackrest'] * 1000:.0f} ms", ratio,
                "-", "info"),
            Row("peak RSS, markship wal-push process", f"{max(rss) / 1024:.0f} MB", "-", None,
                f"< {RSS_LIMIT_MB} MB", "PASS" if max(rss) < RSS_LIMIT_MB * 1024 else "MISS"),
        ]

    def real_segments(self) -> Path:
        """Full 16 MB segments written by pgbench on the plain server, copied by its archiver."""
        assert self.plain is not None
        before = {p.name for p in self.raw_wal.iterdir()}

        def new_segments() -> list[Path]:
            return sorted(p for p in self.raw_wal.iterdir()
                          if p.name not in before and len(p.name) == 24)

        make_wal(self.plain, lambda: len(new_segments()) >= self.push_segments, timeout=600)
        stage = self.pg_dir(self.root / "stage", 0o700)
        for source in new_segments()[: self.push_segments]:
            target = stage / source.name
            subprocess.run(["cp", str(source), str(target)], check=True)
            chown_to(target, OS_USER)
            target.chmod(0o600)
        return stage

    # -- running it all --------------------------------------------------------------------------

    def run(self) -> None:
        self.results["meta"] = run_meta(
            self.markship, {"scale": self.scale, "runs": self.runs,
                            "pgbackrest_bundle": self.bundle,
                            "drain_segments": self.drain_segments,
                            "drain_runs": self.drain_runs,
                            "push_segments": self.push_segments, "phases": list(self.phases)},
            pgbackrest=tool_version(["pgbackrest", "version"]), moto=package_version("moto"),
            obstore=package_version("obstore"))
        self.setup()
        steps: dict[str, Callable[[], None]] = {
            "backup": self.bench_backups, "restore": self.bench_restores,
            "drain": self.bench_drain, "walpush": self.bench_walpush}
        requests: dict[str, dict[str, dict[str, list[float]]]] = {}
        self.results["s3_requests"] = requests
        self.s3.count_requests()  # setup's requests are not a phase's
        for phase in PHASES:
            if phase in self.phases:
                steps[phase]()
                requests[phase] = self.s3.count_requests()

    def summary(self) -> Path:
        summary_head(
            self.results,
            f"markship S3 benchmark — pgbench scale {self.scale}, {self.data_bytes / MIB:.0f} "
            f"MiB data, {os.cpu_count()} CPUs, runs={self.runs}, one moto server "
            f"{self.results['meta']['versions']['moto']} with TLS on 127.0.0.1",
            "pgBackRest: archive-async=y, process-max=2, compress-type=zst, compress-level=1, "
            "start-fast=y" + (", repo1-bundle=y" if self.bundle else ", no repo1-bundle"),
            WARM_CACHE)
        versions = self.results["meta"]["versions"]
        print(f"{versions['markship']} ({versions['markship_executable']}, installed "
              f"{versions['markship_installed_at']}, sources digest "
              f"{versions['markship_installed_digest']}; work tree HEAD "
              f"{versions['work_tree_head']}); obstore {versions['obstore']}; "
              f"{versions['postgres']}; {versions['pgbackrest']}")
        report_install_and_load(self.results)
        moto_mb = self.s3.peak_rss_kb() / 1024 if hasattr(self, "s3") else 0.0
        self.results["moto_peak_rss_mb"] = moto_mb
        print(f"moto server peak RSS {moto_mb:.0f} MB (it keeps every object in memory)")
        print("ratio = markship ÷ pgBackRest (for the drain rate: higher is better)")
        print("=" * 100)
        for phase, title in (("backup", "full backup into S3"),
                             ("restore", "restore from S3 to a running promoted server")):
            found = self.results.get(phase)
            if found:
                print(f"\n{title}, each run (s):")
                print_table(["tool", "runs", "median"], [
                    [name, " ".join(f"{v:.2f}" for v in values),
                     f"{found['median_seconds'][name]:.2f}"]
                    for name, values in found["seconds"].items()])
        backup = self.results.get("backup")
        if backup:
            print_sizes(backup["sizes"])
        requests = self.results.get("s3_requests")
        if requests:
            print("\nS3 requests moto received per phase (all runs of the phase; a tool's bucket: "
                  "its commands and its server's archiving), count and time in the server "
                  "(first byte in to response out, so a streamed upload's time includes the "
                  "client's compression):")
            rows = []
            for phase, counts in requests.items():
                for tool, bucket in BUCKETS.items():
                    kinds = counts.get(bucket, {})
                    rows.append([phase, tool, str(sum(int(n) for n, _ in kinds.values())),
                                 f"{sum(ms for _, ms in kinds.values()) / 1000:.1f}",
                                 "  ".join(f"{kind} {int(n)} / {ms / 1000:.1f} s"
                                           for kind, (n, ms) in sorted(kinds.items()))])
            print_table(["phase", "tool", "requests", "seconds", "by kind: count / seconds"], rows)
        print()
        print_table(["metric", "markship", "pgBackRest / anchor", "ratio", "target", "verdict"], [
            [r.metric, r.markship, r.anchor, "-" if r.ratio is None else f"{r.ratio:.2f}",
             r.target, r.verdict] for r in self.rows])
        self.results["summary"] = [r.__dict__ for r in self.rows]
        return save_results(self.results, "s3-")

    def cleanup(self) -> None:
        os.chdir("/")
        stop_servers(list(reversed(self.tracked)))
        if hasattr(self, "s3"):
            self.s3.stop()
        # pgBackRest's async archiver exits on its own once idle
        remove_root(getattr(self, "root", None), self.keep, settle=0.5)


def restore_parts(split: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Median seconds of each part of the restores, per tool, where every tool has figures."""
    found: dict[str, dict[str, float]] = {}
    for key, part in (("unpack_s", "files in place"), ("recovery_s", "then to promoted")):
        values = {tool: [entry[key] for entry in entries if key in entry]
                  for tool, entries in split.items()}
        if all(values.values()):
            found[part] = {tool: median(v) for tool, v in values.items()}
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=50, help="pgbench -i scale (default 50)")
    parser.add_argument("--runs", type=int, default=3,
                        help="timed backups and restores per tool (default 3)")
    parser.add_argument("--drain-segments", type=int, default=64,
                        help="size of the WAL backlog for the drain rate (default 64)")
    parser.add_argument("--drain-runs", type=int, default=3,
                        help="backlog drains per tool (default 3)")
    parser.add_argument("--push-segments", type=int, default=20,
                        help="real pgbench segments for the wal-push timing (default 20)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    parser.add_argument("--markship", type=Path, default=Path(sys.executable).parent / "markship",
                        help="the markship executable (default: next to this interpreter)")
    parser.add_argument("--pgbackrest-bundle", action="store_true",
                        help="give pgBackRest repo1-bundle=y as well (not among BENCHMARKS.md's "
                             "settings): fewer, larger objects")
    parser.add_argument("--keep", action="store_true",
                        help="keep the bench directory (servers are stopped anyway)")
    args = parser.parse_args(argv)
    if min(args.runs, args.scale, args.drain_segments, args.drain_runs, args.push_segments) < 1:
        parser.error("--runs, --scale, --drain-segments, --drain-runs and --push-segments must "
                     "be at least 1")
    args.phases = chosen_phases(parser, args.phases, PHASES)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root():
        return 2
    missing = [str(p) for p in (Path(pg("postgres")), args.markship, Path("/usr/bin/pgbackrest"))
               if not p.exists()]
    if missing:
        print(f"missing: {', '.join(missing)} (./dev setup; apt-get install pgbackrest)",
              file=sys.stderr)
        return 2
    bench = S3Bench(scale=args.scale, runs=args.runs, drain_segments=args.drain_segments,
                    drain_runs=args.drain_runs,
                    push_segments=args.push_segments, keep=args.keep, phases=args.phases,
                    markship=args.markship, bundle=args.pgbackrest_bundle)
    return run_guarded(bench, lambda: bool(bench.data_bytes))


if __name__ == "__main__":
    sys.exit(main())
