"""The agent's status page (`/`): one self-contained HTML5 document rendered from a snapshot.

No JavaScript and nothing fetched from elsewhere: the style and the timeline's SVG are inline,
the page reloads itself every `[web] refresh` seconds. Every value read from the repository
or from the servers is escaped (a backup label or a journal line is data, never markup).
Numbers a script or a test reads carry stable attributes: `data-rpo-seconds` on the RPO, and
on each server card (`data-server`) `data-archive-lag-bytes`, `data-archive-lag-seconds`,
`data-archiver-failed-count`, `data-last-backup-age-seconds` and `data-state`.
"""

from __future__ import annotations

import math
from html import escape

from markship.backup.status import ServerStatus
from markship.config.model import Config
from markship.dr.standby import StandbyStatus
from markship.monitor import timeline
from markship.monitor.health import rpo_level, rpo_thresholds
from markship.monitor.snapshot import Snapshot
from markship.repository.journal import JournalEntry
from markship.timefmt import show

JOURNAL_TAIL = 20

STYLE = """
:root{--ok:#1a7f37;--warning:#b35900;--critical:#c62828;--muted:#5f6368;--line:#d0d4d9;
--card:#fff;--bg:#f3f4f6;color-scheme:light}
*{box-sizing:border-box}
body{margin:0;padding:1rem;font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:#1f2328;overflow-wrap:anywhere}
header{display:flex;flex-wrap:wrap;gap:.25rem 1rem;align-items:baseline;margin-bottom:1rem}
h1{font-size:1.3rem;margin:0}h2{font-size:1.05rem;margin:1.5rem 0 .5rem}
.muted{color:var(--muted)}.small{font-size:.85rem}
.rpo{border-radius:12px;padding:1rem 1.25rem;color:#fff;display:flex;flex-wrap:wrap;
gap:.25rem 1.5rem;align-items:baseline}
.rpo.ok{background:var(--ok)}.rpo.warning{background:var(--warning)}
.rpo.critical{background:var(--critical)}
.rpo .figure{font-size:clamp(2.5rem,10vw,4.5rem);font-weight:700;line-height:1.05}
.rpo .what{font-size:1rem;opacity:.95}
.problems{background:#fdecea;border:1px solid var(--critical);border-radius:8px;
padding:.5rem 1rem;margin:1rem 0}
.problems li{margin:.2rem 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(22rem,100%),1fr));
gap:.75rem}
.card{background:var(--card);border:1px solid var(--line);border-left:8px solid var(--ok);
border-radius:8px;padding:.75rem 1rem}
.card.critical{border-left-color:var(--critical);background:#fff5f5}
.card h3{margin:0 0 .4rem;font-size:1.1rem;display:flex;justify-content:space-between;gap:.5rem}
.badge{font-size:.8rem;font-weight:600;padding:.1rem .5rem;border-radius:999px;color:#fff;
background:var(--ok);white-space:nowrap}
.card.critical .badge{background:var(--critical)}
.card .why{color:var(--critical);font-weight:600;margin:.2rem 0 .4rem}
dl{display:grid;grid-template-columns:8.5rem minmax(0,1fr);gap:.3rem .75rem;margin:0}
dt{color:var(--muted)}dd{margin:0}.t{font-size:.85rem;color:var(--muted);white-space:nowrap}
.wal{font:.85rem ui-monospace,monospace}.nw{white-space:nowrap}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:.5rem;direction:rtl}
#timeline{display:block;width:100%;min-width:720px;height:auto;font:13px system-ui,sans-serif;
direction:ltr}
#timeline text{fill:var(--muted)}#timeline .lane{font-weight:600}
#timeline .grid{stroke:#eceef1}#timeline .axis{stroke:#8c959f}
#timeline .mark{stroke:var(--ok);fill:var(--ok)}#timeline line.mark{stroke-width:2}
#timeline .mark.incomplete{stroke:var(--warning);fill:var(--warning)}
#timeline .backup{fill:#1f6feb}#timeline .backup.running{fill:#79b8ff}
#timeline .backup.failed{fill:var(--critical)}
#timeline .failure{stroke:var(--critical);stroke-width:2.5}
#timeline .gap{fill:var(--critical);fill-opacity:.15}
#timeline .event{stroke:#fff;stroke-width:1.5}#timeline .failover{fill:#8250df}
#timeline .drill{fill:#0a7c86}#timeline .restore{fill:#1f6feb}
.legend{display:flex;flex-wrap:wrap;gap:.25rem 1rem;margin:.4rem 0 0;padding:0;list-style:none}
.legend i{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;
vertical-align:-.1rem}
.list{list-style:none;margin:0;padding:0;background:var(--card);border:1px solid var(--line);
border-radius:8px}
.list li{padding:.5rem .75rem;border-top:1px solid var(--line);display:grid;
grid-template-columns:1.5rem 1fr;gap:.1rem .5rem}
.list li:first-child{border-top:0}
.list .state{font-weight:700;text-align:center}
.list .DONE{color:var(--ok)}.list .MISSING{color:var(--critical)}.list .UNUSED{color:var(--muted)}
.journal li{grid-template-columns:1fr}
.journal .failed{color:var(--critical);font-weight:600}
footer{margin-top:1.5rem}
"""

_STATE_CLASS = {"✓": "DONE", "✗": "MISSING", "—": "UNUSED"}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def duration(seconds: float | None) -> str:
    """A duration for a reader: `42 s`, `7 min 5 s`, `3.2 h`, `2.0 d`; `-` when unknown."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 0:
        return f"-{duration(-seconds)}"
    if seconds < 120:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def size(count: int | None) -> str:
    """Bytes for a reader: `0 B`, `12.5 KiB`, `16.0 MiB`; `-` when unknown."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _attr(value: float | int | None) -> str:
    """A number for a data attribute: empty when unknown."""
    return "" if value is None else _e(value)


def _rpo(snapshot: Snapshot, config: Config) -> str:
    newest = snapshot.status.newest
    age = None if newest is None else round(newest.age_seconds, 3)
    level = rpo_level(age, config)
    warning, critical = rpo_thresholds(config)
    if newest is None:
        what = "no complete mark: no point can be restored on every server together"
        figure = "none"
    else:
        figure = duration(age)
        what = (f"since the newest complete mark {_e(newest.record.name)} "
                f'(<span class="nw">{_e(show(newest.record.created_at))}</span>)')
    return (f'<section id="rpo" class="rpo {level}" data-rpo-seconds="{_attr(age)}" '
            f'data-level="{level}"><div><div class="what">RPO now</div>'
            f'<div class="figure" id="rpo-figure">{_e(figure)}</div></div>'
            f'<div class="what">{what}<br><span class="small">{level}: warning above '
            f"{_e(duration(warning))}, critical above {_e(duration(critical))}</span></div>"
            "</section>")


def _problems(snapshot: Snapshot) -> str:
    lines = [*(p.text for p in snapshot.status.problems), *snapshot.problems]
    if snapshot.status.key_warning:
        lines.append(snapshot.status.key_warning)
    if not lines:
        return ""
    items = "".join(f"<li>{_e(line)}</li>" for line in lines)
    return (f'<section id="problems" class="problems"><strong>Problems</strong><ul>{items}'
            "</ul></section>")


def _why_red(server: ServerStatus, open_gap: bool) -> list[str]:
    why = []
    if not server.reachable:
        why.append(f"down: {server.error or 'unreachable'}")
    if server.last_failed_at is not None and (
            server.last_archived_at is None or server.last_failed_at > server.last_archived_at):
        why.append(f"archiving failing: last failure {show(server.last_failed_at)}, none "
                   "archived since")
    if server.last_backup_set is None:
        why.append("no restorable backup")
    if server.repository_error:
        why.append(f"repository: {server.repository_error}")
    if open_gap:
        why.append("open WAL gap: take a backup")
    return why


def _standby_rows(standby: StandbyStatus | None) -> str:
    if standby is None:
        return "<dt>standby</dt><dd>none</dd>"
    if not standby.reachable:
        return (f'<dt>standby</dt><dd data-standby="{_e(standby.address)}">'
                f"{_e(standby.address)} unreachable: {_e(standby.error or '')}</dd>")
    behind = "-" if standby.marks_behind is None else f"{standby.marks_behind} marks"
    parity = "ok" if not standby.parity else "; ".join(standby.parity)
    return (f'<dt>standby</dt><dd data-standby="{_e(standby.address)}">{_e(standby.address)}'
            f"{'' if standby.in_recovery else ' (not in recovery)'}</dd>"
            f'<dt>standby lag</dt><dd data-standby-lag-bytes="{_attr(standby.failover_bytes)}" '
            f'data-standby-marks-behind="{_attr(standby.marks_behind)}">'
            f"{_e(size(standby.failover_bytes))} to replay on failover, {_e(behind)} behind"
            f"{', at ' + _e(standby.at_mark) if standby.at_mark else ''}</dd>"
            f"{_failover_rows(standby)}"
            f'<dt>parity</dt><dd class="{"" if not standby.parity else "why"}" '
            f'data-parity-problems="{len(standby.parity)}">{_e(parity)}</dd>')


def _failover_rows(standby: StandbyStatus) -> str:
    if standby.reachable_mark is None:
        return "<dt>failover</dt><dd>no complete mark it can reach yet</dd>"
    took = standby.failover_seconds_estimate
    guess = "" if took is None else f", about {took:.0f} s of replay (estimate)"
    return (f'<dt>failover</dt><dd data-reachable-mark="{_e(standby.reachable_mark)}">'
            f"reaches {_e(standby.reachable_mark)}{guess}</dd>")


def _card(snapshot: Snapshot, server: ServerStatus) -> str:
    open_gap = any(g.record.server == server.server and g.healed_by is None
                   for g in snapshot.status.gaps)
    why = _why_red(server, open_gap)
    state = "critical" if why or not server.healthy else "ok"
    backup_age = (None if server.last_backup_at is None
                  else round((snapshot.taken_at - server.last_backup_at).total_seconds(), 3))
    standby = next((s for s in snapshot.standbys if s.server == server.server), None)
    failed = server.archiver_failed_count
    lag = ("-" if server.archive_lag_bytes is None and server.archive_lag_seconds is None
           else f"{size(server.archive_lag_bytes)}, {duration(server.archive_lag_seconds)}")
    backup_when = "none" if backup_age is None else f"{duration(backup_age)} ago"
    backup_detail = "" if server.last_backup_set is None else (
        f'<br><span class="t">{_e(show(server.last_backup_at))}</span>'
        f'<br><span class="t">set {_e(server.last_backup_set)}</span>')
    last_failure = (f'<br><span class="wal">{_e(server.last_failed_wal or "")}</span>'
                    f'<br><span class="t">{_e(show(server.last_failed_at))}</span>'
                    if server.last_failed_at else "")
    why_html = "".join(f'<div class="why">{_e(line)}</div>' for line in why)
    return (f'<article class="card {state}" data-server="{_e(server.server)}" '
            f'data-state="{state}" data-reachable="{str(server.reachable).lower()}" '
            f'data-open-gap="{str(open_gap).lower()}" '
            f'data-archive-lag-bytes="{_attr(server.archive_lag_bytes)}" '
            f'data-archive-lag-seconds="{_attr(server.archive_lag_seconds)}" '
            f'data-archiver-failed-count="{_attr(failed)}" '
            f'data-last-backup-age-seconds="{_attr(backup_age)}">'
            f'<h3><span>{_e(server.server)}</span><span class="badge">'
            f'{"ok" if state == "ok" else "attention"}</span></h3>{why_html}<dl>'
            f"<dt>last backup</dt><dd>{_e(backup_when)}{backup_detail}</dd>"
            f"<dt>archive lag</dt><dd>{_e(lag)}</dd>"
            f'<dt>last archived</dt><dd><span class="wal">{_e(server.last_archived_wal or "-")}'
            f'</span><br><span class="t">{_e(show(server.last_archived_at))}</span></dd>'
            f"<dt>archiver failures</dt><dd>{_e('-' if failed is None else failed)}"
            f"{last_failure}</dd>{_standby_rows(standby)}</dl></article>")


def _legend() -> str:
    entries = [("var(--ok)", "complete marks"), ("var(--warning)", "marks not complete yet"),
               ("#1f6feb", "backups"), ("var(--critical)", "failures, failed backups"),
               ("rgba(198,40,40,.25)", "WAL gaps"), ("#8250df", "failovers"),
               ("#0a7c86", "drills")]
    return '<ul class="legend small muted">' + "".join(
        f'<li><i style="background:{color}"></i>{text}</li>' for color, text in entries) + "</ul>"


def _checklist(snapshot: Snapshot) -> str:
    if not snapshot.checklist:
        return '<p class="muted">The checklist could not be told (see the problems above).</p>'
    items = []
    for step in snapshot.checklist:
        css = _STATE_CLASS.get(step.state, "UNUSED")
        fix = f'<br><span class="small">fix: {_e(step.fix)}</span>' if step.fix else ""
        items.append(f'<li data-step="{_e(step.title)}" data-state="{css}">'
                     f'<span class="state {css}" aria-label="{css.lower()}">{_e(step.state)}'
                     f"</span><span><strong>{_e(step.title)}</strong> "
                     f'<span class="small muted">({_e(step.phase)})</span><br>'
                     f'<span class="small">{_e(step.evidence)}</span>{fix}</span></li>')
    missing = sum(1 for s in snapshot.checklist if s.state == "✗")
    return (f'<ul id="checklist" class="list" data-missing-steps="{missing}">'
            + "".join(items) + "</ul>")


def _journal_line(entry: JournalEntry) -> str:
    outcome = _e(entry.outcome)
    shown = f'<span class="failed">{outcome}</span>' if entry.failed else outcome
    objects = ", ".join(f"{_e(k)} {_e(v)}" for k, v in entry.objects.items())
    return (f'<li data-seq="{entry.seq}"><span><strong>{_e(entry.command)}</strong> {shown}'
            f'{" — " + objects if objects else ""}<br><span class="small muted">'
            f"#{entry.seq} {_e(show(entry.time))} by {_e(entry.user)}@{_e(entry.host)}"
            "</span></span></li>")


def _journal(snapshot: Snapshot) -> str:
    tail = snapshot.journal[-JOURNAL_TAIL:]
    if not tail:
        return '<p class="muted">No journal entry in the last 24 hours.</p>'
    return ('<ul id="journal" class="list journal">'
            + "".join(_journal_line(e) for e in reversed(tail)) + "</ul>")


def render(snapshot: Snapshot, config: Config) -> str:
    """The whole page for `snapshot` (a complete HTML5 document)."""
    refresh = max(1, round(config.web.refresh))
    drawing, counts = timeline.svg(snapshot)
    cards = "".join(_card(snapshot, server) for server in snapshot.status.servers)
    group = _e(config.group.name)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{refresh}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>markship · {group}</title><style>{STYLE}</style></head><body>"
        f'<header><h1>markship · group {group}</h1><span class="muted small" id="taken-at" '
        f'data-taken-at="{_e(show(snapshot.taken_at))}">as of {_e(show(snapshot.taken_at))}, '
        f"gathered in {snapshot.seconds:.2f} s, reloads every {refresh} s</span></header>"
        f"{_rpo(snapshot, config)}{_problems(snapshot)}"
        f'<h2>Servers</h2><section id="servers" class="cards">{cards}</section>'
        '<h2>Last 24 hours</h2><section class="scroll" title="newest on the right">'
        f"{drawing}</section>{_legend()}"
        f'<p class="small muted">{counts.marks} marks, {counts.backups} backups, '
        f"{counts.failures} failures, {counts.gaps} WAL gaps, {counts.events} failovers, "
        "drills and restores (times in UTC)</p>"
        f"<h2>Checklist</h2>{_checklist(snapshot)}"
        f"<h2>Journal</h2>{_journal(snapshot)}"
        '<footer class="small muted">markship status page: read-only; '
        "<code>markship status</code> shows the same on a terminal.</footer></body></html>")
