"""What may name something markship stores: one pattern for every name that becomes part of a
repository key or a recovery setting (marks, restore points, backup sets, servers, file sets,
dumps, capture ids, ...), checked wherever a name comes in: the command line, the agent's
socket, the config, and every record read back from the repository (which the archiving OS
user can write, so it is not trusted either).

A name is 1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit: it
can never be '.', '..', hold a '/', a control character or a space, or look like an option.
"""

from __future__ import annotations

import re

from markship.errors import MarkshipError

PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
ALLOWED = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
# PostgreSQL keeps restore point names in a 64-byte buffer (MAXFNAMELEN, with its NUL).
RESTORE_POINT_MAX = 63

_NAME = re.compile(PATTERN, re.ASCII)


class BadName(MarkshipError):
    """A name that cannot name a repository object (given by the user, or found in a
    record)."""

    exit_code = 2


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def printable(text: str) -> str:
    """`text` with control and other unprintable characters escaped: a message about
    untrusted data (a key listed in the repository, a field of a record) stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _shown(value: object) -> str:
    text = repr(value)  # escapes newlines and control characters: the message stays one line
    return text if len(text) <= 60 else text[:50] + "…" + text[-8:]


def check(value: object, what: str = "name") -> str:
    """`value` if it matches PATTERN; BadName saying what is wrong and what is allowed."""
    if not is_name(value):
        raise BadName(f"{_shown(value)} is not a usable {what}", f"use {ALLOWED}")
    assert isinstance(value, str)
    return value


def check_restore_point(value: object, what: str = "mark name") -> str:
    """A name that also becomes a PostgreSQL restore point (a mark, restore --name): PATTERN,
    and short enough for PostgreSQL."""
    name = check(value, what)
    if len(name) > RESTORE_POINT_MAX:
        raise BadName(f"{_shown(name)} is not a usable {what}: it has {len(name)} characters, "
                      f"a PostgreSQL restore point at most {RESTORE_POINT_MAX}",
                      "choose a shorter name")
    return name


def validated(value: str) -> str:
    """For pydantic validators: ValueError (which pydantic reports) instead of BadName."""
    if not is_name(value):
        raise ValueError(f"not a usable name: use {ALLOWED}")
    return value


def key_part(value: str) -> bool:
    """A folder or file name inside a repository key: a name, or one with a leading '_'
    (markship's own folders such as `backups/_group/`)."""
    return is_name(value.removeprefix("_"))


def validated_key(value: str) -> str:
    """For pydantic validators: a repository key made of key parts joined by '/' (never
    absolute, never '..': it cannot point outside the repository)."""
    if len(value) > 1024 or not all(key_part(part) for part in value.split("/")):
        raise ValueError("not a usable object key: each part separated by '/' must be "
                         f"{ALLOWED}")
    return value
