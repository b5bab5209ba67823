"""`markship check`: the monitoring check's exit codes, its plugin line and perfdata, on
real servers (healthy, archiving broken, no backup) and without a readable config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from markship.config.model import Config
from markship.monitor import health
from tests.support.checks import archiver, switch_wal, wait_for
from tests.support.servers import Group, GroupFactory, add_dr_site, new_mark, run_markship

# A group mark made seconds ago must read as OK however slow the machine is.
LENIENT_RPO = '\n[check]\nrpo_warning = "1h"\nrpo_critical = "2h"\n'
# Nagios plugin guidelines: 'label'=value[UOM];[warn];[crit];[min];[max], U for unknown.
PERF = re.compile(r"^(?P<label>[a-z0-9_-]+)=(?P<value>U|-?\d+(?:\.\d+)?)(?P<unit>s|B)?"
                  r";(?P<warn>\d+(?:\.\d+)?);(?P<crit>\d+(?:\.\d+)?)$")


def _lenient(group: Group) -> None:
    group.config_path.write_text(group.config_path.read_text() + LENIENT_RPO)


def plugin(group: Group) -> tuple[int, str, dict[str, re.Match[str]], list[str]]:
    """`markship check --nagios`: exit code, the status text, perfdata by label and the
    long-output lines."""
    proc = group.markship("check", "--nagios")
    assert proc.stderr == "", proc.stderr
    first, *rest = proc.stdout.rstrip("\n").split("\n")
    text, _, perfdata = first.partition(" | ")
    found: dict[str, re.Match[str]] = {}
    for item in perfdata.split(" "):
        match = PERF.match(item)
        assert match, f"perfdata item {item!r} does not follow the plugin guidelines"
        found[match["label"]] = match
    return proc.returncode, text, found, rest


def test_a_healthy_group_is_ok(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    _lenient(group)
    group.ok("backup")
    new_mark(group)
    code, text, perf, rest = plugin(group)
    assert code == 0, text
    assert text.startswith("MARKSHIP OK - RPO "), text
    assert rest == []
    assert set(perf) == {"rpo", *(f"{kind}_{s}" for s in ("alpha", "bravo") for kind in
                                  ("archive_lag", "archive_lag_seconds", "last_backup_age"))}
    assert perf["rpo"]["unit"] == "s" and perf["rpo"]["value"] != "U"
    assert (perf["rpo"]["warn"], perf["rpo"]["crit"]) == ("3600", "7200")
    assert perf["archive_lag_alpha"]["unit"] == "B"
    # default backup-age thresholds: 1.5 and 2.5 days of the daily schedule
    assert perf["last_backup_age_bravo"]["warn"] == "129600"
    assert perf["last_backup_age_bravo"]["crit"] == "216000"
    # the text form and --json say the same, with the same exit code
    proc = group.markship("check")
    assert proc.returncode == 0 and "OK (exit 0)" in proc.stdout, proc.stdout
    proc = group.markship("check", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["state"] == "ok"
    assert {f["state"] for f in report["findings"]} == {"ok"}


def test_a_failing_archiver_and_a_server_down_are_critical(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    _lenient(group)
    group.ok("backup")
    new_mark(group)
    alpha = group.server("alpha")
    alpha.psql("ALTER SYSTEM SET archive_command = 'false'")
    alpha.psql("SELECT pg_reload_conf()")
    wait_for(lambda: switch_wal(alpha) and int(archiver(alpha)["failed_count"]) > 0,
             "alpha's archiver to fail", interval=0.5)
    code, text, perf, _rest = plugin(group)
    assert code == 2, text
    assert text.startswith("MARKSHIP CRITICAL - alpha: archiving fails: "), text
    assert "bravo" not in text
    assert perf["archive_lag_alpha"]["value"] != "U"

    group.server("bravo").stop(mode="immediate")
    code, text, perf, _rest = plugin(group)
    assert code == 2
    assert "bravo: cannot be reached" in text and "alpha: archiving fails" in text
    assert perf["archive_lag_bravo"]["value"] == "U"


def test_no_backup_is_critical(pg_group: GroupFactory) -> None:
    group = pg_group(2)
    _lenient(group)
    code, text, perf, _rest = plugin(group)
    assert code == 2, text
    assert text.startswith("MARKSHIP CRITICAL - "), text
    for server in ("alpha", "bravo"):
        assert f"{server}: no restorable backup" in text
        assert perf[f"last_backup_age_{server}"]["value"] == "U"
    assert "no complete mark" in text and perf["rpo"]["value"] == "U"


def test_a_standby_out_of_reach_is_a_warning(pg_group: GroupFactory) -> None:
    group = pg_group(1)
    standby = add_dr_site(group, LENIENT_RPO)["alpha"]
    group.ok("backup")
    group.ok("standby", "create")
    new_mark(group)
    code, text, perf, _rest = plugin(group)
    assert code == 0, text
    assert perf["standby_lag_alpha"]["unit"] == "B" and perf["standby_lag_alpha"]["value"] != "U"
    assert perf["standby_lag_alpha"]["warn"] == "1073741824"

    standby.stop(mode="immediate")
    code, text, perf, _rest = plugin(group)
    assert code == 1, text
    assert text.startswith(f"MARKSHIP WARNING - alpha: standby at 127.0.0.1:{standby.port} "
                           "cannot be reached: "), text
    assert perf["standby_lag_alpha"]["value"] == "U"


@pytest.mark.pg  # the installed markship command
def test_an_unreadable_config_is_unknown(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    proc = run_markship(missing, "check", "--nagios")
    assert proc.returncode == 3
    assert proc.stdout.startswith("MARKSHIP UNKNOWN - cannot check the group: "), proc.stdout
    assert str(missing) in proc.stdout
    # and the usual error line for a person
    assert proc.stderr.startswith("markship: error: ") and str(missing) in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def _config(check: str = "", frequency: str = "daily") -> Config:
    return Config.model_validate({
        "group": {"name": "g"}, "repository": {"path": "/srv/repo"},
        "server": [{"name": "a", "conninfo": "host=x"}],
        "schedule": {"frequency": frequency}, "marks": {"interval": 30},
        "check": dict(item.split("=") for item in check.split()) if check else {}})


def test_thresholds_come_from_the_config_or_their_defaults() -> None:
    assert health.rpo_thresholds(_config()) == (60, 150)
    assert health.backup_age_thresholds(_config(frequency="hourly")) == (5400, 9000)
    assert health.backup_age_thresholds(_config("backup_age_warning=2h")) == (7200, 216000)
    assert health.archive_lag_bytes_thresholds(
        _config("archive_lag_bytes_warning=64MiB archive_lag_bytes_critical=128MiB")) == (
        64 * 2**20, 128 * 2**20)
    # only a critical threshold below the default warning: the warning comes down with it
    assert health.standby_lag_bytes_thresholds(_config("standby_lag_bytes_critical=1MiB")) \
        == (2**20, 2**20)
    assert health.level_of(61, health.rpo_thresholds(_config())) == "warning"
    assert health.backup_age_level(None, _config()) == "critical"


def test_a_warning_above_its_critical_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match=r"archive_lag_warning .* is above archive_lag_critical"):
        _config("archive_lag_warning=20min archive_lag_critical=10min")
