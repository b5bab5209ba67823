"""`markship dumps …`: logical dumps of stores that WAL shipping does not cover."""

from __future__ import annotations

import click


@click.group("dumps")
def dumps_group() -> None:
    """Logical dumps (pg_dump -Fc) of databases not covered by WAL shipping."""
