"""Parity between a production server and its standby (pure rules)."""

from __future__ import annotations

from markship.standby import parity_problems

PROD = {"server_version_num": "150018", "max_connections": "200",
        "max_prepared_transactions": "10", "data_bytes": str(800 << 20)}


def test_matching_standby_has_no_problems() -> None:
    standby = dict(PROD, max_connections="300")
    assert parity_problems(PROD, standby, free=10 << 30) == []


def test_lower_settings_version_and_small_disk_are_named() -> None:
    standby = dict(PROD, server_version_num="140011", max_prepared_transactions="0")
    problems = parity_problems(PROD, standby, free=100 << 20)
    assert "PostgreSQL major version differs" in problems
    assert "max_prepared_transactions 0 < production's 10" in problems
    assert "free disk 100 MiB < production data 800 MiB" in problems
