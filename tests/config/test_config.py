"""Configuration mistakes end in one line naming the key and the fix, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from markship.config import model as config_mod
from markship.errors import ConfigError
from tests.support.checks import one_error_line
from tests.support.servers import GroupFactory, run_markship

GOOD = """
[group]
name = "shop"
[repository]
path = "/var/lib/markship/repo"
[[server]]
name = "orders"
conninfo = "host=127.0.0.1 port=5432 user=markship dbname=postgres"
"""


def test_good_config_parses() -> None:
    import tomllib

    config = config_mod.parse(tomllib.loads(GOOD))
    assert config.servers[0].name == "orders"
    assert config.repository.os_user == "postgres"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace('name = "shop"\n', ""), "key group.name is missing"),
        (lambda t: t.replace('"/var/lib/markship/repo"', "42"), "key repository.path (found 42)"),
        (lambda t: t.replace('"/var/lib/markship/repo"', '"relative/repo"'), "absolute path"),
        (lambda t: t + "\n[backup]\ncompresion_level = 3\n", "backup.compresion_level"),
        (lambda t: t + '\n[[server]]\nname = "orders"\nconninfo = "x"\n', "used twice"),
        (lambda t: t.replace('name = "orders"', 'name = "Orders!"'), "[[server]].#1.name"),
        (lambda t: t.replace("[group]", "[group"), "not valid TOML"),
        (lambda t: t + '\n[[dump]]\nserver = "orders"\ndatabase = "bi"\n'
                       'schedule = "daily 25:00 UTC"\n', "[[dump]].#1.schedule"),
        (lambda t: t + '\n[[dump]]\nserver = "orders"\ndatabase = "my.db"\n',
         "set name ="),
        (lambda t: t + '\n[encryption]\nrecipient = "ssh-ed25519 AAAA"\n',
         "encryption.recipient"),
        (lambda t: t + '\n[[fileset]]\nname = "portal"\npaths = ["etc/nginx"]\n',
         "[[fileset]].#1.paths"),
    ],
)
def test_bad_config_names_the_key(workdir: Path, edit: object, expected: str) -> None:
    path = workdir / "markship.toml"
    path.write_text(edit(GOOD))  # type: ignore[operator]
    proc = run_markship(path, "list")
    assert proc.returncode == 2
    line = one_error_line(proc.stderr, alone=True)
    assert expected in line
    with pytest.raises(ConfigError):
        config_mod.load(path)


def test_missing_config_file(workdir: Path) -> None:
    proc = run_markship(None, "list", env={"MARKSHIP_CONFIG": str(workdir / "none.toml")})
    assert proc.returncode == 2
    assert "none.toml (from $MARKSHIP_CONFIG) not found" in one_error_line(proc.stderr, alone=True)


def test_unreachable_server_and_unwritable_repository(workdir: Path) -> None:
    blocked = workdir / "blocked"
    blocked.mkdir(mode=0o755)  # owned by root: the postgres user cannot write in it
    path = workdir / "markship.toml"
    path.write_text(GOOD.replace("/var/lib/markship/repo", str(blocked / "repo"))
                    .replace("port=5432", "port=1"))
    check = run_markship(path, "config", "check")
    assert check.returncode != 0
    assert "not writable" in one_error_line(check.stderr, alone=True)

    path.write_text(GOOD.replace("/var/lib/markship/repo", str(workdir / "repo"))
                    .replace("port=5432", "port=1"))
    check = run_markship(path, "config", "check")
    assert check.returncode != 0
    assert "✗ server orders: cannot connect to server orders" in check.stdout
    assert "config check failed" in one_error_line(check.stderr, alone=True)

    backup = run_markship(path, "backup")
    assert backup.returncode != 0
    line = one_error_line(backup.stderr, alone=True)
    assert "cannot connect to server orders" in line


def test_check_names_each_server_version_the_tested_one_plainly(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    out = group.ok("config", "check")
    for name in ("alpha", "bravo"):
        line = next(x for x in out.splitlines() if x.startswith(f"✓ server {name}: "))
        # PostgreSQL 15, the version the suite runs: no "untested version" note
        assert line.startswith(f"✓ server {name}: PostgreSQL 15.")
        assert line.endswith(", archive_mode on") and "untested" not in line
