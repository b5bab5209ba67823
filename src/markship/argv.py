"""Command-line options for the lean start-up paths, without argparse (which alone costs
~20 ms, paid once per WAL segment): `--config` before the command, wal-push/wal-fetch, and
`markship mark` asked of the agent. Standard library only, and nothing imported.

An option takes its value as `--name VALUE` or `--name=VALUE` (the last one counts; VALUE
may start with `-`); a flag is `--name` alone. Everything else is a positional, in order:
unknown options too, and an option with no value after it, so a caller that expects none
can hand the whole command line to the full CLI.
"""

from __future__ import annotations


def parse(argv: list[str], options: tuple[str, ...] = (), flags: tuple[str, ...] = (),
          leading: bool = False) -> tuple[dict[str, str], set[str], list[str]]:
    """(options found, flags found, positionals) of `argv`. With `leading`, only the
    arguments before the first positional are read as options: it and everything after it
    are positionals (the command and its own arguments)."""
    found: dict[str, str] = {}
    set_flags: set[str] = set()
    positionals: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if leading and positionals:
            positionals.append(arg)
        elif arg in options and i + 1 < len(argv):
            found[arg] = argv[i + 1]
            i += 1
        elif "=" in arg and arg.partition("=")[0] in options:
            name, _, value = arg.partition("=")
            found[name] = value
        elif arg in flags:
            set_flags.add(arg)
        else:
            positionals.append(arg)
        i += 1
    return found, set_flags, positionals
