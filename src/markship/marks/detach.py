"""The WAL switch after a mark, finished by a child process the command does not wait for.

`pg_switch_wal()` answers only once the server has written out the rest of the segment (up
to 16 MB of padding, flushed to disk): about 130 ms under load, as long as all the rest of
a `markship mark`. Waiting for it gives the caller nothing: the restore points are durable
before it starts, and the mark is complete only once the archiver has stored the segments,
which no `markship mark` waited for anyway (`markship mark --wait` does). So the lean path
hands its connections to a forked child, which sends the switches (the command goes on once
they are sent), reads the answers and ends each conversation as libpq ends it; the command
records the mark and exits meanwhile. The child keeps the connections open until the
servers answered: a server whose client went away first logs "could not send data to
client" and "connection to client lost".

Standard library only (the lean path of `markship mark`).
"""

from __future__ import annotations

import os
import select
import sys

from markship.pg import fanout, marksql

SWITCH_TIMEOUT = 120.0  # seconds the child waits for the servers' answers
SENT_TIMEOUT = 2.0  # seconds the command waits for the child to have sent the switches


def hand_off(conns: dict[str, fanout.Link]) -> bool:
    """Fork a child that switches WAL on `conns` and closes them; True in the parent once
    the child has sent the switches (the connections are the child's: the parent must
    neither use nor close them), False when no child could be made (the caller switches WAL
    itself)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        sent_r, sent_w = os.pipe()
    except OSError:
        return False
    try:
        pid = os.fork()
    except OSError:
        os.close(sent_r)
        os.close(sent_w)
        return False
    if pid:
        # Until the switches are on their way, a server stopped right after the command
        # could end without them: the segment holding the mark would then wait for its
        # restart to be archived.
        os.close(sent_w)
        try:
            select.select([sent_r], [], [], SENT_TIMEOUT)
        finally:
            os.close(sent_r)
        return True
    code = 1
    try:
        os.close(sent_r)
        os.setsid()  # not the terminal's: a Ctrl-C or hang-up after the command is not for it
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # whoever reads the command's output sees it end with the command
            os.dup2(null, fd)

        def sent() -> None:
            os.write(sent_w, b".")
            os.close(sent_w)

        try:
            fanout.fan_out({server: (conn, marksql.SWITCH_WAL, ())
                            for server, conn in conns.items()}, timeout=SWITCH_TIMEOUT,
                           on_sent=sent)
            code = 0
        finally:
            for conn in conns.values():
                conn.close()
    finally:
        os._exit(code)  # nothing of the parent's (buffers, exit handlers) runs twice
