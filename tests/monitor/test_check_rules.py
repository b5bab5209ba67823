"""markship.monitor.check's judgement without servers: a directory repository written by
hand (tests/repository/test_gaps.py's helpers) with the group's one server down, and group
states built as `group_status` returns them (a copy or the repository unreachable)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from markship.backup.status import RepositoryStatus, ServerStatus
from markship.config.model import Config
from markship.marks.choose import MarkState
from markship.monitor.check import evaluate
from markship.monitor.snapshot import GroupStatus, Problem, group_status
from markship.repository.backends import open_repository
from markship.timefmt import utcnow
from tests.repository.test_gaps import _backup, _gap, _mark


def _config(repo: Path) -> Config:
    return Config.model_validate({
        "group": {"name": "g"}, "repository": {"path": str(repo)},
        "server": [{"name": "alpha", "conninfo": "host=127.0.0.1 port=1 connect_timeout=2"}]})


def test_a_server_down_and_an_open_wal_gap_are_critical(tmp_path: Path) -> None:
    repo = open_repository(tmp_path)
    _backup(repo, "S1", 2, 3, minute=0)
    _gap(repo, 10, 12)
    config = _config(tmp_path)
    result = evaluate(config, group_status(config, repo, []))
    found = {(f.check, f.subject): f.state for f in result.findings}
    assert found[("server", "alpha")] == "critical"
    assert found[("wal_gap", "alpha")] == "critical"
    assert found[("rpo", "group")] == "critical"  # no mark at all
    # each problem `markship status` lists is one finding, not two
    assert "problem" not in {f.check for f in result.findings}, result.findings
    assert result.exit_code == 2
    line = result.plugin_output().splitlines()[0]
    assert line.startswith("MARKSHIP CRITICAL - ")
    assert "alpha: cannot be reached" in line and "dropped by pg_wal protection" in line


def _healthy(config: Config) -> GroupStatus:
    now = utcnow()
    mark = _mark(5).model_copy(update={"created_at": now - timedelta(seconds=5)})
    server = ServerStatus(
        server="alpha", reachable=True, error=None, last_backup_set="S1",
        last_backup_at=now - timedelta(hours=2), last_archived_wal="000000010000000000000004",
        last_archived_at=now, repository_newest_wal="000000010000000000000004",
        archive_lag_bytes=1024, archive_lag_seconds=0.0, archiver_failed_count=0,
        last_failed_wal=None, last_failed_at=None)
    primary = RepositoryStatus("primary", "/srv/repo", "primary", True, None, True, None, None,
                               None)
    copy = RepositoryStatus("offsite", "s3://b/g", "async", True, None, True, 0, 0, 0.0)
    return GroupStatus([server], [primary, copy], [], MarkState(mark, True, {}, 5.0), None, [])


def test_a_copy_out_of_reach_is_a_warning_and_the_repository_out_of_reach_unknown(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    healthy = _healthy(config)
    result = evaluate(config, healthy)
    assert (result.state, result.exit_code) == ("ok", 0), result.findings
    assert result.plugin_output().startswith("MARKSHIP OK - RPO 5 s ")

    primary, copy = healthy.repositories
    down = replace(copy, reachable=False, error="connection refused")
    result = evaluate(config, replace(healthy, repositories=[primary, down], problems=[
        Problem("repository", "repository offsite (s3://b/g): connection refused")]))
    assert (result.state, result.exit_code) == ("warning", 1)
    assert result.plugin_output().startswith(
        "MARKSHIP WARNING - offsite: copy offsite (s3://b/g) cannot be reached: connection "
        "refused | rpo=5s;60;150 ")

    gone = replace(primary, reachable=False, error="permission denied")
    unreadable = replace(healthy, repositories=[gone, copy], newest=None, servers=[
        replace(healthy.servers[0], last_backup_at=None, last_backup_set=None,
                archive_lag_bytes=None, repository_error="permission denied")],
        problems=[Problem("server_repository", "alpha: permission denied"),
                  Problem("repository", "repository primary (/srv/repo): permission denied")])
    result = evaluate(config, unreadable)
    assert (result.state, result.exit_code) == ("unknown", 3), result.findings
    assert "the repository (/srv/repo) cannot be reached: permission denied" in \
        result.plugin_output()
    # a known problem outranks what cannot be told
    result = evaluate(config, replace(unreadable, repositories=[gone, down]))
    assert (result.state, result.exit_code) == ("warning", 1)
