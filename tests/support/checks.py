"""The checks tests end with: waiting for a condition, a refusal that is one error line
without a traceback, the repository verifies and what is listed as usable really is, and
what the archiver and the repository hold for a server's WAL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from markship.pg.scratch import ScratchServer
from tests.support.servers import Group

TEMP_PREFIX = ".tmp~"  # markship.repository.fs: partly written objects


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 60,
             interval: float = 0.05) -> None:
    """Call `predicate` every `interval` seconds until it is true; fail the test after
    `timeout` seconds, naming `what` it waited for."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(interval)


def utc(text: str) -> datetime:
    """An ISO time without a zone, read as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def one_error_line(stderr: str, *, alone: bool = False) -> str:
    """The single `error:` line of a failed command, with no traceback. Warnings may come
    before it unless `alone`: then it is all stderr holds."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, stderr
    assert not alone or len(lines) == 1, stderr
    return errors[0]


def refused_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command writes: `markship: error: …`, alone, no traceback."""
    assert proc.returncode != 0, proc.stdout
    line = one_error_line(proc.stderr, alone=True)
    assert line.startswith("markship: error: "), proc.stderr
    return line


def ok_json(group: Group, *args: str) -> object:
    return json.loads(group.ok(*args, "--json"))


def marks_of(group: Group) -> list[dict[str, Any]]:
    """`markship marks --json` of the group."""
    result: list[dict[str, Any]] = json.loads(group.ok("marks", "--json"))
    return result


def complete_marks(group: Group) -> list[str]:
    return [m["name"] for m in json.loads(group.ok("marks", "--json", "--limit", "0"))
            if m["complete"]]


def assert_repository_sound(group: Group) -> dict[str, Any]:
    """What every fault case ends with: verify passes (temp objects are reported, never
    data), the set and mark listings decode, and every mark listed complete has the WAL
    holding it stored (archived, or streamed when delivered by stream) on every server."""
    proc = group.markship("verify", "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] and proc.returncode == 0, report
    sets = json.loads(group.ok("list", "--json"))
    assert all(s["complete"] == (s["state"] == "complete") for s in sets), sets
    for mark in json.loads(group.ok("marks", "--json", "--limit", "0")):
        if not mark["complete"]:
            continue
        for server, point in mark["points"].items():
            stored = list((group.repo / "wal" / server).rglob(f"{point['wal_file']}-*"))
            streamed = list((group.repo / "stream" / server).glob(f"{point['wal_file']}*"))
            assert stored or (mark["delivery"].get(server) == "stream" and streamed), \
                f"mark {mark['name']} listed complete without {point['wal_file']} of {server}"
    assert isinstance(report, dict)
    return report


def temp_objects(repo: Path, under: str = "") -> list[Path]:
    """Partly written objects (`.tmp~…` names) below `repo/under`."""
    top = repo / under if under else repo
    if not top.exists():
        return []
    return sorted(p for p in top.rglob(f"{TEMP_PREFIX}*") if p.is_file())


def stored_wal(group: Group, server: str, name: str) -> list[Path]:
    """Objects stored under a final name for WAL file `name` of `server`."""
    return [p for p in (group.repo / "wal" / server).rglob(f"{name}-*")
            if not p.name.startswith(TEMP_PREFIX)]


def ready_files(server: ScratchServer) -> list[str]:
    """WAL files PostgreSQL still has to archive (their `.ready` status files)."""
    folder = server.data_dir / "pg_wal" / "archive_status"
    return sorted(p.name.removesuffix(".ready") for p in folder.glob("*.ready"))


def archiver(server: ScratchServer) -> dict[str, str]:
    """pg_stat_archiver of the server: archived_count, last_archived_wal, failed_count,
    last_failed_wal."""
    row = server.psql("SELECT archived_count, coalesce(last_archived_wal, ''), failed_count, "
                      "coalesce(last_failed_wal, '') FROM pg_stat_archiver")
    keys = ("archived_count", "last_archived_wal", "failed_count", "last_failed_wal")
    return dict(zip(keys, row.split("|"), strict=True))


def switch_wal(server: ScratchServer) -> str:
    """Write a little, switch WAL; the name of the segment that was finished."""
    return server.psql(
        "SELECT pg_walfile_name(pg_switch_wal()) FROM (SELECT txid_current()) AS force_wal")


def forge_record(path: Path, body: dict[str, Any], kind: str) -> None:
    """Write a record envelope with a correct checksum around `body` (keeping the rest of an
    envelope already at `path`), as anyone who can write the repository can: the checksum
    detects damage, not intent."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    envelope = json.loads(path.read_text()) if path.exists() else {"format": 1}
    envelope.update(body=body, sha256=hashlib.sha256(canonical).hexdigest())
    envelope.setdefault("kind", kind)
    path.write_text(json.dumps(envelope, indent=1, sort_keys=True) + "\n")
