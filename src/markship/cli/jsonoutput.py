"""The --json rendering of every command's result: one JSON document on stdout (see
markship.cli.output, whose TextOutput it replaces method by method)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from markship.cli.formats import emit_json
from markship.cli.textoutput import TextOutput

if TYPE_CHECKING:
    from markship.backup.basebackup import SetResult
    from markship.backup.dumps import DumpRecord
    from markship.backup.dumps import RestoreResult as DumpRestoreResult
    from markship.backup.filesets import FilesetRecord
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


class JsonOutput(TextOutput):
    """One JSON document on stdout (keys sorted, times to the microsecond with zone: see
    formats.emit_json) for the --json commands."""

    def backup(self, result: SetResult) -> None:
        emit_json({"set": result.record.model_dump(),
                   "backups": {k: v.model_dump() for k, v in result.backups.items()}})

    def list_sets(self, states: list[SetState]) -> None:
        emit_json([{
            "id": s.record.id, "state": s.label, "complete": s.complete,
            "created_at": s.record.created_at, "finished_at": s.record.finished_at,
            "servers": s.record.servers, "problems": s.problems,
            "raw_bytes": sum(b.raw_size for b in s.backups.values()),
            "stored_bytes": sum(b.stored_size for b in s.backups.values()),
            "backups": {k: b.model_dump() for k, b in s.backups.items()},
        } for s in states])

    def status(self, status: GroupStatus) -> None:
        from markship.monitor.snapshot import status_json

        emit_json(status_json(status))

    def check(self, result: CheckResult) -> None:
        emit_json({"state": result.state, "exit_code": result.exit_code,
                   "checked_at": result.checked_at,
                   "findings": [asdict(f) for f in result.findings],
                   "perfdata": [{"label": p.label, "value": p.value, "unit": p.unit,
                                 "warning": p.thresholds[0], "critical": p.thresholds[1]}
                                for p in result.perfdata]})

    def verify(self, report: VerifyReport) -> None:
        emit_json(asdict(report) | {"ok": report.ok})

    def restore(self, server: str, target: Target, result: RestoreResult) -> None:
        shown = asdict(result)
        if result.target.mark is not None:  # a record, which asdict() leaves as it is
            shown["target"]["mark"] = result.target.mark.model_dump()
        emit_json(shown)

    def restore_paused(self, result: PausedResult) -> None:
        from markship.pg.conninfo import without_secrets

        emit_json(asdict(result) | {"conninfo": without_secrets(result.conninfo)})

    def restore_group(self, report: GroupRestoreReport, host: str) -> None:
        from markship.pg.conninfo import without_secrets

        shown = asdict(report)
        for info in shown["servers"].values():  # for a script to connect, less the secrets
            info["conninfo"] = without_secrets(info["conninfo"])
        emit_json(shown)

    def expire(self, result: Plan, dry_run: bool) -> None:
        emit_json(asdict(result) | {"dry_run": dry_run})

    def mark(self, result: MarkResult) -> None:
        from markship.marks.take import result_json

        emit_json(result_json(result, "command"))

    def marks(self, states: list[MarkState]) -> None:
        emit_json([s.record.model_dump() | {
            "complete": s.complete, "waiting_for": s.waiting_for,
            "unrestorable": s.unrestorable,
            "age_seconds": round(s.age_seconds, 3)} for s in states])

    def resolve(self, done: list[Resolution], dry_run: bool) -> None:
        emit_json([asdict(r) for r in done])

    def journal(self, found: list[JournalEntry]) -> None:
        emit_json([e.model_dump() for e in found])

    def journal_verify(self, result: Verification) -> None:
        emit_json({"entries": result.entries, "ok": result.ok, "problem": result.problem})

    def standby_status(self, result: list[StandbyStatus]) -> None:
        emit_json([asdict(s) for s in result])

    def failover(self, report: FailoverReport, dry_run: bool) -> None:
        emit_json({**asdict(report), "protected": report.protected})

    def checklist(self, steps: list[Step]) -> None:
        emit_json([asdict(s) for s in steps])

    def parity(self, report: ParityReport) -> None:
        emit_json({"ok": report.ok, "checks": [asdict(c) for c in report.checks]})

    def preflight(self, results: list[Check]) -> None:
        emit_json({"ok": not any(c.status == "fail" for c in results),
                   "checks": [c.as_dict() for c in results]})

    def drill(self, record: DrillRecord, repository: str) -> None:
        emit_json(record.model_dump())

    def drills(self, records: list[DrillRecord]) -> None:
        emit_json([r.model_dump() for r in records])

    def key_status(self, status: KeyStatus) -> None:
        emit_json(asdict(status))

    def dump_done(self, record: DumpRecord, seconds: float) -> None:
        """Nothing as it goes: dumps_run prints every dump at the end."""

    def dump_failed(self, name: str, problem: str) -> None:
        """Nothing as it goes: dumps_run names the failed dumps at the end."""

    def dumps_run(self, done: list[dict[str, object]], failed: list[str]) -> None:
        emit_json({"dumps": done, "failed": failed})

    def dumps_list(self, dumps: list[DumpRecord], name: str | None) -> None:
        emit_json([d.model_dump() for d in dumps])

    def dumps_restore(self, record: DumpRecord, result: DumpRestoreResult,
                      seconds: float) -> None:
        emit_json({"dump": record.model_dump(), "target": result.target,
                   "seconds": round(seconds, 3)})

    def files_capture(self, results: list[tuple[str, FilesetRecord | None]]) -> None:
        emit_json([{"name": name, "captured": record is not None,
                    "record": None if record is None else record.model_dump()}
                   for name, record in results])

    def files_list(self, records: list[FilesetRecord], name: str | None) -> None:
        emit_json([r.model_dump() for r in records])

    def repository_sync(self, results: list[SyncResult], failed: dict[str, str],
                        dry_run: bool) -> None:
        emit_json({"dry_run": dry_run, "failed": failed, "copies": [
            {"name": r.name, "copied_objects": r.copied_objects,
             "copied_bytes": r.copied_bytes, "refreshed_objects": r.refreshed_objects,
             "deleted_objects": r.deleted_objects, "returned_objects": r.returned_objects,
             "returned_bytes": r.returned_bytes, "conflicts": r.conflicts}
            for r in results]})

