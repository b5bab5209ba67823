"""Markers of WAL files already pushed ahead, so PostgreSQL's next archive_command call for
them returns at once (imports nothing but `os`: this runs before anything else).

When PostgreSQL falls behind (a backlog of `.ready` files), `wal-push` for one segment claims
the next few ready ones (a locked claim file each, here) and a background process pushes them,
leaving a marker per file here: its size, modification time and inode. A later call for such a
file only compares those with the file on disk, or waits for the claim's pusher first.
A ready WAL file is complete and never rewritten (recycled files take *new* names), so a
matching marker proves the stored object holds this very file (or, with pg_wal protection,
that it was given up and is in a gap record: markship.wal.guard). Losing the spool (it lives
under /var/tmp) only means the next call takes the normal path, which recognises an
identical stored copy by its digest.

The spool also holds the parsed WAL settings (`cached_settings`) and, under `gap_dir`, the
records of WAL that pg_wal protection gave up while the repository could not be written
(markship.wal.guard): those must not be lost, and leave the spool only once the repository
has them.
"""

from __future__ import annotations

import os

from markship import userspool


def spool_dir(config_path: str, server: str) -> str:
    """One spool per (config file, server) and OS user; no config parsing needed."""
    escaped = os.path.abspath(config_path).replace("%", "%25").replace("/", "%2F")
    return os.path.join(userspool.top(), escaped, server)


def gap_dir(config_path: str, server: str) -> str:
    """Where wal-push keeps the records of WAL it dropped (markship.wal.guard) until the
    repository takes them; '~' keeps it apart from every server's spool (names.py)."""
    return os.path.join(os.path.dirname(spool_dir(config_path, "x")), "~gaps", server)


def _signature(wal_path: str) -> str:
    stat = os.stat(wal_path)
    return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"


def already_pushed(spool: str, wal_path: str) -> bool:
    try:
        with open(os.path.join(spool, os.path.basename(wal_path))) as handle:
            return handle.read() == _signature(wal_path) and userspool.trusted()
    except OSError:
        return False


def mark_pushed(spool: str, wal_path: str) -> None:
    if not userspool.ours():
        return  # someone else's directory: never rely on it
    os.makedirs(spool, mode=0o700, exist_ok=True)
    marker = os.path.join(spool, os.path.basename(wal_path))
    temp = f"{marker}.{os.getpid()}"
    with open(temp, "w") as handle:
        handle.write(_signature(wal_path))
    os.replace(temp, marker)


CLAIM = ".claim"


def claim(spool: str, name: str) -> int | None:
    """Take the claim on pushing WAL file `name` ahead: an open descriptor holding an
    exclusive flock on its claim file (released by the kernel if the pusher dies), or None
    when another pusher holds it or the spool is not ours alone. A forked child keeps the
    lock after its parent closes its own descriptor."""
    import fcntl

    if not userspool.ours():
        return None
    os.makedirs(spool, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(spool, name + CLAIM), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def let_go(spool: str, name: str, fd: int) -> None:
    """End a claim (after the marker is written, or when the push failed)."""
    try:  # noqa: SIM105 - contextlib is one import too many on this path
        os.unlink(os.path.join(spool, name + CLAIM))
    except FileNotFoundError:
        pass
    os.close(fd)


def pushed_or_waited(spool: str, wal_path: str) -> bool:
    """True when `wal_path` was pushed ahead: at once from its marker, or after waiting for
    the pusher that claimed it. False when it is this call's to push (nobody claimed it,
    or its pusher let go without a marker: failed or killed)."""
    if already_pushed(spool, wal_path):
        return True
    if not userspool.trusted():
        return False
    try:
        fd = os.open(os.path.join(spool, os.path.basename(wal_path) + CLAIM),
                     os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return already_pushed(spool, wal_path)  # its claim may have just ended
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # returns once the pusher lets go
    finally:
        os.close(fd)
    return already_pushed(spool, wal_path)


def forget_except(spool: str, keep: set[str]) -> None:
    """Drop markers (and claims) of files PostgreSQL no longer lists as ready."""
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return
    for name in names:
        if name.removesuffix(CLAIM) not in keep:
            try:  # noqa: SIM105 - contextlib is one import too many on this path
                os.unlink(os.path.join(spool, name))
            except FileNotFoundError:
                pass


_Field = str | int | float | frozenset[str] | tuple[tuple[str | float, ...], ...]


def _settings_file(config_path: str, kind: str = "wal") -> str:
    return os.path.join(os.path.dirname(spool_dir(config_path, "x")), f"{kind}-settings.marshal")


def _config_signature(config_path: str) -> tuple[int, int, int, int]:
    stat = os.stat(config_path)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def cached_settings(config_path: str, kind: str = "wal") -> tuple[_Field, ...] | None:
    """The WAL settings parsed from this config file by an earlier call, if the file has not
    changed since (size, mtime, ctime and inode all equal). Saves the TOML parser's start-up.
    `kind` "mark": those of `markship mark` (markship.marks.settings)."""
    import marshal

    try:
        with open(_settings_file(config_path, kind), "rb") as handle:
            signature, fields = marshal.load(handle)
        if signature == _config_signature(config_path) and userspool.trusted():
            return tuple(fields)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    return None


def cache_settings(config_path: str, fields: tuple[_Field, ...], kind: str = "wal") -> None:
    """Remember parsed WAL settings for cached_settings(); failures only cost speed."""
    import marshal

    try:
        signature = _config_signature(config_path)
        if not userspool.ours():
            return
        target = _settings_file(config_path, kind)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        temp = f"{target}.{os.getpid()}"
        with open(temp, "wb") as handle:
            marshal.dump((signature, fields), handle)
        os.replace(temp, target)
    except (OSError, ValueError):
        pass


def ready_files(wal_path: str) -> list[str]:
    """Names PostgreSQL still has to archive, oldest first (from pg_wal/archive_status)."""
    status = os.path.join(os.path.dirname(wal_path), "archive_status")
    try:
        return sorted(n[: -len(".ready")] for n in os.listdir(status) if n.endswith(".ready"))
    except OSError:
        return []
