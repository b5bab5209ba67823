"""Marks delivered by stream into an S3 repository: the agent's receivers write into a local
spool and each mark uploads its WAL before it is published (markship.marks.upload); a
restore to such a mark reads that WAL from the bucket."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from markship.dr.drill import free_port_range
from markship.pg.scratch import ScratchServer, chown_to, free_port
from tests.support.checks import wait_for
from tests.support.servers import OS_USER, GroupFactory, running_agent, stop_agent

PREFIX = "markship"


@dataclass
class Bucket:
    """A bucket of a moto server on loopback, used as the group's repository."""

    endpoint: str
    name: str
    credentials: Path

    def config_lines(self) -> str:
        return (f'url = "s3://{self.name}/{PREFIX}"\nendpoint = "{self.endpoint}"\n'
                f'region = "us-east-1"\ncredentials_file = "{self.credentials}"\n')

    def client(self) -> Any:
        boto3 = importlib.import_module("boto3")  # untyped: Any
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def read(self, key: str) -> bytes:
        data: bytes = self.client().get_object(Bucket=self.name,
                                               Key=f"{PREFIX}/{key}")["Body"].read()
        return data

    def keys(self, prefix: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=self.name, Prefix=f"{PREFIX}/{prefix}")
        return sorted(item["Key"][len(PREFIX) + 1:] for item in listed.get("Contents", []))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@pytest.fixture
def bucket(workdir: Path) -> Iterator[Bucket]:
    """moto's S3 server on a free loopback port, one bucket, and the credentials file the
    repository's OS user reads (tests/support/s3.py will serve this once it lands)."""
    port = free_port()
    log = (workdir / "moto.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _answers(endpoint + "/moto-api/data.json"):
            assert server.poll() is None and time.monotonic() < deadline, \
                (workdir / "moto.log").read_text()
            time.sleep(0.1)
        credentials = workdir / "s3.env"
        credentials.write_text("AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n")
        credentials.chmod(0o600)
        chown_to(credentials, OS_USER)
        found = Bucket(endpoint, f"ms-stream-{uuid.uuid4().hex[:12]}", credentials)
        found.client().create_bucket(Bucket=found.name)
        yield found
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _on_s3(group_config: Path, bucket: Bucket, extra: str) -> None:
    text = group_config.read_text()
    start = text.index("path = ")
    end = text.index("\n", start) + 1
    group_config.write_text(text[:start] + bucket.config_lines() + text[end:] + extra)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_streamed_mark_on_s3_restores_the_group_before_its_wal_is_archived(
        pg_group: GroupFactory, bucket: Bucket, encrypted: bool) -> None:
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
    _on_s3(group.config_path, bucket, extra)
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
        wait_for(lambda: any(".partial." in key for key in bucket.keys("stream/alpha/")),
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
        assert not [k for k in bucket.keys(f"wal/{name}/") if segment in k], (name, segment)
    pieces = [k for k in bucket.keys("stream/alpha/")
              if k.startswith(f"stream/alpha/{segments['alpha']}.partial.")]
    assert pieces, bucket.keys("stream/")
    assert f"stream/bravo/{finished}" in bucket.keys("stream/bravo/")
    assert bucket.read(pieces[0]).startswith(b"age-encryption.org/v1\n") == encrypted
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

    base = free_port_range(2)
    handles = {}
    for offset, server in enumerate(group.servers):
        handle = ScratchServer(server.name, group.workdir / f"g-{server.name}", base + offset,
                               os_user=OS_USER)
        handle.base_dir.mkdir()
        chown_to(handle.base_dir, OS_USER)
        group.extra.append(handle)
        handles[server.name] = handle
    proc = group.markship("restore", "--group", "--mark", mark["name"], "--json",
                          "--port-base", str(base),
                          "--target-dir", str(group.workdir / "g-{server}" / "data"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mark"] == mark["name"]
    assert handles["alpha"].psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1}"
    assert handles["alpha"].psql("SELECT count(*) FROM filler") == "40000"
    assert handles["bravo"].psql("SELECT array_agg(id ORDER BY id) FROM notes") == "{1,2}"
