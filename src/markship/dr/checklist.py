"""`markship checklist`: every step of a disaster-recovery checklist, proven live.

Each step says ✓ (done, with the evidence), ✗ (not done: the command that fixes it) or —
(not used by this group). Required steps that are ✗ make the command exit non-zero. The steps
follow the reference checklist's order (backing up, then restoring), in markship's own terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from markship.config.model import Config
from markship.dr.standby import StandbyStatus, standby_status
from markship.errors import MarkshipError
from markship.pg import sql as postgres
from markship.pg import twophase
from markship.repository import catalog, crypto, journal, restorable
from markship.repository.base import Repository
from markship.timefmt import age_seconds, show, utcnow

DONE, MISSING, UNUSED = "✓", "✗", "—"


@dataclass(frozen=True)
class Step:
    phase: str  # "backup" or "restore"
    title: str
    state: str  # DONE, MISSING or UNUSED
    evidence: str
    fix: str = ""


def _ago(when: datetime | None) -> str:
    seconds = age_seconds(when) if when else None
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


class _Facts:
    """What several steps look at, gathered once (each piece may fail on its own)."""

    def __init__(self, config: Config, repo: Repository) -> None:
        from markship.marks.choose import newest_complete

        self.config = config
        self.repo = repo
        self.newest_mark = newest_complete(repo, config)
        wal: dict[str, restorable.WalIndex] = {}
        states = [restorable.set_state(repo, r, wal) for r in catalog.list_sets(repo)]
        complete = [s for s in states if s.complete]
        self.newest_set = complete[-1] if complete else None
        self._standbys: list[StandbyStatus] | None = None

    def standbys(self) -> list[StandbyStatus]:
        if self._standbys is None:
            self._standbys = (standby_status(self.config, self.repo)
                              if self.config.dr_site else [])
        return self._standbys


def _journal(f: _Facts) -> Step:
    title = "Keep a written record of every change"
    result = journal.verify(f.repo)
    if not result.ok:
        return Step("backup", title, MISSING, f"journal broken: {result.problem}",
                    "markship journal verify; compare with the DR site's copy")
    if result.entries == 0:
        return Step("backup", title, MISSING, "the journal is empty",
                    "run markship through its commands (backup, mark…): each is recorded")
    last = journal.last_entry(f.repo)
    return Step("backup", title, DONE, f"{result.entries} journal entries, chain intact, last "
                f"{_ago(last.time if last else None)}")


def _permissions(f: _Facts) -> Step:
    from markship.dr import preflight

    title = "Have exactly the rights to back up and restore"
    checks = preflight.run_checks(f.config, list(f.config.servers))
    failed = [c for c in checks if c.status == "fail"]
    warned = [c for c in checks if c.status == "warn"]
    if failed:
        return Step("backup", title, MISSING, f"{len(failed)} preflight check(s) fail, first: "
                    f"{failed[0].line()}", "markship preflight (and --print-role-sql)")
    note = f"; {len(warned)} warning(s), e.g. {warned[0].message}" if warned else ""
    return Step("backup", title, DONE, f"preflight: {len(checks)} checks pass{note}")


def _repository(f: _Facts) -> Step:
    title = "Store backups and WAL where they survive the primary site"
    try:
        f.repo.check_writable()
    except MarkshipError as exc:
        return Step("backup", title, MISSING, exc.message, "markship config check")
    return Step("backup", title, DONE, f"repository {f.repo.location} is writable")


def _parity(f: _Facts) -> Step:
    from markship.dr.parity import parity

    title = "Standby servers match production in count and capacity"
    if f.config.dr_site is None or not f.config.dr_site.standbys:
        return Step("backup", title, MISSING, "no [dr_site] standbys configured",
                    "describe one [[dr_site.standby]] per server, then markship parity")
    report = parity(f.config)
    bad = [c for c in report.checks if not c.ok and not c.warning]
    if bad:
        return Step("backup", title, MISSING, f"{bad[0].server}: {bad[0].what}: {bad[0].detail}",
                    "markship parity")
    return Step("backup", title, DONE, f"{len(f.config.dr_site.standbys)}/"
                f"{len(f.config.servers)} standbys, parity ok")


def _dr_site(f: _Facts) -> Step:
    title = "Prepare the disaster recovery site"
    if f.config.dr_site is None or not f.config.dr_site.standbys:
        return Step("backup", title, MISSING, "no standbys", "markship standby create")
    states = f.standbys()
    up = [s for s in states if s.reachable and s.in_recovery]
    if len(up) < len(f.config.servers):
        return Step("backup", title, MISSING, f"{len(up)}/{len(f.config.servers)} standbys "
                    "running in recovery", "markship standby create; markship standby status")
    return Step("backup", title, DONE, f"{len(up)}/{len(up)} standbys in continuous recovery")


def _backups(f: _Facts) -> Step:
    title = "Back up every database, and prove a restore works"
    if f.newest_set is None:
        return Step("backup", title, MISSING, "no complete backup set", "markship backup")
    from markship.dr import drill

    drills = drill.list_drills(f.repo)
    good = [d for d in drills if d.ok]
    newest = f.newest_set.record
    evidence = f"backup set {newest.id} complete ({_ago(newest.created_at)})"
    if not good:
        return Step("backup", title, MISSING, evidence + "; no successful recovery drill",
                    "markship drill --check-sql FILE")
    last = good[-1]
    return Step("backup", title, DONE, evidence + f"; last drill ok {_ago(last.finished_at)} "
                f"(RTO {last.rto_seconds or 0:.1f} s)")


def _archiving(f: _Facts) -> Step:
    from markship.backup.status import group_status

    title = "Ship the WAL (log shipping) continuously"
    result = group_status(f.config, f.repo)
    bad = [s for s in result if not s.reachable or s.last_archived_wal is None
           or (s.last_failed_at is not None and (s.last_archived_at is None
                                                 or s.last_failed_at > s.last_archived_at))]
    if bad:
        return Step("backup", title, MISSING, f"server {bad[0].server} is not archiving "
                    f"({bad[0].error or 'archiver failing or nothing archived'})",
                    "markship status; markship preflight")
    lag = max((s.archive_lag_seconds or 0.0) for s in result)
    return Step("backup", title, DONE, f"{len(result)} servers archiving, lag ≤ {lag:.0f} s")


def _wal_kept(f: _Facts) -> Step:
    title = "Keep the WAL unbroken, or know where it is not (pg_wal protection)"
    states = restorable.Gaps(f.repo).states()
    unhealed = [g for g in states if g.healed_by is None]
    limit = f.config.repository.archive_queue_max
    if unhealed:
        more = f" (and {len(unhealed) - 1} more gap(s))" if len(unhealed) > 1 else ""
        return Step("backup", title, MISSING, unhealed[0].text() + more,
                    "markship backup (the agent takes one as soon as the repository can be "
                    "written)")
    if states:
        return Step("backup", title, DONE, f"{len(states)} past gap(s), each followed by a "
                    f"full backup; the newest: {states[-1].text()}")
    if limit is None:
        return Step("backup", title, UNUSED, "archive_queue_max is not set: WAL is never "
                    "dropped, pg_wal grows while the repository cannot be written")
    return Step("backup", title, DONE, f"no WAL dropped; while the repository cannot be "
                f"written pg_wal keeps at most {limit.human_readable()} waiting")


def _agent(f: _Facts) -> Step:
    title = "Run the backup job (marks, schedule, retention)"
    limit = 3 * f.config.marks.interval + 30
    mark = f.newest_mark
    if mark is None:
        return Step("backup", title, MISSING, "no complete mark", "markship run (the agent)")
    if mark.age_seconds > limit:
        return Step("backup", title, MISSING, f"last complete mark {mark.age_seconds:.0f} s ago "
                    f"(interval {f.config.marks.interval:g} s): the agent is not marking",
                    "start markship run (see contrib/markship@.service)")
    return Step("backup", title, DONE, f"last complete mark {mark.age_seconds:.0f} s ago")


def _standby_feed(f: _Facts) -> Step:
    title = "Feed the DR site from the repository"
    states = f.standbys()
    if not states:
        return Step("backup", title, MISSING, "no standbys", "markship standby create")
    behind = [s.marks_behind for s in states]
    if any(b is None for b in behind):
        return Step("backup", title, MISSING, "a standby is unreachable or has no mark yet",
                    "markship standby status")
    worst = max(b for b in behind if b is not None)
    return Step("backup", title, DONE, f"standbys at most {worst} mark(s) behind")


def _dumps(f: _Facts) -> Step:
    title = "Save the stores WAL shipping does not cover (logical dumps)"
    if not f.config.dumps:
        return Step("backup", title, UNUSED, "no [[dump]] configured")
    from markship.backup import dumps

    for dump in f.config.dumps:
        if not dumps.list_dumps(f.repo, dump.dump_name):
            return Step("backup", title, MISSING, f"no dump of {dump.dump_name} yet",
                        f"markship dumps run --dump {dump.dump_name}")
        if dumps.dump_due(f.config, f.repo, dump, utcnow()):
            return Step("backup", title, MISSING, f"dump {dump.dump_name} is overdue",
                        "markship run (the agent runs dumps on their schedule)")
    return Step("backup", title, DONE, f"{len(f.config.dumps)} dump(s) current")


def _filesets(f: _Facts) -> Step:
    title = "Capture application and portal configuration (file sets)"
    if not f.config.filesets:
        return Step("backup", title, UNUSED, "no [[fileset]] configured")
    from markship.backup import filesets

    for fileset in f.config.filesets:
        records = filesets.list_records(f.repo, fileset.name)
        if not records:
            return Step("backup", title, MISSING, f"file set {fileset.name} never captured",
                        f"markship files capture --set {fileset.name}")
    return Step("backup", title, DONE, f"{len(f.config.filesets)} file set(s) captured")


def _config_file(f: _Facts) -> Step:
    title = "Back up the configuration files"
    if f.newest_set is None or f.newest_set.record.config_file is None:
        return Step("backup", title, MISSING, "no backup set holds the config file yet",
                    "markship backup")
    return Step("backup", title, DONE, f"markship config and server configs in set "
                f"{f.newest_set.record.id}")


def _key_backup(f: _Facts) -> Step:
    from markship.repository.keys import exports

    title = "Back up the master secret (the repository key)"
    if f.config.encryption is None:
        return Step("backup", title, UNUSED, "the repository is not encrypted")
    current = crypto.fingerprint(f.config.encryption.recipient)
    done = [e for e in exports(f.repo) if current in e.fingerprints]
    if not done:
        return Step("backup", title, MISSING, f"key {current} has no recorded backup",
                    "markship key export --to FILE --hint TEXT")
    return Step("backup", title, DONE, f"key {current} exported {show(done[-1].created_at)}")


def _failover_target(f: _Facts) -> Step:
    title = "Restore the group to one mark"
    if f.newest_mark is None:
        return Step("restore", title, MISSING, "no complete mark to fail over to",
                    "markship mark (or run the agent)")
    return Step("restore", title, DONE, f"failover would use mark {f.newest_mark.record.name} "
                f"({f.newest_mark.age_seconds:.0f} s old): markship failover --dry-run")


def _clients(f: _Facts) -> Step:
    title = "Point the application hosts at the new servers"
    clients = f.config.failover.clients
    written = [p for p in (clients.pg_service, clients.env, clients.json_file) if p]
    if not written and not f.config.failover.hooks:
        return Step("restore", title, MISSING, "failover writes no client settings and runs "
                    "no hook", "add [failover.clients] (pg_service, env or json) or a hook")
    return Step("restore", title, DONE, f"{len(written)} client file(s), "
                f"{len(f.config.failover.hooks)} hook(s) after failover")


def _portal(f: _Facts) -> Step:
    title = "Recover portal and application configuration"
    if not f.config.filesets and not f.config.dumps:
        return Step("restore", title, UNUSED, "no file sets or dumps configured")
    return Step("restore", title, DONE, "markship files restore / dumps restore, by mark")


def _key_restore(f: _Facts) -> Step:
    from markship.repository.keys import key_status

    title = "Restore the master secret first"
    if f.config.encryption is None:
        return Step("restore", title, UNUSED, "the repository is not encrypted")
    status = key_status(f.config, f.repo)
    if not status.identity_ok:
        return Step("restore", title, MISSING, status.problem or "no identity file here",
                    "markship key import --from FILE")
    return Step("restore", title, DONE, f"identity file {status.identity_file} opens key "
                f"{status.fingerprint}")


def _databases(f: _Facts) -> Step:
    title = "Restore the databases"
    states = f.standbys()
    if states and all(s.reachable for s in states):
        return Step("restore", title, DONE, "standbys ready to promote to the mark")
    if f.newest_set is not None:
        return Step("restore", title, DONE, f"from backup set {f.newest_set.record.id}: "
                    "markship restore --group")
    return Step("restore", title, MISSING, "neither standbys nor a complete backup set",
                "markship backup; markship standby create")


def _references(f: _Facts) -> Step:
    title = "Update references between servers"
    if not f.config.failover.sql:
        return Step("restore", title, UNUSED, "no [[failover.sql]] reference updates declared")
    return Step("restore", title, DONE, f"{len(f.config.failover.sql)} reference update(s) "
                "run after failover")


def _in_doubt(f: _Facts) -> Step:
    title = "Resolve incomplete (in-doubt) transactions"
    barrier = f.config.barrier_server
    try:
        with postgres.connect(barrier.conninfo, barrier.name, timeout=3) as conn:
            setup = twophase.two_phase_setup(conn)
    except MarkshipError as exc:
        return Step("restore", title, MISSING, exc.message, "markship status")
    if setup is None or (not setup.decision_table and setup.max_prepared == 0):
        return Step("restore", title, UNUSED, "no two-phase commit in use")
    if not setup.decision_table:
        return Step("restore", title, MISSING, "prepared transactions are enabled but there "
                    "is no decision table", "markship client-sql (create markship.decisions)")
    return Step("restore", title, DONE, f"decisions recorded on {barrier.name}: settled at "
                "failover")


STEPS: list[Callable[[_Facts], Step]] = [
    _journal, _permissions, _repository, _parity, _dr_site, _backups, _archiving, _wal_kept,
    _agent,
    _standby_feed, _dumps, _filesets, _config_file, _key_backup,
    _failover_target, _clients, _portal, _key_restore, _databases, _references, _in_doubt,
]


def checklist(config: Config, repo: Repository) -> list[Step]:
    facts = _Facts(config, repo)
    steps = []
    for build in STEPS:
        try:
            steps.append(build(facts))
        except MarkshipError as exc:
            name = build.__name__.strip("_").replace("_", " ")
            steps.append(Step("backup", name, MISSING, f"could not check: {exc.message}",
                              exc.hint))
    return steps
