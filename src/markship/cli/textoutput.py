"""What the commands print: one output method per command, for a person and for --json.

A command computes its result, then hands it to `writer(as_json)`: `TextOutput` prints lines and
tables for a person, `JsonOutput` (a TextOutput whose methods of --json commands print JSON
instead) prints one JSON document for scripts. Commands without --json have only the text form.
Warnings on stderr, exit codes and errors stay with the commands. The small formatting helpers
(JSON, sizes, tables) are in cli.formats.
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

import click

from markship.cli.formats import copy_lag, mark_text, size, table
from markship.timefmt import show

if TYPE_CHECKING:
    from markship.backup.basebackup import SetResult
    from markship.backup.dumps import DumpRecord
    from markship.backup.dumps import RestoreResult as DumpRestoreResult
    from markship.backup.filesets import FilesetRecord
    from markship.backup.filesets import RestoreResult as FilesRestoreResult
    from markship.backup.group_restore import GroupRestoreReport
    from markship.backup.paused import PausedResult
    from markship.backup.restore import RestoreResult
    from markship.backup.retention import Plan
    from markship.backup.targets import Target
    from markship.backup.verify import Report as VerifyReport
    from markship.dr.checklist import Step
    from markship.dr.drill import DrillRecord
    from markship.dr.failover import Report as FailoverReport
    from markship.dr.parity import ParityReport
    from markship.dr.preflightreport import Check
    from markship.dr.standby import StandbyStatus
    from markship.marks.choose import MarkState
    from markship.marks.resolve import Resolution
    from markship.marks.take import MarkResult
    from markship.monitor.check import CheckResult
    from markship.monitor.snapshot import GroupStatus
    from markship.repository.copies import SyncResult
    from markship.repository.journal import JournalEntry, Verification
    from markship.repository.keys import KeyStatus
    from markship.repository.restorable import SetState


class TextOutput:
    """Lines and tables for a person (times in UTC, with zone)."""

    # -- backups ----------------------------------------------------------------------------------

    def backup(self, result: SetResult) -> None:
        for name, rec in result.backups.items():
            ratio = rec.raw_size / rec.stored_size if rec.stored_size else 0
            seconds = (rec.finished_at - rec.started_at).total_seconds()
            spaces = (f", {len(rec.tablespaces)} tablespace"
                      f"{'s' if len(rec.tablespaces) > 1 else ''}" if rec.tablespaces else "")
            click.echo(f"✓ {name}: {size(rec.raw_size)} → {size(rec.stored_size)} "
                       f"({ratio:.1f}×) in {seconds:.1f} s{spaces}")
        click.echo(f"backup set {result.record.id} complete")

    def list_sets(self, states: list[SetState]) -> None:
        rows = []
        for s in states:
            raw = sum(b.raw_size for b in s.backups.values())
            stored = sum(b.stored_size for b in s.backups.values())
            rows.append([s.record.id, show(s.record.created_at), ", ".join(s.record.servers),
                         size(raw), size(stored), f"{raw / stored:.1f}×" if stored else "-",
                         s.label if s.complete else f"{s.label}: {'; '.join(s.problems)}"])
        if not rows:
            click.echo("no backup sets yet: run markship backup")
            return
        table("backup sets (times in UTC)", ["set", "created", "servers", "data", "stored",
                                             "ratio", "state"], rows)

    def status(self, status: GroupStatus) -> None:
        newest, repositories = status.newest, status.repositories
        rows = []
        for s in status.servers:
            failures = (f"{s.archiver_failed_count} (last {s.last_failed_wal} at "
                        f"{show(s.last_failed_at)})" if s.archiver_failed_count else "0")
            lag = (f"{size(s.archive_lag_bytes)} / {s.archive_lag_seconds:.0f} s"
                   if s.archive_lag_bytes is not None and s.archive_lag_seconds is not None
                   else size(s.archive_lag_bytes))
            rows.append([s.server, "up" if s.reachable else f"DOWN: {s.error}",
                         f"{s.last_backup_set or 'none'} ({show(s.last_backup_at)})",
                         f"{s.last_archived_wal or '-'} ({show(s.last_archived_at)})",
                         lag, failures if s.reachable else "-"])
        table("group status (times in UTC)", ["server", "state", "last backup",
                                              "last archived WAL", "archive lag", "failures"],
              rows)
        if newest is None:
            click.echo("latest complete mark: none (run markship mark)")
        else:
            click.echo(f"latest complete mark: {newest.record.name}, made "
                       f"{show(newest.record.created_at)}, {newest.age_seconds:.0f} s ago "
                       "(the group's current recovery point)")
        if len(repositories) > 1:  # with [[repository.copy]]
            table("repositories", ["name", "location", "mode", "state", "copy lag"],
                  [[r.name, r.location, r.mode,
                    "DOWN" if not r.reachable else "up" if r.marked else
                    "empty (no backup yet)" if r.mode == "primary" else "not synced yet",
                    copy_lag(r.mode, r.lag_objects, r.lag_bytes, r.lag_seconds)
                    + (f"; owes the repository {r.owed_objects} objects" if r.owed_objects
                       else "")]
                   for r in repositories])
        if status.key_warning:
            click.echo(f"markship: warning: {status.key_warning}", err=True)
        for problem in status.problems:
            click.echo(f"✗ {problem.text}")
        for gap in status.gaps:
            if gap.healed_by is not None:  # the unhealed ones are among the problems
                click.echo(f"! {gap.text()}")

    def check(self, result: CheckResult) -> None:
        table(f"markship check at {show(result.checked_at)}",
              ["check", "about", "state", "value", "detail"],
              [[f.check, f.subject, f.state.upper(), f.value,
                f.detail if f.state != "ok" or f.check in ("rpo", "backup") else ""]
               for f in result.findings])
        click.echo(f"{result.state.upper()} (exit {result.exit_code})")

    def verify(self, report: VerifyReport) -> None:
        click.echo(f"checked {report.objects_checked} objects ({size(report.bytes_checked)})")
        for line in report.problems:
            click.echo(f"✗ {line}")
        for problem in report.damaged_records.values():
            click.echo(f"✗ damaged record: {problem}: {report.damaged_fix}")
        for sid, reasons in report.unrestorable_sets.items():
            click.echo(f"✗ backup set {sid} is not restorable: {'; '.join(reasons)}")
        for sid, reasons in report.incomplete_sets.items():
            click.echo(f"- backup set {sid} is incomplete and ignored: {'; '.join(reasons)}")
        for line in report.known_gaps:
            click.echo(f"! {line}")
        for key in report.temp_objects:
            state = "removed" if key in report.removed_temp else "left by a dead writer"
            click.echo(f"! partly written object {key} ({state}; never used as data)")
        if report.ok and report.known_gaps:
            click.echo("✓ every object matches its checksum and the WAL is continuous but for "
                       "the gap(s) pg_wal protection recorded (above)")
        elif report.ok:
            click.echo("✓ every object matches its checksum and the WAL is continuous")

    def restore(self, server: str, target: Target, result: RestoreResult) -> None:
        from markship.pg.datadir import START_BY_HAND

        done = {"promote": "started and promoted",
                "pause": "started and paused there, read-only (markship restore --resume "
                         "promotes it, --advance-to moves it on)",
                "shutdown": "started and shut down there"}[target.action]
        state = done if result.started else f"ready to start ({START_BY_HAND})"
        click.echo(f"✓ {server} restored from backup set {result.set_id} into "
                   f"{result.target_dir}, recovering to {target.describe()}; {state} in "
                   f"{result.seconds:.1f} s")
        for name, directory in result.tablespaces.items():
            click.echo(f"  tablespace {name} in {directory}")
        if result.stopped_at:
            click.echo(f"  recovery stopped {result.stopped_at}")

    def restore_paused(self, result: PausedResult) -> None:
        where = f" at {result.lsn}" if result.lsn else ""
        click.echo(f"✓ {result.server} in {result.target_dir} {result.done}{where} "
                   f"({result.target}) in {result.seconds:.1f} s")
        if result.stopped_at:
            click.echo(f"  recovery stopped {result.stopped_at}")

    def restore_group(self, report: GroupRestoreReport, host: str) -> None:
        for name, info in report.servers.items():
            place = f" on {host}:{info['port']}" if host and "port" in info else ""
            click.echo(f"  {name}: {info['data_dir']}{place}, at {info['mark_lsn']}")
        for r in report.resolutions:
            click.echo(f"  {r.server}/{r.database}: {r.action} prepared transaction {r.gid}")
        state = {"promote": "restored to", "pause": "restored and paused, read-only, at",
                 "shutdown": "restored and shut down at", "resumed": "promoted at"}
        click.echo(f"✓ group {state[report.action]} mark {report.mark} in "
                   f"{report.seconds:.1f} s")
        if report.action == "pause":
            click.echo("  prepared transactions are settled on markship restore --group "
                       "--resume")

    def expire(self, result: Plan, dry_run: bool) -> None:
        verb = "would delete" if dry_run else "deleted"
        for sid, why in result.keep_sets.items():
            click.echo(f"keep   set {sid}: {why}")
        for sid, why in result.delete_sets.items():
            click.echo(f"{verb} set {sid}: {why}")
        if result.wal_kept:
            click.echo(f"keep   all WAL: {result.wal_kept}")
        for server, count in result.delete_wal.items():
            click.echo(f"{verb} {count} WAL file(s) of {server} older than its oldest kept "
                       "backup")
        if result.delete_captures or result.delete_dumps:
            click.echo(f"{verb} {len(result.delete_captures)} file set capture(s) and "
                       f"{len(result.delete_dumps)} dump(s) older than the window")
        if result.delete_marks:
            click.echo(f"{verb} {len(result.delete_marks)} mark(s) older than "
                       f"{show(result.cutoff)} or than the oldest kept set")
        if result.delete_gaps:
            click.echo(f"{verb} {len(result.delete_gaps)} WAL gap record(s) older than the "
                       "oldest kept backup of their server")
        click.echo(f"{verb} {len(result.delete_keys)} object(s), {size(result.freed_bytes)}")

    # -- marks ------------------------------------------------------------------------------------

    def mark(self, result: MarkResult) -> None:
        from markship.marks.take import result_line

        click.echo(result_line(result))

    def marks(self, states: list[MarkState]) -> None:
        from markship.pg.lsn import format_lsn

        if not states:
            click.echo("no marks yet: run markship mark")
            return
        rows = [[s.record.name, show(s.record.created_at), f"{s.age_seconds:.0f} s",
                 "complete" if s.complete else
                 "not restorable: WAL of " + ", ".join(sorted(s.unrestorable)) + " dropped"
                 if s.unrestorable else "waiting for " + ", ".join(
                     f"{k}:{v}" for k, v in s.waiting_for.items()),
                 ", ".join(f"{k} {format_lsn(p.lsn)}" for k, p in s.record.points.items()),
                 f"{s.record.barrier_hold_ms:.1f} ms"] for s in states]
        table("group marks (times in UTC)", ["mark", "made", "age", "state", "LSN per server",
                                             "barrier held"], rows)

    def resolve(self, done: list[Resolution], dry_run: bool) -> None:
        for r in done:
            verb = ("would " if dry_run else "") + ("commit" if r.action == "commit"
                                                    else "roll back")
            click.echo(f"{r.server}/{r.database}: {verb} {r.gid}")
        click.echo(f"{len(done)} prepared transaction(s) {'to settle' if dry_run else 'settled'}")

    # -- journal ----------------------------------------------------------------------------------

    def journal(self, found: list[JournalEntry]) -> None:
        for entry in found:
            objects = " ".join(f"{k}={v}" for k, v in entry.objects.items())
            click.echo(f"{entry.seq:>6} {show(entry.time)} {entry.user}@{entry.host} "
                       f"{entry.command}: {entry.outcome}{'  ' + objects if objects else ''}")
            if entry.diff:
                for line in entry.diff.splitlines():
                    click.echo(f"         {line}")

    def journal_verify(self, result: Verification) -> None:
        if result.ok:
            click.echo(f"✓ journal intact: {result.entries} entries, chain unbroken")

    # -- DR site ----------------------------------------------------------------------------------

    def standby_status(self, result: list[StandbyStatus]) -> None:
        from markship.dr.standby import REPLAY_ESTIMATE_BYTES_PER_SECOND as RATE
        from markship.pg.lsn import format_lsn

        rows = [[s.server, s.address, ("standby" if s.in_recovery else "PRIMARY")
                 if s.reachable else f"DOWN: {s.error}",
                 format_lsn(s.replay_lsn) if s.replay_lsn is not None else "-",
                 s.at_mark or "-", _behind(s),
                 "-" if s.lag_seconds is None else f"{s.lag_seconds:.0f} s",
                 "ok" if not s.parity else "; ".join(s.parity)] for s in result]
        table("DR site", ["server", "standby", "state", "replayed", "at mark", "marks behind",
                          "mark age", "parity"], rows)
        # What a failover would do, one line per standby: the table has no room for it.
        for s in result:
            if not s.reachable:
                continue
            if s.reachable_mark is None or s.to_mark_bytes is None:
                click.echo(f"{s.server}: no complete mark to fail over to; "
                           f"{size(s.to_newest_wal_bytes)} of WAL up to the newest held")
                continue
            seconds = s.failover_seconds_estimate or 0.0
            took = f"about {seconds:.0f} s" if seconds >= 1 else "under 1 s"
            click.echo(f"{s.server}: failover reaches mark {s.reachable_mark}: "
                       f"{size(s.to_mark_bytes)} of WAL to fetch and replay ({took}), "
                       f"{size(s.to_newest_wal_bytes)} up to the newest WAL held")
        if any(s.failover_seconds_estimate is not None for s in result):
            click.echo(f"(times: WAL to replay at {size(RATE)}/s, an assumed rate, not "
                       "measured; the restart and promotion come on top)")

    def failover(self, report: FailoverReport, dry_run: bool) -> None:
        from markship.timefmt import age_seconds

        head = "would fail over" if dry_run else ("resumed failover" if report.resumed
                                                 else "failed over")
        age = f"{age_seconds(report.mark_time):.0f} s ago" if dry_run else "before the failover"
        click.echo(f"{head} to mark {report.mark} (made {show(report.mark_time)}, {age})")
        for server, lsn in report.points.items():
            loss = report.lost.get(server)
            if loss is None:
                click.echo(f"  {server}: mark at {lsn}")
                continue
            verb = "discarded" if dry_run else "was discarded"
            if loss.lost_bytes == 0 and loss.lost_until is None:
                click.echo(f"  {server} ({loss.address}): mark at {lsn}; the repository holds "
                           "no WAL after it")
                continue
            later = f"{loss.later_marks} later mark{'s' if loss.later_marks != 1 else ''}"
            amount = (f"{size(loss.lost_bytes)} of WAL" if loss.lost_bytes
                      else "WAL (its size unknown)")
            click.echo(f"  {server} ({loss.address}): mark at {lsn}; {amount} after it, up to "
                       f"{show(loss.lost_until)} ({later}) — {verb}")
        for note in report.notes:
            click.echo(f"  note: {note}")
        if dry_run:
            click.echo(f"RPO {report.rpo_seconds:.1f} s: from the mark to the newest WAL or "
                       "mark the repository holds after it")
            return
        for r in report.resolutions:
            click.echo(f"  {r.server}/{r.database}: {r.action} prepared transaction {r.gid}")
        for line in report.references + [f"wrote {f}" for f in report.client_files] + \
                [f"hook ran: {h}" for h in report.hooks]:
            click.echo(f"  {line}")
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.phases.items())
        click.echo(f"✓ group promoted at {report.mark}: RTO {report.rto_seconds:.1f} s "
                   f"({phases}); RPO {report.rpo_seconds:.1f} s")
        archived = [a for a in report.archiving if a.ok]
        if archived:
            click.echo("✓ archiving into the repository on the new timeline: "
                       + ", ".join(a.line() for a in archived))
        failing: dict[str, list[str]] = {}
        for a in report.archiving:
            if not a.ok:
                failing.setdefault(a.problem or "unknown", []).append(f"{a.server} ({a.place})")
        for problem, where in failing.items():
            click.echo(f"✗ not protected: {', '.join(where)} cannot archive ({problem}); "
                       "PostgreSQL keeps the WAL in pg_wal and retries: fix it, then markship "
                       "checklist")
        config = shlex.quote(report.new_config)
        click.echo(f"site {report.site} is production now; site {report.rebuild_site} is the "
                   f"site to rebuild. Role-swapped config: {report.new_config}")
        click.echo(f"next: markship --config {config} run   (the agent: marks resume; an agent "
                   "already running on this host with the old config switches to it by itself)")
        click.echo(f"then: markship --config {config} failback prepare   (rebuild site "
                   f"{report.rebuild_site} as standbys)")

    def checklist(self, steps: list[Step]) -> None:
        from markship.dr.checklist import MISSING

        phase = ""
        for step in steps:
            if step.phase != phase:
                phase = step.phase
                click.echo("Backing up" if phase == "backup" else "\nRestoring")
            fix = f"  → {step.fix}" if step.state == MISSING and step.fix else ""
            click.echo(f"  {step.state} {step.title}: {step.evidence}{fix}")

    def parity(self, report: ParityReport) -> None:
        for c in report.checks:
            sign = "✓" if c.ok else ("!" if c.warning else "✗")
            tail = f" — {c.fix}" if not c.ok and c.fix else ""
            click.echo(f"{sign} {c.server}: {c.what}: {c.detail}{tail}")

    def preflight(self, results: list[Check]) -> None:
        for check in results:
            click.echo(check.line())

    def drill(self, record: DrillRecord, repository: str) -> None:
        for name, server in record.servers.items():
            state = ("did NOT come up" if not server.restored else "restored and promoted"
                     if record.error else "restored, promoted, open")
            click.echo(f"{'✓' if server.restored else '✗'} {name} on 127.0.0.1:{server.port}: "
                       f"{state}")
        for r in record.resolved:
            click.echo(f"  settled {r.server}/{r.database}: {r.action} prepared transaction "
                       f"{r.gid}")
        if not record.resolved and record.error is None:
            click.echo("  no prepared transactions were in doubt at the mark")
        for c in record.checks:
            click.echo(f"{'✓' if c.ok else '✗'} {c.file}:{c.line} {c.check} → {c.result}")
        if not record.checks and record.error is None:
            click.echo("  no checks given (--check-sql FILE)")
        for problem in record.cleanup_problems:
            click.echo(f"✗ cleanup: {problem}")
        rto = "-" if record.rto_seconds is None else f"{record.rto_seconds:.1f} s"
        click.echo(f"RTO {rto} (start → every server open), RPO {record.rpo_seconds:.1f} s "
                   f"(age of mark {record.mark} at the start)")
        click.echo(f"report: drills/{record.id}.md and .json in the repository {repository}")

    def drills(self, records: list[DrillRecord]) -> None:
        if not records:
            click.echo("no drills in the repository (markship drill runs one)")
            return
        rows = []
        for r in records:
            passed = sum(1 for c in r.checks if c.ok)
            rows.append([r.id, show(r.started_at), r.mark,
                         "-" if r.rto_seconds is None else f"{r.rto_seconds:.1f} s",
                         f"{r.rpo_seconds:.1f} s", f"{passed}/{len(r.checks)}",
                         "✓ ok" if r.ok else "✗ failed"])
        table("recovery drills (times in UTC)",
              ["drill", "started", "mark", "RTO", "RPO", "checks", "result"], rows)

    # -- keys, dumps, file sets -------------------------------------------------------------------

    def key_status(self, status: KeyStatus) -> None:
        if not status.encrypted:
            click.echo("— the repository is not encrypted (no [encryption] in the config)")
            return
        click.echo(f"key fingerprint {status.fingerprint}")
        if status.identity_file is None:
            click.echo("  no identity_file here: this host can write but not read backups")
        elif status.problem is None:
            click.echo(f"✓ identity file {status.identity_file} opens it (mode 0600)")
        if status.backup_recorded_at is not None:
            click.echo(f"✓ key backup (export) recorded {show(status.backup_recorded_at)}")
        else:
            click.echo("✗ no backup of this key recorded: run markship key export --to FILE")
        if status.catalog_fingerprint is not None:
            where = (f"file {status.catalog_key_file}" if status.catalog_key_file
                     else "the repository's copy")
            click.echo(f"✓ catalog key {status.catalog_fingerprint} ({where}): records are "
                       "encrypted to it too, so production hosts can read the catalog")
        elif status.problem is None:
            click.echo("— no catalog key: only hosts with the identity can read the catalog; "
                       "for production hosts run markship key catalog --to FILE")

    def dump_done(self, record: DumpRecord, seconds: float) -> None:
        """One dump of `dumps run` finished (printed as it goes)."""
        mark = f", mark {record.mark}" if record.mark else ", no complete mark yet"
        click.echo(f"✓ {record.name}: {size(record.raw_size)} → "
                   f"{size(record.archive.size)} in {seconds:.1f} s "
                   f"(dump {record.id}{mark})")

    def dump_failed(self, name: str, problem: str) -> None:
        """One dump of `dumps run` failed (printed as it goes, on stderr)."""
        click.echo(f"✗ {name}: {problem}", err=True)

    def dumps_run(self, done: list[dict[str, object]], failed: list[str]) -> None:
        """All dumps of `dumps run` done: each had its line already."""

    def dumps_list(self, dumps: list[DumpRecord], name: str | None) -> None:
        if not dumps:
            click.echo("no dumps" + (f" of {name}" if name else "") + " in the repository")
            return
        rows = [[d.name, d.id, show(d.created_at), f"{d.server}/{d.database}", d.mark or "-",
                 f"{size(d.raw_size)} → {size(d.archive.size)}"] for d in dumps]
        table("Dumps", ["name", "id", "time", "server/database", "mark", "size"], rows)

    def dumps_restore(self, record: DumpRecord, result: DumpRestoreResult,
                      seconds: float) -> None:
        mark = f", mark {record.mark}" if record.mark else ""
        click.echo(f"✓ dump {record.name} {record.id} (taken {show(record.created_at)}{mark}) "
                   f"restored into {result.target} in {seconds:.1f} s")

    def files_capture(self, results: list[tuple[str, FilesetRecord | None]]) -> None:
        for name, record in results:
            if record is None:
                click.echo(f"= {name}: unchanged since its newest capture, nothing stored")
                continue
            click.echo(f"✓ {name}: {record.files} files, {record.dirs} directories, "
                       f"{record.links} links, {size(record.total_bytes)} → "
                       f"{size(record.archive.size)} stored; capture {record.id}, "
                       f"mark {mark_text(record)}")
            for path in record.skipped:
                click.echo(f"  skipped {path} (not a file, directory or link)")

    def files_list(self, records: list[FilesetRecord], name: str | None) -> None:
        if not records:
            which = f"file set {name}" if name else "any file set"
            click.echo(f"no captures of {which} yet: run markship files capture")
            return
        rows = [[r.name, r.id, show(r.created_at), mark_text(r), str(r.files),
                 size(r.total_bytes), r.content_sha256[:12]] for r in records]
        table("file set captures (times in UTC; --json adds reasons and stored sizes)",
              ["file set", "capture", "created", "mark", "files", "size", "content"], rows)

    def files_restore(self, name: str, record: FilesetRecord,
                      result: FilesRestoreResult) -> None:
        click.echo(f"✓ file set {name}: capture {record.id} ({show(record.created_at)}, mark "
                   f"{mark_text(record)}) restored into {result.target_dir}")
        click.echo(f"  {result.files} files ({size(result.total_bytes)}), {result.dirs} "
                   f"directories, {result.links} links")
        for root in record.roots:
            click.echo(f"  {root} → {result.target_dir / root.lstrip('/')}")
        if result.narrowed:
            shown = ", ".join(result.narrowed[:3]) + (" …" if len(result.narrowed) > 3 else "")
            click.echo(f"  {len(result.narrowed)} restored without set-id, sticky or group/other "
                       f"write bits ({shown}): set them again by hand where they are wanted")
        if os.geteuid() != 0:
            click.echo("  owners: kept only where this user may set them (run as root to "
                       "restore every owner)")


    def repository_sync(self, results: list[SyncResult], failed: dict[str, str],
                        dry_run: bool) -> None:
        for r in results:
            if dry_run:
                click.echo(f"copy {r.name}: {r.copied_objects} objects ({size(r.copied_bytes)}) "
                           f"to copy, {r.returned_objects} owed back to the repository")
                continue
            if r.returned_objects:
                click.echo(f"✓ copy {r.name}: brought back {r.returned_objects} objects "
                           f"({size(r.returned_bytes)}) written to it while the repository "
                           "was gone")
            for line in r.conflicts:
                click.echo(f"✗ {line}")
            click.echo(f"✓ copy {r.name}: copied {r.copied_objects} objects "
                       f"({size(r.copied_bytes)}), {r.refreshed_objects} records again, "
                       f"deleted {r.deleted_objects} expired")
        for name, problem in failed.items():
            click.echo(f"✗ copy {name}: {problem}")


def _behind(status: StandbyStatus) -> str:
    """The standby's "marks behind" cell: "no mark yet" when it has none to be behind of."""
    if status.marks_behind is not None:
        return str(status.marks_behind)
    return "no mark yet" if status.reachable else "-"
