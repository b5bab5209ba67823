"""The journal: every change recorded, hash-chained, tampering named by `journal verify`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.servers import OS_USER, GroupFactory


def _append_many(config: Path, count: int) -> subprocess.Popen[bytes]:
    code = ("import sys\nfrom markship.config import model\n"
            "from markship.repository import journal\n"
            "from markship.repository.backends import open_repository\n"
            "cfg = model.load(sys.argv[1])\nrepo = open_repository(cfg.repository.path)\n"
            f"for i in range({count}):\n"
            "    journal.append(repo, 'test append', 'ok', objects={'i': str(i)})\n")
    return subprocess.Popen(["runuser", "-u", OS_USER, "--", sys.executable, "-c", code,
                             str(config)])


def test_journal_records_changes_and_names_tampering(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    portal = group.workdir / "portal"
    portal.mkdir()
    (portal / "site.conf").write_text("listen 8080\n")
    group.config_path.write_text(group.config_path.read_text().replace(
        'user=postgres', 'user=postgres password=hunter2')
        + f'\n[[fileset]]\nname = "portal"\npaths = ["{portal}"]\n')
    group.ok("backup")
    # File sets go with every backup set.
    (set_id,) = [s["id"] for s in json.loads(group.ok("list", "--json"))]
    captures = json.loads(group.ok("files", "list", "--json"))
    assert [c["reason"] for c in captures] == [f"backup set {set_id}"]
    mark = json.loads(group.ok("mark", "--json"))["name"]
    group.ok("expire")
    failed = group.markship("restore", "--server", "alpha", "--target-dir", "/nonexistent/x",
                            "--name", "no-such-mark")
    assert failed.returncode != 0

    entries = json.loads(group.ok("journal", "--json"))
    assert [e["command"] for e in entries] == ["backup", "mark", "expire", "restore"]
    assert entries[1]["objects"]["mark"] == mark
    assert entries[3]["outcome"].startswith("failed: ")
    assert all(e["user"] == "root" and e["host"] for e in entries)
    assert "hunter2" not in json.dumps(entries)

    # Two writers at once never fork the chain: every entry gets its own number.
    writers = [_append_many(group.config_path, 15) for _ in range(2)]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    entries = json.loads(group.ok("journal", "--json"))
    assert [e["seq"] for e in entries] == list(range(1, 35))
    report = json.loads(group.ok("journal", "verify", "--json"))
    assert report == {"entries": 34, "ok": True, "problem": None}
    assert "journal intact: 34 entries" in group.ok("journal", "verify")

    folder = group.repo / "journal"
    # An edited entry is named.
    third = folder / f"{3:012d}.json"
    original = third.read_text()
    third.write_text(original.replace('"expire"', '"expired"'))
    edited = group.markship("journal", "verify")
    assert edited.returncode != 0 and "entry 3 was altered" in edited.stderr
    assert edited.stderr.count("\n") == 1 and "Traceback" not in edited.stderr
    third.write_text(original)
    # A removed entry is named.
    (folder / f"{10:012d}.json").unlink()
    removed = group.markship("journal", "verify")
    assert removed.returncode != 0 and "entry 10 is missing" in removed.stderr


def test_a_journal_begun_with_content_links_continues_and_still_names_tampering(
        tmp_path: Path) -> None:
    """Entries linked by the hash of their content (the first format) stay verifiable, and
    new entries (linked by the hash of the stored bytes) chain after them."""
    from datetime import UTC, datetime

    from markship.repository import journal, layout, records
    from markship.repository.backends import open_repository

    repo = open_repository(tmp_path / "repo")
    previous = None
    for seq in (1, 2):
        entry = journal.JournalEntry(
            seq=seq, time=datetime(2026, 11, 20, 10, seq, tzinfo=UTC), user="root", host="h",
            command="backup", outcome="ok",
            prev=journal.entry_hash(previous) if previous else "")
        records.write_record(repo, layout.journal_entry_key(seq), entry)
        previous = entry
    assert previous is not None
    records.write_record(repo, layout.JOURNAL_HEAD_KEY,
                         journal.JournalHead(seq=2, hash=journal.entry_hash(previous)),
                         overwrite=True)
    assert journal.verify(repo).ok

    journal.append(repo, "mark", "ok")
    journal.append(repo, "expire", "ok")
    result = journal.verify(repo)
    assert result.ok and result.entries == 4
    assert journal.entries(repo)[2].prev.startswith("stored-sha256:")

    # Rewriting an entry with a valid checksum is caught by the link after it, in either
    # format.
    third = journal.entries(repo)[2]
    records.write_record(repo, layout.journal_entry_key(3),
                         third.model_copy(update={"outcome": "failed: hidden"}), overwrite=True)
    assert journal.verify(repo).problem == "entry 3 was altered after it was written " \
                                           "(entry 4 no longer matches it)"
    records.write_record(repo, layout.journal_entry_key(3), third, overwrite=True)
    assert journal.verify(repo).ok  # the same bytes again
    forged = journal.entries(repo)[0].model_copy(update={"command": "restore"})
    records.write_record(repo, layout.journal_entry_key(1), forged, overwrite=True)
    assert journal.verify(repo).problem == "entry 1 was altered after it was written " \
                                           "(entry 2 no longer matches it)"


def test_an_entry_written_ahead_joins_the_chain_even_after_another_writer(
        tmp_path: Path) -> None:
    """journalchain.Ahead (the lean `markship mark`): published as written when nobody
    appended meanwhile; appended after the other writer's entry when somebody did; discarded
    without a trace."""
    from markship.repository import journal, journalchain, layout
    from markship.repository.backends import open_repository

    repo = open_repository(tmp_path / "repo")
    journal.append(repo, "backup", "ok")
    ahead = journalchain.Ahead(repo, "mark", "ok", "alice", {"mark": "m1"})
    assert [e.seq for e in journal.entries(repo)] == [1]  # nothing visible before publish
    ahead.publish()
    listed = journal.entries(repo)
    assert [(e.seq, e.command, e.objects) for e in listed] == [
        (1, "backup", {}), (2, "mark", {"mark": "m1"})]
    assert journal.verify(repo).ok

    late = journalchain.Ahead(repo, "mark", "ok", "alice", {"mark": "m2"})
    journal.append(repo, "expire", "ok")  # takes number 3 first
    late.publish()
    listed = journal.entries(repo)
    assert [(e.seq, e.command) for e in listed] == [
        (1, "backup"), (2, "mark"), (3, "expire"), (4, "mark")]
    assert listed[3].objects == {"mark": "m2"}
    assert journal.verify(repo).ok

    dropped = journalchain.Ahead(repo, "mark", "ok", "alice", {"mark": "m3"})
    dropped.discard()
    assert len(journal.entries(repo)) == 4 and journal.verify(repo).ok
    folder = tmp_path / "repo" / layout.JOURNAL
    assert sorted(p.name for p in folder.iterdir()) == [
        *(f"{n:012d}.json" for n in range(1, 5)), "HEAD.json"]
