"""Object keys of the repository: WAL keys can be parsed back, other keys are not WAL."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from markship.pg.lsn import Segment
from markship.repository import layout


@given(st.integers(1, 300), st.integers(0, 2**20), st.text("0123456789abcdef", min_size=64,
                                                            max_size=64))
def test_wal_keys_round_trip(timeline: int, number: int, digest: str) -> None:
    name = Segment(timeline, number).name()
    key = layout.wal_key("orders", name, digest)
    assert key.startswith(f"wal/orders/{name[:16]}/")
    assert layout.split_wal_key(key) == (name, digest)


def test_history_files_have_their_own_folder() -> None:
    key = layout.wal_key("orders", "00000002.history", "a" * 64)
    assert key == f"wal/orders/history/00000002.history-{'a' * 64}.zst"


def test_non_wal_keys() -> None:
    assert layout.split_wal_key("backups/orders/x/base.tar.zst") is None
    assert layout.split_wal_key("wal/orders/0000000100000000/garbage-123.zst") is None
