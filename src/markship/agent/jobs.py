"""The agent's scheduled jobs: backups, retention, file sets and dumps.

A full backup when one is due (then retention): on schedule, and at once when WAL is missing
after the newest one (a hole in the archive, or a gap pg_wal protection recorded); file sets
captured again when their content changed, logical dumps when their schedule comes round.
Backups and dumps run on threads of their own, so marks go on meanwhile.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from markship.agent.log import EventLog
from markship.backup import retention
from markship.backup.basebackup import run_backup
from markship.config.model import Config
from markship.config.schedule import next_run
from markship.errors import MarkshipError
from markship.repository import catalog, layout, records, restorable
from markship.repository.base import Repository
from markship.timefmt import show

RETRY_FAILED_SET = timedelta(minutes=5)
RETRY_FAILED_DUMP = timedelta(minutes=5)


class AgentState(records.Record):
    """What the agent remembers between runs (in the repository)."""

    force_full_done_for: str | None = None


def config_digest(config: Config) -> str:
    assert config.source is not None
    return hashlib.sha256(config.source.read_bytes()).hexdigest()


def backup_due(config: Config, repo: Repository, now: datetime,
               state: AgentState) -> str | None:
    """Why a full backup should start now, or None."""
    if config.schedule.force_full and state.force_full_done_for != config_digest(config):
        return "force_full is set"
    wal: dict[str, restorable.WalIndex] = {}
    states = [restorable.set_state(repo, r, wal) for r in catalog.list_sets(repo)]
    if any(s.label == "running" for s in states):
        return None
    complete = [s for s in states if s.complete]
    if not complete:
        if states and now - states[-1].record.created_at < RETRY_FAILED_SET:
            return None
        return "no complete backup set yet"
    newest = complete[-1]
    if states[-1].record.id != newest.record.id and \
            now - states[-1].record.created_at >= RETRY_FAILED_SET:
        return f"the last backup set {states[-1].record.id} is {states[-1].label}"
    failed_lately = states[-1].record.id != newest.record.id
    for gap in catalog.list_gaps(repo):
        backup = newest.backups.get(gap.server)
        if backup is not None and backup.start_segment <= gap.last and not failed_lately:
            return (f"WAL of server {gap.server} was dropped by pg_wal protection "
                    f"({gap.first_segment}..{gap.last_segment}) after the newest full backup")
    for server, backup in newest.backups.items():
        index = wal.get(server) or restorable.WalIndex(repo, server)
        gaps = index.gaps_after(backup.start_segment)
        if gaps:
            return f"WAL gap on server {server} ({gaps[0].name()} missing)"
    schedule = config.schedule
    due = next_run(schedule.frequency, schedule.hour, schedule.minute, schedule.weekday,
                   schedule.timezone, newest.record.created_at)
    return f"scheduled for {show(due)}" if due <= now else None


class Jobs:
    """The scheduled jobs of one agent; `journal` and `warn_key_backup` are the agent's."""

    def __init__(self, config: Config, repo: Repository, log: EventLog,
                 clock: Callable[[], datetime], journal: Callable[..., None],
                 warn_key_backup: Callable[[], None]) -> None:
        self.config = config
        self.repo = repo
        self.log = log
        self.clock = clock
        self.journal = journal
        self.warn_key_backup = warn_key_backup
        self.backup_thread: threading.Thread | None = None
        self.dump_thread: threading.Thread | None = None
        self.dump_failed_at: dict[str, datetime] = {}

    def join(self) -> None:
        """Wait for a backup or dump in flight."""
        for thread in (self.backup_thread, self.dump_thread):
            if thread is not None:
                thread.join()

    def maybe_backup(self) -> None:
        if self.backup_thread is not None and self.backup_thread.is_alive():
            return
        state = self._state()
        try:
            reason = backup_due(self.config, self.repo, self.clock(), state)
        except MarkshipError as exc:
            self.log("backup.check_failed", level="error", reason=exc.message)
            return
        if reason is None:
            return
        self.backup_thread = threading.Thread(target=self._backup, args=(reason, state),
                                              name="backup", daemon=True)
        self.backup_thread.start()

    def _backup(self, reason: str, state: AgentState) -> None:
        self.log("backup.start", reason=reason)
        try:
            result = run_backup(self.config, self.repo, list(self.config.servers))
        except MarkshipError as exc:
            self.log("backup.failed", level="error", reason=exc.message)
            self.journal("backup", f"failed: {exc.message}")
            return
        self.log("backup.ok", set=result.record.id,
                 stored_bytes=sum(b.stored_size for b in result.backups.values()))
        self.journal("backup", "ok", set=result.record.id, reason=reason)
        self.warn_key_backup()
        if self.config.schedule.force_full:
            self._save_state(state.model_copy(
                update={"force_full_done_for": config_digest(self.config)}))
        self.expire()

    def capture_changed_filesets(self) -> None:
        """File sets are captured again whenever their content changed."""
        if not self.config.filesets:
            return
        from markship.backup import filesets

        for fileset in self.config.filesets:
            try:
                record = filesets.capture(self.config, self.repo, fileset,
                                          reason="content changed", only_if_changed=True)
            except MarkshipError as exc:
                self.log("fileset.failed", level="error", fileset=fileset.name,
                         reason=exc.message)
                continue
            if record is not None:
                self.log("fileset.captured", fileset=fileset.name, id=record.id,
                         mark=record.mark or "none")
                self.journal("files capture", "ok", fileset=fileset.name, id=record.id)

    def maybe_dump(self) -> None:
        """Run the logical dumps whose schedule came round (in the background)."""
        if not self.config.dumps or (self.dump_thread is not None
                                     and self.dump_thread.is_alive()):
            return
        from markship.backup import dumps

        now = self.clock()
        due = []
        for dump in self.config.dumps:
            failed = self.dump_failed_at.get(dump.dump_name)
            if failed is not None and now - failed < RETRY_FAILED_DUMP:
                continue
            try:
                if dumps.dump_due(self.config, self.repo, dump, now):
                    due.append(dump)
            except MarkshipError as exc:
                self.log("dump.check_failed", level="error", dump=dump.dump_name,
                         reason=exc.message)
        if not due:
            return

        def work() -> None:
            for dump in due:
                self.log("dump.start", dump=dump.dump_name)
                try:
                    record = dumps.run_dump(self.config, self.repo, dump)
                except MarkshipError as exc:
                    self.dump_failed_at[dump.dump_name] = self.clock()
                    self.log("dump.failed", level="error", dump=dump.dump_name,
                             reason=exc.message)
                    self.journal("dumps run", f"failed: {exc.message}", dump=dump.dump_name)
                    continue
                self.dump_failed_at.pop(dump.dump_name, None)
                self.log("dump.ok", dump=dump.dump_name, id=record.id, bytes=record.archive.size)
                self.journal("dumps run", "ok", dump=dump.dump_name, id=record.id)

        self.dump_thread = threading.Thread(target=work, name="dumps", daemon=True)
        self.dump_thread.start()

    def expire(self) -> None:
        try:
            with self.repo.lock("backup", "markship run: retention"):
                plan = retention.make_plan(self.repo, self.clock(), self.config.retention.days,
                                           self.config.retention.min_sets)
                retention.apply(self.repo, plan)
        except MarkshipError as exc:
            self.log("expire.failed", level="error", reason=exc.message)
            return
        self.log("expire.ok", deleted_sets=len(plan.delete_sets),
                 deleted_objects=len(plan.delete_keys), freed_bytes=plan.freed_bytes)
        if plan.delete_keys:
            self.journal("expire", "ok", deleted_sets=",".join(plan.delete_sets) or "none",
                         deleted_objects=str(len(plan.delete_keys)))

    def _state(self) -> AgentState:
        try:
            return records.read_record(self.repo, layout.AGENT_STATE_KEY, AgentState)
        except MarkshipError:
            return AgentState()

    def _save_state(self, state: AgentState) -> None:
        records.write_record(self.repo, layout.AGENT_STATE_KEY, state, overwrite=True)
