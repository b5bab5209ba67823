"""Locks in object storage: lease objects (see markship.repository.s3).

Written create-only, renewed by their holder every third of the lease, taken over (with a
conditional write on the old one's ETag) only once expired — or at once when the holder ran
on this host and its process is gone.
"""

from __future__ import annotations

import os
import threading
import time

from markship.errors import ConflictError, LockedError, ObjectMissing, RepositoryError
from markship.repository.fs import _holder, _host_fingerprint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any



class Lease:
    """A lock held as a lease object (see the module docstring)."""

    def __init__(self, repo: Any, key: str, name: str, purpose: str,
                 seconds: float) -> None:
        self.repo, self.key, self.name, self.purpose = repo, key, name, purpose
        self.seconds = seconds
        self.e_tag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _note(self) -> bytes:
        import json

        return json.dumps(
            {"command": " ".join(self.purpose.split()[:2]), "pid": os.getpid(),
             "host": _host_fingerprint(),
             "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "expires": time.time() + self.seconds}).encode()

    def _write(self, mode: Any) -> str:
        import obstore

        result = self.repo._call("writing", self.key, obstore.put, self.key, self._note(),
                                 mode=mode, use_multipart=False)
        return str(result["e_tag"])

    def acquire(self) -> None:
        """Take the lease, or raise LockedError naming its live holder."""
        import obstore

        try:
            self.e_tag = self._write("create")
            return
        except ConflictError:
            pass
        try:
            current = self.repo._call("reading", self.key, obstore.get, self.key)
        except ObjectMissing:  # released meanwhile
            self.e_tag = self._write("create")
            return
        meta, note = current.meta, bytes(current.bytes())
        expires = _live_until(note, meta, self.seconds)
        if expires is not None:
            raise LockedError(
                f"another job is running: {_holder(note.decode(errors='replace'))} holds the "
                f"{self.name} lease (renewed until {expires - time.time():.0f} s from now)",
                "wait for it to finish, or stop it; a holder that died loses it when the "
                "lease expires")
        try:  # expired: take it over, unless someone else did first
            self.e_tag = self._write({"e_tag": meta["e_tag"]})
        except ConflictError:
            raise LockedError(f"another job took the expired {self.name} lease just now",
                              "wait for it to finish, then retry") from None

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.e_tag = self._write({"e_tag": self.e_tag})
            except ConflictError:
                self.lost = True
                import sys

                print(f"markship: error: the {self.name} lease was taken over by another "
                      "process (this one could not renew it in time)", file=sys.stderr)
                return
            except Exception:
                continue  # an outage: keep trying until the lease expires

    def __enter__(self) -> None:
        self.acquire()
        self._renewer = threading.Thread(target=self._renew, name=f"lease {self.name}",
                                         daemon=True)
        self._renewer.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self.lost:
            return
        try:
            meta = self.repo._head(self.key)
            if meta is not None and meta.get("e_tag") == self.e_tag:
                self.repo.delete(self.key)
        except RepositoryError:
            pass  # it expires by itself


def holder(repo: Any, key: str, seconds: float) -> str | None:
    """Who holds the lease at `key` (as LockedError names them), None when nobody does: no
    lease object, an expired one, or one whose holder died on this host. Only reads."""
    import obstore

    try:
        current = repo._call("reading", key, obstore.get, key)
    except ObjectMissing:
        return None
    note = bytes(current.bytes())
    if _live_until(note, current.meta, seconds) is None:
        return None
    return _holder(note.decode(errors="replace"))


def _live_until(note: bytes, meta: Any, seconds: float) -> float | None:
    """When a lease (its note and object metadata) runs out; None when it is not held any
    more: expired, or its holder ran on this host and is gone. `acquire` and `holder` judge
    by this one rule."""
    expires = _expiry(note, meta["last_modified"].timestamp() + seconds)
    if expires <= time.time() or _holder_died_here(note):
        return None
    return expires


def _holder_died_here(note: bytes) -> bool:
    """Whether the lease's holder ran on this host and its process is gone (then nobody need
    wait for the lease to expire)."""
    import json

    from markship.repository.fs import _pid_alive

    try:
        info = json.loads(note)
        pid, host = int(info["pid"]), str(info["host"])
    except (ValueError, KeyError, TypeError):
        return False
    return host == _host_fingerprint() and pid > 0 and not _pid_alive(pid)


def _expiry(note: bytes, fallback: float) -> float:
    """When a lease note says it expires (repository data: a damaged note falls back to the
    object's modification time plus the lease)."""
    import json

    try:
        value = float(json.loads(note)["expires"])
    except (ValueError, KeyError, TypeError):
        return fallback
    return value if value == value and abs(value) < 1e11 else fallback
