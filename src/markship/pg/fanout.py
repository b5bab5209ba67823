"""One statement on several servers at once, from one thread.

A group mark asks every server the same thing and waits for all answers. It used a thread
per server before; on a busy host each hand-over between Python threads costs milliseconds
(a waiting thread gets the interpreter lock only after the switch interval, 5 ms), and a mark
makes three such rounds. Here the statements go out on every connection's libpq socket first,
then the answers are read in whatever order they arrive: the round costs the slowest server's
answer and nothing more.

The connections must be idle, autocommit connections that no other thread uses meanwhile
(markship.marks.take.GroupConnections): psycopg's, or markship.pg.libpq's on the lean path of
`markship mark` (both offer the same low-level calls). Standard library only.
"""

from __future__ import annotations

import select
import time

from markship.errors import first_line

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the lean path of `markship mark` (~5-15 ms)
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Protocol

    class Link(Protocol):
        """A connection as fan_out uses it: psycopg's Connection or markship.pg.libpq's."""

        @property
        def pgconn(self) -> Any: ...  # psycopg's pq.PGconn, or markship.pg.libpq.PGconn

        @property
        def Error(self) -> type[Exception]: ...  # what its pgconn raises

        @property
        def closed(self) -> bool: ...

        @property
        def broken(self) -> bool: ...

        def close(self) -> None: ...

Rows = list[tuple[str | None, ...]]
COMMAND_OK, TUPLES_OK = 1, 2  # libpq's ExecStatusType (psycopg's pq.ExecStatus)


def fan_out(calls: Mapping[str, tuple[Link, str, Sequence[str]]],
            timeout: float = 30.0, finished: dict[str, float] | None = None,
            on_answer: Callable[[str], None] | None = None) -> dict[str, Rows]:
    """Run `(connection, statement, text parameters)` per server, all at once.

    Returns the rows (as text) of each server's last result. Raises ServerError naming every
    server that failed or did not answer within `timeout` seconds; such a connection is
    closed (its statement may still be running), so the caller reconnects it.
    `finished`, when given, gets each server's time.perf_counter() at its answer;
    `on_answer(server)` is called at each successful answer, while others may still run.
    """
    return send(calls).collect(timeout, finished, on_answer)


class Sent:
    """Statements sent by `send`, their answers not read yet."""

    def __init__(self, calls: Mapping[str, tuple[Link, str, Sequence[str]]]) -> None:
        self.calls = calls
        self.waiting: dict[int, str] = {}  # socket → server
        self.failures: dict[str, str] = {}

    def collect(self, timeout: float = 30.0, finished: dict[str, float] | None = None,
                on_answer: Callable[[str], None] | None = None) -> dict[str, Rows]:
        """The answers, as fan_out gives them (it raises what fan_out raises)."""
        calls, waiting, failures = self.calls, self.waiting, self.failures
        results: dict[str, Rows] = {}
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            ready = select.select(list(waiting), [], [], max(left, 0))[0] if left > 0 else []
            if not ready and left <= 0:
                for name in waiting.values():
                    failures[name] = f"no answer within {timeout:g} s"
                    calls[name][0].close()
                break
            for sock in ready:
                name = waiting[sock]
                conn = calls[name][0]
                try:
                    if _read(conn.pgconn, name, results, failures):
                        del waiting[sock]
                        if finished is not None:
                            finished[name] = time.perf_counter()
                        if on_answer is not None and name not in failures:
                            on_answer(name)
                except conn.Error as exc:
                    failures[name] = first_line(exc)
                    del waiting[sock]
        if failures:
            from markship.perserver import servers_failed

            raise servers_failed(failures)
        return results


def send(calls: Mapping[str, tuple[Link, str, Sequence[str]]]) -> Sent:
    """Send each server its statement (the first half of fan_out): once this returns, every
    statement that could be sent is on its way."""
    sent = Sent(calls)
    for name, (conn, statement, params) in calls.items():
        try:
            if params:
                conn.pgconn.send_query_params(statement.encode(), [p.encode() for p in params])
            else:
                conn.pgconn.send_query(statement.encode())
            sent.waiting[conn.pgconn.socket] = name
        except conn.Error as exc:
            sent.failures[name] = first_line(exc)
    return sent


def _read(pgconn: Any, name: str, results: dict[str, Rows],
          failures: dict[str, str]) -> bool:
    """Take in what arrived on one connection; True once its statement is finished."""
    pgconn.consume_input()
    while not pgconn.is_busy():
        result = pgconn.get_result()
        if result is None:
            return True
        if result.status == TUPLES_OK:
            results[name] = [
                tuple(None if (v := result.get_value(row, col)) is None else bytes(v).decode()
                      for col in range(result.nfields))
                for row in range(result.ntuples)]
        elif result.status == COMMAND_OK:
            results.setdefault(name, [])
        else:
            message = (result.error_message or b"").decode(errors="replace").strip()
            failures[name] = message.removeprefix("ERROR:").strip().splitlines()[0] \
                if message else str(result.status)
    return False
