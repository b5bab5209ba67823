"""Status page speed with a long history: 10,000 marks and 100 backup sets.

Writes a synthetic repository in a temporary directory through the repository and catalog
API (mark records over the last 24 hours, backup sets every few hours before that, the WAL
objects they name), takes a snapshot of it the way the agent does, renders the page and loads
it in headless Chromium (the system's, through Playwright) from a loopback HTTP server.

    python bench/page_bench.py [--marks 10000] [--sets 100] [--runs 7]

Prints, as medians over the runs: the snapshot's time (first and with the agent's mark
cache warm), the server-side render time, and in the browser the time from navigation start
to the first contentful paint and to the load event, in a new tab and on a reload (what
the page's refresh does), beside a one-line page's (the browser's own cost). Goal: server
render + first paint < 300 ms. The group's servers are configured on a port nobody listens
on: their cards show "down", which costs the page nothing; the bench is about the
repository's history.
"""

from __future__ import annotations

import argparse
import http.server
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from markship.config import model
from markship.monitor import page
from markship.monitor.snapshot import take
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE, Segment
from markship.repository import catalog, journal, layout, records
from markship.repository.backends import open_repository
from markship.repository.base import Repository
from markship.repository.catalog import MarkPoint, MarkRecord

CHROMIUM = "/usr/bin/chromium"
KINDS = ("fresh", "reload", "baseline fresh", "baseline reload")
MARKS_SPAN = timedelta(hours=23, minutes=30)  # inside the snapshot's 24 h once written
SERVERS = ("alpha", "bravo")
MARKS_PER_SEGMENT = 20
SET_EVERY = timedelta(hours=4)
DIGEST = "0" * 64


def _wal(repo: Repository, server: str, number: int) -> None:
    name = Segment(1, number).name(DEFAULT_SEGMENT_SIZE)
    repo.write_bytes(layout.wal_key(server, name, DIGEST), b"", overwrite=True)


def _backup(repo: Repository, set_id: str, server: str, at: datetime, segment: int) -> None:
    archive = layout.base_archive_key(server, set_id)
    repo.write_bytes(archive, b"", overwrite=True)
    lsn = segment * DEFAULT_SEGMENT_SIZE
    records.write_record(repo, layout.backup_record_key(server, set_id), catalog.BackupRecord(
        set_id=set_id, server=server, label=f"markship {set_id}", started_at=at,
        finished_at=at + timedelta(minutes=3), consistent_at=at + timedelta(minutes=3),
        timeline=1, start_lsn=lsn + 40, stop_lsn=lsn + 4096, pg_version="15.8",
        pg_version_num=150008, system_identifier=7000000000000000000 + len(server),
        raw_size=512 << 20, archive=records.ObjectRef(key=archive, size=0, sha256=DIGEST),
        markship_version="0.1.0"))


def build(root: Path, marks: int, sets: int, now: datetime) -> Path:
    """The repository and a config naming it; returns the config's path."""
    repo_dir = root / "repo"
    repo = open_repository(repo_dir)
    catalog.ensure_marker(repo, "bench", now)
    first_set = now - SET_EVERY * sets
    segment = 2
    for index in range(sets):
        at = first_set + SET_EVERY * index
        set_id = f"{at:%Y%m%dT%H%M%SZ}"
        for server in SERVERS:
            _wal(repo, server, segment)
            _backup(repo, set_id, server, at, segment)
        records.write_record(repo, layout.set_key(set_id), catalog.SetRecord(
            id=set_id, group="bench", servers=list(SERVERS), created_at=at, status="done",
            finished_at=at + timedelta(minutes=3), pid=1, host="bench"))
        segment += 1
    step = MARKS_SPAN / marks
    for index in range(marks):
        at = now - MARKS_SPAN + step * (index + 1)
        if index % MARKS_PER_SEGMENT == 0:
            segment += 1
            for server in SERVERS:
                _wal(repo, server, segment)
        name = f"m{at:%Y%m%dT%H%M%S}{at.microsecond // 1000:03d}Z"
        wal_file = Segment(1, segment).name(DEFAULT_SEGMENT_SIZE)
        points = {s: MarkPoint(lsn=segment * DEFAULT_SEGMENT_SIZE + 100 + index, timeline=1,
                               wal_file=wal_file) for s in SERVERS}
        records.write_record(repo, layout.mark_key(name), MarkRecord(
            name=name, group="bench", created_at=at, barrier_server="alpha",
            barrier_wait_ms=1.0, barrier_hold_ms=2.0, points=points))
    for index in range(30):
        journal.append(repo, "backup" if index % 3 else "drill", "ok", user="bench",
                       objects={"set": f"s{index}"})
    config = root / "markship.toml"
    text = f'[group]\nname = "bench"\n\n[repository]\npath = "{repo_dir}"\n'
    for server in SERVERS:
        text += f'\n[[server]]\nname = "{server}"\nconninfo = "host=127.0.0.1 port=1"\n'
    config.write_text(text)
    return config


def _serve(html: bytes) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a tab closed while its favicon request was answered: nothing to report

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


PAINT = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const fcp = performance.getEntriesByName('first-contentful-paint')[0];
  return {fcp: fcp ? fcp.startTime : null, load: nav.loadEventEnd,
          dom: nav.domContentLoadedEventEnd, bytes: nav.transferSize};
}"""


def browser_times(html: str, runs: int) -> dict[str, list[dict[str, float]]]:
    """Paint and load times of `html`: in a fresh tab each time ("fresh"), reloaded in one tab
    as its refresh does ("reload"), and of a one-line page both ways ("baseline ...": what
    the browser costs whatever the page)."""
    from playwright.sync_api import sync_playwright

    trivial = b"<!DOCTYPE html><html><body><h1>markship</h1></body></html>"
    found: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    with sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        for kind in KINDS:
            body = trivial if kind.startswith("baseline") else html.encode()
            server, url = _serve(body)
            context = None
            try:
                for run in range(runs + 1):  # the first load warms the browser up: not counted
                    if context is None or kind.endswith("fresh"):
                        if context is not None:
                            context.close()
                        context = chromium.new_context(viewport={"width": 1280, "height": 900})
                        tab = context.new_page()
                    tab.goto(url, wait_until="load")
                    tab.wait_for_function(
                        "performance.getEntriesByName('first-contentful-paint').length > 0")
                    if run:
                        found[kind].append(tab.evaluate(PAINT))
            finally:
                if context is not None:
                    context.close()
                server.shutdown()
        chromium.close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--marks", type=int, default=10_000)
    parser.add_argument("--sets", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="markship-page-bench-") as tmp:
        now = datetime.now(UTC)
        start = time.perf_counter()
        config_path = build(Path(tmp), args.marks, args.sets, now)
        print(f"repository: {args.marks} marks, {args.sets} backup sets of {len(SERVERS)} "
              f"servers, written in {time.perf_counter() - start:.1f} s")
        config = model.load(config_path)
        repo = open_repository(Path(tmp) / "repo")
        known: dict[str, MarkRecord] = {}
        start = time.perf_counter()
        snapshot = take(config, repo, [], known_marks=known)
        first_snapshot = time.perf_counter() - start
        warm = []
        for _ in range(3):
            start = time.perf_counter()
            snapshot = take(config, repo, [], known_marks=known)
            warm.append(time.perf_counter() - start)
        renders = []
        for _ in range(args.runs):
            start = time.perf_counter()
            html = page.render(snapshot, config)
            renders.append((time.perf_counter() - start) * 1000)
        complete = sum(1 for m in snapshot.marks if m.complete)
        print(f"snapshot: {len(snapshot.marks)} marks in the window ({complete} complete), "
              f"{len(snapshot.sets)} sets; first {first_snapshot:.2f} s, with the agent's "
              f"mark cache {statistics.median(warm):.2f} s")
        print(f"page: {len(html) / 1024:.0f} KiB, server-side render median "
              f"{statistics.median(renders):.1f} ms (min {min(renders):.1f})")
        times = browser_times(html, args.runs)
        for kind, what in (("fresh", "in a new tab"), ("reload", "reloaded (its refresh)"),
                           ("baseline fresh", "a one-line page in a new tab"),
                           ("baseline reload", "a one-line page reloaded")):
            fcp = statistics.median(t["fcp"] for t in times[kind])
            load = statistics.median(t["load"] for t in times[kind])
            print(f"browser, {what}: first contentful paint {fcp:.0f} ms, load event "
                  f"{load:.0f} ms after navigation start (median of {args.runs})")
        render = statistics.median(renders)
        for kind in ("fresh", "reload"):
            paint = statistics.median(t["fcp"] for t in times[kind])
            print(f"render + first paint, {kind}: {render + paint:.0f} ms -> "
                  f"{'OK' if render + paint < 300 else 'OVER'} (goal < 300 ms)")

if __name__ == "__main__":
    main()
