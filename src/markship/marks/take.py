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

Both `markship mark` paths and the agent make marks here. The module loads neither pydantic
nor psycopg: the record is built in its JSON form (`mark_body`) and sealed by
markship.repository.envelope, and the connections are psycopg's (`GroupConnections`) or, on
the lean path of `markship mark` (markship.marks.command), markship.pg.libpq's.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from datetime import datetime
from functools import cached_property

from markship import names
from markship.barrierkey import barrier_key
from markship.errors import MarkshipError, ServerError, first_line
from markship.marks import delivery, priority
from markship.marks.settings import BARRIER, MarkSettings
from markship.pg import fanout, marksql
from markship.pg.lsn import parse_lsn, parse_segment_name
from markship.repository import envelope, layout
from markship.timefmt import as_json, utcnow

TYPE_CHECKING = False
if TYPE_CHECKING:  # the lean path of `markship mark` loads neither pydantic, psycopg nor typing
    from collections.abc import Callable, Iterable
    from typing import Literal

    from markship.config.model import Config
    from markship.marks import upload
    from markship.pg import libpq, sql
    from markship.repository.base import Repository, StagedObject
    from markship.repository.catalog import MarkRecord

    Delivery = Literal["stream", "switch"]


class MarkSkipped(MarkshipError):
    """The barrier could not be taken in time: no mark this round, writes were not blocked."""

    exit_code = 3


def mark_name(group: str, now: datetime) -> str:
    """Sortable, unique per millisecond: `ms-shop-20261125T190211.123Z`."""
    return f"ms-{group}-{now.strftime('%Y%m%dT%H%M%S')}.{now.microsecond // 1000:03d}Z"


def settings_of(config: Config | MarkSettings) -> MarkSettings:
    return config if isinstance(config, MarkSettings) else MarkSettings.from_config(config)


class GroupConnections:
    """One autocommit connection per server plus a second one to the barrier server:
    psycopg's, or with `lean` markship.pg.libpq's (the lean path of `markship mark`)."""

    def __init__(self, config: Config | MarkSettings, lean: bool = False,
                 started: libpq.Connecting | None = None) -> None:
        self.settings = settings_of(config)
        self.lean = lean
        self.started = started  # the lean path's connections, begun early (libpq.start_all)
        self.conns: dict[str, fanout.Link] = {}
        self.barrier: fanout.Link | None = None

    def open(self) -> None:
        """Connect to every missing server in parallel; raise ServerError naming the failed."""
        wanted = {name: conninfo for name, conninfo in self.settings.servers
                  if name not in self.conns or self.conns[name].closed}
        need_barrier = self.barrier is None or self.barrier.closed
        if self.lean:
            self._open_lean(wanted, need_barrier)
            return
        from functools import partial

        from markship import perserver
        from markship.pg import sql

        self.conns.update(perserver.each({name: partial(sql.connect, conninfo, name)
                                          for name, conninfo in wanted.items()}))
        if need_barrier:
            server = self.settings.barrier_server
            self.barrier = sql.connect(self.settings.conninfo(server), server)

    def _open_lean(self, wanted: dict[str, str], need_barrier: bool) -> None:
        """Every connection at once from this thread; the same errors as psycopg's path."""
        from markship.pg import libpq

        barrier = self.settings.barrier_server
        conninfos = {**wanted, **({BARRIER: self.settings.conninfo(barrier)}
                                  if need_barrier else {})}
        started, self.started = self.started, None
        if started is not None and set(started.pending) | set(started.failed) == set(conninfos):
            opened, failed = started.finish()
        else:
            if started is not None:  # begun for other servers: not ours to use
                for unused in started.finish()[0].values():
                    unused.close()
            opened, failed = libpq.connect_all(conninfos)
        if failed:
            from markship.perserver import servers_failed
            from markship.pg.sql import connect_error  # psycopg only when one failed

            for conn in opened.values():
                conn.close()
            # worded as psycopg words libpq's message
            errors = {name: connect_error(conninfos[name], barrier if name == BARRIER else name,
                                          first_line(Exception(f"connection failed: {message}")))
                      for name, message in failed.items()}
            if BARRIER in errors and len(errors) == 1:
                raise errors[BARRIER]
            raise servers_failed({name: error.message for name, error in errors.items()
                                  if name != BARRIER})
        if BARRIER in opened:
            self.barrier = opened.pop(BARRIER)
        self.conns.update(opened)

    def psycopg_conn(self, server: str) -> sql.Connection | None:
        """The psycopg connection to `server` (the agent's), None when not open."""
        assert not self.lean
        return self.conns.get(server)  # type: ignore[return-value]

    def close(self) -> None:
        started, self.started = self.started, None
        if started is not None:  # begun but never used: ended as libpq ends a conversation
            for unused in started.finish()[0].values():
                unused.close()
        for conn in [*self.conns.values(), self.barrier]:
            if conn is not None:
                conn.close()
        self.conns.clear()
        self.barrier = None

    def forget(self, servers: Iterable[str]) -> None:
        """Leave these servers' connections to whoever took them over (markship.marks.detach):
        neither used nor closed here again."""
        for server in servers:
            self.conns.pop(server, None)

    def drop_broken(self) -> None:
        for name, conn in list(self.conns.items()):
            if conn.closed or conn.broken:
                del self.conns[name]
        if self.barrier is not None and (self.barrier.closed or self.barrier.broken):
            self.barrier = None


class MarkResult:
    """A mark made: its record, and where its time went. (No dataclass: that module loads
    `inspect`, ~10 ms of the lean path's start-up.)"""

    def __init__(self, body: dict[str, object], switch_ms: float, prepare_ms: float = 0.0,
                 record_ms: float = 0.0, switching: tuple[str, ...] = ()) -> None:
        self.body = body  # the mark record in its JSON form (MarkRecord's model_dump)
        self.switch_ms = switch_ms  # from releasing the barrier until the WAL was delivered
        # (or, for the servers in `switching`, until their switch was left to the caller)
        self.switching = switching  # servers whose WAL switch is left to the caller
        self.prepare_ms = prepare_ms  # before the barrier: name check, connections
        self.record_ms = record_ms  # writing the mark record (durably) into the repository

    @cached_property
    def record(self) -> MarkRecord:
        """The mark record as the model reads it (loads pydantic: not on the lean path)."""
        from markship.repository.catalog import MarkRecord

        return MarkRecord.model_validate(self.body)


def mark_body(name: str, group: str, created_at: datetime, barrier_server: str,
              taken: _Taken, delivered: dict[str, Delivery]) -> dict[str, object]:
    """A mark record in its JSON form (the body of a repository.catalog.MarkRecord): the
    one place both paths of `markship mark` and the agent build it."""
    return {
        "name": name, "group": group, "created_at": as_json(created_at),
        "barrier_server": barrier_server,
        "barrier_wait_ms": round(taken.wait_ms, 3), "barrier_hold_ms": round(taken.hold_ms, 3),
        "points": {server: {"lsn": lsn, "timeline": parse_segment_name(walfile).timeline,
                            "wal_file": walfile}
                   for server, (lsn, walfile) in taken.points.items()},
        "delivery": dict(delivered),
    }


def take_mark(config: Config | MarkSettings, repo: Repository, conns: GroupConnections,
              name: str | None = None, switch_wal: bool = True,
              uploads: upload.StreamUploads | None = None,
              switch_later: bool = False, flush_record: bool = True) -> MarkResult:
    """Make one group mark. Raises BadName (markship.names) for a name no mark can have,
    MarkSkipped when the barrier is busy, ServerError when a server fails (the mark is then
    not recorded anywhere).

    `uploads`: the agent's, which hold its receivers' spool; a repository in object storage
    gets streamed WAL only through them (without, every server's WAL is switched).
    `switch_later`: the servers whose WAL is to be switched are left to the caller
    (MarkResult.switching; their connections stay open in `conns`), as the record says.
    `flush_record=False`: the record's name is left for the caller's repo.flush(layout.MARKS)
    (done with another flush at once)."""
    start = time.perf_counter()
    settings = settings_of(config)
    now = utcnow()
    name = names.check_restore_point(name if name is not None else
                                     mark_name(settings.group, now), "mark name")
    record_key = layout.mark_key(name)
    if repo.exists(record_key):
        raise MarkshipError(f"mark {name} already exists",
                            "mark names must never repeat: choose another --name")
    conns.open()
    streaming = (switch_wal and settings.delivery == "stream"
                 and (uploads is not None or delivery.in_place(repo)))

    def body_with(taken: _Taken, delivered: dict[str, Delivery]) -> dict[str, object]:
        return mark_body(name, settings.group, now, settings.barrier_server, taken, delivered)

    # Nearly every mark is delivered as planned: by stream on every server (the agent's), or
    # by a WAL switch on every server (no receivers: `markship mark` without the agent). The
    # record saying so is stored (and flushed to disk) from the moment the barrier is
    # released, while the WAL is delivered, and only named once it was. Otherwise it is
    # dropped and the true record written. The temp object is opened before the barrier is
    # asked for.
    expected: dict[str, Delivery] = (
        dict.fromkeys(conns.conns, "stream" if streaming else "switch") if switch_wal else {})
    staging = _Staging(repo, record_key) if expected else None

    def released(taken: _Taken) -> None:
        if staging is not None:
            staging.fill(body_with(taken, expected))

    try:
        taken = _under_barrier(settings, conns, name, streaming, released)
        before = time.perf_counter()
        delivered, switching = (_deliver(settings, conns, taken, streaming, uploads,
                                         switch_later) if switch_wal else ({}, ()))
    except BaseException:
        if staging is not None:
            staging.drop()
        conns.drop_broken()
        raise
    writing = time.perf_counter()
    staged = staging.take() if staging is not None else None
    body = staging.body if staging is not None else None
    if staged is not None and body is not None and delivered == expected:
        staged.publish(lambda: record_key.rpartition("/")[2], sync=flush_record)
    else:
        if staged is not None:
            staged.discard()
        body = body_with(taken, delivered)
        envelope.write_sealed(repo, record_key, envelope.seal("MarkRecord", body))
    return MarkResult(body, (writing - before) * 1000,
                      prepare_ms=(taken.began - start) * 1000,
                      record_ms=(time.perf_counter() - writing) * 1000, switching=switching)


def result_line(result: MarkResult) -> str:
    """What `markship mark` prints."""
    from markship.pg.lsn import format_lsn
    from markship.timefmt import parse_aware, show

    body = result.body
    points = body["points"]
    delivered = body["delivery"]
    assert isinstance(points, dict) and isinstance(delivered, dict)
    shown = ", ".join(f"{s} {format_lsn(p['lsn'])}" for s, p in points.items())
    how = ", ".join(sorted(set(delivered.values()))) or "none"
    if result.switching:
        how += " (under way: complete once archived, see markship marks)"
    return (f"✓ mark {body['name']} at {show(parse_aware(str(body['created_at'])))}: "
            f"{shown}; barrier held {body['barrier_hold_ms']:.1f} ms; WAL delivered by {how}")


def result_json(result: MarkResult, taken_by: str) -> dict[str, object]:
    """What `markship mark --json` prints, ready for json.dumps (its time as
    `timefmt.show_exact` writes every time in JSON); `taken_by`: "command" or "agent"."""
    from markship.timefmt import parse_aware, show_exact

    shown = result.body | {"created_at": show_exact(parse_aware(str(result.body["created_at"])))}
    return shown | {"delivery_ms": result.switch_ms, "taken_by": taken_by,
                    "switching": sorted(result.switching)}


class _Taken:
    """What a mark did under the barrier."""

    def __init__(self, points: dict[str, tuple[int, str]], began: float, wait_ms: float,
                 hold_ms: float, first_poll: dict[str, fanout.Rows]) -> None:
        self.points = points  # server → (restore point LSN, WAL file)
        self.began = began  # time.perf_counter() when the barrier was asked for
        self.wait_ms = wait_ms
        self.hold_ms = hold_ms
        self.first_poll = first_poll  # the receivers' positions (RECEIVER_FLUSHED)


def _under_barrier(settings: MarkSettings, conns: GroupConnections, name: str,
                   streaming: bool, released: Callable[[_Taken], None]) -> _Taken:
    """Steps 1 and 2: take the barrier, make (and flush) the restore point everywhere,
    release the barrier; `released` is called as soon as the release is confirmed (while
    the receivers' first answers may still be on their way). Raises MarkSkipped or
    ServerError."""
    assert conns.barrier is not None
    barrier_conn = conns.barrier
    began = time.perf_counter()
    try:
        held = marksql.hold_barrier(barrier_conn, barrier_key(settings.group),
                                    int(settings.barrier_timeout * 1000))
    except barrier_conn.Error as exc:
        raise ServerError(f"server(s) {settings.barrier_server} failed (the barrier: "
                          f"{first_line(exc)})",
                          "bring it back, then retry; markship status shows each server"
                          ) from None
    if not held:
        raise MarkSkipped(
            f"mark skipped: the barrier on {settings.barrier_server} stayed busy for "
            f"{settings.barrier_timeout:g} s (a two-phase commit held it)",
            "nothing to do if it is rare; otherwise look for long commit phases",
        )
    got = time.perf_counter()
    try:
        answers = fanout.fan_out({server: (conn, marksql.RESTORE_POINT, (name,))
                                  for server, conn in conns.conns.items()})
    except ServerError:
        if not barrier_conn.closed and not barrier_conn.broken:
            with contextlib.suppress(barrier_conn.Error):  # a dead barrier server releases it
                marksql.release_barrier(barrier_conn)
        raise
    points = {server: (parse_lsn(str(rows[0][0])), str(rows[0][1]))
              for server, rows in answers.items()}
    # Release the barrier; the receivers are asked how far they got in the same round.
    release = f"{settings.barrier_server} (barrier)"
    answered: dict[str, float] = {}

    def taken(first_poll: dict[str, fanout.Rows]) -> _Taken:
        return _Taken(points=points, began=began, wait_ms=(got - began) * 1000,
                      hold_ms=(answered[release] - got) * 1000, first_poll=first_poll)

    def on_answer(key: str) -> None:
        if key == release:
            released(taken({}))

    polls = {server: (conn, marksql.RECEIVER_FLUSHED, ())
             for server, conn in conns.conns.items()}
    first_poll = fanout.fan_out({release: (barrier_conn, "COMMIT", ()),
                                 **(polls if streaming else {})},
                                finished=answered, on_answer=on_answer)
    first_poll.pop(release, None)
    return taken(first_poll)


def _deliver(settings: MarkSettings, conns: GroupConnections, taken: _Taken, streaming: bool,
             uploads: upload.StreamUploads | None,
             switch_later: bool = False) -> tuple[dict[str, Delivery], tuple[str, ...]]:
    """Step 3: the mark's WAL into the repository, by stream where the receiver gets there
    within `[marks] stream_wait` (and, from a spool, is uploaded), else by a WAL switch
    (made here, or left to the caller with `switch_later`): how each server's WAL goes, and
    the servers whose switch is left to the caller."""
    lsns = {server: lsn for server, (lsn, _file) in taken.points.items()}
    streamed = (delivery.wait_flushed(conns.conns, lsns, settings.stream_wait,
                                      taken.first_poll) if streaming else set())
    if streamed and uploads is not None:
        streamed = uploads.ship({server: taken.points[server] for server in streamed})
    rest = [server for server in conns.conns if server not in streamed]
    delivered: dict[str, Delivery] = {**dict.fromkeys(streamed, "stream"),
                                      **dict.fromkeys(rest, "switch")}
    if switch_later:
        return delivered, tuple(rest)
    fanout.fan_out({server: (conns.conns[server], marksql.SWITCH_WAL, ()) for server in rest})
    return delivered, ()


class _Staging:
    """A mark record stored under a temp name in the background (envelope.stage_sealed).

    Begun before the barrier: the writer thread opens the temp object at once, then waits
    for `fill()`, so that once the barrier is released only the write and its fsync are
    left. One long-lived writer thread does it: starting a thread per mark waits for the
    new thread to be scheduled, milliseconds on a busy host. The record is encoded by the
    mark's own thread: encoding in the writer would hold the interpreter lock just when the
    mark's thread wakes up for the servers' answers (it may wait 5 ms, the switch interval).
    """

    def __init__(self, repo: Repository, key: str) -> None:
        self.repo, self.key = repo, key
        self.body: dict[str, object] | None = None
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
                self.staged = envelope.stage_sealed(self.repo, self.key, self._content)
        finally:
            self._done.set()

    def _content(self) -> bytes:
        self._given.wait()
        if self._data is None:
            raise _NoRecord
        return self._data

    def fill(self, body: dict[str, object]) -> None:
        self._data = envelope.seal("MarkRecord", body)
        self.body = body
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


