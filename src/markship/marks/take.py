"""Group marks: one restore point, same name, on every server, made under the barrier.

Steps of one mark:
1. take the barrier: the exclusive advisory lock on the barrier server, waiting at most
   `[marks] barrier_timeout` (a 2PC commit phase in flight holds the shared side);
2. while holding it, create the restore point on every server at once (markship.pg.fanout);
   the same statement flushes it to disk;
3. release the barrier, then get the mark's WAL into the repository: wait (briefly) for the
   agent's WAL receiver to flush past the restore point (with object storage, then upload
   it from the receiver's spool, markship.marks.upload), or switch WAL on a server without
   one so its segment is archived now (see markship.marks.stream);
4. write the mark record (stored during step 3, named once the WAL is delivered). A mark
   is *complete* once every server's WAL holding it is in the repository: the archived
   segment, or for a streamed point the stream folder's copy.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal, TypeVar

import psycopg

from markship import names, perserver
from markship.client import barrier_key
from markship.config.model import Config
from markship.errors import MarkshipError, ServerError, first_line
from markship.marks import priority, stream, upload
from markship.pg import fanout, replication, sql
from markship.pg.lsn import parse_lsn, parse_segment_name
from markship.repository import layout, records
from markship.repository.base import Repository, StagedObject
from markship.repository.catalog import MarkPoint, MarkRecord
from markship.timefmt import utcnow

T = TypeVar("T")
Delivery = Literal["stream", "switch"]


class MarkSkipped(MarkshipError):
    """The barrier could not be taken in time: no mark this round, writes were not blocked."""

    exit_code = 3


def mark_name(group: str, now: datetime) -> str:
    """Sortable, unique per millisecond: `ms-shop-20261125T190211.123Z`."""
    return f"ms-{group}-{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}Z"


class GroupConnections:
    """One autocommit connection per server plus a second one to the barrier server."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.conns: dict[str, sql.Connection] = {}
        self.barrier: sql.Connection | None = None

    def open(self) -> None:
        """Connect to every missing server in parallel; raise ServerError naming the failed."""
        wanted = [s for s in self.config.servers
                  if s.name not in self.conns or self.conns[s.name].closed]
        results = perserver.each({s.name: partial(sql.connect, s.conninfo, s.name)
                            for s in wanted})
        self.conns.update(results)
        if self.barrier is None or self.barrier.closed:
            server = self.config.barrier_server
            self.barrier = sql.connect(server.conninfo, server.name)

    def close(self) -> None:
        for conn in [*self.conns.values(), self.barrier]:
            if conn is not None:
                conn.close()
        self.conns.clear()
        self.barrier = None

    def drop_broken(self) -> None:
        for name, conn in list(self.conns.items()):
            if conn.closed or conn.broken:
                del self.conns[name]
        if self.barrier is not None and (self.barrier.closed or self.barrier.broken):
            self.barrier = None


@dataclass(frozen=True)
class MarkResult:
    record: MarkRecord
    switch_ms: float  # time from releasing the barrier until the WAL was delivered
    prepare_ms: float = 0.0  # before the barrier: name check, connections
    record_ms: float = 0.0  # writing the mark record (durably) into the repository


def take_mark(config: Config, repo: Repository, conns: GroupConnections,
              name: str | None = None, switch_wal: bool = True,
              uploads: upload.StreamUploads | None = None) -> MarkResult:
    """Make one group mark. Raises BadName (markship.names) for a name no mark can have,
    MarkSkipped when the barrier is busy, ServerError when a server fails (the mark is then
    not recorded anywhere).

    `uploads`: the agent's, which hold its receivers' spool; a repository in object storage
    gets streamed WAL only through them (without, every server's WAL is switched)."""
    start = time.perf_counter()
    now = utcnow()
    name = names.check_restore_point(name if name is not None else
                                     mark_name(config.group.name, now), "mark name")
    record_key = layout.mark_key(name)
    if repo.exists(record_key):
        raise MarkshipError(f"mark {name} already exists",
                            "mark names must never repeat: choose another --name")
    conns.open()
    streaming = (switch_wal and config.marks.delivery == "stream"
                 and (uploads is not None or stream.in_place(repo)))

    def record_with(taken: _Taken, delivered: dict[str, Delivery]) -> MarkRecord:
        return MarkRecord(
            name=name, group=config.group.name, created_at=now,
            barrier_server=config.barrier_server.name,
            barrier_wait_ms=round(taken.wait_ms, 3), barrier_hold_ms=round(taken.hold_ms, 3),
            points={server: MarkPoint(lsn=lsn, timeline=parse_segment_name(walfile).timeline,
                                      wal_file=walfile)
                    for server, (lsn, walfile) in taken.points.items()},
            delivery=delivered,
        )

    # Nearly every mark is delivered by stream on every server: the record saying so is
    # stored (and flushed to disk) from the moment the barrier is released, while the
    # receivers are asked, and only named once they did deliver. Otherwise it is dropped and
    # the true record written. The temp object is opened before the barrier is asked for.
    expected: dict[str, Delivery] = dict.fromkeys(conns.conns, "stream") if streaming else {}
    staging = _Staging(repo, record_key) if expected else None

    def released(taken: _Taken) -> None:
        if staging is not None:
            staging.fill(record_with(taken, expected))

    try:
        taken = _under_barrier(config, conns, name, streaming, released)
        before = time.perf_counter()
        delivered = _deliver(config, conns, taken, streaming, uploads) if switch_wal else {}
    except BaseException:
        if staging is not None:
            staging.drop()
        conns.drop_broken()
        raise
    writing = time.perf_counter()
    staged = staging.take() if staging is not None else None
    record = staging.record if staging is not None else None
    if staged is not None and record is not None and delivered == expected:
        staged.publish(lambda: record_key.rpartition("/")[2])
    else:
        if staged is not None:
            staged.discard()
        record = record_with(taken, delivered)
        records.write_record(repo, record_key, record)
    return MarkResult(record, (writing - before) * 1000,
                      prepare_ms=(taken.began - start) * 1000,
                      record_ms=(time.perf_counter() - writing) * 1000)


def result_line(result: MarkResult) -> str:
    """What `markship mark` prints."""
    from markship.pg.lsn import format_lsn
    from markship.timefmt import show

    record = result.record
    points = ", ".join(f"{s} {format_lsn(p.lsn)}" for s, p in record.points.items())
    how = ", ".join(sorted(set(record.delivery.values()))) or "none"
    return (f"✓ mark {record.name} at {show(record.created_at)}: {points}; barrier held "
            f"{record.barrier_hold_ms:.1f} ms; WAL delivered by {how}")


def result_json(result: MarkResult, taken_by: str) -> dict[str, object]:
    """What `markship mark --json` prints, ready for json.dumps (times as
    `timefmt.exact_times` writes them); `taken_by`: "command" or "agent"."""
    from markship.timefmt import exact_times

    shown = {key: exact_times(value) for key, value in result.record.model_dump().items()}
    return shown | {"delivery_ms": result.switch_ms, "taken_by": taken_by}


@dataclass(frozen=True)
class _Taken:
    """What a mark did under the barrier."""

    points: dict[str, tuple[int, str]]  # server → (restore point LSN, WAL file)
    began: float  # time.perf_counter() when the barrier was asked for
    wait_ms: float
    hold_ms: float
    first_poll: dict[str, fanout.Rows]  # the receivers' positions (RECEIVER_FLUSHED)


def _under_barrier(config: Config, conns: GroupConnections, name: str, streaming: bool,
                   released: Callable[[_Taken], None]) -> _Taken:
    """Steps 1 and 2: take the barrier, make (and flush) the restore point everywhere,
    release the barrier; `released` is called as soon as the release is confirmed (while
    the receivers' first answers may still be on their way). Raises MarkSkipped or
    ServerError."""
    assert conns.barrier is not None
    barrier_conn = conns.barrier
    began = time.perf_counter()
    try:
        held = sql.hold_barrier(barrier_conn, barrier_key(config.group.name),
                                     int(config.marks.barrier_timeout * 1000))
    except psycopg.Error as exc:
        raise ServerError(f"server(s) {config.barrier_server.name} failed (the barrier: "
                          f"{first_line(exc)})",
                          "bring it back, then retry; markship status shows each server"
                          ) from None
    if not held:
        raise MarkSkipped(
            f"mark skipped: the barrier on {config.barrier_server.name} stayed busy for "
            f"{config.marks.barrier_timeout:g} s (a two-phase commit held it)",
            "nothing to do if it is rare; otherwise look for long commit phases",
        )
    got = time.perf_counter()
    try:
        answers = fanout.fan_out({server: (conn, sql.RESTORE_POINT, (name,))
                                  for server, conn in conns.conns.items()})
    except ServerError:
        if not barrier_conn.closed and not barrier_conn.broken:
            with contextlib.suppress(psycopg.Error):  # a dead barrier server releases it
                sql.release_barrier(barrier_conn)
        raise
    points = {server: (parse_lsn(str(rows[0][0])), str(rows[0][1]))
              for server, rows in answers.items()}
    # Release the barrier; the receivers are asked how far they got in the same round.
    release = f"{config.barrier_server.name} (barrier)"
    answered: dict[str, float] = {}

    def taken(first_poll: dict[str, fanout.Rows]) -> _Taken:
        return _Taken(points=points, began=began, wait_ms=(got - began) * 1000,
                      hold_ms=(answered[release] - got) * 1000, first_poll=first_poll)

    def on_answer(key: str) -> None:
        if key == release:
            released(taken({}))

    polls = {server: (conn, replication.RECEIVER_FLUSHED, ())
             for server, conn in conns.conns.items()}
    first_poll = fanout.fan_out({release: (barrier_conn, "COMMIT", ()),
                                 **(polls if streaming else {})},
                                finished=answered, on_answer=on_answer)
    first_poll.pop(release, None)
    return taken(first_poll)


def _deliver(config: Config, conns: GroupConnections, taken: _Taken, streaming: bool,
             uploads: upload.StreamUploads | None) -> dict[str, Delivery]:
    """Step 3: the mark's WAL into the repository, by stream where the receiver gets there
    within `[marks] stream_wait` (and, from a spool, is uploaded), else by a WAL switch."""
    lsns = {server: lsn for server, (lsn, _file) in taken.points.items()}
    streamed = (stream.wait_flushed(conns.conns, lsns, config.marks.stream_wait,
                                    taken.first_poll) if streaming else set())
    if streamed and uploads is not None:
        streamed = uploads.ship({server: taken.points[server] for server in streamed})
    rest = [server for server in conns.conns if server not in streamed]
    fanout.fan_out({server: (conns.conns[server], sql.SWITCH_WAL, ()) for server in rest})
    return {**dict.fromkeys(streamed, "stream"), **dict.fromkeys(rest, "switch")}


class _Staging:
    """A mark record stored under a temp name in the background (records.stage_record).

    Begun before the barrier: the writer thread opens the temp object at once, then waits
    for `fill()`, so that once the barrier is released only the write and its fsync are
    left. One long-lived writer thread does it: starting a thread per mark waits for the
    new thread to be scheduled, milliseconds on a busy host. The record is encoded by the
    mark's own thread: encoding in the writer would hold the interpreter lock just when the
    mark's thread wakes up for the servers' answers (it may wait 5 ms, the switch interval).
    """

    def __init__(self, repo: Repository, key: str) -> None:
        self.repo, self.key = repo, key
        self.record: MarkRecord | None = None
        self.staged: StagedObject | None = None
        self._data: bytes | None = None
        self._given = threading.Event()
        self._done = threading.Event()
        _writer().put(self)

    def run(self) -> None:
        """In the writer thread. A failure (e.g. a full disk) is not lost: the record is
        then written the normal way, which raises it."""
        try:
            with contextlib.suppress(Exception):
                self.staged = records.stage_record(self.repo, self.key, self._content)
        finally:
            self._done.set()

    def _content(self) -> bytes:
        self._given.wait()
        if self._data is None:
            raise _NoRecord
        return self._data

    def fill(self, record: MarkRecord) -> None:
        self._data = records.encode(record)
        self.record = record
        self._given.set()

    def take(self) -> StagedObject | None:
        """The staged record once written (None when it could not be, or was never given)."""
        self._given.set()
        self._done.wait()
        return self.staged

    def drop(self) -> None:
        if (staged := self.take()) is not None:
            staged.discard()


class _NoRecord(Exception):
    """The mark ended before its record was known: the temp object goes."""


_queues: dict[tuple[int, int], queue.SimpleQueue[_Staging]] = {}  # (pid, nice) → queue
_queues_lock = threading.Lock()


def _writer() -> queue.SimpleQueue[_Staging]:
    """The queue of a record writer thread: one per process (a forked child has no thread
    behind its parent's queue) and nice value, started on first use by a thread with that
    value, which it inherits (markship.marks.priority: raising it later may not be allowed). A
    daemon: every mark takes or drops its staging before it returns."""
    key = (os.getpid(), priority.current())
    with _queues_lock:
        if key not in _queues:
            pending: queue.SimpleQueue[_Staging] = queue.SimpleQueue()

            def work() -> None:
                while True:
                    pending.get().run()

            threading.Thread(target=work, name="markship-mark-record", daemon=True).start()
            _queues[key] = pending
        return _queues[key]


