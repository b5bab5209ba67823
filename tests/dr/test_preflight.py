"""`markship preflight`: every check ✓ for the printed least-privilege role (which then really
backs up and marks), ✗ with the fix for what would break archiving, backups or marks."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from markship.client import SETUP_SQL
from markship.pg.commands import archive_command_problem
from markship.pg.replication import RECEIVER_NAME
from markship.pg.scratch import ScratchServer, as_user, chown_to, free_port
from tests.support.checks import wait_for
from tests.support.servers import OS_USER, PG_BIN, Group, GroupFactory, run_markship, write_config


def _use_role(group: Group, role: str) -> None:
    """Point every conninfo of the group's config at `role` (the archiver reads the same file)."""
    text = group.config_path.read_text()
    group.config_path.write_text(text.replace("user=postgres", f"user={role}"))


@contextmanager
def _receiver(group: Group, server: ScratchServer) -> Iterator[None]:
    """A WAL receiver like the agent's, connected as the markship role, until the block ends."""
    folder = group.workdir / f"received-{server.name}"
    folder.mkdir()
    chown_to(folder, OS_USER)
    conninfo = server.conninfo().replace("user=postgres", "user=markship")
    proc = subprocess.Popen(as_user([str(PG_BIN / "pg_receivewal"), "--dbname",
                                     f"{conninfo} application_name={RECEIVER_NAME}",
                                     "--directory", str(folder), "--synchronous"], OS_USER),
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: server.psql("SELECT count(*) FROM pg_stat_replication WHERE state = "
                                     f"'streaming' AND application_name = '{RECEIVER_NAME}'")
                 == "1", "pg_receivewal streaming", timeout=30, interval=0.1)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _create_role(group: Group) -> str:
    sql = group.ok("preflight", "--print-role-sql")
    for server in group.servers:
        server.psql(sql)
    return sql


def test_printed_role_passes_every_check_and_does_the_work(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    alpha = group.servers[0]
    alpha.psql(SETUP_SQL)  # the applications use two-phase commit (decision table on alpha)

    as_superuser = group.markship("preflight")
    assert as_superuser.returncode == 0, as_superuser.stdout + as_superuser.stderr
    assert "! alpha: role postgres is a superuser: " in as_superuser.stdout
    assert "--print-role-sql" in as_superuser.stdout

    sql = _create_role(group)
    assert "CREATE ROLE markship LOGIN REPLICATION" in sql and "pg_hba.conf" in sql
    assert alpha.psql("SELECT rolsuper FROM pg_roles WHERE rolname = 'markship'") == "f"
    _use_role(group, "markship")

    proc = group.markship("preflight")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith("✓ ") for line in lines), proc.stdout
    for name in ("alpha", "bravo"):
        for expected in (f"✓ {name}: connected as markship to PostgreSQL 15",
                         f"✓ {name}: role markship is not a superuser",
                         f"✓ {name}: role markship opens replication connections",
                         f"✓ {name}: role markship may run pg_create_restore_point(text)",
                         f"✓ {name}: role markship may run pg_switch_wal()",
                         f"✓ {name}: pg_stat_archiver readable",
                         f"✓ {name}: role markship sees WAL receiver progress",
                         f"✓ {name}: wal_level = replica",
                         f"✓ {name}: archive_mode = on",
                         f"✓ {name}: archive_command calls markship wal-push --server {name}",
                         f"✓ {name}: max_wal_senders = 5",
                         f"✓ {name}: max_prepared_transactions = 10 (two-phase commit in use)",
                         f"✓ {name}: postgresql.conf, pg_hba.conf, pg_ident.conf readable "
                         "through SQL"):
            assert expected in proc.stdout, f"{expected!r} missing from:\n{proc.stdout}"
    assert "✓ alpha: role markship reads markship.decisions" in proc.stdout
    assert f"✓ repository: {group.repo}" in proc.stdout
    assert f"✓ config: {group.config_path} is readable by postgres" in proc.stdout
    only_bravo = group.ok("preflight", "--server", "bravo")
    assert "✓ bravo: archive_mode = on" in only_bravo and "alpha:" not in only_bravo

    # The grants are sufficient, not just the checks: the role backs up, marks, reports and
    # reads the 2PC decisions.
    assert "complete" in group.ok("backup")
    assert group.ok("mark").startswith("✓ mark ")  # delivered by WAL switch: no receiver
    assert "alpha" in group.ok("status")
    with _receiver(group, alpha):
        mark = json.loads(group.ok("mark", "--json"))
    assert mark["delivery"] == {"alpha": "stream", "bravo": "switch"}
    participants = [f"--server={s.name}={s.conninfo().replace('user=postgres', 'user=markship')}"
                    for s in group.servers]
    resolved = run_markship(None, "resolve", *participants, "--decisions", "alpha", "--dry-run")
    assert resolved.returncode == 0, resolved.stderr
    assert "0 prepared transaction(s) to settle" in resolved.stdout


def test_archive_mode_off_and_missing_privileges_fail_with_the_fix(
        pg_group: GroupFactory) -> None:
    group = pg_group(1, settings={"archive_mode": "off"})

    proc = group.markship("preflight")
    assert proc.returncode != 0
    assert "✗ alpha: archive_mode is off: set archive_mode = on and archive_command = '" in \
        proc.stdout
    assert "then restart the server" in proc.stdout
    assert proc.stderr.startswith("markship: error: preflight failed: alpha: archive_mode is off")
    assert "Traceback" not in proc.stderr

    _create_role(group)
    group.servers[0].psql("ALTER ROLE markship NOREPLICATION; "
                          "REVOKE EXECUTE ON FUNCTION pg_create_restore_point(text) FROM markship")
    _use_role(group, "markship")
    proc = group.markship("preflight")
    assert proc.returncode != 0
    assert ("✗ alpha: role markship lacks REPLICATION (pg_basebackup and the WAL receiver need "
            "it): ALTER ROLE markship REPLICATION") in proc.stdout
    assert ("✗ alpha: role markship may not run pg_create_restore_point(text) (group marks): "
            "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO markship") in proc.stdout
    assert "✗ alpha: archive_mode is off" in proc.stdout
    assert "✓ alpha: role markship may run pg_switch_wal()" in proc.stdout

    report = json.loads(group.markship("preflight", "--json").stdout)
    assert report["ok"] is False
    failed = {c["name"] for c in report["checks"] if c["status"] == "fail"}
    assert failed == {"replication", "restore_point", "archive_mode"}, report


def test_repository_key_file_and_unreachable_server(workdir: Path) -> None:
    repo = workdir / "repo"
    repo.mkdir(mode=0o755)  # owned by root: the archiver (postgres) cannot write
    key = workdir / "key.txt"
    key.write_text("AGE-SECRET-KEY-1...\n")
    key.chmod(0o644)
    config = workdir / "markship.toml"
    down = ScratchServer("alpha", workdir / "alpha", free_port())
    write_config(config, repo, [down], extra=(
        f'\n[encryption]\nrecipient = "age1example"\nidentity_file = "{key}"\n'
        f'catalog_key_file = "{workdir}/catalog.txt"\n'
        '\n[[dump]]\nserver = "alpha"\ndatabase = "postgres"\n'))
    config.write_text(config.read_text().replace("user=postgres", "user=postgres password=x"))
    config.chmod(0o644)

    proc = run_markship(config, "preflight")
    assert proc.returncode != 0
    assert f"✗ repository: {repo} is not writable by postgres (Permission denied)" in proc.stdout
    assert f"✗ key: identity file {key} has mode 0644: others may read the key: chmod 600 {key}" \
        in proc.stdout
    assert f"✗ config: {config} holds passwords and is readable by everyone (mode 0644): " \
        f"chmod o-rwx {config}" in proc.stdout
    assert "✗ alpha: cannot connect to server alpha" in proc.stdout
    assert f"✗ key: catalog key file {workdir}/catalog.txt cannot be read by postgres (No such " \
        "file or directory): put it where postgres can read it (mode 0600, owner postgres), " \
        "or create it with markship key catalog" in proc.stdout

    key.chmod(0o600)  # still root's: the repository's OS user cannot load it
    proc = run_markship(config, "preflight")
    assert f"✗ key: identity file {key} is mode 0600 but not readable by postgres" in proc.stdout
    assert f"chown postgres {key}" in proc.stdout

    entry = pwd.getpwnam(OS_USER)
    os.chown(key, entry.pw_uid, entry.pw_gid)
    os.chown(repo, entry.pw_uid, entry.pw_gid)
    config.chmod(0o640)
    os.chown(config, 0, entry.pw_gid)
    proc = run_markship(config, "preflight")
    assert f"✓ repository: {repo} is writable by postgres" in proc.stdout
    assert f"✓ key: identity file {key} is mode 0600, readable by postgres only" in proc.stdout
    assert f"✓ config: {config} is readable by postgres" in proc.stdout
    assert f"✓ config: {config} holds passwords and is not world-readable" in proc.stdout

    # A config with [[dump]] tables: the role SQL grants reading every table.
    assert "\nGRANT pg_read_all_data TO markship;\n" in \
        run_markship(config, "preflight", "--print-role-sql").stdout


def test_role_sql_needs_no_config(workdir: Path) -> None:
    proc = run_markship(None, "preflight", "--print-role-sql",
                        env={"MARKSHIP_CONFIG": str(workdir / "absent.toml")})
    assert proc.returncode == 0, proc.stderr
    assert "GRANT EXECUTE ON FUNCTION pg_switch_wal() TO markship;" in proc.stdout
    assert "-- with [[dump]] tables in the config: GRANT pg_read_all_data" in proc.stdout
    assert " SUPERUSER" not in proc.stdout and "ALL PRIVILEGES" not in proc.stdout


def test_archive_command_must_push_this_server_with_this_config() -> None:
    config = Path("/etc/markship/shop.toml")
    good = "/opt/markship/venv/bin/markship --config /etc/markship/shop.toml wal-push " \
           "--server orders %p"
    assert archive_command_problem(good, "orders", config) is None
    assert archive_command_problem(good, "payments", config) == \
        "archive_command pushes as --server orders, not payments"
    assert archive_command_problem("cp %p /mnt/wal/%f", "orders", config) == \
        "archive_command does not call markship wal-push"
    assert archive_command_problem("", "orders", config) == "archive_command is empty"
    assert archive_command_problem(good.replace("--server orders ", ""), "orders", config) == \
        "archive_command passes no --server"
    assert archive_command_problem(good.replace(" %p", ""), "orders", config) == \
        "archive_command does not pass %p"
    assert archive_command_problem(good, "orders", Path("/etc/markship/other.toml")) == \
        "archive_command uses another config (/etc/markship/shop.toml)"
    assert archive_command_problem("markship wal-push --server orders %p", "orders", config) == \
        "archive_command names no --config"
