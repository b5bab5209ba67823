"""LSN and segment-name arithmetic, checked against values PostgreSQL itself prints."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from markship.pg.lsn import (
    Segment,
    format_lsn,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_holding_end,
    segment_of,
    wal_file_kind,
)


def test_known_values() -> None:
    # pg_walfile_name('16/B374D848') on timeline 1 is 0000000100000016000000B3
    assert segment_of(1, parse_lsn("16/B374D848")).name() == "0000000100000016000000B3"
    # a record ending exactly on a boundary belongs to the previous segment
    assert segment_holding_end(1, parse_lsn("0/3000000")).name() == "000000010000000000000002"
    assert format_lsn(parse_lsn("0/3000028")) == "0/3000028"


@given(st.integers(1, 2**32 - 1), st.integers(0, 2**40 - 1))
def test_segment_names_round_trip(timeline: int, number: int) -> None:
    segment = Segment(timeline, number)
    assert parse_segment_name(segment.name()) == segment


@given(st.integers(0, 2**64 - 1))
def test_lsn_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn


def test_kinds_and_rejects() -> None:
    assert wal_file_kind("000000010000000000000003") == "segment"
    assert wal_file_kind("00000002.history") == "history"
    assert wal_file_kind("000000010000000000000003.00000028.backup") == "backup"
    assert wal_file_kind("000000010000000000000003.partial") == "partial"
    for bad in ("../etc/passwd", "RECOVERYXLOG", "00000001000000000000000"):
        with pytest.raises(ValueError):
            wal_file_kind(bad)


def test_history_file() -> None:
    text = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n"
    assert parse_history(text) == [(1, parse_lsn("0/3000148")), (2, parse_lsn("0/5000000"))]
