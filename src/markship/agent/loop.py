"""`markship run`: the agent, making marks and running the scheduled jobs.

Marks every `[marks] interval`, and those `markship mark` asks for on the agent's socket
(markship.agent.control), on a marking thread of their own; WAL receivers for their delivery;
the scheduled jobs (markship.agent.jobs: backups, retention, file sets, dumps); the WAL gap
records wal-push kept on this host (markship.wal.guard) written into the catalog; the copies of
the repository, kept caught up on a thread of their own (markship.agent.copying). One agent per
group: it holds the repository's agent lock (an flock in a directory repository, released by
the kernel when the process dies; a lease object in object storage, lost when its holder stops
renewing it), so a crashed agent never leaves a stale lock behind. A standby agent
(`run --standby-agent`, on another host) waits for that lock and takes over marking and
backups when the first agent dies.
"""

from __future__ import annotations

import contextlib
import json
import pwd
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from types import FrameType

import psycopg

from markship.agent import control, web
from markship.agent.copying import Copier
from markship.agent.jobs import Jobs
from markship.agent.log import EventLog
from markship.agent.replaypace import ReplayPacer
from markship.config.model import Config
from markship.errors import LockedError, MarkshipError
from markship.marks import priority, stream, upload
from markship.marks.take import GroupConnections, MarkResult, MarkSkipped, take_mark
from markship.monitor.metrics import MarkFeed
from markship.pg import programs, replication
from markship.repository import records
from markship.repository.base import Repository
from markship.repository.copies import open_copies
from markship.timefmt import utcnow

PRUNE_EVERY = 10.0  # seconds between clean-ups of streamed WAL that is archived
MARKS_JOURNAL_EVERY = 600.0  # seconds between journal summaries of the agent's marks
RECOGNISE_AFTER = 10.0  # seconds a receiver runs before marks must see it in the server
CONTENT_CHECK_EVERY = 60.0  # seconds between file-set change checks and dump schedule checks
STANDBY_POLL = 1.0  # seconds between a standby agent's attempts at the agent lock
ROLES_EVERY_POLLS = 5  # a standby agent looks for a failover every this many attempts


def marking_thread(config: Config, log: EventLog) -> ThreadPoolExecutor:
    """The agent's marking thread, at `[marks] nice` (markship.marks.priority): `markship run` makes
    it before it becomes the repository's OS user."""
    return priority.marking_thread(
        config.marks.nice, lambda problem: log("mark.priority", level="warning", reason=problem))


class Agent:
    def __init__(self, config: Config, repo: Repository, log: EventLog,
                 clock: Callable[[], datetime] = utcnow, config_path: str | None = None,
                 marker: ThreadPoolExecutor | None = None, standby: bool = False,
                 web_server: web.Prepared | None = None) -> None:
        self.config = config
        self.web_server = web_server  # [web], bound before markship became os_user
        self.feed = MarkFeed()  # what /metrics tells of the marks made here
        self.standby = standby  # wait for the agent lock instead of refusing to start
        self.held: contextlib.AbstractContextManager[None] | None = None
        self.config_path = config_path  # where `markship mark` finds this agent's socket
        self.wakeup = threading.Event()  # ends the loop's nap: a signal or a request
        self.requests: queue.SimpleQueue[control.Request] = queue.SimpleQueue()
        self.repo = repo
        self.log = log
        self.clock = clock
        self.stop = threading.Event()
        self.abandon = threading.Event()
        self.conns = GroupConnections(config)
        # Marks are made on a thread of their own, at a raised priority (markship.marks.priority).
        self.marker = marker or marking_thread(config, log)
        self.receivers: dict[str, stream.Receiver] = {}
        # With object storage the receivers write into a local spool, and marks upload
        # from it (markship.marks.upload).
        self.uploads = None if stream.in_place(repo) else upload.StreamUploads(config, repo, log)
        self.receiver_problems: set[str] = set()
        self.receivers_recognised: set[str] = set()  # checked once per server (see below)
        self.config_text: str | None = None  # the config as last journaled (redacted)
        # Marks are journaled as a summary (every MARKS_JOURNAL_EVERY and at stop), not one
        # entry per mark: each mark is its own record in marks/ already.
        self.mark_counts = {"made": 0, "skipped": 0, "failed": 0}
        self.newest_mark: str | None = None
        self.jobs = Jobs(config, repo, log, clock, self.journal, self.warn_key_backup)
        # [[repository.copy]]: caught up on a thread of its own (markship.agent.copying)
        self.copier = Copier(repo, open_copies(config), log)
        # [dr_site] max_replay_delay: WAL switches for the standbys (markship.agent.replaypace)
        self.pacer = ReplayPacer(config, log)
        # A failover made another site production (check_roles): the role-swapped config to
        # go on with (`markship run` starts a new Agent with it), or why the agent stopped.
        self.switch_to: Path | None = None
        self.superseded: MarkshipError | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.log("agent.abandon", level="warning",
                     detail="second signal: abandoning the backup in flight")
            self.abandon.set()
            programs.kill_running()
        else:
            self.log("agent.stopping", signal=signal.Signals(signum).name,
                     detail="finishing work in flight; signal again to abandon it")
            self.stop.set()
            self.wakeup.set()

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        records.on_damage(lambda damaged: self.log("record.damaged", level="warning",
                                                   key=damaged.key, reason=damaged.problem,
                                                   detail="skipped; run markship verify"))
        if self.check_roles():
            return
        with contextlib.ExitStack() as locked:
            purpose = f"markship run for group {self.config.group.name}"
            if self.standby:
                if self.web_server is not None:
                    self.web_server.serve("standby agent: waiting to take over when the "
                                          "group's agent stops")
                    locked.callback(self.web_server.close)
                self.held = self.wait_for_lock(purpose)
                if self.held is None:
                    self.log("agent.stop", detail="stopped while waiting as a standby agent")
                    return
            else:
                self.held = self.repo.lock("agent", purpose)
                self.held.__enter__()
            locked.push(self.held.__exit__)
            self.log("agent.start", group=self.config.group.name,
                     interval_s=self.config.marks.interval, servers=len(self.config.servers))
            self.warn_key_backup()
            self.journal("agent start", "ok")
            self.check_config_change()
            listener = self.listen()
            self.copier.start()
            site = web.started(self.config, self.repo, self.web_server, self.feed, self.log)
            try:
                self._loop()
            finally:
                if site is not None:
                    site.close()
                if listener is not None:
                    listener.close()
                self.copier.close()
                self.pacer.close()
                self.serve_requests()  # taken before the socket closed
                for receiver in self.receivers.values():
                    receiver.stop()
                self.jobs.join()
                self.marker.shutdown()
                if self.uploads is not None and self.receivers:
                    self.uploads.clear()
                self.conns.close()
            self.journal_marks()
            self.journal("agent stop", "ok")
            self.log("agent.stop")

    def wait_for_lock(self, purpose: str) -> contextlib.AbstractContextManager[None] | None:
        """The agent lock, held, once it is free (a standby agent): None when stopped
        before. The caller releases it (`__exit__`)."""
        waiting = False
        polls = 0
        while not self.stop.is_set():
            polls += 1
            if polls % ROLES_EVERY_POLLS == 0 and self.check_roles():
                return None
            lock = self.repo.lock("agent", purpose)
            try:
                lock.__enter__()
            except LockedError as exc:
                if not waiting:
                    self.log("agent.standby", holder=exc.message,
                             detail="waiting to take over marks and backups when it stops")
                    waiting = True
            except MarkshipError as exc:  # the repository unreachable: keep waiting
                self.log("agent.standby_problem", level="warning", reason=exc.one_line())
            else:
                if waiting:
                    self.log("agent.takeover", detail="the agent lock is free: this agent "
                             "takes over marking and backups")
                return lock
            self.stop.wait(STANDBY_POLL)
        return None

    def lock_lost(self) -> bool:
        """Whether another agent took the agent lease over (this one could not renew it)."""
        return bool(getattr(self.held, "lost", False))

    def _loop(self) -> None:
        interval = self.config.marks.interval
        next_mark = time.monotonic()
        next_backup_check = 0.0
        next_prune = time.monotonic() + PRUNE_EVERY
        self.record_gaps()  # WAL gap records waiting on this host go to the catalog at once
        next_content_check = time.monotonic() + 5
        next_marks_summary = time.monotonic() + MARKS_JOURNAL_EVERY
        while not self.stop.is_set():
            if self.lock_lost():
                self.log("agent.lock_lost", level="error",
                         detail="another agent holds the agent lease now: stopping")
                self.stop.set()
                break
            self.serve_requests()
            if time.monotonic() >= next_marks_summary:
                next_marks_summary = time.monotonic() + MARKS_JOURNAL_EVERY
                self.journal_marks()
            if time.monotonic() >= next_content_check:
                next_content_check = time.monotonic() + CONTENT_CHECK_EVERY
                self.jobs.capture_changed_filesets()
                self.jobs.maybe_dump()
            self.poll_receivers()
            if self.uploads is not None and self.receivers:
                self.uploads.ship_ahead(list(self.receivers))
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY
                self.prune_stream()
                if self.check_roles():
                    break
                self.check_config_change()
                if self.record_gaps():
                    next_backup_check = 0.0  # a full backup makes new marks restorable
            if time.monotonic() >= next_mark:
                started = time.monotonic()
                self.mark()
                next_mark = started + interval
                if next_mark < time.monotonic():
                    next_mark = time.monotonic()
                self.feed.planned(next_mark)
            if time.monotonic() >= next_backup_check:
                next_backup_check = time.monotonic() + 5
                self.jobs.maybe_backup()
            self.pacer.tick()
            wake = min(next_mark, next_backup_check, next_prune, time.monotonic() + 1.0)
            self.wakeup.wait(max(0.0, wake - time.monotonic()))
            self.wakeup.clear()

    def listen(self) -> control.Listener | None:
        """Take `markship mark` requests on the agent's socket (see markship.agent.control)."""
        if self.config_path is None:
            return None
        listener = control.Listener(self.config_path, self._take_request)
        try:
            listener.start()
        except OSError as exc:
            self.log("agent.socket_unavailable", level="warning", path=listener.path,
                     reason=str(exc), detail="markship mark makes marks itself meanwhile")
            return None
        return listener

    def _take_request(self, request: control.Request) -> None:
        self.requests.put(request)
        self.wakeup.set()

    def serve_requests(self) -> None:
        """Answer the requests taken so far. Whatever a request holds, the agent goes on: a
        request that fails in a way not foreseen is answered with an error and logged."""
        while True:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                self.mark_for(request)
            except Exception as exc:
                self.log("request.failed", level="error", reason=f"{type(exc).__name__}: {exc}")
                request.answer(1, stderr="markship: error: the agent (markship run) failed on "
                                         f"this request ({type(exc).__name__}): see its log\n")

    def mark_for(self, request: control.Request) -> None:
        """A mark asked for by `markship mark`; journaled in the requester's name."""
        from markship import names
        from markship.marks.take import result_json, result_line
        from markship.repository import journal

        body = request.body
        name = body.get("name")
        if body.get("op") != "mark" or not (name is None or isinstance(name, str)):
            request.answer(2, stderr="markship: error: the agent got a request it does not "
                                     "know: use the same markship version for both\n")
            return
        try:
            user = pwd.getpwuid(request.uid).pw_name
        except KeyError:
            user = f"uid {request.uid}"
        as_user = f"{user} (through markship run, {journal.invoking_user()})"
        try:
            if name is not None:
                names.check_restore_point(name, "mark name (--name)")
        except names.BadName as refused:  # not a mark that failed: no mark was tried
            self.log("mark.refused", level="warning", reason=refused.message, requested_by=user)
            self.journal("mark", f"failed: {refused.message}", as_user=as_user)
            request.answer(refused.exit_code, stderr=f"markship: error: {refused.one_line()}\n")
            return
        result = self.mark(name, bool(body.get("switch_wal", True)), requested_by=user)
        # Answered first, journaled right after: the mark record is durable already, and the
        # journal's append (a listing and fsyncs, ~100 ms under load) would double the wait.
        if isinstance(result, MarkshipError):
            request.answer(result.exit_code, stderr=f"markship: error: {result.one_line()}\n")
            self.journal("mark", f"failed: {result.message}", as_user=as_user)
            return
        if body.get("json"):
            out = json.dumps(result_json(result, "agent"), indent=2, sort_keys=True)
        else:
            out = result_line(result)
        request.answer(0, stdout=out + "\n")
        self.journal("mark", "ok", as_user=as_user, mark=result.record.name)

    def poll_receivers(self) -> None:
        """Keep one WAL receiver per reachable server running (marks use it; see stream)."""
        if self.config.marks.delivery != "stream":
            return
        if self.config.encryption is not None and self.uploads is None:
            # pg_receivewal writes plain WAL: into an encrypted directory repository it may
            # not (marks switch WAL); from a spool, uploads are encrypted like every object.
            return
        for server in self.config.servers:
            receiver = self.receivers.get(server.name)
            if receiver is None:
                conn = self.conns.psycopg_conn(server.name)
                if conn is None or conn.closed:
                    continue  # connected by the next mark
                try:
                    tools = programs.bin_dir(server.bin_dir, conn.info.server_version)
                    program = programs.tool(tools, "pg_receivewal")
                except MarkshipError as exc:
                    if server.name not in self.receiver_problems:
                        self.receiver_problems.add(server.name)
                        self.log("stream.unavailable", level="warning", server=server.name,
                                 reason=exc.message, detail="marks switch WAL instead")
                    continue
            try:
                if receiver is None:
                    receiver = stream.Receiver(
                        stream.receiver_folder(self.config, self.repo, server.name),
                        server.name, server.conninfo, program, self.log)
                    self.receivers[server.name] = receiver
                receiver.poll()
            except (OSError, MarkshipError) as exc:  # e.g. the stream folder is not writable
                if server.name not in self.receiver_problems:
                    self.receiver_problems.add(server.name)
                    self.log("stream.unavailable", level="warning", server=server.name,
                             reason=exc.message if isinstance(exc, MarkshipError) else str(exc),
                             detail="marks switch WAL instead")
        self.check_receivers_recognised()

    def check_receivers_recognised(self) -> None:
        """Say once per server when its receiver runs but the server does not show it as
        markship's (by application_name in pg_stat_replication): every mark then falls back
        to a WAL switch, 16 MB each, and nothing else would tell."""
        for name, receiver in self.receivers.items():
            running = receiver.running_seconds()
            conn = self.conns.psycopg_conn(name)
            if (name in self.receivers_recognised or running is None
                    or running < RECOGNISE_AFTER or conn is None or conn.closed):
                continue
            try:
                seen = replication.receiver_listed(conn)
            except psycopg.Error:
                self.conns.drop_broken()
                continue
            self.receivers_recognised.add(name)
            if not seen:
                self.log("stream.unrecognised", level="warning", server=name,
                         pid=receiver.proc.pid if receiver.proc else None,
                         detail=f"the receiver runs but the server lists no receiver with "
                                f"application_name={replication.RECEIVER_NAME}: marks switch "
                                "WAL instead; check the conninfo and that it names the "
                                "server the receiver connects to")

    def record_gaps(self) -> bool:
        """Write the WAL gap records wal-push kept on this host while the repository could
        not be written (markship.wal.guard) into the catalog; True when one was written."""
        from markship.wal import guard

        assert self.config.source is not None
        path = str(self.config.source)
        written = False
        for server in self.config.servers:
            if not guard.waiting(path, server.name):
                continue
            try:
                keys = guard.flush(self.repo, path, server.name)
            except (MarkshipError, OSError) as exc:
                self.log("gap.unrecorded", level="warning", server=server.name,
                         reason=exc.message if isinstance(exc, MarkshipError) else str(exc),
                         detail="kept on this host; tried again in a few seconds")
                continue
            for key in keys:
                self.log("gap.recorded", level="error", server=server.name, record=key,
                         detail="WAL was dropped by pg_wal protection: a full backup follows")
            written = written or bool(keys)
        return written

    def prune_stream(self) -> None:
        for server in self.receivers:
            try:
                stream.prune(self.repo, server)
                if self.uploads is not None:
                    self.uploads.prune(server)
            except (OSError, MarkshipError) as exc:
                self.log("stream.prune_failed", level="warning", server=server,
                         reason=exc.message if isinstance(exc, MarkshipError) else str(exc))

    def mark(self, name: str | None = None, switch_wal: bool = True,
             **extra: str) -> MarkResult | MarkshipError:
        """One mark (the agent's own or a requested one), made on the marking thread, counted
        and logged; a failure is returned, not raised."""
        started = time.monotonic()
        try:
            result = self.marker.submit(take_mark, self.config, self.repo, self.conns, name,
                                        switch_wal=switch_wal, uploads=self.uploads).result()
        except MarkshipError as exc:
            error = exc
        except psycopg.Error as exc:  # a connection that broke in a way not yet translated
            self.conns.drop_broken()
            error = MarkshipError(f"mark failed: {str(exc).strip() or repr(exc)}")
        else:
            took = time.monotonic() - started
            self.mark_counts["made"] += 1
            self.feed.made(took, result.record.barrier_hold_ms / 1000)
            self.newest_mark = result.record.name
            self.log("mark.ok", name=result.record.name, hold_ms=result.record.barrier_hold_ms,
                     total_ms=round(took * 1000, 1),
                     delivery_ms=round(result.switch_ms, 1),
                     delivery=",".join(sorted(set(result.record.delivery.values()))), **extra)
            return result
        skipped = isinstance(error, MarkSkipped)
        self.mark_counts["skipped" if skipped else "failed"] += 1
        (self.feed.skipped if skipped else self.feed.failed)()
        self.log("mark.skipped" if skipped else "mark.failed",
                 level="warning" if skipped else "error", reason=error.message, **extra)
        return error

    def journal_marks(self) -> None:
        """One journal entry for the marks made since the last one."""
        counts = self.mark_counts
        if not any(counts.values()):
            return
        self.journal("marks", "ok" if not counts["failed"] else
                     f"failed: {counts['failed']} of {sum(counts.values())} marks failed",
                     **{k: str(v) for k, v in counts.items()},
                     newest=self.newest_mark or "none")
        self.mark_counts = {"made": 0, "skipped": 0, "failed": 0}

    def journal(self, command: str, outcome: str, diff: str | None = None,
                config_text: str | None = None, as_user: str | None = None,
                **objects: str) -> None:
        from markship.repository import journal

        try:
            journal.append(self.repo, command, outcome, objects=objects, diff=diff,
                           config_text=config_text,
                           user=as_user or f"markship run ({journal.invoking_user()})")
        except MarkshipError as exc:
            self.log("journal.failed", level="warning", reason=exc.message)

    def check_config_change(self) -> None:
        """Journal the config file's changes (a diff, secrets redacted) as the agent sees
        them. The running agent keeps the config it started with."""
        from markship.repository import journal

        assert self.config.source is not None
        try:
            text = journal.redact(self.config.source.read_text())
            before = self.config_text
            if before is None:
                before = journal.last_config_text(self.repo)
        except (OSError, MarkshipError) as exc:
            self.log("journal.config_unreadable", level="warning", reason=str(exc))
            return
        self.config_text = text
        if text == before:
            return
        self.journal("config change", "seen by the agent" + (
            "" if before is None else "; restart the agent to apply it"),
                     diff=journal.config_diff(before, text), config_text=text,
                     file=str(self.config.source))

    def check_roles(self) -> bool:
        """Whether a failover made another site production than this config names (then the
        agent stops: its servers are not the group's primaries). When that failover wrote
        its role-swapped config on this host, the agent goes on with it (`switch_to`)."""
        from markship.dr import history, sites

        try:
            record = history.newest_done(self.repo)
        except MarkshipError as exc:
            self.log("agent.roles_unknown", level="warning", reason=exc.one_line())
            return False
        if record is None or not sites.superseded(self.config, record):
            return False
        path = sites.successor(self.config, record)
        if path is not None:
            self.switch_to = path
            self.log("agent.switch", failover=record.id, config=str(path),
                     detail=f"failover {record.id} made site {record.to_site} production: "
                            "restarting with the config it wrote")
        else:
            self.superseded = MarkshipError(
                f"failover {record.id} made site {record.to_site} production; this config "
                f"still names site {self.config.site.name} as production",
                "run the agent with the config that failover wrote ("
                f"{record.new_config or 'see markship journal'} on host {record.host})")
            self.log("agent.superseded", level="error", reason=self.superseded.message,
                     detail="stopping: " + (self.superseded.hint or ""))
        self.stop.set()
        self.wakeup.set()
        return True

    def warn_key_backup(self) -> None:
        from markship.repository.keys import backup_warning

        warning = backup_warning(self.config, self.repo)
        if warning:
            self.log("key.no_backup", level="warning", detail=warning)
