"""The command lines PostgreSQL runs to call markship: archive_command and restore_command.

Built here and only here, and read back here (`archive_command_problem`): which markship
executable PostgreSQL should start, with which config, for which server. Program and config
paths are quoted for the shell PostgreSQL runs them with.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from markship.config.model import Config


def installed_markship() -> str:
    """The markship executable installed beside the running Python (the venv's bin)."""
    return str(Path(sys.executable).parent / "markship")


def markship_command() -> str:
    """The markship executable PostgreSQL should call: the one running now when it was started
    as `markship`, else the first on PATH, else the one installed beside this Python."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "markship" and argv0.exists():
        return str(argv0.absolute())
    found = shutil.which("markship")
    if found:
        return found
    return installed_markship()


def archive_command(program: str, config_path: str | Path | None, server: str) -> str:
    """archive_command calling `program` wal-push for `server` (with `--config` when given)."""
    where = f" --config {shlex.quote(str(config_path))}" if config_path is not None else ""
    return f"{shlex.quote(program)}{where} wal-push --server {server} %p"


def expected_archive_command(config: Config, server: str) -> str:
    """The archive_command preflight asks a server to have: the installed markship, this
    config."""
    return archive_command(installed_markship(), config.source, server)


def fetch_command(config: Config, server: str, standby_floor: str | None = None) -> str:
    """restore_command calling wal-fetch; with a floor, the mark-gated standby variant."""
    assert config.source is not None
    gate = f"--standby --floor {standby_floor} " if standby_floor else ""
    return (f"{shlex.quote(markship_command())} --config {shlex.quote(str(config.source))} "
            f"wal-fetch --server {shlex.quote(server)} {gate}%f %p")


def archive_command_problem(command: str, server: str, config_path: Path | None) -> str | None:
    """Why `command` is not markship's wal-push for `server` with this config; None when it is."""
    try:
        words = shlex.split(command)
    except ValueError:
        return "archive_command cannot be parsed"
    if "wal-push" not in words:
        return "archive_command does not call markship wal-push" if command else \
            "archive_command is empty"
    at = words.index("wal-push")
    before, after = words[:at], words[at + 1:]
    named = [after[i + 1] for i in range(len(after) - 1) if after[i] == "--server"]
    named += [a.split("=", 1)[1] for a in after if a.startswith("--server=")]
    if not named:
        return "archive_command passes no --server"
    if named != [server]:
        return f"archive_command pushes as --server {named[0]}, not {server}"
    if "%p" not in after:
        return "archive_command does not pass %p"
    configs = [before[i + 1] for i in range(len(before) - 1) if before[i] == "--config"]
    configs += [b.split("=", 1)[1] for b in before if b.startswith("--config=")]
    if config_path is not None:
        if not configs:
            return "archive_command names no --config"
        if os.path.realpath(configs[-1]) != os.path.realpath(config_path):
            return f"archive_command uses another config ({configs[-1]})"
    return None
