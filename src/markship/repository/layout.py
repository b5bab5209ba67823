"""Pure object-key naming for the repository: where each kind of object lives.

```
markship.json                                repository marker (format, group)
sets/<set-id>.json                           one backup set (all servers)
backups/<server>/<set-id>/base.tar.zst       base backup stream of one server
backups/<server>/<set-id>/config/<file>      postgresql.conf, pg_hba.conf, pg_ident.conf
backups/<server>/<set-id>/backup.json        written last: its presence means "finished"
marks/<mark-name>.json                       a group mark: restore point LSN on every server
wal/<server>/<timeline+log>/<segment>-b3.<blake3>.zst
wal/<server>/history/<timeline>.history-b3.<blake3>.zst
locks/<name>.lock
```
The digest in a WAL object's name is the BLAKE3 of the uncompressed file (objects archived
before carry a bare sha256 instead; see repository.walsum), so a second push of the same file can
be recognised without reading the stored copy, and a different file under a name already
archived is detected.
"""

from __future__ import annotations

from markship.pg.lsn import wal_file_kind
from markship.repository.walsum import is_digest

MARKER_KEY = "markship.json"
WAL_SUFFIX = ".zst"


def set_key(set_id: str) -> str:
    return f"sets/{set_id}.json"


def backup_prefix(server: str, set_id: str) -> str:
    return f"backups/{server}/{set_id}/"


def backup_record_key(server: str, set_id: str) -> str:
    return backup_prefix(server, set_id) + "backup.json"


def base_archive_key(server: str, set_id: str) -> str:
    return backup_prefix(server, set_id) + "base.tar.zst"


def group_config_key(set_id: str) -> str:
    """The markship config file of a set (`_group` cannot be a server name)."""
    return f"backups/_group/{set_id}/markship.toml"


def config_file_key(server: str, set_id: str, file_name: str) -> str:
    return backup_prefix(server, set_id) + f"config/{file_name}"


def wal_prefix(server: str) -> str:
    return f"wal/{server}/"


def wal_dir(server: str, wal_name: str) -> str:
    """The folder (key prefix ending in '/') an archived WAL file of this name goes to."""
    if wal_file_kind(wal_name) == "history":
        return f"wal/{server}/history/"
    return f"wal/{server}/{wal_name[:16]}/"


def wal_key(server: str, wal_name: str, digest: str) -> str:
    """`digest`: the content's, as repository.walsum writes it (BLAKE3, or sha256 before)."""
    return f"{wal_dir(server, wal_name)}{wal_name}-{digest}{WAL_SUFFIX}"


def split_wal_key(key: str) -> tuple[str, str] | None:
    """(wal file name, content digest) of a WAL object key, or None when the key is not one."""
    base = key.rsplit("/", 1)[-1]
    if not base.endswith(WAL_SUFFIX):
        return None
    stem = base[: -len(WAL_SUFFIX)]
    name, sep, digest = stem.rpartition("-")
    if not sep or not is_digest(digest):
        return None
    try:
        wal_file_kind(name)
    except ValueError:
        return None
    return name, digest


def stream_prefix(server: str) -> str:
    """Where the agent's pg_receivewal writes this server's WAL (see markship.marks.stream)."""
    return f"stream/{server}/"


STREAM_PARTIAL = ".partial"


def mark_key(name: str) -> str:
    return f"marks/{name}.json"


def lock_key(name: str) -> str:
    return f"locks/{name}.lock"
