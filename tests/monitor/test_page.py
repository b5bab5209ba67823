"""The status page in a real browser (Debian's headless Chromium through Playwright): it
renders, it shows the numbers `markship status --json` shows at the same moment, a server
whose archiving fails gets a red card, and it reads on a phone.

The page is served here by a loopback `http.server` from a snapshot taken in the test; the
agent's own web server is tested in tests/agent. Screenshots of every page looked at go to
`test-artifacts/status-page/` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from markship.config import model
from markship.monitor import page
from markship.monitor.snapshot import Snapshot, status_json, take
from markship.pg.scratch import free_port
from markship.repository.backends import open_repository
from tests.support import browser
from tests.support.checks import archiver, switch_wal, wait_for
from tests.support.servers import Group, GroupFactory, new_mark, running_agent, stop_agent

if TYPE_CHECKING:  # imported by the tests themselves only once a browser is known to be here
    from playwright.sync_api import Browser, Page, Response, ViewportSize

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "status-page"
PHONE: ViewportSize = {"width": 375, "height": 740}
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
RED = "rgb(198, 40, 40)"  # --critical of the page's style


@pytest.fixture
def chromium(request: pytest.FixtureRequest) -> Iterator[Browser]:
    browser.require(strict=bool(request.config.getoption("--require-pg")))
    with browser.chromium() as opened:
        yield opened


def _snapshot(group: Group) -> tuple[Snapshot, model.Config]:
    config = model.load(group.config_path)
    return take(config, open_repository(group.repo), []), config


def _cli_status(group: Group) -> dict[str, Any]:
    proc = group.markship("status", "--json")  # exit 1 when unhealthy: the JSON is still there
    return dict(json.loads(proc.stdout))


def _same_moment(group: Group) -> tuple[Snapshot, model.Config, dict[str, Any], dict[str, Any]]:
    """A snapshot with `status --json` run just before and just after it, taken again until
    the two runs agree on every per-server figure but the growing ones (no WAL written or
    archived meanwhile): what the page shows must then be those figures."""
    found: list[tuple[Snapshot, model.Config, dict[str, Any], dict[str, Any]]] = []

    def agree() -> bool:
        before = _cli_status(group)
        snapshot, config = _snapshot(group)
        after = _cli_status(group)
        found.append((snapshot, config, before, after))
        return all(_per_server(before, s) == _per_server(after, s) for s in ("alpha", "bravo"))

    wait_for(agree, "two `markship status --json` runs agreeing around a snapshot", interval=1)
    return found[-1]


def _per_server(status: dict[str, Any], name: str) -> dict[str, Any]:
    row = next(s for s in status["servers"] if s["server"] == name)
    return {k: row[k] for k in ("archive_lag_bytes", "archiver_failed_count",
                                "last_backup_set", "healthy", "reachable")}


def _lag_seconds(status: dict[str, Any], name: str) -> float | None:
    """Grows with the clock while a finished segment waits: compared between two runs."""
    row = next(s for s in status["servers"] if s["server"] == name)
    return None if row["archive_lag_seconds"] is None else float(row["archive_lag_seconds"])


def _between(low: float | None, shown: float | None, high: float | None) -> bool:
    if low is None or high is None or shown is None:
        return low is shown is high
    return low <= shown <= high


def _open(chromium: Browser, html: str, viewport: ViewportSize, shot: str) -> Page:
    """A browser page showing `html` (served over loopback HTTP), its screenshot saved."""
    context = chromium.new_context(viewport=viewport)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    requests: list[str] = []
    tab.on("request", lambda req: requests.append(req.url))
    with browser.serving(html) as url:
        response = tab.goto(url, wait_until="load")
        assert response is not None and response.ok
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / shot), full_page=True)
    assert errors == []
    assert requests == [url], f"the page loads nothing else: {requests}"
    return tab


def _card(tab: Page, server: str) -> Callable[[str], str | None]:
    card = tab.locator(f'[data-server="{server}"]')
    assert card.count() == 1
    return card.get_attribute


def _number(text: str | None) -> float | None:
    return None if text is None or text == "" else float(text)


def test_status_page_in_a_browser(pg_group: GroupFactory, chromium: Browser) -> None:
    group = pg_group(2)
    group.ok("backup")
    mark = new_mark(group)
    wait_for(lambda: (_cli_status(group)["latest_complete_mark"] or {}).get("name") == mark,
             f"mark {mark} complete")

    snapshot, config, before, after = _same_moment(group)
    html = page.render(snapshot, config)
    tab = _open(chromium, html, DESKTOP, "healthy-desktop.png")

    # The RPO now: the newest complete mark's age, between the two status runs around it.
    assert tab.title() == "markship · testgroup"
    rpo = tab.locator("#rpo")
    shown_age = float(rpo.get_attribute("data-rpo-seconds") or "nan")
    assert before["latest_complete_mark"]["name"] == mark == after["latest_complete_mark"]["name"]
    assert before["latest_complete_mark"]["age_seconds"] <= shown_age
    assert shown_age <= after["latest_complete_mark"]["age_seconds"]
    assert shown_age == status_json(snapshot.status)["latest_complete_mark"]["age_seconds"]
    assert mark in rpo.inner_text()
    assert rpo.get_attribute("data-level") == "ok"
    assert rpo.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(26, 127, 55)"

    # One card per server, its numbers those of `status --json`, and green.
    for name in ("alpha", "bravo"):
        expected = _per_server(before, name)
        attr = _card(tab, name)
        assert _number(attr("data-archive-lag-bytes")) == expected["archive_lag_bytes"]
        assert _between(_lag_seconds(before, name), _number(attr("data-archive-lag-seconds")),
                        _lag_seconds(after, name))
        assert _number(attr("data-archiver-failed-count")) == expected["archiver_failed_count"]
        assert expected["healthy"] and attr("data-state") == "ok"
        assert expected["last_backup_set"] in tab.locator(f'[data-server="{name}"]').inner_text()

    # The timeline drew the backup and the mark; the checklist and the journal are there.
    drawing = tab.locator("#timeline")
    assert drawing.get_attribute("data-marks") == str(len(snapshot.marks)) != "0"
    assert drawing.get_attribute("data-backups") == "1"
    assert tab.locator("#timeline .mark").count() >= 1
    assert tab.locator("#checklist li").count() == len(snapshot.checklist) > 0
    journal = tab.locator("#journal li")
    assert journal.count() == len(snapshot.journal) >= 2
    assert "mark" in journal.nth(0).inner_text()  # newest first
    tab.context.close()

    # On a phone: nothing wider than the screen, the cards one above the other.
    phone = _open(chromium, html, PHONE, "healthy-phone.png")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    alpha = phone.locator('[data-server="alpha"]').bounding_box()
    bravo = phone.locator('[data-server="bravo"]').bounding_box()
    assert alpha is not None and bravo is not None
    assert bravo["y"] >= alpha["y"] + alpha["height"]
    assert alpha["x"] + alpha["width"] <= PHONE["width"]
    phone.context.close()


def test_failed_archiving_turns_the_card_red(pg_group: GroupFactory, chromium: Browser) -> None:
    group = pg_group(2)
    group.ok("backup")
    bravo = group.server("bravo")
    bravo.psql("ALTER SYSTEM SET archive_command = 'false'")
    bravo.psql("SELECT pg_reload_conf()")
    failed_before = int(archiver(bravo)["failed_count"])
    # A segment finished before the archiver reloads goes out with the old command: finish
    # one more each second until the archiver reports a failure.
    wait_for(lambda: switch_wal(bravo) and int(archiver(bravo)["failed_count"]) > failed_before,
             "bravo's archiver to report a failure", interval=1)

    snapshot, config, before, _after = _same_moment(group)
    tab = _open(chromium, page.render(snapshot, config), DESKTOP, "archive-failed-desktop.png")
    red, green = _card(tab, "bravo"), _card(tab, "alpha")
    assert not _per_server(before, "bravo")["healthy"] and red("data-state") == "critical"
    assert _per_server(before, "alpha")["healthy"] and green("data-state") == "ok"
    assert _number(red("data-archiver-failed-count")) == \
        _per_server(before, "bravo")["archiver_failed_count"] > 0
    card = tab.locator('[data-server="bravo"]')
    assert card.evaluate("e => getComputedStyle(e).borderLeftColor") == RED
    assert "archiving failing" in card.inner_text()
    assert tab.locator('[data-server="alpha"]').evaluate(
        "e => getComputedStyle(e).borderLeftColor") != RED
    assert int(tab.locator("#timeline").get_attribute("data-failures") or 0) >= 1
    tab.context.close()


def test_the_agents_page_in_a_browser_needs_its_token(pg_group: GroupFactory,
                                                      chromium: Browser) -> None:
    """The page as the agent serves it ([web], token auth): refused without the token; with
    it, the page shows the RPO and servers of the agent's `/api/status` (one snapshot)."""
    from playwright.sync_api import Error as PlaywrightError

    group = pg_group(2)
    group.ok("backup")
    mark = new_mark(group)
    wait_for(lambda: (_cli_status(group)["latest_complete_mark"] or {}).get("name") == mark,
             f"mark {mark} complete")
    token = secrets.token_hex(24)
    token_file = group.workdir / "web-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    port = free_port()
    # Marks by hand only and one snapshot for the whole test: the page and /api/status agree.
    group.add_config(f'\n[marks]\ninterval = 3600\n\n[web]\nlisten = "127.0.0.1:{port}"\n'
                     f'auth = "token"\ntoken_file = "{token_file}"\nrefresh = 3600\n')
    url = f"http://127.0.0.1:{port}/"
    with running_agent(group.config_path) as agent:
        anonymous = chromium.new_context(viewport=DESKTOP)
        tab = anonymous.new_page()

        def answered() -> bool:
            try:
                response = tab.goto(url, wait_until="load")
            except PlaywrightError:  # nothing listens yet: the agent is starting
                return False
            return response is not None and response.status == 401
        wait_for(answered, "the agent's page refusing a browser without the token",
                 timeout=120, interval=0.5)
        assert mark not in tab.content()
        anonymous.close()

        context = chromium.new_context(viewport=DESKTOP, extra_http_headers={
            "Authorization": f"Bearer {token}"})
        tab = context.new_page()
        # With the token the agent answers 503 until its first snapshot of the group exists.
        answers: list[Response] = []

        def snapshot() -> bool:
            answer = tab.goto(url + "api/status")
            assert answer is not None and answer.status in (200, 503), "no answer or not 200/503"
            answers.append(answer)
            return answer.status == 200
        wait_for(snapshot, "the agent's first snapshot on /api/status", timeout=120,
                 interval=0.5)
        status = json.loads(answers[-1].text())
        response = tab.goto(url, wait_until="load")
        assert response is not None and response.status == 200
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(ARTIFACTS / "agent-page.png"), full_page=True)
        newest = status["latest_complete_mark"]
        assert newest["name"] == mark
        rpo = tab.locator("#rpo")
        assert mark in rpo.inner_text()
        assert float(rpo.get_attribute("data-rpo-seconds") or "nan") == newest["age_seconds"]
        for row in status["servers"]:
            card = tab.locator(f'[data-server="{row["server"]}"]')
            assert card.get_attribute("data-state") == "ok"
            assert _number(card.get_attribute("data-archive-lag-bytes")) == \
                row["archive_lag_bytes"]
            assert row["last_backup_set"] in card.inner_text()
        context.close()
        err = stop_agent(agent)
    assert agent.returncode == 0, err
    assert token not in err
