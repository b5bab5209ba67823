"""The status page's last 24 hours drawn as inline SVG: marks, backups, failures, WAL gaps,
failovers and drills on one time axis (the snapshot's window, in UTC).

Marks are drawn one tick each while there are few; past `MAX_MARK_TICKS` they are counted
into bins (one bar per bin), so the drawing stays a few hundred elements whatever the mark
interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from markship.monitor.snapshot import WINDOW, Snapshot
from markship.timefmt import show

WIDTH = 1000  # user units of the viewBox; the SVG scales to the page's width
PLOT_LEFT, PLOT_RIGHT = 64, WIDTH - 12  # the lanes' names go left of the plot
MAX_MARK_TICKS = 300
BINS = 144  # ten-minute bins over 24 h when marks are binned
HOURS_PER_LABEL = 3

# Lanes, top to bottom: y of the lane's top and its height.
LANES = {"marks": (18, 34), "backups": (62, 16), "events": (88, 16)}
AXIS_Y = 112
HEIGHT = 130

# Journal commands drawn as events, with their symbol class.
EVENT_COMMANDS = {"failover": "failover", "failback prepare": "failover", "drill": "drill",
                  "restore": "restore"}


@dataclass(frozen=True)
class Counts:
    """What the drawing shows, for the page's data attributes."""

    marks: int
    backups: int
    failures: int
    gaps: int
    events: int


class _Axis:
    def __init__(self, end: datetime) -> None:
        self.end = end
        self.start = end - WINDOW
        self.span = WINDOW.total_seconds()

    def x(self, moment: datetime) -> float:
        return self.x_of((moment - self.start).total_seconds())

    def x_of(self, seconds: float) -> float:
        """x of a moment given in seconds after the start."""
        offset = min(max(seconds / self.span, 0.0), 1.0)
        return round(PLOT_LEFT + offset * (PLOT_RIGHT - PLOT_LEFT), 1)

    def inside(self, moment: datetime) -> bool:
        return self.start <= moment <= self.end


def _title(text: str) -> str:
    return f"<title>{escape(text)}</title>"


def _mark_elements(snapshot: Snapshot, axis: _Axis) -> tuple[list[str], int]:
    """The marks' ticks or bins, and how many marks they show. Times are compared as epoch
    seconds: with 10,000 marks, datetime arithmetic was most of the page's render time."""
    top, height = LANES["marks"]
    start, end = axis.start.timestamp(), axis.end.timestamp()
    marks = [(when, m) for m in snapshot.marks
             if start <= (when := m.record.created_at.timestamp()) <= end]
    if len(marks) <= MAX_MARK_TICKS:
        ticks = []
        for when, m in marks:
            x = axis.x_of(when - start)
            css, note = ("mark", "") if m.complete else ("mark incomplete", " (not complete)")
            text = _title(f"mark {m.record.name} {show(m.record.created_at)}{note}")
            ticks.append(f'<line class="{css}" x1="{x}" x2="{x}" y1="{top}" '
                         f'y2="{top + height}">{text}</line>')
        return ticks, len(marks)
    complete = [0] * BINS
    incomplete = [0] * BINS
    per_bin = axis.span / BINS
    for when, m in marks:
        (complete if m.complete else incomplete)[min(int((when - start) / per_bin), BINS - 1)] += 1
    tallest = max(c + i for c, i in zip(complete, incomplete, strict=True))
    width = round((PLOT_RIGHT - PLOT_LEFT) / BINS, 2)
    bin_time = WINDOW / BINS
    shapes = []
    for index, (done, waiting) in enumerate(zip(complete, incomplete, strict=True)):
        if not done + waiting:
            continue
        x = axis.x_of(per_bin * index)
        begins = show(axis.start + bin_time * index)
        label = _title(f"{done + waiting} marks from {begins}"
                       + (f", {waiting} not complete" if waiting else ""))
        done_h = round(height * done / tallest, 1)
        waiting_h = round(height * waiting / tallest, 1)
        bottom = top + height
        if done:
            shapes.append(f'<rect class="mark" x="{x}" y="{bottom - done_h}" '
                          f'width="{width}" height="{done_h}">{label}</rect>')
        if waiting:
            shapes.append(f'<rect class="mark incomplete" x="{x}" '
                          f'y="{bottom - done_h - waiting_h}" width="{width}" '
                          f'height="{waiting_h}">{label}</rect>')
    return shapes, len(marks)


def _backup_elements(snapshot: Snapshot, axis: _Axis) -> list[str]:
    top, height = LANES["backups"]
    shapes = []
    for state in snapshot.sets:
        record = state.record
        finished = record.finished_at or axis.end
        if finished < axis.start or record.created_at > axis.end:
            continue
        x1, x2 = axis.x(record.created_at), axis.x(finished)
        css = {"complete": "backup", "running": "backup running"}.get(state.label,
                                                                     "backup failed")
        text = (f"backup set {record.id} {state.label}: {show(record.created_at)} "
                f"to {show(record.finished_at)}")
        shapes.append(f'<rect class="{css}" x="{x1}" y="{top}" width="{max(x2 - x1, 3.0):.1f}" '
                      f'height="{height}">{_title(text)}</rect>')
    return shapes


def _gap_elements(snapshot: Snapshot, axis: _Axis) -> list[str]:
    shapes = []
    for gap in snapshot.status.gaps:
        until = gap.unrestorable_until or axis.end
        if until < axis.start or gap.record.wal_from > axis.end:
            continue
        x1, x2 = axis.x(gap.record.wal_from), axis.x(until)
        shapes.append(f'<rect class="gap" x="{x1}" y="{LANES["marks"][0] - 4}" '
                      f'width="{max(x2 - x1, 2.0):.1f}" height="{AXIS_Y - LANES["marks"][0] + 4}">'
                      f'{_title(gap.text())}</rect>')
    return shapes


def _event_elements(snapshot: Snapshot, axis: _Axis) -> tuple[list[str], int, int]:
    """Failures (journal entries that failed, archiver failures) and failovers, drills and
    restores; also their counts (failures, events)."""
    top, height = LANES["events"]
    middle = top + height / 2
    shapes: list[str] = []
    failures = events = 0
    for entry in snapshot.journal:
        if not axis.inside(entry.time):
            continue
        failed = entry.failed
        kind = EVENT_COMMANDS.get(entry.command)
        if not failed and kind is None:
            continue
        x = axis.x(entry.time)
        text = _title(f"{entry.command}: {entry.outcome} {show(entry.time)}")
        if failed:
            failures += 1
            shapes.append(f'<path class="failure" d="M{x - 5} {top}l10 {height}m0 -{height}'
                          f'l-10 {height}">{text}</path>')
        else:
            events += 1
            shapes.append(f'<circle class="event {kind}" cx="{x}" cy="{middle}" r="5">'
                          f'{text}</circle>')
    for server in snapshot.status.servers:
        failed_at = server.last_failed_at
        if failed_at is None or not axis.inside(failed_at):
            continue
        failures += 1
        x = axis.x(failed_at)
        text = _title(f"{server.server}: archiving {server.last_failed_wal or ''} failed "
                      f"{show(failed_at)}")
        shapes.append(f'<path class="failure" d="M{x - 5} {top}l10 {height}m0 -{height}'
                      f'l-10 {height}">{text}</path>')
    return shapes, failures, events


def _axis_elements(axis: _Axis) -> list[str]:
    first = axis.start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    shapes = []
    hour = first
    while hour <= axis.end:
        x = axis.x(hour)
        shapes.append(f'<line class="grid" x1="{x}" x2="{x}" y1="10" y2="{AXIS_Y}"/>')
        if hour.hour % HOURS_PER_LABEL == 0:
            anchor = "end" if x > PLOT_RIGHT - 30 else "middle"
            shapes.append(f'<text x="{x}" y="{AXIS_Y + 14}" text-anchor="{anchor}">'
                          f'{hour:%H:%M}Z</text>')
        hour += timedelta(hours=1)
    for name, (top, height) in LANES.items():
        shapes.append(f'<text class="lane" x="2" y="{top + height / 2 + 4}">{name}</text>')
    shapes.append(f'<line class="axis" x1="{PLOT_LEFT}" x2="{PLOT_RIGHT}" y1="{AXIS_Y}" '
                  f'y2="{AXIS_Y}"/>')
    return shapes


def svg(snapshot: Snapshot) -> tuple[str, Counts]:
    """The timeline ending at the snapshot's time, and what it shows."""
    axis = _Axis(snapshot.taken_at)
    marks, mark_count = _mark_elements(snapshot, axis)
    backups = _backup_elements(snapshot, axis)
    gaps = _gap_elements(snapshot, axis)
    events, failures, event_count = _event_elements(snapshot, axis)
    counts = Counts(marks=mark_count, backups=len(backups), failures=failures, gaps=len(gaps),
                    events=event_count)
    body = "".join([*_axis_elements(axis), *gaps, *marks, *backups, *events])
    label = (f"The last 24 hours to {show(axis.end)}: {counts.marks} marks, "
             f"{counts.backups} backups, {counts.failures} failures, {counts.gaps} WAL gaps")
    return (f'<svg id="timeline" viewBox="0 0 {WIDTH} {HEIGHT}"'
            f'role="img" aria-label="{escape(label)}" data-marks="{counts.marks}" '
            f'data-mark-shapes="{len(marks)}" data-backups="{counts.backups}" '
            f'data-failures="{counts.failures}" data-gaps="{counts.gaps}">'
            f"{body}</svg>"), counts
