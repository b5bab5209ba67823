"""Base backups: one backup set = one pg_basebackup per server, in parallel, into the repository."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from markship import __version__, perserver
from markship.config.model import Config, ServerSection
from markship.errors import BackupError, MarkshipError, ObjectMissing
from markship.pg import programs, sql
from markship.pg.commands import archive_command
from markship.pg.lsn import Segment, parse_lsn, segment_holding_end, segment_of
from markship.repository import catalog, layout, records
from markship.repository.base import Repository
from markship.repository.catalog import BackupRecord, SetRecord, TablespaceRef
from markship.repository.records import ObjectRef
from markship.timefmt import utcnow
from markship.wal.stored import find_archived, open_archived

ProgressFn = Callable[[str, int, int], None]
CONFIG_FILE_NAMES = {"config_file": "postgresql.conf", "hba_file": "pg_hba.conf",
                     "ident_file": "pg_ident.conf"}


@dataclass(frozen=True)
class SetResult:
    record: SetRecord
    backups: dict[str, BackupRecord]


def new_set_id(repo: Repository, now: datetime) -> str:
    base = now.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base, 1
    while repo.exists(layout.set_key(candidate)):
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def run_backup(config: Config, repo: Repository, servers: list[ServerSection],
               on_progress: ProgressFn | None = None) -> SetResult:
    """Back up `servers` in parallel as one set. Raises BackupError if any server failed.

    The set record is written first as 'running' and rewritten at the end, so a killed run is
    visible as an abandoned set; a server's backup counts only once its backup.json exists.
    """
    repo.check_writable()
    catalog.ensure_marker(repo, config.group.name, utcnow())
    with repo.lock("backup", f"markship backup of group {config.group.name}"):
        started = utcnow()
        set_id = new_set_id(repo, started)
        record = SetRecord(id=set_id, group=config.group.name,
                           servers=[s.name for s in servers], created_at=started,
                           status="running", pid=os.getpid(), host=socket.gethostname())
        records.write_record(repo, layout.set_key(set_id), record)
        config_ref = capture_config_file(config, repo, set_id)
        backups, failures = perserver.settle(
            {s.name: partial(backup_server, config, repo, s, set_id, on_progress)
             for s in servers}, MarkshipError)
        errors = {name: exc.one_line() for name, exc in failures.items()}
        # File sets (application and web configuration) go with every set. Their failure is
        # recorded with the set but does not make the databases' backups unusable.
        fileset_errors: dict[str, str] = {}
        if config.filesets and not errors:
            from markship.backup import filesets

            for fileset in config.filesets:
                try:
                    filesets.capture(config, repo, fileset, reason=f"backup set {set_id}",
                                     set_id=set_id)
                except MarkshipError as exc:
                    fileset_errors[f"fileset {fileset.name}"] = exc.one_line()
        final = record.model_copy(update={"status": "failed" if errors else "done",
                                          "finished_at": utcnow(),
                                          "errors": errors | fileset_errors,
                                          "config_file": config_ref})
        records.write_record(repo, layout.set_key(set_id), final, overwrite=True)
    if errors:
        detail = "; ".join(f"{name}: {text}" for name, text in errors.items())
        raise BackupError(f"backup set {set_id} failed ({detail})",
                          "fix the cause and run markship backup again")
    return SetResult(final, backups)


def capture_config_file(config: Config, repo: Repository, set_id: str) -> ObjectRef | None:
    """The markship config file itself goes with every set (the "configuration file" step
    of a DR plan): stored beside the set's backups, deleted with them."""
    if config.source is None:
        return None
    try:
        with config.source.open("rb") as handle:
            stored = repo.write(layout.group_config_key(set_id), handle)
    except OSError as exc:
        raise BackupError(f"cannot read the config file {config.source} ({exc.strerror})",
                          "make it readable by the repository's OS user") from None
    return ObjectRef(key=stored.key, size=stored.size, sha256=stored.sha256)


def backup_server(config: Config, repo: Repository, server: ServerSection, set_id: str,
                  on_progress: ProgressFn | None = None) -> BackupRecord:
    """One server's base backup into the repository; returns the record once it is stored."""
    with sql.connect(server.conninfo, server.name) as conn:
        facts = sql.facts(conn)
        if facts.in_recovery:
            raise BackupError(f"server {server.name} is in recovery",
                              "back up the primary; backups from standbys are not supported")
        if facts.archive_mode == "off":
            raise BackupError(
                f"archive_mode is off on server {server.name}: a backup without its WAL is useless",
                f"set archive_mode = on and archive_command = "
                f"'{archive_command('markship', config.source, server.name)}', then restart it",
            )
        if facts.version_num < programs.OLDEST_SUPPORTED:
            raise BackupError(
                f"server {server.name} runs PostgreSQL {facts.version}, which markship does "
                "not support",
                "markship supports PostgreSQL 13 and later (tested with 15): upgrade the server")
        spaces_before = sql.tablespaces(conn)
        config_refs = capture_config_files(conn, repo, server, set_id, facts.config_files)
    tools = programs.bin_dir(server.bin_dir, facts.version_num)
    label = f"markship:{set_id}:{server.name}"
    started_at = utcnow()

    def progress(done_kb: int, total_kb: int) -> None:
        if on_progress:
            on_progress(server.name, done_kb * 1024, total_kb * 1024)

    with contextlib.ExitStack() as spool:
        # pg_basebackup writes a server with tablespaces only into a directory (one archive
        # each); a private one (0700) of the user markship runs as, removed afterwards.
        spool_dir = (Path(spool.enter_context(tempfile.TemporaryDirectory(
            prefix=f"markship-backup-{server.name}-"))) if spaces_before else None)
        proc = programs.BaseBackupProcess(
            programs.tool(tools, "pg_basebackup"), server.conninfo, label,
            level=config.backup.compression_level, workers=config.backup.compress_workers,
            archive_wait_seconds=config.backup.archive_wait_seconds, on_progress=progress,
            server_zstd=facts.version_num >= programs.SERVER_ZSTD_FROM, spool_dir=spool_dir,
        )
        stored: dict[str, ObjectRef] = {}
        written = [ref.key for ref in config_refs.values()]  # deleted again on failure
        try:
            for name, stream in proc.archives():
                key = (layout.base_archive_key(server.name, set_id) if name == "base"
                       else layout.tablespace_archive_key(server.name, set_id, name))
                written.append(key)
                obj = repo.write(key, stream)
                stored[name] = ObjectRef(key=obj.key, size=obj.size, sha256=obj.sha256)
            proc.finish()
            if "base" not in stored:
                raise BackupError("pg_basebackup wrote no archive of the data directory",
                                  "check the server's log and run markship backup again")
            spaces = _tablespace_refs(server, spaces_before, stored)
        except BaseException:
            proc.kill()
            for key in written:
                repo.delete(key)
            raise
    try:
        # pg_basebackup returns once PostgreSQL has archived the backup's last segment, so its
        # WAL is either in the repository within moments or archived somewhere else.
        info = wait_for_backup_history(repo, server.name, label, facts.timeline,
                                       facts.current_lsn, facts.wal_segment_size,
                                       min(config.backup.archive_wait_seconds, 15))
    except BaseException:
        for key in written:
            repo.delete(key)
        raise
    record = BackupRecord(
        set_id=set_id, server=server.name, label=label, started_at=started_at,
        finished_at=utcnow(), consistent_at=info.stop_time or utcnow(), timeline=info.timeline,
        start_lsn=info.start_lsn, stop_lsn=info.stop_lsn,
        wal_segment_size=facts.wal_segment_size, pg_version=facts.version,
        pg_version_num=facts.version_num, system_identifier=facts.system_identifier,
        raw_size=proc.total_kb * 1024,
        archive=stored["base"], config_files=config_refs, markship_version=__version__,
        tablespaces=spaces,
    )
    records.write_record(repo, layout.backup_record_key(server.name, set_id), record)
    return record


def _tablespace_refs(server: ServerSection, before: dict[str, sql.Tablespace],
                     stored: dict[str, ObjectRef]) -> dict[str, TablespaceRef]:
    """Name and location of each tablespace whose archive was stored, as listed before the
    backup or, for one created while it ran, after. Raises BackupError for an archive of a
    tablespace that is in neither list (dropped again while the backup ran)."""
    oids = [name for name in stored if name != "base"]
    known = dict(before)
    if any(oid not in known for oid in oids):
        with sql.connect(server.conninfo, server.name) as conn:
            known.update(sql.tablespaces(conn))
    refs = {}
    for oid in oids:
        if oid not in known:
            raise BackupError(f"a tablespace (OID {oid}) of server {server.name} was created "
                              "and dropped while it was being backed up",
                              "run markship backup again")
        refs[oid] = TablespaceRef(name=known[oid].name, location=known[oid].location,
                                  archive=stored[oid])
    return refs


def capture_config_files(conn: sql.Connection,
                         repo: Repository, server: ServerSection, set_id: str,
                         paths: dict[str, str]) -> dict[str, ObjectRef]:
    """Store postgresql.conf, pg_hba.conf and pg_ident.conf with the backup.

    Read from disk when markship runs on the server's host, else through SQL when the role
    may read server files; files that cannot be read are simply not captured.
    """
    refs: dict[str, ObjectRef] = {}
    for setting, file_name in CONFIG_FILE_NAMES.items():
        candidates = [Path(paths[setting])] if setting in paths else []
        if server.data_dir is not None:
            candidates.append(server.data_dir / file_name)
        data: bytes | None = None
        for path in candidates:
            try:
                data = path.read_bytes()
                break
            except OSError:
                continue
        if data is None and setting in paths:
            data = sql.read_server_file(conn, paths[setting])
        if data is None:
            continue
        stored = repo.write_bytes(layout.config_file_key(server.name, set_id, file_name), data)
        refs[file_name] = ObjectRef(key=stored.key, size=stored.size, sha256=stored.sha256)
    return refs


@dataclass(frozen=True)
class BackupHistory:
    """The `.backup` history file PostgreSQL archives at the end of a base backup."""

    label: str
    timeline: int
    start_lsn: int
    stop_lsn: int
    stop_time: datetime | None


def parse_backup_history(text: str) -> BackupHistory:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()

    def lsn_of(field: str) -> int:
        match = re.match(r"([0-9A-F]+/[0-9A-F]+)", fields[field])
        if not match:
            raise ValueError(f"bad {field} in backup history file")
        return parse_lsn(match.group(1))

    stop_time: datetime | None = None
    raw_time = fields.get("STOP TIME", "")
    for zone in ("UTC", "GMT"):
        if raw_time.endswith(" " + zone):
            stop_time = datetime.strptime(raw_time[: -len(zone) - 1], "%Y-%m-%d %H:%M:%S")
            stop_time = stop_time.replace(tzinfo=UTC)
    timeline = fields.get("STOP TIMELINE", fields.get("START TIMELINE", "1"))
    return BackupHistory(label=fields.get("LABEL", ""), timeline=int(timeline),
                         start_lsn=lsn_of("START WAL LOCATION"),
                         stop_lsn=lsn_of("STOP WAL LOCATION"), stop_time=stop_time)


def read_wal_text(repo: Repository, server: str, name: str) -> str:
    reader, _digest = open_archived(repo, server, name)
    with reader:
        return bytes(reader.read()).decode(errors="replace")


def wait_for_backup_history(repo: Repository, server: str, label: str, timeline: int,
                            lsn_before: int, segment_size: int,
                            timeout_seconds: float) -> BackupHistory:
    """Find the archived `.backup` file with our label, and the stop segment, or time out.

    pg_basebackup already waited for the archiver; the wait here only covers the short time
    the `.backup` file itself may still be travelling.
    """
    first = segment_of(timeline, lsn_before, segment_size)
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = _find_history(repo, server, label, first, segment_size)
        if found is not None:
            stop_segment = segment_holding_end(found.timeline, found.stop_lsn, segment_size)
            if find_archived(repo, server, stop_segment.name(segment_size)):
                return found
        if time.monotonic() > deadline:
            raise BackupError(
                f"the WAL that ends the backup of server {server} did not reach the repository "
                "although PostgreSQL reports it archived",
                f"archive_command must call '{archive_command('markship', '...', server)}' "
                "with this config (check it with SHOW archive_command)",
            )
        time.sleep(0.2)


def _find_history(repo: Repository, server: str, label: str, first: Segment,
                  segment_size: int) -> BackupHistory | None:
    prefix = layout.wal_prefix(server)
    first_dir = first.name(segment_size)[:16]
    for folder in repo.children(prefix):
        if folder == "history" or folder < first_dir:
            continue
        for child in reversed(repo.children(f"{prefix}{folder}/")):
            parsed = layout.split_wal_key(child)
            if parsed is None or not parsed[0].endswith(".backup"):
                continue
            try:
                history = parse_backup_history(read_wal_text(repo, server, parsed[0]))
            except (ObjectMissing, ValueError, KeyError):
                continue
            if history.label == label:
                return history
    return None
