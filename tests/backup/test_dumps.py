"""Logical dumps: a dump restores into a fresh database with the same rows; damaged dumps, times
before the first dump and failed pg_dumps are refused clearly; schedules parse and fall due."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from markship.backup.dumps import DumpRecord, dump_due, record_key
from markship.config import model
from markship.config.schedule import parse_schedule
from markship.errors import ConfigError, MarkshipError
from markship.pg.scratch import chown_to
from markship.repository import records
from markship.repository.fs import FsRepository
from markship.repository.records import ObjectRef
from tests.support.checks import utc, wait_for
from tests.support.servers import OS_USER, Group, GroupFactory, run_markship

NAME = "alpha-analytics"
FINGERPRINT = """
SELECT count(*) || ' rows, ' || count(DISTINCT page) || ' pages, md5 '
    || md5(string_agg(id || ':' || page || ':' || seen_at, ',' ORDER BY id))
FROM visits
"""


def _with_analytics(pg_group: GroupFactory) -> Group:
    """One server with a small `analytics` database, and a [[dump]] of it in the config."""
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql("CREATE DATABASE analytics")
    alpha.psql(
        "CREATE TABLE visits (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
        " page text NOT NULL, seen_at timestamptz NOT NULL);"
        " CREATE INDEX visits_page ON visits (page);"
        " INSERT INTO visits (page, seen_at) SELECT 'page-' || (i % 37),"
        " '2026-01-01T00:00:00Z'::timestamptz + i * interval '1 minute'"
        " FROM generate_series(1, 3000) AS i",
        dbname="analytics")
    with group.config_path.open("a") as config_file:
        config_file.write('\n[[dump]]\nserver = "alpha"\ndatabase = "analytics"\n')
    return group


def _dumps(group: Group) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = json.loads(group.ok("dumps", "list", "--json"))
    return listed


def _complete_mark(group: Group) -> str:
    name: str = json.loads(group.ok("mark", "--json"))["name"]
    wait_for(lambda: any(m["name"] == name and m["complete"]
                         for m in json.loads(group.ok("marks", "--json"))),
             f"mark {name} complete", interval=0.2)
    return name


def test_a_dump_restores_into_a_fresh_database_with_the_same_rows(
        pg_group: GroupFactory) -> None:
    group = _with_analytics(pg_group)
    alpha = group.servers[0]
    mark = _complete_mark(group)

    out = group.ok("dumps", "run")
    assert f"✓ {NAME}:" in out and f"mark {mark}" in out

    [dump] = _dumps(group)
    assert dump["name"] == NAME and dump["mark"] == mark
    assert (dump["server"], dump["database"]) == ("alpha", "analytics")
    stored = group.repo / f"dumps/{NAME}/{dump['id']}.dump.zst"
    assert stored.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd, not pg_dump's plain bytes
    listing = run_markship(group.config_path, "dumps", "list", env={"COLUMNS": "200"})
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if NAME in line)
    assert all(part in row for part in (str(dump["id"]), "alpha/analytics", mark, "KiB"))
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row), row

    alpha.psql("CREATE DATABASE fresh")
    out = group.ok("dumps", "restore", "--dump", NAME, "--conninfo", alpha.conninfo("fresh"))
    assert f"dump {NAME} {dump['id']}" in out
    assert alpha.psql(FINGERPRINT, dbname="fresh") == alpha.psql(FINGERPRINT,
                                                                  dbname="analytics")
    assert alpha.psql(FINGERPRINT, dbname="fresh").startswith("3000 rows, 37 pages")
    # The identity sequence and the index came along (post-data restored too).
    alpha.psql("INSERT INTO visits (page, seen_at) VALUES ('new', now())", dbname="fresh")
    assert alpha.psql("SELECT max(id) FROM visits", dbname="fresh") == "3001"
    assert alpha.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'visits_page'",
                      dbname="fresh") == "1"


def test_restores_that_cannot_be_done_are_refused_in_one_line(pg_group: GroupFactory) -> None:
    group = _with_analytics(pg_group)
    alpha = group.servers[0]
    group.ok("dumps", "run", "--dump", NAME)
    alpha.psql("CREATE DATABASE fresh")
    target = alpha.conninfo("fresh")

    before = group.markship("dumps", "restore", "--dump", NAME, "--at", "2000-01-01T00:00:00Z",
                            "--conninfo", target)
    assert before.returncode != 0
    assert f"no dump of {NAME} at or before 2000-01-01T00:00:00Z" in before.stderr
    assert len(before.stderr.strip().splitlines()) == 1 and "Traceback" not in before.stderr

    no_zone = group.markship("dumps", "restore", "--dump", NAME, "--at", "2030-01-01T00:00:00",
                             "--conninfo", target)
    assert no_zone.returncode != 0 and "no time zone" in no_zone.stderr

    unknown = group.markship("dumps", "restore", "--dump", "nope", "--conninfo", target)
    assert unknown.returncode != 0 and "no dump named nope" in unknown.stderr

    missing = group.markship("dumps", "restore", "--dump", NAME, "--conninfo",
                             alpha.conninfo("absent"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert '"absent" does not exist' in missing.stderr and "create it first" in missing.stderr

    # A password typed on the command line: a warning saying where it belongs instead.
    typed = group.markship("dumps", "restore", "--dump", NAME, "--at", "2000-01-01T00:00:00Z",
                           "--conninfo", f"{target} password=typed-in")
    assert "warning: --conninfo carries a password" in typed.stderr
    assert "PGPASSWORD" in typed.stderr and "typed-in" not in typed.stderr

    # A later --at picks the dump; the database is untouched by the refusals above.
    assert alpha.psql("SELECT count(*) FROM pg_class WHERE relname = 'visits'",
                      dbname="fresh") == "0"
    group.ok("dumps", "restore", "--dump", NAME, "--at", "2100-01-01T01:00:00+01:00",
             "--conninfo", target)
    assert alpha.psql("SELECT count(*) FROM visits", dbname="fresh") == "3000"


def test_a_corrupted_dump_is_refused_and_restores_nothing(pg_group: GroupFactory) -> None:
    group = _with_analytics(pg_group)
    alpha = group.servers[0]
    group.ok("dumps", "run")
    [stored] = (group.repo / "dumps" / NAME).glob("*.dump.zst")
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    alpha.psql("CREATE DATABASE fresh")

    proc = group.markship("dumps", "restore", "--dump", NAME, "--conninfo",
                          alpha.conninfo("fresh"))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "fails its checksum; nothing was restored" in proc.stderr
    assert alpha.psql("SELECT count(*) FROM pg_class WHERE relname = 'visits'",
                      dbname="fresh") == "0"


def test_a_failed_pg_dump_leaves_no_dump_behind(pg_group: GroupFactory) -> None:
    group = _with_analytics(pg_group)
    alpha = group.servers[0]
    alpha.psql("CREATE ROLE reader LOGIN")  # may connect, may not read the table
    with group.config_path.open("a") as config_file:
        config_file.write(
            f'\n[[server]]\nname = "alpha-reader"\nconninfo = "host={alpha.host} '
            f'port={alpha.port} user=reader dbname=postgres"\n'
            '\n[[dump]]\nname = "denied"\nserver = "alpha-reader"\ndatabase = "analytics"\n')

    proc = group.markship("dumps", "run")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "pg_dump of denied failed" in proc.stderr
    assert "permission denied" in proc.stderr
    assert f"✓ {NAME}:" in proc.stdout  # the other dump still ran
    assert [d["name"] for d in _dumps(group)] == [NAME]
    assert list((group.repo / "dumps" / "denied").iterdir()) == []  # not even a temp object


def test_an_encrypted_dump_of_several_chunks_round_trips_and_refuses_damage(
        pg_group: GroupFactory) -> None:
    group = _with_analytics(pg_group)
    alpha = group.servers[0]
    identity = group.workdir / "repo-key.txt"
    created = run_markship(None, "key", "create", "--identity-file", str(identity))
    assert created.returncode == 0, created.stderr
    recipient = next(line.split('"')[1] for line in created.stdout.splitlines()
                     if line.startswith("recipient"))
    chown_to(identity, OS_USER)
    with group.config_path.open("a") as config_file:
        config_file.write(f'\n[encryption]\nrecipient = "{recipient}"\n'
                          f'identity_file = "{identity}"\n')
    # A few MiB of poorly compressible rows: the dump streams as several chunks.
    alpha.psql("CREATE TABLE readings (id bigint PRIMARY KEY, visit int REFERENCES visits,"
               " digest text NOT NULL); INSERT INTO readings SELECT i, 1 + i % 3000,"
               " md5(i::text) || md5((i * 7)::text) FROM generate_series(1, 60000) AS i",
               dbname="analytics")
    readings = ("SELECT count(*) || ' ' || md5(string_agg(id || digest, ',' ORDER BY id))"
                " FROM readings")
    group.ok("dumps", "run")
    [stored] = (group.repo / "dumps" / NAME).glob("*.dump.zst")
    assert stored.read_bytes().startswith(b"age-encryption.org/v1\n")

    alpha.psql("CREATE DATABASE fresh")
    group.ok("dumps", "restore", "--dump", NAME, "--conninfo", alpha.conninfo("fresh"))
    assert alpha.psql(readings, dbname="fresh") == alpha.psql(readings, dbname="analytics")
    assert alpha.psql(FINGERPRINT, dbname="fresh") == alpha.psql(FINGERPRINT,
                                                                  dbname="analytics")

    # pg_restore fails early (the tables exist): its error, and the database is unchanged.
    again = group.markship("dumps", "restore", "--dump", NAME, "--conninfo",
                           alpha.conninfo("fresh"))
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert 'relation "readings" already exists' in again.stderr
    assert "nothing was applied" in again.stderr
    assert alpha.psql("SELECT count(*) FROM readings", dbname="fresh") == "60000"

    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    alpha.psql("CREATE DATABASE fresh2")
    damaged = group.markship("dumps", "restore", "--dump", NAME, "--conninfo",
                             alpha.conninfo("fresh2"))
    assert damaged.returncode != 0 and "Traceback" not in damaged.stderr
    assert "fails its checksum; nothing was restored" in damaged.stderr
    assert alpha.psql("SELECT count(*) FROM pg_class WHERE relname IN ('visits', 'readings')",
                      dbname="fresh2") == "0"


def test_dump_names_that_cannot_name_objects_are_refused() -> None:
    from markship.names import check

    for bad in ("../etc", "a/b", "", "sales db"):
        with pytest.raises(MarkshipError, match="not a usable dump name"):
            check(bad, "dump name")
    assert check("reports-Analytics_2", "dump name") == "reports-Analytics_2"


# -- schedules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "why"), [
    ("", "it is empty"),
    ("monthly 03:00 UTC", "must start with hourly, daily or weekly"),
    ("daily", "time of day HH:MM is missing"),
    ("daily 03:00", "time zone is missing"),
    ("daily 3pm UTC", "'3pm' is not a time of day"),
    ("daily 24:00 UTC", "'24:00' is not a time of day"),
    ("daily 03:00 Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("daily 03:00 +01:00", "unknown time zone '+01:00'"),
    ("daily 03:00 UTC extra", "unexpected 'extra'"),
    ("weekly 03:00 UTC", "needs a day, monday … sunday (found '03:00')"),
    ("weekly funday 03:00 UTC", "needs a day"),
    ("hourly 15", "hourly :15"),
    ("hourly :75", "hourly :15"),
    ("hourly :15 Europe/Berlin", "names only the minute"),
])
def test_bad_schedules_are_rejected_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_schedule(text)
    assert why in caught.value.message
    assert repr(text) in caught.value.message
    assert "daily HH:MM ZONE" in caught.value.hint


def test_good_schedules_parse() -> None:
    daily = parse_schedule("daily 03:00 Europe/Berlin")
    assert (daily.frequency, daily.hour, daily.minute, daily.zone) == (
        "daily", 3, 0, "Europe/Berlin")
    weekly = parse_schedule("Weekly Sunday 4:30 UTC")
    assert (weekly.frequency, weekly.weekday, weekly.hour, weekly.minute) == (
        "weekly", "sunday", 4, 30)
    hourly = parse_schedule("hourly :05")
    assert (hourly.frequency, hourly.minute) == ("hourly", 5)


def _record(created_at: datetime) -> DumpRecord:
    dump_id = created_at.strftime("%Y%m%dT%H%M%SZ")
    return DumpRecord(
        name="reports-analytics", server="reports", database="analytics", id=dump_id,
        created_at=created_at, finished_at=created_at, mark=None,
        archive=ObjectRef(key=f"dumps/reports-analytics/{dump_id}.dump.zst", size=1,
                          sha256="0" * 64),
        pg_version="15", pg_version_num=150000, raw_size=1, markship_version="test")


def test_a_daily_berlin_dump_falls_due_at_three_local_time(tmp_path: Path) -> None:
    group = model.parse({
        "group": {"name": "shop"},
        "repository": {"path": str(tmp_path)},
        "server": [{"name": "reports", "conninfo": "host=127.0.0.1"}],
        "dump": [{"server": "reports", "database": "analytics",
                  "schedule": "daily 03:00 Europe/Berlin"}],
    })
    [dump] = group.dumps
    repo = FsRepository(tmp_path)
    assert dump_due(group, repo, dump, utc("2026-11-25T12:00:00"))  # no dump yet

    # 03:00 Berlin is 02:00Z in winter (CET).
    records.write_record(repo, record_key(dump.dump_name, "20261125T020005Z"),
                         _record(utc("2026-11-25T02:00:05")))
    assert not dump_due(group, repo, dump, utc("2026-11-25T12:00:00"))
    assert not dump_due(group, repo, dump, utc("2026-11-26T01:59:59"))
    assert dump_due(group, repo, dump, utc("2026-11-26T02:00:00"))

    # A manual dump in the evening does not move the next scheduled one.
    records.write_record(repo, record_key(dump.dump_name, "20261125T190000Z"),
                         _record(utc("2026-11-25T19:00:00")))
    assert not dump_due(group, repo, dump, utc("2026-11-26T01:59:59"))
    assert dump_due(group, repo, dump, utc("2026-11-26T02:00:00"))

    # In summer (CEST) the same wall-clock time is 01:00Z.
    records.write_record(repo, record_key(dump.dump_name, "20270701T010010Z"),
                         _record(utc("2027-07-01T01:00:10")))
    assert not dump_due(group, repo, dump, utc("2027-07-02T00:59:59"))
    assert dump_due(group, repo, dump, utc("2027-07-02T01:00:00"))
