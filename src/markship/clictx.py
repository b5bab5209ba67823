"""What every CLI command module shares: the lazily loaded config and repository, JSON output
and tables. (Command modules: cli.py, files_cli.py, dumps_cli.py.)"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from markship import config as config_mod
from markship import osuser
from markship.config import Config
from markship.repository import FsRepository, open_repository
from markship.timefmt import show


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return show(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(data: object) -> None:
    click.echo(json.dumps(data, default=_default, indent=2, sort_keys=True))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    def repository(self) -> FsRepository:
        """Load the config, become the repository's OS user, open the repository."""
        osuser.switch_to(self.config.repository.os_user)
        encryption = self.config.encryption
        if encryption is None:
            return open_repository(self.config.repository.path)
        return open_repository(self.config.repository.path, [encryption.recipient],
                               encryption.identity_file)


pass_context = click.make_pass_decorator(Context)
