"""The DR site: standbys built from the repository, fed WAL only up to the newest complete mark."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg

from markship.backup.restore import RestoreResult, Target, restore_server
from markship.config.model import Config, StandbySection
from markship.errors import MarkshipError
from markship.marks.choose import mark_states
from markship.pg import recovery, sql
from markship.repository import restorable
from markship.repository.base import Repository


def standby_conninfo(config: Config, server: str, dbname: str | None = None) -> str:
    """Production's conninfo with the standby's host and port (and optionally dbname)."""
    standby = config.standby(server)
    params = psycopg.conninfo.conninfo_to_dict(config.server(server).conninfo)
    params.pop("hostaddr", None)
    params.update(host=standby.host, port=str(standby.port))
    if dbname:
        params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


def server_settings(standby: StandbySection) -> dict[str, str]:
    return {"listen_addresses": standby.host,
            "unix_socket_directories": str(standby.socket_dir) if standby.socket_dir else ""}


def create_standbys(config: Config, repo: Repository,
                    servers: list[str]) -> dict[str, RestoreResult]:
    """Build and start one standby per server, in parallel. Raises MarkshipError naming the
    servers whose standby could not be built."""

    def build(server: str) -> RestoreResult:
        standby = config.standby(server)
        return restore_server(config, repo, server, standby.data_dir, Target("standby"),
                              start=True, port=standby.port,
                              extra_settings=server_settings(standby), standby=True)

    results: dict[str, RestoreResult] = {}
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(len(servers), 1)) as pool:
        futures = {s: pool.submit(build, s) for s in servers}
        for server, future in futures.items():
            try:
                results[server] = future.result()
            except MarkshipError as exc:
                errors[server] = exc.one_line()
    if errors:
        detail = "; ".join(f"{s}: {e}" for s, e in errors.items())
        raise MarkshipError(f"standby creation failed for {', '.join(errors)} ({detail})")
    return results


@dataclass(frozen=True)
class StandbyStatus:
    server: str
    address: str
    reachable: bool
    error: str | None
    in_recovery: bool | None
    replay_lsn: int | None
    at_mark: str | None
    marks_behind: int | None
    lag_bytes: int | None
    lag_seconds: float | None
    parity: list[str]


PARITY_SETTINGS = ("max_connections", "max_prepared_transactions", "max_locks_per_transaction",
                   "max_worker_processes", "max_wal_senders")


def _settings(conninfo: str, server: str) -> dict[str, str]:
    with sql.connect(conninfo, server, timeout=3) as conn:
        found = sql.settings_named(conn, ["server_version_num", *PARITY_SETTINGS])
        size = sql.data_size_bytes(conn)
    if size is not None:
        found["data_bytes"] = str(size)
    return found


def free_bytes(directory: Path) -> int | None:
    """Free space for the standby's data directory (the DR host's own disk)."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def parity_problems(production: dict[str, str], standby: dict[str, str],
                    free: int | None = None) -> list[str]:
    """Where the standby falls short of production: settings below production's (recovery
    or promotion would fail), and free disk smaller than production's data size (no room to
    take over production's growth after a failover)."""
    problems = []
    data = int(production.get("data_bytes", "0"))
    if free is not None and free < data:
        problems.append(f"free disk {free // 2**20} MiB < production data {data // 2**20} MiB")
    if production.get("server_version_num", "")[:2] != standby.get("server_version_num", "")[:2]:
        problems.append("PostgreSQL major version differs")
    for name in PARITY_SETTINGS:
        if name in production and name in standby and int(standby[name]) < int(production[name]):
            problems.append(f"{name} {standby[name]} < production's {production[name]}")
    return problems


def standby_status(config: Config, repo: Repository) -> list[StandbyStatus]:
    # A standby is at most a few marks behind; the newest 100 are plenty to place it.
    states = mark_states(repo, config, newest=100)
    complete = [s for s in states if s.complete]
    wal = restorable.wal_indexes(repo, [s.name for s in config.servers])

    def one(standby: StandbySection) -> StandbyStatus:
        address = f"{standby.host}:{standby.port}"
        try:
            with sql.connect(standby_conninfo(config, standby.server), standby.server,
                                  timeout=3) as conn:
                here = recovery.position(conn)
            mine = _settings(standby_conninfo(config, standby.server), standby.server)
        except MarkshipError as exc:
            return StandbyStatus(standby.server, address, False, exc.message, None, None, None,
                                 None, None, None, [])
        replayed = here.lsn
        # Marks of this standby's timeline only: LSNs of other timelines do not compare.
        same_tl = [s for s in complete
                   if s.record.points[standby.server].timeline == here.timeline]
        reached = [s for s in same_tl if s.record.points[standby.server].lsn <= replayed]
        at = reached[-1] if reached else None
        behind = len(same_tl) - len(reached)
        newest = wal[standby.server].newest()
        lag_bytes = max(newest.next().start_lsn() - replayed, 0) if newest else None
        try:
            parity = parity_problems(_settings(config.server(standby.server).conninfo,
                                               standby.server), mine,
                                     free_bytes(standby.data_dir))
        except MarkshipError:
            parity = ["production unreachable: parity not checked"]
        return StandbyStatus(standby.server, address, True, None, here.in_recovery, replayed,
                             at.record.name if at else None, behind, lag_bytes,
                             at.age_seconds if at else None, parity)

    standbys = config.dr_site.standbys if config.dr_site else []
    with ThreadPoolExecutor(max_workers=max(len(standbys), 1)) as pool:
        return list(pool.map(one, standbys))
