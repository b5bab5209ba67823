"""Console entry point: the WAL commands, and `mark` while the agent runs (it makes the mark),
take a lean path; everything else loads the full CLI."""

from __future__ import annotations

import sys

_LEAN = ("wal-push", "wal-fetch")


def _split_global(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--config PATH` / `--config=PATH` out of the arguments before the command."""
    from markship import argv as options

    found, _, rest = options.parse(argv, options=("--config",), leading=True)
    return found.get("--config"), rest


def _pushed_ahead(args: list[str], config: str | None) -> bool:
    """The fast path of archive_command: this file was already pushed by an earlier call."""
    import os

    from markship.wal import spool

    if len(args) != 3 or args[0] != "--server":
        return False
    path = config or os.environ.get("MARKSHIP_CONFIG") or "markship.toml"
    return spool.pushed_or_waited(spool.spool_dir(path, args[1]), args[2])


def _exit_now(code: int) -> None:
    """End a WAL command without the interpreter's teardown (module cleanup, OpenSSL's exit
    handlers): ~5 ms of a ~60 ms wal-push. Everything was written and closed before."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    argv = sys.argv[1:]
    config, rest = _split_global(argv)
    if rest and rest[0] == "wal-push" and _pushed_ahead(rest[1:], config):
        _exit_now(0)
    if rest and rest[0] == "mark":
        from markship.agent import control

        code = control.mark_via_agent(rest[1:], config)
        if code is not None:  # the running agent made (or refused) the mark
            _exit_now(code)
    if rest and rest[0] in _LEAN:
        from markship.wal import command

        _exit_now(command.main(rest[0], rest[1:], config))
    from markship.cli.main import run

    run()
