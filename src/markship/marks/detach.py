"""The WAL switch after a mark, finished by a child process the command does not wait for.

`pg_switch_wal()` answers only once the server has written out the rest of the segment (up
to 16 MB of padding, flushed to disk): about 130 ms under load, as long as all the rest of
a `markship mark`. Waiting for it gives the caller nothing: the restore points are durable
before it starts, and the mark is complete only once the archiver has stored the segments,
which no `markship mark` waited for anyway (`markship mark --wait` does). So the lean path
sends the switches (they are on their way before it returns) and hands its connections to a
forked child, which reads the answers and ends each conversation as libpq ends it; the command
exits meanwhile. The child keeps the connections open until the servers answered: a server
whose client went away first logs "could not send data to client" and "connection to client
lost".

Standard library only (the lean path of `markship mark`).
"""

from __future__ import annotations

import os
import sys

from markship.pg import fanout, marksql

SWITCH_TIMEOUT = 120.0  # seconds the child waits for the servers' answers


def hand_off(conns: dict[str, fanout.Link]) -> bool:
    """Send the WAL switches on `conns`, then leave their answers to a forked child, which
    reads them and closes the connections: True in the parent once the child runs (the
    connections are the child's: the parent must neither use nor close them). False when no
    child could be made: the answers were then read here (raises ServerError as fan_out)."""
    switching = fanout.send({server: (conn, marksql.SWITCH_WAL, ())
                             for server, conn in conns.items()})
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        switching.collect(SWITCH_TIMEOUT)
        return False
    if pid:
        return True
    code = 1
    try:
        os.setsid()  # not the terminal's: a Ctrl-C or hang-up after the command is not for it
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # whoever reads the command's output sees it end with the command
            os.dup2(null, fd)
        try:
            switching.collect(SWITCH_TIMEOUT)
            code = 0
        finally:
            for conn in conns.values():
                conn.close()
    finally:
        os._exit(code)  # nothing of the parent's (buffers, exit handlers) runs twice
