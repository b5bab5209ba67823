"""pg_wal protection (issue #14): with `[repository] archive_queue_max`, a repository that
cannot be written no longer fills PostgreSQL's disk. wal-push gives up the oldest WAL beyond
the limit, records the gap, and everything that reads the catalog knows what it cost: status
and checklist show the time that cannot be restored, marks in or behind the gap are refused,
and the agent's next full backup makes new marks restorable again.

The scenario runs on a directory and on S3: "the repository cannot be written" is a folder
PostgreSQL's OS user may not enter on the one, an S3 server that no longer answers on the
other."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from markship.pg.lsn import parse_segment_name
from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port
from markship.repository import layout
from markship.timefmt import parse_aware, show
from tests.support.checks import (
    complete_marks,
    marks_of,
    ready_files,
    refused_line,
    switch_wal,
    wait_for,
)
from tests.support.fingerprints import Ledger, load_pgbench
from tests.support.netcut import Relay
from tests.support.servers import (
    OS_USER,
    Group,
    GroupFactory,
    add_dr_site,
    new_mark,
    running_agent,
    stop_agent,
)

SEGMENT = 16 << 20
QUEUE_MAX = 64 << 20


def _pg_wal_bytes(server: ScratchServer) -> int:
    """What WAL segments take in pg_wal (the disk archiving failures fill)."""
    folder = server.data_dir / "pg_wal"
    return sum(p.stat().st_size for p in folder.iterdir() if len(p.name) == 24 and p.is_file())


def _wal_written(server: ScratchServer, since: str) -> int:
    return int(server.psql(f"SELECT pg_current_wal_lsn() - '{since}'::pg_lsn"))


def _repository_down(group: Group, request: pytest.FixtureRequest) -> Callable[[], None]:
    """Make the repository refuse alpha's WAL; returns what gives it back. On a directory
    wal/alpha/ becomes root's, mode 000 (the rest stays writable). On S3 the connection to
    the server is cut (refused, as a server that is down): the whole repository is gone
    for markship, while the server keeps what it holds (restarting moto would lose it)."""
    if group.store.kind == "fs":
        folder = group.repo / "wal" / "alpha"
        folder.chmod(0o000)
        os.chown(folder, 0, 0)

        def writable_again() -> None:
            chown_to(folder, OS_USER)
            folder.chmod(0o750)

        return writable_again
    relay: Relay = request.getfixturevalue("s3_relay")  # the one markship reaches S3 by
    relay.cut()
    return relay.restore


@pytest.mark.reliability(
    "repository unwritable with archive_queue_max (pg_wal protection)",
    fault="directory: wal/<server>/ root-owned, mode 000; S3: the connection to the S3 "
          "server refused; meanwhile pgbench and bulk inserts write 60 segments; "
          "archive_queue_max = 64 MiB",
    expected="pg_wal stays below the limit plus a few segments; the oldest WAL is dropped "
             "and recorded as a gap once the repository is back; status and checklist show "
             "✗ with its time range; marks in and after the gap are refused by restore "
             "--group and failover in one line; the agent's next full backup makes a new "
             "mark complete and a restore to it has every row; failover to it is refused "
             "while a standby stands before the gap")
@pytest.mark.parametrize("repository_kind",
                         ["fs", pytest.param("s3-relay", marks=pytest.mark.s3)])
def test_pg_wal_stays_bounded_and_the_gap_is_known(pg_group: GroupFactory,
                                                   request: pytest.FixtureRequest) -> None:
    # Small max_wal_size: checkpoints come often, so pg_wal holds little besides the backlog.
    group = pg_group(1, settings={"max_wal_size": "32MB", "min_wal_size": "32MB"})
    alpha = group.servers[0]
    text = group.config_path.read_text()
    group.config_path.write_text(text.replace(
        f'os_user = "{OS_USER}"\n', f'os_user = "{OS_USER}"\narchive_queue_max = "64MiB"\n', 1))
    group.add_config('\n[marks]\ninterval = 3600\ndelivery = "switch"\n')
    load_pgbench(alpha)
    alpha.psql("CREATE TABLE bulk (id bigint, pad text)")
    ledger = Ledger(group)
    ledger.commit(20)
    group.ok("backup")
    before = new_mark(group)
    wait_for(lambda: before in complete_marks(group), "the mark before the outage to complete",
             timeout=60, interval=0.3)
    # A mark whose WAL is not switched out: its point lies in the segment being written, the
    # first one to wait once the repository is down (on S3 no mark can be recorded then).
    in_gap = str(json.loads(group.ok("mark", "--no-switch", "--json"))["name"])

    repository_back = _repository_down(group, request)
    start_lsn = alpha.psql("SELECT pg_current_wal_lsn()")
    load = subprocess.Popen(as_user([str(alpha.bin_dir / "pgbench"), "-n", "-c", "2", "-T",
                                     "900", "-d", alpha.conninfo()], OS_USER),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    largest = 0
    samples: list[tuple[int, int]] = []  # (pg_wal MiB, segments waiting), for the message
    try:
        while _wal_written(alpha, start_lsn) < 60 * SEGMENT:
            alpha.psql("INSERT INTO bulk SELECT g, repeat('x', 400) "
                       "FROM generate_series(1, 30000) g")
            largest = max(largest, _pg_wal_bytes(alpha))
            samples.append((_pg_wal_bytes(alpha) >> 20, len(ready_files(alpha))))
        wait_for(lambda: len(ready_files(alpha)) * SEGMENT <= QUEUE_MAX + SEGMENT,
                 "the backlog to come down to archive_queue_max", timeout=120, interval=0.5)
        largest = max(largest, _pg_wal_bytes(alpha))
    finally:
        load.terminate()
        load.wait()
    # Without the limit pg_wal would hold all 60 segments written since the outage began.
    # A few segments more: PostgreSQL's archiver waits a second between its three tries of a
    # file, and its checkpoints keep max_wal_size and recycled segments.
    assert largest <= QUEUE_MAX + 12 * SEGMENT, f"pg_wal grew to {largest >> 20} MiB: {samples}"
    # Once the gap is open, what waits goes into it too: the backlog stays under the limit.
    settled = samples[len(samples) // 2:]
    assert max(waiting for _, waiting in settled) * SEGMENT <= QUEUE_MAX, f"{samples}"
    log = alpha.log_file.read_text(errors="replace")
    assert "Traceback" not in log
    assert "given up so PostgreSQL can recycle them, recorded as a WAL gap" in log
    # The repository cannot be written: the gap waits on this host, not in the catalog, and
    # status run here says so already.
    assert group.store.stored_keys("gaps/") == []
    status = group.markship("status", "--json")
    assert status.returncode == 1
    assert any(p.startswith("WAL of server alpha dropped by pg_wal protection on this host: ")
               for p in json.loads(status.stdout)["problems"]), status.stdout

    repository_back()
    switch_wal(alpha)  # the next successful push writes the gap record
    # Looked for in the store itself (on S3: an object in the bucket, read past markship).
    wait_for(lambda: group.store.stored_keys("gaps/alpha/"),
             "the gap record in the repository", timeout=90, interval=0.3)
    after = new_mark(group)  # after the gap, before any new full backup

    status = group.markship("status", "--json")
    assert status.returncode == 1
    gaps = json.loads(status.stdout)["wal_gaps"]
    assert len(gaps) == 1 and not gaps[0]["restorable_again"], gaps
    gap = gaps[0]
    first = parse_segment_name(gap["first_segment"])
    last = parse_segment_name(gap["last_segment"])
    assert last.number - first.number + 1 == gap["segments"] >= 60 - 16, gap
    assert gap["wal_from"].endswith("Z") and gap["wal_to"].endswith("Z")
    assert gap["wal_from"] <= gap["wal_to"] and gap["unrestorable_until"] is None
    record_key = layout.gap_key("alpha", gap["first_segment"])
    assert group.store.stored_keys("gaps/") == [record_key]
    record = json.loads(group.store.read(record_key))["body"]
    assert record["last_segment"] == gap["last_segment"], record
    mark_file = next(m for m in marks_of(group) if m["name"] == in_gap)["points"]["alpha"]
    assert first <= parse_segment_name(mark_file["wal_file"]) <= last
    for segment in (gap["first_segment"], mark_file["wal_file"], gap["last_segment"]):
        found = group.store.stored_keys(layout.wal_dir("alpha", segment) + segment)
        assert found == [], f"{segment} lies in the gap, yet it was stored: {found}"
    text_status = group.markship("status").stdout
    shown_from = show(parse_aware(gap["wal_from"]))  # text: to the second, JSON: exact
    assert (f"✗ WAL of server alpha dropped by pg_wal protection: {gap['first_segment']}.."
            f"{gap['last_segment']}") in text_status, text_status
    assert f"no point from {shown_from} on can be restored" in text_status
    steps = {s["title"]: s for s in json.loads(group.markship("checklist", "--json").stdout)}
    step = next(s for t, s in steps.items() if "pg_wal protection" in t)
    assert step["state"] == "✗" and shown_from in step["evidence"], step
    journal = json.loads(group.ok("journal", "--json"))
    assert any(e["objects"].get("gap") and e["outcome"].startswith("failed: WAL of server "
               "alpha dropped") for e in journal), journal[-3:]

    marks = {m["name"]: m for m in marks_of(group)}
    assert marks[before]["complete"]
    for name in (in_gap, after):
        assert not marks[name]["complete"] and "alpha" in marks[name]["unrestorable"]
        line = refused_line(group.markship(
            "restore", "--group", "--mark", name, "--port-base", "7400",
            "--target-dir", str(group.workdir / "refused-{server}")))
        assert f"mark {name} cannot be restored" in line and "pg_wal protection" in line, line
    # A DR standby made now starts from the backup before the gap: it can never pass it.
    add_dr_site(group)
    group.ok("standby", "create")
    line = refused_line(group.markship("failover", "--mark", in_gap))
    assert f"mark {in_gap} cannot be restored: its point on alpha lies in WAL of server " \
           "alpha dropped by pg_wal protection" in line, line

    # The agent sees the gap after the newest full backup and takes one at once.
    sets_before = len(json.loads(group.ok("list", "--json")))

    def backed_up_again() -> bool:
        sets = json.loads(group.ok("list", "--json"))
        return len(sets) > sets_before and bool(sets[-1]["complete"])

    with running_agent(group.config_path) as agent:
        wait_for(backed_up_again, "the agent's full backup", timeout=300, interval=1)
        agent_log = stop_agent(agent)
    assert "pg_wal protection" in agent_log, agent_log[-2000:]
    rows = ledger.commit(30)
    healed = new_mark(group)
    ledger.commit(5)  # after the mark: must not be restored
    marks = {m["name"]: m for m in marks_of(group)}
    assert marks[healed]["complete"], marks[healed]
    assert not marks[in_gap]["complete"] and not marks[after]["complete"]
    status = group.markship("status", "--json")
    gaps = json.loads(status.stdout)["wal_gaps"]
    assert gaps[0]["restorable_again"] and gaps[0]["unrestorable_until"], gaps
    assert status.returncode == 0, status.stdout
    steps = {s["title"]: s for s in json.loads(group.markship("checklist", "--json").stdout)}
    step = next(s for t, s in steps.items() if "pg_wal protection" in t)
    assert step["state"] == "✓" and "restorable again from backup set" in step["evidence"]

    # verify names the recorded gap as a known loss, not as damage.
    report = json.loads(group.markship("verify", "--json").stdout)
    assert report["ok"] and len(report["known_gaps"]) == 1, report
    assert report["known_gaps"][0].startswith(
        f"WAL of server alpha dropped by pg_wal protection: {gap['first_segment']}..")

    restored = ScratchServer("alpha", group.workdir / "healed-alpha", free_port(),
                             os_user=OS_USER)
    restored.base_dir.mkdir()
    chown_to(restored.base_dir, OS_USER)
    group.extra.append(restored)
    proc = group.markship("restore", "--group", "--mark", healed, "--port-base",
                          str(restored.port), "--target-dir",
                          str(group.workdir / "healed-{server}" / "data"))
    assert proc.returncode == 0, proc.stderr
    assert Ledger.count_on(restored) == rows
    # The gap record goes with the WAL around it: once no kept backup starts before it.
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    gap_name = f"alpha/{gap['first_segment']}"
    assert json.loads(group.ok("expire", "--dry-run", "--json", "--now", later))[
        "delete_gaps"] == []  # min_sets = 2 keeps the backup before the gap
    group.config_path.write_text(group.config_path.read_text() + "\n[retention]\nmin_sets = 1\n")
    plan = json.loads(group.ok("expire", "--dry-run", "--json", "--now", later))
    assert plan["delete_gaps"] == [gap_name]
    assert f"gaps/{gap_name}.json" in plan["delete_keys"]
    # Production is gone: failing over to the new mark is refused while the standby stands
    # before the gap (it would wait for WAL that no longer exists).
    alpha.stop()
    line = refused_line(group.markship("failover", "--mark", healed))
    assert f"the standby of alpha cannot reach mark {healed}: it stands before WAL of server " \
           "alpha dropped by pg_wal protection" in line, line
