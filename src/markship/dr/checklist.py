"""`markship checklist`: every step of a disaster-recovery checklist, proven live.

Each step says ✓ (done, with the evidence), ✗ (not done: the command that fixes it) or —
(not used by this group). Required steps that are ✗ make the command exit non-zero. The steps
follow the reference checklist's order (backing up, then restoring), in markship's own terms.

Evidence comes from the servers in the role they have now, not the one the config gives them:
a DR-site server that is not in recovery is no standby, a configured server in recovery is no
primary. "The agent runs" means a live holder of the agent lock, and only marks made after the
last finished failover count (the ones before it describe a group that is gone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from markship import perserver
from markship.config.model import Config, ServerSection
from markship.dr import sites
from markship.dr.history import newest_done
from markship.dr.standby import StandbyStatus, standby_status
from markship.errors import MarkshipError
from markship.pg import sql as postgres
from markship.pg import twophase
from markship.pg.conninfo import address
from markship.repository import catalog, crypto, journal, restorable
from markship.repository.base import Repository
from markship.timefmt import age_seconds, show, utcnow

DONE, MISSING, UNUSED = "✓", "✗", "—"

REBUILD = ("markship failback prepare (rebuilds the old site as standbys), or markship standby "
           "create")


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
        self.failover = newest_done(repo)
        newest = newest_complete(repo, config)
        # A mark made before the last failover belongs to the group as it was: no failover
        # or restore from now on should land there.
        before = (newest is not None and self.failover is not None
                  and newest.record.created_at <= self.failover.started_at)
        self.newest_mark = None if before else newest
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

    def in_recovery(self) -> list[StandbyStatus]:
        """The DR-site servers that are standbys now: answering and in recovery."""
        return [s for s in self.standbys() if s.reachable and s.in_recovery]

    def dr_primaries(self) -> list[StandbyStatus]:
        """DR-site servers that answer as primaries (promoted, or never a standby)."""
        return [s for s in self.standbys() if s.reachable and s.in_recovery is False]

    def servers_in_recovery(self) -> list[ServerSection]:
        """Configured servers that answer but are in recovery: standbys, not primaries."""
        def one(server: ServerSection) -> bool:
            try:
                with postgres.connect(server.conninfo, server.name, timeout=3) as conn:
                    return postgres.in_recovery(conn)
            except MarkshipError:
                return False  # unreachable: the archiving step says so

        roles = perserver.gather({s.name: partial(one, s) for s in self.config.servers})
        return [s for s in self.config.servers if roles[s.name]]

    def failover_config(self) -> str:
        """The fix for a config whose roles are past: the config the last failover wrote."""
        record = self.failover
        if record is not None and record.new_config:
            return (f"use the config failover {record.id} wrote: markship --config "
                    f"{record.new_config} checklist")
        return "use the config written by the last failover (markship failover prints its path)"

    def no_mark_since_failover(self) -> str:
        """Why there is no mark to count: none complete, or none since the last failover."""
        if self.failover is None:
            return "no complete mark"
        return (f"no complete mark since failover {self.failover.id} at "
                f"{show(self.failover.started_at)}")


def _roles(states: list[StandbyStatus]) -> str:
    """What each DR-site server that is no standby is instead: '; ADDR (NAME) is a primary'."""
    return "".join(f"; {s.address} ({s.server}) "
                   + ("is a primary" if s.reachable else "does not answer")
                   for s in states if not (s.reachable and s.in_recovery))


def _rebuild_fix(f: _Facts, otherwise: str) -> str:
    """Rebuilding the DR site when a DR-site server is a primary, or when none is a standby
    after a failover; else `otherwise`."""
    rebuild = f.dr_primaries() or (f.failover is not None and not f.in_recovery())
    return REBUILD if rebuild else otherwise


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
    from markship.wal.settings import WalSettings

    title = "Store backups and WAL where they survive the primary site"
    # The repository itself, opened as archive_command opens it (never a copy standing in
    # for it, and a missing folder is not created).
    try:
        WalSettings.from_config(f.config).open_repository().check_writable()
    except MarkshipError as exc:
        return Step("backup", title, MISSING, exc.message, "markship config check")
    return Step("backup", title, DONE, f"repository {f.config.repository.location} is writable")


def _parity(f: _Facts) -> Step:
    from markship.dr.parity import parity

    title = "Standby servers match production in count and capacity"
    if f.config.dr_site is None or not f.config.dr_site.standbys:
        return Step("backup", title, MISSING, "no [dr_site] standbys configured",
                    "describe one [[dr_site.standby]] per server, then markship parity")
    primaries = f.dr_primaries()
    if primaries:
        return Step("backup", title, MISSING, f"{primaries[0].address} "
                    f"({primaries[0].server}) is a primary, not a standby", REBUILD)
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
    up = f.in_recovery()
    if len(up) < len(f.config.servers):
        return Step("backup", title, MISSING, f"{len(up)}/{len(f.config.servers)} DR-site "
                    f"servers in recovery{_roles(states)}",
                    _rebuild_fix(f, "markship standby create; markship standby status"))
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
    if f.failover is not None and sites.superseded(f.config, f.failover):
        return Step("backup", title, MISSING, f"this config names site {f.config.site.name} "
                    f"as production, but failover {f.failover.id} made site "
                    f"{f.failover.to_site} production", f.failover_config())
    standbys = f.servers_in_recovery()
    if standbys:
        return Step("backup", title, MISSING, f"server {standbys[0].name} at "
                    f"{address(standbys[0].conninfo)} is in recovery, not a primary: this "
                    "config describes roles that are not the current ones", f.failover_config())
    result = group_status(f.config, f.repo)
    bad = [s for s in result if not s.reachable or s.last_archived_wal is None
           or (s.last_failed_at is not None and (s.last_archived_at is None
                                                 or s.last_failed_at > s.last_archived_at))]
    if bad:
        where = address(f.config.server(bad[0].server).conninfo)
        fix = "markship status; markship preflight"
        if not bad[0].reachable and f.failover is not None:
            fix = f"{f.failover_config()}; markship status"
        return Step("backup", title, MISSING, f"server {bad[0].server} at {where} is not "
                    f"archiving ({bad[0].error or 'archiver failing or nothing archived'})",
                    fix)
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
    holder = f.repo.lock_holder("agent")
    start = "start markship run (see contrib/markship@.service)"
    if mark is None:
        held = f"; {holder} holds the agent lock" if holder else ""
        return Step("backup", title, MISSING, f.no_mark_since_failover() + held,
                    "markship status (why marks fail)" if holder else start)
    if holder is None:
        return Step("backup", title, MISSING, "no agent holds the agent lock (the last complete "
                    f"mark, {mark.age_seconds:.0f} s ago, was made by hand or by an agent that "
                    "stopped)", start)
    if mark.age_seconds > limit:
        return Step("backup", title, MISSING, f"last complete mark {mark.age_seconds:.0f} s ago "
                    f"(interval {f.config.marks.interval:g} s): the agent, {holder}, is not "
                    "marking", "markship status; the agent's log says why its marks fail")
    return Step("backup", title, DONE, f"last complete mark {mark.age_seconds:.0f} s ago; the "
                f"agent lock is held by {holder}")


def _standby_feed(f: _Facts) -> Step:
    title = "Feed the DR site from the repository"
    states = f.standbys()
    if not states:
        return Step("backup", title, MISSING, "no standbys", "markship standby create")
    fed = f.in_recovery()
    if len(fed) < len(states):
        return Step("backup", title, MISSING, f"{len(fed)}/{len(states)} DR-site servers are "
                    f"standbys to feed{_roles(states)}",
                    _rebuild_fix(f, "markship standby status"))
    # No mark replayed and none to replay is "no mark yet", not "0 behind".
    waiting = [s for s in fed if s.marks_behind is None
               or (s.at_mark is None and s.marks_behind == 0)]
    if waiting:
        return Step("backup", title, MISSING, f"standby of {waiting[0].server} at "
                    f"{waiting[0].address} has replayed no mark yet",
                    "markship run (the agent marks; standbys replay up to each mark)")
    worst = max(s.marks_behind or 0 for s in fed)
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
        return Step("restore", title, MISSING, f"{f.no_mark_since_failover()}: nothing to "
                    "fail over to",
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
    if states and len(f.in_recovery()) == len(states) >= len(f.config.servers):
        return Step("restore", title, DONE, f"{len(states)} standby(s) in recovery, ready to "
                    "promote to the mark")
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
                    "is no decision table",
                    f"markship client-sql --setup | psql (on {barrier.name}: creates "
                    "markship.decisions)")
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
