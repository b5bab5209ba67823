"""Pure object-key naming for the repository: where each kind of object lives.

Every key markship writes is formed here, from the constants and functions below; the list is
the authoritative one (README.md's "Repository layout" repeats it, and a test keeps the two
identical):
```
markship.json                                marker: format and group (one group per repository)
sets/<set-id>.json                           backup set (all servers)
backups/<server>/<set-id>/base.tar.zst       the base backup stream
backups/<server>/<set-id>/config/<file>      postgresql.conf, pg_hba.conf, pg_ident.conf
backups/<server>/<set-id>/backup.json        written last: LSNs, timeline, sizes, checksums
backups/_group/<set-id>/markship.toml        the markship config file at backup time
wal/<server>/<timeline+log>/<segment>-b3.<blake3>.zst
wal/<server>/history/<timeline>.history-b3.<blake3>.zst
stream/<server>/<segment>[.partial]          WAL received by the agent's pg_receivewal
stream/<server>/<segment>.partial.<from>-<to>  a piece of it, uploaded from the agent's spool
gaps/<server>/<first-segment>.json           WAL dropped by pg_wal protection: the gap
marks/<mark-name>.json                       group mark: its restore point on every server
holds/<set-id>-<server>-<pid>.json           restore in progress: expire keeps its set
failovers/<failover-id>.json                 failover to the DR site, and how far it got
drills/<drill-id>.json                       recovery drill: its record
drills/<drill-id>.md                         recovery drill: its report
filesets/<name>/<capture-id>.json            file set capture: its record
filesets/<name>/<capture-id>.tar.zst         file set capture: its files
dumps/<name>/<dump-id>.json                  pg_dump of one database: its record
dumps/<name>/<dump-id>.dump.zst              pg_dump of one database: its archive
journal/<seq>.json                           journal entry, chained to the one before
journal/HEAD.json                            the newest journal entry's number and hash
agent/state.json                             what the agent remembers between runs
keys/exports/<time>.json                     that a key backup exists (fingerprints only)
keys/catalog/<time>-<fingerprint>.age        the catalog key, encrypted to the repository key
locks/<name>.lock                            a lock (backup, agent, dump-<name>)
owed/<key>/<note>                            in a copy: <key> written there while the repo was gone
conflicts/<copy>/<key>                       a copy's <key> that differed from the repo's, kept
```
The digest in a WAL object's name is the BLAKE3 of the uncompressed file (objects archived
before carry a bare sha256 instead; see repository.walsum), so a second push of the same file can
be recognised without reading the stored copy, and a different file under a name already
archived is detected.

Names are not checked here (markship.names would load `re` on the archive path): callers pass
names already checked.
"""

from __future__ import annotations

from markship.pg.lsn import wal_file_kind
from markship.repository.walsum import is_digest

MARKER_KEY = "markship.json"
SETS = "sets/"
BACKUPS = "backups/"
WAL = "wal/"
STREAM = "stream/"
GAPS = "gaps/"
MARKS = "marks/"
HOLDS = "holds/"
FAILOVERS = "failovers/"
DRILLS = "drills/"
FILESETS = "filesets/"
DUMPS = "dumps/"
JOURNAL = "journal/"
JOURNAL_HEAD_KEY = f"{JOURNAL}HEAD.json"
AGENT_STATE_KEY = "agent/state.json"
KEY_EXPORTS = "keys/exports/"
CATALOG_KEY_COPIES = "keys/catalog/"
LOCKS = "locks/"
OWED = "owed/"
CONFLICTS = "conflicts/"

RECORD_SUFFIX = ".json"
WAL_SUFFIX = ".zst"
STREAM_PARTIAL = ".partial"


# -- backup sets and base backups -----------------------------------------------------------------


def set_key(set_id: str) -> str:
    return f"{SETS}{set_id}{RECORD_SUFFIX}"


def backup_prefix(server: str, set_id: str) -> str:
    return f"{BACKUPS}{server}/{set_id}/"


def backup_record_key(server: str, set_id: str) -> str:
    return backup_prefix(server, set_id) + "backup.json"


def base_archive_key(server: str, set_id: str) -> str:
    return backup_prefix(server, set_id) + "base.tar.zst"


def tablespace_archive_key(server: str, set_id: str, oid: str) -> str:
    """The archive of one tablespace outside the data directory (`oid`: its digits)."""
    return backup_prefix(server, set_id) + f"tablespace-{oid}.tar.zst"


def group_config_key(set_id: str) -> str:
    """The markship config file of a set (`_group` cannot be a server name)."""
    return f"{BACKUPS}_group/{set_id}/markship.toml"


def config_file_key(server: str, set_id: str, file_name: str) -> str:
    return backup_prefix(server, set_id) + f"config/{file_name}"


def hold_key(set_id: str, server: str, pid: int) -> str:
    """The record of a restore (process `pid`) of `server` from set `set_id` in progress."""
    return f"{HOLDS}{set_id}-{server}-{pid}{RECORD_SUFFIX}"


# -- WAL ------------------------------------------------------------------------------------------


def wal_prefix(server: str) -> str:
    return f"{WAL}{server}/"


def wal_dir(server: str, wal_name: str) -> str:
    """The folder (key prefix ending in '/') an archived WAL file of this name goes to."""
    if wal_file_kind(wal_name) == "history":
        return f"{wal_prefix(server)}history/"
    return f"{wal_prefix(server)}{wal_name[:16]}/"


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
    return f"{STREAM}{server}/"


def gaps_prefix(server: str) -> str:
    """Where the gap records of this server's dropped WAL go (see markship.wal.guard)."""
    return f"{GAPS}{server}/"


def gap_key(server: str, first_segment: str) -> str:
    """The record of a gap: WAL of `server` dropped from segment `first_segment` on."""
    return f"{gaps_prefix(server)}{first_segment}{RECORD_SUFFIX}"


def stream_piece_name(wal_name: str, start: int, end: int) -> str:
    """The name (in stream_prefix) of bytes `start`..`end` of a partial segment, uploaded from
    the agent's spool (see markship.marks.upload)."""
    return f"{wal_name}{STREAM_PARTIAL}.{start:08X}-{end:08X}"


def split_stream_name(name: str) -> tuple[str, tuple[int, int] | None] | None:
    """(segment name, (start, end) of a piece or None) of a name in a stream folder — `SEG`,
    `SEG.partial` or a piece `SEG.partial.SSSSSSSS-EEEEEEEE` — or None for any other name."""
    segment, dot, rest = name.partition(".")
    if len(segment) != 24:
        return None
    if not dot:
        return segment, None
    if rest == STREAM_PARTIAL[1:]:
        return segment, None
    kind, dot, span = rest.partition(".")
    first, dash, last = span.partition("-")
    if kind != STREAM_PARTIAL[1:] or not dot or not dash or len(first) != 8 or len(last) != 8:
        return None
    try:
        start, end = int(first, 16), int(last, 16)
    except ValueError:
        return None
    return (segment, (start, end)) if start < end else None


# -- marks and the DR site ------------------------------------------------------------------------


def mark_key(name: str) -> str:
    return f"{MARKS}{name}{RECORD_SUFFIX}"


def failover_key(failover_id: str) -> str:
    return f"{FAILOVERS}{failover_id}{RECORD_SUFFIX}"


def drill_record_key(drill_id: str) -> str:
    return f"{DRILLS}{drill_id}{RECORD_SUFFIX}"


def drill_report_key(drill_id: str) -> str:
    return f"{DRILLS}{drill_id}.md"


# -- file sets and dumps --------------------------------------------------------------------------


def fileset_prefix(name: str) -> str:
    return f"{FILESETS}{name}/"


def fileset_record_key(name: str, capture_id: str) -> str:
    return f"{fileset_prefix(name)}{capture_id}{RECORD_SUFFIX}"


def fileset_archive_name(capture_id: str) -> str:
    """The file name (in fileset_prefix) of a capture's archive."""
    return f"{capture_id}.tar.zst"


def dump_prefix(name: str) -> str:
    return f"{DUMPS}{name}/"


def dump_record_key(name: str, dump_id: str) -> str:
    return f"{dump_prefix(name)}{dump_id}{RECORD_SUFFIX}"


def dump_archive_key(name: str, dump_id: str) -> str:
    return f"{dump_prefix(name)}{dump_id}.dump.zst"


# -- the journal, the agent, keys, locks ----------------------------------------------------------


def journal_entry_key(seq: int) -> str:
    return f"{JOURNAL}{seq:012d}{RECORD_SUFFIX}"


def key_export_key(stamp: str) -> str:
    """`stamp`: the export's UTC time, `20261125T190211.123456Z`."""
    return f"{KEY_EXPORTS}{stamp}{RECORD_SUFFIX}"


def catalog_key_copy_name(stamp: str, fingerprint: str) -> str:
    """The file name (in CATALOG_KEY_COPIES) of a catalog key's copy: the UTC time it was
    stored, then the key's fingerprint; with an empty `stamp`, the end every copy of that
    key's name has."""
    return f"{stamp}-{fingerprint}.age"


def lock_key(name: str) -> str:
    return f"{LOCKS}{name}.lock"


# -- copies ([[repository.copy]]) -----------------------------------------------------------------

# Never copied: locks belong to the repository they lock, the stream folder is rewritten in
# place by pg_receivewal and pruned within seconds, a hold protects a set from one
# repository's own expire, and what a copy owes the repository is the copy's own bookkeeping.
NOT_COPIED = (LOCKS, STREAM, HOLDS, OWED)

# Where retention deletes (markship.backup.retention), oldest name first within each folder.
_EXPIRED_FOLDERS = (SETS, MARKS)
_EXPIRED_PER_NAME = (WAL, BACKUPS, FILESETS, DUMPS)


def owed_key(key: str) -> str:
    """In a copy: the note that `key` was written to the copy while the repository was gone,
    so it is owed back to the repository (markship.repository.owed)."""
    return f"{OWED}{key}"


def conflict_key(copy_name: str, key: str) -> str:
    """In the repository: copy `copy_name`'s version of `key`, kept because the repository
    held a different one when the copy's was brought back."""
    return f"{CONFLICTS}{copy_name}/{key}"


def copied(key: str) -> bool:
    """Whether a copy of the repository holds this object too."""
    return not key.startswith(NOT_COPIED)


def expiry_unit(key: str) -> tuple[str, str] | None:
    """(folder, unit) of an object retention deletes oldest first: within the folder, units
    are deleted in the order of their names (markship.repository.copies mirrors that). None
    when retention never deletes the object. The folders: one server's WAL (the unit: the
    WAL file's name; timeline history files are kept for ever), one server's backups (the
    backup set), sets, marks, the captures of one file set and the dumps of one dump (the
    capture or dump, its record and its archive together)."""
    parts = key.split("/")
    if key.startswith(_EXPIRED_FOLDERS):
        return (parts[0] + "/", parts[1].removesuffix(RECORD_SUFFIX)) if len(parts) == 2 \
            else None
    if not key.startswith(_EXPIRED_PER_NAME) or len(parts) < 3:
        return None
    folder = f"{parts[0]}/{parts[1]}/"
    if key.startswith(WAL):
        wal = split_wal_key(key)
        if wal is None or parts[2] == "history":
            return None
        return folder, wal[0]
    if key.startswith(BACKUPS):
        return (folder, parts[2]) if len(parts) > 3 else None
    unit = parts[2]  # a capture's or dump's id: its record and its archive
    for suffix in (RECORD_SUFFIX, ".tar.zst", ".dump.zst"):
        unit = unit.removesuffix(suffix)
    return folder, unit
