"""`/metrics`: the group's state as Prometheus metrics, through prometheus-client.

Two sources: the agent's last Snapshot (gauges, read at scrape time from what the snapshot
holds: a scrape asks no server and lists nothing), and what the agent feeds on each mark
(MarkFeed: the mark duration and barrier hold histograms, the skipped and failed counters).
A few facts the snapshot does not keep (the repositories' sizes, the last verify and drill)
are gathered beside it by `History.update`, on the same refresher thread.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from markship.config.model import Config
from markship.errors import MarkshipError
from markship.monitor.snapshot import Snapshot
from markship.pg.lsn import DEFAULT_SEGMENT_SIZE
from markship.repository.base import Repository
from markship.repository.copies import Copy
from markship.repository.journal import JournalEntry, entries
from markship.timefmt import utcnow

# Upper bounds (seconds) of the mark histograms' buckets: marks take milliseconds, a mark
# waiting for a slow server may take seconds.
MARK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_EVERY = 300.0  # seconds between two listings of a repository for its size
# The snapshot is fresh (markship_up 1) while it is younger than this many refresh periods.
FRESH_PERIODS = 3.0


class _Histogram:
    """Counts of observations per bucket, their sum (not thread-safe: MarkFeed locks)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(MARK_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(MARK_BUCKETS, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*MARK_BUCKETS, math.inf), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == math.inf else repr(bound), running))
        return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=self.total)


class MarkFeed:
    """What the agent tells on each mark: its duration and barrier hold, or that it was
    skipped or failed. Cheap (a lock held for a few additions), called after the mark.

    Also when its next mark is due (`planned`), and `finished` is set after each mark: the
    snapshot refresher starts its work in the gap between two marks (see agent.web)."""

    def __init__(self) -> None:
        self.finished = threading.Event()
        self.next_at: float | None = None  # time.monotonic() the next planned mark is due
        self._lock = threading.Lock()
        self._duration = _Histogram()
        self._hold = _Histogram()
        self._skipped = 0
        self._failed = 0

    def planned(self, at_monotonic: float) -> None:
        self.next_at = at_monotonic

    def made(self, duration_seconds: float, barrier_hold_seconds: float) -> None:
        with self._lock:
            self._duration.observe(duration_seconds)
            self._hold.observe(barrier_hold_seconds)
        self.finished.set()

    def skipped(self) -> None:
        with self._lock:
            self._skipped += 1
        self.finished.set()

    def failed(self) -> None:
        with self._lock:
            self._failed += 1
        self.finished.set()

    def families(self) -> list[Metric]:
        with self._lock:
            return [
                self._duration.family("markship_mark_duration_seconds",
                                      "Time the agent took to make a mark"),
                self._hold.family("markship_mark_barrier_hold_seconds",
                                  "Time a mark held the barrier (commits waited meanwhile)"),
                CounterMetricFamily("markship_marks_skipped", "Marks the agent skipped",
                                    value=self._skipped),
                CounterMetricFamily("markship_marks_failed", "Marks that failed",
                                    value=self._failed)]


@dataclass
class History:
    """Facts kept across snapshots: each repository's size (listed at most every
    SIZE_EVERY seconds) and the newest verify and drill the journal tells of."""

    sizes: dict[str, int] = field(default_factory=dict)  # repository name → bytes
    sized_at: float | None = None  # time.monotonic() of the last listing
    last: dict[str, JournalEntry] = field(default_factory=dict)  # "verify"/"drill" → entry
    journal_read: bool = False

    def update(self, repo: Repository, copies: list[Copy], snapshot: Snapshot) -> None:
        """Bring the facts up to date after `snapshot` was taken; a repository that cannot be
        listed keeps its last size (markship_repository_up says it is down)."""
        now = time.monotonic()
        if self.sized_at is None or now - self.sized_at >= SIZE_EVERY:
            self.sized_at = now
            for name, each in [("primary", repo), *((c.name, c.repo) for c in copies)]:
                try:
                    self.sizes[name] = sum(o.size for o in each.iter_objects(""))
                except (MarkshipError, OSError):
                    continue
        found = snapshot.journal
        if not self.journal_read:  # once: the snapshot keeps only the last 24 h
            try:
                found = entries(repo)
                self.journal_read = True
            except MarkshipError:
                pass
        for entry in found:
            if entry.command in ("verify", "drill"):
                kept = self.last.get(entry.command)
                if kept is None or entry.seq > kept.seq:
                    self.last[entry.command] = entry

    def copy(self) -> History:
        """A copy a scrape can read while this one is updated."""
        return History(dict(self.sizes), self.sized_at, dict(self.last), self.journal_read)


@dataclass(frozen=True)
class View:
    """What a scrape reads: the last snapshot and history (None before the first one)."""

    snapshot: Snapshot | None
    history: History


def _gauge(name: str, documentation: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, documentation, value=value)


def _per(name: str, documentation: str, label: str,
         values: list[tuple[str, float | None]], counter: bool = False) -> Metric:
    family: GaugeMetricFamily | CounterMetricFamily
    if counter:
        family = CounterMetricFamily(name, documentation, labels=[label])
    else:
        family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values:
        if value is not None:
            family.add_metric([key], value)
    return family


def _age(now: datetime, when: datetime | None) -> float | None:
    return None if when is None else max(0.0, (now - when).total_seconds())


def snapshot_families(snapshot: Snapshot, history: History, config: Config,
                      now: datetime) -> Iterator[Metric]:
    """The gauges of one snapshot, ages counted up to `now`."""
    status = snapshot.status
    newest = status.newest
    yield from _gauge("markship_snapshot_age_seconds", "Age of the state the metrics show",
                      _age(now, snapshot.taken_at))
    yield from _gauge("markship_snapshot_duration_seconds", "Time gathering that state took",
                      snapshot.seconds)
    yield from _gauge("markship_newest_complete_mark_age_seconds",
                      "Age of the newest mark every server can be restored to (the RPO now)",
                      None if newest is None else _age(now, newest.record.created_at))

    servers = status.servers
    last_backups = {s.server: s.last_backup_set for s in servers}
    backups = {name: set_state.backups[name] for set_state in snapshot.sets
               for name, set_id in last_backups.items()
               if set_id == set_state.record.id and name in set_state.backups}
    segment = {name: b.wal_segment_size for name, b in backups.items()}

    def segments(name: str, lag: int | None) -> float | None:
        return None if lag is None else float(lag // segment.get(name, DEFAULT_SEGMENT_SIZE))

    yield _per("markship_server_up", "1 when the server answered", "server",
               [(s.server, float(s.reachable)) for s in servers])
    yield _per("markship_archive_lag_bytes", "WAL written but not in the repository yet",
               "server", [(s.server, s.archive_lag_bytes) for s in servers])
    yield _per("markship_archive_lag_seconds",
               "Age of the oldest finished WAL segment not archived yet (0: none)", "server",
               [(s.server, s.archive_lag_seconds) for s in servers])
    yield _per("markship_archive_lag_segments", "Finished WAL segments not archived yet",
               "server", [(s.server, segments(s.server, s.archive_lag_bytes)) for s in servers])
    yield _per("markship_archiver_failed", "Failed archive attempts (pg_stat_archiver)",
               "server", [(s.server, s.archiver_failed_count) for s in servers], counter=True)
    yield _per("markship_last_backup_age_seconds",
               "Age of the server's newest restorable base backup", "server",
               [(s.server, _age(now, s.last_backup_at)) for s in servers])
    yield _per("markship_last_backup_size_bytes", "Data size of that backup", "server",
               [(name, b.raw_size) for name, b in backups.items()])
    yield _per("markship_last_backup_duration_seconds", "Time that backup took", "server",
               [(name, (b.finished_at - b.started_at).total_seconds())
                for name, b in backups.items()])
    yield _per("markship_standby_replay_lag_bytes",
               "WAL the standby would fetch and replay on failover", "server",
               [(s.server, s.failover_bytes) for s in snapshot.standbys])
    yield _per("markship_standby_marks_behind", "Marks the standby has not replayed", "server",
               [(s.server, s.marks_behind) for s in snapshot.standbys])

    repositories = status.repositories
    yield _per("markship_repository_up", "1 when the repository (or copy) can be listed",
               "repository", [(r.name, float(r.reachable)) for r in repositories])
    yield _per("markship_repository_size_bytes", "Bytes stored in the repository (or copy)",
               "repository", [(r.name, history.sizes.get(r.name)) for r in repositories])
    yield _per("markship_copy_lag_seconds",
               "Age of the oldest object a copy lacks (0: caught up)", "repository",
               [(r.name, r.lag_seconds) for r in repositories if r.mode != "primary"])

    for command in ("verify", "drill"):
        entry = history.last.get(command)
        yield from _gauge(f"markship_{command}_age_seconds", f"Age of the last {command}",
                          None if entry is None else _age(now, entry.time))
        yield from _gauge(f"markship_{command}_ok",
                          f"1 when the last {command} succeeded (0 also when none ran)",
                          float(entry is not None and entry.outcome == "ok"))
    yield from _gauge("markship_key_backup_ok",
                      "0 when the repository key has no backup (markship key export)",
                      float(status.key_warning is None))
    yield from _gauge("markship_checklist_missing_steps", "Checklist steps marked missing",
                      float(sum(1 for s in snapshot.checklist if s.state == "✗")))
    yield from _gauge("markship_wal_gaps_open",
                      "WAL gaps no full backup has followed yet (points in them are lost)",
                      float(sum(1 for g in status.gaps if g.healed_by is None)))


class GroupCollector(Collector):
    """Builds the metrics at each scrape from `view()` (the last snapshot) and the feed."""

    def __init__(self, config: Config, view: Callable[[], View], feed: MarkFeed) -> None:
        self.config, self.view, self.feed = config, view, feed

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        view = self.view()
        snapshot = view.snapshot
        fresh = snapshot is not None and (now - snapshot.taken_at).total_seconds() <= (
            FRESH_PERIODS * self.config.web.refresh + snapshot.seconds)
        yield GaugeMetricFamily("markship_up", "1 when the state below is fresh",
                                value=float(fresh))
        yield from self.feed.families()
        if snapshot is not None:
            yield from snapshot_families(snapshot, view.history, self.config, now)


def registry(config: Config, view: Callable[[], View], feed: MarkFeed) -> CollectorRegistry:
    """A registry of its own (not the process-wide default, which would add process
    metrics and keep state across agents in tests)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(GroupCollector(config, view, feed))
    return found


def exposition(found: CollectorRegistry) -> bytes:
    """The text format of every metric in `found`."""
    return generate_latest(found)
