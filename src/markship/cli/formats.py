"""Small formatting helpers of the command line: one JSON document, sizes for a person, tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from markship.timefmt import exact_times

if TYPE_CHECKING:
    from markship.backup.dumps import DumpRecord
    from markship.backup.filesets import FilesetRecord


def _default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def emit_json(data: object) -> None:
    """`data` as one JSON document on stdout, every time in it to the microsecond with its
    zone (`timefmt.exact_times`): pass records as `model_dump()`, not `mode="json"`."""
    click.echo(json.dumps(exact_times(data), default=_default, indent=2, sort_keys=True))


def size(n: int | None) -> str:
    """Bytes for a person: 512 B, 1.5 KiB … TiB; "-" when unknown."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    shown = Table(title=title, title_justify="left")
    for column in columns:
        shown.add_column(column)
    for row in rows:
        shown.add_row(*row)
    Console().print(shown)


def mark_text(record: FilesetRecord | DumpRecord) -> str:
    return record.mark or "none"


def copy_lag(mode: str, objects: int | None, size_bytes: int | None,
             seconds: float | None) -> str:
    """How far a copy of the repository is behind, in words ("-" for the primary)."""
    if mode == "primary":
        return "-"
    if objects is None or size_bytes is None or seconds is None:
        return "unknown"
    if not objects:
        return "caught up"
    return f"{objects} objects, {size(size_bytes)}, oldest {seconds:.0f} s"
