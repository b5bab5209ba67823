"""Names: one pattern (markship.names) for every name that becomes a repository key or a
restore point. A hostile name given on the command line, sent to the agent's socket or found
in a repository record is refused with one line; the agent keeps running."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from markship import names
from markship.agent import control
from markship.cli.context import Context, journaled
from markship.config import model
from markship.errors import ConfigError
from markship.repository import journal
from markship.repository.fs import FsRepository
from tests.support.checks import forge_record, wait_for
from tests.support.servers import (
    OS_USER,
    Group,
    GroupFactory,
    markship_ok,
    run_markship,
    running_agent,
    write_offline_config,
)

HOSTILE = ["../x", "", "n" * 200, "line\nbreak", "märk", "a/b", ".", "..", "-x", "a b",
           "x'; DROP TABLE t; --"]


# -- the pattern ----------------------------------------------------------------------------------


@given(st.text(max_size=140))
def test_no_accepted_name_can_leave_its_folder_or_pose_as_an_option(text: str) -> None:
    if not names.is_name(text):
        with pytest.raises(names.BadName):
            names.check(text)
        return
    assert "/" not in text and "\\" not in text
    assert set(text) != {"."}
    assert not text.startswith(("-", ".", "_"))
    assert not any(ord(c) < 32 or ord(c) == 127 for c in text)
    assert text.isascii() and " " not in text and 1 <= len(text) <= 128


@given(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True))
def test_every_config_name_is_a_repository_name(text: str) -> None:
    assert names.is_name(text)


@given(st.from_regex(names.PATTERN, fullmatch=True))
def test_every_name_of_the_pattern_is_accepted(text: str) -> None:
    assert names.check(text) == text


@pytest.mark.reliability("config: dump name with a trailing newline",
                         fault="[[dump]] database = \"sales\\n\" (default name SERVER-DATABASE)",
                         expected="ConfigError naming the dump; never a key with a newline")
def test_config_refuses_names_that_cannot_name_objects() -> None:
    base = {"group": {"name": "shop"}, "repository": {"path": "/srv/repo"},
            "server": [{"name": "alpha", "conninfo": "host=x"}]}
    with pytest.raises(ConfigError, match="cannot name repository objects"):
        model.parse({**base, "dump": [{"server": "alpha", "database": "sales\n"}]})
    for bad in ("../x", "a/b", "alpha\n", "-x"):
        with pytest.raises(ConfigError):
            model.parse({**base, "server": [{"name": bad, "conninfo": "host=x"}]})
        with pytest.raises(ConfigError):
            model.parse({**base, "fileset": [{"name": bad, "paths": ["/etc/x"]}]})


# -- the journal records every failure ------------------------------------------------------------


@pytest.mark.reliability("journal: a journaled command fails unexpectedly",
                         fault="a command raises an exception that is not a MarkshipError",
                         expected="a journal entry 'failed: unexpected …' is still written")
def test_unexpected_failures_are_journaled(tmp_path: Path) -> None:
    path = tmp_path / "markship.toml"
    path.write_text(f'[group]\nname = "g"\n[repository]\npath = "{tmp_path / "repo"}"\n'
                    'os_user = "root"\n[[server]]\nname = "a"\nconninfo = "host=x"\n')

    @journaled("files restore")
    def broken(ctx: Context) -> None:
        raise KeyError("a defect, not a user error")

    with pytest.raises(KeyError):
        broken(Context(str(path)))
    entries = journal.entries(FsRepository(tmp_path / "repo"))
    assert [(e.command, e.outcome.split(":")[0]) for e in entries] == [("files restore",
                                                                         "failed")]
    assert "unexpected KeyError" in entries[0].outcome


# -- the command line -----------------------------------------------------------------------------


def _one_line_refusal(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 2, (what, proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("markship: error:")]
    assert len(errors) == 1 and "is not a usable" in errors[0], proc.stderr
    assert "letters, digits" in errors[0], proc.stderr
    assert not proc.stdout


def _fileset_setup(workdir: Path) -> tuple[Path, Path]:
    tree = workdir / "host" / "etc" / "portal"
    tree.mkdir(parents=True)
    (tree / "portal.conf").write_text("listen 8080\n")
    cfg = workdir / "markship.toml"
    write_offline_config(cfg, workdir / "repo", "alpha", extra=(
        f'\n[[fileset]]\nname = "portal"\npaths = ["{tree}"]\n'))
    return cfg, tree


@pytest.mark.reliability("hostile names on the command line",
                         fault="mark --name ../x, restore --name ../../x, --set ../sets, "
                               "files restore --set ../sets, files/dumps list, verify ../x",
                         expected="one line naming the allowed pattern, exit 2, no traceback, "
                                  "a journal entry for each journaled command")
def test_hostile_names_on_the_command_line_are_refused(workdir: Path) -> None:
    cfg, _tree = _fileset_setup(workdir)
    proc = run_markship(cfg, "files", "capture")
    assert proc.returncode == 0, proc.stderr
    target = workdir / "restored"
    no_agent = {control.NO_AGENT_ENV: "1"}
    journaled_cases = [
        ("mark", "--name", "../x"),
        ("mark", "--name", "line\nbreak"),
        ("restore", "--server", "alpha", "--target-dir", str(target), "--name", "../../x"),
        ("restore", "--server", "alpha", "--target-dir", str(target), "--set", "../sets"),
        ("restore", "--group", "--mark", "../x", "--port-base", "7000",
         "--target-dir", str(workdir / "g-{server}")),
        ("files", "restore", "--set", "../sets", "--target-dir", str(target)),
        ("files", "restore", "--set", "portal", "--mark", "../m", "--target-dir", str(target)),
        ("files", "restore", "--set", "portal", "--id", "../../x", "--target-dir", str(target)),
        ("dumps", "restore", "--dump", "../d", "--conninfo", "host=x"),
    ]
    for args in journaled_cases:
        _one_line_refusal(run_markship(cfg, *args, env=no_agent), " ".join(args))
    for args in [("files", "list", "--set", "../x"), ("dumps", "list", "--dump", "a/b"),
                 ("verify", "../x")]:
        _one_line_refusal(run_markship(cfg, *args), " ".join(args))
    assert not target.exists()

    entries = json.loads(markship_ok(cfg, "journal", "--json"))
    failed = [(e["command"], e["outcome"]) for e in entries if e["outcome"] != "ok"]
    expected = ["mark", "mark", "restore", "restore", "restore", "files restore",
                "files restore", "files restore", "dumps restore", "verify"]
    assert [c for c, _ in failed] == expected, failed
    assert all("is not a usable" in outcome and "\n" not in outcome
               for _, outcome in failed), failed


@pytest.mark.reliability("file set record with an archive key outside the repository",
                         fault="a planted capture record (checksum recomputed) whose archive "
                               "key is ../../../etc/shadow",
                         expected="named as damaged and skipped; restoring it by id is refused "
                                  "in one line; nothing outside the target is touched")
def test_planted_fileset_record_cannot_reach_outside_the_repository(workdir: Path) -> None:
    cfg, tree = _fileset_setup(workdir)
    assert run_markship(cfg, "files", "capture").returncode == 0
    folder = workdir / "repo" / "filesets" / "portal"
    good = next(folder.glob("*.json"))
    body = json.loads(good.read_text())["body"]
    planted_id = "29991231T000000.000Z"
    planted = folder / f"{planted_id}.json"
    planted.write_text(good.read_text())
    forge_record(planted, {**body, "id": planted_id,
                           "archive": {**body["archive"], "key": "../../../etc/shadow"}},
                 "FilesetRecord")
    os.chown(planted, *_owner(good))
    shadow = os.stat("/etc/shadow")

    listed = run_markship(cfg, "files", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [body["id"]]
    _warned_once(listed.stderr, f"filesets/portal/{planted_id}.json")

    by_id = workdir / "by-id"
    proc = run_markship(cfg, "files", "restore", "--set", "portal", "--id", planted_id,
                        "--target-dir", str(by_id))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("markship: error:")]
    assert len(errors) == 1 and f"no capture {planted_id}" in errors[0], proc.stderr
    _warned_once(proc.stderr, f"filesets/portal/{planted_id}.json")
    assert not by_id.exists() or not any(by_id.iterdir())

    newest = workdir / "newest"
    proc = run_markship(cfg, "files", "restore", "--set", "portal", "--target-dir", str(newest))
    assert proc.returncode == 0, proc.stderr
    assert f"capture {body['id']}" in proc.stdout
    _warned_once(proc.stderr, f"filesets/portal/{planted_id}.json")
    restored = sorted(p.relative_to(newest) for p in newest.rglob("*") if p.is_file())
    assert restored == [(tree / "portal.conf").relative_to("/")]
    after = os.stat("/etc/shadow")
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        shadow.st_mtime_ns, shadow.st_size, shadow.st_ino)

    verify = run_markship(cfg, "verify")
    assert verify.returncode != 0 and "Traceback" not in verify.stderr
    assert f"✗ damaged record: record filesets/portal/{planted_id}.json" in verify.stdout
    assert "archive.key" in verify.stdout


def _owner(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, info.st_gid


def _warned_once(stderr: str, key: str) -> None:
    warnings = [line for line in stderr.splitlines() if key in line]
    assert len(warnings) == 1, stderr
    assert warnings[0].startswith("markship: warning:") and "markship verify" in warnings[0]


# -- the agent ------------------------------------------------------------------------------------


def _children(pid: int, program: str) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return {int(line.split()[0]) for line in out.splitlines() if line.split()[1:] == [program]}


def _raw_request(group: Group, line: bytes) -> bytes:
    """One line straight onto the agent's socket (root may talk to it), its answer line."""
    import pwd

    uid = pwd.getpwnam(OS_USER).pw_uid
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(60)
        conn.connect(control.socket_path(str(group.config_path), uid))
        conn.sendall(line + b"\n")
        return control.read_line(conn)
    finally:
        conn.close()


@pytest.mark.reliability("agent: hostile mark names over its socket",
                         fault="markship mark --name ../x (and empty, 200 chars, newline, "
                               "unicode, a/b, ., -x), a NUL in the JSON, a non-string name, "
                               "10^5 nested brackets",
                         expected="each refused in one line (exit 2) and journaled; the agent "
                                  "and its pg_receivewal children keep running; a good mark "
                                  "follows")
def test_agent_survives_hostile_mark_requests(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    group.add_config("\n[marks]\ninterval = 3600\n")
    with running_agent(group.config_path) as agent:
        wait_for(lambda: json.loads(group.ok("marks", "--json")), "the agent's first mark",
                 timeout=90, interval=0.3)
        wait_for(lambda: len(_children(agent.pid, "pg_receivewal")) == 2, "two receivers",
                 timeout=90, interval=0.3)
        receivers = _children(agent.pid, "pg_receivewal")

        for name in HOSTILE:
            proc = group.markship("mark", "--name", name)
            assert agent.poll() is None, f"the agent died on --name {name!r}"
            assert proc.returncode == 2, (name, proc.stderr)
            assert proc.stderr.startswith("markship: error: "), (name, proc.stderr)
            assert len(proc.stderr.splitlines()) == 1 and "letters, digits" in proc.stderr
        real = os.path.realpath(group.config_path)
        for line in [json.dumps({"op": "mark", "config": real, "name": "a\u0000b"}).encode(),
                     json.dumps({"op": "mark", "config": real, "name": ["../x"]}).encode(),
                     b"[" * 100_000]:
            answer = _raw_request(group, line)
            assert agent.poll() is None, f"the agent died on {line[:60]!r}"
            assert not answer or json.loads(answer)["exit"] == 2, answer

        made = json.loads(group.ok("mark", "--json", "--name", "after-hostile-1"))
        assert made["taken_by"] == "agent" and made["name"] == "after-hostile-1"
        assert agent.poll() is None
        assert _children(agent.pid, "pg_receivewal") == receivers
    refused = [e for e in json.loads(group.ok("journal", "--json"))
               if e["command"] == "mark" and e["outcome"].startswith("failed:")]
    assert len(refused) == len(HOSTILE) + 1, refused  # + the NUL sent as JSON
    assert all(re.search(r"is not a usable mark name", e["outcome"]) for e in refused)
