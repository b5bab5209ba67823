"""Event log of long-running commands: one line per event with its level (info, warning,
error) and a UTC timestamp (to the millisecond in text, to the microsecond in JSON lines), on
stderr or appended to a file.

When stderr is systemd's journal (JOURNAL_STREAM names it, see systemd.exec(5)), or when
asked, each line starts with its sd-daemon priority prefix (`<6>` info, `<4>` warning,
`<3>` error), which journald turns into the entry's priority and strips.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from markship.timefmt import exact_times

LEVELS = ("info", "warning", "error")
# sd-daemon(3): SD_ERR, SD_WARNING, SD_INFO
PRIORITIES = {"error": 3, "warning": 4, "info": 6}
_SPELLINGS = {"warn": "warning", "err": "error", "critical": "error", "debug": "info"}


def journal_stream(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr by default) is connected to systemd's journal: the
    device and inode in JOURNAL_STREAM are those of the stream (a child that inherited
    the variable but writes elsewhere is not)."""
    named = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = named.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        found = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):  # no file descriptor (a test's StringIO), or closed
        return False
    return (found.st_dev, found.st_ino) == (int(device), int(inode))


def open_log_file(path: Path) -> TextIO:
    """`path` opened for appending; created with mode 0600 when absent (a file that exists
    keeps its mode). Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


class EventLog:
    """`log("mark.ok", name=..., hold_ms=...)` → `2026-11-25T19:02:11.123Z info mark.ok ...`.

    `journald`: start each line with its priority prefix (None: when stderr is the journal).
    `file`: append to this file instead of stderr (reopened when it was moved away, e.g. by
    logrotate); its lines never carry prefixes."""

    def __init__(self, as_json: bool = False, stream: TextIO | None = None,
                 journald: bool | None = None, file: Path | None = None) -> None:
        self.as_json = as_json
        self.file = file
        self._file_id: tuple[int, int] | None = None
        if file is not None:
            stream = self._open(file)
        self.stream = stream or sys.stderr
        if file is not None:
            journald = False
        self.journald = journal_stream(self.stream) if journald is None else journald
        self._lock = threading.Lock()

    def _open(self, path: Path) -> TextIO:
        opened = open_log_file(path)
        found = os.fstat(opened.fileno())
        self._file_id = (found.st_dev, found.st_ino)
        return opened

    def _reopen_if_moved(self) -> None:
        assert self.file is not None
        try:
            found = os.stat(self.file)
            if (found.st_dev, found.st_ino) == self._file_id:
                return
        except FileNotFoundError:
            pass
        try:
            fresh = self._open(self.file)
        except OSError:
            return  # keep writing where the lines went so far
        self.stream.close()
        self.stream = fresh

    def __call__(self, event: str, level: str = "info", **fields: object) -> None:
        level = _SPELLINGS.get(level, level)
        if level not in PRIORITIES:
            level = "error"  # a level markship does not know is a defect: make it seen
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
        if self.as_json:  # a JSON document: its times like every other markship prints
            line = json.dumps(exact_times({"time": now, "level": level, "event": event,
                                           **fields}), default=str)
        else:
            parts = [stamp, level, event]
            for key, value in fields.items():
                text = str(value)
                # Quoted (JSON escapes) unless plainly printable: a value from untrusted
                # data (a record's field, a request) never splits or forges a log line.
                plain = text and text.isprintable() and not any(c in text for c in ' "=')
                parts.append(f"{key}={text if plain else json.dumps(text)}")
            line = " ".join(parts)
        if self.journald:
            line = f"<{PRIORITIES[level]}>{line}"
        with self._lock:
            if self.file is not None:
                self._reopen_if_moved()
            self.stream.write(line + "\n")
            self.stream.flush()
