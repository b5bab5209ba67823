"""The status page's HTML, without a browser: what the repository holds is shown as text,
never as markup, and a long mark history is drawn in a bounded number of shapes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

from markship.backup.status import ServerStatus
from markship.config import model
from markship.dr.checklist import Step
from markship.dr.standby import StandbyStatus
from markship.marks.choose import MarkState
from markship.monitor import page, timeline
from markship.monitor.snapshot import GroupStatus, Problem, Snapshot
from markship.repository.catalog import GapRecord, MarkPoint, MarkRecord
from markship.repository.journal import JournalEntry
from markship.repository.restorable import GapState

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes.update(name for name, _value in attrs)


def _config(tmp_path: Path) -> model.Config:
    path = tmp_path / "markship.toml"
    path.write_text('[group]\nname = "shop"\n\n[repository]\npath = "/nonexistent"\n\n'
                    '[[server]]\nname = "alpha"\nconninfo = "host=127.0.0.1 port=1"\n\n'
                    '[web]\nrefresh = "30s"\n')
    return model.load(path)


def _server(**changes: object) -> ServerStatus:
    fields: dict[str, object] = dict(
        server="alpha", reachable=True, error=None, last_backup_set="20261205T020000Z",
        last_backup_at=NOW - timedelta(hours=10), last_archived_wal="000000010000000000000009",
        last_archived_at=NOW - timedelta(seconds=5), repository_newest_wal=None,
        archive_lag_bytes=4096, archive_lag_seconds=0.0, archiver_failed_count=0,
        last_failed_wal=None, last_failed_at=None)
    fields.update(changes)
    return ServerStatus(**fields)  # type: ignore[arg-type]


def _mark(at: datetime, complete: bool = True) -> MarkState:
    record = MarkRecord(name=f"m{at:%Y%m%dT%H%M%S%f}", group="shop", created_at=at,
                        barrier_server="alpha", barrier_wait_ms=1, barrier_hold_ms=1,
                        points={"alpha": MarkPoint(lsn=1, timeline=1,
                                                   wal_file="000000010000000000000009")})
    return MarkState(record, complete, {}, (NOW - at).total_seconds())


def _snapshot(marks: list[MarkState], server: ServerStatus | None = None,
              journal: list[JournalEntry] | None = None, steps: list[Step] | None = None,
              problems: list[Problem] | None = None) -> Snapshot:
    newest = next((m for m in reversed(marks) if m.complete), None)
    status = GroupStatus([server or _server()], [], [], newest, None, problems or [])
    return Snapshot(NOW, 0.2, status, marks, [], [], steps or [], journal or [])


def test_repository_text_is_shown_never_run(tmp_path: Path) -> None:
    entry = JournalEntry(seq=7, time=NOW - timedelta(minutes=3), user=HOSTILE, host="db1",
                         command=HOSTILE, outcome=f"failed: {HOSTILE}",
                         objects={"set": HOSTILE}, prev="")
    step = Step("backup", "Keep a written record", "✗", HOSTILE, fix=HOSTILE)
    failing = _server(error=HOSTILE, reachable=False, archive_lag_bytes=None,
                      last_failed_wal=HOSTILE, last_failed_at=NOW - timedelta(minutes=1))
    html = page.render(_snapshot([_mark(NOW - timedelta(seconds=30))], failing, [entry],
                                 [step], [Problem("dropped", HOSTILE)]), _config(tmp_path))

    parsed = _Tags()
    parsed.feed(html)
    assert not parsed.tags & {"script", "img", "iframe", "object"}
    assert not {a for a in parsed.attributes if a.startswith("on")}
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("&lt;script&gt;") >= 6  # problems, card, checklist, journal, timeline
    assert '<meta http-equiv="refresh" content="30">' in html


def test_the_rpo_and_a_down_server(tmp_path: Path) -> None:
    config = _config(tmp_path)
    html = page.render(_snapshot([_mark(NOW - timedelta(seconds=42))]), config)
    assert 'data-rpo-seconds="42.0"' in html and 'data-level="ok"' in html
    assert 'data-server="alpha" data-state="ok"' in html
    assert 'data-archive-lag-bytes="4096"' in html

    down = page.render(_snapshot([], _server(reachable=False, error="connection refused")),
                       config)
    assert 'data-rpo-seconds=""' in down and 'data-level="critical"' in down
    assert 'data-server="alpha" data-state="critical"' in down
    assert "down: connection refused" in down


def test_ten_thousand_marks_are_drawn_in_bins(tmp_path: Path) -> None:
    step = timedelta(hours=24) / 10_000
    marks = [_mark(NOW - timedelta(hours=24) + step * (n + 1), complete=n < 9_990)
             for n in range(10_000)]
    drawing, counts = timeline.svg(_snapshot(marks))
    assert counts.marks == 10_000
    shapes = drawing.count('class="mark')
    assert 0 < shapes <= 2 * timeline.BINS
    assert 'class="mark incomplete"' in drawing  # the last ten, not complete yet

    few = marks[-5:]
    drawing, counts = timeline.svg(_snapshot(few))
    assert counts.marks == 5 and drawing.count("<line class=\"mark") == 5


def test_an_open_wal_gap_and_a_standby(tmp_path: Path) -> None:
    gap = GapRecord(server="alpha", timeline=1, first_segment="00000001000000000000000A",
                    last_segment="00000001000000000000000C", segments=3,
                    wal_from=NOW - timedelta(hours=2), wal_to=NOW - timedelta(hours=1),
                    dropped_at=NOW - timedelta(hours=1), last_dropped_at=NOW - timedelta(hours=1),
                    queue_max_bytes=1 << 30, backlog_bytes=1 << 30, host="db1",
                    reason="repository unreachable")
    standby = StandbyStatus("alpha", "10.0.0.9:5432", True, None, True, 1, "m1", 3, 16384,
                            None, ["max_connections 100 < 200"])
    base = _snapshot([_mark(NOW - timedelta(seconds=20))])
    status = replace(base.status, gaps=[GapState(gap, None)])
    html = page.render(replace(base, status=status, standbys=[standby]), _config(tmp_path))
    assert 'data-server="alpha" data-state="critical"' in html
    assert 'data-open-gap="true"' in html and "open WAL gap" in html
    assert 'data-gaps="1"' in html  # drawn on the timeline
    assert 'data-standby-lag-bytes="16384" data-standby-marks-behind="3"' in html
    assert 'data-parity-problems="1"' in html and "max_connections 100 &lt; 200" in html
    assert "no complete mark it can reach yet" in html
    # What a failover would replay, not the archive lag (0 under light load), once known.
    honest = replace(standby, lag_bytes=0, reachable_mark="m2", to_mark_bytes=5 << 20,
                     failover_seconds_estimate=0.2)
    html = page.render(replace(base, status=status, standbys=[honest]), _config(tmp_path))
    assert 'data-standby-lag-bytes="5242880"' in html and 'data-reachable-mark="m2"' in html
