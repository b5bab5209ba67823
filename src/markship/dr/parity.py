"""`markship parity`: does the DR site match production, server by server?

Correctness first (a mismatch here makes recovery or promotion fail, or leaves no room): the
count of standbys, the PostgreSQL major version, settings a standby needs at least as high as
its primary's, free disk against production's data. Then capacity (CPU count, memory): a
smaller host works, but slower — reported as warnings. The correctness rules are dr.standby's
(standby status lists their failures too); this module explains each and adds capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from markship import perserver
from markship.config.model import Config
from markship.dr.standby import (
    HostFacts,
    free_bytes,
    host_facts,
    room_for,
    settings_compared,
    standby_conninfo,
)
from markship.errors import MarkshipError

WHY = {
    "max_connections": "a hot standby refuses to start with fewer than its primary",
    "max_prepared_transactions": "recovery stops when the primary's prepared transactions "
                                 "do not fit",
    "max_locks_per_transaction": "recovery needs room for every lock the primary held",
    "max_worker_processes": "a standby refuses to start with fewer than its primary",
    "max_wal_senders": "a standby refuses to start with fewer than its primary",
}


@dataclass(frozen=True)
class Check:
    server: str
    what: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # capacity, not correctness


@dataclass
class ParityReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok or c.warning for c in self.checks)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def compare(server: str, prod: HostFacts, standby: HostFacts,
            free: int | None) -> list[Check]:
    """The parity rules (dr.standby) as checks, each with its evidence and fix, then the
    capacity warnings."""
    checks = []
    pv, sv = prod.major_version, standby.major_version
    checks.append(Check(server, "major version", pv == sv,
                        f"production {pv}, standby {sv}",
                        "install the same PostgreSQL major version on the DR host"))
    for name, s, p in settings_compared(prod, standby):
        checks.append(Check(server, name, s >= p, f"standby {s}, production {p}"
                            + ("" if s >= p else f": {WHY[name]}"),
                            f"set {name} = {p} (or more) on the standby and restart it"))
    if free is None:
        checks.append(Check(server, "free disk", False, "the standby's data directory is not "
                            "reachable from this host", "run parity on the DR host"))
    else:
        checks.append(Check(server, "free disk", room_for(prod, free),
                            f"{_mib(free)} free for {_mib(prod.data_bytes)} of production data",
                            "give the standby's file system more room than production's "
                            "data"))
    if prod.cpus and standby.cpus:
        checks.append(Check(server, "CPUs", standby.cpus >= prod.cpus,
                            f"standby {standby.cpus}, production {prod.cpus}",
                            "a smaller DR host is slower after failover", warning=True))
    else:
        checks.append(Check(server, "CPUs", True, "unknown (the role cannot read /proc: "
                            "GRANT pg_read_server_files to see it)", warning=True))
    if prod.memory_bytes and standby.memory_bytes:
        checks.append(Check(server, "memory", standby.memory_bytes >= prod.memory_bytes,
                            f"standby {_mib(standby.memory_bytes)}, production "
                            f"{_mib(prod.memory_bytes)}",
                            "a smaller DR host is slower after failover", warning=True))
    return checks


def parity(config: Config) -> ParityReport:
    report = ParityReport()
    standbys = {s.server: s for s in (config.dr_site.standbys if config.dr_site else [])}
    count_ok = all(s.name in standbys for s in config.servers)
    report.checks.append(Check(
        "group", "standby count", count_ok,
        f"{len(standbys)} standby(s) for {len(config.servers)} server(s)"
        + ("" if count_ok else "; no standby for "
           + ", ".join(s.name for s in config.servers if s.name not in standbys)),
        "add a [[dr_site.standby]] for every server"))

    def one(server: str) -> list[Check]:
        section = standbys[server]
        try:
            prod = host_facts(config.server(server).conninfo, server, capacity=True)
        except MarkshipError as exc:
            return [Check(server, "production", False, exc.message,
                          "parity compares with production: run it while production is up")]
        try:
            mine = host_facts(standby_conninfo(config, server), server, capacity=True)
        except MarkshipError as exc:
            return [Check(server, "standby", False, exc.message, "markship standby create")]
        return compare(server, prod, mine, free_bytes(section.data_dir))

    production = {x.name for x in config.servers}
    for checks in perserver.gather({s: partial(one, s) for s in standbys
                                    if s in production}).values():
        report.checks.extend(checks)
    return report
