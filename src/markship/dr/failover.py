"""Fail the whole group over to the DR site, at one mark.

1. choose the newest mark complete on every server (or the named one);
2. refuse while a production server still answers (split brain), unless forced;
3. bring every standby exactly to that mark and promote it; verify where each stopped;
4. settle prepared transactions the same way everywhere (the decision table);
5. apply the reference map, write client connection files, run hooks;
6. record and report: mark, LSN per server, RTO, RPO and the WAL discarded (dr.loss).

A failover interrupted half-way is resumed by running the command again: the record of the
unfinished failover fixes the mark, and standbys already promoted at it are left as they are.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path

import psycopg

from markship.config.model import Config, StandbySection
from markship.dr import history, sites
from markship.dr.history import FailoverRecord
from markship.dr.loss import UNARCHIVED_NOTE, Loss, discarded
from markship.dr.protect import ARCHIVE_WAIT, Archiving, check_archiving
from markship.dr.standby import standby_conninfo
from markship.errors import MarkshipError, first_line
from markship.marks.choose import choose_mark
from markship.marks.resolve import Resolution, resolve_in_doubt
from markship.perserver import each, gather
from markship.pg import recovery
from markship.pg import sql as postgres
from markship.pg.commands import archive_command, fetch_command, markship_command
from markship.pg.conninfo import place, scrub, secrets_of
from markship.pg.datadir import (
    DataDir,
    ask_for_recovery,
    postmaster_status,
    recovery_end,
    stopped_at,
    stopped_in_archive_recovery,
    write_settings,
)
from markship.pg.lsn import Segment, format_lsn
from markship.privatefile import write_private
from markship.repository import catalog, layout, records, restorable
from markship.repository.base import Repository
from markship.repository.catalog import GapRecord, MarkRecord
from markship.timefmt import exact_times, show, utcnow

PROMOTION_WAIT = 60.0  # seconds a standby found mid-promotion gets to write its history file


@dataclass
class Report:
    mark: str
    mark_time: datetime
    dry_run: bool
    resumed: bool = False
    points: dict[str, str] = field(default_factory=dict)
    # Per server, the WAL the repository holds after the mark, which the failover discards.
    lost: dict[str, Loss] = field(default_factory=dict)
    resolutions: list[Resolution] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    client_files: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    rto_seconds: float = 0.0
    # What was lost in time: from the mark to the newest WAL or mark the repository holds
    # after it, on any server (the largest Loss.lost_seconds). Production may have run longer.
    rpo_seconds: float = 0.0
    # After the promotion: the site now production, the one to rebuild, the role-swapped
    # config and whether each new primary archives into the repository.
    site: str = ""
    rebuild_site: str = ""
    new_config: str = ""
    archiving: list[Archiving] = field(default_factory=list)

    @property
    def protected(self) -> bool:
        return bool(self.archiving) and all(a.ok for a in self.archiving)
    notes: list[str] = field(default_factory=list)


def production_answering(config: Config) -> dict[str, str]:
    """The production servers that accept a connection → where they answered (`host:port`, or
    the socket file, as libpq connected: no secret)."""
    def where(conninfo: str, name: str) -> str | None:
        try:
            with postgres.connect(conninfo, name, timeout=2) as conn:
                return place(conn.info.host, conn.info.port)
        except MarkshipError:
            return None

    answers = gather({s.name: partial(where, s.conninfo, s.name) for s in config.servers})
    return {name: at for name, at in answers.items() if at is not None}


def promote_to_mark(config: Config, standby: StandbySection, mark: MarkRecord,
                    archive: str | None = None, wait_seconds: float = 600) -> str:
    """Restart a standby with the mark as recovery target; it stops there and promotes.
    `archive`: the archive_command it archives with from its promotion on (its new timeline's
    WAL, the history file and the old timeline's last partial segment).

    The standby never received the segment holding the mark (see wal.fetch.standby_ceiling), so it
    has not replayed past it. Returns what it did ('promoted' or 'already promoted').
    """
    data_dir = standby.data_dir
    wanted = f'at restore point "{mark.name}"'
    signals = (data_dir / "standby.signal").exists() or (data_dir / "recovery.signal").exists()
    if not signals and stopped_at(data_dir) is None and postmaster_status(data_dir) is not None:
        # Restarted by a failover that was interrupted, and promoting at this moment:
        # PostgreSQL removed the signal file and is about to write the history file (it asks
        # the archive for the newest timeline first). Its end decides what follows.
        deadline = time.monotonic() + PROMOTION_WAIT
        while stopped_at(data_dir) is None and postmaster_status(data_dir) is not None and \
                time.monotonic() < deadline:
            time.sleep(0.1)
    if not signals and stopped_at(data_dir) != wanted and stopped_in_archive_recovery(data_dir):
        # PostgreSQL removes the signal files just before it writes the new timeline's history
        # file: stopped in between (a failover killed while a standby promoted), the directory
        # never left recovery. Started as it is it would come up as a primary past the mark.
        ask_for_recovery(data_dir)
        signals = True
    if not signals:
        if stopped_at(data_dir) == wanted:
            if postmaster_status(data_dir) is None:
                _directory(config, standby).start_and_wait(wait_seconds)
            return "already promoted"
        raise MarkshipError(f"standby of {standby.server} in {data_dir} was promoted elsewhere "
                            f"({stopped_at(data_dir) or 'unknown point'}), not at {mark.name}",
                            "rebuild it with markship standby create, or restore the group "
                            "from backups")
    directory = _directory(config, standby)
    if postmaster_status(data_dir) is not None:
        directory.stop()
    settings = {
        "restore_command": fetch_command(config, standby.server),
        "recovery_target_name": mark.name,
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
    }
    if archive is not None:
        # Not during recovery (archive_mode = on archives nothing restored), from the
        # promotion on: the group is protected again from its first new segment.
        settings.update(archive_mode="on", archive_command=archive)
    write_settings(data_dir, settings,
                   f"markship failover {show(utcnow())}: stop at mark {mark.name} and promote")
    directory.start_and_wait(wait_seconds)
    end = recovery_end(data_dir)
    if end is None or end.reason != wanted:
        raise MarkshipError(f"standby of {standby.server} stopped "
                            f"{end.reason if end else 'nowhere'}, not at mark {mark.name}",
                            "inspect its log and rebuild it")
    point = mark.points[standby.server].lsn
    if end.lsn < point:  # a restore point of that name, but not the mark's
        raise MarkshipError(f"standby of {standby.server} stopped at {format_lsn(end.lsn)}, "
                            f"before mark {mark.name} ({format_lsn(point)})",
                            "inspect its log and rebuild it")
    return "promoted"


def refuse_standbys_past(config: Config, mark: MarkRecord,
                         gaps: Sequence[GapRecord] = ()) -> None:
    """A standby that already replayed past the mark can never stop at it (PostgreSQL would
    fail or wait forever): refuse before touching anything. Only an older --mark can cause it.
    Neither can a standby that stands before WAL dropped by pg_wal protection (`gaps`) which
    lies between it and the mark: refused too."""
    assert config.dr_site is not None
    past = []
    for standby in config.dr_site.standbys:
        if not (standby.data_dir / "standby.signal").exists():
            continue  # promoted already (a resumed failover): checked by promote_to_mark
        point = mark.points[standby.server]
        try:
            with postgres.connect(standby_conninfo(config, standby.server), standby.server,
                                  timeout=3) as conn:
                replayed = recovery.position(conn)
        except MarkshipError:
            continue  # not running: its restart will tell
        if replayed and replayed.lsn is not None and replayed.timeline == point.timeline and \
                replayed.lsn > point.lsn:
            past.append(standby.server)
        if replayed and replayed.lsn is not None:
            for gap in gaps:
                at = Segment(replayed.timeline, replayed.lsn // gap.segment_size)
                if gap.server == standby.server and at <= gap.last and \
                        gap.last < Segment(point.timeline, point.lsn // gap.segment_size):
                    raise MarkshipError(
                        f"the standby of {standby.server} cannot reach mark {mark.name}: it "
                        f"stands before {restorable.gap_text(gap)}",
                        "recreate the standbys from the newest full backup (markship standby "
                        f"create), or restore the group: markship restore --group --mark "
                        f"{mark.name}")
    if past:
        raise MarkshipError(
            f"the standby of {', '.join(past)} already replayed past mark {mark.name}",
            f"fail over to a newer mark, or rebuild the group at this mark from backups: "
            f"markship restore --group --mark {mark.name}",
        )


def _directory(config: Config, standby: StandbySection) -> DataDir:
    return DataDir.at(standby.data_dir, config.server(standby.server).bin_dir)


def _addresses(config: Config) -> dict[str, dict[str, str]]:
    return {s.server: {"host": s.host, "port": str(s.port),
                       "conninfo": standby_conninfo(config, s.server)}
            for s in (config.dr_site.standbys if config.dr_site else [])}


def apply_references(config: Config) -> list[str]:
    """Run the [[failover.sql]] statements; `{orders.host}`-style fields are filled in."""
    from types import SimpleNamespace

    addresses = _addresses(config)
    fields = {name: SimpleNamespace(**v) for name, v in addresses.items()}
    # What is reported (output, the repository's failover record) must not carry a password
    # filled in through `{server.conninfo}`, nor PostgreSQL's quote of one in an error.
    secrets = secrets_of(*(a["conninfo"] for a in addresses.values()))
    done = []
    for item in config.failover.sql:
        statement = item.statement.format_map(fields)
        conninfo = standby_conninfo(config, item.server, item.database)
        with postgres.connect(conninfo, item.server) as conn:
            try:
                postgres.run_statement(conn, statement)
            except psycopg.Error as exc:
                reason = scrub(first_line(exc), secrets)
                raise MarkshipError(f"failover.sql on {item.server}/{item.database} failed: "
                                    f"{reason}",
                                    "fix the statement and run markship failover again") from None
        done.append(f"{item.server}/{item.database}: {scrub(statement, secrets)}")
    return done


def write_client_files(config: Config) -> list[str]:
    """The new connection settings for application hosts: pg_service, env and/or JSON."""
    addresses = _addresses(config)
    clients = config.failover.clients
    written = []
    if clients.pg_service:
        sections = []
        for server, a in addresses.items():
            params = psycopg.conninfo.conninfo_to_dict(a["conninfo"])
            body = "\n".join(f"{k}={v}" for k, v in params.items())
            sections.append(f"[{config.group.name}-{server}]\n{body}\n")
        write_private(clients.pg_service, "\n".join(sections))
        written.append(str(clients.pg_service))
    if clients.env:
        lines = [f"{k}={shlex.quote(v)}" for k, v in hook_environment(config).items()]
        write_private(clients.env, "\n".join(lines) + "\n")
        written.append(str(clients.env))
    if clients.json_file:
        write_private(clients.json_file, json.dumps(addresses, indent=2, sort_keys=True) + "\n")
        written.append(str(clients.json_file))
    return written


def hook_environment(config: Config) -> dict[str, str]:
    env = {"MARKSHIP_GROUP": config.group.name}
    for server, a in _addresses(config).items():
        key = server.upper().replace("-", "_")
        env[f"MARKSHIP_{key}_HOST"] = a["host"]
        env[f"MARKSHIP_{key}_PORT"] = a["port"]
        env[f"MARKSHIP_{key}_DSN"] = a["conninfo"]
    return env


def run_hooks(config: Config, mark: str) -> list[str]:
    env = {**os.environ, **hook_environment(config), "MARKSHIP_MARK": mark}
    results = []
    for hook in config.failover.hooks:
        try:
            proc = subprocess.run(hook.command, env=env, capture_output=True, text=True,
                                  timeout=hook.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MarkshipError(f"failover hook {hook.command[0]} failed: {exc}",
                                "fix the hook and run markship failover again") from None
        if proc.returncode != 0:
            raise MarkshipError(f"failover hook {' '.join(hook.command)} exited "
                                f"{proc.returncode}: {proc.stderr.strip()[-200:]}",
                                "fix the hook and run markship failover again")
        results.append(" ".join(hook.command))
    return results


def failover(config: Config, repo: Repository, mark_name: str | None = None,
             dry_run: bool = False, force: bool = False, new_config: Path | None = None,
             archive_wait: float = ARCHIVE_WAIT) -> Report:
    """`new_config`: where the role-swapped config goes (default: see sites.write_generation).
    `archive_wait`: how long each new primary's archiver has to store its first segment."""
    began = time.monotonic()
    if config.dr_site is None or not config.dr_site.standbys:
        raise MarkshipError("no [dr_site] standbys configured",
                            "describe the standbys in the config and run markship standby create")
    missing = [s.name for s in config.servers
               if s.name not in {sb.server for sb in config.dr_site.standbys}]
    if missing:
        raise MarkshipError(f"no standby for server(s) {', '.join(missing)}",
                            "every server needs a [[dr_site.standby]]")
    resumed = history.unfinished(repo) if not dry_run else None
    last = history.newest_done(repo) if resumed is None else None
    if last is not None and sites.superseded(config, last):
        raise MarkshipError(
            f"failover {last.id} already made site {last.to_site} production (at mark "
            f"{last.mark}); this config describes the roles before it",
            f"use the config it wrote: markship --config {last.new_config or 'PATH'} failover "
            "(it switches back)")
    state = choose_mark(config, repo, resumed.mark if resumed else mark_name)
    mark = state.record
    if mark_name is None and last is not None and mark.created_at <= last.started_at:
        raise MarkshipError(
            f"no complete mark since failover {last.id} ({show(last.started_at)}): the newest, "
            f"{mark.name}, is from before it",
            "run the agent with this config (markship run) or markship mark, then retry")
    report = Report(mark=mark.name, mark_time=mark.created_at, dry_run=dry_run,
                    resumed=resumed is not None,
                    points={s: format_lsn(p.lsn) for s, p in mark.points.items()},
                    notes=[UNARCHIVED_NOTE] if dry_run else [])
    try:
        report.lost = discarded(repo, config, mark)
        report.rpo_seconds = max((loss.lost_seconds for loss in report.lost.values()),
                                 default=0.0)
    except MarkshipError as exc:  # the report falls short; the failover must not
        report.rpo_seconds = (utcnow() - mark.created_at).total_seconds()
        report.notes.append(f"what the failover discards is unknown ({exc.one_line()}); "
                            "RPO is the mark's age, an upper bound")
    if dry_run:
        return report
    answering = production_answering(config)
    if answering and not force:
        where = ", ".join(f"{name} ({at})" for name, at in answering.items())
        raise MarkshipError(f"production server(s) {where} still answer: failing over now "
                            "would leave two primaries (split brain)",
                            "stop them there first, or pass --force if they are fenced off")
    refuse_standbys_past(config, mark, catalog.list_gaps(repo))
    # The role-swapped config comes first: the promoted servers' archive_command names it.
    if new_config is None and resumed is not None and resumed.new_config:
        new_config = Path(resumed.new_config)
    generation, _written = sites.write_generation(config, new_config)
    assert generation.source is not None
    report.site, report.rebuild_site = generation.site.name, config.site.name
    report.new_config = str(generation.source)
    started = utcnow()
    record = resumed or FailoverRecord(id=started.strftime("%Y%m%dT%H%M%SZ"), mark=mark.name,
                                       started_at=started, status="running")
    record = record.model_copy(update={
        "from_site": config.site.name, "to_site": generation.site.name,
        "new_config": str(generation.source), "host": sites.this_host()})
    key = layout.failover_key(record.id)
    records.write_record(repo, key, record, overwrite=True)
    report.phases["choose"] = time.monotonic() - began

    phase = time.monotonic()
    program = markship_command()
    promoted = each({sb.server: partial(promote_to_mark, config, sb, mark,
                                        archive_command(program, generation.source, sb.server))
                     for sb in config.dr_site.standbys})
    record = record.model_copy(update={"promoted": sorted(promoted)})
    records.write_record(repo, key, record, overwrite=True)
    report.phases["promote"] = time.monotonic() - phase

    phase = time.monotonic()
    participants = {sb.server: standby_conninfo(config, sb.server)
                    for sb in config.dr_site.standbys}
    report.resolutions = resolve_in_doubt(participants, config.barrier_server.name)
    report.phases["resolve"] = time.monotonic() - phase

    phase = time.monotonic()
    report.references = apply_references(config)
    report.client_files = write_client_files(config)
    report.hooks = run_hooks(config, mark.name)
    report.phases["references"] = time.monotonic() - phase

    report.rto_seconds = time.monotonic() - began
    report.archiving = check_archiving(generation, archive_wait)
    final = record.model_copy(update={"status": "done", "finished_at": utcnow(),
                                      "report": json.loads(json.dumps(exact_times(asdict(report)),
                                                                      default=str))})
    records.write_record(repo, key, final, overwrite=True)
    return report
