"""After a failover: prove that each new primary archives into the repository.

The failover starts the promoted servers with archive_mode on and an archive_command naming the
role-swapped config. Here each one closes its current segment (the first of its new timeline)
and the archiver is watched until it stored that segment, or failed on it. A failure is
reported with the reason the repository gives this process, never hidden: the group is then
promoted but has no recovery point beyond the mark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

from markship.config.model import Config
from markship.errors import MarkshipError
from markship.perserver import gather
from markship.pg import sql as postgres
from markship.pg.commands import archive_command_problem
from markship.pg.conninfo import address
from markship.wal.settings import WalSettings

ARCHIVE_WAIT = 30.0  # seconds a new primary's archiver has to store its first segment
POLL = 0.2


@dataclass(frozen=True)
class Archiving:
    """One new primary: `ok` once the archiver stored `segment`; else `problem` says why."""

    server: str
    place: str  # host:port
    ok: bool
    segment: str | None
    problem: str | None = None

    def line(self) -> str:
        if self.ok:
            return f"{self.server} ({self.place}) archived {self.segment}"
        return f"{self.server} ({self.place}) does not archive: {self.problem}"


def _watch(config: Config, server: str, repository_problem: str | None,
           wait: float) -> Archiving:
    section = config.server(server)
    where = address(section.conninfo)
    try:
        with postgres.connect(section.conninfo, server, timeout=5) as conn:
            conn.autocommit = True
            facts = postgres.facts(conn)
            problem = archive_command_problem(facts.archive_command, server, config.source)
            if facts.archive_mode not in ("on", "always") or problem is not None:
                return Archiving(server, where, False, None,
                                 problem or f"archive_mode is {facts.archive_mode}")
            segment = postgres.switch_wal_file(conn)
            before = postgres.archiver_stats(conn)
            deadline = time.monotonic() + wait
            while True:
                stats = postgres.archiver_stats(conn)
                if stats.last_archived_wal is not None and \
                        stats.last_archived_wal[:24] >= segment:
                    return Archiving(server, where, True, segment)
                failed = stats.failed_count > before.failed_count or \
                    stats.last_failed_wal == segment
                if (failed and repository_problem) or time.monotonic() > deadline:
                    reason = repository_problem or (
                        f"archive_command failed on {stats.last_failed_wal} (see the "
                        "server's log)" if failed else
                        f"{segment} not archived after {wait:.0f} s")
                    return Archiving(server, where, False, segment, reason)
                time.sleep(POLL)
    except MarkshipError as exc:
        return Archiving(server, where, False, None, exc.one_line())


def check_archiving(config: Config, wait: float = ARCHIVE_WAIT) -> list[Archiving]:
    """Each server of `config` (the new primaries): closes a segment and waits for the
    archiver to store it. The repository is first asked, as archive_command opens it, whether
    it can be written: its answer is the reason shown when archiving fails."""
    try:
        WalSettings.from_config(config).open_repository().check_writable()
        problem = None
    except MarkshipError as exc:
        problem = f"the repository cannot be written: {exc.one_line()}"
    found = gather({s.name: partial(_watch, config, s.name, problem, wait)
                    for s in config.servers})
    return [found[s.name] for s in config.servers]
