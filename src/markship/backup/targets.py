"""Recovery targets: where a restore stops, what the server does there, and which backup
reaches it.

A target is one of: the end of the archive, a time, a named restore point (a group mark when
the repository holds one by that name), an LSN, a transaction id, or the backup's own
consistency point. `Target.settings` renders it as the recovery_target_* settings; the
`choose_backup` picks the newest complete backup from which it can be reached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from markship.errors import ObjectMissing, RestoreError
from markship.pg.lsn import format_lsn
from markship.repository import catalog, restorable
from markship.repository.base import Repository
from markship.repository.catalog import BackupRecord
from markship.timefmt import show

ACTIONS = ("promote", "pause", "shutdown")  # recovery_target_action's values
# Every setting that names a target: PostgreSQL refuses to start when two are set, so a
# target written over another one clears the others first.
TARGET_SETTINGS = ("recovery_target", "recovery_target_name", "recovery_target_time",
                   "recovery_target_xid", "recovery_target_lsn")


@dataclass(frozen=True)
class Target:
    """Where recovery stops and what the server does there (`action`).

    `kind`: "latest" (the end of the archived WAL), "time", "name", "lsn", "xid", "immediate"
    (the backup's consistency point) or "standby" (continuous recovery, no target).
    `inclusive` says whether the transaction (or record) at a time, xid or LSN target is
    replayed too.
    """

    kind: str
    time: datetime | None = None
    name: str | None = None
    mark: catalog.MarkRecord | None = None  # set when `name` is a group mark
    lsn: int | None = None
    xid: int | None = None
    inclusive: bool = True
    action: str = "promote"

    @property
    def stops(self) -> bool:
        """Recovery stops at a target (rather than at the end of the WAL, or never)."""
        return self.kind not in ("latest", "standby")

    def settings(self, clear_others: bool = False) -> dict[str, str]:
        """The recovery_target* settings; with `clear_others`, every other target setting is
        emptied first (for writing this target over an earlier one)."""
        own: dict[str, str] = {}
        if self.kind == "time" and self.time is not None:
            own["recovery_target_time"] = self.time.isoformat()
        elif self.kind == "name" and self.name is not None:
            own["recovery_target_name"] = self.name
        elif self.kind == "lsn" and self.lsn is not None:
            own["recovery_target_lsn"] = format_lsn(self.lsn)
        elif self.kind == "xid" and self.xid is not None:
            own["recovery_target_xid"] = str(self.xid)
        elif self.kind == "immediate":
            own["recovery_target"] = "immediate"
        if not own:
            return {}
        # Emptied ones first: PostgreSQL applies the settings in file order and refuses a
        # second target even when the first is being emptied after it.
        settings = {key: "" for key in TARGET_SETTINGS if clear_others and key not in own}
        settings.update(own)
        if self.kind in ("time", "lsn", "xid"):
            settings["recovery_target_inclusive"] = "on" if self.inclusive else "off"
        settings["recovery_target_action"] = self.action
        if self.action == "pause":
            settings["hot_standby"] = "on"  # without it PostgreSQL shuts down instead
        return settings

    def describe(self) -> str:
        edge = "" if self.inclusive or self.kind not in ("time", "lsn", "xid") else " (exclusive)"
        if self.kind == "time":
            return f"time {show(self.time)}{edge}"
        if self.kind == "name":
            return f"restore point {self.name}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}{edge}"
        if self.kind == "xid":
            return f"transaction {self.xid}{edge}"
        if self.kind == "immediate":
            return "the backup's consistency point"
        if self.kind == "standby":
            return "continuous recovery up to the newest complete mark"
        return "the end of the archived WAL"


def complete_backups(repo: Repository, server: str) -> list[BackupRecord]:
    """This server's finished backups with their WAL archived, newest first.

    A server's backup is usable for restoring that server alone even when another server of
    its set failed; group restores (later) need complete sets.
    """
    found = []
    wal: dict[str, restorable.WalIndex] = {}
    for record in catalog.list_sets(repo):
        if server not in record.servers:
            continue
        state = restorable.set_state(repo, record, wal)
        if server in state.restorable:
            found.append(state.restorable[server])
    return sorted(found, key=lambda b: b.consistent_at, reverse=True)


def choose_backup(repo: Repository, server: str, target: Target,
                  set_id: str | None = None) -> BackupRecord:
    """The newest complete backup from which `target` can be reached.

    Raises RestoreError when there is none, or the target lies before every backup's
    consistency point. An xid's place in the WAL is unknown: it takes the newest backup (or
    `set_id`), like 'latest' and 'immediate'.
    """
    backups = complete_backups(repo, server)
    if set_id is not None:
        backups = [b for b in backups if b.set_id == set_id]
        if not backups:
            raise RestoreError(f"backup set {set_id} has no usable backup of server {server}",
                               "pick a set that markship list shows as complete")
    if not backups:
        raise RestoreError(f"no usable backup of server {server} in the repository",
                           "run markship backup first (markship list shows what exists)")
    if target.mark is not None:
        point = target.mark.points.get(server)
        if point is None:
            raise RestoreError(f"mark {target.mark.name} has no restore point on server {server}",
                               "choose a mark made while this server was in the group")
        usable = _reaching(repo, server, backups, point.timeline, point.lsn)
        if not usable:
            raise RestoreError(
                f"mark {target.mark.name} is older than every backup of server {server}",
                "choose a newer mark (markship marks)")
        return usable[0]
    if target.kind == "lsn" and target.lsn is not None:
        newest_timeline = max(b.timeline for b in backups)
        usable = _reaching(repo, server, backups, newest_timeline, target.lsn)
        if not usable:
            raise RestoreError(
                f"{target.describe()} is before the end of every backup of server {server} "
                f"(the oldest ends at {format_lsn(min(b.stop_lsn for b in backups))})",
                "choose a later LSN")
        return usable[0]
    if target.kind == "time" and target.time is not None:
        usable = [b for b in backups if b.consistent_at <= target.time]
        if not usable:
            oldest = min(backups, key=lambda b: b.consistent_at)
            raise RestoreError(
                f"{target.describe()} is before the consistency point of every backup of "
                f"server {server} (the oldest is consistent from {show(oldest.consistent_at)})",
                "choose a later time",
            )
        return usable[0]
    return backups[0]


def _reaching(repo: Repository, server: str, backups: list[BackupRecord], timeline: int,
              lsn: int) -> list[BackupRecord]:
    """The backups (newest first) that reach `lsn` on `timeline`."""
    usable = [b for b in backups if b.timeline == timeline and b.stop_lsn <= lsn]
    if not usable and any(b.timeline < timeline for b in backups):
        # A point after a failover: a backup from before it still reaches it when it was
        # consistent before its timeline branched off toward the point's (recovery follows
        # the history file, as the standbys did).
        branched = dict(_ancestry(repo, server, timeline))
        usable = [b for b in backups if b.timeline in branched
                  and b.stop_lsn <= min(lsn, branched[b.timeline])]
    return usable


def _ancestry(repo: Repository, server: str, timeline: int) -> list[tuple[int, int]]:
    from markship.wal.stored import read_history

    try:
        return read_history(repo, server, timeline)
    except ObjectMissing:
        raise RestoreError(f"timeline {timeline} of server {server} has no history file in "
                           "the repository: no backup from before it reaches it",
                           "take a backup (markship backup) and restore to a mark after it") \
            from None
