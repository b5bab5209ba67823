"""Parity between a production server and its standby (pure rules)."""

from __future__ import annotations

import json

from markship.dr.standby import HostFacts, parity_problems
from markship.pg.scratch import ScratchServer
from tests.support.servers import OS_USER, GroupFactory

SETTINGS = {"server_version_num": "150018", "max_connections": "200",
            "max_prepared_transactions": "10"}
PROD = HostFacts(SETTINGS, data_bytes=800 << 20)


def test_matching_standby_has_no_problems() -> None:
    standby = HostFacts(dict(SETTINGS, max_connections="300"), data_bytes=0)
    assert parity_problems(PROD, standby, free=10 << 30) == []


def test_lower_settings_version_and_small_disk_are_named() -> None:
    standby = HostFacts(dict(SETTINGS, server_version_num="140011",
                             max_prepared_transactions="0"), data_bytes=0)
    problems = parity_problems(PROD, standby, free=100 << 20)
    assert "PostgreSQL major version differs" in problems
    assert "max_prepared_transactions 0 < production's 10" in problems
    assert "free disk 100 MiB < production data 800 MiB" in problems


def test_parity_command_flags_a_standby_short_of_prepared_transactions(
        pg_group: GroupFactory) -> None:
    group = pg_group(1, settings={"max_prepared_transactions": "10"})
    handle = group.restored("alpha")
    dr = ScratchServer("dr-alpha", handle.base_dir, handle.port, os_user=OS_USER,
                       settings={"max_prepared_transactions": "2"})
    group.extra[-1] = dr
    dr.initdb()
    dr.start()
    group.config_path.write_text(group.config_path.read_text() + (
        f'\n[dr_site]\n[[dr_site.standby]]\nserver = "alpha"\ndata_dir = "{dr.data_dir}"\n'
        f'port = {dr.port}\n'))
    proc = group.markship("parity")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    short = next(line for line in lines if "max_prepared_transactions" in line)
    assert short.startswith("✗ alpha: max_prepared_transactions: standby 2, production 10")
    assert "set max_prepared_transactions = 10" in short
    assert any(line.startswith("✓ alpha: max_connections") for line in lines)
    assert any(line.startswith("✓ group: standby count: 1 standby(s) for 1 server(s)")
               for line in lines)
    report = json.loads(group.markship("parity", "--json").stdout)
    assert not report["ok"]
    assert any(c["what"] == "CPUs" and c["warning"] for c in report["checks"])
