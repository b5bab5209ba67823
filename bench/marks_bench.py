#!/usr/bin/env python3
"""Group-mark benchmark: mark latency, RPO under load, throughput cost, group failover time.

Everything is measured in ONE invocation on one throwaway group of PostgreSQL 15 servers whose
archive_command is `markship wal-push`. Marks are delivered by stream (markship's pg_receivewal
per server has flushed past the restore point, see markship.marks.stream), the default; the old
delivery (pg_switch_wal() on every server after each mark) is measured in the same run for
comparison. These machines are shared and noisy (2 cores, absolute figures move 10-30 % between
runs): read the percentiles and the ratios, not single seconds.
The page cache cannot be dropped here: every figure is a warm-cache figure.

Run as root with the markship virtualenv's interpreter:

    /opt/markship/venv/bin/python bench/marks_bench.py                   # --duration 30
    /opt/markship/venv/bin/python bench/marks_bench.py --duration 15     # smoke run, ~6 min
    /opt/markship/venv/bin/python bench/marks_bench.py --phases latency,rpo

Phases (see bench/README.md, "marks_bench.py"):

    latency     WAL receivers up; take_mark() in-process at 1 s, then `markship mark --json`,
                under pgbench load; then receivers down and take_mark() with delivery "switch"
    cli         `markship mark --json` without an agent (process start included), under pgbench
                load: the lean path (markship.marks.command: no click, pydantic or psycopg)
                and the full command line (MARKSHIP_FULL_MARK=1), in turns, same load
    s3          delivery "stream" with the repository in S3 (moto's server on loopback: the
                receivers write into a local spool, each mark uploads its WAL, see
                markship.marks.upload) against the directory repository, in turns, idle and
                under the same pgbench load
    rpo         the agent (which runs the receivers) at [marks] interval = 5 under pgbench
                load: age of the newest complete mark, sampled every second
    throughput  a 2PC transfer workload (markship.client.group_transaction) and plain pgbench,
                each without marks, with the agent marking every 1 s (delivery "stream", then
                "switch"), and without again
    failover    DR standbys, agent marking every 2 s, pgbench + 2PC load, kill -9 of every
                production server, then `markship failover --json` timed; consistency checked
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import multiprocessing.synchronize
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.rows import TupleRow

from common import (
    MARKSHIP,
    OS_USER,
    PG_BIN,
    WARM_CACHE,
    count_ready,
    installed_at,
    loadavg,
    pg,
    print_table,
    remove_root,
    report_install_and_load,
    run_guarded,
    run_timed,
    running_as_root,
    save_results,
    say,
    stop_servers,
    tool_version,
)
from markship.client import group_transaction, setup_decisions
from markship.config import model as config_mod
from markship.errors import MarkshipError
from markship.marks import stream, upload
from markship.marks.choose import latest_complete, mark_states
from markship.marks.take import GroupConnections, MarkResult, MarkSkipped, take_mark
from markship.pg import replication
from markship.pg.datadir import stopped_at
from markship.pg.scratch import ScratchServer, chown_to, free_port
from markship.repository.backends import location_of, open_repository
from moto_server import MotoServer

PHASES = ("latency", "cli", "s3", "rpo", "throughput", "failover", "web")
GROUP = "bench"
SCALE = 5
ACCOUNTS = 100  # per server, for the 2PC transfer workload
START_BALANCE = 1000
TWOPC_WORKERS = 2
MARK_INTERVAL_LATENCY = 1.0
SPARSE_INTERVAL = 5.0  # the s3 phase's longer interval (uploads ahead matter there)
RPO_INTERVAL = 5.0
THROUGHPUT_INTERVAL = 1.0
FAILOVER_INTERVAL = 2.0
WEB_INTERVAL = 1.0  # the web phase's [marks] interval
WEB_TURNS = 2  # the web phase alternates off/on this many times (drift hits both alike)
WEB_POLL = 0.1  # seconds between two polls of /metrics and of / (the issue's scraper)
PYTHON = Path(sys.executable)

Conn = psycopg.Connection[TupleRow]


# -- small helpers ---------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def dist(values: Sequence[float]) -> dict[str, float]:
    return {"n": float(len(values)), "p50": pct(values, 50), "p95": pct(values, 95),
            "p99": pct(values, 99), "max": max(values) if values else float("nan"),
            "min": min(values) if values else float("nan")}


def fmt_dist(d: dict[str, float], unit: str = "ms", digits: int = 0) -> str:
    return (f"p50 {d['p50']:.{digits}f} / p95 {d['p95']:.{digits}f} / p99 {d['p99']:.{digits}f}"
            f" / max {d['max']:.{digits}f} {unit} (n={int(d['n'])})")


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (iowait counts as idle)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def cpu_busy_since(start: tuple[int, int]) -> float:
    """Share of all CPUs busy since `start` (0..1)."""
    busy, total = cpu_times()
    return (busy - start[0]) / max(1, total - start[1])


def proc_cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds of a process from /proc/PID/stat: its own (utime + stime) or, with
    `children`, that of its waited-for children (cutime + cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def foreign_activity(root: Path | None) -> dict[str, int]:
    """Other work on the machine: PostgreSQL clusters and markship/pytest processes that are not
    this benchmark's (their figures would change ours)."""
    clusters = tools = 0
    mine = str(root) if root else "\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = " ".join(a.decode(errors="replace") for a in argv)
        if mine in text or not text:
            continue
        if text.startswith(str(PG_BIN / "postgres")) and " -D " in text:
            clusters += 1
        elif "markship" in text or "pytest" in text:
            tools += 1
    return {"postgres_clusters": clusters, "markship_or_pytest_processes": tools}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def pgbench_tps(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    return float("nan")


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one rename: wal-push processes read the config at any moment."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    temp.chmod(0o644)
    os.replace(temp, path)


def pg_dir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    chown_to(path, OS_USER)
    path.chmod(mode)
    return path


# -- the in-process mark loop: a forked child that becomes the repository's OS user ---------------


def _mark_loop_child(cfg: str, seconds: float, interval: float, delivery: str,
                     nices: list[int] | None, upload_ahead: bool,
                     queue: multiprocessing.Queue[str]) -> None:
    """take_mark() every `interval` s for `seconds` with `[marks] delivery` set to `delivery`
    ("stream": wait for the receivers, "switch": pg_switch_wal()); the timings go back as one
    JSON string.

    Runs in a forked child that switches to the repository's OS user first, as the CLI does:
    mark records written by root would leave root-owned objects in the repository. The marks
    are made at the nice value the agent gives its marking thread (`[marks] nice`, see
    markship.marks.priority), or taking turns through `nices` (to compare, in the same window).
    """
    try:
        from markship import osuser
        from markship.marks import priority

        config = config_mod.load(cfg)
        config = config.model_copy(
            update={"marks": config.marks.model_copy(update={"delivery": delivery})})
        nices = nices or [config.marks.nice]

        def refused(problem: str) -> None:
            raise RuntimeError(problem)

        # As `markship run` does: the marking threads are made before becoming os_user.
        markers = [priority.marking_thread(nice, refused) for nice in nices]
        osuser.switch_to(config.repository.os_user)
        repo = open_repository(location_of(config.repository))
        # With object storage marks upload from the receivers' spool, as the agent's do, and
        # between marks it uploads ahead, as the agent's loop does (about every second).
        uploads = None if stream.in_place(repo) else upload.StreamUploads(config, repo)
        ahead_stop = threading.Event()
        if uploads is not None and upload_ahead:
            servers = [s.name for s in config.servers]
            shipping = uploads

            def ahead() -> None:
                while not ahead_stop.wait(1.0):
                    shipping.ship_ahead(servers)

            threading.Thread(target=ahead, daemon=True, name="bench-upload-ahead").start()
        conns = GroupConnections(config)
        conns.open()  # connections are opened once, as in the agent (not timed)
        samples: list[dict[str, Any]] = []
        began = time.monotonic()
        tick = began

        def timed() -> tuple[MarkResult | MarkshipError, float]:
            """take_mark() on the marking thread, timed there (the hand-over between threads
            is the agent loop's, not the mark's)."""
            started = time.perf_counter()
            try:
                outcome: MarkResult | MarkshipError = take_mark(config, repo, conns,
                                                                uploads=uploads)
            except MarkshipError as exc:
                outcome = exc
            return outcome, (time.perf_counter() - started) * 1000

        try:
            while time.monotonic() - began < seconds:
                turn = len(samples) % len(nices)
                entry: dict[str, Any] = {"t": round(time.monotonic() - began, 3),
                                         "nice": nices[turn]}
                result, total_ms = markers[turn].submit(timed).result()
                if isinstance(result, MarkSkipped):
                    entry.update(outcome="skipped", reason=result.message)
                elif isinstance(result, MarkshipError):
                    entry.update(outcome="failed", reason=result.message)
                else:
                    record = result.record
                    entry.update(outcome="ok", name=record.name,
                                 barrier_wait_ms=record.barrier_wait_ms,
                                 barrier_hold_ms=record.barrier_hold_ms,
                                 delivery_ms=round(result.switch_ms, 3),
                                 prepare_ms=round(result.prepare_ms, 3),
                                 record_ms=round(result.record_ms, 3),
                                 delivery=dict(record.delivery))
                entry["total_ms"] = round(total_ms, 3)
                samples.append(entry)
                tick += interval
                time.sleep(max(0.0, tick - time.monotonic()))
        finally:
            ahead_stop.set()
            conns.close()
        queue.put(json.dumps({"samples": samples}))
    except BaseException as exc:  # report anything, the parent decides
        queue.put(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))


def _receivers_child(cfg: str, stop: multiprocessing.synchronize.Event,
                     queue: multiprocessing.Queue[str]) -> None:
    """Run markship's WAL receivers (one `pg_receivewal --synchronous` per server, application
    name markship-stream, into `stream/<server>/` of the repository) until `stop` is set,
    polled as the agent polls them (a receiver that exits is started again).

    A forked child that becomes the repository's OS user first, like the agent: the receivers
    write into the repository. Messages on `queue`, as JSON: first {"ready_s": ...} once every
    server has a `.partial` segment and a streaming entry in pg_stat_replication (or
    {"error": ...}), then {"events": [...]} (the receivers' log) after they stopped.
    """
    began = time.monotonic()
    events: list[dict[str, Any]] = []
    receivers: list[stream.Receiver] = []

    def log(event: str, level: str = "info", **fields: object) -> None:
        events.append({"t": round(time.monotonic() - began, 3), "event": event, "level": level,
                       **{k: str(v) for k, v in fields.items()}})

    try:
        from markship import osuser

        config = config_mod.load(cfg)
        upload.prepare_spool(config)  # as `markship run` does (used with object storage)
        osuser.switch_to(config.repository.os_user)
        repo = open_repository(location_of(config.repository))
        conns = GroupConnections(config)
        conns.open()
        # not lean: psycopg connections (the lean path opens libpq ones)
        pg = {name: cast("psycopg.Connection[Any]", conn) for name, conn in conns.conns.items()}
        try:
            versions = {name: conn.info.server_version for name, conn in pg.items()}
            receivers = stream.receivers(config, repo, versions, log)
            waiting = {r.server for r in receivers}
            nudged = time.monotonic()
            while waiting:
                if time.monotonic() - nudged > 1.0:
                    # pg_receivewal creates its .partial file with the first WAL it receives;
                    # an idle server may write none for 15 s (the next running-xacts record).
                    nudged = time.monotonic()
                    for server in waiting:
                        pg[server].execute(
                            "SELECT pg_logical_emit_message(false, 'markship-bench', 'nudge')")
                for receiver in receivers:
                    receiver.poll()
                    if receiver.server in waiting and \
                            any(receiver.folder.glob(f"*{stream.PARTIAL}")) and \
                            replication.receiver_flushed_lsn(
                                pg[receiver.server]) is not None:
                        waiting.discard(receiver.server)
                if waiting and time.monotonic() - began > 60:
                    problems = {r.server: list(r.errors) for r in receivers}
                    raise RuntimeError(f"no streaming receiver after 60 s for "
                                       f"{', '.join(sorted(waiting))}: {problems}")
                time.sleep(0.05)
        finally:
            conns.close()
        queue.put(json.dumps({"ready_s": time.monotonic() - began,
                              "pids": {r.server: r.proc.pid for r in receivers if r.proc}}))
        while not stop.wait(0.5):
            for receiver in receivers:
                receiver.poll()
    except BaseException as exc:  # report anything, the parent decides
        queue.put(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    finally:
        for receiver in receivers:
            receiver.stop()
        queue.put(json.dumps({"events": events}))


# -- the 2PC transfer workload ---------------------------------------------------------------------


class TwoPhaseWorkload:
    """Transfers between two random servers, committed with markship.client.group_transaction.

    Each worker owns a disjoint set of account ids (no row conflicts, so no distributed
    deadlock between workers); the workers connect before `go()`, and only transactions that
    finished inside the window count.
    """

    def __init__(self, servers: list[ScratchServer], prefix: str,
                 workers: int = TWOPC_WORKERS) -> None:
        self.servers = servers
        self.prefix = prefix
        self.workers = workers
        self.ready = threading.Barrier(workers + 1)
        self.go_event = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._worker, args=(w,), daemon=True,
                                         name=f"2pc-{w}") for w in range(workers)]
        self.started_at = 0.0
        self.stopped_at = 0.0

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        self.ready.wait(timeout=60)

    def go(self) -> None:
        self.started_at = time.monotonic()
        self.go_event.set()

    def finish(self) -> dict[str, Any]:
        self.stopped_at = time.monotonic()
        self.stop.set()
        self.go_event.set()
        for thread in self.threads:
            thread.join(timeout=60)
        seconds = self.stopped_at - self.started_at if self.started_at else 0.0
        lat_ms = [v * 1000 for v in self.latencies]
        return {"transfers": len(self.latencies), "seconds": seconds,
                "per_s": len(self.latencies) / seconds if seconds else float("nan"),
                "latency_ms": dist(lat_ms), "errors": self.errors[:5],
                "error_count": len(self.errors)}

    def _worker(self, w: int) -> None:
        conns: list[Conn] = []
        barrier: Conn | None = None
        ids = [i for i in range(1, ACCOUNTS + 1) if i % self.workers == w]
        rng = random.Random(w)
        try:
            try:
                opts = "-c statement_timeout=30000"
                conns = [psycopg.connect(s.conninfo(), options=opts, connect_timeout=5)
                         for s in self.servers]
                barrier = psycopg.connect(self.servers[0].conninfo(), autocommit=True,
                                          options=opts, connect_timeout=5)
            finally:
                self.ready.wait(timeout=60)
            self.go_event.wait()
            n = 0
            while not self.stop.is_set():
                n += 1
                a, b = sorted(rng.sample(range(len(self.servers)), 2))
                amount = rng.randint(1, 30)
                gid = f"{self.prefix}-w{w}-{n}"
                began = time.perf_counter()
                with group_transaction(barrier, GROUP, gid, [conns[a], conns[b]]):
                    conns[a].execute("UPDATE accounts SET balance = balance - %s WHERE id = %s",
                                     (amount, rng.choice(ids)))
                    conns[a].execute("INSERT INTO transfers VALUES (%s, %s)", (gid, -amount))
                    conns[b].execute("UPDATE accounts SET balance = balance + %s WHERE id = %s",
                                     (amount, rng.choice(ids)))
                    conns[b].execute("INSERT INTO transfers VALUES (%s, %s)", (gid, amount))
                if not self.stop.is_set():
                    with self.lock:
                        self.latencies.append(time.perf_counter() - began)
        except BaseException as exc:
            if not self.stop.is_set():
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {str(exc).strip()[:200]}")
        finally:
            for conn in [*conns, barrier]:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()


# -- the benchmark ---------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    value: str
    detail: str
    target: str
    verdict: str


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    log: Path
    started: float


@dataclass
class ReceiverHost:
    """The forked child running the WAL receivers (see _receivers_child)."""

    proc: multiprocessing.process.BaseProcess
    stop: multiprocessing.synchronize.Event
    queue: multiprocessing.Queue[str]
    ready_s: float = float("nan")


@dataclass
class S3Bucket:
    """moto's S3-compatible server on 127.0.0.1 and the bucket the s3 phase uses as the
    repository."""

    server: MotoServer
    bucket: str
    credentials: Path

    def config_lines(self) -> str:
        return (f'url = "s3://{self.bucket}/markship"\nendpoint = "{self.server.endpoint}"\n'
                f'region = "us-east-1"\ncredentials_file = {json.dumps(str(self.credentials))}\n')

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.server.endpoint, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench")

    def stream_objects(self) -> list[int]:
        """Sizes of the objects under stream/ (the uploads marks made)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix="markship/stream/")
        return [item["Size"] for page in pages for item in page.get("Contents", [])]

    def stop(self) -> None:
        self.server.stop()


def start_s3(root: Path, port: int) -> S3Bucket:
    """moto's server (plain HTTP) on `port`, one bucket, a credentials file for os_user."""
    server = MotoServer(port, root / "moto.log")
    server.start()
    credentials = root / "s3.env"
    credentials.write_text("AWS_ACCESS_KEY_ID=bench\nAWS_SECRET_ACCESS_KEY=bench\n")
    credentials.chmod(0o600)
    chown_to(credentials, OS_USER)
    found = S3Bucket(server, "markship-bench", credentials)
    server.create_bucket(found.bucket)
    return found


@dataclass
class Bench:
    duration: int
    n_servers: int
    clients: int
    keep: bool
    phases: tuple[str, ...]
    root: Path = field(init=False)
    servers: list[ScratchServer] = field(default_factory=list)
    standbys: list[ScratchServer] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    used_ports: set[int] = field(default_factory=set)
    agents: list[Agent] = field(default_factory=list)
    pgbenches: list[subprocess.Popen[str]] = field(default_factory=list)
    workloads: list[TwoPhaseWorkload] = field(default_factory=list)
    receiver_hosts: list[ReceiverHost] = field(default_factory=list)
    s3: S3Bucket | None = None  # moto's server, for the s3 phase
    on_s3: bool = False  # write_config() points the repository at `s3`

    # -- helpers ---------------------------------------------------------------------------------

    def port(self) -> int:
        while True:
            candidate = free_port()
            if candidate not in self.used_ports:
                self.used_ports.add(candidate)
                return candidate

    def ms(self, *args: str) -> list[str]:
        return [str(MARKSHIP), "--config", str(self.cfg), *args]

    def write_config(self, interval: float, dr_site: bool = False,
                     delivery: str = "stream", extra: str = "") -> None:
        where = (self.s3.config_lines() if self.on_s3 and self.s3 is not None
                 else f'path = {json.dumps(str(self.repo))}\n')
        text = f'[group]\nname = "{GROUP}"\n\n[repository]\n{where}os_user = "{OS_USER}"\n'
        for server in self.servers:
            text += (f'\n[[server]]\nname = "{server.name}"\nconninfo = "{server.conninfo()}"\n'
                     f'data_dir = "{server.data_dir}"\n')
        text += f'\n[marks]\ninterval = {interval:g}\ndelivery = "{delivery}"\n'
        if self.on_s3:
            text += f'stream_spool = {json.dumps(str(self.root / "spool"))}\n'
        if dr_site:
            text += '\n[dr_site]\nname = "dr"\n'
            for server, sb in zip(self.servers, self.standbys, strict=True):
                text += (f'\n[[dr_site.standby]]\nserver = "{server.name}"\n'
                         f'data_dir = "{sb.data_dir}"\nhost = "127.0.0.1"\nport = {sb.port}\n'
                         f'socket_dir = "{sb.socket_dir}"\n')
            clients = self.root / "clients"
            peer = self.servers[1].name
            text += (f'\n[failover.clients]\njson = "{clients}/clients.json"\n'
                     f'env = "{clients}/clients.env"\npg_service = "{clients}/pg_service.conf"\n'
                     f'\n[[failover.sql]]\nserver = "{self.servers[0].name}"\n'
                     f"statement = \"UPDATE peers SET host = '{{{peer}.host}}', port = "
                     f"{{{peer}.port}} WHERE name = '{peer}'\"\n"
                     '\n[[failover.hook]]\ncommand = ["/bin/true"]\n')
        write_atomic(self.cfg, text + extra)

    def pgbench_argv(self, server: ScratchServer, *options: str) -> list[str]:
        """pgbench runs as root (a TCP client needs no file access): signals reach it."""
        return [pg("pgbench"), "-h", server.host, "-p", str(server.port), "-U", "postgres",
                *options, "postgres"]

    def start_pgbench(self, seconds: float) -> list[subprocess.Popen[str]]:
        jobs = str(min(2, self.clients))
        procs = [subprocess.Popen(self.pgbench_argv(s, "-n", "-c", str(self.clients), "-j", jobs,
                                                    "-T", str(max(1, round(seconds)))),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for s in self.servers]
        self.pgbenches.extend(procs)
        return procs

    def finish_pgbench(self, procs: list[subprocess.Popen[str]],
                       check: bool = True) -> list[float]:
        tps = []
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            self.pgbenches.remove(proc)
            if check and proc.returncode != 0:
                raise RuntimeError(f"pgbench failed: {err.strip()[-500:]}")
            tps.append(pgbench_tps(out))
        return tps

    def start_agent(self, interval: float, label: str, delivery: str = "stream",
                    extra: str = "") -> Agent:
        """`markship run --log-json`; with delivery "stream" it runs the WAL receivers itself
        (they start once its first mark has connected to the servers). `extra`: config text
        appended (e.g. a [web] section)."""
        self.write_config(interval, dr_site=bool(self.standbys), delivery=delivery, extra=extra)
        log = self.root / f"agent-{label}.log"
        with log.open("wb") as handle:
            proc = subprocess.Popen(self.ms("run", "--log-json"), stdout=subprocess.DEVNULL,
                                    stderr=handle, stdin=subprocess.DEVNULL)
        agent = Agent(proc, log, time.monotonic())
        self.agents.append(agent)
        return agent

    def wait_agent_marked(self, agent: Agent, timeout: float = 60,
                          delivery: str | None = None) -> float:
        """Seconds from the agent's start to its first mark.ok in the log (with `delivery`:
        the first one delivered that way on every server; the agent's first mark is switched,
        its receivers start after it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e["event"] == "mark.ok" and delivery in (None, e.get("delivery"))
                   for e in agent_events(agent.log)):
                return time.monotonic() - agent.started
            if agent.proc.poll() is not None:
                raise RuntimeError(f"the agent exited {agent.proc.returncode}: "
                                   f"{agent.log.read_text()[-800:]}")
            time.sleep(0.05)
        what = f"mark delivered by {delivery}" if delivery else "mark"
        raise RuntimeError(f"the agent laid no {what} within {timeout:.0f} s: "
                           f"{agent.log.read_text()[-800:]}")

    def stop_agent(self, agent: Agent) -> dict[str, Any]:
        """SIGTERM (finish work in flight, exit 0); the log's mark events summarised."""
        cpu_s = proc_cpu_s(agent.proc.pid)
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        try:
            code: int | str = agent.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()
            code = "no exit within 60 s: killed"
        self.agents.remove(agent)
        events = agent_events(agent.log)
        ok = [e for e in events if e["event"] == "mark.ok"]
        first_stream = next((i for i, e in enumerate(ok) if e.get("delivery") == "stream"),
                            len(ok))
        return {
            "exit_code": code, "stop_seconds": time.monotonic() - started,
            "ran_seconds": started - agent.started, "marks_ok": len(ok), "cpu_s": cpu_s,
            "marks_skipped": sum(1 for e in events if e["event"] == "mark.skipped"),
            "marks_failed": sum(1 for e in events if e["event"] == "mark.failed"),
            "failures": [e.get("reason") for e in events
                         if e["event"] in ("mark.failed", "mark.skipped")][:5],
            "backups_started": [e.get("reason") for e in events if e["event"] == "backup.start"],
            "hold_ms": dist([float(e["hold_ms"]) for e in ok]),
            "delivery_ms": dist([float(e["delivery_ms"]) for e in ok]),
            # "stream" / "switch" / "stream,switch" (mixed: some server had no receiver)
            "delivery": {how: sum(1 for e in ok if e.get("delivery") == how)
                         for how in sorted({str(e.get("delivery")) for e in ok})},
            # Marks not (only) streamed once the receivers were up: should be none.
            "not_stream_after_first_stream": sum(1 for e in ok[first_stream:]
                                                 if e.get("delivery") != "stream"),
            "stream_events": [{k: e.get(k) for k in ("event", "server", "reason")}
                              for e in events if str(e["event"]).startswith("stream.")][:20],
        }

    def settle(self, timeout: float = 60) -> float:
        """Wait for the archive backlog of the previous step (no .ready file on any server),
        flush dirty pages, then let background work calm down. Returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if all(count_ready(s.data_dir) == 0 for s in self.servers):
                break
            time.sleep(0.2)
        else:
            say(f"warning: archive backlog not drained after {timeout:.0f} s: "
                + ", ".join(f"{s.name} {count_ready(s.data_dir)}" for s in self.servers))
        os.sync()
        time.sleep(1.0)
        return time.monotonic() - started

    def load_config(self) -> config_mod.Config:
        return config_mod.load(self.cfg)

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="markship-marks-bench-", dir="/tmp"))
        chown_to(self.root, OS_USER)
        self.root.chmod(0o755)
        os.chdir(self.root)  # every tool, whichever user it runs as, can enter this directory
        say(f"bench directory {self.root}")
        say(WARM_CACHE)
        self.repo = pg_dir(self.root / "repo", 0o750)
        pg_dir(self.root / "clients")
        self.cfg = self.root / "markship.toml"
        for i in range(self.n_servers):
            name = f"pg{i + 1}"
            push = f"{MARKSHIP} --config {self.cfg} wal-push --server {name} %p"
            server = ScratchServer(name, self.root / name, self.port(),
                                   settings={"archive_mode": "on", "archive_command": push,
                                             "max_prepared_transactions": "20"})
            self.servers.append(server)
        self.write_config(30)
        for server in self.servers:
            server.initdb()
            server.start()
        say(f"pgbench -i -s {SCALE} on {self.n_servers} servers in parallel ...")
        started = time.monotonic()
        procs = [subprocess.Popen(self.pgbench_argv(s, "-i", "-q", "-s", str(SCALE)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for s in self.servers]
        for proc in procs:
            _out, err = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"pgbench -i failed: {err.strip()[-500:]}")
        say(f"pgbench -i done in {time.monotonic() - started:.1f} s")
        for server in self.servers:
            server.psql(f"""
                CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
                INSERT INTO accounts SELECT g, {START_BALANCE}
                    FROM generate_series(1, {ACCOUNTS}) g;
                CREATE TABLE transfers (gid text PRIMARY KEY, amount bigint NOT NULL);
            """)
        first, peer = self.servers[0], self.servers[1]
        first.psql("CREATE TABLE peers (name text PRIMARY KEY, host text, port int); "
                   f"INSERT INTO peers VALUES ('{peer.name}', '127.0.0.1', {peer.port})")
        with psycopg.connect(first.conninfo(), autocommit=True) as conn:
            setup_decisions(conn)
        # A complete backup set first: without one the agent would start a backup at once.
        result = run_timed(self.ms("backup", "--json")).check("markship backup")
        say(f"servers up: {', '.join(f'{s.name} :{s.port}' for s in self.servers)}; markship "
            f"backup of all {self.n_servers} in {result.seconds:.1f} s")
        self.results["setup"] = {"scale": SCALE, "backup_seconds": result.seconds,
                                 "ports": {s.name: s.port for s in self.servers}}

    # -- 1. mark latency under load --------------------------------------------------------------

    def bench_latency(self) -> None:
        d = self.duration
        say(f"== 1. mark latency under load: pgbench -c {self.clients} -j "
            f"{min(2, self.clients)} on each of {self.n_servers} servers; WAL receivers up, "
            f"(a) take_mark() in-process every {MARK_INTERVAL_LATENCY:g} s for {2 * d} s "
            f"(delivery stream; every other mark at nice 0 instead of the agent's marking-thread "
            f"priority), (b) `markship mark --json` (process start included) every 1 s for "
            f"{d} s; then receivers down, (c) as (a) with delivery \"switch\" (the old way) "
            f"for {d} s")
        self.settle()
        self.write_config(30)
        ctx = multiprocessing.get_context("fork")
        idle_sw = self.mark_loop(ctx, 5.0, "switch")
        host = self.start_receivers(ctx)
        say(f"WAL receivers streaming from all {self.n_servers} servers after "
            f"{host.ready_s:.2f} s")
        idle = self.mark_loop(ctx, 5.0, "stream")
        idle_ok = [s for s in idle if s["outcome"] == "ok"]
        idle_sw_ok = [s for s in idle_sw if s["outcome"] == "ok"]
        idle_total = dist([s["total_ms"] for s in idle_ok])
        idle_delivery = dist([s["delivery_ms"] for s in idle_ok])
        idle_sw_total = dist([s["total_ms"] for s in idle_sw_ok])
        idle_sw_delivery = dist([s["delivery_ms"] for s in idle_sw_ok])
        say(f"idle baseline, no load: take_mark() stream total {fmt_dist(idle_total, digits=1)}"
            f" (delivery {fmt_dist(idle_delivery, digits=1)}); switch total "
            f"{fmt_dist(idle_sw_total, digits=1)} (delivery "
            f"{fmt_dist(idle_sw_delivery, digits=1)})")
        self.settle()
        warmup = 3
        # pgbench runs until all three loops are done and is then stopped; its rate in each
        # window comes from pg_stat_database.xact_commit.
        procs = self.start_pgbench(warmup + 6 * d + 120)
        time.sleep(warmup)

        commits, window = self.commits_total(), time.monotonic()
        # (a) takes turns: a mark at the agent's marking-thread priority, then one at nice 0
        # (an ordinary thread), so both see the same load.
        nice = self.load_config().marks.nice
        both = self.mark_loop(ctx, float(2 * d), "stream", [nice, 0] if nice else None)
        tps_a = (self.commits_total() - commits) / (time.monotonic() - window)
        inproc = [s for s in both if s["nice"] == nice]
        ok = [s for s in inproc if s["outcome"] == "ok"]
        ok_nice0 = [s for s in both if s["nice"] != nice and s["outcome"] == "ok"]

        cli: list[dict[str, Any]] = []
        floors: dict[str, list[float]] = {"version": [], "imports": []}
        # One warm-up, not counted: the first lean mark after the config was written checks it
        # with the full model and caches its settings (a cold start, ~1 s under this load).
        run_timed(self.ms("mark", "--json"), timeout=120)
        commits, window = self.commits_total(), time.monotonic()
        began = time.monotonic()
        tick = began
        i = 0
        # At least 10 CLI marks (a loaded machine can make each take seconds), at most 3 × d.
        while (time.monotonic() - began < d or len(cli) < 10) and \
                time.monotonic() - began < 3 * d:
            result = run_timed(self.ms("mark", "--json"), timeout=120)
            entry: dict[str, Any] = {"seconds": result.seconds, "code": result.code}
            if result.code == 0:
                record = json.loads(result.out)
                entry.update(barrier_wait_ms=record["barrier_wait_ms"],
                             barrier_hold_ms=record["barrier_hold_ms"],
                             delivery_ms=record["delivery_ms"],
                             delivery=record.get("delivery", {}))
            else:
                entry["error"] = (result.err or result.out).strip()[-300:]
            cli.append(entry)
            # The floor under any CLI command, same load: interpreter + imports alone.
            if i % 3 == 0:
                floors["version"].append(run_timed([str(MARKSHIP), "--version"]).seconds)
            elif i % 3 == 1:
                floors["imports"].append(run_timed(
                    [str(PYTHON), "-c", "import markship.cli.main, markship.marks.take"]).seconds)
            i += 1
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        tps_b = (self.commits_total() - commits) / (time.monotonic() - window)
        receiver_log = self.stop_receivers(host)

        # (c) the old delivery, same load, no receivers (as before streaming existed).
        commits, window = self.commits_total(), time.monotonic()
        inproc_sw = self.mark_loop(ctx, float(d), "switch")
        tps_c = (self.commits_total() - commits) / (time.monotonic() - window)
        ok_sw = [s for s in inproc_sw if s["outcome"] == "ok"]
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        self.finish_pgbench(procs, check=False)
        cli_ok = [c for c in cli if c["code"] == 0]

        def by_stream(samples: list[dict[str, Any]]) -> int:
            """Marks whose WAL went by stream on every server."""
            return sum(1 for s in samples if s.get("delivery")
                       and all(v == "stream" for v in s["delivery"].values()))

        streamed_a, streamed_b = by_stream(ok), by_stream(cli_ok)
        streamed_idle = by_stream(idle_ok)
        restarts = sum(1 for e in receiver_log if e["event"] == "stream.exited")
        a_total = dist([s["total_ms"] for s in ok])
        a0_total = dist([s["total_ms"] for s in ok_nice0]) if ok_nice0 else {}
        a0_hold = dist([s["barrier_hold_ms"] for s in ok_nice0]) if ok_nice0 else {}
        a_hold = dist([s["barrier_hold_ms"] for s in ok])
        a_wait = dist([s["barrier_wait_ms"] for s in ok])
        a_delivery = dist([s["delivery_ms"] for s in ok])
        c_total = dist([s["total_ms"] for s in ok_sw])
        c_hold = dist([s["barrier_hold_ms"] for s in ok_sw])
        c_delivery = dist([s["delivery_ms"] for s in ok_sw])
        b_total = dist([c["seconds"] * 1000 for c in cli_ok])
        b_hold = dist([c["barrier_hold_ms"] for c in cli_ok])
        b_delivery = dist([c["delivery_ms"] for c in cli_ok])
        floor_v = dist([v * 1000 for v in floors["version"]])
        floor_i = dist([v * 1000 for v in floors["imports"]])
        self.results["latency"] = {
            "pgbench_clients_per_server": self.clients,
            "commits_per_s_all_servers": {"inprocess_stream_window": tps_a, "cli_window": tps_b,
                                          "inprocess_switch_window": tps_c},
            "receivers": {"ready_s": host.ready_s, "events": receiver_log,
                          "restarts": restarts},
            "idle_inprocess_stream": {"samples": idle, "total_ms": idle_total,
                                      "delivery_ms": idle_delivery,
                                      "delivered_by_stream": streamed_idle},
            "idle_inprocess_switch": {"samples": idle_sw, "total_ms": idle_sw_total,
                                      "delivery_ms": idle_sw_delivery},
            "marking_thread_nice": nice,
            "inprocess_stream_nice0": {"samples": [s for s in both if s["nice"] != nice],
                                       "total_ms": a0_total, "barrier_hold_ms": a0_hold},
            "inprocess_stream": {"samples": inproc, "total_ms": a_total,
                                 "barrier_hold_ms": a_hold, "barrier_wait_ms": a_wait,
                                 "delivery_ms": a_delivery, "delivered_by_stream": streamed_a,
                                 "skipped": sum(1 for s in inproc if s["outcome"] == "skipped"),
                                 "failed": sum(1 for s in inproc if s["outcome"] == "failed")},
            "cli_stream": {"samples": cli, "total_ms": b_total, "barrier_hold_ms": b_hold,
                           "delivery_ms": b_delivery, "delivered_by_stream": streamed_b,
                           "failed_or_skipped": len(cli) - len(cli_ok)},
            "inprocess_switch": {"samples": inproc_sw, "total_ms": c_total,
                                 "barrier_hold_ms": c_hold, "delivery_ms": c_delivery,
                                 "skipped": sum(1 for s in inproc_sw
                                                if s["outcome"] == "skipped"),
                                 "failed": sum(1 for s in inproc_sw
                                               if s["outcome"] == "failed")},
            "process_floor_ms": {"markship_version": floor_v, "python_imports": floor_i},
        }
        say(f"commits/s summed over the servers (pgbench + marks) during (a) {tps_a:.0f}, "
            f"during (b) {tps_b:.0f}, during (c) {tps_c:.0f}")
        say(f"(a) in-process, stream total {fmt_dist(a_total, digits=1)}")
        say(f"    barrier_hold_ms    {fmt_dist(a_hold, digits=1)}")
        say(f"    barrier_wait_ms    {fmt_dist(a_wait, digits=1)}")
        say(f"    delivery_ms        {fmt_dist(a_delivery, digits=1)} (wait for the receivers' "
            f"flush)")
        say(f"    delivered by stream on every server: {streamed_a} of {len(ok)} marks; "
            f"receiver restarts {restarts}")
        rest = [s["total_ms"] - s["barrier_hold_ms"] - s["barrier_wait_ms"] - s["delivery_ms"]
                for s in ok]
        no_delivery = dist([s["total_ms"] - s["delivery_ms"] for s in ok])
        say(f"    rest (lock begin/commit, repository check + record write) "
            f"{fmt_dist(dist(rest), digits=1)}")
        say(f"(b) CLI `markship mark --json` {fmt_dist(b_total)}; barrier held "
            f"{fmt_dist(b_hold, digits=1)}; delivery {fmt_dist(b_delivery, digits=1)}; by "
            f"stream on every server {streamed_b} of {len(cli_ok)}")
        say(f"    floor: `markship --version` {fmt_dist(floor_v)}; `python -c 'import "
            f"markship.cli.main, markship.marks.take'` {fmt_dist(floor_i)}")
        say(f"(c) in-process, switch total {fmt_dist(c_total, digits=1)}")
        say(f"    barrier_hold_ms    {fmt_dist(c_hold, digits=1)}")
        say(f"    delivery_ms        {fmt_dist(c_delivery, digits=1)} (pg_switch_wal())")
        bad = ([s for s in [*inproc, *inproc_sw] if s["outcome"] != "ok"]
               + [c for c in cli if c["code"] != 0])
        if bad:
            say(f"marks not made: {len(bad)}; first: {bad[0].get('reason') or bad[0].get('error')}")
        self.rows += [
            Row("mark latency (a) in-process take_mark(), stream, p50", f"{a_total['p50']:.1f} ms",
                f"hold p50 {a_hold['p50']:.1f} ms, delivery p50 {a_delivery['p50']:.1f} ms",
                "< 20 ms", verdict(a_total["p50"] < 20)),
            Row("mark latency (a) in-process take_mark(), stream, p99", f"{a_total['p99']:.1f} ms",
                f"max {a_total['max']:.1f} ms, delivery p99 {a_delivery['p99']:.1f} ms, "
                f"n={len(ok)}", "< 50 ms", verdict(a_total["p99"] < 50)),
            Row("  (info) (c) same, delivery \"switch\" (old), p50 / p99",
                f"{c_total['p50']:.1f} / {c_total['p99']:.1f} ms",
                f"switch p50 {c_delivery['p50']:.1f} / p99 {c_delivery['p99']:.1f} ms, "
                f"hold p50 {c_hold['p50']:.1f} ms, n={len(ok_sw)}", "-", "info"),
            Row("marks (a) delivered by stream on every server", f"{streamed_a} / {len(ok)}",
                f"(b) {streamed_b} / {len(cli_ok)}; receiver restarts {restarts}", "all",
                verdict(streamed_a == len(ok) > 0 and streamed_b == len(cli_ok))),
            Row("mark latency (b) `markship mark --json`, p50", f"{b_total['p50']:.0f} ms",
                f"process start: --version alone p50 {floor_v['p50']:.0f} ms", "< 150 ms",
                verdict(b_total["p50"] < 150)),
            Row("  (info) (b) `markship mark --json`, p99", f"{b_total['p99']:.0f} ms",
                f"max {b_total['max']:.0f} ms, n={len(cli_ok)}", "-", "info"),
            Row("  (info) (a) at nice 0 (an ordinary thread), p50 / p99",
                f"{a0_total['p50']:.1f} / {a0_total['p99']:.1f} ms" if ok_nice0 else "-",
                f"same window, taking turns with (a) at nice {nice}; hold p50 "
                f"{a0_hold['p50']:.1f} ms, n={len(ok_nice0)}" if ok_nice0 else
                "[marks] nice = 0: (a) is at nice 0", "-", "info"),
            Row("  (info) (a) without delivery (total − delivery_ms)",
                f"p50 {no_delivery['p50']:.1f} ms", f"p99 {no_delivery['p99']:.1f} ms", "-",
                "info"),
            Row("  (info) (a) mark record write / before the barrier",
                f"p50 {dist([s['record_ms'] for s in ok])['p50']:.1f} ms",
                f"before the barrier p50 {dist([s['prepare_ms'] for s in ok])['p50']:.1f} ms",
                "-", "info"),
            Row("  (info) idle servers (no load), p50 stream / switch",
                f"{idle_total['p50']:.1f} / {idle_sw_total['p50']:.1f} ms",
                f"delivery p50 {idle_delivery['p50']:.1f} / {idle_sw_delivery['p50']:.1f} ms, "
                f"by stream {streamed_idle} / {len(idle_ok)}", "-", "info"),
            Row("  (info) barrier held per mark (a), p50 / p99",
                f"{a_hold['p50']:.1f} / {a_hold['p99']:.1f} ms",
                f"wait p99 {a_wait['p99']:.1f} ms; (c) p99 {c_hold['p99']:.1f} ms", "-",
                "info"),
            Row("marks made / attempted under load", f"{len(ok) + len(cli_ok) + len(ok_sw)} / "
                f"{len(inproc) + len(cli) + len(inproc_sw)}",
                "skipped or failed are listed above", "all", verdict(not bad)),
        ]

    def bench_s3(self) -> None:
        d = self.duration
        half = max(5.0, d / 2)
        say(f"== 1b. mark latency with the repository in S3 (moto's server on 127.0.0.1; the "
            f"receivers write into a local spool, each mark uploads its WAL) against the "
            f"directory repository, delivery stream, take_mark() in-process every "
            f"{MARK_INTERVAL_LATENCY:g} s: idle 5 s each, then under pgbench -c {self.clients} "
            f"-j {min(2, self.clients)} on each of {self.n_servers} servers in turns directory "
            f"/ S3 / directory / S3, {half:g} s each")
        self.s3 = start_s3(self.root, self.port())
        ctx = multiprocessing.get_context("fork")
        idle: dict[str, list[dict[str, Any]]] = {"fs": [], "s3": []}
        loaded: dict[str, list[dict[str, Any]]] = {"fs": [], "s3": []}
        sparse: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        restarts = {"fs": 0, "s3": 0}
        tps: dict[str, list[float]] = {"fs": [], "s3": []}

        def window(kind: str, seconds: float, into: list[dict[str, Any]],
                   interval: float = MARK_INTERVAL_LATENCY, ahead: bool = True) -> None:
            self.on_s3 = kind == "s3"
            self.write_config(30)
            host = self.start_receivers(ctx)
            commits, began = self.commits_total(), time.monotonic()
            try:
                into.extend(self.mark_loop(ctx, seconds, "stream", interval=interval,
                                           upload_ahead=ahead))
            finally:
                events = self.stop_receivers(host)
            if interval == MARK_INTERVAL_LATENCY:
                tps[kind].append((self.commits_total() - commits) / (time.monotonic() - began))
            restarts[kind] += sum(1 for e in events if e["event"] == "stream.exited")
            if kind == "s3":  # the next S3 window's receivers start afresh, as an agent's do
                shutil.rmtree(upload.spool_root(self.load_config()), ignore_errors=True)

        try:
            self.settle()
            for kind in ("fs", "s3"):
                window(kind, 5.0, idle[kind])
            self.settle()
            procs = self.start_pgbench(3 + 4 * half + 4 * d + 300)
            time.sleep(3)
            for kind in ("fs", "s3", "fs", "s3"):
                window(kind, half, loaded[kind])
            # A longer interval: what a mark uploads with and without uploads ahead.
            for ahead in (True, False):
                window("s3", 2.0 * d, sparse[ahead], interval=SPARSE_INTERVAL, ahead=ahead)
            for proc in procs:
                proc.send_signal(signal.SIGINT)
            self.finish_pgbench(procs, check=False)
        finally:
            self.on_s3 = False
            self.write_config(30)
        sizes = self.s3.stream_objects()
        out: dict[str, Any] = {"stream_objects": {"count": len(sizes),
                                                  "bytes": dist([float(v) for v in sizes])}}
        for kind in ("fs", "s3"):
            ok = [s for s in loaded[kind] if s["outcome"] == "ok"]
            idle_ok = [s for s in idle[kind] if s["outcome"] == "ok"]
            streamed = sum(1 for s in ok if s.get("delivery")
                           and all(v == "stream" for v in s["delivery"].values()))
            out[kind] = {
                "samples": loaded[kind], "idle_samples": idle[kind],
                "total_ms": dist([s["total_ms"] for s in ok]),
                "delivery_ms": dist([s["delivery_ms"] for s in ok]),
                "record_ms": dist([s["record_ms"] for s in ok]),
                "barrier_hold_ms": dist([s["barrier_hold_ms"] for s in ok]),
                "idle_total_ms": dist([s["total_ms"] for s in idle_ok]),
                "delivered_by_stream": streamed, "made": len(ok),
                "attempted": len(loaded[kind]), "receiver_restarts": restarts[kind],
                "commits_per_s": tps[kind]}
        for ahead, label in ((True, "with_upload_ahead"), (False, "without_upload_ahead")):
            ok = [s for s in sparse[ahead] if s["outcome"] == "ok"]
            out[f"s3_every_{SPARSE_INTERVAL:g}s_{label}"] = {
                "samples": sparse[ahead], "total_ms": dist([s["total_ms"] for s in ok]),
                "delivery_ms": dist([s["delivery_ms"] for s in ok])}
        self.results["s3"] = out
        fs, s3 = out["fs"], out["s3"]
        for kind, label in (("fs", "directory"), ("s3", "S3")):
            r = out[kind]
            say(f"{label:9s} idle total {fmt_dist(r['idle_total_ms'], digits=1)}")
            say(f"{label:9s} load total {fmt_dist(r['total_ms'], digits=1)}")
            say(f"{label:9s}      delivery {fmt_dist(r['delivery_ms'], digits=1)}; record "
                f"{fmt_dist(r['record_ms'], digits=1)}; by stream {r['delivered_by_stream']} of "
                f"{r['made']} (attempted {r['attempted']}); commits/s "
                f"{', '.join(f'{v:.0f}' for v in r['commits_per_s'])}")
        say(f"stream objects left in the bucket: {len(sizes)}, sizes "
            f"{fmt_dist(out['stream_objects']['bytes'], 'bytes')}")
        ratio = s3["total_ms"]["p50"] / fs["total_ms"]["p50"]
        on = out[f"s3_every_{SPARSE_INTERVAL:g}s_with_upload_ahead"]
        off = out[f"s3_every_{SPARSE_INTERVAL:g}s_without_upload_ahead"]
        say(f"S3, a mark every {SPARSE_INTERVAL:g} s: with uploads ahead total "
            f"{fmt_dist(on['total_ms'], digits=1)}; without {fmt_dist(off['total_ms'], digits=1)}")
        self.rows += [
            Row("mark latency, S3 repository, stream, p50", f"{s3['total_ms']['p50']:.1f} ms",
                f"directory {fs['total_ms']['p50']:.1f} ms (x{ratio:.2f}); delivery p50 "
                f"{s3['delivery_ms']['p50']:.1f} vs {fs['delivery_ms']['p50']:.1f} ms",
                "< 50 ms", verdict(s3["total_ms"]["p50"] < 50)),
            Row("mark latency, S3 repository, stream, p99", f"{s3['total_ms']['p99']:.1f} ms",
                f"directory {fs['total_ms']['p99']:.1f} ms; max {s3['total_ms']['max']:.1f} ms,"
                f" n={s3['made']}", "< 200 ms", verdict(s3["total_ms"]["p99"] < 200)),
            Row("  (info) idle, p50 S3 / directory",
                f"{s3['idle_total_ms']['p50']:.1f} / {fs['idle_total_ms']['p50']:.1f} ms",
                f"record write p50 {s3['record_ms']['p50']:.1f} / "
                f"{fs['record_ms']['p50']:.1f} ms under load", "-", "info"),
            Row(f"  (info) S3, a mark every {SPARSE_INTERVAL:g} s, p50 / p99",
                f"{on['total_ms']['p50']:.1f} / {on['total_ms']['p99']:.1f} ms",
                f"without uploads ahead {off['total_ms']['p50']:.1f} / "
                f"{off['total_ms']['p99']:.1f} ms", "-", "info"),
            Row("marks on S3 delivered by stream on every server",
                f"{s3['delivered_by_stream']} / {s3['made']}",
                f"attempted {s3['attempted']}; receiver restarts {s3['receiver_restarts']}",
                "all", verdict(s3["delivered_by_stream"] == s3["made"] == s3["attempted"] > 0)),
        ]

    def mark_loop(self, ctx: multiprocessing.context.ForkContext, seconds: float,
                  delivery: str, nices: list[int] | None = None,
                  interval: float = MARK_INTERVAL_LATENCY,
                  upload_ahead: bool = True) -> list[dict[str, Any]]:
        """take_mark() every `interval` s in a forked child (see _mark_loop_child)."""
        queue: multiprocessing.Queue[str] = ctx.Queue()
        child = ctx.Process(target=_mark_loop_child,
                            args=(str(self.cfg), seconds, interval, delivery, nices,
                                  upload_ahead, queue))
        child.start()
        try:
            payload = json.loads(queue.get(timeout=seconds + 120))
        finally:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
        if "error" in payload:
            raise RuntimeError(f"in-process mark loop failed: {payload['error']}")
        samples: list[dict[str, Any]] = payload["samples"]
        return samples

    def start_receivers(self, ctx: multiprocessing.context.ForkContext) -> ReceiverHost:
        """markship's WAL receivers in a forked child (see _receivers_child); returns once
        every server streams into the repository."""
        queue: multiprocessing.Queue[str] = ctx.Queue()
        stop = ctx.Event()
        child = ctx.Process(target=_receivers_child, args=(str(self.cfg), stop, queue))
        child.start()
        host = ReceiverHost(child, stop, queue)
        self.receiver_hosts.append(host)
        payload = json.loads(queue.get(timeout=120))
        if "error" in payload:
            self.stop_receivers(host)
            raise RuntimeError(f"WAL receivers did not start: {payload['error']}")
        host.ready_s = float(payload["ready_s"])
        return host

    def stop_receivers(self, host: ReceiverHost) -> list[dict[str, Any]]:
        """Stop the receivers (SIGTERM: pg_receivewal flushes and exits); their event log."""
        host.stop.set()
        events: list[dict[str, Any]] = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                payload = json.loads(host.queue.get(timeout=max(0.1, deadline - time.monotonic())))
                if "error" in payload:
                    say(f"WAL receivers: {payload['error']}")
                if "events" in payload:
                    events = payload["events"]
                    break
        except Exception as exc:  # queue.Empty, a broken child: clean up regardless
            say(f"WAL receivers did not report back: {type(exc).__name__}: {exc}")
        finally:
            host.proc.join(timeout=30)
            if host.proc.is_alive():
                host.proc.kill()
                host.proc.join()
            if host in self.receiver_hosts:
                self.receiver_hosts.remove(host)
        return events

    # -- 2. RPO under load, the agent at interval 5 s --------------------------------------------

    def bench_rpo(self) -> None:
        seconds = 2 * self.duration
        say(f"== 2. RPO under load: the agent (`markship run`, delivery stream: it runs the WAL "
            f"receivers) at [marks] interval = {RPO_INTERVAL:g} s, pgbench on every server, age "
            f"of the newest complete mark sampled every 1 s for {seconds} s, from its first "
            f"mark delivered by stream (library: markship.marks.take.mark_states)")
        self.settle()
        procs = self.start_pgbench(seconds + 40)
        time.sleep(2)
        agent = self.start_agent(RPO_INTERVAL, "rpo")
        config = self.load_config()
        repo = open_repository(location_of(config.repository))
        start_wall = datetime.now(UTC)
        first_complete: float | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            newest = latest_complete(mark_states(repo, config))
            if newest is not None and newest.record.created_at >= start_wall:
                first_complete = time.monotonic() - agent.started
                break
            if agent.proc.poll() is not None:
                raise RuntimeError(f"the agent exited: {agent.log.read_text()[-800:]}")
            time.sleep(0.1)
        if first_complete is None:
            raise RuntimeError("the agent made no complete mark within 30 s")
        # The agent's first mark is switched (its receivers start once it has connected):
        # the sampling starts from its first mark delivered by stream.
        first_streamed = self.wait_agent_marked(agent, timeout=3 * RPO_INTERVAL + 30,
                                                delivery="stream")
        say(f"first complete mark {first_complete:.2f} s after the agent started, first mark "
            f"delivered by stream after {first_streamed:.2f} s")
        samples: list[dict[str, Any]] = []
        first_seen_complete: dict[str, float] = {}
        created: dict[str, datetime] = {}
        sampling_wall = datetime.now(UTC)
        began = time.monotonic()
        tick = began
        while time.monotonic() - began < seconds:
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
            call = time.perf_counter()
            states = mark_states(repo, config)
            now = datetime.now(UTC)
            call_ms = (time.perf_counter() - call) * 1000
            newest = latest_complete(states)
            if newest is None:
                raise RuntimeError("no complete mark in the repository any more")
            newest_age = (now - newest.record.created_at).total_seconds()
            for state in states:
                created[state.record.name] = state.record.created_at
                if state.complete and state.record.name not in first_seen_complete:
                    first_seen_complete[state.record.name] = (
                        now - state.record.created_at).total_seconds()
            samples.append({"t": round(time.monotonic() - began, 3),
                            "age_s": round(newest_age, 3),
                            "newest_complete": newest.record.name, "marks": len(states),
                            "incomplete": sum(1 for s in states if not s.complete),
                            "call_ms": round(call_ms, 1)})
        # `markship mark` while the agent runs, same load: the agent makes the mark and the
        # command only asks it (markship.agent.control).
        via_agent: list[dict[str, Any]] = []
        run_timed(self.ms("mark", "--json"))  # warm-up, not counted: caches the settings
        for _ in range(10):
            asked = run_timed(self.ms("mark", "--json"))
            taken_by = json.loads(asked.out).get("taken_by") if asked.code == 0 else None
            via_agent.append({"seconds": asked.seconds, "code": asked.code,
                              "taken_by": taken_by})
            time.sleep(0.5)
        agent_stats = self.stop_agent(agent)
        tps = self.finish_pgbench(procs)
        cli_marks = run_timed(self.ms("marks", "--json"))
        via_ms = dist([v["seconds"] * 1000 for v in via_agent if v["taken_by"] == "agent"])
        ages = [s["age_s"] for s in samples]
        age = dist(ages)
        # How long after its creation each mark made during the sampling was first seen
        # complete (1 s sampling resolution: an upper bound).
        mine = {n: v for n, v in first_seen_complete.items() if created[n] >= sampling_wall}
        lag = dist(list(mine.values()))
        self.results["rpo"] = {
            "interval_s": RPO_INTERVAL, "sample_seconds": seconds, "samples": samples,
            "newest_complete_age_s": age, "first_complete_after_agent_start_s": first_complete,
            "first_stream_mark_after_agent_start_s": first_streamed,
            "mark_seen_complete_after_s": lag, "agent": agent_stats, "pgbench_tps": tps,
            "mark_states_call_ms": dist([s["call_ms"] for s in samples]),
            "mark_command_via_agent": via_agent, "mark_command_via_agent_ms": via_ms,
            "cli_marks_json_seconds": cli_marks.seconds, "marks_in_repository":
            samples[-1]["marks"] if samples else 0,
        }
        say("age of the newest complete mark per second (s): "
            + " ".join(f"{a:.1f}" for a in ages))
        say(f"age {fmt_dist(age, 's', 2)}; agent marks ok {agent_stats['marks_ok']}, skipped "
            f"{agent_stats['marks_skipped']}, failed {agent_stats['marks_failed']}; delivered "
            f"{agent_stats['delivery']}, delivery {fmt_dist(agent_stats['delivery_ms'], digits=1)}"
            f"; each mark seen complete {fmt_dist(lag, 's', 2)} after its creation (1 s "
            "sampling)")
        say(f"agent exit code after SIGTERM: {agent_stats['exit_code']} (in "
            f"{agent_stats['stop_seconds']:.2f} s); pgbench tps per server "
            f"{', '.join(f'{t:.0f}' for t in tps)}")
        say(f"mark_states() per sample {fmt_dist(dist([s['call_ms'] for s in samples]), digits=1)}"
            f" with {samples[-1]['marks'] if samples else 0} marks in the repository; "
            f"`markship marks --json` {cli_marks.seconds * 1000:.0f} ms")
        limit = RPO_INTERVAL + 5
        self.rows += [
            Row(f"RPO: newest complete mark age, max (interval {RPO_INTERVAL:g} s)",
                f"{age['max']:.2f} s", f"p95 {age['p95']:.2f} s, n={len(ages)}",
                f"≤ {limit:g} s (goal)", verdict(age["max"] <= limit)),
            Row("RPO: same, against the issue's bound", f"{age['max']:.2f} s",
                f"p50 {age['p50']:.2f} s", "≤ 15 s (issue)", verdict(age["max"] <= 15)),
            Row("mark latency (b') `markship mark --json` with the agent running, p50",
                f"{via_ms['p50']:.0f} ms" if via_agent and via_ms.get("n") else "-",
                f"answered by the agent {sum(v['taken_by'] == 'agent' for v in via_agent)} / "
                f"{len(via_agent)}, max {via_ms.get('max', 0):.0f} ms", "< 150 ms",
                verdict(bool(via_ms.get("n")) and via_ms["p50"] < 150)),
            Row("  (info) mark creation → seen complete", f"p50 {lag['p50']:.2f} s",
                f"max {lag['max']:.2f} s (1 s sampling)", "-", "info"),
            Row("RPO agent marks by stream / all",
                f"{agent_stats['delivery'].get('stream', 0)} / {agent_stats['marks_ok']}",
                f"first by stream {first_streamed:.1f} s after the agent started (receivers "
                "catch up first; marks before are switched)",
                "all after the first", verdict(agent_stats["not_stream_after_first_stream"] == 0
                                               and bool(agent_stats["delivery"].get("stream")))),
            Row("agent exits 0 on SIGTERM", str(agent_stats["exit_code"]),
                f"after {agent_stats['stop_seconds']:.2f} s", "0",
                verdict(agent_stats["exit_code"] == 0)),
        ]

    # -- 3. throughput cost of marks -------------------------------------------------------------

    # -- 1b. `markship mark` without an agent: the lean path against the full command line -------

    def bench_cli(self) -> None:
        d = self.duration
        say(f"== 1b. `markship mark --json` without an agent under pgbench load (-c "
            f"{self.clients} on each of {self.n_servers} servers), process start included: "
            f"the lean path and the full command line (MARKSHIP_FULL_MARK=1) in turns, one mark "
            f"a second for {2 * d} s (at least 10 of each)")
        self.settle()
        self.write_config(30)
        full_env = {"MARKSHIP_FULL_MARK": "1"}
        for env in (None, full_env):  # the first lean mark after a config change validates it
            warm = run_timed(self.ms("mark", "--json"), timeout=120, env=env)
            if warm.code != 0:
                raise RuntimeError(f"markship mark failed: {warm.err.strip()[-300:]}")
        idle: dict[str, list[float]] = {"lean": [], "full": []}
        for _turn in range(8):  # no pgbench yet (other work on the host goes on)
            for kind, env in (("lean", None), ("full", full_env)):
                result = run_timed(self.ms("mark", "--json"), timeout=120, env=env)
                if result.code == 0:
                    idle[kind].append(result.seconds * 1000)
            time.sleep(0.5)
        idle_lean, idle_full = dist(idle["lean"]), dist(idle["full"])
        say(f"without pgbench (load average {loadavg()}): lean {fmt_dist(idle_lean)}; full "
            f"{fmt_dist(idle_full)}")
        procs = self.start_pgbench(3 + 6 * d + 120)
        time.sleep(3)
        load_at_start = loadavg()
        runs: dict[str, list[float]] = {"lean": [], "full": []}
        failed: dict[str, list[str]] = {"lean": [], "full": []}
        holds: dict[str, list[float]] = {"lean": [], "full": []}
        delivery: dict[str, list[float]] = {"lean": [], "full": []}
        floor: list[float] = []  # the interpreter alone (site included), same load
        began = time.monotonic()
        tick = began
        while (time.monotonic() - began < 2 * d or min(map(len, runs.values())) < 10) and \
                time.monotonic() - began < 6 * d:
            for kind, env in (("lean", None), ("full", full_env)):
                result = run_timed(self.ms("mark", "--json"), timeout=120, env=env)
                if result.code == 0:
                    runs[kind].append(result.seconds * 1000)
                    made = json.loads(result.out)
                    holds[kind].append(made["barrier_hold_ms"])
                    delivery[kind].append(made["delivery_ms"])
                else:
                    failed[kind].append((result.err or result.out).strip()[-300:])
                tick += 0.5
                time.sleep(max(0.0, tick - time.monotonic()))
            floor.append(run_timed([str(PYTHON), "-c", "pass"]).seconds * 1000)
        load_at_end = loadavg()
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        self.finish_pgbench(procs, check=False)
        lean, full = dist(runs["lean"]), dist(runs["full"])
        ratio = full["p50"] / lean["p50"] if lean["p50"] else float("nan")
        python = dist(floor)
        self.results["cli"] = {"lean_ms": lean, "full_ms": full, "samples": runs,
                               "python_floor_ms": python,
                               "without_pgbench_ms": {"lean": idle_lean, "full": idle_full},
                               "barrier_hold_ms": {k: dist(v) for k, v in holds.items()},
                               "delivery_ms": {k: dist(v) for k, v in delivery.items()},
                               "failed": failed, "ratio_full_to_lean_p50": ratio,
                               "loadavg": {"start": load_at_start, "end": load_at_end}}
        say(f"load average (1/5/15 min) {load_at_start} at start, {load_at_end} at end")
        say(f"lean `markship mark --json` {fmt_dist(lean)}")
        say(f"full `markship mark --json` {fmt_dist(full)}")
        say(f"full / lean at p50: {ratio:.1f}x; barrier held p50 lean "
            f"{dist(holds['lean'])['p50']:.1f} ms, full {dist(holds['full'])['p50']:.1f} ms; "
            f"WAL switches (delivery) p50 lean {dist(delivery['lean'])['p50']:.1f} ms, full "
            f"{dist(delivery['full'])['p50']:.1f} ms")
        say(f"floor: `python -c pass` {fmt_dist(python)}")
        if failed["lean"] or failed["full"]:
            say(f"marks not made: lean {len(failed['lean'])}, full {len(failed['full'])}; "
                f"first: {(failed['lean'] or failed['full'])[0]}")
        self.rows += [
            Row("`markship mark --json`, no agent, lean path, p50", f"{lean['p50']:.0f} ms",
                f"p95 {lean['p95']:.0f} / p99 {lean['p99']:.0f} ms, n={int(lean['n'])}; "
                f"`python -c pass` p50 {python['p50']:.0f} ms, WAL switches p50 "
                f"{dist(delivery['lean'])['p50']:.0f} ms", "< 150 ms", verdict(lean["p50"] < 150)),
            Row("  (info) lean / full without pgbench, p50",
                f"{idle_lean['p50']:.0f} / {idle_full['p50']:.0f} ms",
                f"p95 {idle_lean['p95']:.0f} / {idle_full['p95']:.0f} ms, n={int(idle_lean['n'])}",
                "-", "info"),
            Row("  (info) same, full command line, p50", f"{full['p50']:.0f} ms",
                f"p95 {full['p95']:.0f} / p99 {full['p99']:.0f} ms, n={int(full['n'])}; "
                f"full / lean {ratio:.1f}x", "-", "info"),
        ]

    def commits_total(self) -> int:
        """Committed transactions so far in database postgres, summed over the servers."""
        total = 0
        for server in self.servers:
            with psycopg.connect(server.conninfo(), autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT xact_commit FROM pg_stat_database "
                                   "WHERE datname = 'postgres'").fetchone()
                total += int(row[0]) if row else 0
        return total

    def archive_command_cpu_s(self) -> float:
        """CPU seconds of every archive_command run so far (markship wal-push and its shell),
        summed over the servers: the archiver's cutime + cstime (it waits for each one)."""
        total = 0.0
        for server in self.servers:
            with psycopg.connect(server.conninfo(), autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT pid FROM pg_stat_activity "
                                   "WHERE backend_type = 'archiver'").fetchone()
            if row is not None:
                total += proc_cpu_s(int(row[0]), children=True)
        return total

    def archived_total(self) -> int:
        """WAL files archived so far, summed over the servers (pg_stat_archiver)."""
        total = 0
        for server in self.servers:
            with psycopg.connect(server.conninfo(), autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()
                total += int(row[0]) if row else 0
        return total

    def bench_throughput(self) -> None:
        d = self.duration
        half = max(5, d // 2)
        say(f"== 3. throughput cost of marks every {THROUGHPUT_INTERVAL:g} s (the agent): each "
            f"workload off {half} s; {d} s each of: the agent with delivery stream, the agent "
            f"with delivery switch (old), WAL receivers alone without marks (2PC in that order,"
            f" pgbench in reverse); off {half} s (the off halves average out a linear drift); "
            f"the archive backlog drains between segments; CPU busy = all {os.cpu_count()} "
            "CPUs, from /proc/stat")
        modes = ("stream", "switch")
        kinds = ("off", *modes, "receivers")
        twopc: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        bench: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        agents: dict[str, dict[str, Any]] = {}
        receiver_logs: dict[str, list[dict[str, Any]]] = {}
        ctx = multiprocessing.get_context("fork")
        middle = [("stream", d), ("switch", d), ("receivers", d)]
        plans = {"2pc": [("off", half), *middle, ("off", half)],
                 "pgbench": [("off", half), *reversed(middle), ("off", half)]}
        for kind, plan in plans.items():
            for seg, (mode, secs) in enumerate(plan):
                self.settle()
                agent = (self.start_agent(THROUGHPUT_INTERVAL, f"{kind}-{seg}", delivery=mode)
                         if mode in modes else None)
                if agent is not None:
                    # With delivery stream: wait until the agent's receivers deliver its marks
                    # (after a catch-up on the WAL written since they last ran).
                    self.wait_agent_marked(agent, delivery=mode)
                host = self.start_receivers(ctx) if mode == "receivers" else None
                archived, archive_cpu = self.archived_total(), self.archive_command_cpu_s()
                if kind == "2pc":
                    work = TwoPhaseWorkload(self.servers, f"tp{seg}")
                    self.workloads.append(work)
                    work.start()
                    cpu = cpu_times()
                    work.go()
                    time.sleep(secs)
                    stats = work.finish()
                    self.workloads.remove(work)
                else:
                    procs = self.start_pgbench(secs)
                    cpu = cpu_times()
                    tps = self.finish_pgbench(procs)
                    stats = {"tps": tps, "tps_sum": sum(tps), "seconds": float(secs)}
                stats["cpu_busy"] = cpu_busy_since(cpu)
                stats["archived_per_s"] = (self.archived_total() - archived) / stats["seconds"]
                stats["archive_cpu_share"] = ((self.archive_command_cpu_s() - archive_cpu)
                                              / stats["seconds"] / (os.cpu_count() or 1))
                if agent is not None:
                    agents[f"{kind} {mode}"] = self.stop_agent(agent)
                if host is not None:
                    receiver_logs[kind] = self.stop_receivers(host)
                tail = (f"; CPU busy {stats['cpu_busy']:.0%}; WAL files archived "
                        f"{stats['archived_per_s']:.1f}/s, archive_command CPU "
                        f"{stats['archive_cpu_share']:.0%} of the machine")
                if kind == "2pc":
                    twopc[mode].append(stats)
                    say(f"2PC {mode:<9} {stats['per_s']:.1f} transfers/s ({stats['transfers']} "
                        f"in {stats['seconds']:.1f} s), latency "
                        f"{fmt_dist(stats['latency_ms'], digits=1)}{tail}"
                        + (f"; {stats['error_count']} errors: {stats['errors'][:1]}"
                           if stats["error_count"] else ""))
                else:
                    bench[mode].append(stats)
                    say(f"pgbench {mode:<9} {stats['tps_sum']:.0f} tps summed over "
                        f"{self.n_servers} servers ({', '.join(f'{t:.0f}' for t in tps)}){tail}")
        off_2pc = sum(s["per_s"] for s in twopc["off"]) / len(twopc["off"])
        off_pgb = sum(s["tps_sum"] for s in bench["off"]) / len(bench["off"])
        on_2pc = {m: twopc[m][0]["per_s"] for m in kinds[1:]}
        on_pgb = {m: bench[m][0]["tps_sum"] for m in kinds[1:]}
        r_2pc = {m: on_2pc[m] / off_2pc for m in kinds[1:]}
        r_pgb = {m: on_pgb[m] / off_pgb for m in kinds[1:]}
        errors = sum(s["error_count"] for segs in twopc.values() for s in segs)
        self.results["throughput"] = {
            "mark_interval_s": THROUGHPUT_INTERVAL, "twopc": twopc, "pgbench": bench,
            "twopc_ratio": r_2pc, "pgbench_ratio": r_pgb, "agents": agents,
            "receivers_alone_log": receiver_logs,
            "twopc_workers": TWOPC_WORKERS, "pgbench_clients_per_server": self.clients,
        }
        for label, stats in agents.items():
            say(f"agent during {label}: marks ok {stats['marks_ok']}, skipped "
                f"{stats['marks_skipped']}, failed {stats['marks_failed']}; delivered "
                f"{stats['delivery']}; barrier held {fmt_dist(stats['hold_ms'], digits=1)}; "
                f"delivery {fmt_dist(stats['delivery_ms'])}; agent process CPU "
                f"{stats['cpu_s']:.1f} s in {stats['ran_seconds']:.0f} s")
        lat = {m: twopc[m][0]["latency_ms"] for m in kinds}
        busy = {m: bench[m][0]["cpu_busy"] for m in kinds}
        archived_s = {m: bench[m][0]["archived_per_s"] for m in modes}
        archive_share = {m: bench[m][0]["archive_cpu_share"] for m in modes}
        streamed = {k: f"{v['delivery'].get('stream', 0)} / {v['marks_ok']}"
                    for k, v in agents.items() if k.endswith("stream")}
        self.rows += [
            Row("2PC transfers/s, marks every 1 s (stream) vs none", f"{on_2pc['stream']:.1f}/s",
                f"without {off_2pc:.1f}/s, ratio {r_2pc['stream']:.3f}", "ratio (info)", "info"),
            Row("  (info) same, delivery \"switch\" (old)", f"{on_2pc['switch']:.1f}/s",
                f"ratio {r_2pc['switch']:.3f}", "-", "info"),
            Row("  (info) same, WAL receivers alone, no marks", f"{on_2pc['receivers']:.1f}/s",
                f"ratio {r_2pc['receivers']:.3f}", "-", "info"),
            Row("  (info) 2PC transfer latency p99 stream / switch / off",
                f"{lat['stream']['p99']:.1f} ms",
                f"{lat['switch']['p99']:.1f} ms / {lat['off']['p99']:.1f} ms", "-", "info"),
            Row("pgbench tps, marks every 1 s (stream) vs none", f"{on_pgb['stream']:.0f} tps",
                f"without {off_pgb:.0f} tps, ratio {r_pgb['stream']:.3f}",
                "ratio ≥ 0.97 (goal)", verdict(r_pgb["stream"] >= 0.97)),
            Row("  (info) same, delivery \"switch\" (old)", f"{on_pgb['switch']:.0f} tps",
                f"ratio {r_pgb['switch']:.3f}", "-", "info"),
            Row("  (info) same, WAL receivers alone, no marks", f"{on_pgb['receivers']:.0f} tps",
                f"ratio {r_pgb['receivers']:.3f}", "-", "info"),
            Row("  (info) pgbench: CPU busy off / stream / switch / receivers",
                f"{busy['off']:.0%} / {busy['stream']:.0%} / {busy['switch']:.0%} / "
                f"{busy['receivers']:.0%}",
                f"WAL files archived/s stream {archived_s['stream']:.1f}, switch "
                f"{archived_s['switch']:.1f}; archive_command CPU {archive_share['stream']:.0%} /"
                f" {archive_share['switch']:.0%} of the machine", "-", "info"),
            Row("throughput agent marks by stream / all", ", ".join(streamed.values()),
                "2pc, pgbench; the first marks, before the receivers stream, are switched",
                "all after the first", verdict(all(
                    v["not_stream_after_first_stream"] == 0 and v["delivery"].get("stream")
                    for k, v in agents.items() if k.endswith("stream")))),
            Row("2PC workload errors", str(errors), "-", "0", verdict(errors == 0)),
        ]

    # -- 4. failover -----------------------------------------------------------------------------

    def standby_status(self) -> tuple[list[dict[str, Any]], float]:
        """markship.dr.standby.standby_status through the library (the CLI's process start under
        this load exceeds the 1 s sampling period; it is timed separately)."""
        from dataclasses import asdict

        from markship.dr.standby import standby_status

        config = self.load_config()
        started = time.perf_counter()
        try:
            data = [asdict(s) for s in standby_status(config,
                                                      open_repository(location_of(config.repository)))]
        except MarkshipError:
            data = []
        return data, time.perf_counter() - started

    def bench_failover(self) -> None:
        load_s = max(15, self.duration // 2)
        say(f"== 4. failover: {self.n_servers} DR standbys, agent marking every "
            f"{FAILOVER_INTERVAL:g} s, pgbench + 2PC load for {load_s} s, kill -9 of every "
            "production server, then `markship failover --json` timed")
        self.settle()
        backup = run_timed(self.ms("backup", "--json")).check("markship backup")
        for server in self.servers:
            sb = ScratchServer(f"dr-{server.name}", self.root / f"dr-{server.name}", self.port())
            pg_dir(sb.base_dir)
            pg_dir(sb.socket_dir)
            self.standbys.append(sb)
        self.write_config(FAILOVER_INTERVAL, dr_site=True)
        create = run_timed(self.ms("standby", "create"), timeout=900).check("standby create")
        say(f"fresh backup {backup.seconds:.1f} s; `markship standby create` "
            f"{create.seconds:.1f} s")
        agent = self.start_agent(FAILOVER_INTERVAL, "failover")
        self.wait_agent_marked(agent, delivery="stream")

        # Caught up: every standby sits at a mark at most 1 behind the newest complete one.
        caught: float | None = None
        began = time.monotonic()
        status: list[dict[str, Any]] = []
        while time.monotonic() - began < 90:
            status, _ = self.standby_status()
            if status and all(s["at_mark"] and s["marks_behind"] is not None
                              and s["marks_behind"] <= 1 for s in status):
                caught = time.monotonic() - began
                break
            time.sleep(0.5)
        say("standbys caught up (≤ 1 mark behind) " + (f"after {caught:.1f} s" if caught
                                                         is not None else "NOT within 90 s")
            + ": " + ", ".join(f"{s['server']} {s['marks_behind']}" for s in status))

        procs = self.start_pgbench(load_s + 60)
        work = TwoPhaseWorkload(self.servers, "fo")
        self.workloads.append(work)
        work.start()
        work.go()
        samples: list[dict[str, Any]] = []
        load_began = time.monotonic()
        tick = load_began
        while time.monotonic() - load_began < load_s:
            status, call_s = self.standby_status()
            samples.append({"t": round(time.monotonic() - load_began, 2),
                            "call_s": round(call_s, 3),
                            "marks_behind": {s["server"]: s["marks_behind"] for s in status},
                            "lag_bytes": {s["server"]: s["lag_bytes"] for s in status},
                            "in_recovery": {s["server"]: s["in_recovery"] for s in status}})
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        cli_status = run_timed(self.ms("standby", "status", "--json"), timeout=120)

        # The disaster: every production server dies mid-load.
        work.stop.set()
        killed_at = time.monotonic()
        for server in self.servers:
            server.kill9()
        stats = work.finish()
        self.workloads.remove(work)
        self.finish_pgbench(procs, check=False)
        agent_stats = self.stop_agent(agent)
        say(f"production killed; 2PC workload had made {stats['transfers']} transfers; agent "
            f"marks ok {agent_stats['marks_ok']} (delivered {agent_stats['delivery']}), failed "
            f"{agent_stats['marks_failed']} (after the kill), exit {agent_stats['exit_code']}")

        waited = time.monotonic() - killed_at
        result = run_timed(self.ms("failover", "--json"), timeout=900)
        report: dict[str, Any] = json.loads(result.out) if result.code == 0 else {}
        total = result.seconds
        if result.code != 0:
            say(f"FAILOVER FAILED (exit {result.code}): {(result.err or result.out)[-800:]}")
        checks = self.check_failover(report) if report else {"consistent": False}
        behind = [float(v) for s in samples for v in s["marks_behind"].values()
                  if v is not None]
        worst = [max((v for v in s["marks_behind"].values() if v is not None), default=-1)
                 for s in samples]
        lag_bytes = [float(v) for s in samples for v in s["lag_bytes"].values() if v is not None]
        behind_d = dist(behind)
        phases: dict[str, float] = report.get("phases", {})
        self.results["failover"] = {
            "load_seconds": load_s, "backup_seconds": backup.seconds,
            "standby_create_seconds": create.seconds, "caught_up_after_s": caught,
            "standby_samples": samples, "marks_behind": behind_d,
            "lag_bytes": dist(lag_bytes), "standby_status_call_s":
            dist([s["call_s"] for s in samples]), "agent": agent_stats,
            "cli_standby_status_seconds": cli_status.seconds,
            "twopc_before_kill": stats, "failover_command_seconds": total,
            "failover_exit_code": result.code, "report": report, "checks": checks,
            "kill_to_failover_start_s": waited,
            "stderr": result.err[-2000:],
        }
        say("standby marks_behind per second (worst standby): "
            + " ".join("?" if w < 0 else str(w) for w in worst))
        say(f"marks_behind over all standbys {fmt_dist(behind_d, 'marks', 1)}; lag "
            f"{fmt_dist(dist([b / 1024 / 1024 for b in lag_bytes]), 'MiB', 1)}; "
            f"standby_status() {fmt_dist(dist([s['call_s'] * 1000 for s in samples]))}; one "
            f"`markship standby status --json` under the same load {cli_status.seconds:.2f} s")
        if report:
            split = ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
            say(f"failover command {total:.2f} s (exit {result.code}); report: RTO "
                f"{report['rto_seconds']:.2f} s ({split}); RPO {report['rpo_seconds']:.2f} s; "
                f"mark {report['mark']}; resolutions {len(report.get('resolutions', []))}")
            say(f"after failover: {checks}")
        self.rows += [
            Row(f"failover, {self.n_servers} servers, command start → done", f"{total:.2f} s",
                ", ".join(f"{k} {v:.2f}" for k, v in phases.items()) or "failed",
                "< 30 s (goal)", verdict(result.code == 0 and total < 30)),
            Row("  (info) failover report RTO / RPO",
                f"{report.get('rto_seconds', float('nan')):.2f} s",
                f"RPO {report.get('rpo_seconds', float('nan')):.2f} s", "-", "info"),
            Row("group consistent at the mark after failover",
                "yes" if checks.get("consistent") else "NO",
                f"balances {checks.get('balance_sum')} of {checks.get('expected_sum')}",
                "consistent", verdict(bool(checks.get("consistent")))),
            Row("standby lag under load, marks behind", f"p50 {behind_d['p50']:.0f}",
                f"p95 {behind_d['p95']:.0f}, max {behind_d['max']:.0f} (n={len(behind)})", "-",
                "info"),
        ]

    def check_failover(self, report: dict[str, Any]) -> dict[str, Any]:
        """Every standby promoted at the mark, no prepared transaction left, money conserved,
        every decided transfer on both of its servers, the reference map applied."""
        mark = report["mark"]
        out: dict[str, Any] = {"expected_sum": self.n_servers * ACCOUNTS * START_BALANCE}
        at_mark, promoted, prepared, total = True, True, 0, 0
        seen: dict[str, int] = {}
        for sb in self.standbys:
            at_mark &= stopped_at(sb.data_dir) == f'at restore point "{mark}"'
            promoted &= sb.psql("SELECT pg_is_in_recovery()") == "f"
            prepared += int(sb.psql("SELECT count(*) FROM pg_prepared_xacts"))
            total += int(sb.psql("SELECT sum(balance) FROM accounts"))
            for gid in sb.psql("SELECT gid FROM transfers").split():
                seen[gid] = seen.get(gid, 0) + 1
        decided = set(self.standbys[0].psql("SELECT gid FROM markship.decisions").split())
        both = set(seen) == decided and all(c == 2 for c in seen.values())
        peer = self.servers[1].name
        ref = self.standbys[0].psql(f"SELECT port FROM peers WHERE name = '{peer}'")
        out.update(stopped_at_mark=at_mark, promoted=promoted, prepared_left=prepared,
                   balance_sum=total, transfers_decided=len(decided), transfers_on_both=both,
                   reference_applied=ref == str(self.standbys[1].port))
        out["consistent"] = (at_mark and promoted and prepared == 0
                             and total == out["expected_sum"] and both
                             and out["reference_applied"])
        return out

    # -- 6. the agent's web server: marks with /metrics and / polled vs without [web] ---------

    def bench_web(self) -> None:
        turn = max(10, self.duration // 2)
        say(f"== 6. the agent's web server: the agent at [marks] interval = {WEB_INTERVAL:g} s, "
            f"idle, without [web] and with [web] (default refresh) and a client polling "
            f"/metrics and / every {WEB_POLL * 1000:.0f} ms, in {WEB_TURNS} alternating turns "
            f"of {turn} s each; mark latency = the agent's own total_ms per mark.ok, marks "
            "delivered by stream only")
        self.settle()
        token_file = self.root / "web-token"
        token = secrets.token_hex(24)
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        port = self.port()
        web = (f'\n[web]\nlisten = "127.0.0.1:{port}"\nauth = "token"\n'
               f'token_file = "{token_file}"\n')
        totals: dict[str, list[float]] = {"off": [], "on": []}
        holds: dict[str, list[float]] = {"off": [], "on": []}
        polls: list[float] = []
        poll_codes: dict[str, int] = {}
        snapshots: dict[str, float] = {}  # markship_snapshot_duration_seconds by taken_at
        agents: list[dict[str, Any]] = []
        for number in range(WEB_TURNS):
            for mode in ("off", "on"):
                agent = self.start_agent(WEB_INTERVAL, f"web-{mode}-{number}",
                                         extra=web if mode == "on" else "")
                self.wait_agent_marked(agent, timeout=60, delivery="stream")
                began = datetime.now(UTC)
                stop = threading.Event()
                poller = threading.Thread(target=self._poll_web, daemon=True, args=(
                    f"http://127.0.0.1:{port}", token, stop, polls, poll_codes, snapshots))
                if mode == "on":
                    poller.start()
                time.sleep(turn)
                stop.set()
                if mode == "on":
                    poller.join()
                stats = self.stop_agent(agent)
                agents.append({"mode": mode, **{k: stats[k] for k in (
                    "exit_code", "marks_ok", "marks_skipped", "marks_failed", "cpu_s")}})
                for event in agent_events(agent.log):
                    if (event["event"] == "mark.ok" and event.get("delivery") == "stream"
                            and datetime.fromisoformat(event["time"]) >= began
                            and "total_ms" in event):
                        totals[mode].append(float(event["total_ms"]))
                        holds[mode].append(float(event["hold_ms"]))
        off, on = dist(totals["off"]), dist(totals["on"])
        ratio50 = on["p50"] / off["p50"] if off["p50"] else float("nan")
        ratio99 = on["p99"] / off["p99"] if off["p99"] else float("nan")
        poll = dist(polls)
        taking = dist([v * 1000 for v in snapshots.values()])
        self.results["web"] = {"turn_seconds": turn, "turns": WEB_TURNS,
                               "interval_s": WEB_INTERVAL, "total_ms": {"off": off, "on": on},
                               "hold_ms": {k: dist(v) for k, v in holds.items()},
                               "p50_ratio": ratio50, "p99_ratio": ratio99,
                               "poll_ms": poll, "poll_codes": poll_codes, "agents": agents,
                               "snapshot_ms": taking}
        say(f"mark latency without [web]: {fmt_dist(off, digits=1)}")
        say(f"mark latency with [web] polled: {fmt_dist(on, digits=1)}")
        say(f"ratio on/off: p50 {ratio50:.3f}, p99 {ratio99:.3f}; polls answered "
            f"{poll_codes}, {fmt_dist(poll, digits=1)}; each snapshot took "
            f"{fmt_dist(taking, digits=0)}")
        good = poll_codes and set(poll_codes) == {"200"}
        self.rows += [
            Row("mark latency, [web] polled every 100 ms vs off, p50 ratio", f"{ratio50:.3f}",
                f"on {on['p50']:.1f} ms / off {off['p50']:.1f} ms (n={int(on['n'])}/"
                f"{int(off['n'])})", "≤ 1.05", verdict(ratio50 <= 1.05)),
            Row("mark latency, [web] polled every 100 ms vs off, p99 ratio", f"{ratio99:.3f}",
                f"on {on['p99']:.1f} ms / off {off['p99']:.1f} ms", "≤ 1.05",
                verdict(ratio99 <= 1.05)),
            Row("  (info) /metrics and / answers while polled", f"{sum(poll_codes.values())}",
                f"codes {poll_codes}, p50 {poll['p50']:.1f} ms, p99 {poll['p99']:.1f} ms",
                "all 200", verdict(bool(good))),
        ]

    @staticmethod
    def _poll_web(base: str, token: str, stop: threading.Event, times: list[float],
                  codes: dict[str, int], snapshots: dict[str, float]) -> None:
        """GET /metrics and / every WEB_POLL seconds until `stop` (a scraper and a browser)."""
        while not stop.wait(WEB_POLL):
            for path in ("/metrics", "/"):
                request = urllib.request.Request(base + path,
                                                 headers={"Authorization": f"Bearer {token}"})
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(request, timeout=10) as answer:
                        body = answer.read().decode(errors="replace")
                        code = str(answer.status)
                    if path == "/metrics":
                        found = dict(line.split(" ", 1) for line in body.splitlines()
                                     if line.startswith("markship_snapshot_"))
                        if "markship_snapshot_duration_seconds" in found:
                            age = float(found["markship_snapshot_age_seconds"])
                            taken = f"{time.time() - age:.0f}"  # one key per snapshot
                            snapshots[taken] = float(found["markship_snapshot_duration_seconds"])
                except urllib.error.HTTPError as exc:
                    code = str(exc.code)
                except OSError as exc:
                    code = type(exc).__name__
                times.append((time.perf_counter() - started) * 1000)
                codes[code] = codes.get(code, 0) + 1

    # -- running it all --------------------------------------------------------------------------

    def run(self) -> None:
        self.results["meta"] = {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "page_cache": "warm (cannot be dropped on this machine)",
            "options": {"duration": self.duration, "servers": self.n_servers,
                        "clients": self.clients, "phases": list(self.phases)},
            "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                     "loadavg_at_start": loadavg()},
            "versions": {
                "markship": tool_version([str(MARKSHIP), "--version"]),
                "markship_installed_at": installed_at(),
                "work_tree_head": tool_version(["git", "-C", str(Path(__file__).resolve().parent),
                                                "rev-parse", "--short", "HEAD"]),
                "postgres": tool_version([pg("postgres"), "--version"]),
            },
        }
        say(f"load average (1/5/15 min) at start: {loadavg()} on {os.cpu_count()} CPUs")
        if self.clients < 4:
            say(f"pgbench -c {self.clients} per server, not -c 4: with -c 4 on 3 servers the 2 "
                "CPUs choke (load average ~9, a `markship --version` takes ~3 s instead of "
                "0.3 s) for barely more commits/s; pass --clients 4 to see it")
        self.setup()
        self.results["foreign_activity"] = [{"at": "start", **foreign_activity(self.root)}]
        steps = {"latency": self.bench_latency, "cli": self.bench_cli, "s3": self.bench_s3,
                 "rpo": self.bench_rpo, "throughput": self.bench_throughput,
                 "failover": self.bench_failover, "web": self.bench_web}
        for phase in PHASES:
            if phase in self.phases:
                steps[phase]()
                self.results["foreign_activity"].append({"at": f"after {phase}",
                                                         **foreign_activity(self.root)})

    def summary(self) -> Path:
        print()
        print("=" * 100)
        if "failed" in self.results:
            print(f"INCOMPLETE RUN, it failed: {self.results['failed']}")
        print(f"markship group-mark benchmark summary — {self.n_servers} servers, pgbench scale "
              f"{SCALE}, pgbench -c {self.clients} -j {min(2, self.clients)} per server, "
              f"--duration {self.duration}, {os.cpu_count()} CPUs")
        print(WARM_CACHE)
        versions = self.results["meta"]["versions"]
        print(f"{versions['markship']} (installed {versions['markship_installed_at']}, work tree "
              f"HEAD {versions['work_tree_head']}); {versions['postgres']}")
        report_install_and_load(self.results)
        seen = self.results.get("foreign_activity", [])
        if seen:
            clusters = max(e["postgres_clusters"] for e in seen)
            tools = max(e["markship_or_pytest_processes"] for e in seen)
            print(f"other work seen at phase boundaries: up to {clusters} other PostgreSQL "
                  f"clusters and {tools} markship/pytest processes" +
                  (" — the machine was NOT quiet: compare the ratios, distrust the absolutes"
                   if clusters or tools else " (none)"))
        print("=" * 100)
        print_table(["metric", "measured", "detail", "target", "verdict"],
                    [[r.metric, r.value, r.detail, r.target, r.verdict] for r in self.rows])
        self.results["summary"] = [r.__dict__ for r in self.rows]
        return save_results(self.results, "marks-")

    def cleanup(self) -> None:
        os.chdir("/")
        for work in self.workloads:
            work.stop.set()
            work.go_event.set()
        for host in list(self.receiver_hosts):
            self.stop_receivers(host)
        for agent in self.agents:
            if agent.proc.poll() is None:
                agent.proc.kill()
                agent.proc.wait()
        for proc in self.pgbenches:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stop_servers([*reversed(self.standbys), *reversed(self.servers)])
        if self.s3 is not None:
            self.s3.stop()
        remove_root(getattr(self, "root", None), self.keep)


def agent_events(log: Path) -> list[dict[str, Any]]:
    """The agent's --log-json lines (anything else on stderr is skipped)."""
    events = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "event" in entry:
            events.append(entry)
    return events


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=30,
                        help="seconds per measurement (each latency loop, the 'with marks' "
                             "throughput segment; the RPO phase samples 2x this); default 30")
    parser.add_argument("--servers", type=int, default=3, help="servers in the group (≥ 2)")
    parser.add_argument("--clients", type=int, default=2,
                        help="pgbench -c per server (default 2: -c 4 on 3 servers saturates "
                             "the 2 CPUs here for no more tps; -j is min(2, clients))")
    parser.add_argument("--keep", action="store_true",
                        help="keep the bench directory (servers are stopped anyway)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated subset of {','.join(PHASES)} (default: all)")
    args = parser.parse_args(argv)
    if args.servers < 2:
        parser.error("--servers must be at least 2 (the 2PC workload spans two servers)")
    if args.duration < 5:
        parser.error("--duration must be at least 5")
    if args.clients < 1:
        parser.error("--clients must be at least 1")
    chosen = set(args.phases.split(","))
    if chosen - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(chosen - set(PHASES)))}")
    args.phases = tuple(p for p in PHASES if p in chosen)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root():
        return 2
    if not (PG_BIN / "postgres").exists() or not MARKSHIP.exists():
        print(f"PostgreSQL 15 ({PG_BIN}) or markship ({MARKSHIP}) missing: run ./dev setup",
              file=sys.stderr)
        return 2
    bench = Bench(duration=args.duration, n_servers=args.servers, clients=args.clients,
                  keep=args.keep, phases=args.phases)
    return run_guarded(bench, lambda: "meta" in bench.results)


if __name__ == "__main__":
    sys.exit(main())
