"""Every command has help text and is documented in the README."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from markship.cli.main import cli
from tests.support.servers import run_markship

README = (Path(__file__).parents[2] / "README.md").read_text()


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        if isinstance(command, click.Group):
            found.extend(_commands(command, full + " "))
        else:
            found.append((full, command))
    return found


def test_every_command_has_help_and_is_in_the_readme() -> None:
    commands = _commands(cli)
    assert len(commands) >= 9
    for name, command in commands:
        assert command.help and len(command.help) > 20, f"{name} has no help text"
        assert f"markship {name}" in README, f"markship {name} is not documented in README.md"


@pytest.mark.pg  # the installed markship command
def test_help_runs_without_a_config() -> None:
    proc = run_markship(None, "restore", "--help")
    assert proc.returncode == 0
    assert "--target-dir" in proc.stdout and "--time" in proc.stdout
