"""`markship files …`: file sets (application and web configuration captured with backups)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from markship.cli import output
from markship.cli.context import Context, journaled, pass_context
from markship.errors import MarkshipError

if TYPE_CHECKING:
    from markship.config.model import Config, FilesetSection


@click.group("files")
def files_group() -> None:
    """File sets: configuration files captured with backups, restored by mark."""


def _selected(config: Config, names: tuple[str, ...]) -> list[FilesetSection]:
    if not config.filesets:
        raise MarkshipError("the config has no [[fileset]]",
                            'add one: [[fileset]] name = "portal", paths = ["/etc/portal"]')
    known = {f.name: f for f in config.filesets}
    for name in names:
        if name not in known:
            raise MarkshipError(f"no file set named {name} in the config",
                                f"configured: {', '.join(sorted(known))}")
    return [known[n] for n in dict.fromkeys(names)] if names else list(config.filesets)


@files_group.command("capture")
@click.option("--set", "names", multiple=True, metavar="NAME",
              help="A file set to capture (repeatable; default: every configured one).")
@click.option("--if-changed", is_flag=True,
              help="Skip a file set whose content equals its newest capture.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
@journaled("files capture")
def files_capture(ctx: Context, names: tuple[str, ...], if_changed: bool,
                  as_json: bool) -> None:
    """Capture file sets now (reason "manual"), tied to the newest complete mark.

    Started as root, markship opens every file first and then switches to the repository's OS
    user, so files only root may read are captured too.
    """
    from markship.backup import filesets, filesnapshot

    config = ctx.config
    snapshots: list[filesnapshot.Snapshot] = []
    try:
        for fileset in _selected(config, names):
            snapshots.append(filesnapshot.take(fileset, hold_open=os.geteuid() == 0))
        repo = ctx.repository()
        results = [(s.fileset.name, filesets.capture(config, repo, s, reason="manual",
                                                     only_if_changed=if_changed))
                   for s in snapshots]
    finally:
        for snapshot in snapshots:
            snapshot.close()
    output.writer(as_json).files_capture(results)


@files_group.command("list")
@click.option("--set", "name", metavar="NAME", help="Only this file set.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def files_list(ctx: Context, name: str | None, as_json: bool) -> None:
    """Captures of every file set (or one): time, reason, nearest mark, size, content digest."""
    from markship import names
    from markship.backup import filesets

    if name is not None:
        names.check(name, "file set name (--set)")
    records = filesets.list_records(ctx.repository(), name)
    output.writer(as_json).files_list(records, name)


@files_group.command("restore")
@click.option("--set", "name", required=True, metavar="NAME", help="The file set.")
@click.option("--mark", metavar="NAME",
              help="The newest capture made at or before this mark (default: the newest).")
@click.option("--id", "capture_id", metavar="ID", help="One capture (markship files list).")
@click.option("--target-dir", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="A new or empty directory; /etc/app/x.conf is restored as DIR/etc/app/x.conf.")
@pass_context
@journaled("files restore")
def files_restore(ctx: Context, name: str, mark: str | None, capture_id: str | None,
                  target_dir: Path) -> None:
    """Restore a capture of a file set below a new or empty directory: modes, mtimes, links as
    links, and owners when run as root. Unsafe archive members are refused, and nothing is
    left behind when the restore fails."""
    from markship import names
    from markship.backup import filesets

    names.check(name, "file set name (--set)")
    if mark is not None:
        names.check(mark, "mark name (--mark)")
    if capture_id is not None:
        names.check(capture_id, "capture id (--id)")
    if mark is not None and capture_id is not None:
        raise MarkshipError("--mark and --id exclude each other", "give one of them")
    repo = ctx.reading_repository(fallback=True)
    record = filesets.choose(repo, name, mark, capture_id)
    result = filesets.restore(repo, record, target_dir.absolute())
    output.TextOutput().files_restore(name, record, result)


COMMANDS = [files_group]
