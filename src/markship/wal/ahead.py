"""Pushing ahead: when PostgreSQL's archiver has fallen behind, the WAL files after the one it
asked for are claimed (wal.spool) and pushed by a background process, so the archiver's calls
for them return at once."""

from __future__ import annotations

import os

from markship.errors import MarkshipError
from markship.wal.push import push

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from collections import deque

    from markship.repository.base import Repository
    from markship.wal.settings import WalSettings

def claim_ahead(server: str, path: str, limit: int, spool_for: str) -> dict[str, int]:
    """The next ready WAL files after `path` (at most `limit`) that nobody pushed or claimed
    yet, claimed now (markship.wal.spool.claim): name → claim descriptor."""
    from collections import deque

    from markship.wal import spool

    folder = spool.spool_dir(spool_for, server)
    name = os.path.basename(path)
    ready = spool.ready_files(path)
    spool.forget_except(folder, set(ready))
    return _claim(folder, os.path.dirname(path), deque(n for n in ready if n > name), limit)


def _claim(folder: str, directory: str, names: deque[str], limit: int) -> dict[str, int]:
    """Claim up to `limit` of `names` (taken from the left) not pushed or claimed yet."""
    from markship.wal import spool

    claims: dict[str, int] = {}
    while names and len(claims) < limit:
        wal_name = names.popleft()
        wal_path = os.path.join(directory, wal_name)
        if spool.already_pushed(folder, wal_path):
            continue
        fd = spool.claim(folder, wal_name)
        if fd is None:
            continue  # another pusher has it (or the spool is not ours alone)
        if spool.already_pushed(folder, wal_path):  # finished while we looked
            spool.let_go(folder, wal_name, fd)
            continue
        claims[wal_name] = fd
    return claims


def push_ahead(repo: Repository, server: str, path: str, settings: WalSettings,
               spool_for: str, claims: dict[str, int]) -> int:
    """Push the claimed WAL files two at a time and leave a marker for each, so the archiver's
    call for it returns at once; as each one is done, claim the next ready file, so that
    `push_ahead` files stay claimed ahead of the archiver until none is left (the ready list
    is read again only when the names read before are used up). Failures are left for the
    archiver's own calls to report. Returns how many files were pushed."""
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    from markship.wal import spool

    folder = spool.spool_dir(spool_for, server)
    directory = os.path.dirname(path)
    copies = settings.open_copies("sync") if settings.copies else []

    def one(wal_name: str, fd: int) -> bool:
        wal_path = os.path.join(directory, wal_name)
        try:
            push(repo, server, wal_path, settings.compression_level)
            if copies:  # the marker says "archived": in every sync copy too
                from markship.wal.copies import push_to_copies

                push_to_copies(repo, copies, server, wal_path)
            spool.mark_pushed(folder, wal_path)
        except (MarkshipError, OSError, ValueError):
            return False
        finally:
            spool.let_go(folder, wal_name, fd)
        return True

    pushed = 0
    last = max(claims)
    names: deque[str] = deque()
    with ThreadPoolExecutor(max_workers=2) as pool:
        running: set[Future[bool]] = {pool.submit(one, n, fd) for n, fd in sorted(claims.items())}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            pushed += sum(future.result() for future in done)
            if not names:
                names.extend(n for n in spool.ready_files(path) if n > last)
            more = _claim(folder, directory, names, settings.push_ahead - len(running))
            if more:
                last = max(last, *more)
                running |= {pool.submit(one, n, fd) for n, fd in sorted(more.items())}
    return pushed


def push_ahead_in_background(repo: Repository, server: str, path: str,
                             settings: WalSettings, spool_for: str) -> None:
    """When PostgreSQL has fallen behind (a backlog of ready WAL files), push the next ones in
    a background process while this call pushes its own.

    PostgreSQL runs archive_command for one file at a time. The files after this one are
    claimed here, then a forked child (its own session, no terminal, stdio on /dev/null)
    pushes them while this process pushes `path` and exits; the archiver's call for a
    claimed file returns at once if it is pushed, or waits for its pusher to let go
    (spool.pushed_or_waited), and pushes the file itself if no marker came (the pusher
    failed or was killed: the kernel drops its locks). So the process starts of those calls
    overlap with the compression of the files after them."""
    try:
        claims = claim_ahead(server, path, settings.push_ahead, spool_for)
    except OSError:
        return  # e.g. /var/tmp full or not writable: the archiver's calls push one by one
    if not claims:
        return
    try:
        child = os.fork()
    except OSError:  # no process to spare: the same
        child = -1
    if child == 0:  # the child: claims are inherited, stays single-threaded until here
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for stdio in (0, 1, 2):
                os.dup2(devnull, stdio)
            push_ahead(repo, server, path, settings, spool_for, claims)
        finally:
            os._exit(0)
    from markship.wal import spool

    folder = spool.spool_dir(spool_for, server)
    for name, fd in claims.items():
        if child > 0:
            os.close(fd)  # the child holds the locks now
        else:
            spool.let_go(folder, name, fd)
