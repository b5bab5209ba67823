"""WAL and the copies of the repository ([[repository.copy]]): wal-push to the `sync` copies
(once the primary holds a WAL file, each sync copy gets the same stored object, so the
archive_command succeeds only when every one of them holds the segment; `async` copies are
the agent's, markship.agent.copying), and wal-fetch of a file whose object in the primary is
damaged from a copy holding it intact."""

from __future__ import annotations

import os

from markship.errors import ConflictError, CorruptObject, MarkshipError, RepositoryError
from markship.repository.copies import copy_object, named
from markship.wal.stored import find_archived

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays off the per-segment start-up
    from markship.repository.base import Repository
    from markship.repository.copies import Copy


def push_to_copies(primary: Repository, copies: list[Copy], server: str, path: str) -> int:
    """Copy the primary's stored object(s) of WAL file `path` to every copy lacking them;
    the bytes copied. Raises RepositoryError naming the copy that cannot be reached or
    written, ConflictError when a copy holds different content under that name."""
    name = os.path.basename(path)
    wanted = [key for key, _digest in find_archived(primary, server, name)]
    copied = 0
    for copy in copies:
        try:
            present = {key for key, _digest in find_archived(copy.repo, server, name)}
            if present - set(wanted):
                raise ConflictError(
                    f"{name} of server {server} is archived with different content in copy "
                    f"{copy.name} ({copy.repo.location}); the stored copy is kept",
                    "two clusters may be archiving under one server name, or the copy "
                    "belongs to another group: check [[repository.copy]]")
            for key in wanted:
                if key in present:
                    continue
                try:  # noqa: SIM105 - contextlib is one import too many on this path
                    copied += copy_object(primary, copy.repo, key)
                except ConflictError:
                    pass  # the agent copied it meanwhile: same key, same bytes
        except ConflictError:
            raise
        except RepositoryError as exc:
            raise named(copy, exc) from None
    return copied


def fetch_intact(copies: list[Copy], server: str, wal_name: str, dest: str) -> None:
    """wal-fetch of `wal_name` from the first copy whose object passes the checks (digest,
    page header) after the primary's failed them. Raises CorruptObject when none does."""
    from markship.wal.fetch import fetch

    for copy in copies:
        try:
            fetch(copy.repo, server, wal_name, dest)
            return
        except MarkshipError:
            continue
    raise CorruptObject(f"archived {wal_name} of server {server} is damaged, and no copy of "
                        "the repository holds it intact",
                        "run markship verify (and verify --repository NAME for each copy); "
                        "this WAL must not be replayed")
