"""After a failover: protect the new primaries and rebuild the old site as their standbys.

`markship failback prepare --new-config PATH` writes the next generation of the config (the
promoted DR servers become the group's servers, the old production hosts become the DR site),
turns archiving on for the new primaries (same repository, same server names: their new
timeline's WAL and history files sit beside the old ones), takes a fresh backup set of them, and
builds a standby at each old production data directory. From then on `markship --config PATH
failover` switches the roles back, exactly like the first failover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from markship.backup.basebackup import run_backup
from markship.config.model import (
    Config,
    DrSiteSection,
    ServerSection,
    StandbySection,
    parse,
    to_toml,
)
from markship.dr.failover import FailoverRecord
from markship.dr.standby import create_standbys, standby_conninfo
from markship.errors import MarkshipError
from markship.pg import sql as postgres
from markship.pg.commands import archive_command, markship_command
from markship.pg.conninfo import without_secrets
from markship.pg.datadir import DataDir, postmaster_status
from markship.privatefile import write_private
from markship.repository import layout, records
from markship.repository.base import Repository
from markship.wal.push import push as push_wal


@dataclass
class FailbackReport:
    new_config: str
    backup_set: str = ""
    standbys: dict[str, str] = field(default_factory=dict)


def next_generation(config: Config, new_path: Path) -> Config:
    """The config with roles swapped: DR standbys as servers, old servers as the DR site."""
    if config.dr_site is None:
        raise MarkshipError("no [dr_site] in the config", "failback needs a failed-over group")
    servers, standbys = [], []
    for server in config.servers:
        standby = config.standby(server.name)
        if server.data_dir is None:
            raise MarkshipError(f"server {server.name} has no data_dir in the config",
                                "set data_dir: the old site's standby is rebuilt there")
        old = psycopg.conninfo.conninfo_to_dict(server.conninfo)
        servers.append(ServerSection(name=server.name,
                                     conninfo=standby_conninfo(config, server.name),
                                     data_dir=standby.data_dir, bin_dir=server.bin_dir))
        standbys.append(StandbySection(server=server.name, data_dir=server.data_dir,
                                       host=str(old.get("host") or "127.0.0.1"),
                                       port=int(str(old.get("port") or 5432))))
    swapped = config.model_copy(update={
        "servers": servers,
        "dr_site": DrSiteSection(name=f"{config.dr_site.name}-back", standbys=standbys)})
    # Validate the new generation exactly as a file read from disk would be.
    import tomllib

    return parse(tomllib.loads(to_toml(swapped)), new_path)


def _last_failover_done(repo: Repository) -> None:
    names = repo.children(layout.FAILOVERS)
    if not names:
        raise MarkshipError("no failover recorded in the repository",
                            "failback prepare follows a markship failover")
    record = records.read_record(repo, layout.FAILOVERS + names[-1], FailoverRecord)
    if record.status != "done":
        raise MarkshipError(f"failover {record.id} did not finish",
                            "run markship failover again to finish it first")


def enable_archiving(old: Config, new: Config) -> None:
    """archive_command → markship with the new config, then restart each new primary."""
    assert new.source is not None
    for server in new.servers:
        command = archive_command(markship_command(), new.source, server.name)
        with postgres.connect(server.conninfo, server.name) as conn:
            if postgres.in_recovery(conn):
                raise MarkshipError(f"{server.name} at {without_secrets(server.conninfo)} is "
                                    "still in recovery",
                                    "run markship failover first")
            postgres.set_archiving(conn, command)
        standby = old.standby(server.name)
        if postmaster_status(standby.data_dir) is None:
            raise MarkshipError(f"{server.name}'s data directory {standby.data_dir} is not "
                                "running here", "run failback prepare on the DR host")
        problem = DataDir.at(standby.data_dir, old.server(standby.server).bin_dir).restart()
        if problem is not None:
            raise MarkshipError(f"restart of {server.name} failed: {problem}")


def push_histories(repo: Repository, new: Config) -> None:
    """The timeline history files made at promotion, while archiving was off."""
    for server in new.servers:
        assert server.data_dir is not None
        for history in sorted((server.data_dir / "pg_wal").glob("*.history")):
            push_wal(repo, server.name, str(history))


def prepare(config: Config, repo: Repository, new_path: Path) -> FailbackReport:
    if new_path.exists():
        raise MarkshipError(f"{new_path} already exists", "choose a new file for --new-config")
    _last_failover_done(repo)
    new = next_generation(config, new_path)
    for standby in new.dr_site.standbys if new.dr_site else []:
        if standby.data_dir.exists() and any(standby.data_dir.iterdir()):
            raise MarkshipError(f"old site directory {standby.data_dir} is not empty",
                                "move it away (it holds the old timeline) and retry")
    # It carries the servers' conninfo, passwords included: 0600, like the client files.
    write_private(new_path, to_toml(new))
    report = FailbackReport(new_config=str(new_path))
    enable_archiving(config, new)
    push_histories(repo, new)
    result = run_backup(new, repo, list(new.servers))
    report.backup_set = result.record.id
    built = create_standbys(new, repo, [s.name for s in new.servers])
    for name in built:
        sb = new.standby(name)
        report.standbys[name] = f"{sb.host}:{sb.port} in {sb.data_dir}"
    return report
