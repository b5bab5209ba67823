"""Object keys of the repository: WAL keys can be parsed back, other keys are not WAL."""

from __future__ import annotations

from pathlib import Path

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


def test_keys_are_the_ones_existing_repositories_hold() -> None:
    """Repositories written before keep working only while every key is formed as it was."""
    assert layout.set_key("20261125T190211Z") == "sets/20261125T190211Z.json"
    assert layout.base_archive_key("orders", "S1") == "backups/orders/S1/base.tar.zst"
    assert layout.backup_record_key("orders", "S1") == "backups/orders/S1/backup.json"
    assert layout.config_file_key("orders", "S1", "pg_hba.conf") == \
        "backups/orders/S1/config/pg_hba.conf"
    assert layout.group_config_key("S1") == "backups/_group/S1/markship.toml"
    assert layout.stream_prefix("orders") == "stream/orders/"
    assert layout.mark_key("m-20261125T190211Z") == "marks/m-20261125T190211Z.json"
    assert layout.hold_key("S1", "orders", 4242) == "holds/S1-orders-4242.json"
    assert layout.failover_key("20261125T190211Z") == "failovers/20261125T190211Z.json"
    assert layout.drill_record_key("D1") == "drills/D1.json"
    assert layout.drill_report_key("D1") == "drills/D1.md"
    assert layout.fileset_prefix("portal") == "filesets/portal/"
    assert layout.fileset_record_key("portal", "C1") == "filesets/portal/C1.json"
    assert layout.fileset_archive_name("C1") == "C1.tar.zst"
    assert layout.dump_prefix("orders-shop") == "dumps/orders-shop/"
    assert layout.dump_record_key("orders-shop", "D1") == "dumps/orders-shop/D1.json"
    assert layout.dump_archive_key("orders-shop", "D1") == "dumps/orders-shop/D1.dump.zst"
    assert layout.journal_entry_key(7) == "journal/000000000007.json"
    assert layout.JOURNAL_HEAD_KEY == "journal/HEAD.json"
    assert layout.AGENT_STATE_KEY == "agent/state.json"
    assert layout.key_export_key("20261125T190211.123456Z") == \
        "keys/exports/20261125T190211.123456Z.json"
    assert layout.CATALOG_KEY_COPIES + layout.catalog_key_copy_name("T1", "fp") == \
        "keys/catalog/T1-fp.age"
    assert layout.lock_key("backup") == "locks/backup.lock"
    assert layout.MARKER_KEY == "markship.json"


def _listed(text: str) -> list[str]:
    """The keys of the first fenced block in `text` (the layout list), descriptions left out."""
    block = text.split("```\n", 2)[1]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


def _places() -> dict[str, str]:
    """layout's constants that name a place: a folder (ends in '/') or a key of its own."""
    return {name: value for name, value in vars(layout).items()
            if name.isupper() and isinstance(value, str) and
            (value.endswith("/") or "/" in value or value == layout.MARKER_KEY)}


def test_every_place_in_layout_is_listed_and_every_listed_key_has_one() -> None:
    assert layout.__doc__ is not None
    listed = _listed(layout.__doc__)
    places = _places()
    assert {"MARKS", "HOLDS", "FAILOVERS", "JOURNAL", "AGENT_STATE_KEY"} <= set(places)
    unlisted = sorted(n for n, v in places.items() if not any(k.startswith(v) for k in listed))
    assert unlisted == [], "add these to layout's list (and README's)"
    unowned = sorted(k for k in listed if not any(k.startswith(v) for v in places.values()))
    assert unowned == [], "give these keys a constant in layout"


def test_readme_repeats_layouts_list_exactly() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**Repository layout.**"):]
    assert layout.__doc__ is not None
    assert section.split("```\n", 2)[1] == layout.__doc__.split("```\n", 2)[1]


def test_stream_folder_names_are_told_apart() -> None:
    """pg_receivewal's own files and the pieces uploaded from the agent's spool name their
    segment; anything else in a stream folder (its pid file, a segment being laid out, a
    damaged name) names none."""
    seg = "000000010000000A000000FE"
    piece = layout.stream_piece_name(seg, 0x2000, 0x6000)
    assert piece == f"{seg}.partial.00002000-00006000"
    assert layout.split_stream_name(piece) == (seg, (0x2000, 0x6000))
    assert layout.split_stream_name(seg) == (seg, None)
    assert layout.split_stream_name(f"{seg}.partial") == (seg, None)
    for other in ("receiver.pid", f".pad-{seg}", f"{seg}.partial.00006000-00002000",
                  f"{seg}.partial.0000200-00006000", f"{seg}.partial.0000200G-00006000",
                  f"{seg}.full", f"{seg}.partial.00002000"):
        assert layout.split_stream_name(other) is None, other
