"""Preflight on this host: the repository, the config file and the key files, as the
archiving OS user sees them."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import tempfile
from pathlib import Path

from markship.config.model import Config
from markship.dr.preflightreport import Check
from markship.pg.conninfo import has_secret


def os_user_entry(name: str) -> pwd.struct_passwd | None:
    """The OS user `name` of this host; None when there is none."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def local_checks(config: Config) -> list[Check]:
    """The repository, the config file and the identity file, as the archiving OS user sees
    them: these checks run as that user (the CLI switches to it when started as root)."""
    user = config.repository.os_user
    entry = os_user_entry(user)
    if entry is None:
        return [Check("repository", "os_user", "fail",
                      f"[repository] os_user = {user!r} does not exist on this host",
                      "set os_user to the OS user PostgreSQL runs as (usually postgres)")]
    if not acting_as(entry):
        return [Check("repository", "os_user", "warn",
                      f"the repository, config file and key file are not checked: preflight "
                      f"runs as uid {os.geteuid()}, not as {user}",
                      f"run it as root or as {user}")]
    checks = [_repository_check(config.repository.path, entry)
              if config.repository.path is not None else _object_storage_check(config, entry)]
    if config.source is not None:
        checks.extend(_config_file_checks(config, entry))
    encryption = config.encryption
    if encryption is not None and encryption.identity_file is not None:
        checks.append(_key_file_check(encryption.identity_file, entry, "identity_file",
                                      "markship key create/import"))
    if encryption is not None and encryption.catalog_key_file is not None:
        checks.append(_key_file_check(encryption.catalog_key_file, entry, "catalog_key_file",
                                      "markship key catalog"))
    return checks


def acting_as(entry: pwd.struct_passwd) -> bool:
    """Whether this process runs as that OS user (only then do its access checks hold)."""
    return os.geteuid() == entry.pw_uid


def _object_storage_check(config: Config, entry: pwd.struct_passwd) -> Check:
    """An S3 repository: this user can read its credentials and write an object."""
    from markship.errors import MarkshipError
    from markship.repository.backends import location_of, open_repository

    where = config.repository.location
    try:
        open_repository(location_of(config.repository)).check_writable()
    except MarkshipError as exc:
        return Check("repository", "writable", "fail",
                     f"{where} is not writable by {entry.pw_name}: {exc.message}",
                     exc.hint or "check endpoint, credentials and the bucket policy")
    return Check("repository", "writable", "ok", f"{where} is writable by {entry.pw_name}")


def _repository_check(path: Path, entry: pwd.struct_passwd) -> Check:
    user = entry.pw_name
    fix = f"chown -R {user} {path} (and make it writable by {user})"
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK | os.X_OK):
            return Check("repository", "writable", "ok",
                         f"{path} does not exist yet; {user} can create it in {parent}")
        return Check("repository", "writable", "fail",
                     f"{path} does not exist and {user} cannot create it in {parent}",
                     f"create it: mkdir -p {path} && chown {user} {path}")
    if not path.is_dir():
        return Check("repository", "writable", "fail", f"{path} is not a directory",
                     "point [repository] path at a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".preflight-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check("repository", "writable", "fail",
                     f"{path} is not writable by {user} ({exc.strerror})", fix)
    blocked = [d for d in _repository_dirs(path) if not os.access(d, os.W_OK | os.X_OK)]
    if blocked:
        more = f" (and {len(blocked) - 1} more)" if len(blocked) > 1 else ""
        return Check("repository", "writable", "fail",
                     f"{blocked[0]} is not writable by {user}{more}", fix)
    return Check("repository", "writable", "ok", f"{path} is writable by {user}")


def _repository_dirs(root: Path) -> list[Path]:
    """Folders where objects are written (two levels, plus each server's newest WAL folder);
    one owned by another user — markship once run as root without switching — stops
    archiving."""
    found: list[Path] = []
    try:
        for first in sorted(p for p in root.iterdir() if p.is_dir()):
            found.append(first)
            for second in sorted(p for p in first.iterdir() if p.is_dir()):
                found.append(second)
                if first.name == "wal":
                    newest = sorted(p for p in second.iterdir() if p.is_dir())
                    found.extend(newest[-1:])
    except OSError:
        pass  # unreadable folders show up as not writable
    return found


def _config_file_checks(config: Config, entry: pwd.struct_passwd) -> list[Check]:
    assert config.source is not None
    source = config.source
    user = entry.pw_name
    checks: list[Check] = []
    if os.access(source, os.R_OK):
        checks.append(Check("config", "readable", "ok",
                            f"{source} is readable by {user} (archive_command reads it)"))
    else:
        checks.append(Check("config", "readable", "fail",
                            f"{source} is not readable by {user}, who runs archive_command",
                            f"chgrp {grp.getgrgid(entry.pw_gid).gr_name} {source} && "
                            f"chmod g+r {source}"))
    if any(has_secret(s.conninfo) for s in config.servers):
        try:
            mode = stat.S_IMODE(source.stat().st_mode)
        except OSError:
            mode = 0
        if mode & 0o007:
            checks.append(Check("config", "private", "fail",
                                f"{source} holds passwords and is readable by everyone "
                                f"(mode {mode:04o})", f"chmod o-rwx {source}"))
        else:
            checks.append(Check("config", "private", "ok",
                                f"{source} holds passwords and is not world-readable"))
    return checks


def _key_file_check(path: Path, entry: pwd.struct_passwd, name: str, creator: str) -> Check:
    """An age key file (the identity, the catalog key) must be 0600 and readable by the
    repository's OS user: markship switches to that user before it reads the repository, and
    loads the key then."""
    user = entry.pw_name
    what = name.replace("_", " ").removesuffix(" file") + " file"
    try:
        info = path.stat()
    except OSError as exc:
        return Check("key", name, "fail",
                     f"{what} {path} cannot be read by {user} ({exc.strerror})",
                     f"put it where {user} can read it (mode 0600, owner {user}), "
                     f"or create it with {creator}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return Check("key", name, "fail",
                     f"{what} {path} has mode {mode:04o}: others may read the key",
                     f"chmod 600 {path}")
    if not os.access(path, os.R_OK):
        return Check("key", name, "fail",
                     f"{what} {path} is mode 0600 but not readable by {user}, who "
                     "reads the repository", f"chown {user} {path}")
    return Check("key", name, "ok", f"{what} {path} is mode {mode:04o}, readable by {user} only")
