"""Malformed configuration (issue #12): every command that reads the config — wal-push and
wal-fetch included, which PostgreSQL runs — ends with one line naming the problem and a
non-zero exit, never a traceback, and never goes on to do its work."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from markship.cli.main import cli
from markship.pg.scratch import as_user, chown_to
from tests.support.servers import MARKSHIP, OS_USER

GOOD = """[group]
name = "testgroup"

[repository]
path = "{repo}"
os_user = "postgres"

[[server]]
name = "alpha"
conninfo = "host=127.0.0.1 port=1 user=postgres dbname=postgres"
"""

FAULTS: dict[str, tuple[Callable[[str], str], str]] = {
    "malformed TOML": (lambda t: t.replace("[repository]", "[repository"), "not valid TOML"),
    "unknown key": (lambda t: t.replace('os_user = "postgres"',
                                        'os_user = "postgres"\ncompresion_level = 3'),
                    "compresion_level"),
    "wrong type": (lambda t: t.replace('os_user = "postgres"',
                                       'os_user = "postgres"\npush_ahead = "many"'),
                   "push_ahead"),
    "relative repository path": (lambda t: t.replace('path = "', 'path = "repo-here/')
                                 .replace('"repo-here//', '"repo-here/'), "absolute"),
    "missing repository": (lambda t: t.replace("[repository]\n", "[not_a_repository]\n"),
                           "repository"),
}

# Commands that never read the config file. (`key create` makes an identity file without it;
# only its journal entry needs the config, and a warning says when it could not be written.)
NO_CONFIG = {"demo", "resolve", "key create"}


def _arguments(workdir: Path, segment: Path) -> dict[str, list[str]]:
    """Arguments that get each command as far as reading its config."""
    return {
        "backup": [], "check": [], "checklist": [], "client-sql": [], "config check": [],
        "drill": [], "drills": [], "dumps list": [], "dumps run": [],
        "dumps restore": ["--dump", "x", "--conninfo", "host=127.0.0.1 port=1"],
        "expire": ["--dry-run"], "failback prepare": ["--new-config", str(workdir / "n.toml")],
        "failover": ["--dry-run"], "files capture": [], "files list": [],
        "files restore": ["--set", "x", "--target-dir", str(workdir / "files")],
        "journal": [], "journal verify": [],
        "key catalog": ["--to", str(workdir / "catalog.key")],
        "key export": ["--to", str(workdir / "export.age"), "--hint", "the usual"],
        "key import": ["--from", str(workdir / "export.age")],
        "key rotate": [], "key status": [], "list": [], "mark": [], "marks": [],
        "parity": [], "preflight": [], "repository sync": [], "run": [], "standby create": [],
        "standby status": [], "status": [], "verify": [],
        "restore": ["--server", "alpha", "--target-dir", str(workdir / "restored")],
        "wal-fetch": ["--server", "alpha", segment.name, str(workdir / "fetched")],
        "wal-push": ["--server", "alpha", str(segment)],
    }


def _command_names(group: click.Group, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, command in group.commands.items():
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            if command.invoke_without_command:
                names.add(full)
            names |= _command_names(command, full + " ")
        else:
            names.add(full)
    return names


def _wal_dir(workdir: Path) -> Path:
    """A real-looking WAL segment a wal-push with a valid config would happily store."""
    folder = workdir / "pg_wal"
    folder.mkdir()
    segment = folder / "000000010000000000000001"
    segment.write_bytes(os.urandom(1 << 16) * 256)
    for path in (folder, segment):
        chown_to(path, OS_USER)
    return segment


def test_every_command_is_covered(workdir: Path) -> None:
    listed = set(_arguments(workdir, workdir / "x"))
    assert _command_names(cli) - NO_CONFIG == listed


@pytest.mark.reliability("malformed config", fault="malformed TOML, an unknown key, a wrong "
                         "type, a relative or missing repository (one per run), given to every "
                         "command (wal-push and wal-fetch as the postgres user)",
                         expected="one line naming the problem, non-zero exit, no traceback, "
                                  "nothing done")
@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_command_refuses_a_bad_config(workdir: Path, fault: str) -> None:
    edit, expected = FAULTS[fault]
    config = workdir / "markship.toml"
    config.write_text(edit(GOOD.format(repo=workdir / "repo")))
    config.chmod(0o644)
    segment = _wal_dir(workdir)
    commands = _arguments(workdir, segment)

    def run(name: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        argv = [str(MARKSHIP), "--config", str(config), *name.split(), *commands[name]]
        if name.startswith("wal-"):
            argv = as_user(argv, OS_USER)  # as PostgreSQL runs them
        return name, subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                    cwd=workdir, stdin=subprocess.DEVNULL, check=False,
                                    env={**os.environ, "MARKSHIP_NO_AGENT": "1"})

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(run, sorted(commands)))
    wrong = []
    for name, proc in results.items():
        lines = proc.stderr.strip().splitlines()
        if proc.returncode == 0 or len(lines) != 1 or expected not in proc.stderr \
                or "Traceback" in proc.stderr:
            wrong.append(f"markship {name}: exit {proc.returncode}, stderr {proc.stderr!r}")
    assert not wrong, "\n".join(wrong)
    # Nothing was done: no repository appeared anywhere.
    assert not (workdir / "repo").exists() and not (workdir / "repo-here").exists()
    assert not (workdir / "fetched").exists()
