"""Progress of long work when stderr is not a terminal: plain periodic lines on stderr, never
on stdout, so --json output stays one JSON document."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from markship.pg.scratch import chown_to, free_port_range
from tests.support.fingerprints import load_pgbench
from tests.support.servers import (
    OS_USER,
    PG_BIN,
    Group,
    GroupFactory,
    add_dr_site,
    run_markship,
    stop_postmaster,
)

# A line for every read after the first (the interval is a millisecond).
FAST = {"MARKSHIP_PROGRESS_INTERVAL": "0.001"}
LINE = r"{verb} {name}: [\d.]+ (B|KiB|MiB) of [\d.]+ (B|KiB|MiB), [\d.]+ (B|KiB|MiB)/s"


def _run(group: Group, *args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    proc = run_markship(group.config_path, *args, env=FAST if env is None else env)
    assert proc.returncode == 0, f"markship {' '.join(args)}: {proc.stderr}"
    return proc.stdout, proc.stderr


def _lines(stderr: str, verb: str, name: str) -> list[str]:
    pattern = re.compile(LINE.format(verb=re.escape(verb), name=re.escape(name)))
    return [line for line in stderr.splitlines() if pattern.match(line)]


def _scratch(group: Group, name: str) -> Path:
    path = group.workdir / name
    path.mkdir()
    chown_to(path, OS_USER)
    return path



def test_progress_lines_on_stderr_json_on_stdout(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    for server in group.servers:
        load_pgbench(server, scale=5)
    out, err = _run(group, "backup", "--json")
    assert json.loads(out)["set"]["status"] == "done"
    assert _lines(err, "backup", "alpha") and _lines(err, "backup", "bravo"), err

    # One server, with --json: lines on stderr, the JSON document alone on stdout.
    target = _scratch(group, "one") / "alpha"
    out, err = _run(group, "restore", "--server", "alpha", "--target-dir", str(target),
                    "--json")
    assert json.loads(out)["server"] == "alpha"
    lines = _lines(err, "restore", "alpha")
    assert lines, err
    assert any("ETA" in line for line in lines), lines
    # Without --json (still not a terminal) the same lines, and the default interval (10 s)
    # keeps a restore this short silent.
    again = _scratch(group, "two") / "alpha"
    out, err = _run(group, "restore", "--server", "alpha", "--target-dir", str(again), env={})
    assert not _lines(err, "restore", "alpha") and not _lines(out, "restore", "alpha")

    # The group to a mark: every server's lines, the report parses.
    mark = json.loads(_run(group, "mark", "--json")[0])["name"]
    restored = _scratch(group, "group")
    port_base = free_port_range(len(group.servers))
    try:
        out, err = _run(group, "restore", "--group", "--mark", mark, "--target-dir",
                        f"{restored}/{{server}}", "--port-base", str(port_base), "--json")
        report = json.loads(out)
        assert report["mark"] == mark
        assert _lines(err, "restore", "alpha") and _lines(err, "restore", "bravo"), err
        alpha = report["servers"]["alpha"]["conninfo"]
        check = subprocess.run(["runuser", "-u", OS_USER, "--", str(PG_BIN / "psql"), "-X",
                                "-A", "-t", "-d", alpha, "-c",
                                "SELECT count(*) FROM pgbench_accounts"],
                               capture_output=True, text=True, check=True)
        assert check.stdout.strip() == "500000"
    finally:
        for name in ("alpha", "bravo"):
            stop_postmaster(restored / name)

    out, err = _run(group, "verify", "--json")
    assert json.loads(out)["ok"]
    assert _lines(err, "verify", "repository"), err

    drills = _scratch(group, "drills")
    out, err = _run(group, "drill", "--work-dir", str(drills), "--json")
    assert json.loads(out)["ok"]
    assert _lines(err, "drill restore", "alpha"), err

    add_dr_site(group)
    out, err = _run(group, "standby", "create")
    assert _lines(err, "standby create", "alpha") and _lines(err, "standby create", "bravo")
    assert "standby of alpha" in out
