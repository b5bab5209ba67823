"""Where a restore puts each tablespace (`--tablespace-map OLD=NEW`), and the backup records
that carry them: pure, no server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from markship.backup.tablespaces import check_free, place, read_map
from markship.config.tablespacemap import parse_mapping
from markship.errors import CorruptObject, RestoreError
from markship.repository.catalog import BackupRecord, TablespaceRef
from markship.repository.records import ObjectRef


def _ref(key: str, size: int) -> ObjectRef:
    return ObjectRef(key=key, size=size, sha256="0" * 64)


def _backup(spaces: dict[str, tuple[str, str]]) -> BackupRecord:
    now = datetime(2026, 12, 5, tzinfo=UTC)
    return BackupRecord(
        set_id="20261205T000000Z", server="alpha", label="l", started_at=now, finished_at=now,
        consistent_at=now, timeline=1, start_lsn=0, stop_lsn=1, pg_version="15.8",
        pg_version_num=150008, system_identifier=1, raw_size=10,
        archive=_ref("backups/alpha/20261205T000000Z/base.tar.zst", 100),
        markship_version="0", tablespaces={
            oid: TablespaceRef(name=name, location=location, archive=_ref(
                f"backups/alpha/20261205T000000Z/tablespace-{oid}.tar.zst", 10))
            for oid, (name, location) in spaces.items()})


def test_a_tablespace_goes_where_its_name_or_location_is_mapped_else_back() -> None:
    backup = _backup({"16384": ("fast", "/srv/fast"), "16385": ("slow", "/srv/slow"),
                      "16390": ("cold", "/srv/cold")})
    mapping = parse_mapping(["fast=/new/fast", "/srv/slow=/new/{server}-slow"])
    placed = {p.name: p.directory for p in place(backup, mapping)}
    assert placed == {"fast": Path("/new/fast"), "slow": Path("/new/alpha-slow"),
                      "cold": Path("/srv/cold")}
    assert backup.stored_size == 130
    assert [a.key.rsplit("/", 1)[1] for a in backup.archives] == [
        "base.tar.zst", "tablespace-16384.tar.zst", "tablespace-16385.tar.zst",
        "tablespace-16390.tar.zst"]


@pytest.mark.parametrize(("items", "per_server", "says"), [
    (["fast"], False, "is not OLD=NEW"),
    (["fast=relative/dir"], False, "is not an absolute path"),
    (["fast=/a\nb"], False, "is not an absolute path"),
    (["fast=/a", "fast=/b"], False, "is given twice"),
    (["fast=/srv/fast"], True, "has no {server} placeholder"),
])
def test_a_bad_map_is_refused_in_one_line(items: list[str], per_server: bool,
                                          says: str) -> None:
    with pytest.raises(RestoreError) as caught:
        parse_mapping(items, per_server=per_server)
    assert says in caught.value.one_line() and "\n" not in caught.value.one_line()


def test_a_map_naming_no_tablespace_is_refused_unless_for_a_group() -> None:
    backup = _backup({"16384": ("fast", "/srv/fast")})
    with pytest.raises(RestoreError, match="'slow' names no tablespace"):
        place(backup, {"slow": "/new/slow"})
    assert [p.directory for p in place(backup, {"slow": "/new/slow"}, partial=True)] == [
        Path("/srv/fast")]
    with pytest.raises(RestoreError, match="would go to /new/same"):
        place(_backup({"1": ("a", "/a"), "2": ("b", "/b")}), {"a": "/new/same",
                                                              "b": "/new/same/"})


def test_a_tablespace_inside_the_data_directory_is_refused(tmp_path: Path) -> None:
    backup = _backup({"16384": ("fast", "/srv/fast")})
    with pytest.raises(RestoreError, match="overlaps the target directory"):
        check_free(place(backup, {"fast": str(tmp_path / "data" / "fast")}), tmp_path / "data")


def test_records_with_an_oid_or_location_no_tablespace_has_are_damaged() -> None:
    for oid, location in (("16384/../x", "/srv/fast"), ("0", "/srv/fast"),
                          ("16384", "relative"), ("16384", "/srv/\nfast")):
        with pytest.raises(ValidationError):
            _backup({oid: ("fast", location)})


def test_the_map_in_the_archive_must_match_the_record(tmp_path: Path) -> None:
    backup = _backup({"16384": ("fast", "/srv/fast")})
    (tmp_path / "tablespace_map").write_text("16384 /srv/fast\n")
    assert read_map(tmp_path, backup) == {"16384": "/srv/fast"}
    (tmp_path / "tablespace_map").write_text("16384 /srv/fast\n16999 /srv/other\n")
    with pytest.raises(CorruptObject, match="lists tablespace 16999 in its tablespace_map"):
        read_map(tmp_path, backup)
    (tmp_path / "tablespace_map").write_text("16384 /etc\n")
    with pytest.raises(CorruptObject, match="places tablespace 16384 at /etc"):
        read_map(tmp_path, backup)
    (tmp_path / "tablespace_map").unlink()
    with pytest.raises(CorruptObject, match="has an archive of tablespace 16384"):
        read_map(tmp_path, backup)
