"""The tablespace map a user writes: `OLD=NEW` entries, on the command line (`restore
--tablespace-map`) or in a DR standby's config (`[[dr_site.standby]] tablespace_map`). OLD is
a tablespace's name or original location, or `*` for every tablespace not named; NEW the
absolute directory it goes to. Where each tablespace of a backup then goes is
markship.backup.tablespaces's."""

from __future__ import annotations

import re

from markship.errors import RestoreError

EVERY = "*"  # OLD of the entry for every tablespace not named otherwise
UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f\\]")


def parse_mapping(items: list[str] | tuple[str, ...], *, per_server: bool = False,
                  source: str = "--tablespace-map") -> dict[str, str]:
    """`OLD=NEW` options → {OLD: NEW}. OLD is a tablespace's name or original location, or
    `*` for every tablespace not named (its NEW must contain `{oid}`, the tablespace's OID);
    NEW an absolute directory (with `per_server`, for a group, it must contain `{server}`).
    Raises RestoreError in one line for anything else."""
    mapping: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise RestoreError(f"{source} {item!r} is not OLD=NEW",
                               "give the tablespace's name or original location, '=', and "
                               "the new directory, e.g. --tablespace-map fast=/srv/fast")
        if not new.startswith("/") or UNSAFE_PATH.search(new):
            raise RestoreError(f"{source} {item!r}: {new!r} is not an absolute path "
                               "without control characters or backslashes",
                               "give the new directory as an absolute path")
        if per_server and "{server}" not in new:
            raise RestoreError(f"{source} {item!r} has no {{server}} placeholder",
                               "with --group every server needs its own directory: use e.g. "
                               "/srv/fast/{server}")
        if old == EVERY and "{oid}" not in new:
            raise RestoreError(f"{source} {item!r} has no {{oid}} placeholder",
                               "every tablespace needs its own directory: use e.g. "
                               "'*=/srv/restored/{oid}'")
        if old in mapping:
            raise RestoreError(f"{source} {old!r} is given twice",
                               "give each tablespace once")
        mapping[old] = new
    return mapping
