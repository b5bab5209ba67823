"""Markers of WAL files already pushed ahead, so PostgreSQL's next archive_command call for
them returns at once (imports nothing but `os`: this runs before anything else).

When PostgreSQL falls behind (a backlog of `.ready` files), `wal-push` for one segment also
pushes the next few ready ones in parallel and leaves a marker per file here: its size and
modification time. A later call for such a file only compares those with the file on disk.
A ready WAL file is complete and never rewritten (recycled files take *new* names), so a
matching marker proves the stored object holds this very file. Losing the spool (it lives
under /var/tmp) only means the next call takes the normal path, which recognises an
identical stored copy by its digest.
"""

from __future__ import annotations

import os


def _top() -> str:
    return os.path.join("/var/tmp", f"markship-spool-{os.getuid()}")


def spool_dir(config_path: str, server: str) -> str:
    """One spool per (config file, server) and OS user; no config parsing needed."""
    escaped = os.path.abspath(config_path).replace("%", "%25").replace("/", "%2F")
    return os.path.join(_top(), escaped, server)


def _trusted() -> bool:
    """The spool is ours alone: a marker planted by another user must never count."""
    try:
        stat = os.lstat(_top())
    except OSError:
        return False
    return stat.st_uid == os.getuid() and stat.st_mode & 0o077 == 0 and os.path.isdir(_top())


def _signature(wal_path: str) -> str:
    stat = os.stat(wal_path)
    return f"{stat.st_size} {stat.st_mtime_ns} {stat.st_ino}"


def already_pushed(spool: str, wal_path: str) -> bool:
    try:
        with open(os.path.join(spool, os.path.basename(wal_path))) as handle:
            return handle.read() == _signature(wal_path) and _trusted()
    except OSError:
        return False


def mark_pushed(spool: str, wal_path: str) -> None:
    if not os.path.isdir(_top()):
        os.makedirs(_top(), mode=0o700, exist_ok=True)
    if not _trusted():
        return  # someone else's directory: never rely on it
    os.makedirs(spool, mode=0o700, exist_ok=True)
    marker = os.path.join(spool, os.path.basename(wal_path))
    temp = f"{marker}.{os.getpid()}"
    with open(temp, "w") as handle:
        handle.write(_signature(wal_path))
    os.replace(temp, marker)


def forget_except(spool: str, keep: set[str]) -> None:
    """Drop markers of files PostgreSQL no longer lists as ready."""
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return
    for name in names:
        if name not in keep:
            try:  # noqa: SIM105 - contextlib is one import too many on this path
                os.unlink(os.path.join(spool, name))
            except FileNotFoundError:
                pass


_Field = str | int | frozenset[str]


def _settings_file(config_path: str) -> str:
    return os.path.join(os.path.dirname(spool_dir(config_path, "x")), "wal-settings.marshal")


def _config_signature(config_path: str) -> tuple[int, int, int, int]:
    stat = os.stat(config_path)
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def cached_settings(config_path: str) -> tuple[_Field, ...] | None:
    """The WAL settings parsed from this config file by an earlier call, if the file has not
    changed since (size, mtime, ctime and inode all equal). Saves the TOML parser's start-up."""
    import marshal

    try:
        with open(_settings_file(config_path), "rb") as handle:
            signature, fields = marshal.load(handle)
        if signature == _config_signature(config_path) and _trusted():
            return tuple(fields)
    except (OSError, ValueError, EOFError, TypeError):
        pass
    return None


def cache_settings(config_path: str, fields: tuple[_Field, ...]) -> None:
    """Remember parsed WAL settings for cached_settings(); failures only cost speed."""
    import marshal

    try:
        signature = _config_signature(config_path)
        if not os.path.isdir(_top()):
            os.makedirs(_top(), mode=0o700, exist_ok=True)
        if not _trusted():
            return
        target = _settings_file(config_path)
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
