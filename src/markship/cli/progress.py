"""Progress of long work (backup, restore, standby create, verify, drill) on stderr, the one
place that shows it: a rich bar per server on a terminal, else (and always with --json) a
plain line per server every MARKSHIP_PROGRESS_INTERVAL seconds (default 10). Never on
stdout: with --json that is the JSON document alone.

The library reports through a callback, `(name, done bytes, total bytes)`, called from any
thread; it never imports rich.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from markship.cli.formats import size

ProgressFn = Callable[[str, int, int], None]

INTERVAL_ENV = "MARKSHIP_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


@contextmanager
def shown(verb: str, as_json: bool) -> Iterator[ProgressFn]:
    """A callback showing the progress of `verb` ("restore", "verify"…) while the block runs:
    bars on a terminal unless `as_json`, plain lines otherwise."""
    if sys.stderr.isatty() and not as_json:
        with _bars() as callback:
            yield callback
    else:
        yield PlainLines(verb, _interval())


def _interval() -> float:
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text else DEFAULT_INTERVAL
    except ValueError:
        value = DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


@contextmanager
def _bars() -> Iterator[ProgressFn]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    lock = threading.Lock()
    with Progress("[bold]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(name: str, done: int, total: int) -> None:
            with lock:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=None)
            bar.update(tasks[name], completed=done, total=total or None)

        yield update


class PlainLines:
    """`restore alpha: 412.0 MiB of 770.0 MiB, 95.0 MiB/s, ETA 4 s` on stderr, per name at
    most once every `interval` seconds (the first after one interval: short work prints
    nothing)."""

    def __init__(self, verb: str, interval: float) -> None:
        self.verb = verb
        self.interval = interval
        self.lock = threading.Lock()
        self.began: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            began = self.began.setdefault(name, now)
            if now - self.last.get(name, began) < self.interval:
                return
            self.last[name] = now
        click.echo(self.line(name, done, total, now - began), err=True)

    def line(self, name: str, done: int, total: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{self.verb} {name}: {size(done)}"
        if total > 0:
            text += f" of {size(total)}"
        text += f", {size(int(rate))}/s"
        if total > done and rate > 0:
            text += f", ETA {(total - done) / rate:.0f} s"
        return text
