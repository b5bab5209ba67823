"""`markship mark` made by the command itself on the lean path: no click, no pydantic, no
psycopg. Started cold, the full command line spent ~0.6 s importing them before its first
round trip; this path makes the same mark (markship.marks.take, on markship.pg.libpq's
connections), writes the same record and journal entry, and prints the same output.

Used when no agent answered (markship.agent.control) and the command is a common one: only
`--name`, `--json` and `--no-switch`, a config whose cached settings (markship.marks.settings)
the full model validated, a repository that is not encrypted. Anything else returns None and
the full command line does the work (and reports a problem in its own words).
"""

from __future__ import annotations

import sys

from markship import argv
from markship.errors import ConfigError, MarkshipError

FULL_ENV = "MARKSHIP_FULL_MARK"  # set (to anything): `markship mark` always runs the full CLI

TYPE_CHECKING = False
if TYPE_CHECKING:
    from markship.pg import fanout
    from markship.repository.base import Repository
    from markship.wal.settings import WalSettings


def main(args: list[str], config: str | None) -> int | None:
    """Make the mark `markship mark ARGS` asks for: the exit status (0 once recorded), or
    None to leave the command to the full command line. Raises the MarkshipError a user
    sees (journaled first, as `markship mark` journals it)."""
    import os

    if os.environ.get(FULL_ENV):
        return None
    found, flags, unknown = argv.parse(args, options=("--name",),
                                       flags=("--json", "--no-switch"))
    if unknown:
        return None  # --help, a typo, ...: the full command line handles it
    from markship.config import file as configfile
    from markship.marks import settings as mark_settings

    try:
        path = configfile.locate(config)
        settings, wal = mark_settings.load(path)
    except (MarkshipError, OSError, ValueError):
        return None  # the full command line says what is wrong with the config
    if wal.recipient:
        return None  # an encrypted repository: its keys are the full command line's
    if settings.nice:  # as the agent does; best effort here, and before the imports below
        from markship.marks import priority

        priority.set_for_thread(settings.nice)
    from markship import osuser

    user = osuser.invoking_user()  # before switching to the repository's OS user
    repo: Repository | None = None
    try:
        from markship import names

        name = found.get("--name")
        if name is not None:
            names.check_restore_point(name, "mark name (--name)")
        osuser.switch_to(wal.os_user)
        # The servers fork and authenticate their backends while the rest loads here.
        from markship.pg import libpq

        started = libpq.start_all(settings.lean_conninfos())
        from markship.marks import detach
        from markship.marks.take import GroupConnections, result_json, result_line, take_mark

        repo = wal.open_repository(make_root=True)
        conns = GroupConnections(settings, lean=True, started=started)

        def hand_off(handed: dict[str, fanout.Link]) -> bool:
            if not detach.hand_off(handed):
                return False
            conns.forget(handed)
            return True

        try:
            result = take_mark(settings, repo, conns, name,
                               switch_wal="--no-switch" not in flags, hand_off=hand_off)
        finally:
            conns.close()
        if "--json" in flags:
            import json

            print(json.dumps(result_json(result, "command"), indent=2, sort_keys=True))
        else:
            print(result_line(result))
        sys.stdout.flush()
    except MarkshipError as exc:
        _journal(repo, wal, f"failed: {exc.message}", user, {})
        raise
    except Exception as exc:  # e.g. stdout closed: recorded as the full command line does
        _journal(repo, wal, f"failed: unexpected {type(exc).__name__}: {exc}"[:500], user, {})
        raise
    _journal(repo, wal, "ok", user, {"mark": str(result.body["name"])})
    return 0


def _journal(repo: Repository | None, wal: WalSettings, outcome: str, user: str,
             objects: dict[str, str]) -> None:
    """Append the command's journal entry; a journal that cannot be written is a warning
    (as the full command line's markship.cli.context.Context.journal)."""
    from markship import osuser
    from markship.repository.journalchain import append_entry

    try:
        if repo is None:
            osuser.switch_to(wal.os_user)
            repo = wal.open_repository(make_root=True)
        append_entry(repo, "mark", outcome, user=user, objects=objects)
    except ConfigError:
        return  # no repository to write to; the command's own error says why
    except MarkshipError as exc:
        print(f"markship: warning: not recorded in the journal: {exc.one_line()}",
              file=sys.stderr)
