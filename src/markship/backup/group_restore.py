"""Restore the whole group to one mark from backups alone (no standbys needed); a group
restored paused at the mark is promoted together and settled (`resume_group`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from markship import perserver
from markship.backup.basebackup import ProgressFn
from markship.backup.paused import PausedResult, resume
from markship.backup.restore import RestoreResult, restore_server
from markship.backup.targets import Target, complete_backups
from markship.config.model import Config
from markship.config.tablespacemap import EVERY
from markship.errors import MarkshipError, RestoreError
from markship.marks.choose import choose_mark
from markship.marks.resolve import Resolution, resolve_in_doubt
from markship.pg.conninfo import parse, with_params
from markship.pg.datadir import stop_reason, stopped_at
from markship.pg.lsn import format_lsn
from markship.repository.base import Repository


@dataclass
class GroupRestoreReport:
    mark: str
    servers: dict[str, dict[str, str]] = field(default_factory=dict)  # name → dir, port, LSN
    resolutions: list[Resolution] = field(default_factory=list)
    seconds: float = 0.0
    action: str = "promote"  # what the servers did at the mark: promote, pause, shutdown


def _check_map_names(repo: Repository, config: Config, mapping: dict[str, str]) -> None:
    """Refuse a --tablespace-map entry that names no tablespace (by name or original
    location) of any server's backups: each server's restore skips entries it lacks, so a
    typo would otherwise put that tablespace back at its original location unnoticed."""
    known: set[str] = set()
    for server in config.servers:
        for backup in complete_backups(repo, server.name):
            known.update(t for space in backup.tablespaces.values()
                         for t in (space.name, space.location))
    unknown = sorted(set(mapping) - known - {EVERY})
    if unknown:
        raise RestoreError(f"--tablespace-map {unknown[0]!r} names no tablespace of any "
                           "server's backups",
                           "give a tablespace's name or its original location "
                           "(markship list --json shows them)")


def restore_group(config: Config, repo: Repository, mark_name: str | None, dir_template: str,
                  port_base: int, host: str = "127.0.0.1",
                  on_progress: ProgressFn | None = None,
                  action: str = "promote",
                  tablespace_map: dict[str, str] | None = None) -> GroupRestoreReport:
    """Every server restored to the same complete mark, started, promoted, and its prepared
    transactions settled from the decision table (`on_progress`: as restore_server's, per
    server). With `action` "pause" every server is left paused, read-only, at the mark and
    nothing is settled (resume_group does it); with "shutdown" every server stops there.
    `tablespace_map`: as restore_server's, its NEW directories with `{server}`; an entry
    applies to the servers whose backup has that tablespace. Raises RestoreError naming
    failed servers."""
    import time

    if "{server}" not in dir_template:
        raise RestoreError(f"--target-dir {dir_template!r} has no {{server}} placeholder",
                           "use e.g. /srv/restore/{server}")
    began = time.monotonic()
    mark = choose_mark(config, repo, mark_name).record
    if tablespace_map:
        _check_map_names(repo, config, tablespace_map)
    ports = {s.name: port_base + i for i, s in enumerate(config.servers)}
    dirs = {s.name: Path(dir_template.format(server=s.name)) for s in config.servers}

    def one(server: str) -> RestoreResult:
        return restore_server(config, repo, server, dirs[server],
                              Target("name", name=mark.name, mark=mark, action=action),
                              start=True,
                              port=ports[server],
                              extra_settings={"listen_addresses": host,
                                              "unix_socket_directories": str(dirs[server])},
                              on_progress=on_progress, tablespace_map=tablespace_map,
                              partial_map=True)

    _, failures = perserver.settle({s.name: partial(one, s.name) for s in config.servers},
                                   MarkshipError)
    if failures:
        detail = "; ".join(f"{n}: {e.one_line()}" for n, e in failures.items())
        raise RestoreError(f"group restore to {mark.name} failed ({detail})")
    at_mark = f'at restore point "{mark.name}"'
    for name, directory in dirs.items():
        where = stopped_at(directory) if action == "promote" else stop_reason(directory)
        if where is None or not where.startswith(at_mark):
            raise RestoreError(f"{name} stopped {where or 'nowhere'}, not at {mark.name}")
    participants = {}
    for server in config.servers:
        params = parse(server.conninfo)
        params.pop("hostaddr", None)
        params.update(host=host, port=str(ports[server.name]))
        participants[server.name] = with_params("", **params)
    report = GroupRestoreReport(mark=mark.name, action=action)
    if action == "promote":
        report.resolutions = resolve_in_doubt(participants, config.barrier_server.name)
    for name in dirs:
        report.servers[name] = {"data_dir": str(dirs[name]), "port": str(ports[name]),
                                "mark_lsn": format_lsn(mark.points[name].lsn),
                                "conninfo": participants[name]}
    report.seconds = time.monotonic() - began
    return report


def resume_group(config: Config, dir_template: str) -> GroupRestoreReport:
    """Promote every server of a group restored paused (`restore_group(action="pause")`)
    and settle its prepared transactions, as restore_group does after promotion. Servers
    promoted already (by an earlier run that failed on another server) count as done, so
    the same command can be run again. Raises RestoreError naming the servers that could not
    be promoted."""
    import time

    if "{server}" not in dir_template:
        raise RestoreError(f"--target-dir {dir_template!r} has no {{server}} placeholder",
                           "use e.g. /srv/restore/{server}")
    began = time.monotonic()
    dirs = {s.name: Path(dir_template.format(server=s.name)) for s in config.servers}
    done, failures = perserver.settle(
        {name: partial(resume, config, directory, again=True)
         for name, directory in dirs.items()}, MarkshipError)
    if failures:
        detail = "; ".join(f"{n}: {e.one_line()}" for n, e in failures.items())
        raise RestoreError(f"group resume failed ({detail})")
    results: dict[str, PausedResult] = done
    marks = {r.target.removeprefix("restore point ") for r in results.values()}
    report = GroupRestoreReport(mark=", ".join(sorted(marks)), action="resumed")
    report.resolutions = resolve_in_doubt({n: r.conninfo for n, r in results.items()},
                                          config.barrier_server.name)
    for name, result in results.items():
        report.servers[name] = {"data_dir": str(result.target_dir),
                                "mark_lsn": result.lsn or "",
                                "port": "" if result.port is None else str(result.port),
                                "conninfo": result.conninfo}
    report.seconds = time.monotonic() - began
    return report
