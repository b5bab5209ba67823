"""After a failover: rebuild the old site as standbys of the new primaries.

`markship failover` already made the promoted servers archive into the repository and wrote
the role-swapped config (the DR site is production in it; the old site is its `[dr_site]`, the
site to rebuild). `markship failback prepare`, run with that config, takes a fresh backup set of
the new primaries and builds a standby at each old production data directory, its tablespaces
back where the old primary had them (unless the standby's `tablespace_map` says otherwise);
from then on
`markship failover` with the same config switches the roles back, exactly like the first one.

A failover recorded before failovers wrote the config (or whose promoted servers do not
archive, e.g. the repository was unreachable then) is made good here: `--new-config PATH`
writes the role-swapped config from the old one, and archiving is turned on where it is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from markship.backup.basebackup import run_backup
from markship.backup.targets import complete_backups
from markship.config.model import Config
from markship.dr import history, sites
from markship.dr.standby import create_standbys
from markship.errors import MarkshipError
from markship.pg import sql as postgres
from markship.pg.commands import archive_command, archive_command_problem, markship_command
from markship.pg.conninfo import address
from markship.pg.datadir import DataDir, postmaster_status
from markship.repository.base import Repository
from markship.wal.push import push as push_wal


@dataclass
class FailbackReport:
    config: str
    archiving_enabled: list[str] = field(default_factory=list)
    backup_set: str = ""
    standbys: dict[str, str] = field(default_factory=dict)


def _last_failover(repo: Repository) -> history.FailoverRecord:
    found = history.failovers(repo)
    if not found:
        raise MarkshipError("no failover recorded in the repository",
                            "failback prepare follows a markship failover")
    if found[-1].status != "done":
        raise MarkshipError(f"failover {found[-1].id} did not finish",
                            "run markship failover again to finish it first")
    return found[-1]


def ensure_archiving(config: Config) -> list[str]:
    """Each server archives with this config: where it does not, archive_mode and
    archive_command are set and the server restarted. Returns the servers changed."""
    assert config.source is not None
    changed = []
    for server in config.servers:
        command = archive_command(markship_command(), config.source, server.name)
        with postgres.connect(server.conninfo, server.name) as conn:
            if postgres.in_recovery(conn):
                raise MarkshipError(f"{server.name} at {address(server.conninfo)} is still in "
                                    "recovery", "run markship failover first")
            facts = postgres.facts(conn)
            if facts.archive_mode in ("on", "always") and archive_command_problem(
                    facts.archive_command, server.name, config.source) is None:
                continue
            postgres.set_archiving(conn, command)
        if server.data_dir is None or postmaster_status(server.data_dir) is None:
            raise MarkshipError(f"{server.name}'s data directory {server.data_dir} is not "
                                "running here", "run failback prepare on the DR host")
        problem = DataDir.at(server.data_dir, server.bin_dir).restart()
        if problem is not None:
            raise MarkshipError(f"restart of {server.name} failed: {problem}")
        changed.append(server.name)
    return changed


def push_histories(repo: Repository, config: Config) -> None:
    """The timeline history files made at promotion (archived then, unless archiving was off:
    pushing one again with the same content is a no-op)."""
    for server in config.servers:
        assert server.data_dir is not None
        for history_file in sorted((server.data_dir / "pg_wal").glob("*.history")):
            push_wal(repo, server.name, str(history_file))


def _tablespace_homes(repo: Repository, config: Config,
                      record: history.FailoverRecord) -> dict[str, dict[str, str]]:
    """server → tablespace name → where the old site kept it: from the server's newest
    backup taken before the failover (its primary then ran there). A standby whose config
    has a `tablespace_map` of its own is left to it."""
    homes: dict[str, dict[str, str]] = {}
    for standby in config.dr_site.standbys if config.dr_site else []:
        if standby.tablespace_map:
            continue
        before = [b for b in complete_backups(repo, standby.server)
                  if b.finished_at < record.started_at]
        if before and before[0].tablespaces:
            homes[standby.server] = {space.name: space.location
                                     for space in before[0].tablespaces.values()}
    return homes


def prepare(config: Config, repo: Repository, new_path: Path | None = None) -> FailbackReport:
    """`config`: the role-swapped config the failover wrote; or, with `new_path`, the config
    from before the failover, from which the role-swapped one is written there first."""
    record = _last_failover(repo)
    if new_path is not None:
        if new_path.exists():
            raise MarkshipError(f"{new_path} already exists", "choose a new file for --new-config")
        config, _written = sites.write_generation(config, new_path)
    elif sites.superseded(config, record):
        raise MarkshipError(
            f"this config describes the roles before failover {record.id} (site "
            f"{config.site.name} as production)",
            f"run it with the config that failover wrote: markship --config "
            f"{record.new_config or 'PATH'} failback prepare")
    for standby in config.dr_site.standbys if config.dr_site else []:
        if standby.data_dir.exists() and any(standby.data_dir.iterdir()):
            raise MarkshipError(f"old site directory {standby.data_dir} is not empty",
                                "move it away (it holds the old timeline) and retry")
    homes = _tablespace_homes(repo, config, record)
    for server, spaces in homes.items():
        for name, location in spaces.items():
            where = Path(location)
            if where.exists() and (not where.is_dir() or any(where.iterdir())):
                raise MarkshipError(f"old site tablespace directory {where} (tablespace "
                                    f"{name} of {server}) is not empty",
                                    "move it away (it holds the old timeline) and retry")
    assert config.source is not None
    report = FailbackReport(config=str(config.source))
    report.archiving_enabled = ensure_archiving(config)
    push_histories(repo, config)
    result = run_backup(config, repo, list(config.servers))
    report.backup_set = result.record.id
    built = create_standbys(config, repo, [s.name for s in config.servers], homes=homes)
    for name in built:
        sb = config.standby(name)
        report.standbys[name] = f"{sb.host}:{sb.port} in {sb.data_dir}"
    return report
