"""Marks delivered by stream into an S3 repository: the agent's receivers write into a local
spool and each mark uploads its WAL before it is published (markship.marks.upload); a
restore to such a mark reads that WAL from the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from markship.pg.scratch import chown_to
from tests.support.checks import wait_for
from tests.support.s3 import S3Store
from tests.support.servers import OS_USER, GroupFactory, running_agent, stop_agent


def _on_s3(group_config: Path, store: S3Store, extra: str) -> None:
    text = group_config.read_text()
    start = text.index("path = ")
    end = text.index("\n", start) + 1
    group_config.write_text(text[:start] + store.config_lines() + text[end:] + extra)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_streamed_mark_on_s3_restores_the_group_before_its_wal_is_archived(
        pg_group: GroupFactory, s3_store: S3Store, encrypted: bool) -> None:
    group = pg_group(2)
    alpha, bravo = group.servers
    spool = group.workdir / "spool"
    spool.mkdir()
    chown_to(spool, OS_USER)
    extra = f'\n[marks]\ninterval = 3600\nstream_spool = "{spool}"\n'
    if encrypted:
        identity = group.workdir / "repo-key.txt"
        created = group.markship("key", "create", "--identity-file", str(identity))
        assert created.returncode == 0, created.stderr
        chown_to(identity, OS_USER)
        recipient = next(line.split('"')[1] for line in created.stdout.splitlines()
                         if line.startswith("recipient"))
        extra += f'\n[encryption]\nrecipient = "{recipient}"\nidentity_file = "{identity}"\n'
    _on_s3(group.config_path, s3_store, extra)
    for server in group.servers:
        server.psql("CREATE TABLE notes (id int)")
    alpha.psql("CREATE TABLE filler (id int, pad text)")
    group.ok("backup")

    with running_agent(group.config_path) as agent:
        for server in group.servers:
            wait_for(lambda s=server: s.psql(  # type: ignore[misc]
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                "'markship-stream' AND state = 'streaming'") == "1",
                f"the receiver of {server.name} streaming", timeout=90, interval=0.3)
        # Between marks the agent uploads what alpha's receiver got once it is 4 MiB or more.
        alpha.psql("INSERT INTO filler SELECT g, repeat('x', 200) FROM "
                   "generate_series(1, 40000) g")
        wait_for(lambda: any(".partial." in key for key in s3_store.stored_keys("stream/alpha/")),
                 "an upload ahead of the next mark", timeout=90, interval=0.3)
        # bravo's archiver stops: the segment bravo finishes next stays unarchived, and
        # only its streamed copy can take a restore past it.
        bravo.psql("ALTER SYSTEM SET archive_command = 'false'")
        bravo.psql("SELECT pg_reload_conf()")
        bravo.psql("INSERT INTO notes VALUES (1)")
        finished = bravo.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        bravo.psql("SELECT pg_switch_wal()")
        alpha.psql("INSERT INTO notes VALUES (1)")
        bravo.psql("INSERT INTO notes VALUES (2)")
        mark = json.loads(group.ok("mark", "--json"))
        folders = list(spool.glob("testgroup-*/alpha"))
        assert len(folders) == 1 and folders[0].stat().st_mode & 0o777 == 0o700, folders
        for server in group.servers:
            server.psql("INSERT INTO notes VALUES (3)")
        log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert mark["delivery"] == {"alpha": "stream", "bravo": "stream"}, log
    assert "stream.upload_failed" not in log, log

    # Neither mark segment is archived, nor bravo's finished one: the bucket holds them under
    # stream/ only, and the agent's spool is gone.
    segments = {name: mark["points"][name]["wal_file"] for name in ("alpha", "bravo")}
    for name, segment in [*segments.items(), ("bravo", finished)]:
        archived = s3_store.stored_keys(f"wal/{name}/")
        assert not [k for k in archived if segment in k], (name, segment)
    pieces = [k for k in s3_store.stored_keys("stream/alpha/")
              if k.startswith(f"stream/alpha/{segments['alpha']}.partial.")]
    assert pieces, s3_store.stored_keys("stream/")
    assert f"stream/bravo/{finished}" in s3_store.stored_keys("stream/bravo/")
    assert s3_store.read(pieces[0]).startswith(b"age-encryption.org/v1\n") == encrypted
    assert not list(spool.rglob("*.partial")), "the agent removes its spool when it stops"
    states = {m["name"]: m for m in json.loads(group.ok("marks", "--json"))}
    assert states[mark["name"]]["complete"], states

    # A standby gets whole segments (bravo's finished one), never a partial one.
    fetched = group.workdir / "fetched"
    whole = group.markship("wal-fetch", "--server", "bravo", "--standby", finished,
                           str(fetched))
    assert whole.returncode == 0, whole.stderr
    assert fetched.stat().st_size == 16 << 20
    partial = group.markship("wal-fetch", "--server", "alpha", "--standby", segments["alpha"],
                             str(group.workdir / "not-fetched"))
    assert partial.returncode == 1 and not (group.workdir / "not-fetched").exists()

    handles, where = group.group_targets()
    proc = group.markship("restore", "--group", "--mark", mark["name"], "--json", *where)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mark"] == mark["name"]
    assert handles["alpha"].psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1}"
    assert handles["alpha"].psql("SELECT count(*) FROM filler") == "40000"
    assert handles["bravo"].psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1,2}"
