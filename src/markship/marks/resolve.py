"""Settle prepared (in-doubt) transactions the same way on every restored server.

The decision table on the barrier server says which global transactions were committed: those
are committed everywhere, every other prepared transaction is rolled back everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from markship.pg import sql, twophase


@dataclass(frozen=True)
class Resolution:
    server: str
    database: str
    gid: str
    action: str  # "commit" | "rollback"
    done: bool


def committed_gids(conninfo: str, server: str) -> set[str]:
    """Global transactions recorded as committed; empty when the table was never created."""
    with sql.connect(conninfo, server) as conn:
        try:
            gids = twophase.recorded_commits(conn)
        except psycopg.errors.UndefinedTable:
            return set()
    return gids


def plan(participants: dict[str, str], decided: set[str]) -> list[Resolution]:
    found = []
    for server, conninfo in participants.items():
        with sql.connect(conninfo, server) as conn:
            for gid, database in twophase.prepared_transactions(conn):
                action = "commit" if gid in decided else "rollback"
                found.append(Resolution(server, database, gid, action, False))
    return found


def resolve_in_doubt(participants: dict[str, str], decisions_server: str,
                     dry_run: bool = False) -> list[Resolution]:
    """Commit or roll back every prepared transaction on `participants` (name → conninfo)."""
    decided = committed_gids(participants[decisions_server], decisions_server)
    todo = plan(participants, decided)
    if dry_run:
        return todo
    done = []
    for item in todo:
        twophase.finish_prepared(participants[item.server], item.server, item.database,
                                 item.gid, item.action == "commit")
        done.append(Resolution(item.server, item.database, item.gid, item.action, True))
    return done
