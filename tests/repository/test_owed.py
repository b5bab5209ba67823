"""What a copy owes the repository: objects written to a copy while the repository was gone
are brought back by `sync` once it answers again — never an object the repository deleted on
purpose, never an older record over a newer one, and a different object under the same key
kept beside the repository's, loudly."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from markship.agent.copying import Copier
from markship.agent.log import EventLog
from markship.repository import catalog, journal, layout
from markship.repository.base import Writable
from markship.repository.copies import Copy, sync
from markship.repository.fallback import Fallback
from markship.repository.fs import FsRepository
from markship.repository.owed import STALE_SECONDS, owed, settle

WAL_A = "wal/alpha/0000000100000000/000000010000000000000003-b3." + "a" * 64 + ".zst"
WAL_B = "wal/alpha/0000000100000000/000000010000000000000004-b3." + "b" * 64 + ".zst"
WAL_C = "wal/alpha/0000000100000000/000000010000000000000005-b3." + "c" * 64 + ".zst"


class Site:
    """A repository in a directory with one copy, and a way to lose and regain it."""

    def __init__(self, tmp_path: Path) -> None:
        self.place, self.away = tmp_path / "primary", tmp_path / "primary-away"
        self.primary = FsRepository(self.place)
        catalog.ensure_marker(self.primary, "testgroup", datetime.now(UTC))
        self.copy = Copy("offsite", "async", FsRepository(tmp_path / "copy"))
        journal.append(self.primary, "backup", "ok")
        sync(self.primary, self.copy)

    def gone(self) -> Fallback:
        """The primary unmounted; what a DR-site command opens then."""
        self.place.rename(self.away)
        return Fallback(FsRepository(self.place), [self.copy.repo])

    def back(self) -> None:
        self.away.rename(self.place)


def _drill_report(sink: Writable) -> None:
    sink.write(b"# drill")


def test_what_the_dr_site_wrote_to_the_copy_is_brought_back(tmp_path: Path) -> None:
    site = Site(tmp_path)
    dr = site.gone()
    dr.write_named("wal/alpha/0000000100000000/", io.BytesIO(b"segment"),
                   lambda: WAL_B.rsplit("/", 1)[1])
    dr.write_bytes("marks/m2.json", b'{"mark": 2}')
    dr.write_bytes("failovers/F1.json", b'{"stage": "promoted"}', overwrite=True)
    journal.append(dr, "failover", "ok")
    staged = dr.stage("drills/", _drill_report)
    staged.publish(lambda: "D1.md")
    dr.write_bytes(layout.hold_key("S1", "alpha", 42), b"{}")  # a hold: never owed
    assert sorted(owed(site.copy.repo)) == sorted(
        [WAL_B, "marks/m2.json", "failovers/F1.json", "journal/000000000002.json",
         layout.JOURNAL_HEAD_KEY, "drills/D1.md"])
    site.back()

    result = sync(site.primary, site.copy)
    assert (result.returned_objects, result.conflicts) == (6, [])
    for key in (WAL_B, "marks/m2.json", "failovers/F1.json", "drills/D1.md"):
        assert site.primary.read_bytes(key) == site.copy.repo.read_bytes(key), key
    assert [e.command for e in journal.entries(site.primary)] == ["backup", "failover"]
    assert journal.verify(site.primary).ok  # the chain, and the head, continue unbroken
    assert not site.primary.exists(layout.hold_key("S1", "alpha", 42))
    assert owed(site.copy.repo) == {}  # settled: the notes are gone
    assert sync(site.primary, site.copy).returned_objects == 0


def test_what_expire_deleted_from_the_repository_is_never_brought_back(tmp_path: Path) -> None:
    site = Site(tmp_path)
    for key in (WAL_A, WAL_B, "marks/m1.json", "marks/m2.json"):
        site.primary.write_bytes(key, key.encode())
    sync(site.primary, site.copy)
    for key in (WAL_A, "marks/m1.json"):  # expire, on the repository
        site.primary.delete(key)
    dr = site.gone()
    dr.write_bytes(WAL_C, b"newer")
    site.back()

    result = sync(site.primary, site.copy)
    assert result.returned_objects == 1 and site.primary.exists(WAL_C)
    for key in (WAL_A, "marks/m1.json"):
        assert not site.primary.exists(key), key
        assert not site.copy.repo.exists(key), key  # and mirrored in the copy, as before


def test_an_object_deleted_on_the_copy_meanwhile_is_owed_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path)
    dr = site.gone()
    dr.write_bytes("drills/D1.json", b"{}")
    dr.delete("drills/D1.json")
    site.back()
    # A young note may belong to a write still in flight: kept, nothing brought back.
    assert settle(site.primary, site.copy.repo, "offsite").returned_objects == 0
    assert list(owed(site.copy.repo)) == ["drills/D1.json"]
    later = time.time() + STALE_SECONDS + 1
    assert settle(site.primary, site.copy.repo, "offsite", now=later).returned_objects == 0
    assert owed(site.copy.repo) == {}
    assert not site.primary.exists("drills/D1.json")


def test_a_different_object_in_the_repository_is_kept_and_so_is_the_copys(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    dr = site.gone()
    dr.write_bytes("drills/D1.json", b'{"from": "the copy"}')
    site.back()
    site.primary.write_bytes("drills/D1.json", b'{"from": "production"}')

    result = sync(site.primary, site.copy)
    assert len(result.conflicts) == 1 and "drills/D1.json" in result.conflicts[0]
    assert site.primary.read_bytes("drills/D1.json") == b'{"from": "production"}'
    kept = layout.conflict_key("offsite", "drills/D1.json")
    assert site.primary.read_bytes(kept) == b'{"from": "the copy"}'
    assert site.copy.repo.read_bytes("drills/D1.json") == b'{"from": "production"}'
    assert journal.entries(site.primary)[-1].outcome.startswith("conflict: copy offsite:")
    assert owed(site.copy.repo) == {}
    assert sync(site.primary, site.copy).conflicts == []  # reported once


def test_a_record_rewritten_in_place_the_newer_wins(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.primary.write_bytes("failovers/F1.json", b'{"stage": "started"}')
    site.primary.write_bytes("failovers/F2.json", b'{"stage": "started"}')
    sync(site.primary, site.copy)
    dr = site.gone()
    dr.write_bytes("failovers/F1.json", b'{"stage": "promoted"}', overwrite=True)
    dr.write_bytes("failovers/F2.json", b'{"stage": "old"}', overwrite=True)
    site.back()
    # F2 was rewritten in the repository after the copy's version: the repository's is newer.
    site.primary.write_bytes("failovers/F2.json", b'{"stage": "done"}', overwrite=True)
    newer = time.time() + 5
    os.utime(site.place / "failovers" / "F2.json", (newer, newer))

    result = sync(site.primary, site.copy)
    assert result.conflicts == []
    assert site.primary.read_bytes("failovers/F1.json") == b'{"stage": "promoted"}'
    assert site.primary.read_bytes("failovers/F2.json") == b'{"stage": "done"}'
    assert site.copy.repo.read_bytes("failovers/F2.json") == b'{"stage": "done"}'


def test_journal_entries_of_a_copy_that_went_its_own_way_are_chained_after(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    journal.append(site.primary, "repository sync", "ok")  # entry 2: the copy never got it
    dr = site.gone()
    journal.append(dr, "restore", "ok")  # entry 2 in the copy
    journal.append(dr, "drill", "ok")  # entry 3 in the copy
    site.back()

    result = sync(site.primary, site.copy)
    assert result.conflicts == [] and result.returned_objects >= 2
    found = journal.entries(site.primary)
    assert [e.command for e in found] == ["backup", "repository sync", "restore", "drill"]
    assert [(e.objects["from_copy"], e.objects["copy_seq"]) for e in found[2:]] == \
        [("offsite", "2"), ("offsite", "3")]
    assert journal.verify(site.primary).ok  # one unbroken chain, the head at its end
    assert journal.verify(site.copy.repo).ok and \
        [e.command for e in journal.entries(site.copy.repo)] == [e.command for e in found]


def test_the_agents_copy_round_brings_it_back_and_says_so(tmp_path: Path) -> None:
    site = Site(tmp_path)
    dr = site.gone()
    dr.write_bytes("failovers/F1.json", b'{"stage": "done"}', overwrite=True)
    site.back()
    out = io.StringIO()
    Copier(site.primary, [site.copy], EventLog(as_json=True, stream=out)).round()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e.get("returned")) for e in events][:1] == [("copy.returned", 1)]
    assert site.primary.read_bytes("failovers/F1.json") == b'{"stage": "done"}'


def test_a_journal_entry_chained_anew_before_a_crash_is_not_added_twice(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    journal.append(site.primary, "repository sync", "ok")
    dr = site.gone()
    journal.append(dr, "restore", "ok")
    site.back()
    # A settling that chained the entry anew, then died before deleting its note.
    entry = journal.entries(site.copy.repo)[-1]
    journal.rechain(site.primary, entry, {"from_copy": "offsite", "copy_seq": "2"})

    sync(site.primary, site.copy)
    assert [e.command for e in journal.entries(site.primary)] == \
        ["backup", "repository sync", "restore"]
    assert owed(site.copy.repo) == {}


def test_a_damaged_owed_journal_entry_is_kept_and_reported_never_blocking(
        tmp_path: Path) -> None:
    site = Site(tmp_path)
    dr = site.gone()
    journal.append(dr, "restore", "ok")
    dr.write_bytes("drills/D1.json", b"{}")
    entry = tmp_path / "copy" / "journal" / "000000000002.json"
    entry.write_bytes(entry.read_bytes().replace(b"restore", b"rest0re"))
    site.back()

    result = sync(site.primary, site.copy)
    assert len(result.conflicts) == 1 and "journal/000000000002.json" in result.conflicts[0]
    assert site.primary.exists(layout.conflict_key("offsite", "journal/000000000002.json"))
    assert site.primary.exists("drills/D1.json")  # the rest came back all the same
    assert owed(site.copy.repo) == {}
