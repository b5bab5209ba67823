"""`markship check`: the group's state judged against the thresholds of monitor.health, as a
monitoring plugin reports it (exit code 0/1/2/3, one line, perfdata).

It reads what `markship status` reads (monitor.snapshot.group_status), and the standbys
when a DR site is configured: nothing of the page's 24 h window, so that a check every
minute stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from markship.backup.status import ServerStatus
from markship.config.model import Config
from markship.dr.standby import StandbyStatus
from markship.errors import MarkshipError
from markship.monitor import health
from markship.monitor.snapshot import GroupStatus
from markship.repository.base import Repository
from markship.repository.copies import Copy
from markship.timefmt import show, utcnow

State = Literal["ok", "warning", "critical", "unknown"]
# Monitoring plugins' exit codes.
EXIT_CODES: dict[State, int] = {"ok": 0, "warning": 1, "critical": 2, "unknown": 3}
# Which state wins when findings differ: a known problem outranks one that cannot be told.
_RANK: dict[State, int] = {"ok": 0, "unknown": 1, "warning": 2, "critical": 3}
# The kinds of status problems reported by findings of their own (server, wal_gap, repository).
_OWN_FINDINGS = frozenset({"server_repository", "gap", "repository"})


@dataclass(frozen=True)
class Finding:
    """One thing checked: `check` (rpo, server, archiver, archive_lag, backup, wal_gap,
    repository, standby, problem), what it is about (a server, a repository, the group)."""

    check: str
    subject: str
    state: State
    value: str  # the figure for a person ("12 s", "3.0 MiB", "-")
    detail: str  # what a finding that is not ok means, or what was found

    def text(self) -> str:
        about = "" if self.subject == "group" else f"{self.subject}: "
        return f"{about}{self.detail}"


@dataclass(frozen=True)
class Perf:
    """One performance figure: `label=value[unit];warning;critical` (None value: `U`)."""

    label: str
    value: float | None
    unit: str  # "s" or "B"
    thresholds: health.Thresholds

    def text(self) -> str:
        value = "U" if self.value is None else f"{_number(self.value)}{self.unit}"
        warning, critical = self.thresholds
        return f"{self.label}={value};{_number(warning)};{_number(critical)}"


@dataclass(frozen=True)
class CheckResult:
    findings: list[Finding]
    perfdata: list[Perf]
    checked_at: datetime

    @property
    def state(self) -> State:
        return max((f.state for f in self.findings), key=_RANK.__getitem__, default="ok")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.state]

    def plugin_output(self) -> str:
        """The standard plugin output: `MARKSHIP STATE - worst findings | perfdata`, then
        every other finding that is not ok on a line of its own (long output)."""
        state = self.state
        worst = [f for f in self.findings if f.state == state]
        others = [f for f in self.findings if f.state not in ("ok", state)]
        if state == "ok":
            rpo = [f.text() for f in self.findings if f.check == "rpo"]
            servers = sorted({f.subject for f in self.findings if f.check == "archiver"})
            summary = "; ".join([*rpo, f"{len(servers)} servers archiving, backups in time"])
        else:
            summary = "; ".join(f.text() for f in worst)
        if others:
            summary += f" (and {len(others)} more, below)"
        # '|' separates perfdata: never inside the text
        line = f"MARKSHIP {state.upper()} - {summary.replace('|', '/')}"
        perf = " ".join(p.text() for p in self.perfdata)
        lines = [f"{line} | {perf}" if perf else line]
        lines += [f"{f.state.upper()}: {f.text()}".replace("|", "/") for f in others]
        return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _size(n: float) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def unknown(reason: str) -> CheckResult:
    """The result when the group cannot be checked at all (config unreadable, …)."""
    return CheckResult([Finding("check", "group", "unknown", "-", reason)], [], utcnow())


def evaluate(config: Config, status: GroupStatus,
             standbys: list[StandbyStatus] | None = None,
             standby_error: str | None = None) -> CheckResult:
    """Judge a group status (and the DR standbys' status) against monitor.health."""
    now = utcnow()
    findings: list[Finding] = []
    perf: list[Perf] = []
    primary = next((r for r in status.repositories if r.mode == "primary"), None)
    repository_down = primary is not None and not primary.reachable

    rpo = health.rpo_thresholds(config)
    newest = status.newest
    if newest is not None:
        age = newest.age_seconds
        findings.append(Finding(
            "rpo", "group", health.rpo_level(age, config), _age(age),
            f"RPO {_age(age)} (newest complete mark {newest.record.name}, "
            f"made {show(newest.record.created_at)})"))
    elif repository_down or any(p.untold for p in status.problems):
        findings.append(Finding("rpo", "group", "unknown", "-",
                                "RPO cannot be told: the repository cannot be read"))
    else:
        findings.append(Finding("rpo", "group", health.rpo_level(None, config), "-",
                                "no complete mark: nothing can be restored to a group mark "
                                "(is the agent, markship run, running?)"))
    perf.append(Perf("rpo", newest.age_seconds if newest else None, "s", rpo))

    for server in status.servers:
        findings += _server_findings(server, config, now, repository_down)
        perf += _server_perf(server, config, now)

    for gap in status.gaps:
        if gap.healed_by is None:
            findings.append(Finding("wal_gap", gap.record.server, health.WAL_GAP_OPEN, "-",
                                    gap.text() + " (run markship backup)"))

    for repo in status.repositories:
        if repo.reachable:
            continue
        state: State = "unknown" if repo.mode == "primary" else health.COPY_UNREACHABLE
        what = "the repository" if repo.mode == "primary" else f"copy {repo.name}"
        findings.append(Finding("repository", repo.name, state, "-",
                                f"{what} ({repo.location}) cannot be reached: {repo.error}"))

    if status.key_warning:
        findings.append(Finding("key", "group", health.KEY_BACKUP_MISSING, "-",
                                status.key_warning))

    for problem in status.problems:
        if problem.kind not in _OWN_FINDINGS:
            # WAL given up by pg_wal protection on this host is lost to the repository.
            findings.append(Finding("problem", "group",
                                    "unknown" if problem.untold else "critical", "-",
                                    problem.text))

    if config.dr_site is not None:
        if standby_error is not None:
            findings.append(Finding("standby", "group", "unknown", "-",
                                    f"the standbys cannot be told: {standby_error}"))
        for standby in standbys or []:
            findings.append(_standby_finding(standby, config))
            perf.append(Perf(f"standby_lag_{standby.server}", standby.failover_bytes
                             if standby.reachable else None, "B",
                             health.standby_lag_bytes_thresholds(config)))
    return CheckResult(findings, perf, now)


def _server_findings(s: ServerStatus, config: Config, now: datetime,
                     repository_down: bool) -> list[Finding]:
    found: list[Finding] = []
    if not s.reachable:
        found.append(Finding("server", s.server, health.SERVER_UNREACHABLE, "down",
                             f"cannot be reached: {s.error}"))
    elif s.archiver_failing:
        found.append(Finding(
            "archiver", s.server, health.ARCHIVER_FAILING, f"{s.archiver_failed_count} failed",
            f"archiving fails: {s.last_failed_wal} failed at {show(s.last_failed_at)}, "
            f"last success {show(s.last_archived_at)} (see the server's log)"))
    else:
        found.append(Finding("archiver", s.server, "ok", f"{s.archiver_failed_count} failed",
                             f"archiving works, last {s.last_archived_wal or '-'}"))
    if s.reachable:
        if s.repository_error or (s.archive_lag_bytes is None and repository_down):
            why = s.repository_error or "the repository cannot be read"
            found.append(Finding("archive_lag", s.server, "unknown", "-",
                                 f"archive lag cannot be told: {why}"))
        else:
            lag_bytes = "-" if s.archive_lag_bytes is None else _size(s.archive_lag_bytes)
            lag_seconds = ("" if s.archive_lag_seconds is None
                           else f", {_age(s.archive_lag_seconds)}")
            found.append(Finding("archive_lag", s.server, health.archive_lag_level(s, config),
                                 f"{lag_bytes}{lag_seconds}",
                                 f"archive lag {lag_bytes}{lag_seconds}"))
    if s.last_backup_at is not None:
        age = (now - s.last_backup_at).total_seconds()
        found.append(Finding("backup", s.server, health.backup_age_level(age, config),
                             _age(age), f"last backup {_age(age)} ago ({s.last_backup_set})"))
    elif repository_down:
        found.append(Finding("backup", s.server, "unknown", "-",
                             "last backup cannot be told: the repository cannot be read"))
    else:
        found.append(Finding("backup", s.server, health.NO_BACKUP, "none",
                             "no restorable backup (run markship backup)"))
    return found


def _server_perf(s: ServerStatus, config: Config, now: datetime) -> list[Perf]:
    age = None if s.last_backup_at is None else (now - s.last_backup_at).total_seconds()
    return [
        Perf(f"archive_lag_{s.server}", s.archive_lag_bytes, "B",
             health.archive_lag_bytes_thresholds(config)),
        Perf(f"archive_lag_seconds_{s.server}", s.archive_lag_seconds, "s",
             health.archive_lag_seconds_thresholds(config)),
        Perf(f"last_backup_age_{s.server}", age, "s", health.backup_age_thresholds(config)),
    ]


def _standby_finding(standby: StandbyStatus, config: Config) -> Finding:
    if not standby.reachable:
        return Finding("standby", standby.server, health.STANDBY_UNREACHABLE, "down",
                       f"standby at {standby.address} cannot be reached: {standby.error}")
    lag = "-" if standby.failover_bytes is None else _size(standby.failover_bytes)
    behind = "" if standby.marks_behind is None else f", {standby.marks_behind} marks behind"
    return Finding("standby", standby.server,
                   health.standby_lag_level(standby.failover_bytes, config),
                   lag, f"standby: {lag} of WAL to replay on failover{behind}")


def check(config: Config, repo: Repository, copies: list[Copy]) -> CheckResult:
    """Gather the group's status (and the standbys' when a DR site is configured) and judge
    it. Servers, standbys and repositories that cannot be reached become findings."""
    from markship.dr.standby import standby_status
    from markship.monitor.snapshot import group_status

    status = group_status(config, repo, copies)
    standbys: list[StandbyStatus] = []
    standby_error: str | None = None
    if config.dr_site is not None:
        try:
            standbys = standby_status(config, repo)
        except MarkshipError as exc:
            standby_error = exc.one_line()
    return evaluate(config, status, standbys, standby_error)
