"""Client helper for applications that commit across the group's servers with two-phase commit.

A group mark is consistent when no commit phase of a cross-server transaction is in flight. The
mark takes an exclusive advisory lock (the *barrier*) on the barrier server (`[marks]
barrier_server`, else the first `[[server]]`); applications take the shared side of the same
lock around their commit phase:

1. `PREPARE TRANSACTION` on every participant (outside the barrier: may take long);
2. on the barrier server: `SELECT pg_advisory_lock_shared(key)`;
3. record the global decision in its own committed transaction:
   `INSERT INTO markship.decisions (gid) VALUES ('...')` (autocommit);
4. `COMMIT PREPARED '...'` on every participant;
5. `SELECT pg_advisory_unlock_shared(key)`.

A transaction whose decision row exists at a mark was committed everywhere before it (the
barrier waits for step 5); one without a row is rolled back when the group is restored to that
mark. Any language can follow these steps; `protocol_sql` writes them out in SQL (`markship
client-sql --protocol`), `barrier_key(group)` gives the lock key.

The steps are written once, as generators of steps (`_commit_phase`, `_decide`), which a synchronous
driver (`group_transaction`, `commit_decided`) and an asynchronous one
(`async_group_transaction`) run on their connections. Participants are psycopg connections
(`psycopg.AsyncConnection` for the asynchronous variant) or SQLAlchemy `Connection`s, which
take part through their own two-phase transaction (`Connection.begin_twophase`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import psycopg

from markship.barrierkey import barrier_key as barrier_key

DECISIONS_TABLE = "markship.decisions"

SETUP_SQL = """\
CREATE SCHEMA IF NOT EXISTS markship;
CREATE TABLE IF NOT EXISTS markship.decisions (
    gid text PRIMARY KEY,
    decided_at timestamptz NOT NULL DEFAULT now()
);
"""

# The statements of the commit phase on the barrier server, with their one parameter.
LOCK_SQL = "SELECT pg_advisory_lock_shared(%s)"
DECIDE_SQL = f"INSERT INTO {DECISIONS_TABLE} (gid) VALUES (%s)"
UNLOCK_SQL = "SELECT pg_advisory_unlock_shared(%s)"


def setup_decisions(conn: Participant) -> None:
    """Create the schema `markship` and its decision table `markship.decisions` on the server
    `conn` reaches (a psycopg or SQLAlchemy connection not in a transaction), which must be the
    group's barrier server (`[marks] barrier_server`, else the first `[[server]]`): restores,
    failovers and `markship resolve` read the decisions there. Idempotent: an existing table
    is left as it is. The same statements: `SETUP_SQL`, `markship client-sql --setup`."""
    with _psycopg_of(conn).transaction():
        _psycopg_of(conn).execute(SETUP_SQL)


def protocol_sql(group: str, barrier_server: str) -> str:
    """The commit protocol as an annotated SQL example (`markship client-sql --protocol`)."""
    key = str(barrier_key(group))
    gid = "'transfer-42'"

    def on_barrier(statement: str, value: str) -> str:
        return statement.replace("%s", value) + ";"

    return f"""\
-- markship two-phase commit for group {group!r}: one cross-server transaction.
-- 'transfer-42' stands for your global transaction id (the same on every participant);
-- {key} is the group's barrier key. The barrier server is {barrier_server}; use a
-- session of its own there, in autocommit mode.
-- 1. on every participant, in the transaction that did the work:
PREPARE TRANSACTION {gid};
-- 2. on the barrier server:
{on_barrier(LOCK_SQL, key)}
-- 3. on the barrier server, committed on its own (autocommit): the decision
{on_barrier(DECIDE_SQL, gid)}
-- 4. on every participant:
COMMIT PREPARED {gid};
-- 5. on the barrier server:
{on_barrier(UNLOCK_SQL, key)}
-- If step 1 fails on any participant, or step 2 or 3 fails: ROLLBACK PREPARED {gid} on
-- every participant that prepared (then step 5 if step 2 was done). Once step 3 is done the
-- transaction is committed: finish step 4 everywhere, retrying a server that was down.
"""


class TwoPhaseTransaction(Protocol):
    """What SQLAlchemy's `Connection.begin_twophase` returns, as far as markship uses it."""

    def prepare(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class SQLAlchemyConnection(Protocol):
    """An SQLAlchemy `Connection` (SQLAlchemy is not a dependency of markship)."""

    @property
    def connection(self) -> Any: ...
    def begin_twophase(self, xid: Any = None) -> TwoPhaseTransaction: ...


Participant = psycopg.Connection[Any] | SQLAlchemyConnection


@dataclass(frozen=True)
class _OnBarrier:
    """Run `query` with `param` on the barrier connection."""

    query: str
    param: int | str


@dataclass(frozen=True)
class _OnParticipant:
    """Prepare, commit or roll back participant `index`."""

    action: Literal["prepare", "commit", "rollback"]
    index: int


# Each step is sent back the exception that running it raised, or None.
_Steps = Generator[_OnBarrier | _OnParticipant, Exception | None, None]


def _rollback(count: int, cause: BaseException, prepared: int) -> _Steps:
    """Roll every participant back. The first `prepared` participants hold a prepared
    transaction: a failure to roll one of them back is noted on `cause` (the others, like one
    whose PREPARE failed, have nothing left on the server)."""
    for index in range(count):
        failed = yield _OnParticipant("rollback", index)
        if failed is not None and index < prepared:
            cause.add_note(f"participant {index + 1} could not be rolled back ({failed}): "
                           "its transaction stays prepared until ROLLBACK PREPARED")


def _decide(group: str, gid: str, count: int) -> _Steps:
    """Steps 2–5, for `count` prepared participants."""
    key = barrier_key(group)
    failed = yield _OnBarrier(LOCK_SQL, key)
    if failed is not None:
        yield from _rollback(count, failed, prepared=count)
        raise failed
    failed = yield _OnBarrier(DECIDE_SQL, gid)
    if failed is not None:
        yield _OnBarrier(UNLOCK_SQL, key)  # a failure here too: the lock ends with its session
        yield from _rollback(count, failed, prepared=count)
        raise failed
    unfinished: list[tuple[int, Exception]] = []
    for index in range(count):  # committed: every participant is tried, whatever one says
        failed = yield _OnParticipant("commit", index)
        if failed is not None:
            unfinished.append((index + 1, failed))
    unlock_failed = yield _OnBarrier(UNLOCK_SQL, key)
    if unfinished:
        numbers = ", ".join(str(n) for n, _ in unfinished)
        first = unfinished[0][1]
        first.add_note(f"the decision for {gid!r} is recorded, so the transaction is "
                       f"committed: run COMMIT PREPARED '{gid}' on participant(s) {numbers}")
        raise first
    if unlock_failed is not None:
        unlock_failed.add_note(f"{gid!r} is committed on every participant")
        raise unlock_failed


def _commit_phase(group: str, gid: str, count: int) -> _Steps:
    """Steps 1–5, for `count` participants whose work is done."""
    for index in range(count):
        failed = yield _OnParticipant("prepare", index)
        if failed is not None:
            yield from _rollback(count, failed, prepared=index)
            raise failed
    yield from _decide(group, gid, count)


class _SQLAlchemyTpc:
    """An SQLAlchemy connection driven through psycopg's `tpc_*` names, by way of its own
    two-phase transaction (so that SQLAlchemy knows where its connection stands)."""

    def __init__(self, conn: SQLAlchemyConnection) -> None:
        self.conn = conn
        self.xact: TwoPhaseTransaction | None = None

    def tpc_begin(self, gid: str) -> None:
        self.xact = self.conn.begin_twophase(gid)

    def _begun(self) -> TwoPhaseTransaction:
        if self.xact is None:
            raise psycopg.ProgrammingError("the two-phase transaction was never begun")
        return self.xact

    def tpc_prepare(self) -> None:
        self._begun().prepare()

    def tpc_commit(self) -> None:
        self._begun().commit()

    def tpc_rollback(self) -> None:
        self._begun().rollback()


_Tpc = psycopg.Connection[Any] | _SQLAlchemyTpc


def _as_tpc(conn: Participant) -> _Tpc:
    if isinstance(conn, psycopg.Connection):
        return conn
    return _SQLAlchemyTpc(conn)


def _psycopg_of(conn: Participant) -> psycopg.Connection[Any]:
    """`conn` itself, or the psycopg connection of an SQLAlchemy one."""
    if isinstance(conn, psycopg.Connection):
        return conn
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"not a psycopg connection (use postgresql+psycopg://): {driver!r}")
    return driver


def _barrier_psycopg(barrier: Participant) -> psycopg.Connection[Any]:
    """The psycopg connection of `barrier`, which must be in autocommit mode."""
    conn = _psycopg_of(barrier)
    if not conn.autocommit:
        raise psycopg.ProgrammingError(
            "the barrier connection must be in autocommit mode, so that the decision commits "
            "on its own (psycopg: autocommit=True; SQLAlchemy: "
            'execution_options(isolation_level="AUTOCOMMIT"))')
    return conn


def _run(steps: _Steps, barrier: psycopg.Connection[Any], participants: Sequence[_Tpc]) -> None:
    """Run `steps` on the barrier and the participants; raises what the steps raise."""
    failed: Exception | None = None
    while True:
        try:
            step = steps.send(failed)
        except StopIteration:
            return
        failed = None
        try:
            if isinstance(step, _OnBarrier):
                barrier.execute(step.query, (step.param,))
            else:
                tpc = participants[step.index]
                {"prepare": tpc.tpc_prepare, "commit": tpc.tpc_commit,
                 "rollback": tpc.tpc_rollback}[step.action]()
        except Exception as exc:
            failed = exc


async def _run_async(steps: _Steps, barrier: psycopg.AsyncConnection[Any],
                     participants: Sequence[psycopg.AsyncConnection[Any]]) -> None:
    """`_run` for asyncio connections."""
    failed: Exception | None = None
    while True:
        try:
            step = steps.send(failed)
        except StopIteration:
            return
        failed = None
        try:
            if isinstance(step, _OnBarrier):
                await barrier.execute(step.query, (step.param,))
            else:
                conn = participants[step.index]
                await {"prepare": conn.tpc_prepare, "commit": conn.tpc_commit,
                       "rollback": conn.tpc_rollback}[step.action]()
        except Exception as exc:
            failed = exc


def commit_decided(barrier: Participant, group: str, gid: str,
                   participants: Sequence[Participant]) -> None:
    """Steps 2–5 for participants already prepared (psycopg's `tpc_prepare()`, or SQLAlchemy's
    `TwoPhaseTransaction.prepare()` — pass the SQLAlchemy connection then).

    `barrier` is an autocommit connection to the barrier server. If the decision cannot be
    recorded the participants are rolled back; once it is recorded they are committed.
    """
    tpcs = [_as_tpc(conn) for conn in participants]
    _run(_decide(group, gid, len(tpcs)), _barrier_psycopg(barrier), tpcs)


@contextmanager
def group_transaction(barrier: Participant, group: str, gid: str,
                      participants: Sequence[Participant]) -> Iterator[None]:
    """One transaction across several servers, committed under the group barrier.

    ```
    with group_transaction(barrier_conn, "shop", "transfer-42", [orders, payments]):
        orders.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        payments.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 7")
    ```
    `barrier`: a connection to the barrier server in autocommit mode, used for nothing else
    meanwhile; participants: psycopg connections not in autocommit mode, or SQLAlchemy
    connections not in a transaction. On an exception inside the block, or when a participant
    refuses to prepare or the decision cannot be recorded, every participant is rolled back
    and the exception propagates.
    """
    conn = _barrier_psycopg(barrier)
    tpcs = [_as_tpc(p) for p in participants]
    for tpc in tpcs:
        tpc.tpc_begin(gid)  # a plain string: PostgreSQL's gid is exactly `gid`
    try:
        yield
    except BaseException as exc:
        _run(_rollback(len(tpcs), exc, prepared=0), conn, tpcs)
        raise
    _run(_commit_phase(group, gid, len(tpcs)), conn, tpcs)


@asynccontextmanager
async def async_group_transaction(
        barrier: psycopg.AsyncConnection[Any], group: str, gid: str,
        participants: Sequence[psycopg.AsyncConnection[Any]]) -> AsyncIterator[None]:
    """`group_transaction` for `psycopg.AsyncConnection`s, the same steps:

    ```
    async with async_group_transaction(barrier_conn, "shop", "transfer-42",
                                       [orders, payments]):
        await orders.execute("UPDATE accounts SET balance = balance - 10 WHERE id = 1")
        await payments.execute("UPDATE accounts SET balance = balance + 10 WHERE id = 7")
    ```
    """
    if not barrier.autocommit:
        raise psycopg.ProgrammingError("the barrier connection must be in autocommit mode, "
                                       "so that the decision commits on its own")
    for conn in participants:
        await conn.tpc_begin(gid)
    try:
        yield
    except BaseException as exc:
        await _run_async(_rollback(len(participants), exc, prepared=0), barrier, participants)
        raise
    await _run_async(_commit_phase(group, gid, len(participants)), barrier, participants)
