"""The agent's web server ([web]): /metrics, /api/status, credentials, TLS, read-only."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from markship.agent.web import Gate, parse_users
from markship.errors import ConfigError
from markship.pg.scratch import free_port
from tests.support.checks import marks_of, wait_for
from tests.support.s3 import make_certificate
from tests.support.servers import MARKSHIP, GroupFactory, add_dr_site, running_agent, stop_agent

# Every metric of the issue #15 contract, and the labels it carries.
PER_SERVER = ["markship_server_up", "markship_archive_lag_bytes", "markship_archive_lag_seconds",
              "markship_archive_lag_segments", "markship_archiver_failed_total",
              "markship_last_backup_age_seconds", "markship_last_backup_size_bytes",
              "markship_last_backup_duration_seconds", "markship_standby_replay_lag_bytes",
              "markship_standby_marks_behind"]
PER_REPOSITORY = ["markship_repository_size_bytes", "markship_repository_up"]
GROUP = ["markship_up", "markship_snapshot_age_seconds", "markship_snapshot_duration_seconds",
         "markship_newest_complete_mark_age_seconds", "markship_marks_skipped_total",
         "markship_marks_failed_total", "markship_verify_age_seconds", "markship_verify_ok",
         "markship_drill_age_seconds", "markship_drill_ok", "markship_key_backup_ok",
         "markship_checklist_missing_steps", "markship_wal_gaps_open"]
HISTOGRAMS = ["markship_mark_duration_seconds", "markship_mark_barrier_hold_seconds"]


def test_the_checked_metrics_are_the_documented_ones() -> None:
    """The lists checked below cover monitor.names.METRIC_NAMES, the names the README and the
    alert rules promise, and no more."""
    from markship.monitor.names import METRIC_NAMES

    checked = [*GROUP, *PER_SERVER, *PER_REPOSITORY, *HISTOGRAMS, "markship_copy_lag_seconds"]
    assert sorted(checked) == sorted(METRIC_NAMES)


def _password_line(user: str, password: str, iterations: int = 100_000) -> str:
    salt = secrets.token_hex(8)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations)
    return f"{user}:pbkdf2_sha256${iterations}${salt}${base64.b64encode(digest).decode()}"


class Client:
    def __init__(self, base: str, header: str | None,
                 context: ssl.SSLContext | None = None) -> None:
        self.base, self.header, self.context = base, header, context

    def get(self, path: str, method: str = "GET", header: str | None = None,
            data: bytes | None = None) -> tuple[int, str, bytes]:
        request = urllib.request.Request(self.base + path, method=method, data=data)
        auth = header if header is not None else self.header
        if auth:
            request.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as answer:
                return answer.status, answer.headers["Content-Type"], answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    def answers(self, path: str) -> int:
        """The status code of GET `path`; 0 while nothing listens (the agent starting)."""
        try:
            return self.get(path)[0]
        except urllib.error.URLError:
            return 0

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Sample name → (labels, value) of each sample."""
        code, kind, body = self.get("/metrics")
        assert code == 200 and kind.startswith("text/plain; version="), (code, kind)
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found


def _web_config(auth: str, port: int, extra: str = "") -> str:
    return f'\n[web]\nlisten = "127.0.0.1:{port}"\nauth = "{auth}"\nrefresh = 1\n{extra}'


def _token_file(path: Path) -> str:
    token = secrets.token_hex(24)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


def test_metrics_of_a_running_group_while_scraped(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    port = free_port()
    token = _token_file(group.workdir / "web-token")
    offsite = group.workdir / "offsite"
    add_dr_site(group, extra=(
        f'\n[[repository.copy]]\nname = "offsite"\npath = "{offsite}"\n'
        '\n[marks]\ninterval = 1\n'
        + _web_config("token", port,
                      f'token_file = "{group.workdir / "web-token"}"\n')))
    group.ok("backup")
    group.ok("standby", "create")
    group.ok("verify")
    client = Client(f"http://127.0.0.1:{port}", f"Bearer {token}")
    with running_agent(group.config_path) as agent:
        wait_for(lambda: client.answers("/metrics") == 200
                 and "markship_newest_complete_mark_age_seconds" in client.metrics(),
                 "a complete mark on /metrics", timeout=120, interval=0.5)
        group.ok("drill")
        wait_for(lambda: "markship_drill_ok" in client.metrics()
                 and client.metrics()["markship_drill_ok"][0][1] == 1.0,
                 "the drill on /metrics", timeout=60, interval=0.5)
        found = client.metrics()

        for name in GROUP:
            assert len(found.get(name, [])) == 1, name
        for name in PER_SERVER:
            assert {labels["server"] for labels, _ in found.get(name, [])} == \
                   {"alpha", "bravo"}, name
            assert all(value >= 0 for _, value in found[name]), (name, found[name])
        for name in PER_REPOSITORY:
            assert {labels["repository"] for labels, _ in found.get(name, [])} == \
                   {"primary", "offsite"}, name
        assert [labels for labels, _ in found["markship_copy_lag_seconds"]] == [
            {"repository": "offsite"}]
        for name in HISTOGRAMS:
            assert found[name + "_count"][0][1] >= 1, name
            assert found[name + "_sum"][0][1] > 0, name
            assert [v for labels, v in found[name + "_bucket"] if labels["le"] == "+Inf"] == \
                   [found[name + "_count"][0][1]]

        def one(name: str) -> float:
            return found[name][0][1]

        assert one("markship_up") == 1.0
        assert 0 <= one("markship_newest_complete_mark_age_seconds") < 60
        assert 0 <= one("markship_snapshot_age_seconds") < 60
        assert one("markship_snapshot_duration_seconds") > 0
        assert one("markship_verify_ok") == 1.0 and one("markship_drill_ok") == 1.0
        assert one("markship_key_backup_ok") == 1.0  # no encryption: no key to back up
        assert one("markship_wal_gaps_open") == 0.0
        assert one("markship_marks_failed_total") == 0.0
        assert all(v == 1.0 for _, v in found["markship_server_up"])
        assert all(v == 1.0 for _, v in found["markship_repository_up"])
        assert all(v == 0.0 for _, v in found["markship_archiver_failed_total"])
        assert all(v > 0 for _, v in found["markship_last_backup_size_bytes"])
        size = {labels["repository"]: v for labels, v in found["markship_repository_size_bytes"]}
        assert size["primary"] > 0

        # A scraper every 100 ms: marks go on, each one in the histogram.
        made = one("markship_mark_duration_seconds_count")
        complete_before = sum(1 for m in marks_of(group) if m["complete"])
        codes: list[int] = []
        stop = threading.Event()

        def scrape() -> None:
            while not stop.wait(0.1):
                codes.append(client.get("/metrics")[0])
                codes.append(client.get("/")[0])

        scraper = threading.Thread(target=scrape)
        scraper.start()
        try:
            wait_for(lambda: client.metrics()["markship_mark_duration_seconds_count"][0][1]
                     >= made + 5, "five more marks while scraped", timeout=120, interval=0.5)
        finally:
            stop.set()
            scraper.join()
        assert codes and set(codes) == {200}
        wait_for(lambda: sum(1 for m in marks_of(group) if m["complete"]) >= complete_before + 5,
                 "the marks made while scraped complete", timeout=120, interval=0.5)

        # Credentials, methods, paths.
        assert client.get("/metrics", header="")[0] == 401
        assert client.get("/", header="Bearer " + "0" * len(token))[0] == 401
        assert client.get("/api/status", header=f"Basic {token}")[0] == 401
        assert client.get("/nothing-here")[0] == 404
        assert client.get("/nothing-here", header="")[0] == 401
        assert client.get("/metrics", method="POST", data=b"x=1")[0] == 405
        assert client.get("/api/status", method="DELETE")[0] == 405
        code, kind, page = client.get("/")
        assert code == 200 and kind.startswith("text/html") and b"alpha" in page
        code, _kind, body = client.get("/", method="HEAD")
        assert code == 200 and body == b""
        err = stop_agent(agent)
    assert agent.returncode == 0, err
    assert token not in err
    assert "web.listen address=127.0.0.1:" in err


def test_api_status_matches_status_json(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    port = free_port()
    group.config_path.write_text(group.config_path.read_text().replace(
        "user=postgres", "user=postgres password=hunter2")  # trust: the password is unused
        + "\n[marks]\ninterval = 3600\n" + _web_config("none", port))
    group.ok("backup")
    client = Client(f"http://127.0.0.1:{port}", None)
    with running_agent(group.config_path) as agent:
        # The agent makes one mark as it starts, then none for an hour.
        def settled() -> bool:
            if client.answers("/api/status") != 200:
                return False
            code, _kind, body = client.get("/api/status")
            return code == 200 and json.loads(body)["latest_complete_mark"] is not None

        wait_for(settled, "the agent's first mark in /api/status", timeout=120, interval=0.5)
        answers = [client.get(path)[2] for path in ("/api/status", "/metrics", "/")]
        assert not any(b"hunter2" in body for body in answers)
        served = json.loads(answers[0])
        status = json.loads(group.ok("status", "--json"))
        marks = json.loads(group.ok("marks", "--json"))
        stop_agent(agent)
    assert agent.returncode == 0
    assert served["latest_complete_mark"]["name"] == status["latest_complete_mark"]["name"]
    assert served["latest_complete_mark"]["created_at"] == \
           status["latest_complete_mark"]["created_at"]

    def fixed(servers: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return [(s["server"], s["reachable"], s["last_backup_set"], s["last_backup_at"],
                 s["healthy"]) for s in servers]

    assert fixed(served["servers"]) == fixed(status["servers"])
    assert [r["name"] for r in served["repositories"]] == \
           [r["name"] for r in status["repositories"]]
    assert served["wal_gaps"] == status["wal_gaps"] == []
    assert [m["name"] for m in served["marks"]] == [m["name"] for m in marks]
    assert served["standbys"] == []
    assert {s["title"] for s in served["checklist"]} >= {
        "Back up every database, and prove a restore works"}
    assert served["taken_at"].endswith("Z")


def test_basic_auth_over_tls_and_config_errors(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    port = free_port()
    cert, key = make_certificate(group.workdir)
    users = group.workdir / "web-users"
    users.write_text("# operators\n" + _password_line("ops", "correct horse") + "\n")
    users.chmod(0o600)
    base = group.config_path.read_text() + "\n[marks]\ninterval = 3600\n"
    group.config_path.write_text(base + _web_config("basic", port,
        f'basic_auth_file = "{users}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n'))
    context = ssl.create_default_context(cafile=str(group.workdir / "s3-ca.pem"))
    good = "Basic " + base64.b64encode(b"ops:correct horse").decode()
    client = Client(f"https://127.0.0.1:{port}", good, context)
    with running_agent(group.config_path) as agent:
        wait_for(lambda: client.answers("/api/status") == 200, "the first snapshot",
                 timeout=120, interval=0.5)
        assert client.get("/metrics")[0] == 200
        assert client.get("/metrics")[0] == 200  # the checked header is remembered
        wrong = "Basic " + base64.b64encode(b"ops:wrong horse").decode()
        assert client.get("/metrics", header=wrong)[0] == 401
        nobody = "Basic " + base64.b64encode(b"eve:correct horse").decode()
        assert client.get("/metrics", header=nobody)[0] == 401
        assert client.get("/metrics", header="")[0] == 401
        plain = Client(f"http://127.0.0.1:{port}", good)
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            plain.get("/metrics")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"\x00garbage\r\n\r\n")  # no TLS, no HTTP
        assert client.get("/metrics")[0] == 200  # the agent serves on
        err = stop_agent(agent)
    assert agent.returncode == 0, err
    assert "correct horse" not in err

    def refused(config_text: str) -> str:
        group.config_path.write_text(base + config_text)
        proc = subprocess.run([str(MARKSHIP), "--config", str(group.config_path), "run"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr

    token = group.workdir / "open-token"
    token.write_text(secrets.token_hex(24))
    token.chmod(0o644)
    assert "can be read by others (mode 0644): chmod 600" in refused(
        _web_config("token", port, f'token_file = "{token}"\n'))
    assert "needs token_file" in refused(_web_config("token", port))
    assert "host:port" in refused('\n[web]\nlisten = "9187"\nauth = "none"\n')
    assert "both tls_cert and tls_key" in refused(
        _web_config("none", port, f'tls_cert = "{cert}"\n'))
    users.chmod(0o640)
    assert "can be read by others (mode 0640)" in refused(
        _web_config("basic", port, f'basic_auth_file = "{users}"\n'))


def test_basic_auth_lines() -> None:
    users = parse_users(_password_line("ops", "s3cret") + "\n\n# a comment\n", Path("/x"))
    gate = Gate("basic", users=users)
    assert gate.allows("Basic " + base64.b64encode(b"ops:s3cret").decode())
    assert not gate.allows("Basic " + base64.b64encode(b"ops:s3cre").decode())
    assert not gate.allows("Basic not-base64!")
    assert not gate.allows("Bearer s3cret")
    assert not gate.allows(None)
    with pytest.raises(ConfigError, match="fewer than 100000"):
        parse_users(_password_line("ops", "x", iterations=1000), Path("/x"))
    with pytest.raises(ConfigError, match="line 2 is not"):
        parse_users("# users\nops:md5$abc\n", Path("/x"))
    token = Gate("token", token=b"a" * 32)
    assert token.allows("Bearer " + "a" * 32) and token.allows("bearer " + "a" * 32)
    assert not token.allows("Bearer " + "a" * 31) and not token.allows("a" * 32)
