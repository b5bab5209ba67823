"""Tablespaces outside the data directory in a restore: where each goes (`--tablespace-map
OLD=NEW`; `*=NEW` with `{oid}` for every tablespace not named; else its original
location), checking those directories before anything is written, and the `tablespace_map`
file of the restored data directory.

A base backup in tar format holds `tablespace_map` (one line per tablespace: its OID, a
space, its location); PostgreSQL makes the links in `pg_tblspc/` from it when recovery
starts, so pointing a tablespace elsewhere means rewriting that file. The repository is
untrusted: a map that lists an OID the backup has no archive for, or misses one it has, is
refused.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from markship.config.tablespacemap import EVERY, UNSAFE_PATH
from markship.errors import CorruptObject, RestoreError
from markship.repository.catalog import BackupRecord

MAP_FILE = "tablespace_map"


@dataclass(frozen=True)
class Placement:
    oid: str
    name: str
    directory: Path


def place(backup: BackupRecord, mapping: dict[str, str], *, partial: bool = False
          ) -> list[Placement]:
    """Where each tablespace of `backup` goes, by OID. An entry of `mapping` that names no
    tablespace of the backup is refused unless `partial` (a group's map names the
    tablespaces of every server); `*` applies to every tablespace not named. Raises
    RestoreError in one line."""
    placements = []
    used: set[str] = {EVERY}
    for oid in sorted(backup.tablespaces, key=int):
        space = backup.tablespaces[oid]
        key = space.name if space.name in mapping else space.location
        if key in mapping:
            used.add(key)
        elif EVERY in mapping:
            key = EVERY
        new = mapping.get(key, space.location).replace("{server}", backup.server)
        new = new.replace("{oid}", oid)  # digits: the record's OIDs are checked
        if UNSAFE_PATH.search(new):  # an original location read from the repository
            raise CorruptObject(f"backup of {backup.server} in set {backup.set_id} names "
                                f"tablespace {oid} at a path no tablespace can have",
                                "the repository object was altered")
        placements.append(Placement(oid, space.name, Path(os.path.normpath(new))))
    unknown = sorted(set(mapping) - used)
    if unknown and not partial:
        known = ", ".join(f"{s.name} ({s.location})" for s in backup.tablespaces.values())
        raise RestoreError(f"--tablespace-map {unknown[0]!r} names no tablespace of the backup "
                           f"of {backup.server} in set {backup.set_id}"
                           f" (it has {known or 'none'})",
                           "give a tablespace's name or its original location")
    directories = [p.directory for p in placements]
    for each in placements:
        if directories.count(each.directory) > 1:
            raise RestoreError(f"two tablespaces of {backup.server} would go to "
                               f"{each.directory}", "map each to its own directory")
    return placements


def check_free(placements: list[Placement], target_dir: Path) -> None:
    """Each tablespace directory must be absent or empty, and outside the data directory.
    Raises RestoreError naming the first that is not; nothing is written."""
    data = Path(os.path.normpath(target_dir))
    for each in placements:
        where = each.directory
        if where == data or data in where.parents or where in data.parents:
            raise RestoreError(f"tablespace {each.name} would go to {where}, which overlaps "
                               f"the target directory {target_dir}",
                               "map it elsewhere with --tablespace-map "
                               f"{each.name}=/new/directory")
        if where.is_symlink() or (where.exists() and not where.is_dir()):
            raise RestoreError(f"tablespace {each.name} would go to {where}, which is not a "
                               "directory", f"map it elsewhere with --tablespace-map "
                               f"{each.name}=/new/directory")
        if where.is_dir() and any(where.iterdir()):
            raise RestoreError(f"tablespace {each.name} would go to {where}, which is not "
                               "empty", f"map it to a new or empty directory with "
                               f"--tablespace-map {each.name}=/new/directory; markship never "
                               "overwrites data")


def create(placements: list[Placement], owner_of: Path) -> list[Path]:
    """Create each tablespace directory (0700, owned like `owner_of`, the data directory);
    returns those it created. Raises RestoreError when one cannot be made."""
    made: list[Path] = []
    info = owner_of.stat()
    for each in placements:
        try:
            if not each.directory.exists():
                each.directory.mkdir(parents=True, mode=0o700)
                made.append(each.directory)
            each.directory.chmod(0o700)
            if os.geteuid() == 0:
                os.chown(each.directory, info.st_uid, info.st_gid)
        except OSError as exc:
            raise RestoreError(f"cannot create tablespace directory {each.directory} "
                               f"({exc.strerror})", "choose a directory the repository's "
                               "OS user can write (--tablespace-map)") from None
    return made


def undo(placements: list[Placement], made: list[Path]) -> None:
    """Remove what a failed restore wrote into the tablespace directories."""
    for each in placements:
        if each.directory in made:
            shutil.rmtree(each.directory, ignore_errors=True)
        elif each.directory.is_dir():
            for child in each.directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)


def read_map(data_dir: Path, backup: BackupRecord) -> dict[str, str]:
    """The restored `tablespace_map`: OID → location. Raises CorruptObject when it does not
    list exactly the tablespaces the backup has archives of, at the locations its record
    gives."""
    path = data_dir / MAP_FILE
    what = f"the base backup of {backup.server} in set {backup.set_id}"
    listed: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            oid, _sep, location = line.partition(" ")
            if not re.fullmatch(r"[1-9][0-9]{0,9}", oid) or not location.startswith("/"):
                raise CorruptObject(f"{what} holds a {MAP_FILE} line that is no tablespace",
                                    "the repository object was altered")
            listed[oid] = location
    missing = sorted(set(listed) - set(backup.tablespaces), key=int)
    if missing:
        raise CorruptObject(f"{what} lists tablespace {missing[0]} in its {MAP_FILE}, but the "
                            "repository holds no archive of it; nothing was restored",
                            "the repository records were altered: restore from another set "
                            "(--set) after markship verify")
    extra = sorted(set(backup.tablespaces) - set(listed), key=int)
    if extra:
        raise CorruptObject(f"{what} has an archive of tablespace {extra[0]}, which its "
                            f"{MAP_FILE} does not list; nothing was restored",
                            "the repository records were altered: restore from another set "
                            "(--set) after markship verify")
    for oid, location in listed.items():
        if os.path.normpath(location) != os.path.normpath(backup.tablespaces[oid].location):
            raise CorruptObject(f"{what} places tablespace {oid} at {location} in its "
                                f"{MAP_FILE}, but its record at "
                                f"{backup.tablespaces[oid].location}; nothing was restored",
                                "the repository records were altered: restore from another "
                                "set (--set) after markship verify")
    return listed


def write_map(data_dir: Path, placements: list[Placement]) -> None:
    """Point `tablespace_map` at the directories the tablespaces were restored into."""
    path = data_dir / MAP_FILE
    if not placements:
        return
    info = path.stat()
    text = "".join(f"{p.oid} {p.directory}\n" for p in placements)
    temporary = path.with_name(MAP_FILE + ".markship")
    temporary.write_text(text)
    temporary.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(temporary, info.st_uid, info.st_gid)
    temporary.replace(path)


def check_unpacked(directory: Path, name: str, archive_key: str) -> None:
    """A tablespace archive holds one directory, `PG_<major>_<catalog version>`: anything
    else means it was altered. Raises CorruptObject."""
    found = [child.name for child in directory.iterdir()]
    if len(found) != 1 or not re.fullmatch(r"PG_[0-9]+_[0-9]+", found[0]):
        raise CorruptObject(f"tablespace archive {archive_key} ({name}) holds "
                            f"{', '.join(sorted(found)[:3]) or 'nothing'} instead of one "
                            "PG_<version> directory; nothing was restored",
                            "the repository object was altered: run markship verify and "
                            "restore from another backup set (--set)")
