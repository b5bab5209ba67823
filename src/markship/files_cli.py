"""`markship files …`: file sets (application and web configuration captured with backups)."""

from __future__ import annotations

import click


@click.group("files")
def files_group() -> None:
    """File sets: configuration files captured with backups, restored by mark."""
