"""Network faults on loopback.
- Relay: markship talks to a server through it, and `cut()` makes the server unreachable at
  once (open connections reset, new ones refused) while the server and what it holds live
  on; `restore()` opens the same port again.
- Blackhole: a port that drops every connection attempt (a client waits for its timeout).
- Knocks: a port that counts who connects to it."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

from markship.pg.scratch import free_port


class Relay:
    """127.0.0.1:`port` → 127.0.0.1:`target`, counting the bytes sent towards the target."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.sent_bytes = 0
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        """Accept connections (again) on the relay's port."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(OSError):
                # SO_LINGER 0: close sends a reset, as a server that died would
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
                if counted:
                    with self._lock:
                        self.sent_bytes += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                if source in self._connections:
                    self._connections.remove(source)
            source.close()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.cut()


class Blackhole:
    """A port on 127.0.0.1 that answers nothing, as a host behind a network that drops
    packets: its listener never accepts and its queue is full, so the kernel drops every new
    connection's SYN and a client waits for its connect timeout (nothing is refused)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(0)
        # one connection fills a queue of length 0; the ones after it are never answered
        self._filler = socket.create_connection(("127.0.0.1", self.port))
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", self.port))
            raise AssertionError("a connection got through the blackhole")
        except TimeoutError:
            pass
        finally:
            probe.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._filler.close()
        self._listener.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class Knocks:
    """A port on 127.0.0.1 that counts the connections made to it and closes each at once,
    unanswered: every request to it fails, and each try is one connection."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.count = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.count += 1
            client.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def __enter__(self) -> Knocks:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()
