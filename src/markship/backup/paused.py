"""A restore paused at its target: promote it (`restore --resume`) or move it on to a later
target without restoring again (`restore --advance-to`).

A server paused at a recovery target is still in archive recovery (its recovery.signal is
still there): `pg_wal_replay_resume()` ends recovery and promotes it; stopped and started
again with a later target written over the old one, it replays on from where it stood and
pauses there. The server and its address come from the state file the restore left in the
data directory (backup.restorestate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from markship.backup.restore import expected_lsn, refuse_incomplete_mark
from markship.backup.restorestate import RestoreState, conninfo, read_state, write_state
from markship.backup.targets import Target
from markship.config.model import Config
from markship.errors import RestoreError
from markship.pg import recovery
from markship.pg.datadir import (
    DataDir,
    fail_start,
    in_production,
    postmaster_status,
    recovery_end,
    server_log,
    stop_reason,
    wait_until,
    write_settings,
)
from markship.pg.lsn import format_lsn
from markship.pg.sql import connect
from markship.repository import catalog
from markship.repository.base import Repository
from markship.timefmt import show, utcnow


@dataclass(frozen=True)
class PausedResult:
    """What --resume or --advance-to did to the restore in `target_dir`: `lsn` is where it
    now stands (the end of recovery once promoted), `stopped_at` PostgreSQL's words for it."""

    server: str
    target_dir: Path
    done: str  # "promoted" | "paused"
    target: str
    lsn: str | None
    stopped_at: str | None
    conninfo: str
    seconds: float
    port: int | None = None


def resume(config: Config, target_dir: Path, wait_seconds: float = 600,
           again: bool = False) -> PausedResult:
    """Promote the restore in `target_dir`, paused at its target (or shut down there).

    Raises RestoreError when it is not a markship restore, was promoted already (unless
    `again`: a group resume run once more after some of its servers were promoted), or is
    running without being paused at its target."""
    began = time.monotonic()
    state = read_state(target_dir)
    target_conninfo = conninfo(config, state)
    if not (again and in_production(target_dir)):
        _promote(_directory(config, target_dir, state), state, target_conninfo, wait_seconds)
    end = recovery_end(target_dir)
    write_state(target_dir, replace(state, action="promote"))
    return PausedResult(state.server, target_dir, "promoted", state.target,
                        None if end is None else format_lsn(end.lsn),
                        None if end is None else end.reason, target_conninfo,
                        time.monotonic() - began, state.port)


def _promote(directory: DataDir, state: RestoreState, target_conninfo: str,
             wait_seconds: float) -> None:
    target_dir = directory.path
    if postmaster_status(target_dir) is None:
        # Shut down at the target (or stopped while paused): it promotes on its next start.
        write_settings(target_dir, {"recovery_target_action": "promote"},
                       f"markship restore --resume {show(utcnow())}")
        directory.start_and_wait(wait_seconds, "promoted")
        return
    with connect(target_conninfo, state.server) as conn:
        _require_paused(recovery.pause(conn), target_dir)
        recovery.resume_replay(conn)
    if not wait_until(target_dir, "promoted", wait_seconds):
        fail_start(target_dir, server_log(target_dir), "", wait_seconds)


def advance(config: Config, repo: Repository, target_dir: Path, target: Target,
            wait_seconds: float = 600) -> PausedResult:
    """Move the paused restore in `target_dir` on to `target` and pause it there.

    Raises RestoreError when it is not a paused markship restore, or `target` lies before
    where it stands (PostgreSQL cannot replay backwards)."""
    began = time.monotonic()
    state = read_state(target_dir)
    directory = _directory(config, target_dir, state)
    target = replace(target, action="pause")
    if target.kind == "name" and target.name and target.mark is None:
        mark = catalog.read_mark(repo, target.name)
        if mark is not None:
            target = replace(target, mark=mark)
    if target.mark is not None:
        refuse_incomplete_mark(repo, state.server, target.mark)
    target_conninfo = conninfo(config, state)
    if postmaster_status(target_dir) is not None:
        with connect(target_conninfo, state.server) as conn:
            where = recovery.pause(conn)
        _require_paused(where, target_dir)
        _refuse_backwards(target, state.server, where)
        directory.stop()
    settings = target.settings(clear_others=True)
    if target.mark is not None and state.server in target.mark.points:
        settings["recovery_target_timeline"] = str(target.mark.points[state.server].timeline)
    log = server_log(target_dir)
    offset = log.stat().st_size if log.exists() else 0
    write_settings(target_dir, settings,
                   f"markship restore --advance-to {show(utcnow())}: {target.describe()}")
    directory.start_and_wait(wait_seconds, "paused")
    with connect(target_conninfo, state.server) as conn:
        now = recovery.pause(conn)
    expected = expected_lsn(target, state.server)
    if expected is not None and (now.lsn is None or now.lsn < expected):
        raise RestoreError(f"{state.server} paused at {_lsn(now.lsn)}, short of "
                           f"{target.describe()} at {format_lsn(expected)}",
                           f"find the failed WAL fetch in {log}")
    write_state(target_dir, replace(state, target=target.describe(), action="pause"))
    return PausedResult(state.server, target_dir, "paused", target.describe(), _lsn(now.lsn),
                        stop_reason(target_dir, offset), target_conninfo,
                        time.monotonic() - began, state.port)


def _directory(config: Config, target_dir: Path, state: RestoreState) -> DataDir:
    if in_production(target_dir):
        raise RestoreError(f"the restore in {target_dir} was promoted already: it is no "
                           "longer in recovery",
                           "restore again into an empty directory to reach another target")
    return DataDir.at(target_dir, config.server(state.server).bin_dir, state.pg_version_num)


def _require_paused(where: recovery.Pause, target_dir: Path) -> None:
    if not where.in_recovery:
        raise RestoreError(f"the server of {target_dir} is not in recovery",
                           "restore again into an empty directory")
    if where.state != "paused":
        raise RestoreError(f"the server of {target_dir} is not paused at a recovery target "
                           f"(replay is {where.state})",
                           "wait until it pauses (restore with --action pause)")


def _refuse_backwards(target: Target, server: str, where: recovery.Pause) -> None:
    """A paused server cannot go back: refuse a target before where it stands."""
    expected = expected_lsn(replace(target, inclusive=True), server)
    if expected is not None and where.lsn is not None and expected < where.lsn:
        raise RestoreError(f"{target.describe()} ({format_lsn(expected)}) lies before where "
                           f"the restore stands ({format_lsn(where.lsn)})",
                           "give a later target, or restore again into an empty directory")
    if target.time is not None and where.last_replayed is not None \
            and target.time < datetime.fromisoformat(where.last_replayed):
        raise RestoreError(f"{target.describe()} lies before the last transaction the restore "
                           f"replayed ({where.last_replayed})",
                           "give a later time, or restore again into an empty directory")


def _lsn(lsn: int | None) -> str | None:
    return None if lsn is None else format_lsn(lsn)
