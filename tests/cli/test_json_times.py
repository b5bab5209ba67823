"""Every time in the JSON markship prints: ISO 8601 to the microsecond with its zone, the same
instant the repository stored, whichever command prints it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from markship.repository import layout
from markship.timefmt import exact_times
from tests.support.checks import wait_for
from tests.support.servers import Group, GroupFactory

EXACT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
LOOKS_LIKE_A_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d")


def times_in(document: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(where, text) for every string of a JSON document that is a date and time."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield from times_in(value, f"{path}.{key}")
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from times_in(value, f"{path}[{index}]")
    elif isinstance(document, str) and LOOKS_LIKE_A_TIME.match(document):
        yield path, document


def exact(text: str) -> datetime:
    """`text` as an aware datetime; it must be written to the microsecond with a zone."""
    assert EXACT.match(text), f"{text!r}: not to the microsecond with a zone"
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


def printed(group: Group, *command: str) -> Any:
    """The JSON `markship COMMAND --json` printed, after checking each time in it."""
    proc = group.markship(*command, "--json")
    assert proc.returncode in (0, 1, 2), proc.stderr  # check: 1 WARNING, 2 CRITICAL
    document = json.loads(proc.stdout)
    found = list(times_in(document))
    for _where, text in found:
        exact(text)
    return document


def test_the_commands_print_the_stored_instant_to_the_microsecond(
        pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    made = printed(group, "mark")
    stored = json.loads(group.store.read(layout.mark_key(made["name"])))["body"]
    instant = datetime.fromisoformat(stored["created_at"])
    assert exact(made["created_at"]) == instant

    listed = {m["name"]: m for m in printed(group, "marks")}
    assert exact(listed[made["name"]]["created_at"]) == instant
    wait_for(lambda: json.loads(group.ok("status", "--json"))["latest_complete_mark"],
             "the mark to be complete")
    status = printed(group, "status")
    assert status["latest_complete_mark"]["name"] == made["name"]
    assert exact(status["latest_complete_mark"]["created_at"]) == instant

    entries = printed(group, "journal")
    mark_entry = next(e for e in entries if e["command"] == "mark")
    assert exact(mark_entry["time"]) >= instant  # written once the mark was made

    (backup_set,) = printed(group, "list")
    assert exact(backup_set["created_at"]) < exact(backup_set["finished_at"]) < instant

    checked = printed(group, "check")
    assert exact(checked["checked_at"]) > instant


def test_exact_times_writes_every_time_inside_a_document() -> None:
    plus_one = timezone(timedelta(hours=1))
    document = {"at": datetime(2026, 12, 5, 11, 0, 0, 120, tzinfo=plus_one),
                "list": [datetime(2026, 12, 5, 10, 0, tzinfo=UTC)],
                "pair": (datetime(2026, 12, 5, 10, 0, 0, 500000, tzinfo=UTC), "text")}
    assert exact_times(document) == {
        "at": "2026-12-05T10:00:00.000120Z",
        "list": ["2026-12-05T10:00:00.000000Z"],
        "pair": ["2026-12-05T10:00:00.500000Z", "text"]}
