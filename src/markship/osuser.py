"""Run as the repository's OS user (stdlib only).

The archive_command runs as the PostgreSQL OS user, so that user owns the repository. An
operator may start markship as root; markship then switches to that user before it touches the
repository or starts PostgreSQL tools, so every object keeps one owner.
"""

from __future__ import annotations

import os
import pwd

from markship.errors import ConfigError


def invoking_user() -> str:
    """Who runs this process: the real uid's name (LOGNAME and USER can be set to anything),
    and the user sudo was run by when sudo says so, e.g. `root (sudo from alice)`."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER", "").strip()
    if sudo and sudo != name:
        return f"{name} (sudo from {sudo})"
    return name


def switch_to(user: str) -> None:
    """Become `user` when running as root; do nothing otherwise.

    Raises ConfigError when the user does not exist.
    """
    if os.geteuid() != 0 or user == "root":
        return
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            f"[repository] os_user = {user!r} does not exist on this host",
            "set os_user to the OS user PostgreSQL runs as (usually postgres)",
        ) from None
    os.setgroups(os.getgrouplist(user, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ.update(HOME=entry.pw_dir, USER=user, LOGNAME=user)
    try:
        os.listdir(".")
    except OSError:
        os.chdir("/")
