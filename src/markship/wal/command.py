"""`markship wal-push` (archive_command) and `markship wal-fetch` (restore_command): parse the
arguments, switch to the repository's OS user, run the work, turn every failure into one line
and the exit status PostgreSQL acts on.

PostgreSQL runs these once per 16 MB segment, so this package imports only the standard
library, zstandard and the repository at start-up.

Contract with PostgreSQL:
- wal-push exits 0 only once the file is durably stored; pushing the same content again also
  exits 0; different content under an archived name exits 1 and keeps the stored object.
  The one exception is pg_wal protection (`[repository] archive_queue_max`, wal/guard.py):
  with the repository unwritable and more WAL waiting than that, the oldest segments exit 0
  unstored, recorded as a gap first.
- wal-push with `sync` copies ([[repository.copy]]) exits 0 only once every one of them holds
  the file too; an unreachable sync copy fails the push with one line naming it.
- wal-fetch exits 0 with the file at DEST and 1 quietly when it is not archived (PostgreSQL
  then looks elsewhere or ends recovery). With copies, it reads from the first reachable
  repository (the primary first) that holds the file; a damaged object (checksum, page
  header) is fetched from a copy holding it intact. "Not archived" (exit 1) means no
  reachable repository holds it: while the primary cannot be reached, the copies' end is
  the end of the archived WAL (what the DR site has). Every other failure exits 126 with
  one line: a corrupt or foreign object, a key that does not open it, an unreadable or
  absent repository, a bad config, even a bug.
  PostgreSQL reads any exit below 126 as "not archived" and would end recovery there and
  promote, silently short of committed WAL; 126 and above make it stop recovery with an
  error instead, so the operator fixes the cause and starts it again.
"""

from __future__ import annotations

import os

from markship.errors import (
    ConfigError,
    ConflictError,
    CorruptObject,
    MarkshipError,
    ObjectMissing,
    RepositoryError,
)
from markship.pg.lsn import parse_segment_name, wal_file_kind
from markship.repository import layout
from markship.wal.settings import load_settings

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from markship.repository.base import Repository

EXIT_FATAL = 126  # restore_command: stop recovery rather than take this as the end of WAL


def main(command: str, argv: list[str], config: str | None) -> int:
    """Entry point of `markship wal-push` / `markship wal-fetch` (lean path): the exit status
    PostgreSQL acts on. For wal-fetch only "not archived" may exit below 126 (see the module
    docstring); every failure prints one line."""
    import sys

    fetching = command == "wal-fetch"
    try:
        return _run(command, argv, config)
    except ObjectMissing as exc:
        if fetching:
            return 1  # not archived (yet): PostgreSQL expects a quiet failure
        line, code = exc.one_line(), 1
    except MarkshipError as exc:
        line, code = exc.one_line(), exc.exit_code
    except ValueError as exc:  # a file name PostgreSQL never archives
        line, code = str(exc), 2
    except OSError as exc:  # outside the repository (e.g. DEST not writable)
        line = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
        code = 1
    except BaseException as exc:  # a bug must not read as "not archived" either
        if isinstance(exc, SystemExit):
            raise
        line, code = f"unexpected {type(exc).__name__}: {exc}", 1
    print(f"markship {command}: error: {line}", file=sys.stderr)
    return EXIT_FATAL if fetching else code


def _run(command: str, argv: list[str], config: str | None) -> int:
    from markship import argv as options
    from markship import osuser
    from markship.config import file as configfile

    usage = (f"usage: markship {command} --server NAME "
             + ("PATH" if command == "wal-push" else "[--standby [--floor SEGMENT]] SEGMENT DEST"))
    # wal-fetch's options first: what is left (shown in an error) is the --server and the files.
    fetch_options, flags, argv = options.parse(argv, options=("--floor",), flags=("--standby",))
    floor, standby = fetch_options.get("--floor"), "--standby" in flags
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    found, _, positional = options.parse(argv, options=("--server",))
    server = found.get("--server")
    if server is None or len(positional) != (1 if command == "wal-push" else 2):
        raise ConfigError(f"wrong arguments {argv!r}", usage)
    config_path = configfile.locate(config)
    settings = load_settings(config_path)
    settings.check_server(server)
    osuser.switch_to(settings.os_user)
    # Each command imports only its own work: every module costs start-up, paid per segment.
    if command == "wal-push":
        from markship.wal import spool  # loaded already (the spool markers' fast path)
        from markship.wal.push import push

        # WAL of this server was dropped and its gap is still open (or its record not yet in
        # the repository): the repository failed the last push, and WAL after the gap cannot
        # be restored before the next full backup. With pg_wal protection on, one try then:
        # a failure gives the segment up at once instead of letting WAL pile up in pg_wal
        # while requests are retried (up to 30 s on object storage).
        gap_waiting = os.path.isdir(spool.gap_dir(config_path, server))
        repo = settings.open_repository(retry=not (gap_waiting and settings.archive_queue_max))
        path = positional[0]
        if not os.path.isfile(path):
            raise ObjectMissing(f"WAL file {path} does not exist",
                                "archive_command must pass %p, the path of the file")
        if settings.push_ahead > 0:
            from markship.wal.ahead import push_ahead_in_background

            push_ahead_in_background(repo, server, path, settings, spool_for=config_path)
        try:
            push(repo, server, path, settings.compression_level)
        except RepositoryError as exc:
            if not (settings.archive_queue_max and not isinstance(exc, ConflictError)
                    and _gave_up_oldest(config_path, server, path,
                                        settings.archive_queue_max, exc)):
                raise
            return 0
        copies = settings.open_copies("sync") if settings.copies else []
        if copies:  # also when it was archived before: a copy may have been down then
            from markship.wal.copies import push_to_copies

            push_to_copies(repo, copies, server, path)
        if gap_waiting:  # WAL was dropped: record it
            _flush_gaps(repo, config_path, server, os.path.basename(path))
        return 0
    from markship.wal.fetch import fetch, fetch_streamed, standby_ceiling

    # The primary, and the copies behind it: the first reachable one holding the file serves.
    repo = settings.reading_repository()

    name, dest = positional
    if standby and wal_file_kind(name) in ("segment", "partial"):
        ceiling = standby_ceiling(repo, server, floor, settings.servers)
        if ceiling is None or parse_segment_name(name[:24]) > ceiling:
            return 1  # withheld until the next group mark completes
    try:
        try:
            fetch(repo, server, name, dest)
        except CorruptObject:
            if not settings.copies:
                raise
            from markship.wal.copies import fetch_intact

            fetch_intact(settings.open_copies(), server, name, dest)
    except ObjectMissing:
        # Not archived yet: the agent's WAL receiver may hold it. A standby gets whole
        # segments only (a partial one would end its replay early).
        try:
            fetch_streamed(repo, server, name, dest, allow_partial=not standby)
        except ObjectMissing:
            try:
                fetch(repo, server, name, dest)  # archived while we looked
            except ObjectMissing:
                _refuse_absent_repository(repo)
                raise
    return 0


def _gave_up_oldest(config_path: str, server: str, path: str, queue_max: int,
                    failure: RepositoryError) -> bool:
    """pg_wal protection (markship.wal.guard): True (exit 0, so PostgreSQL recycles `path`)
    when the backlog is over `queue_max` (or a gap is open) and the gap is recorded; else the
    failure stands."""
    import sys

    from markship.wal import guard

    dropped = guard.give_up_oldest(config_path, server, path, queue_max, failure.one_line())
    if not dropped:
        return False
    count = f"{len(dropped)} segment{'s' if len(dropped) > 1 else ''}"
    print(f"markship wal-push: warning: the repository cannot be written "
          f"({failure.one_line()}); pg_wal protection (archive_queue_max {queue_max} bytes): "
          f"{count} from {dropped[0]} on given up so PostgreSQL can recycle them, recorded as "
          "a WAL gap; points from there on are restorable again only after the next full "
          "backup", file=sys.stderr)
    return True


def _flush_gaps(repo: Repository, config_path: str, server: str, pushed: str) -> None:
    """Write waiting gap records into the repository; a failure only warns (the segment is
    stored, and the next push or the agent tries again)."""
    import sys

    from markship.wal import guard

    try:
        guard.flush(repo, config_path, server, pushed)
    except (MarkshipError, OSError, ValueError) as exc:
        print(f"markship wal-push: warning: a WAL gap record could not be written to the "
              f"repository yet ({exc.one_line() if isinstance(exc, MarkshipError) else exc})",
              file=sys.stderr)


def _refuse_absent_repository(repo: Repository) -> None:
    """An unmounted or misnamed repository looks like one with nothing archived: when a file
    is not found, make sure the repository itself is there (its marker object)."""
    if not repo.exists(layout.MARKER_KEY):
        raise RepositoryError(
            f"the repository {repo.location} has no {layout.MARKER_KEY}: it is not mounted, or "
            "[repository] path names the wrong directory",
            "mount it or correct the path; recovery stops here instead of ending short")
