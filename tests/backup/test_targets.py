"""Recovery target settings as PostgreSQL needs them (no server needed)."""

from __future__ import annotations

from markship.backup.targets import TARGET_SETTINGS, Target


def test_a_target_written_over_another_empties_the_others_first() -> None:
    # PostgreSQL applies the settings in file order and refuses a second target even when
    # an emptied one follows it: the emptied ones must come before the new one.
    settings = Target("lsn", lsn=0x3000060, inclusive=False, action="pause").settings(
        clear_others=True)
    keys = list(settings)
    assert keys.index("recovery_target_lsn") > max(
        keys.index(k) for k in TARGET_SETTINGS if k != "recovery_target_lsn")
    assert {k: settings[k] for k in TARGET_SETTINGS} == {
        "recovery_target": "", "recovery_target_name": "", "recovery_target_time": "",
        "recovery_target_xid": "", "recovery_target_lsn": "0/3000060"}
    assert settings["recovery_target_inclusive"] == "off"
    assert settings["recovery_target_action"] == "pause"
    assert settings["hot_standby"] == "on"  # without it PostgreSQL shuts down instead


def test_each_target_sets_one_target_setting() -> None:
    assert Target("xid", xid=42).settings() == {
        "recovery_target_xid": "42", "recovery_target_inclusive": "on",
        "recovery_target_action": "promote"}
    assert Target("immediate", action="shutdown").settings() == {
        "recovery_target": "immediate", "recovery_target_action": "shutdown"}
    assert Target("name", name="m1").settings() == {
        "recovery_target_name": "m1", "recovery_target_action": "promote"}
    assert Target("latest").settings() == {}
