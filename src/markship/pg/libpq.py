"""A minimal PostgreSQL client on libpq itself (ctypes), for `markship mark` on its lean path.

Importing psycopg costs ~100 ms (its Python layer, asyncio, logging, importlib.metadata), more
than the whole mark. The mark needs only a few calls of libpq, the same library psycopg
wraps: connect (every server at once), send a statement, read its answer. This module gives
them through the same method names as psycopg's `pq.PGconn`, so markship.pg.fanout and
markship.pg.marksql run the mark's statements on either kind of connection.

The libpq loaded is the one the installed psycopg binary bundles when there is one (same
version, same SSL and GSSAPI build as the full path), else the system's `libpq.so.5`.
Standard library only; a conninfo is read by libpq exactly as psycopg would pass it.
"""

from __future__ import annotations

import ctypes
import os
import select
import sys
import time
from ctypes import POINTER, c_char_p, c_int, c_void_p

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

CONNECTION_BAD = 1
POLLING_FAILED, POLLING_READING, POLLING_WRITING, POLLING_OK = 0, 1, 2, 3


class LibpqError(Exception):
    """libpq failed (a connection lost, a statement that could not be sent)."""


def _library_path() -> str:
    for folder in sys.path:
        libs = os.path.join(folder or ".", "psycopg_binary.libs")
        try:
            found = sorted(n for n in os.listdir(libs) if n.startswith("libpq"))
        except OSError:
            continue
        if found:
            return os.path.join(libs, found[0])
    return "libpq.so.5"


_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(_library_path())
    for name, restype, argtypes in (
        ("PQconnectStartParams", c_void_p, [POINTER(c_char_p), POINTER(c_char_p), c_int]),
        ("PQconnectPoll", c_int, [c_void_p]),
        ("PQstatus", c_int, [c_void_p]),
        ("PQsocket", c_int, [c_void_p]),
        ("PQerrorMessage", c_char_p, [c_void_p]),
        ("PQfinish", None, [c_void_p]),
        ("PQsendQuery", c_int, [c_void_p, c_char_p]),
        ("PQsendQueryParams", c_int, [c_void_p, c_char_p, c_int, c_void_p, POINTER(c_char_p),
                                      c_void_p, c_void_p, c_int]),
        ("PQexec", c_void_p, [c_void_p, c_char_p]),
        ("PQconsumeInput", c_int, [c_void_p]),
        ("PQisBusy", c_int, [c_void_p]),
        ("PQgetResult", c_void_p, [c_void_p]),
        ("PQresultStatus", c_int, [c_void_p]),
        ("PQntuples", c_int, [c_void_p]),
        ("PQnfields", c_int, [c_void_p]),
        ("PQgetisnull", c_int, [c_void_p, c_int, c_int]),
        ("PQgetlength", c_int, [c_void_p, c_int, c_int]),
        ("PQgetvalue", c_void_p, [c_void_p, c_int, c_int]),
        ("PQresultErrorMessage", c_char_p, [c_void_p]),
        ("PQresultErrorField", c_char_p, [c_void_p, c_int]),
        ("PQclear", None, [c_void_p]),
    ):
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    _lib = lib
    return lib


class PGresult:
    """One result, read at once (the subset of psycopg's `pq.PGresult` a mark reads)."""

    def __init__(self, handle: int) -> None:
        lib = _load()
        self.status: int = lib.PQresultStatus(handle)
        self.ntuples: int = lib.PQntuples(handle)
        self.nfields: int = lib.PQnfields(handle)
        self._values = [[None if lib.PQgetisnull(handle, row, col) else
                         ctypes.string_at(lib.PQgetvalue(handle, row, col),
                                          lib.PQgetlength(handle, row, col))
                         for col in range(self.nfields)] for row in range(self.ntuples)]
        self.error_message: bytes = lib.PQresultErrorMessage(handle) or b""
        self._sqlstate: bytes | None = lib.PQresultErrorField(handle, ord("C"))
        lib.PQclear(handle)

    def get_value(self, row: int, column: int) -> bytes | None:
        return self._values[row][column]

    def error_field(self, code: int) -> bytes | None:
        return self._sqlstate if code == ord("C") else None


class PGconn:
    """A libpq connection (the subset of psycopg's `pq.PGconn` markship.pg.fanout uses)."""

    def __init__(self, handle: int) -> None:
        self._handle: int | None = handle

    def _live(self) -> int:
        if self._handle is None:
            raise LibpqError("the connection is closed")
        return self._handle

    @property
    def socket(self) -> int:
        return int(_load().PQsocket(self._live()))

    @property
    def error_message(self) -> bytes:
        return _load().PQerrorMessage(self._live()) or b""

    def _check(self, ok: int) -> None:
        if not ok:
            raise LibpqError(self.error_message.decode(errors="replace").strip())

    def send_query(self, command: bytes) -> None:
        self._check(_load().PQsendQuery(self._live(), command))

    def send_query_params(self, command: bytes, params: list[bytes]) -> None:
        values = (c_char_p * len(params))(*params)
        self._check(_load().PQsendQueryParams(self._live(), command, len(params), None,
                                              values, None, None, 0))

    def consume_input(self) -> None:
        self._check(_load().PQconsumeInput(self._live()))

    def is_busy(self) -> bool:
        return bool(_load().PQisBusy(self._live()))

    def get_result(self) -> PGresult | None:
        handle = _load().PQgetResult(self._live())
        return PGresult(handle) if handle else None

    def exec_(self, command: bytes) -> PGresult:
        handle = _load().PQexec(self._live(), command)
        if not handle:
            raise LibpqError(self.error_message.decode(errors="replace").strip())
        return PGresult(handle)

    def finish(self) -> None:
        if self._handle is not None:
            _load().PQfinish(self._handle)
            self._handle = None


class Connection:
    """An autocommit connection to one server, as markship.pg.fanout expects of one."""

    Error = LibpqError

    def __init__(self, pgconn: PGconn) -> None:
        self.pgconn = pgconn

    @property
    def closed(self) -> bool:
        return self.pgconn._handle is None

    @property
    def broken(self) -> bool:
        return not self.closed and _load().PQstatus(self.pgconn._handle) == CONNECTION_BAD

    def close(self) -> None:
        self.pgconn.finish()


class Connecting:
    """Connections begun by `start_all`, not yet finished: libpq works on them as the
    caller does something else (the server forks and authenticates a backend meanwhile)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.pending: dict[str, int] = {}  # server → PGconn handle
        self.wants: dict[str, int] = {}  # server → what PQconnectPoll last asked for
        self.done: dict[str, Connection] = {}
        self.failed: dict[str, str] = {}

    def poll(self, wait: float) -> None:
        """One round: wait at most `wait` seconds for a socket, then advance the ready."""
        lib = _load()
        wants = self.wants
        reading = {lib.PQsocket(self.pending[s]): s for s, w in wants.items()
                   if w == POLLING_READING}
        writing = {lib.PQsocket(self.pending[s]): s for s, w in wants.items()
                   if w == POLLING_WRITING}
        ready_r, ready_w, _ = select.select(list(reading), list(writing), [], max(wait, 0))
        for server in [reading[fd] for fd in ready_r] + [writing[fd] for fd in ready_w]:
            handle = self.pending[server]
            state = lib.PQconnectPoll(handle)
            if state == POLLING_OK:
                self.done[server] = Connection(PGconn(handle))
                del wants[server]
            elif state == POLLING_FAILED:
                self.failed[server] = (lib.PQerrorMessage(handle) or b"").decode(
                    errors="replace")
                lib.PQfinish(handle)
                del wants[server]
            else:
                wants[server] = state

    def finish(self) -> tuple[dict[str, Connection], dict[str, str]]:
        """Wait for every connection: (connections, server → libpq's message for those
        that failed)."""
        while self.wants:
            left = self.deadline - time.monotonic()
            if left <= 0:
                for server in self.wants:
                    self.failed[server] = "timeout expired"
                    _load().PQfinish(self.pending[server])
                self.wants.clear()
                break
            self.poll(left)
        return self.done, self.failed


def start_all(conninfos: Mapping[str, str], timeout: float = 5.0) -> Connecting:
    """Begin connecting to every server at once, without waiting: each server gets the
    start of the conversation (its startup packet, as far as the socket takes it now).
    Same parameters as markship.pg.sql.connect gives psycopg: the conninfo, then
    `connect_timeout` and `application_name` over it."""
    lib = _load()
    started = Connecting(time.monotonic() + timeout)
    keys = (c_char_p * 4)(b"dbname", b"connect_timeout", b"application_name", None)
    for server, conninfo in conninfos.items():
        values = (c_char_p * 4)(conninfo.encode(), str(int(timeout)).encode(), b"markship",
                                None)
        handle = lib.PQconnectStartParams(keys, values, 1)
        if not handle:
            started.failed[server] = "out of memory"
        elif lib.PQstatus(handle) == CONNECTION_BAD:
            started.failed[server] = (lib.PQerrorMessage(handle) or b"").decode(
                errors="replace")
            lib.PQfinish(handle)
        else:
            started.pending[server] = handle
            started.wants[server] = POLLING_WRITING
    started.poll(0)
    return started


def connect_all(conninfos: Mapping[str, str], timeout: float = 5.0,
                ) -> tuple[dict[str, Connection], dict[str, str]]:
    """Connect to every server at once from this thread: (connections, server → libpq's
    message for those that failed)."""
    return start_all(conninfos, timeout).finish()
