"""`markship mark` through the running agent.

The agent (`markship run`) has its connections open and everything imported, so a mark it
makes costs a few round trips. A `markship mark` that made the mark itself would first start
Python with psycopg, pydantic and click: 0.3-0.5 s on an idle host, seconds on a loaded one.
So the command asks the agent when one runs, and makes the mark itself otherwise.

The agent listens on a Unix socket in its spool folder (markship.wal.spool; the agent's OS user's,
mode 0700), named after a digest of the config file's real path (short: socket paths are
limited to 108 bytes). The client, on the lean start-up path, finds it from the config path
and the repository's OS user, and trusts it only if the folder and the socket belong to that
user and the peer process runs as that user. One request per connection, one JSON line each
way: `{"op": "mark", "config": PATH, "name": ..., "switch_wal": ...}` and
`{"exit": N, "stdout": ..., "stderr": ...}`; an agent of another config file answers
`{"not_mine": true}` and the command does the work itself. Standard library only.
"""

from __future__ import annotations

import os
import stat

from markship import userspool

TYPE_CHECKING = False
if TYPE_CHECKING:  # socket and json load only once an agent's socket is there
    import socket
    from collections.abc import Callable
    from typing import Any

MAX_LINE = 1 << 20
ANSWER_TIMEOUT = 120.0  # a mark waits at most barrier_timeout + stream_wait + a WAL switch
NO_AGENT_ENV = "MARKSHIP_NO_AGENT"  # set (to anything) to make marks in the command itself


def socket_path(config_path: str, uid: int) -> str:
    try:
        from _blake2 import blake2b  # hashlib would load OpenSSL (~5 ms)
    except ImportError:
        from hashlib import blake2b
    digest = blake2b(os.path.realpath(config_path).encode(), digest_size=8).hexdigest()
    return os.path.join(userspool.top(uid), f"agent-{digest}.sock")


def peer_uid(conn: socket.socket) -> int:
    import socket
    import struct

    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


def read_line(conn: socket.socket) -> bytes:
    """One newline-terminated message (without the newline); b"" if the peer went away."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
        if len(data) > MAX_LINE:
            raise ValueError("message too long")
    return data[:-1]


def _owned_private(path: str, uid: int, kind: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return info.st_uid == uid and stat.S_IFMT(info.st_mode) == kind and \
        (kind == stat.S_IFSOCK or info.st_mode & 0o077 == 0)


def ask(config_path: str, os_user: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """The agent's answer to `request`, or None when no trustworthy agent listens (the
    caller then does the work itself). Raises OSError when the agent took the request but
    gave no answer: the work may or may not have been done."""
    import pwd

    try:
        uid = pwd.getpwnam(os_user).pw_uid
    except KeyError:
        return None
    path = socket_path(config_path, uid)
    if not (_owned_private(userspool.top(uid), uid, stat.S_IFDIR)
            and _owned_private(path, uid, stat.S_IFSOCK)):
        return None
    import json
    import socket

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(5.0)
        try:
            conn.connect(path)
        except OSError:
            return None  # a socket left behind by an agent that is gone
        if peer_uid(conn) != uid:
            return None
        conn.settimeout(ANSWER_TIMEOUT)
        conn.sendall(json.dumps(request).encode() + b"\n")
        answer = read_line(conn)
    finally:
        conn.close()
    if not answer:
        raise OSError("the agent closed the connection without an answer")
    reply: dict[str, Any] = json.loads(answer)
    return None if reply.get("not_mine") else reply


def mark_via_agent(args: list[str], config: str | None) -> int | None:
    """`markship mark ARGS` answered by the agent: the exit status, or None to run the
    command in this process (no agent, an option this path does not know, a config problem
    the full command reports better)."""
    import sys

    if os.environ.get(NO_AGENT_ENV):
        return None
    from markship.marks.command import lean_args

    parsed = lean_args(args)
    if parsed is None:
        return None
    found, flags = parsed
    name = found.get("--name")
    from markship.config import file as configfile
    from markship.errors import MarkshipError
    from markship.wal.settings import load_settings

    try:
        path = configfile.locate(config)
        os_user = load_settings(path).os_user
    except (MarkshipError, OSError, ValueError):
        return None
    request = {"op": "mark", "config": os.path.realpath(path), "name": name,
               "switch_wal": "--no-switch" not in flags, "json": "--json" in flags}
    try:
        reply = ask(path, os_user, request)
    except (OSError, ValueError) as exc:
        print(f"markship: error: the agent (markship run) took the mark request but did not "
              f"answer ({exc}): markship marks shows whether the mark was made; retry if not",
              file=sys.stderr)
        return 1
    if reply is None:
        return None
    sys.stdout.write(str(reply.get("stdout", "")))
    sys.stderr.write(str(reply.get("stderr", "")))
    return int(reply.get("exit", 1))


class Request:
    """One request taken by the agent's listener, answered once by the agent's loop."""

    def __init__(self, body: dict[str, Any], conn: socket.socket, uid: int) -> None:
        self.body, self.conn, self.uid = body, conn, uid

    def answer(self, code: int, stdout: str = "", stderr: str = "", **extra: object) -> None:
        import json

        reply = {"exit": code, "stdout": stdout, "stderr": stderr, **extra}
        try:
            self.conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the client gave up; the mark record says what happened
        finally:
            self.conn.close()


class Listener:
    """The agent's end of the socket: a thread accepts requests from its own OS user (or
    root) and hands them to `deliver`; the agent's loop answers them."""

    def __init__(self, config_path: str, deliver: Callable[[Request], None]) -> None:
        self.config = os.path.realpath(config_path)
        self.path = socket_path(config_path, os.getuid())
        self.deliver = deliver
        self.sock: socket.socket | None = None

    def start(self) -> None:
        """Create the socket; OSError when the spool is not private to this user."""
        import threading

        uid = os.getuid()
        top = userspool.top(uid)
        os.makedirs(top, mode=0o700, exist_ok=True)
        info = os.lstat(top)
        if info.st_uid != uid or not stat.S_ISDIR(info.st_mode):
            raise OSError(f"{top} is not a folder of this OS user")
        if info.st_mode & 0o077:
            os.chmod(top, 0o700)  # ours: made private
        # One agent per repository (its lock), so a socket here is a dead agent's leftover.
        if os.path.lexists(self.path):
            os.unlink(self.path)
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(8)
        self.sock = sock
        threading.Thread(target=self._accept, args=(sock,), name="markship-requests",
                         daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        import json

        while True:
            try:
                conn, _address = sock.accept()
            except OSError:
                return  # closed: the agent is stopping
            try:
                conn.settimeout(5.0)
                uid = peer_uid(conn)
                if uid not in (os.getuid(), 0):
                    conn.close()
                    continue
                body = json.loads(read_line(conn) or b"null")
                if not isinstance(body, dict):
                    raise ValueError("not a request")
                conn.settimeout(None)
            except (OSError, ValueError, RecursionError):  # deep nesting: RecursionError
                conn.close()
                continue
            request = Request(body, conn, uid)
            if body.get("config") != self.config:
                request.answer(2, not_mine=True)  # another group's command: it marks itself
                continue
            self.deliver(request)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:  # noqa: SIM105
                os.unlink(self.path)
            except OSError:
                pass
