"""Console entry point: the WAL commands and `mark` take a lean path (a mark is asked of the
running agent, else made here without click, pydantic or psycopg); everything else, and any
case the lean paths leave, loads the full CLI."""

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


def _mark_here(args: list[str], config: str | None) -> int | None:
    """`markship mark` on the lean path (markship.marks.command): its exit status, or None
    for the full CLI. A user's error is one line, as the full CLI prints it."""
    from markship.errors import MarkshipError
    from markship.marks import command

    try:
        return command.main(args, config)
    except MarkshipError as exc:
        from markship.agent.log import journal_stream

        # under systemd, the journal gives the line error priority (sd-daemon prefix)
        prefix = "<3>" if journal_stream() else ""
        print(f"{prefix}markship: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("markship: interrupted", file=sys.stderr)
        return 130


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
        code = _mark_here(rest[1:], config)
        if code is not None:
            _exit_now(code)
    if rest and rest[0] in _LEAN:
        from markship.wal import command

        _exit_now(command.main(rest[0], rest[1:], config))
    from markship.cli.main import run

    run()
