"""Secrets: passwords of the servers' conninfo never reach a command line (ps), a file others may
read, JSON output, the agent's log or the journal; the journal names the real user.

The servers here require a password (scram-sha-256 for a role of their own on 127.0.0.1), and
the config carries it in key=value form (`password='…'`, `sslpassword='…'`) or in a URI
(`postgresql://role:…@host:port/db?sslpassword=…`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from markship.pg.scratch import ScratchServer, chown_to, free_port_range
from markship.repository.journal import redact
from tests.support.checks import marks_of, wait_for
from tests.support.servers import (
    OS_USER,
    PG_BIN,
    Group,
    GroupFactory,
    add_dr_site,
    run_markship,
    running_agent,
    stop_postmaster,
)

ROLE = "app_admin"
# Distinctive fragments: any of them in a ps line, a file or an output is a leak.
PASSWORD = "Secr3t horse's"
PASSPHRASE = "Phr4se-of-the-key"
LEAKS = ("Secr3t", "Phr4se")


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _conninfo(port: int, form: str) -> str:
    if form == "uri":
        return (f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/postgres"
                f"?sslpassword={quote(PASSPHRASE, safe='')}")
    return (f"host=127.0.0.1 port={port} user={ROLE} password={_libpq_quote(PASSWORD)} "
            f"sslpassword={_libpq_quote(PASSPHRASE)} dbname=postgres")


def _require_passwords(group: Group, form: str) -> None:
    """Each server: a superuser role that must give its password over TCP (normal and
    replication connections); the config uses that role, its password in `form`."""
    text = group.config_path.read_text()
    for server in group.servers:
        server.psql(f"CREATE ROLE {ROLE} LOGIN SUPERUSER REPLICATION "
                    f"PASSWORD '{PASSWORD.replace(chr(39), chr(39) * 2)}'")
        hba = server.data_dir / "pg_hba.conf"
        hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
                       f"host replication {ROLE} 127.0.0.1/32 scram-sha-256\n"
                       + hba.read_text())
        server.psql("SELECT pg_reload_conf()")
        toml_value = json.dumps(_conninfo(server.port, form))  # a TOML basic string
        text = text.replace(f'conninfo = "{server.conninfo()}"', f"conninfo = {toml_value}")
    group.config_path.write_text(text)
    without = f"host=127.0.0.1 port={group.servers[0].port} user={ROLE} dbname=postgres"
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(without, connect_timeout=5).close()  # it really needs the password


class PsWatch:
    """`ps` run as an unprivileged user every ~50 ms in a thread: what any local user sees."""

    def __init__(self) -> None:
        self.lines: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ps-watch")

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["runuser", "-u", "nobody", "--", "ps", "-eww", "-o", "args"],
                                 capture_output=True, text=True, check=False).stdout
            self.lines.update(out.splitlines())
            self.polls += 1
            self._stop.wait(0.05)

    def __enter__(self) -> PsWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def leaks(self) -> list[str]:
        return sorted(line for line in self.lines if any(leak in line for leak in LEAKS))

    def saw(self, program: str, mark: str) -> bool:
        """Whether a `program` process whose command line holds `mark` was seen."""
        return any(program in line.split(" ", 1)[0] and mark in line for line in self.lines)


def _no_leak(text: str, what: str) -> None:
    found = [leak for leak in LEAKS if leak in text or quote(leak) in text]
    assert not found, f"{what} shows a secret: {text[:2000]}"


def _private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o077 == 0, f"{path} is mode {mode:04o}: others may read its password"



def _dr_site(group: Group) -> dict[str, ScratchServer]:
    """A DR site, the client files failover writes, and a reference statement that stores
    another server's full conninfo."""
    return add_dr_site(group, extra=(
        f'\n[failover.clients]\njson = "{group.workdir}/clients/clients.json"\n'
        f'env = "{group.workdir}/clients/clients.env"\n'
        f'pg_service = "{group.workdir}/clients/pg_service.conf"\n'
        '\n[[failover.sql]]\nserver = "alpha"\n'
        "statement = \"SELECT length($c${bravo.conninfo}$c$)\"\n"))


@pytest.mark.reliability(
    "passwords of a key=value conninfo, from backup to failback",
    fault="servers that need a password (and an sslpassword) written in the config",
    expected="no password in any user's ps during backup, restore --group, drill, standby "
             "create, failover and failback; none in their JSON; client files and failback's "
             "config mode 0600")
def test_a_password_never_shows_from_backup_to_failback(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    alpha = group.servers[0]
    _require_passwords(group, "keyword")
    outputs: list[str] = []

    def ok(*args: str, config: Path | None = None) -> str:
        proc = run_markship(config or group.config_path, *args, timeout=300)
        assert proc.returncode == 0, f"markship {' '.join(args)}: {proc.stderr}"
        outputs.extend((proc.stdout, proc.stderr))
        return proc.stdout

    with PsWatch() as watch:
        ok("backup")
        mark = json.loads(ok("mark", "--json"))["name"]

        restored = group.workdir / "group-restore"
        restored.mkdir()
        chown_to(restored, OS_USER)
        port_base = free_port_range(len(group.servers))
        try:
            report = json.loads(ok("restore", "--group", "--mark", mark, "--target-dir",
                                   f"{restored}/{{server}}", "--port-base", str(port_base),
                                   "--json"))
        finally:
            for name in ("alpha", "bravo"):
                stop_postmaster(restored / name)
        shown = report["servers"]["alpha"]["conninfo"]
        assert f"user={ROLE}" in shown and f"port={port_base}" in shown  # still usable
        assert "password" not in shown

        drills = group.workdir / "drills"
        drills.mkdir()
        chown_to(drills, OS_USER)
        assert json.loads(ok("drill", "--work-dir", str(drills), "--json"))["ok"]

        standbys = _dr_site(group)
        ok("standby", "create")
        newest = json.loads(ok("mark", "--json"))["name"]
        wait_for(lambda: all(m["complete"] for m in json.loads(ok("marks", "--json"))),
                 "every mark complete", timeout=90, interval=0.3)
        for server in group.servers:
            server.kill9()
            shutil.rmtree(server.data_dir)
        report = json.loads(ok("failover", "--json"))
        assert report["mark"] == newest and report["protected"]
        new_config = Path(report["new_config"])  # the role-swapped config failover wrote
        ok("failback", "prepare", config=new_config)
        back = json.loads(ok("standby", "status", "--json", config=new_config))
        assert [s["in_recovery"] for s in back] == [True, True]

    for record in (group.repo / "failovers").iterdir():
        _no_leak(record.read_text(errors="replace"), f"failover record {record.name}")
    assert watch.polls > 20
    assert watch.saw("pg_basebackup", f"port={alpha.port}"), "the watch missed the backup"
    assert watch.leaks() == []
    for text in outputs:
        _no_leak(text, "markship's output")

    clients = sorted((group.workdir / "clients").iterdir())
    assert [p.name for p in clients] == ["clients.env", "clients.json", "pg_service.conf"]
    for path in [*clients, new_config]:
        _private(path)
        assert path.stat().st_uid == pwd.getpwnam(OS_USER).pw_uid  # markship runs as it
    # The files still carry what applications need: the password, for their owner only.
    service = (group.workdir / "clients" / "pg_service.conf").read_text()
    assert f"port={standbys['bravo'].port}" in service and "Secr3t" in service
    assert tomllib.loads(new_config.read_text())["server"][0]["conninfo"]


@pytest.mark.reliability(
    "a URI conninfo with a password, under the agent",
    fault="postgresql://role:password@host/db?sslpassword=… in the config; ps polled as "
          "another user while the agent's WAL receivers run",
    expected="marks delivered by stream; no password in ps, the agent's log, the journal "
             "(its copy of the config) or JSON; preflight calls the readable config unsafe")
def test_a_uri_conninfo_streams_marks_and_shows_no_password(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    _require_passwords(group, "uri")
    group.add_config("\n[marks]\ninterval = 1\n")
    with PsWatch() as watch, running_agent(group.config_path) as agent:
        wait_for(lambda: any(m["delivery"] == {"alpha": "stream", "bravo": "stream"}
                             for m in marks_of(group)), "a mark delivered by stream",
                 timeout=90, interval=0.3)
        time.sleep(2)  # the receivers keep running: more polls of ps
        agent.send_signal(signal.SIGTERM)
        _out, log = agent.communicate(timeout=60)
    assert agent.returncode == 0, log
    assert watch.saw("pg_receivewal", str(group.repo / "stream" / "alpha"))
    assert watch.leaks() == []
    _no_leak(log, "the agent's log")
    assert "stream.unrecognised" not in log and "stream.exited" not in log, log

    journal = group.ok("journal", "--json")
    _no_leak(journal, "the journal")
    configs = [e["config_text"] for e in json.loads(journal) if e["config_text"]]
    assert configs and "postgresql://app_admin:<redacted>@127.0.0.1:" in configs[0]
    _no_leak(group.ok("marks", "--json"), "marks --json")

    proc = group.markship("preflight", "--json")
    _no_leak(proc.stdout + proc.stderr, "preflight")
    private = [c for c in json.loads(proc.stdout)["checks"]
               if c["scope"] == "config" and c["name"] == "private"]
    assert [c["status"] for c in private] == ["fail"]  # mode 0644, passwords in URIs


@pytest.mark.reliability(
    "the WAL receiver runs but the server does not list it as markship's",
    fault="pg_receivewal started under another application_name (a wrapper rewrites it)",
    expected="one stream.unrecognised warning naming the server; marks fall back to a "
             "WAL switch")
def test_an_unrecognised_receiver_is_reported_once(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    tools = group.workdir / "bin"
    tools.mkdir()
    for program in PG_BIN.iterdir():
        (tools / program.name).symlink_to(program)
    (tools / "pg_receivewal").unlink()
    wrapper = tools / "pg_receivewal"
    wrapper.write_text('#!/bin/bash\nargs=()\nfor a in "$@"; do\n'
                       '  args+=("${a//application_name=markship-stream/'
                       'application_name=someone-else}")\ndone\n'
                       f'exec {PG_BIN}/pg_receivewal "${{args[@]}}"\n')
    wrapper.chmod(0o755)
    text = group.config_path.read_text().replace(
        f'data_dir = "{group.servers[0].data_dir}"\n',
        f'data_dir = "{group.servers[0].data_dir}"\nbin_dir = "{tools}"\n')
    group.config_path.write_text(text + "\n[marks]\ninterval = 1\n")
    with running_agent(group.config_path) as agent:
        wait_for(lambda: group.servers[0].psql(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = "
            "'someone-else'") == "1", "the receiver connected", timeout=90, interval=0.3)
        time.sleep(13)  # past the agent's 10 s of grace, and a few loops more
        agent.send_signal(signal.SIGTERM)
        _out, log = agent.communicate(timeout=60)
    assert agent.returncode == 0, log
    warnings = [line for line in log.splitlines() if "stream.unrecognised" in line]
    assert len(warnings) == 1 and "server=alpha" in warnings[0], log
    assert all(m["delivery"] == {"alpha": "switch"} for m in marks_of(group))


@pytest.mark.reliability(
    "the journal's user from LOGNAME",
    fault="LOGNAME=alice USER=alice in the environment of a markship command",
    expected="the journal names the real user (and sudo's caller as extra information)")
def test_the_journal_names_the_real_user(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    real = pwd.getpwuid(os.getuid()).pw_name
    for env in ({"LOGNAME": "alice", "USER": "alice"}, {"SUDO_USER": "alice"}):
        proc = run_markship(group.config_path, "mark", env={**env, "MARKSHIP_NO_AGENT": "1"})
        assert proc.returncode == 0, proc.stderr
    marks = [e["user"] for e in json.loads(group.ok("journal", "--json"))
             if e["command"] == "mark"]
    assert marks[0] == real or marks[0].startswith(f"{real} (sudo from ")
    assert "alice" not in marks[0]
    assert marks[1] == f"{real} (sudo from alice)"


# -- pure: conninfo for programs, redaction --------------------------------------------------------


def test_programs_get_their_secrets_in_the_environment() -> None:
    from markship.pg.conninfo import ProgramConninfo

    with ProgramConninfo("host=db.example port=5433 user=app password=s3cret dbname=x") as one:
        assert "s3cret" not in one.argv and "dbname=x" in one.argv and "port=5433" in one.argv
        assert one.env["PGPASSWORD"] == "s3cret" and "PGSERVICEFILE" not in one.env
    with ProgramConninfo("postgresql://app:s3cret@db.example:5433/x?sslpassword=k3y",
                         dbname="y", application_name="markship-stream") as two:
        assert "s3cret" not in two.argv and "k3y" not in two.argv
        assert "dbname=y" in two.argv and "application_name=markship-stream" in two.argv
        assert "service=markship" in two.argv and two.env["PGPASSWORD"] == "s3cret"
        service = Path(two.env["PGSERVICEFILE"])
        assert service.read_text() == "[markship]\nsslpassword=k3y\n"
        assert stat.S_IMODE(service.stat().st_mode) == 0o600
        assert stat.S_IMODE(service.parent.stat().st_mode) == 0o700
    assert not service.exists() and not service.parent.exists()


def test_an_unusable_sslpassword_is_refused_not_shown() -> None:
    from markship.errors import ConfigError
    from markship.pg.conninfo import ProgramConninfo

    with pytest.raises(ConfigError, match="service= and sslpassword=") as one:
        ProgramConninfo("service=prod sslpassword=k3y")
    with pytest.raises(ConfigError, match="leading or trailing blanks") as two:
        ProgramConninfo("host=h sslpassword=' k3y'")
    with pytest.raises(ConfigError, match="not valid libpq syntax") as three:
        ProgramConninfo("host=h password s3cret")
    assert all("k3y" not in e.value.one_line() and "s3cret" not in e.value.one_line()
               for e in (one, two, three))


@pytest.mark.parametrize(("line", "expected"), [
    ('conninfo = "host=h password=s3cret dbname=d"',
     'conninfo = "host=h password=<redacted> dbname=d"'),
    ("conninfo = \"host=h password='s3 cr\\\\'et' user=u\"",
     "conninfo = \"host=h password='<redacted>' user=u\""),
    ('conninfo = "host=h sslpassword=s3cret user=u"',
     'conninfo = "host=h sslpassword=<redacted> user=u"'),
    ('conninfo = "postgresql://u:s3cr%40t@h:5432/db?sslpassword=k3y&application_name=a"',
     'conninfo = "postgresql://u:<redacted>@h:5432/db?sslpassword=<redacted>'
     '&application_name=a"'),
    ("conninfo = 'postgres://u:s3cret@h/db?password=s3cret'",
     "conninfo = 'postgres://u:<redacted>@h/db?password=<redacted>'"),
    ('conninfo = "postgresql://h:5432/db?user=u"', 'conninfo = "postgresql://h:5432/db?user=u"'),
    ('password = "s3 cret"', 'password = "<redacted>"'),
    ("PGPASSWORD=s3cret psql", "PGPASSWORD=<redacted> psql"),
])
def test_redaction_covers_every_libpq_form(line: str, expected: str) -> None:
    assert redact(line) == expected


def _toml_string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's, with non-ASCII kept as it is)."""
    return json.dumps(value, ensure_ascii=False)


_SECRET = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=6, max_size=24)


@given(_SECRET, _SECRET, st.sampled_from(["keyword", "uri", "uri-query"]))
def test_a_generated_password_never_survives_redaction(password: str, passphrase: str,
                                                       form: str) -> None:
    from markship.pg.conninfo import REDACTED

    def config(secret: str, key: str) -> str:
        if form == "keyword":
            info = psycopg.conninfo.make_conninfo(host="db", user="app", password=secret,
                                                  sslpassword=key, dbname="sales")
        elif form == "uri":
            info = (f"postgresql://app:{quote(secret, safe='')}@db:5432/sales"
                    f"?sslpassword={quote(key, safe='')}&application_name=x")
        else:
            info = (f"postgresql://app@db:5432/sales?password={quote(secret, safe='')}"
                    f"&sslpassword={quote(key, safe='')}")
        return f'[[server]]\nname = "sales"\nconninfo = {_toml_string(info)}\n'

    plain = config(REDACTED, REDACTED)
    for secret in (password, passphrase):
        assume(secret.strip() and secret not in plain and quote(secret, safe="") not in plain)
        assume(_toml_string(secret)[1:-1] not in plain)
    text = config(password, passphrase)
    assert psycopg.conninfo.conninfo_to_dict(tomllib.loads(text)["server"][0]["conninfo"])
    hidden = redact(text)
    for secret in (password, passphrase):
        for form_of in (secret, quote(secret, safe=""), _toml_string(secret)[1:-1]):
            assert form_of not in hidden, (form_of, hidden)
    assert 'name = "sales"' in hidden and "db" in hidden and "app" in hidden


def test_known_secrets_are_scrubbed_from_server_messages() -> None:
    """PostgreSQL quotes a fragment of a failed statement ('syntax error at or near "…"'):
    no pattern recognises that fragment as a password, the known values do."""
    from markship.pg.conninfo import scrub, secrets_of

    known = secrets_of("host=h password='Secr3t pw' sslpassword=k3y",
                       "postgresql://u:An0ther@h/db", "not a conninfo ='")
    assert sorted(known) == ["An0ther", "Secr3t pw", "k3y"]
    message = 'syntax error at or near "Secr3t pw" (An0ther, k3y) password=other'
    assert scrub(message, known) == ('syntax error at or near "<redacted>" (<redacted>, '
                                     '<redacted>) password=<redacted>')


def test_a_malformed_conninfo_is_refused_without_quoting_it() -> None:
    """libpq's own message quotes the fragment it choked on: here, the password."""
    from markship.errors import ConfigError
    from markship.pg import sql

    with pytest.raises(ConfigError) as refused:
        sql.connect("host=127.0.0.1 port=1 password s3cret", "alpha", timeout=1)
    assert "s3cret" not in refused.value.one_line()
    assert "server alpha" in refused.value.one_line()


def test_a_server_is_shown_where_libpq_connects_without_its_secrets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What messages name as a server's place: host:port, the socket file for a socket
    directory, libpq's defaults for what the conninfo leaves out, never a password."""
    from markship.pg.conninfo import address

    monkeypatch.delenv("PGHOST", raising=False)
    monkeypatch.delenv("PGPORT", raising=False)
    assert address("host=127.0.0.1 port=5433 password=s3cret") == "127.0.0.1:5433"
    assert address("postgresql://u:s3cret@db.example:6432/app") == "db.example:6432"
    assert address("host=db hostaddr=10.0.0.5") == "10.0.0.5:5432"
    assert address("host=::1 port=5440") == "[::1]:5440"
    assert address("host=/tmp/pg port=5440") == "/tmp/pg/.s.PGSQL.5440"
    assert address("dbname=app") == "/var/run/postgresql/.s.PGSQL.5432"
    assert address("host=a,b port=5001,5002") == "a:5001, b:5002"
    assert address("host=h port=1 password s3cret") == "unreadable conninfo"
    monkeypatch.setenv("PGHOST", "10.1.1.1")
    monkeypatch.setenv("PGPORT", "7000")
    assert address("dbname=app") == "10.1.1.1:7000"
