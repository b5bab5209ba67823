"""The archive_command markship asks servers to have is one it accepts when it reads it back."""

from __future__ import annotations

from pathlib import Path

from markship.pg.commands import archive_command, archive_command_problem


def test_the_archive_command_markship_builds_is_one_it_accepts(tmp_path: Path) -> None:
    config = tmp_path / "shop config.toml"  # a space: the shell must get it quoted
    command = archive_command("/opt/mark ship/bin/markship", config, "orders")
    assert command == (f"'/opt/mark ship/bin/markship' --config '{config}' "
                       "wal-push --server orders %p")
    assert archive_command_problem(command, "orders", config) is None
    assert archive_command_problem(command, "payments", config) == \
        "archive_command pushes as --server orders, not payments"
    assert archive_command_problem(command, "orders", tmp_path / "other.toml") == \
        f"archive_command uses another config ({config})"


def test_without_a_config_file_the_command_names_none() -> None:
    command = archive_command("markship", None, "orders")
    assert command == "markship wal-push --server orders %p"
    assert archive_command_problem(command, "orders", None) is None
