"""`markship mark` made by the command itself on the lean path: no click, no pydantic, no
psycopg. Started cold, the full command line spent ~0.6 s importing them before its first
round trip; this path makes the same mark (markship.marks.take, on markship.pg.libpq's
connections), writes the same record and journal entry, and prints the same output, except
that the WAL switches are still under way when it exits (`switching` in its JSON).

Where its time goes, and what it does about it: the servers are connected while the rest of
it loads; the journal entry is written ahead while the mark is made, and named while the
record's folder is flushed; the WAL switches come last and are sent, not waited for
(markship.marks.detach: a switch answers only once the server wrote out its segment).

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
    import threading

    from markship.marks.take import GroupConnections, MarkResult
    from markship.repository.base import Repository
    from markship.repository.journalchain import Ahead
    from markship.wal.settings import WalSettings


def lean_args(args: list[str]) -> tuple[dict[str, str], set[str]] | None:
    """`markship mark ARGS` as both lean paths take it (this one and the agent's,
    markship.agent.control): (options, flags), or None for anything else (`--help`,
    `--wait`, a typo), which the full command line handles."""
    found, flags, unknown = argv.parse(args, options=("--name",),
                                       flags=("--json", "--no-switch"))
    return None if unknown else (found, flags)


def main(args: list[str], config: str | None) -> int | None:
    """Make the mark `markship mark ARGS` asks for: the exit status (0 once recorded), or
    None to leave the command to the full command line. Raises the MarkshipError a user
    sees (journaled first, as `markship mark` journals it)."""
    import os

    if os.environ.get(FULL_ENV):
        return None
    parsed = lean_args(args)
    if parsed is None:
        return None
    found, flags = parsed
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
    ahead = _Ahead()
    try:
        from markship import names

        name = found.get("--name")
        if name is not None:
            names.check_restore_point(name, "mark name (--name)")
        osuser.switch_to(wal.os_user)
        # The servers fork and authenticate their backends while the rest loads here.
        from markship.pg import libpq

        started = libpq.start_all(settings.lean_conninfos())
        from markship.marks.take import GroupConnections, mark_name, take_mark
        from markship.timefmt import utcnow

        repo = wal.open_repository(make_root=True)
        if name is None:
            name = mark_name(settings.group, utcnow())
        ahead.begin(repo, user, name)
        conns = GroupConnections(settings, lean=True, started=started)
        try:
            result = take_mark(settings, repo, conns, name,
                               switch_wal="--no-switch" not in flags, switch_later=True,
                               flush_record=False)
            journaled = _settle(repo, ahead)
            # Last, so that the servers' writing out their segments does not slow down the
            # record's and the journal's flushes.
            _switch(conns, result)
        finally:
            conns.close()
        if "--json" in flags:
            import json

            from markship.marks.take import result_json

            print(json.dumps(result_json(result, "command"), indent=2, sort_keys=True))
        else:
            from markship.marks.take import result_line

            print(result_line(result))
        sys.stdout.flush()
    except MarkshipError as exc:
        ahead.discard()
        _journal(repo, wal, f"failed: {exc.message}", user, {})
        raise
    except Exception as exc:  # e.g. stdout closed: recorded as the full command line does
        ahead.discard()
        _journal(repo, wal, f"failed: unexpected {type(exc).__name__}: {exc}"[:500], user, {})
        raise
    if not journaled:
        _journal(repo, wal, "ok", user, {"mark": str(result.body["name"])})
    return 0


def _switch(conns: GroupConnections, result: MarkResult) -> None:
    """Switch WAL where the mark left it to this command: in a child process the command
    does not wait for (markship.marks.detach), else here."""
    from markship.marks import detach

    handed = {server: conns.conns[server] for server in result.switching}
    if not handed:
        return
    if detach.hand_off(handed):
        conns.forget(handed)
    else:
        result.switching = ()  # switched here


def _settle(repo: Repository, ahead: _Ahead) -> bool:
    """Flush the folder holding the new mark record's name while the journal entry written
    ahead is named (two fsyncs at once; on a journaling file system the record's name, made
    first, is never lost while the entry's stays). True once the entry is in the journal."""
    import threading

    from markship.repository import layout

    failed: list[MarkshipError] = []

    def flush() -> None:
        try:
            repo.flush(layout.MARKS)
        except MarkshipError as exc:
            failed.append(exc)

    flushing = threading.Thread(target=flush, name="markship-flush", daemon=True)
    flushing.start()
    try:
        journaled = ahead.publish()
    finally:
        flushing.join()
    if failed:
        raise failed[0]
    return journaled


class _Ahead:
    """The command's journal entry for success, written ahead in a thread of its own while
    the mark is made (markship.repository.journalchain.Ahead): afterwards only its renames
    are left. Anything failing here leaves the entry to the normal append."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.written: Ahead | None = None

    def begin(self, repo: Repository, user: str, name: str) -> None:
        import threading

        from markship.repository.journalchain import Ahead

        def write() -> None:
            import contextlib

            with contextlib.suppress(Exception):  # the normal append then says what is wrong
                self.written = Ahead(repo, "mark", "ok", user, {"mark": name})

        self.thread = threading.Thread(target=write, name="markship-journal", daemon=True)
        self.thread.start()

    def _join(self) -> Ahead | None:
        if self.thread is not None:
            self.thread.join()
        return self.written

    def publish(self) -> bool:
        """True once the entry is in the journal; False leaves it to the caller."""
        written = self._join()
        if written is None:
            return False
        try:
            written.publish()
        except MarkshipError as exc:
            print(f"markship: warning: not recorded in the journal: {exc.one_line()}",
                  file=sys.stderr)
        return True

    def discard(self) -> None:
        if (written := self._join()) is not None:
            written.discard()


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
