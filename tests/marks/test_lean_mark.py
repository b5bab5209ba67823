"""`markship mark` without an agent, on its lean path (markship.marks.command): the same mark,
record, journal entry, output and errors as the full command line, without loading click,
pydantic or psycopg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from markship.repository import layout, records
from markship.repository.catalog import MarkRecord
from markship.repository.journal import JournalEntry
from tests.support.s3 import ON_FS_AND_S3
from tests.support.servers import MARKSHIP, Group, GroupFactory, run_markship

FULL = {"MARKSHIP_FULL_MARK": "1"}
HEAVY = ("click", "pydantic", "pydantic_core", "psycopg", "psycopg_binary", "obstore")


def test_lean_mark_modules_load_none_of_the_heavy_packages() -> None:
    code = ("import sys\nfrom markship import _entry\n"
            "from markship.marks import command, settings, take\n"
            "from markship.pg import libpq\n"
            "from markship.repository import journalchain\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[]"


def _imported(stderr: str) -> set[str]:
    """Top-level packages named by `python -X importtime`'s lines."""
    return {line.split("|")[-1].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:")}


def _mark_entries(group: Group) -> list[JournalEntry]:
    """The journal's `mark` entries, oldest first."""
    keys = [k for k in group.store.stored_keys(layout.JOURNAL)
            if k.endswith(".json") and k.rpartition("/")[2][:-5].isdigit()]
    entries = [records.decode(group.store.read(k), JournalEntry, k) for k in keys]
    return sorted((e for e in entries if e.command == "mark"), key=lambda e: e.seq)


@pytest.mark.pg
@ON_FS_AND_S3
def test_a_lean_mark_is_the_full_paths_mark(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    # The first mark after a change of the config validates it with the full model (and
    # caches what marks need); the next ones load none of it.
    text = group.markship("mark", "--name", "lean-0")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("✓ mark lean-0 at ") and "WAL delivered by switch" in text.stdout
    lean = subprocess.run([sys.executable, "-X", "importtime", str(MARKSHIP), "--config",
                           str(group.config_path), "mark", "--json", "--name", "lean-1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert lean.returncode == 0, lean.stderr
    # obstore is the S3 client itself: a repository in S3 needs it on any path
    light = set(HEAVY) - ({"obstore"} if group.store.kind == "s3" else set())
    assert not _imported(lean.stderr) & light, "the mark took the full path"
    full = run_markship(group.config_path, "mark", "--json", "--name", "full-1", env=FULL)
    assert full.returncode == 0, full.stderr

    shown = {"lean-1": json.loads(lean.stdout), "full-1": json.loads(full.stdout)}
    assert shown["lean-1"].keys() == shown["full-1"].keys()
    stored = {}
    for name, output in shown.items():
        data = group.store.read(layout.mark_key(name))
        record = records.decode(data, MarkRecord, name)
        stored[name] = record
        # Byte for byte what the model writes for this mark, and what the command printed.
        assert records.encode(record) == data
        # The lean path leaves the WAL switch to a child process it does not wait for.
        switching = ["alpha", "bravo"] if name == "lean-1" else []
        assert output == record.model_dump(mode="json") | {
            "delivery_ms": output["delivery_ms"], "taken_by": "command",
            "switching": switching}
        assert record.points.keys() == {"alpha", "bravo"}
        assert record.delivery == {"alpha": "switch", "bravo": "switch"}
        assert record.barrier_server == "alpha"
    assert all(stored["lean-1"].points[s].lsn < stored["full-1"].points[s].lsn
               for s in ("alpha", "bravo"))

    marks = _mark_entries(group)
    assert [(e.outcome, e.objects, e.user) for e in marks] == [
        ("ok", {"mark": name}, "root") for name in ("lean-0", "lean-1", "full-1")]
    verified = json.loads(group.ok("journal", "verify", "--json"))
    assert verified["ok"], verified
    listed = {m["name"] for m in json.loads(group.ok("marks", "--json"))}
    assert {"lean-0", "lean-1", "full-1"} <= listed


@pytest.mark.pg
def test_lean_mark_errors_are_the_full_paths(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")

    def both(*args: str) -> tuple[subprocess.CompletedProcess[str],
                                  subprocess.CompletedProcess[str]]:
        return (group.markship("mark", *args),
                run_markship(group.config_path, "mark", *args, env=FULL))

    lean, full = both("--name", "bad name;")
    assert lean.returncode == full.returncode != 0
    assert lean.stderr == full.stderr and len(lean.stderr.splitlines()) == 1
    assert lean.stderr.startswith("markship: error: ")

    group.ok("mark", "--name", "taken")
    lean, full = both("--name", "taken")
    assert lean.returncode == full.returncode != 0
    assert lean.stderr == full.stderr == (
        "markship: error: mark taken already exists: mark names must never repeat: choose "
        "another --name\n")

    group.server("bravo").stop()
    lean, full = both()
    assert lean.returncode == full.returncode != 0
    assert len(lean.stderr.splitlines()) == 1, lean.stderr
    assert lean.stderr.startswith("markship: error: server(s) bravo failed (bravo: cannot "
                                  "connect to server bravo: ")
    assert lean.stderr == full.stderr
    group.server("bravo").start()

    marks_folder = group.repo / layout.mark_key("x").rpartition("/")[0]
    os.chmod(marks_folder, 0o555)
    try:
        lean, full = both()
    finally:
        os.chmod(marks_folder, 0o755)
    assert lean.returncode == full.returncode != 0
    assert len(lean.stderr.splitlines()) == 1, lean.stderr
    assert lean.stderr.startswith("markship: error: repository not writable: ")
    assert lean.stderr.split(".tmp")[0] == full.stderr.split(".tmp")[0]

    outcomes = [e.outcome.split(":")[0] for e in _mark_entries(group)]
    # bad name ×2, taken ok, repeated ×2, unreachable ×2, unwritable ×2
    assert outcomes == ["failed"] * 2 + ["ok"] + ["failed"] * 6


def _wait_complete(group: Group, name: str, seconds: float = 60) -> dict[str, object]:
    deadline = time.monotonic() + seconds
    while True:
        listed: dict[str, dict[str, object]] = {
            m["name"]: m for m in json.loads(group.ok("marks", "--json"))}
        if listed[name]["complete"] or time.monotonic() > deadline:
            return listed[name]
        time.sleep(0.2)


@pytest.mark.pg
def test_the_lean_marks_switch_finishes_after_it_without_noise(pg_group: GroupFactory) -> None:
    """The lean path hands the WAL switch to a child process and returns: the mark completes
    on its own, and no server (one reached over its Unix socket) saw its client vanish."""
    group = pg_group(2)
    bravo = group.server("bravo")
    text = group.config_path.read_text()
    group.config_path.write_text(text.replace(
        bravo.conninfo(), f"host={bravo.socket_dir} port={bravo.port} user=postgres "
                          "dbname=postgres"))
    group.ok("backup")
    group.ok("mark", "--name", "warm")  # validates the changed config (full model)
    logged = {s.name: s.log_file.stat().st_size for s in group.servers}
    names = []
    for n in range(3):
        lean = group.markship("mark", "--json", "--name", f"bg-{n}")
        assert lean.returncode == 0, lean.stderr
        made = json.loads(lean.stdout)
        assert made["switching"] == ["alpha", "bravo"]
        assert made["delivery"] == {"alpha": "switch", "bravo": "switch"}
        names.append(made["name"])
    for name in names:
        assert _wait_complete(group, name)["complete"], name
    time.sleep(1)  # the children have ended their conversations
    for server in group.servers:
        with server.log_file.open("rb") as log:
            log.seek(logged[server.name])
            tail = log.read().decode(errors="replace")
        assert "could not send data to client" not in tail, tail
        assert "connection to client lost" not in tail, tail
        assert "unexpected EOF" not in tail, tail


@pytest.mark.pg
def test_mark_wait_returns_once_complete_or_says_what_is_missing(
        pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.ok("backup")
    waited = group.markship("mark", "--json", "--name", "waited", "--wait", "60")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["switching"] == []  # the full path switched itself
    listed = {m["name"]: m for m in json.loads(group.ok("marks", "--json"))}
    assert listed["waited"]["complete"], listed["waited"]

    bravo = group.server("bravo")
    bravo.psql("ALTER SYSTEM SET archive_command = 'false'")
    bravo.psql("SELECT pg_reload_conf()")
    stuck = group.markship("mark", "--name", "stuck", "--wait", "2")
    assert stuck.returncode != 0
    assert len(stuck.stderr.splitlines()) == 1, stuck.stderr
    assert stuck.stderr.startswith(
        "markship: error: mark stuck was made, but is not complete after 2 s (bravo: "), \
        stuck.stderr
    assert "alpha" not in stuck.stderr.split("(", 1)[1]
    bravo.psql("ALTER SYSTEM RESET archive_command")
    bravo.psql("SELECT pg_reload_conf()")
    assert _wait_complete(group, "stuck")["complete"]
