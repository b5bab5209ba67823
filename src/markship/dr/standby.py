"""The DR site: standbys built from the repository, fed WAL only up to the newest complete mark.

Also their status, and the parity rules a standby must meet against its production server
(`markship parity` in dr.parity reports them in full).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg

from markship import perserver
from markship.backup.basebackup import ProgressFn
from markship.backup.restore import RestoreResult, restore_server
from markship.backup.targets import Target
from markship.config.model import Config, StandbySection
from markship.dr import lag
from markship.errors import MarkshipError
from markship.marks.choose import MarkState, mark_states
from markship.pg import conninfo, recovery, sql
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


def create_standbys(config: Config, repo: Repository, servers: list[str],
                    on_progress: ProgressFn | None = None,
                    homes: dict[str, dict[str, str]] | None = None
                    ) -> dict[str, RestoreResult]:
    """Build and start one standby per server, in parallel (`on_progress`: as
    restore_server's). Each standby's tablespaces go where its `tablespace_map` says, else
    where `homes` (server → tablespace name → directory) says, else to their original
    locations. Raises MarkshipError naming the servers whose standby could not be built."""

    def build(server: str) -> RestoreResult:
        standby = config.standby(server)
        own = standby.tablespaces()
        return restore_server(config, repo, server, standby.data_dir, Target("standby"),
                              start=True, port=standby.port,
                              extra_settings=server_settings(standby), standby=True,
                              on_progress=on_progress,
                              tablespace_map=own or (homes or {}).get(server, {}),
                              partial_map=not own)

    results, failures = perserver.settle({s: partial(build, s) for s in servers},
                                         MarkshipError)
    if failures:
        detail = "; ".join(f"{s}: {e.one_line()}" for s, e in failures.items())
        raise MarkshipError(f"standby creation failed for {', '.join(failures)} ({detail})")
    return results


@dataclass(frozen=True)
class StandbyStatus:
    """One standby as `standby status` shows it.

    `lag_bytes` is how far the newest WAL segment archived lies ahead of its replay position;
    the standby takes whole segments only, so under light load it reads 0 while marks lie in
    WAL not archived yet (streamed, or still in production's pg_wal). What a failover would
    have to do is in the fields after it: `to_mark_bytes` to fetch and replay up to
    `reachable_mark` (the newest complete mark of its timeline the repository holds all WAL
    for, from its position), `to_newest_wal_bytes` up to the newest WAL the repository holds,
    and `failover_seconds_estimate` (to_mark_bytes at REPLAY_ESTIMATE_BYTES_PER_SECOND).
    `marks_behind` counts the complete marks of its timeline it has not replayed; with
    `at_mark` None, that is all of them, and None when there is none either (right after
    standby create, or on a new timeline after failback prepare: no mark yet, not "0
    behind")."""

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
    reachable_mark: str | None = None
    to_mark_bytes: int | None = None
    to_newest_wal_bytes: int | None = None
    failover_seconds_estimate: float | None = None

    @property
    def failover_bytes(self) -> int | None:
        """The WAL a failover would fetch and replay: up to the reachable mark when there is
        one, else the archive lag — what monitoring reads as the standby's lag."""
        return self.to_mark_bytes if self.to_mark_bytes is not None else self.lag_bytes


# Fetching and replaying WAL, as assumed for the estimate: a fixed figure, not a measurement
# of this standby (recovery reports no rate). Each segment is one wal-fetch run; on the 2-core
# test machine a standby fetched and replayed 240 MiB of pgbench WAL from a directory
# repository at 62 MiB/s, so 32 MiB/s errs on the long side.
REPLAY_ESTIMATE_BYTES_PER_SECOND = 32 * 2**20


# Settings a standby needs at least as high as its primary's (recovery or promotion fails
# otherwise). The parity rules below are the one definition of "matches production": standby
# status lists their failures in short, `markship parity` (dr.parity) explains each.
PARITY_SETTINGS = ("max_connections", "max_prepared_transactions", "max_locks_per_transaction",
                   "max_worker_processes", "max_wal_senders")


@dataclass(frozen=True)
class HostFacts:
    """What parity compares of one server: its settings, data size and (when it can read
    them) CPU count and memory."""

    settings: dict[str, str]
    data_bytes: int
    cpus: int | None = None
    memory_bytes: int | None = None

    @property
    def major_version(self) -> str:
        return self.settings.get("server_version_num", "")[:2]


def host_facts(conninfo: str, server: str, capacity: bool = False) -> HostFacts:
    """Settings and data size; with `capacity`, CPU count and memory as the server can read
    them from /proc (needs pg_read_server_files or superuser; None otherwise). Raises
    ServerError when the server cannot be reached."""
    with sql.connect(conninfo, server, timeout=3) as conn:
        settings = sql.settings_named(conn, ["server_version_num", *PARITY_SETTINGS])
        size = sql.data_size_bytes(conn)
        cpus = memory = None
        if capacity:
            try:
                info = sql.host_files(conn)
                if info is not None:
                    cpus = sum(1 for line in info.cpuinfo.splitlines()
                               if line.startswith("processor"))
                    for line in info.meminfo.splitlines():
                        if line.startswith("MemTotal:"):
                            memory = int(line.split()[1]) * 1024
            except psycopg.Error:  # no right to read /proc: capacity stays unknown
                cpus = memory = None
    return HostFacts(settings, size if size is not None else 0, cpus or None, memory)


def free_bytes(directory: Path) -> int | None:
    """Free space for the standby's data directory (the DR host's own disk)."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def settings_compared(production: HostFacts, standby: HostFacts) -> list[tuple[str, int, int]]:
    """(name, standby's value, production's value) of each parity setting both report; the
    standby falls short where its value is the lower."""
    return [(name, int(standby.settings[name]), int(production.settings[name]))
            for name in PARITY_SETTINGS
            if name in production.settings and name in standby.settings]


def room_for(production: HostFacts, free: int) -> bool:
    """Whether `free` bytes hold production's data (its growth after a failover)."""
    return free >= production.data_bytes


def parity_problems(production: HostFacts, standby: HostFacts,
                    free: int | None = None) -> list[str]:
    """Where the standby falls short of production, in short: free disk smaller than
    production's data (`free` None: not checked), another major version, settings below
    production's."""
    problems = []
    if free is not None and not room_for(production, free):
        problems.append(f"free disk {free // 2**20} MiB < production data "
                        f"{production.data_bytes // 2**20} MiB")
    if production.major_version != standby.major_version:
        problems.append("PostgreSQL major version differs")
    for name, mine, theirs in settings_compared(production, standby):
        if mine < theirs:
            problems.append(f"{name} {mine} < production's {theirs}")
    return problems


def standby_status(config: Config, repo: Repository) -> list[StandbyStatus]:
    """Each configured standby: where it is, the marks it has not replayed and what a failover
    would have to fetch and replay. A standby that cannot be reached is reported, not raised."""
    # A standby is normally a few marks behind: the newest 100 place it. One that reached none
    # of them is counted against every mark (read only then).
    states = mark_states(repo, config, newest=100)
    wal = restorable.wal_indexes(repo, [s.name for s in config.servers])
    every: list[list[MarkState]] = []
    reading = threading.Lock()  # standbys are asked in parallel: every mark is read once

    def complete_marks(server: str, timeline: int, replayed: int) -> list[MarkState]:
        found = [s for s in states if s.complete]
        if not any(s.record.points[server].lsn <= replayed for s in found
                   if server in s.record.points) and len(states) >= 100:
            with reading:
                if not every:
                    every.append(mark_states(repo, config))
            found = [s for s in every[0] if s.complete]
        # Marks of this standby's timeline only: LSNs of other timelines do not compare.
        return [s for s in found if server in s.record.points
                and s.record.points[server].timeline == timeline]

    def one(standby: StandbySection) -> StandbyStatus:
        address = f"{standby.host}:{standby.port}"
        try:
            with sql.connect(standby_conninfo(config, standby.server), standby.server,
                                  timeout=3) as conn:
                here = recovery.position(conn)
            mine = host_facts(standby_conninfo(config, standby.server), standby.server)
        except MarkshipError as exc:
            return StandbyStatus(standby.server, address, False, exc.message, None, None, None,
                                 None, None, None, [])
        replayed = here.lsn or 0  # none replayed yet: behind every mark
        same_tl = complete_marks(standby.server, here.timeline, replayed)
        reached = [s for s in same_tl if s.record.points[standby.server].lsn <= replayed]
        at = reached[-1] if reached else None
        behind = len(same_tl) - len(reached) if same_tl else None
        index = wal[standby.server]
        newest = index.newest()
        lag_bytes = max(newest.next().start_lsn() - replayed, 0) if newest else None
        ahead = lag.ahead(index, here.timeline, replayed,
                          [s.record.points[standby.server].lsn for s in same_tl])
        target = same_tl[ahead.mark_index] if ahead.mark_index is not None else None
        try:
            parity = parity_problems(host_facts(config.server(standby.server).conninfo,
                                                standby.server), mine,
                                     free_bytes(standby.data_dir))
        except MarkshipError:
            where = conninfo.address(config.server(standby.server).conninfo)
            parity = [f"production ({where}) unreachable: parity not checked"]
        return StandbyStatus(standby.server, address, True, None, here.in_recovery, replayed,
                             at.record.name if at else None, behind,
                             lag_bytes, at.age_seconds if at else None, parity,
                             reachable_mark=target.record.name if target else None,
                             to_mark_bytes=ahead.to_mark_bytes,
                             to_newest_wal_bytes=ahead.to_newest_bytes,
                             failover_seconds_estimate=None if ahead.to_mark_bytes is None
                             else ahead.to_mark_bytes / REPLAY_ESTIMATE_BYTES_PER_SECOND)

    standbys = config.dr_site.standbys if config.dr_site else []
    return list(perserver.gather({sb.server: partial(one, sb) for sb in standbys}).values())
