"""The check file of `markship drill`: SQL that must hold on the restored group.

One check per line (`#` comments; an indented line continues the check above):

    [TARGETS] SQL            one row, one boolean column, true on every target
    SQL                      the same, on every server
    sum(TARGETS): SQL == N   one number per target; their sum must equal N

TARGETS: server names or `*`, comma-separated, each optionally `/DATABASE`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from markship.errors import MarkshipError


class CheckFileError(MarkshipError):
    """A check file cannot be read or parsed."""

    exit_code = 2


# -- check files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One check of a check file: where it runs, what it runs, what it must give."""

    file: str
    line: int
    text: str  # as written (continuation lines joined)
    kind: Literal["true", "sum"]
    targets: tuple[tuple[str, str | None], ...]  # (server, database or None: the conninfo's)
    sql: str
    expected: Decimal | None = None


_SUM = re.compile(r"sum\s*\((?P<targets>[^)]*)\)\s*:(?P<rest>.*)", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def parse_checks(text: str, file: str, servers: list[str]) -> list[Check]:
    """The checks of one check file; CheckFileError naming the file and line if malformed."""
    logical: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if not logical:
                raise CheckFileError(f"{file} line {number}: an indented line continues the "
                                     "check above it, and there is none",
                                     "remove the indentation")
            first, joined = logical[-1]
            logical[-1] = (first, f"{joined} {stripped}")
        else:
            logical.append((number, stripped))
    return [_parse_check(entry, number, file, servers) for number, entry in logical]


def _parse_check(entry: str, number: int, file: str, servers: list[str]) -> Check:
    def problem(message: str, hint: str = "see the check-file format: markship drill --help"
                ) -> CheckFileError:
        return CheckFileError(f"{file} line {number}: {message}", hint)

    summed = _SUM.fullmatch(entry)
    if summed is None and re.match(r"sum\s*\(", entry):
        raise problem("a sum check reads sum(SERVERS): SQL == NUMBER")
    if summed is not None:
        sql, sep, value = summed.group("rest").rpartition("==")
        sql, value = sql.strip(), value.strip()
        if not sep:
            raise problem("a sum check ends with == NUMBER (the expected total)")
        if not _NUMBER.fullmatch(value):
            raise problem(f"{value!r} after == is not a number")
        if not sql:
            raise problem("the sum check has no SQL")
        targets = _parse_targets(summed.group("targets"), servers, problem)
        return Check(file, number, entry, "sum", targets, sql, Decimal(value))
    if entry.startswith("["):
        head, sep, sql = entry[1:].partition("]")
        if not sep:
            raise problem("'[' without a closing ']'")
        targets = _parse_targets(head, servers, problem)
        sql = sql.strip()
    else:
        targets, sql = _parse_targets("*", servers, problem), entry
    if not sql:
        raise problem("the check has no SQL")
    if re.search(r"==\s*-?[\d.]+\s*$", sql):
        raise problem("'== NUMBER' belongs to sum(SERVERS): checks; a plain check is SQL that "
                      "returns true", "write sum(…): SQL == NUMBER, or compare inside the SQL")
    return Check(file, number, entry, "true", targets, sql)


def _parse_targets(text: str, servers: list[str],
                   problem: Callable[[str], CheckFileError]) -> tuple[tuple[str, str | None], ...]:
    found: list[tuple[str, str | None]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            raise problem("empty server name in the list (write NAME, NAME/DATABASE or *)")
        name, slash, database = (part.strip() for part in item.partition("/"))
        if slash and not database:
            raise problem(f"{item!r} names no database after '/'")
        names = servers if name == "*" else [name]
        if name != "*" and name not in servers:
            raise problem(f"unknown server {name!r} (configured: {', '.join(servers)})")
        for server in names:
            target = (server, database or None)
            if target in found:
                raise problem(f"{label(target)} is named twice")
            found.append(target)
    return tuple(found)


def label(target: tuple[str, str | None]) -> str:
    server, database = target
    return f"{server}/{database}" if database else server


# -- records --------------------------------------------------------------------------------------
