"""S3 going away under markship: the connection to the S3 server is cut (open connections
reset, new ones refused) while the server lives on with what it holds, as when the network or
the storage service fails and comes back (restarting moto would lose every object, leaving
nothing to check)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from markship.pg.scratch import wait_archived
from markship.repository import layout
from tests.support.checks import wait_for
from tests.support.fingerprints import load_pgbench, pgbench_fingerprint
from tests.support.netcut import Relay
from tests.support.servers import MARKSHIP, GroupFactory

CUT_AFTER = 16 << 20  # bytes of the backup sent before the cut: well inside its upload

FILLER_SQL = """
CREATE TABLE filler AS
SELECT g AS id, (SELECT string_agg(md5(random()::text || g::text || s::text), '')
                 FROM generate_series(1, 20) s) AS noise
FROM generate_series(1, 120000) g
"""  # 77 MB of random hex: the compressed backup stays far above CUT_AFTER


@pytest.mark.reliability("S3 unreachable in the middle of a backup's upload",
                         fault="the connection to S3 reset, then refused, after 16 MiB of the "
                               "base backup went up",
                         expected="backup exits non-zero without a traceback; no set listed "
                                  "complete, no base archive stored, restore refuses; once S3 "
                                  "answers, verify passes and a new backup completes and "
                                  "restores")
@pytest.mark.parametrize("repository_kind", ["s3-relay"])
def test_backup_cut_off_from_s3_mid_upload(pg_group: GroupFactory, s3_relay: Relay) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    alpha.psql(FILLER_SQL)
    expected = alpha.psql("SELECT count(*), md5(string_agg(noise, '' ORDER BY id)) FROM filler")
    wait_archived(alpha)

    sent = s3_relay.sent_bytes
    backup = subprocess.Popen([str(MARKSHIP), "--config", str(group.config_path), "backup"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while s3_relay.sent_bytes - sent < CUT_AFTER:
            assert backup.poll() is None, f"backup ended before the cut: {backup.communicate()}"
            assert time.monotonic() < deadline, "the backup never sent 16 MiB"
            time.sleep(0.01)
        s3_relay.cut()
        _out, err = backup.communicate(timeout=600)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    assert backup.returncode != 0, "a backup whose upload was cut off must fail"
    assert err.strip() and "Traceback" not in err, err

    down = group.markship("list")
    assert down.returncode != 0 and "Traceback" not in down.stderr, down.stderr
    assert down.stderr.count("\n") == 1, down.stderr

    s3_relay.restore()
    sets = json.loads(group.ok("list", "--json"))
    assert not any(s["complete"] for s in sets), sets
    assert not [k for k in group.store.stored_keys(layout.BACKUPS)
                if k.endswith("/base.tar.zst")], "a partial base archive is visible"
    report = json.loads(group.ok("verify", "--json"))
    assert report["ok"], report
    target = group.restored("alpha")
    refused = group.markship("restore", "--server", "alpha", "--target-dir",
                             str(target.data_dir), "--latest")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr

    group.ok("backup")
    sets = json.loads(group.ok("list", "--json"))
    assert [s["complete"] for s in sets][-1:] == [True] and sum(
        s["complete"] for s in sets) == 1, sets
    restored = group.restore("alpha", "--latest")
    assert restored.psql(
        "SELECT count(*), md5(string_agg(noise, '' ORDER BY id)) FROM filler") == expected


@pytest.mark.reliability("S3 unreachable under write load",
                         fault="the connection to S3 cut while pgbench writes, until the "
                               "archiver has failed",
                         expected="status reports the repository error and the archiver's "
                                  "failures; once S3 answers, archiving resumes and a restore "
                                  "to the latest holds every committed row")
@pytest.mark.parametrize("repository_kind", ["s3-relay"])
def test_archiving_resumes_after_an_s3_outage(pg_group: GroupFactory, s3_relay: Relay) -> None:
    group = pg_group(1)
    alpha = group.servers[0]
    load_pgbench(alpha)
    group.ok("backup")

    s3_relay.cut()
    try:
        for _ in range(3):
            alpha.run("pgbench", "-n", "-t", "300", "-d", alpha.conninfo())
            alpha.psql("SELECT pg_switch_wal()")
        wait_for(lambda: int(alpha.psql("SELECT failed_count FROM pg_stat_archiver")) > 0,
                 "the archiver to fail", timeout=180, interval=0.5)
        during = group.markship("status", "--json")
    finally:
        s3_relay.restore()

    alpha.run("pgbench", "-n", "-t", "300", "-d", alpha.conninfo())
    expected = pgbench_fingerprint(alpha)
    wait_archived(alpha, timeout=300)
    after = json.loads(group.ok("status", "--json"))["servers"]
    assert after[0]["repository_error"] is None and after[0]["archiver_failed_count"] > 0
    restored = group.restore("alpha", "--latest")
    assert pgbench_fingerprint(restored) == expected

    # What status said during the outage: its report, with the repository's error and the
    # archiver's failures, and exit 1 (checked last: the data above matters most).
    assert during.returncode == 1 and "Traceback" not in during.stderr, during.stderr
    assert during.stdout, f"no report during the outage, only: {during.stderr}"
    (entry,) = json.loads(during.stdout)["servers"]
    assert entry["repository_error"], entry
    assert entry["archiver_failed_count"] > 0 and entry["last_failed_wal"], entry
