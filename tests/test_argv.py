"""The lean paths' argument parser (markship.argv): options, flags and positionals."""

from __future__ import annotations

from markship.argv import parse


def test_options_take_the_next_argument_or_follow_an_equals_sign() -> None:
    found, flags, rest = parse(["--server", "alpha", "--standby", "seg", "--floor=x", "dest"],
                               options=("--server", "--floor"), flags=("--standby",))
    assert found == {"--server": "alpha", "--floor": "x"}
    assert flags == {"--standby"}
    assert rest == ["seg", "dest"]


def test_the_last_option_counts_and_a_value_may_look_like_an_option() -> None:
    found, _, rest = parse(["--name", "a", "--name", "--json"], options=("--name",),
                           flags=("--json",))
    assert found == {"--name": "--json"}
    assert rest == []


def test_unknown_options_and_an_option_without_value_are_positionals() -> None:
    _, flags, rest = parse(["--help", "--json", "--name"], options=("--name",),
                           flags=("--json",))
    assert flags == {"--json"}
    assert rest == ["--help", "--name"]


def test_leading_reads_options_only_before_the_first_positional() -> None:
    found, _, rest = parse(["--config=a.toml", "wal-push", "--config", "b.toml"],
                           options=("--config",), leading=True)
    assert found == {"--config": "a.toml"}
    assert rest == ["wal-push", "--config", "b.toml"]
